"""What each KV head keeps: plans from head scores, every policy at the same byte budget.

A budget ``b`` is a fraction of the full cache's KV bytes in the eligible (global attention) layers
after ``T`` context tokens, i.e. ``b x N x T`` kept (KV head, token) pairs for N eligible KV heads (all KV
heads of a model have the same size). Sliding-window layers (Gemma 2/3 local layers) are already windowed
and no plan touches them. A KV head serves a group of query heads (grouped-query attention), so its score
is the *max* over the group (``HeadScores.kv_view(num_kv_heads, "max")``).

Head-level policies (``cache.HeadwiseCache``: a KV head is full or streams sink + a sliding window):
    full       every KV head full (the reference).
    retrieval  the most KV heads, best scores first, such that they (full) and sink + window for the
               others fit ``b``; if sink + window alone exceeds ``b``, no full head and a window shrunk to fit.
    random     as many full KV heads as ``retrieval``, drawn uniformly with a seed, same sink + window.
    uniform    no full head; every KV head keeps sink + a window sized to ``b``.
Token-level policies (``compressed.CompressedCache``: each KV head keeps its own positions, chosen after
the prefill by ``selection``: ``window``, the observation window's attention as SnapKV does, ``snapkv.py``,
or ``reread``, the attention each token gets while the context is re-read as KVzip does, ``reconstruct.py``,
or ``reread-chunk``, the same with KVzip's own scores (each re-reading row's softmax over the chunk it re-reads);
then every new token):
    snapkv            every KV head keeps ``b x T`` tokens: sink + observation window + top tokens (the
                      uniform split, whatever the selection).
    retrieval-snapkv  KV heads scoring above ``threshold`` full, best first, at most as many as fill
                      ``full_share`` of the budget; the others ``snapkv`` with what is left, equally.
    headkv            one pool of ``b x T x N`` tokens: each KV head a floor (``floor_share`` of the
                      equal share), the rest in proportion to scores, capped at T (excess redistributed).
    adaptive          one pool of ``b x T x N`` tokens divided by the evidence itself: every KV head keeps its
                      sink, observation window and a floor (``floor_share`` of the equal share, its own best),
                      and the rest of the pool goes to the best-scoring (KV head, token) pairs of all eligible
                      layers together (``pool="model"``, as KVzip divides the model's budget) or of each layer
                      (``pool="layer"``, as AdaKV divides a layer's), so a head the evidence points at keeps more
                      (``snapkv.evidence_counts``).
    retrieval-adaptive  ``retrieval-snapkv``'s whole KV heads; the others ``adaptive`` with what is left.
Whose evidence ranks a token-level plan's tokens (``token_ranking``): ``own``, each KV head its own scores;
``retrieval-heads``, every KV head the retrieval KV heads' (scoring above ``threshold``), each divided by its
mean, then averaged (``snapkv.Observed.shared_from``), so every head keeps the tokens the retrieval heads
re-read; ``own_share`` of each head's chosen tokens (beyond sink and window) are still its own best, chosen first.

The selections were once called ``snapkv`` and ``reconstruct``, the ranking ``retrieval`` (names the policies
also use); ``RENAMED`` maps them to today's, and ``current`` is the one place that reads them (settings, plans,
saved ``kv_plan.json`` files and summary rows), so old callers and old run directories keep working.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import UserError

HEAD_POLICIES = ("full", "retrieval", "random", "uniform")
TOKEN_POLICIES = ("snapkv", "retrieval-snapkv", "headkv", "adaptive", "retrieval-adaptive")
POLICIES = HEAD_POLICIES + TOKEN_POLICIES
SELECTIONS = ("window", "reread", "reread-chunk")  # what chooses a token-level plan's tokens (module docstring)
REREADS = ("reread", "reread-chunk")  # the selections that re-read the context (``reconstruct.py``)
POOLS = ("model", "layer")  # adaptive policies: which KV heads share one pool (see ``KvPlan.pool``)
TOKEN_RANKINGS = ("own", "retrieval-heads")  # whose evidence ranks each KV head's tokens (see the module docstring)
RENAMED = {  # old value -> today's, per setting (deprecated; accepted for one release and in saved runs)
    "selection": {"snapkv": "window", "reconstruct": "reread"},
    "token_ranking": {"retrieval": "retrieval-heads"},
}
# what every plan, cache and command uses unless told otherwise (kv-eval, restore and the library alike)
DEFAULT_SINK = 64  # first tokens every non-full KV head keeps
DEFAULT_WINDOW = 384  # recent tokens every streaming KV head keeps (head-level plans)
DEFAULT_OBS_WINDOW = 32  # the observation window: the last tokens before compression, always kept (token-level)
DEFAULT_FULL_SHARE = 0.5  # retrieval-snapkv: at most this share of the budget goes to whole KV heads
EPS = 1e-9  # budgets given with a few digits still reach the configuration they round


def current(setting: str, value):
    """``value`` of ``setting`` (``"selection"`` or ``"token_ranking"``) under today's name: an old name
    (``RENAMED``) becomes the new one, anything else is returned as it is."""
    return RENAMED[setting].get(value, value) if isinstance(value, str) else value


def current_names(described: dict) -> dict:
    """A plan description or summary row with its ``selection`` and ``token_ranking`` under today's names."""
    return {**described, **{k: current(k, described[k]) for k in RENAMED if described.get(k) is not None}}


def read_plan(saved: dict) -> dict:
    """A ``kv_plan.json`` as ``KvPlan.describe`` writes it today. Older files: selection and token ranking under
    their old names, one ``window`` that was the observation window of token-level plans (those with a
    ``selection``) and the recent window of head-level ones, and a sink and window recorded for the full plan,
    which keeps every token and has neither."""
    found = current_names(saved)
    if "window" in found:
        window = found.pop("window")
        found["obs_window" if found.get("selection") is not None else "recent_window"] = window
    if found.get("policy") == "full":
        for key in ("sink", "recent_window", "obs_window"):
            found.pop(key, None)
    return found


@dataclass(frozen=True)
class PolicySettings:
    """What every plan of one evaluation shares besides the policy and the budget."""

    sink: int = DEFAULT_SINK  # first tokens every non-full KV head keeps
    window: int = DEFAULT_WINDOW  # recent tokens every streaming KV head keeps (head-level policies)
    obs_window: int = DEFAULT_OBS_WINDOW  # the observation window: the last tokens before compression, always kept
    full_share: float = DEFAULT_FULL_SHARE  # retrieval-snapkv: at most this share of the budget goes to full KV heads
    threshold: float = 0.1  # retrieval-snapkv: only KV heads scoring above this are kept full
    floor_share: float = 0.2  # headkv, adaptive: every KV head gets at least this share of the equal split
    seed: int = 0  # random
    selection: str = "window"  # token-level policies: SELECTIONS (old names accepted, see ``current``)
    token_ranking: str = "own"  # token-level policies: TOKEN_RANKINGS (old names accepted)
    own_share: float = 0.2  # token_ranking "retrieval-heads": this share of each head's tokens by its own ranking
    pool: str = "model"  # adaptive policies: POOLS
    follow: int = 0  # token-level policies: a token scores as high as the best of the ``follow`` tokens before it

    def __post_init__(self):
        for name in RENAMED:
            object.__setattr__(self, name, current(name, getattr(self, name)))

    def check(self) -> None:
        if self.selection not in SELECTIONS:
            raise UserError(f"--selection must be one of {', '.join(SELECTIONS)}, not {self.selection!r}")
        if self.pool not in POOLS:
            raise UserError(f"--pool must be one of {', '.join(POOLS)}, not {self.pool!r}")
        if self.token_ranking not in TOKEN_RANKINGS:
            raise UserError(f"--token-ranking must be one of {', '.join(TOKEN_RANKINGS)}, not {self.token_ranking!r}")
        if self.sink < 0 or self.window < 0:
            raise UserError("--sink and --window must be non-negative")
        if self.obs_window < 1:
            raise UserError("--obs-window must be at least 1")
        if self.follow < 0:
            raise UserError(f"--follow must be non-negative, got {self.follow}")
        for name, value in (("--full-share", self.full_share), ("--floor-share", self.floor_share),
                            ("--own-share", self.own_share)):
            if not 0 <= value <= 1:
                raise UserError(f"{name} is a share in [0, 1], got {value:g}")


@dataclass(frozen=True)
class KvPlan:
    """What every eligible KV head keeps.

    Attributes:
        full: (layers, kv_heads) bool, True = every token. Rows of ineligible layers mean nothing.
        eligible: (layers,) bool, the global attention layers the plan applies to.
        sink: the first tokens every non-full KV head keeps.
        recent_window: head-level plans: the most recent tokens a streaming (non-full) KV head keeps, a
            sliding window; 0 for token-level plans, which keep every new token.
        budget: the byte budget (fraction of the full cache's bytes) the plan was made for.
        keep: token-level plans only: (layers, kv_heads) float, the fraction of the context each KV head
            keeps (1 = full); None for head-level plans.
        selection: token-level plans only: what chooses the tokens (``SELECTIONS``; old names accepted).
        guides: token-level plans only: the (layer, kv head)s whose scores rank every KV head's tokens
            (``token_ranking="retrieval-heads"``); empty: each KV head ranks by its own.
        own_share: with guides, the share of each KV head's chosen tokens (beyond sink and window) that are its
            own best, chosen before the guides' (``snapkv.own_first``).
        obs_window: token-level plans only: the observation window, the last tokens before compression, which
            every compressed KV head keeps and (``selection="window"``) whose attention chooses the rest;
            None for head-level plans.
        pooled: token-level plans only: True when the KV heads that are not whole pool their ``keep`` and the
            evidence divides the pool (``snapkv.evidence_counts``), each head keeping at least ``floor_share`` of its
            own ``keep``; ``keep`` is then each head's share before the evidence is seen.
        follow: token-level plans only: each token scores as high as the best of the ``follow`` tokens before it
            (``snapkv.follow_scores``), so the tokens after a well-scored one are kept with it: a value the model
            copies goes on past the token the evidence points at. 0: the evidence's own scores.
    """

    policy: str
    full: np.ndarray
    eligible: np.ndarray
    sink: int = DEFAULT_SINK
    recent_window: int = DEFAULT_WINDOW
    budget: float | None = None
    extra: dict = field(default_factory=dict)
    prefill: str | None = None  # what streaming heads see while prefilling (cache.py); None = "lambda"
    keep: np.ndarray | None = None
    selection: str | None = None
    guides: tuple[tuple[int, int], ...] = ()
    own_share: float = 0.0
    obs_window: int | None = None
    pooled: bool = False
    floor_share: float = 0.0
    pool: str = "model"
    follow: int = 0

    def __post_init__(self):
        object.__setattr__(self, "selection", current("selection", self.selection))

    @property
    def selects_tokens(self) -> bool:
        """True for token-level plans (a ``CompressedCache`` after SnapKV selection)."""
        return self.keep is not None

    @property
    def num_full(self) -> int:
        return int(self.full[self.eligible].sum())

    @property
    def num_eligible(self) -> int:
        return int(self.eligible.sum()) * self.full.shape[1]

    def token_counts(self, tokens: int) -> np.ndarray:
        """(layers, kv_heads) int: tokens each KV head keeps of a ``tokens``-token context (0 off eligible rows).

        Token-level: ``keep x tokens``, each rounded (KV heads with equal shares keep equal counts, so
        they share one attention call); for ``pooled`` plans, the counts before the evidence divides them, whose
        total it keeps. Head-level: ``tokens`` for full heads, else sink + window.
        """
        counts = np.zeros(self.full.shape, dtype=np.int64)
        rows = self.eligible
        if self.keep is None:
            per = np.where(self.full[rows], tokens, min(tokens, self.sink + self.recent_window))
            counts[rows] = per
            return counts
        counts[rows] = share_tokens(self.keep[rows], tokens)
        return counts

    def byte_fraction(self, tokens: int) -> float:
        """KV bytes of the eligible layers after ``tokens`` tokens, as a fraction of a full cache."""
        if tokens <= 0 or self.num_eligible == 0:
            return 1.0
        return float(self.token_counts(tokens)[self.eligible].sum()) / (self.num_eligible * tokens)

    def full_heads(self) -> list[str]:
        """``"layer-kvhead"`` names of the full KV heads in eligible layers."""
        return [f"{l}-{h}" for l, h in zip(*np.nonzero(self.full & self.eligible[:, None]))]

    def describe(self) -> dict:
        """What ``kv_plan.json`` records (``read_plan`` reads older files): sink and recent window for head-level
        plans, sink and observation window for token-level ones, neither for the full cache."""
        out = {"policy": self.policy, "budget": self.budget}
        if self.policy != "full":
            out["sink"] = self.sink
            out.update({"obs_window": self.obs_window} if self.keep is not None else
                       {"recent_window": self.recent_window})
        out.update({"prefill": self.prefill, "num_full_kv_heads": self.num_full,
                    "num_eligible_kv_heads": self.num_eligible, "full_kv_heads": self.full_heads(), **self.extra})
        if self.keep is not None:
            out["selection"] = self.selection
            out["token_ranking"] = "retrieval-heads" if self.guides else "own"
            if self.follow:  # older plans had none, and 0 is what they did
                out["follow"] = self.follow
            if self.pooled:
                out["head_budgets"] = "evidence"
                out["floor_share"] = self.floor_share
                out["pool"] = self.pool
            if self.guides:
                out["guide_kv_heads"] = [f"{l}-{h}" for l, h in self.guides]
                out["own_share"] = self.own_share
            out["keep"] = [[round(float(x), 6) for x in row] for row in np.where(self.eligible[:, None], self.keep, 0)]
        return out


def eligible_layers(config) -> np.ndarray:
    """(layers,) bool: True for global (``full_attention``) layers of ``config``'s text model."""
    text = config.get_text_config(decoder=True)
    types = getattr(text, "layer_types", None)
    if types is None:
        sliding = getattr(text, "sliding_window", None) is not None
        types = ["sliding_attention" if sliding else "full_attention"] * text.num_hidden_layers
    return np.array([t == "full_attention" for t in types], dtype=bool)


def check_eligible(eligible: np.ndarray, model: str) -> None:
    """Refuse (``UserError``) a model without a global attention layer: every layer keeps a sliding window only,
    so no KV head can be kept whole or compressed and every plan would be the full cache."""
    if not eligible.any():
        raise UserError(f"{model} has no full-attention layer (every layer attends over a sliding window), so no KV "
                        "head's cache can be kept whole or compressed")


def make_plan(policy: str, budget: float | None, tokens: int, *, kv_scores: np.ndarray, eligible: np.ndarray,
              settings: PolicySettings = PolicySettings()) -> KvPlan:
    """The plan of ``policy`` at byte budget ``budget`` for contexts of about ``tokens`` tokens.

    Token-level plans scale with the context (their ``token_counts`` are computed per prompt); head-level
    plans depend on ``tokens`` through sink + window, which do not.
    """
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    shape, s = kv_scores.shape, settings
    if policy == "full":  # no streaming head: sink and window do not apply (nor tie its runs)
        return full_plan(shape, eligible)
    if policy not in POLICIES:
        raise UserError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    check_budget(budget)
    if policy == "retrieval":
        return retrieval_for_bytes(kv_scores, budget, tokens, eligible=eligible, sink=s.sink, window=s.window)
    if policy == "random":
        ref = retrieval_for_bytes(kv_scores, budget, tokens, eligible=eligible, sink=s.sink, window=s.window)
        return random_plan(shape, ref.num_full, eligible=eligible, seed=s.seed, sink=ref.sink,
                           window=ref.recent_window, budget=budget)
    if policy == "uniform":
        return uniform_for_bytes(shape, budget, tokens, eligible=eligible, sink=s.sink)
    if policy == "snapkv":
        plan = token_plan("snapkv", np.full(shape, float(budget)), eligible, s, budget)
    elif policy == "retrieval-snapkv":
        plan = retrieval_snapkv(kv_scores, budget, eligible=eligible, settings=s)
    elif policy == "headkv":
        plan = token_plan("headkv", headkv_keep(kv_scores, budget, eligible=eligible, floor_share=s.floor_share),
                          eligible, s, budget, {"floor_share": s.floor_share})
    else:
        plan = pooled_plan(policy, kv_scores, budget, eligible=eligible, settings=s)
    if s.token_ranking == "retrieval-heads":
        if plan.pooled:
            raise UserError(f"{policy} divides its budget by each KV head's own evidence, and --token-ranking "
                            "retrieval-heads gives every head the same: use --token-ranking own")
        plan = replace(plan, guides=guide_heads(kv_scores, eligible, s.threshold), own_share=s.own_share)
    return plan


def guide_heads(kv_scores: np.ndarray, eligible: np.ndarray, threshold: float) -> tuple[tuple[int, int], ...]:
    """The eligible (layer, kv head)s scoring above ``threshold``: with ``token_ranking="retrieval-heads"`` their
    evidence ranks every KV head's tokens."""
    found = np.nonzero(above_threshold(kv_scores, threshold, eligible=eligible).full)
    if found[0].size == 0:
        raise UserError(f"--token-ranking retrieval-heads ranks tokens by the KV heads scoring above {threshold:g}, "
                        "and none does in these scores")
    return tuple((int(l), int(h)) for l, h in zip(*found))


def check_budget(budget: float | None) -> None:
    if budget is None or not 0 < budget <= 1:
        raise UserError(f"a budget is a fraction of the full cache's KV bytes in (0, 1], got {budget}")


def token_plan(policy: str, keep: np.ndarray, eligible: np.ndarray, settings: PolicySettings, budget: float,
               extra: dict | None = None) -> KvPlan:
    eligible = _eligible(eligible, keep.shape)
    keep = np.clip(keep, 0.0, 1.0)
    return KvPlan(policy, keep >= 1.0, eligible, sink=settings.sink, recent_window=0, budget=budget,
                  extra=extra or {}, keep=keep, selection=settings.selection, obs_window=settings.obs_window,
                  follow=settings.follow)


def full_plan(shape: tuple[int, int], eligible: np.ndarray) -> KvPlan:
    """Every KV head keeps every token (no sink, no window)."""
    return KvPlan("full", np.ones(shape, dtype=bool), _eligible(eligible, shape), budget=1.0)


def _ranked(kv_scores: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Flat indices of eligible KV heads, best score first (ties: lower index first)."""
    ranked = np.where(eligible[:, None], kv_scores, -np.inf).ravel()
    order = np.lexsort((np.arange(ranked.size), -ranked))
    return order[: int(eligible.sum()) * kv_scores.shape[1]]


def top_count(kv_scores: np.ndarray, count: int, *, eligible: np.ndarray, sink: int = DEFAULT_SINK,
              window: int = DEFAULT_WINDOW, budget: float | None = None, policy: str = "retrieval") -> KvPlan:
    """Keep full the ``count`` eligible KV heads with the highest scores (ties: lower index first)."""
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    eligible = _eligible(eligible, kv_scores.shape)
    full = np.zeros(kv_scores.size, dtype=bool)
    full[_ranked(kv_scores, eligible)[:count]] = True
    return KvPlan(policy, full.reshape(kv_scores.shape), eligible, sink=sink, recent_window=window, budget=budget)


def heads_for_fraction(fraction: float, eligible_heads: int) -> int:
    """Number of KV heads a fraction of heads keeps full (round half up)."""
    if not 0 <= fraction <= 1:
        raise UserError(f"a fraction of KV heads lies in [0, 1], got {fraction:g}")
    return int(math.floor(fraction * eligible_heads + 0.5 + EPS))  # 0.35 * 90 is 31.499999...


def top_fraction(kv_scores: np.ndarray, fraction: float, *, eligible: np.ndarray, sink: int = DEFAULT_SINK,
                 window: int = DEFAULT_WINDOW) -> KvPlan:
    """Keep full the ``fraction`` of eligible KV heads with the highest scores (``budget`` = that fraction).

    ``kv_scores``: (layers, kv_heads), e.g. ``HeadScores.kv_view(num_kv_heads, "max")``.
    """
    eligible = _eligible(eligible, np.shape(kv_scores))
    count = heads_for_fraction(fraction, int(eligible.sum()) * np.shape(kv_scores)[1])
    return top_count(kv_scores, count, eligible=eligible, sink=sink, window=window, budget=fraction)


def full_heads_for_bytes(budget: float, tokens: int, heads: int, streaming_tokens: int) -> int:
    """The most of ``heads`` KV heads that can keep ``tokens`` tokens while the rest keep ``streaming_tokens``
    within ``budget x heads x tokens``; -1 when even no full head does not fit."""
    pool = budget * heads * tokens
    if heads * streaming_tokens > pool + EPS * heads * tokens:
        return -1
    if tokens <= streaming_tokens:
        return heads
    return min(heads, int(math.floor((pool - heads * streaming_tokens) / (tokens - streaming_tokens) + EPS)))


def retrieval_for_bytes(kv_scores: np.ndarray, budget: float, tokens: int, *, eligible: np.ndarray,
                        sink: int = DEFAULT_SINK, window: int = DEFAULT_WINDOW) -> KvPlan:
    """``retrieval`` at byte budget ``budget`` for ``tokens``-token contexts (see the module docstring)."""
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    eligible = _eligible(eligible, kv_scores.shape)
    heads = int(eligible.sum()) * kv_scores.shape[1]
    count = full_heads_for_bytes(budget, tokens, heads, min(tokens, sink + window))
    if count < 0:  # sink + window alone is too much: no full head, a window shrunk to fit
        shrunk = uniform_for_bytes(kv_scores.shape, budget, tokens, eligible=eligible, sink=sink)
        return KvPlan("retrieval", shrunk.full, eligible, sink=shrunk.sink, recent_window=shrunk.recent_window,
                      budget=budget, extra={"shrunk": True})
    return top_count(kv_scores, count, eligible=eligible, sink=sink, window=window, budget=budget)


def above_threshold(kv_scores: np.ndarray, threshold: float, *, eligible: np.ndarray, sink: int = DEFAULT_SINK,
                    window: int = DEFAULT_WINDOW) -> KvPlan:
    """Keep full every eligible KV head whose score exceeds ``threshold`` (the paper's 0.1 for heads)."""
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    eligible = _eligible(eligible, kv_scores.shape)
    full = (kv_scores > threshold) & eligible[:, None]
    n = int(eligible.sum()) * kv_scores.shape[1]
    return KvPlan("retrieval", full, eligible, sink=sink, recent_window=window,
                  budget=float(full.sum()) / n if n else 0.0, extra={"threshold": threshold})


def explicit(heads: str | list[str], shape: tuple[int, int], *, eligible: np.ndarray, sink: int = DEFAULT_SINK,
             window: int = DEFAULT_WINDOW) -> KvPlan:
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
    return KvPlan("retrieval", full, eligible, sink=sink, recent_window=window,
                  budget=float(full.sum()) / n if n else 0.0)


def random_plan(shape: tuple[int, int], count: int, *, eligible: np.ndarray, seed: int = 0, sink: int = DEFAULT_SINK,
                window: int = DEFAULT_WINDOW, budget: float | None = None) -> KvPlan:
    """Keep full ``count`` eligible KV heads drawn uniformly without replacement (seeded)."""
    eligible = _eligible(eligible, shape)
    pool = np.flatnonzero(np.repeat(eligible, shape[1]))
    if count > pool.size:
        raise UserError(f"cannot draw {count} of {pool.size} eligible KV heads")
    chosen = np.random.default_rng(seed).choice(pool, size=count, replace=False)
    full = np.zeros(shape[0] * shape[1], dtype=bool)
    full[chosen] = True
    return KvPlan("random", full.reshape(shape), eligible, sink=sink, recent_window=window, budget=budget,
                  extra={"seed": seed})


def uniform_for_bytes(shape: tuple[int, int], byte_fraction: float, tokens: int, *, eligible: np.ndarray,
                      sink: int = DEFAULT_SINK) -> KvPlan:
    """Every KV head streaming, sink + window = ``round(byte_fraction x tokens)`` (the sink shrinks first
    below ``sink`` tokens), so the KV bytes after ``tokens`` tokens are ``byte_fraction``."""
    kept = int(round(byte_fraction * tokens))
    sink = min(sink, kept)
    return KvPlan("uniform", np.zeros(shape, dtype=bool), _eligible(eligible, shape), sink=sink,
                  recent_window=kept - sink, budget=byte_fraction, extra={"matched_tokens": tokens})


def retrieval_snapkv(kv_scores: np.ndarray, budget: float, *, eligible: np.ndarray,
                     settings: PolicySettings = PolicySettings()) -> KvPlan:
    """``retrieval-snapkv``: KV heads above ``settings.threshold`` full (best first, within ``full_share`` of
    the budget), the others an equal share of what is left."""
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    eligible = _eligible(eligible, kv_scores.shape)
    heads = int(eligible.sum()) * kv_scores.shape[1]
    ranked = [i for i in _ranked(kv_scores, eligible) if kv_scores.flat[i] > settings.threshold]
    count = min(len(ranked), whole_head_count(settings.full_share, budget, heads))
    keep = np.zeros(kv_scores.size)
    keep[ranked[:count]] = 1.0
    keep[keep < 1.0] = rest_share(budget, heads, count)
    return token_plan("retrieval-snapkv", keep.reshape(kv_scores.shape), eligible, settings, budget,
                      {"full_share": settings.full_share, "threshold": settings.threshold})


def pooled_plan(policy: str, kv_scores: np.ndarray, budget: float, *, eligible: np.ndarray,
                settings: PolicySettings = PolicySettings()) -> KvPlan:
    """``adaptive`` (``snapkv``'s equal shares) or ``retrieval-adaptive`` (``retrieval-snapkv``'s whole heads and
    shares), with the shares of the heads that are not whole pooled for the evidence to divide."""
    plan = (token_plan(policy, np.full(np.shape(kv_scores), float(budget)), eligible, settings, budget)
            if policy == "adaptive" else replace(retrieval_snapkv(kv_scores, budget, eligible=eligible,
                                                                  settings=settings), policy=policy))
    return replace(plan, pooled=True, floor_share=settings.floor_share, pool=settings.pool)


def whole_head_count(full_share: float, budget: float, heads: int) -> int:
    """How many of ``heads`` KV heads ``retrieval-snapkv`` keeps whole at most: those that fill ``full_share``
    of the budget's ``budget x heads`` head-contexts."""
    return int(math.floor(full_share * budget * heads + EPS))


def rest_share(budget: float, heads: int, whole: int) -> float:
    """Fraction of the context each of the ``heads - whole`` other KV heads keeps when ``whole`` heads keep
    everything and all ``heads`` together hold ``budget`` of the bytes."""
    return (budget * heads - whole) / (heads - whole) if heads > whole else 0.0


def share_tokens(share, tokens: int):
    """Tokens kept of a ``tokens``-token context at ``share`` (scalar or array), rounded as plans round them."""
    return np.clip(np.floor(np.asarray(share) * tokens + 0.5 + EPS), 0, tokens).astype(np.int64)


def headkv_keep(kv_scores: np.ndarray, budget: float, *, eligible: np.ndarray, floor_share: float = 0.2) -> np.ndarray:
    """(layers, kv_heads) fractions of the context: ``budget x N`` split over the N eligible KV heads.

    Each KV head gets ``floor_share x budget``; the rest goes in proportion to the (non-negative) scores
    (equally when all are zero); a head above 1 (the whole context) is capped and its excess goes to
    the uncapped heads the same way, until none exceeds 1.
    """
    kv_scores = np.asarray(kv_scores, dtype=np.float64)
    eligible = _eligible(eligible, kv_scores.shape)
    rows = np.repeat(eligible, kv_scores.shape[1]).reshape(kv_scores.shape)
    weights = np.clip(kv_scores[rows], 0, None)
    n = weights.size
    share = np.full(n, min(1.0, floor_share * budget))
    left = min(budget, 1.0) * n - share.sum()
    capped = np.zeros(n, dtype=bool)
    while left > EPS and not capped.all():
        w = np.where(capped, 0.0, weights)
        w = w if w.sum() > 0 else (~capped).astype(np.float64)
        share += left * w / w.sum()
        over = share > 1.0
        left = float((share[over] - 1.0).sum())
        share[over] = 1.0
        capped |= share >= 1.0 - EPS
    keep = np.zeros(kv_scores.shape)
    keep[rows] = share
    return keep


def _eligible(eligible, shape) -> np.ndarray:
    eligible = np.asarray(eligible, dtype=bool)
    if eligible.shape != (shape[0],):
        raise ValueError(f"eligible must be (layers,) = ({shape[0]},), got {eligible.shape}")
    return eligible
