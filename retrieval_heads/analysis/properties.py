"""Properties of retrieval heads: sparsity, dynamic activation, KV-head view, and model comparison.

Everything here is pure: head scores in, plain numbers and small dataclasses out. The definitions
follow Wu et al. 2024: a head is a *retrieval head* when its mean score over samples exceeds 0.1
(Sec. 2), the sparsity buckets are those of Fig. 3, and a head is *active* in a sample when its
score in that sample is non-zero (Sec. 3.3, "dynamically activated").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.head_scores import RETRIEVAL_THRESHOLD, HeadScores
from ..errors import UserError

# The paper's Fig. 3 buckets of the mean score: = 0, (0, 0.1], (0.1, 0.5], > 0.5.
BUCKET_LABELS = ("= 0", "(0, 0.1]", "(0.1, 0.5]", "> 0.5")


@dataclass(frozen=True)
class Bucket:
    label: str
    count: int
    percent: float


@dataclass(frozen=True)
class Head:
    """One head with its mean score and the fraction of samples in which it scored > 0."""

    layer: int
    head: int
    score: float
    active_fraction: float | None = None


@dataclass(frozen=True)
class Sparsity:
    """How few heads retrieve.

    Attributes:
        buckets: the four Fig. 3 buckets of the mean score.
        per_layer: retrieval heads in each layer, length ``layers``.
    """

    n_heads: int
    n_retrieval: int
    percent_retrieval: float
    threshold: float
    buckets: list[Bucket]
    per_layer: list[int]


@dataclass(frozen=True)
class Activation:
    """How often each head fires.

    Attributes:
        frequency: (layers, heads) fraction of samples in which the head scored > 0.
        always_active: heads with a score > 0 in every sample, row-major order.
        retrieval: the retrieval heads, best first, with their active fraction.
        n_empty_samples: samples in which no head scored at all (often a needle-span mismatch
            upstream); they alone can empty ``always_active``.
        n_always_active_nonempty: heads with a score > 0 in every non-empty sample.
    """

    n_samples: int
    frequency: np.ndarray
    always_active: list[Head]
    retrieval: list[Head]
    n_empty_samples: int = 0
    n_always_active_nonempty: int = 0


@dataclass(frozen=True)
class KVView:
    """Scores of the KV heads of a grouped-query model.

    Attributes:
        max, mean: (layers, kv_heads) max / mean of the mean score over each query-head group.
        top: the best KV heads by ``max``.
    """

    num_kv_heads: int
    group_size: int
    max: np.ndarray
    mean: np.ndarray
    top: list[Head]
    n_retrieval: int


@dataclass(frozen=True)
class Comparison:
    """How alike two models' retrieval heads are (the paper's "intrinsic" property)."""

    shape: tuple[int, int]
    pearson: float
    spearman: float
    top_k: int
    topk_overlap: int
    topk_overlap_fraction: float
    jaccard: float
    n_retrieval_a: int
    n_retrieval_b: int
    n_retrieval_both: int

    def to_dict(self) -> dict:
        return _jsonable(asdict(self))


def bucket_counts(mean: np.ndarray) -> list[Bucket]:
    """The Fig. 3 buckets of ``mean`` (layers, heads): = 0, (0, 0.1], (0.1, 0.5], > 0.5."""
    m = np.asarray(mean, dtype=np.float64).ravel()
    counts = [
        int((m == 0).sum()),
        int(((m > 0) & (m <= 0.1)).sum()),
        int(((m > 0.1) & (m <= 0.5)).sum()),
        int((m > 0.5).sum()),
    ]
    total = max(m.size, 1)
    return [Bucket(label, c, 100.0 * c / total) for label, c in zip(BUCKET_LABELS, counts)]


def sparsity(scores: HeadScores, *, threshold: float = RETRIEVAL_THRESHOLD) -> Sparsity:
    """Bucket counts, number of retrieval heads (mean > ``threshold``) and their spread over layers."""
    mask = scores.retrieval_mask(threshold)  # (L, H)
    n, existing = int(mask.sum()), scores.num_applicable  # heads of layers without attention are not counted
    return Sparsity(
        n_heads=existing,
        n_retrieval=n,
        percent_retrieval=100.0 * n / max(existing, 1),
        threshold=threshold,
        buckets=bucket_counts(scores.mean[scores.applicable]),
        per_layer=[int(x) for x in mask.sum(axis=1)],
    )


def active_frequency(scores: HeadScores) -> np.ndarray:
    """(layers, heads) fraction of samples in which each head scored > 0; zeros without samples."""
    if scores.num_samples == 0:
        return np.zeros(scores.shape)
    return (scores.samples > 0).mean(axis=0)


def activation(scores: HeadScores, *, threshold: float = RETRIEVAL_THRESHOLD) -> Activation:
    """Dynamic activation: per-head active fraction, always-active heads, retrieval heads' frequency."""
    freq = active_frequency(scores)
    mean = scores.mean
    always = np.argwhere((freq == 1.0) & (scores.num_samples > 0) & scores.applicable)  # (n, 2), row-major
    retrieval = [h for h in top_heads(scores, scores.num_layers * scores.num_heads) if h.score > threshold]
    active = scores.samples > 0  # (N, L, H)
    nonempty = active[active.any(axis=(1, 2))][:, scores.attention_layers]  # layers with attention only
    return Activation(
        n_samples=scores.num_samples,
        frequency=freq,
        always_active=[Head(int(l), int(h), float(mean[l, h]), 1.0) for l, h in always],
        retrieval=retrieval,
        n_empty_samples=scores.num_samples - len(nonempty),
        n_always_active_nonempty=int(nonempty.all(axis=0).sum()) if len(nonempty) else 0,
    )


def top_heads(scores: HeadScores, k: int = 20) -> list[Head]:
    """The ``k`` best heads by mean score, best first, with their active fraction (None without samples)."""
    if k < 0:
        raise UserError(f"--top must be non-negative, not {k}")
    if not has_per_sample_scores(scores):
        return [Head(l, h, s) for l, h, s in scores.top(k)]
    freq = active_frequency(scores)
    return [Head(l, h, s, float(freq[l, h])) for l, h, s in scores.top(k)]


def kv_view(scores: HeadScores, num_kv_heads: int, *, top: int = 20,
            threshold: float = RETRIEVAL_THRESHOLD) -> KVView:
    """Group query heads into ``num_kv_heads`` KV heads: max and mean of the mean score per group."""
    if num_kv_heads <= 0:
        raise UserError(f"number of KV heads must be positive, not {num_kv_heads}")
    kv_max = scores.kv_view(num_kv_heads, "max")  # (L, KV)
    kv_mean = scores.kv_view(num_kv_heads, "mean")  # (L, KV)
    flat = kv_max.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))[:top]
    best = [Head(int(i) // num_kv_heads, int(i) % num_kv_heads, float(flat[i])) for i in order]
    return KVView(
        num_kv_heads=num_kv_heads,
        group_size=scores.num_heads // num_kv_heads,
        max=kv_max,
        mean=kv_mean,
        top=best,
        n_retrieval=int((kv_max > threshold).sum()),
    )


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two equally long vectors; NaN when either is constant."""
    x = np.asarray(x, dtype=np.float64).ravel() - np.mean(x)
    y = np.asarray(y, dtype=np.float64).ravel() - np.mean(y)
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""
    from scipy.stats import rankdata

    return pearson(rankdata(np.ravel(x)), rankdata(np.ravel(y)))


def compare(a: HeadScores, b: HeadScores, *, top: int = 20,
            threshold: float = RETRIEVAL_THRESHOLD) -> Comparison:
    """Correlation, top-``top`` overlap and Jaccard of the retrieval-head sets of two score matrices."""
    if a.shape != b.shape:
        raise UserError(
            f"cannot compare scores of different shapes: {_name(a)} is {a.num_layers}x{a.num_heads} "
            f"(layers x heads), {_name(b)} is {b.num_layers}x{b.num_heads}"
        )
    if top <= 0:
        raise UserError(f"--top must be positive, not {top}")
    top_a = {(l, h) for l, h, _ in a.top(top)}
    top_b = {(l, h) for l, h, _ in b.top(top)}
    ra, rb = a.retrieval_mask(threshold), b.retrieval_mask(threshold)
    both, either = int((ra & rb).sum()), int((ra | rb).sum())
    k = min(top, a.num_layers * a.num_heads)
    return Comparison(
        shape=a.shape,
        pearson=pearson(a.mean, b.mean),
        spearman=spearman(a.mean, b.mean),
        top_k=k,
        topk_overlap=len(top_a & top_b),
        topk_overlap_fraction=len(top_a & top_b) / k if k else float("nan"),
        jaccard=both / either if either else float("nan"),
        n_retrieval_a=int(ra.sum()),
        n_retrieval_b=int(rb.sum()),
        n_retrieval_both=both,
    )


def analyze(scores: HeadScores, *, top: int = 20, num_kv_heads: int | None = None,
            threshold: float = RETRIEVAL_THRESHOLD) -> dict:
    """Every property as one JSON-ready dict.

    Keys: ``model``, ``shape``, ``n_samples``, ``buckets``, ``n_retrieval_heads``,
    ``percent_retrieval_heads``, ``retrieval_heads_per_layer``, ``top_heads``, ``activation`` (or
    None for aggregate-only scores), ``always_active`` (or None), ``kv_heads`` (or None).
    """
    sp = sparsity(scores, threshold=threshold)
    per_sample = has_per_sample_scores(scores)
    act = activation(scores, threshold=threshold) if per_sample else None
    kv = None
    if num_kv_heads and not is_kv_level(scores):
        kv = kv_view(scores, num_kv_heads, top=top, threshold=threshold)
    return _jsonable({
        "model": scores.model,
        "shape": {"layers": scores.num_layers, "heads": scores.num_heads,
                  "level": "kv" if is_kv_level(scores) else "query"},
        "n_samples": scores.num_samples,
        "aggregate": bool(scores.meta.get("aggregate", False)),
        "threshold": threshold,
        "buckets": [asdict(b) for b in sp.buckets],
        "n_retrieval_heads": sp.n_retrieval,
        "percent_retrieval_heads": sp.percent_retrieval,
        "retrieval_heads_per_layer": sp.per_layer,
        "top_heads": [asdict(h) for h in top_heads(scores, top)],
        "activation": None if act is None else {
            "n_samples": act.n_samples,
            "n_always_active": len(act.always_active),
            "n_empty_samples": act.n_empty_samples,
            "n_always_active_nonempty": act.n_always_active_nonempty,
            "retrieval_heads": [asdict(h) for h in act.retrieval],
        },
        "always_active": None if act is None else [asdict(h) for h in act.always_active],
        "kv_heads": None if kv is None else {
            "num_kv_heads": kv.num_kv_heads,
            "group_size": kv.group_size,
            "n_retrieval_kv_heads": kv.n_retrieval,
            "top": [asdict(h) for h in kv.top],
            "max": kv.max.tolist(),
            "mean": kv.mean.tolist(),
        },
    })


def has_per_sample_scores(scores: HeadScores) -> bool:
    """False for aggregate-only scores (a CSV or TSV of means): activation needs samples."""
    return not scores.meta.get("aggregate", False) and scores.num_samples > 0


def is_kv_level(scores: HeadScores) -> bool:
    """True when the columns are KV heads (e.g. loaded from a DuoAttention TSV)."""
    return scores.meta.get("level") == "kv"


def _name(scores: HeadScores) -> str:
    return scores.meta.get("source") or scores.model or "scores"


def _jsonable(value):
    """Recursively turn numpy values into JSON types, and NaN into None."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if np.isnan(value) else float(value)
    return value
