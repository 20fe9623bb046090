"""A run directory: resolved config, per-sample records appended as they finish, resume and overwrite."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from ..io import append_jsonl, read_jsonl, repair_jsonl, write_json_atomic

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
        saved = {} if overwrite else self._saved_config()
        write_json_atomic(self.path / CONFIG, {"identity": identity, "config": config, **grid_history(saved, config),
                                               "versions": software_versions()})
        repair_jsonl(self.records_path)
        return {r["id"] for r in self.records()}

    def _saved_config(self) -> dict:
        path = self.path / CONFIG
        if not (path.exists() and self.records_path.exists() and self.records_path.stat().st_size):
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    def grids(self) -> list[dict]:
        """Every grid run into this directory (``--resume`` with other lengths, depths or shard adds one)."""
        path = self.path / CONFIG
        return grids_in(json.loads(path.read_text(encoding="utf-8")) if path.exists() else {})

    def grid_summary(self) -> dict:
        """``{"grids": [...]}`` for a summary when the directory holds several grids' samples, else nothing."""
        grids = self.grids()
        return {"grids": grids} if len(grids) > 1 else {}

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


RECORDED_PACKAGES = ("retrieval-heads", "torch", "transformers", "accelerate", "tokenizers", "numpy")


def software_versions() -> dict[str, str]:
    """Python and the installed versions of the packages a run's numbers depend on (absent ones left out)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


GRID_KEYS = ("lengths", "depths", "shard")


def grid_of(config: dict) -> dict:
    """The part of a sweep config that decides which samples run."""
    return {k: config.get(k) for k in GRID_KEYS}


def grids_in(saved: dict) -> list[dict]:
    """The grids a saved ``config.json`` describes: its ``grids``, else the one of its ``config``."""
    return saved.get("grids") or ([grid_of(saved["config"])] if saved.get("config") else [])


def grid_history(saved: dict, config: dict) -> dict:
    """``{"grids": [...]}`` when this run extends a directory holding another grid, else nothing.

    ``config.json`` then describes every grid whose samples the directory holds, not only the last.
    """
    grids = grids_in(saved)
    if not grids:
        return {}
    new = grid_of(config)
    if json.dumps(new) not in {json.dumps(g) for g in grids}:
        grids = [*grids, new]
    return {"grids": grids} if len(grids) > 1 else {}
