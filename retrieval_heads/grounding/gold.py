"""An answer graded against gold answers: correct, incorrect, an answer to an unanswerable question, or an abstention.

* ``correct``: the answer holds at least half the content words of one gold answer (words: lower-cased
  runs of letters and digits; content words leave out ``core.scoring``'s stop words; a gold answer
  made of stop words only, such as HotpotQA's "yes" and "no", counts all its words).
  "Tim Burton" is matched by "Burton" (1 of 2) and by "It was directed by Tim Burton."; "1994" only
  by an answer holding "1994".
* ``incorrect``: an answerable question answered otherwise (an empty answer or an abstention too).
* ``answered_unanswerable``: SQuAD 2.0's unanswerable questions answered with a claim.
* ``abstained``: an unanswerable question answered with nothing, or with a refusal
  (``ABSTENTION``: "unanswerable", "not mentioned", "I don't know", ...).

Labels: 1 for ``correct``, 0 for ``incorrect`` and ``answered_unanswerable``, None for ``abstained``
(no claim was made, so there is nothing for the monitor to flag or clear: left out of the AUROC).
"""

from __future__ import annotations

import re
from typing import Sequence

from ..core.scoring import STOP, words

VERDICTS = ("correct", "incorrect", "answered_unanswerable", "abstained")
LABELS = {"correct": 1, "incorrect": 0, "answered_unanswerable": 0, "abstained": None}
ABSTENTION = re.compile(
    r"\b(unanswerable|no answer|cannot be (answered|determined)|can ?not answer|can't (answer|be (answered|determined))"
    r"|not (mentioned|stated|specified|given|provided|known|said)|unknown|no information|(don't|do not) know"
    r"|(does not|doesn't|do not|don't) (say|mention|state|specify|tell))\b")


def holds_gold(answer: str, gold: str) -> bool:
    """Whether ``answer`` holds at least half the content words of ``gold`` (all its words when it has none)."""
    wanted = [w for w in dict.fromkeys(words(gold)) if w not in STOP] or list(dict.fromkeys(words(gold)))
    if not wanted:
        return False
    said = set(words(answer))
    return 2 * sum(w in said for w in wanted) >= len(wanted)


def abstains(answer: str) -> bool:
    """An empty answer (no letter or digit) or a refusal to answer."""
    return not words(answer) or ABSTENTION.search(answer.lower()) is not None


def verdict(answer: str, gold_answers: Sequence[str], *, unanswerable: bool = False) -> str:
    """One of ``VERDICTS`` (see the module docstring)."""
    if unanswerable:
        return "abstained" if abstains(answer) else "answered_unanswerable"
    return "correct" if any(holds_gold(answer, g) for g in gold_answers) else "incorrect"


def label_of(name: str) -> int | None:
    """1 correct, 0 wrong, None for an abstention."""
    return LABELS[name]
