"""Which KV heads keep the full cache: plans from head scores, and the baselines at the same byte budget.

A plan marks, per (layer, KV head), whether the head keeps every token (``full``) or only
``sink + window`` tokens. A KV head serves a group of query heads (grouped-query attention), so it
is full when any query head of its group needs it: head scores are reduced with the *max* over the
group (``HeadScores.kv_view(num_kv_heads, "max")``). Only global attention layers are eligible;
sliding-window layers (Gemma 2/3 local layers) are already windowed and no plan touches them.

Policies:
    full       every KV head full (the reference).
    retrieval  the top fraction of eligible KV heads by retrieval score (``top_fraction``), or every
               KV head above a score (``above_threshold``), or an explicit list (``explicit``).
    random     as many KV heads as ``retrieval`` keeps, drawn uniformly with a seed.
    uniform    no full head; every KV head keeps sink + a window enlarged so the KV bytes at a given
               context length match a byte budget (``uniform_for_bytes``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError

POLICIES = ("full", "retrieval", "random", "uniform")


@dataclass(frozen=True)
class KvPlan:
    """Which KV heads are full, and what the others keep.

    Attributes:
        full: (layers, kv_heads) bool, True = full cache. False rows of ineligible layers mean nothing.
        eligible: (layers,) bool, the global attention layers the plan applies to.
        budget: the fraction of eligible KV heads kept full (``uniform``: the byte fraction matched).
    """

    policy: str
    full: np.ndarray
    eligible: np.ndarray
    sink: int = 4
    window: int = 64
    budget: float | None = None
    extra: dict = field(default_factory=dict)
    prefill: str | None = None  # what streaming heads see while prefilling (kvcache); None = "lambda"

    @property
    def num_full(self) -> int:
        return int(self.full[self.eligible].sum())

    @property
    def num_eligible(self) -> int:
        return int(self.eligible.sum()) * self.full.shape[1]

    def byte_fraction(self, tokens: int) -> float:
        """KV bytes of the eligible layers after ``tokens`` tokens, as a fraction of a full cache."""
        if tokens <= 0 or self.num_eligible == 0:
            return 1.0
        streaming = self.num_eligible - self.num_full
        kept = self.num_full * tokens + streaming * min(tokens, self.sink + self.window)
        return kept / (self.num_eligible * tokens)

    def full_heads(self) -> list[str]:
        """``"layer-kvhead"`` names of the full KV heads in eligible layers."""
        return [f"{l}-{h}" for l, h in zip(*np.nonzero(self.full & self.eligible[:, None]))]

    def describe(self) -> dict:
        return {"policy": self.policy, "budget": self.budget, "sink": self.sink, "window": self.window,
                "prefill": self.prefill,
                "num_full_kv_heads": self.num_full, "num_eligible_kv_heads": self.num_eligible,
                "full_kv_heads": self.full_heads(), **self.extra}


def eligible_layers(config) -> np.ndarray:
    """(layers,) bool: True for global (``full_attention``) layers of ``config``'s text model."""
    text = config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None)
    if types is None:
        sliding = getattr(text, "sliding_window", None) is not None
        types = ["sliding_attention" if sliding else "full_attention"] * text.num_hidden_layers
    return np.array([t == "full_attention" for t in types], dtype=bool)


def full_plan(shape: tuple[int, int], eligible: np.ndarray, *, sink: int = 4, window: int = 64) -> KvPlan:
    return KvPlan("full", np.ones(shape, dtype=bool), _eligible(eligible, shape), sink, window, 1.0)


def heads_for_fraction(fraction: float, eligible_heads: int) -> int:
    """Number of KV heads a budget ``fraction`` keeps full (round half up)."""
    if not 0 <= fraction <= 1:
        raise UserError(f"a budget is a fraction of KV heads in [0, 1], got {fraction:g}")
    return int(math.floor(fraction * eligible_heads + 0.5 + 1e-9))  # 0.35 * 90 is 31.499999...


def top_fraction(kv_scores: np.ndarray, fraction: float, *, eligible: np.ndarray, sink: int = 4,
                 window: int = 64) -> KvPlan:
    """Keep full the ``fraction`` of eligible KV heads with the highest scores (ties: lower index first).

    ``kv_scores``: (layers, kv_heads), e.g. ``HeadScores.kv_view(num_kv_heads, "max")``.
    """
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    eligible = _eligible(eligible, kv_scores.shape)
    k = heads_for_fraction(fraction, int(eligible.sum()) * kv_scores.shape[1])
    ranked = np.where(eligible[:, None], kv_scores, -np.inf).ravel()
    order = np.lexsort((np.arange(ranked.size), -ranked))[:k]
    full = np.zeros(ranked.size, dtype=bool)
    full[order] = True
    return KvPlan("retrieval", full.reshape(kv_scores.shape), eligible, sink, window, fraction)


def above_threshold(kv_scores: np.ndarray, threshold: float, *, eligible: np.ndarray, sink: int = 4,
                    window: int = 64) -> KvPlan:
    """Keep full every eligible KV head whose score exceeds ``threshold`` (the paper's 0.1 for heads)."""
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    eligible = _eligible(eligible, kv_scores.shape)
    full = (kv_scores > threshold) & eligible[:, None]
    n = int(eligible.sum()) * kv_scores.shape[1]
    return KvPlan("retrieval", full, eligible, sink, window, float(full.sum()) / n if n else 0.0,
                  {"threshold": threshold})


def explicit(heads: str | list[str], shape: tuple[int, int], *, eligible: np.ndarray, sink: int = 4,
             window: int = 64) -> KvPlan:
    """Keep full the KV heads named ``"layer-kvhead"`` (comma-separated string or list)."""
    names = [h.strip() for h in (heads.split(",") if isinstance(heads, str) else heads) if h.strip()]
    eligible = _eligible(eligible, shape)
    full = np.zeros(shape, dtype=bool)
    for name in names:
        try:
            layer, head = (int(x) for x in name.split("-"))
        except ValueError:
            raise UserError(f"KV heads are named layer-kvhead (e.g. 17-1), got {name!r}") from None
        if not (0 <= layer < shape[0] and 0 <= head < shape[1]):
            raise UserError(f"KV head {name} is outside this model's {shape[0]} layers x {shape[1]} KV heads")
        if not eligible[layer]:
            raise UserError(f"layer {layer} is a sliding-window layer; only global layers take a plan")
        full[layer, head] = True
    n = int(eligible.sum()) * shape[1]
    return KvPlan("retrieval", full, eligible, sink, window, float(full.sum()) / n if n else 0.0)


def random_plan(shape: tuple[int, int], count: int, *, eligible: np.ndarray, seed: int = 0, sink: int = 4,
                window: int = 64, budget: float | None = None) -> KvPlan:
    """Keep full ``count`` eligible KV heads drawn uniformly without replacement (seeded)."""
    eligible = _eligible(eligible, shape)
    pool = np.flatnonzero(np.repeat(eligible, shape[1]))
    if count > pool.size:
        raise UserError(f"cannot draw {count} of {pool.size} eligible KV heads")
    chosen = np.random.default_rng(seed).choice(pool, size=count, replace=False)
    full = np.zeros(shape[0] * shape[1], dtype=bool)
    full[chosen] = True
    return KvPlan("random", full.reshape(shape), eligible, sink, window, budget, {"seed": seed})


def uniform_for_bytes(shape: tuple[int, int], byte_fraction: float, tokens: int, *, eligible: np.ndarray,
                      sink: int = 4) -> KvPlan:
    """Every KV head streaming, the window sized so the KV bytes after ``tokens`` tokens are ``byte_fraction``.

    Per head: ``sink + window = byte_fraction * tokens`` (rounded), window at least 0.
    """
    window = max(0, int(round(byte_fraction * tokens)) - sink)
    return KvPlan("uniform", np.zeros(shape, dtype=bool), _eligible(eligible, shape), sink, window,
                  round(byte_fraction, 4), {"matched_tokens": tokens})


def matching_uniform(plan: KvPlan, tokens: int) -> KvPlan:
    """The ``uniform`` baseline holding as many KV bytes as ``plan`` after ``tokens`` tokens."""
    fraction = plan.byte_fraction(tokens)
    uniform = uniform_for_bytes(plan.full.shape, fraction, tokens, eligible=plan.eligible, sink=plan.sink)
    return KvPlan("uniform", uniform.full, uniform.eligible, uniform.sink, uniform.window, round(fraction, 4),
                  {"matched_tokens": tokens, "matched_policy": plan.policy, "matched_budget": plan.budget})


def _eligible(eligible, shape) -> np.ndarray:
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.shape != (shape[0],):
        raise ValueError(f"eligible must be (layers,) = ({shape[0]},), got {eligible.shape}")
    return eligible
