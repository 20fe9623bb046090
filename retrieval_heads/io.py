"""Crash-safe file writing: atomic replacement for whole files, flushed appends for JSONL logs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, indent=indent) + "\n")


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON line and flush it to disk, so a kill loses at most the line in flight."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def parse_json_object(line: str, where: str) -> dict:
    """One JSONL line as a dict; a UserError naming ``where`` (``file:line``) otherwise."""
    from .errors import UserError

    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object")
    return row


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Rows of a JSONL file; a torn last line (from a kill mid-write) is skipped."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                return
            raise


def repair_jsonl(path: str | Path) -> None:
    """Cut a torn last line (left by a kill mid-write) so the next append starts on a fresh line."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def read_items_jsonl(path, parse_row, *, what: str = "items") -> list:
    """Objects of a user's JSONL file, one per non-blank line, with unique ``id``s.

    ``parse_row(row: dict, where: str, default_id: str)`` turns one JSON object into an item with an
    ``id`` attribute; ``where`` names the file and line for its error messages.
    """
    from pathlib import Path

    from .errors import UserError

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"{what} file not found: {p}") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a UTF-8 text file") from None
    items, seen = [], set()
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}: line {line_no}"
        item = parse_row(parse_json_object(line, where), where, f"line-{line_no}")
        if item.id in seen:
            raise UserError(f"{where}: id {item.id!r} appears twice")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise UserError(f"{p}: no {what}")
    return items
