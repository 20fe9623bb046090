"""How well a per-answer score separates correct from wrong answers: AUROC, bootstrap intervals, baselines.

* ``auroc``: the Mann-Whitney probability that a correct answer outscores a wrong one (ties 1/2).
* ``bootstrap_auroc``: percentile 95% interval over resampled items, or over resampled groups
  (e.g. all answers to one question) when ``groups`` is given, so correlated answers move together.
* ``bootstrap_mean``, ``mean_row``: a mean over items with its percentile 95% interval.
* Baselines: ``lexical_overlap`` (share of the answer's content words found in the context),
  ``length_position`` (cues a detector can learn without reading the text: answer and context
  lengths, where in the context the answer's words first occur) and ``LogisticRegression``
  (L2-regularised, for Lookback-Lens-style features, see ``lookback``, and for the cues).
* ``new_word_grounding``: the grounding of the words an answer adds to its question (a read of a
  result line's tokens, no model call).
* ``choose_threshold``: the token threshold with the best AUROC on a tuning split.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from ..core.scoring import STOP, WORD, content_words, words


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``labels`` (1 = positive); None without both classes."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return None
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks: ties count 1/2
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def bootstrap_auroc(scores: Sequence[float], labels: Sequence[int], *, groups: Sequence | None = None,
                    n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``auroc``; resamples whole groups when ``groups`` is given.

    A draw picks groups with replacement (``rng.integers`` per draw); an item drawn k times weighs k, so a
    draw's AUROC is the weighted pairwise win rate, computed for all draws at once. Draws without both
    classes are left out.
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    if auroc(s, y) is None:
        return None
    keys = np.asarray(groups if groups is not None else np.arange(len(s)))
    unique, index = np.unique(keys, return_inverse=True)
    rng = np.random.default_rng(seed)
    picks = np.stack([rng.integers(0, len(unique), len(unique)) for _ in range(n)])  # (n, groups)
    counts = np.zeros((n, len(unique)))
    np.add.at(counts, (np.repeat(np.arange(n), len(unique)), picks.ravel()), 1.0)
    weights = counts[:, index]  # (n, items): each item weighs as often as its group was drawn
    pos, neg = y == 1, y == 0
    wins = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])  # (P, N)
    w_pos, w_neg = weights[:, pos], weights[:, neg]
    total = w_pos.sum(1) * w_neg.sum(1)
    both = total > 0
    values = ((w_pos[both] @ wins) * w_neg[both]).sum(1) / total[both]
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def bootstrap_mean(values: Sequence[float], *, n: int = 2000, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (resampled items); None when empty."""
    v = np.asarray(values, dtype=float)
    if not len(v):
        return None
    rng = np.random.default_rng(seed)
    means = [v[rng.integers(0, len(v), len(v))].mean() for _ in range(n)]
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def mean_row(name: str, values: Sequence[float]) -> dict:
    """``{"metric", "mean", "ci_low", "ci_high", "n"}``: the mean with its bootstrap 95% interval (None when empty)."""
    ci = bootstrap_mean(values)
    return {"metric": name, "mean": float(np.mean(values)) if len(values) else None,
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None, "n": len(values)}


def auroc_row(name: str, scores: Sequence[float | None], labels: Sequence[int], *, groups=None,
              missing: float = 0.0) -> dict:
    """``{"score", "auroc", "ci_low", "ci_high", "n", "positives"}``; None scores count as ``missing``."""
    s = [missing if v is None else float(v) for v in scores]
    ci = bootstrap_auroc(s, labels, groups=groups)
    return {"score": name, "auroc": auroc(s, labels), "ci_low": ci[0] if ci else None,
            "ci_high": ci[1] if ci else None, "n": len(s), "positives": int(sum(labels))}


def lexical_overlap(answer: str, context: str) -> float:
    """Share of the answer's content words (lower-cased, stop words dropped) that occur in the context; 0 if none."""
    said = content_words(answer)
    return len(said & content_words(context)) / len(said) if said else 0.0


def new_word_grounding(answer: str, tokens: Sequence[dict], question: str) -> float:
    """Share of the answer's counted tokens that are grounded, over the tokens of words the answer adds: content
    words (``core.scoring``: lower-cased runs of letters and digits, stop words left out) absent from the
    question. 0.0 when the answer adds no such word: it restates the question and claims nothing to ground.

    ``tokens``: the result line's tokens (``start``, ``end`` in the answer, ``counted``, ``grounded``). A model
    that answers in whole sentences copies the question's words from the context whether its answer is right
    or not; only the words it adds carry the claim.
    """
    asked = set(words(question))
    spans = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(WORD.pattern, answer, re.IGNORECASE)]
    new = grounded = 0
    for t in tokens:
        if not t.get("counted"):
            continue
        word = next((w for start, end, w in spans if start <= t["start"] < end), None)
        if word is None or word in STOP or word in asked:
            continue
        new += 1
        grounded += bool(t.get("grounded"))
    return grounded / new if new else 0.0


def length_position(answer: str, answer_tokens: int, context: str, context_tokens: int) -> list[float]:
    """Length and position cues of one answer: [answer tokens, context tokens, relative position in the
    context of the first occurrence of any of the answer's content words (1.0 when none occurs)].

    RAG hallucination detectors often learn such cues rather than grounding (arXiv 2509.19372); a
    regression on them is the baseline a monitor has to beat.
    """
    lowered = context.lower()
    found = [m.start() for w in content_words(answer)
             if (m := re.search(rf"(?<![a-z0-9]){re.escape(w)}(?![a-z0-9])", lowered))]
    first = min(found) / max(len(context), 1) if found else 1.0
    return [float(answer_tokens), float(context_tokens), float(first)]


def choose_threshold(score_at: Callable[[float], Sequence[float]], labels: Sequence[int],
                     candidates: Sequence[float] = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))) -> tuple[float, list]:
    """The candidate with the best AUROC of ``score_at(threshold)`` (ties: the smaller), and every (t, auroc)."""
    curve = [(float(t), auroc(score_at(t), labels)) for t in candidates]
    best = max(curve, key=lambda tc: (tc[1] if tc[1] is not None else -1, -tc[0]))
    return best[0], curve


class LogisticRegression:
    """Binary logistic regression with an L2 penalty, fitted by L-BFGS on standardised features."""

    def __init__(self, l2: float = 1.0):
        self.l2 = l2
        self.mean = self.scale = self.coef = None
        self.intercept = 0.0

    def fit(self, x, y) -> "LogisticRegression":
        """``x``: (N, F) features; ``y``: (N,) 0/1 labels."""
        from scipy.optimize import minimize

        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-8
        z = (x - self.mean) / self.scale

        def loss(w):
            logits = z @ w[1:] + w[0]
            value = np.logaddexp(0, logits).sum() - y @ logits + 0.5 * self.l2 * w[1:] @ w[1:]
            p = 1 / (1 + np.exp(-logits))
            grad = np.concatenate([[np.sum(p - y)], z.T @ (p - y) + self.l2 * w[1:]])
            return value, grad

        w = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B").x
        self.intercept, self.coef = float(w[0]), w[1:]
        return self

    def predict_proba(self, x) -> np.ndarray:
        """(N,) probability of label 1."""
        z = (np.asarray(x, dtype=float) - self.mean) / self.scale
        return 1 / (1 + np.exp(-(z @ self.coef + self.intercept)))
