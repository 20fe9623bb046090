"""A run directory: resolved config, per-sample records appended as they finish, resume and overwrite."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError
from .io import append_jsonl, read_jsonl, repair_jsonl, write_json_atomic

CONFIG = "config.json"


class RunDir:
    """Results of one sweep under ``path``; records go to ``records_name`` (JSONL, one per sample)."""

    def __init__(self, path: str | Path, records_name: str = "samples.jsonl"):
        self.path = Path(path)
        self.records_path = self.path / records_name

    def start(self, identity: dict, config: dict, *, resume: bool = False, overwrite: bool = False) -> set[str]:
        """Prepare the directory; return the ids of samples already finished (only when resuming).

        Refuses to mix results of a different model, needles, haystack or decoding settings.
        """
        if self.records_path.exists() and self.records_path.stat().st_size:
            if overwrite:
                self.records_path.unlink()
            elif not resume:
                raise UserError(
                    f"{self.path} already holds results; pass --resume to continue them or --overwrite to start again"
                )
            else:
                self._check_identity(identity)
        write_json_atomic(self.path / CONFIG, {"identity": identity, "config": config})
        repair_jsonl(self.records_path)
        return {r["id"] for r in self.records()}

    def _check_identity(self, identity: dict) -> None:
        path = self.path / CONFIG
        if not path.exists():
            return
        saved = json.loads(path.read_text(encoding="utf-8")).get("identity", {})
        diff = [k for k in identity if k in saved and saved[k] != identity[k]]
        if diff:
            raise UserError(f"cannot resume {self.path}: its {', '.join(diff)} differ from this run's")

    def append(self, record: dict) -> None:
        append_jsonl(self.records_path, record)

    def records(self) -> list[dict]:
        """Finished records, one per sample id (the first wins if a file was ever concatenated)."""
        seen: dict[str, dict] = {}
        for row in read_jsonl(self.records_path):
            seen.setdefault(row["id"], row)
        return list(seen.values())

    def write_json(self, name: str, data) -> Path:
        target = self.path / name
        write_json_atomic(target, data)
        return target
