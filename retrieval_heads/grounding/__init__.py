"""Grounding monitor: retrieval heads as per-token provenance and hallucination flags.

``Grounder`` teacher-forces an answer after its prompt with the probe on every answer row (and one
row reading the last answer token), marks each answer word the retrieval heads copy from the
context (the paper's copy criterion with the needle replaced by the context, read word by word,
plus heads that attend right after a word's occurrence on the next row: ``signal``), maps copied
runs back to characters of the answer and the context, and scores the answer's grounding in [0, 1]. Modules: ``prompt`` (prompts, answers,
offsets), ``signal`` (copy events), ``provenance`` (spans), ``grounder``, ``items`` (JSONL items,
run directories), ``datasets`` (items from SQuAD 2.0 and HotpotQA), ``gold`` (answers graded against
gold answers), ``run`` (output files), ``metrics`` (AUROC, baselines), ``citations`` (citations
against supporting sentences), ``lookback`` (Lookback-Lens features), ``page`` (the HTML page).
"""

from .datasets import DATASETS, build_items
from .grounder import DEFAULT_THRESHOLD, Grounder, Grounding, TokenGrounding
from .items import GroundItem, load_items, run_items, write_items
from .prompt import AnswerTokens, GroundedPrompt, answer_from_ids, answer_from_text, build_prompt
from .provenance import Span
from .run import ground_items

__all__ = ["DATASETS", "DEFAULT_THRESHOLD", "AnswerTokens", "GroundItem", "GroundedPrompt", "Grounder", "Grounding",
           "Span", "TokenGrounding", "answer_from_ids", "answer_from_text", "build_items", "build_prompt",
           "ground_items", "load_items", "run_items", "write_items"]
