"""The paper's retrieval score for one sample, and its ROUGE success filter.

Definition (Wu et al. 2024, Sec. 2): while the model decodes greedily, at each step every head
looks at its top-1 attended key ``j`` (last query row). If ``j`` lies in the needle span and the
prompt token at ``j`` equals the token produced at this step, the head copied one needle token and
gains ``1 / |span|``. A sample counts only when ROUGE-1 recall of the response against the
expected answer exceeds 0.5.

NIAH answers are scored by ROUGE-1 recall as well, except for RULER's sets, which RULER scores by string
match: "all" (every expected value found) or, for its QA tasks, "part" (any gold answer found)
(``answer_score``). ``words`` and ``content_words`` are the word view of a text that NIAH's
failure classes (``masking.failures``) and grounding's lexical baseline share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import torch



SUCCESS_THRESHOLD = 0.5


def retrieval_scores(
    top1: torch.Tensor, generated: torch.Tensor, prompt_ids: torch.Tensor, span: tuple[int, int]
) -> torch.Tensor:
    """Per-head retrieval score of one sample.

    Args:
        top1: (steps, layers, heads) absolute key positions attended most at each decode step.
        generated: (steps,) the token produced at each step.
        prompt_ids: (prompt_len,) the prompt's token ids.
        span: [start, end) token range of the needle in the prompt.
    Returns:
        (layers, heads) float64: number of copy events / span length.
    """
    start, end = span
    if not 0 <= start < end <= prompt_ids.numel():
        raise ValueError(f"needle span {span} outside a prompt of {prompt_ids.numel()} tokens")
    in_span = (top1 >= start) & (top1 < end)  # (S, L, H)
    attended_token = prompt_ids[top1.clamp(0, prompt_ids.numel() - 1)]  # (S, L, H)
    copied = attended_token == generated.view(-1, 1, 1)
    return (in_span & copied).sum(dim=0).double() / (end - start)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)


def rouge1_recall(answer: str, response: str) -> float:
    """ROUGE-1 recall of ``response`` against ``answer`` (rouge-score, Porter stemming), in [0, 1]."""
    return float(_rouge_scorer().score(answer, response)["rouge1"].recall)


def string_match_all(references: Sequence[str], response: str) -> float:
    """RULER's ``string_match_all`` for one answer, in [0, 1]: the fraction of ``references`` found verbatim
    in ``response``, ignoring case."""
    if not references:
        raise ValueError("string_match_all needs at least one reference")
    found = response.lower()
    return sum(r.lower() in found for r in references) / len(references)


def string_match_part(references: Sequence[str], response: str) -> float:
    """RULER's ``string_match_part`` for one answer, 1.0 or 0.0: whether any of ``references`` (gold answers, any
    one of which is right) is found verbatim in ``response``, ignoring case."""
    if not references:
        raise ValueError("string_match_part needs at least one reference")
    found = response.lower()
    return float(any(r.lower() in found for r in references))


ANSWER_METRICS = {"rouge1_recall": "ROUGE-1 recall (the paper's)", "string_match_all": "string match, all (RULER's)",
                  "string_match_part": "string match, part (RULER's, for QA)"}


def answer_score(metric: str, references: Sequence[str], response: str) -> float:
    """The score in [0, 1] of ``response`` by ``metric`` (a name in ``ANSWER_METRICS``); ROUGE-1 recall is
    taken against the references joined by spaces."""
    if metric == "rouge1_recall":
        return rouge1_recall(" ".join(references), response)
    if metric == "string_match_all":
        return string_match_all(references, response)
    if metric == "string_match_part":
        return string_match_part(references, response)
    raise ValueError(f"unknown answer metric {metric!r}; known: {', '.join(ANSWER_METRICS)}")


def is_success(recall: float) -> bool:
    return recall > SUCCESS_THRESHOLD


# ---- words: lower-cased alphanumeric runs; content words drop a short stop-word list ----

WORD = re.compile(r"[a-z0-9]+")
STOP = frozenset(
    "a an the of in on at to for from by with and or is are was were be been it its this that these those "
    "as what which who whom where when why how does do did has have had i you he she they we his her their "
    "our your my me him them there here than then so not no yes".split()
)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def content_words(text: str) -> set[str]:
    return {w for w in words(text) if w not in STOP}
