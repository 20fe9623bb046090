"""How stable a set of retrieval heads is: a bootstrap over successful samples, its curve, the stop rule.

A head's retrieval score is a mean over successful samples, so the top-K heads and the retrieval
heads (mean > ``RETRIEVAL_THRESHOLD``) carry sampling noise. ``bootstrap`` resamples the samples
with replacement and measures how often the resampled sets agree with the estimate (Jaccard),
plus per-head percentile intervals. ``stability_curve`` does that after the first n samples for
several n, and ``stopping_point`` picks the first n where the top-K set is stable enough.

Conventions: the top-K set holds the K heads of highest mean that score above 0 (ties broken by
position, like ``HeadScores.top``); heads that never scored are not ranked. The Jaccard of two
empty sets is 1. Pure numpy; every random draw comes from a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.head_scores import RETRIEVAL_THRESHOLD, HeadScores
from ..errors import UserError

DEFAULT_K = 20
DEFAULT_STABILITY = 0.95
# a bootstrap of a handful of samples can look stable by chance (with 1 sample every resample is
# identical), so the rule waits for this many successes; replayed on the paper's five files,
# 30 or 40 instead of 20 change neither the median samples needed nor the Jaccards by more than 0.01
DEFAULT_MIN_SUCCESSES = 20
# a needle with this many failed samples and no successful one is not scheduled again: on a 200-sample tuning
# grid (smollm2-135m), 5 of 10 needles held 79% of the failures, while every length and depth kept succeeding
DEFAULT_DROP_AFTER = 2
DEFAULT_DRAWS = 50  # bootstrap resamples per measurement
DEFAULT_STEP = 10  # checkpoint spacing, in samples, when a published file is replayed


@dataclass(frozen=True)
class Stability:
    """Bootstrap stability of the head scores of ``n_samples`` successful samples.

    Attributes:
        topk_jaccard: mean Jaccard of the resamples' top-K sets with the estimate's.
        retrieval_jaccard: the same for the retrieval-head sets (mean > threshold).
        low, high: (layers, heads) percentile interval of each head's mean score.
    """

    n_samples: int
    k: int
    draws: int
    topk_jaccard: float
    retrieval_jaccard: float
    low: np.ndarray
    high: np.ndarray

    def head_intervals(self, heads: list[tuple[int, int, float]]) -> list[dict]:
        """``[{"layer", "head", "score", "low", "high"}]`` for ``heads`` as (layer, head, score)."""
        return [{"layer": l, "head": h, "score": s, "low": float(self.low[l, h]), "high": float(self.high[l, h])}
                for l, h, s in heads]


@dataclass(frozen=True)
class CurvePoint:
    """Stability after the first ``samples`` samples (``successes`` of them successful)."""

    samples: int
    successes: int
    topk_jaccard: float
    retrieval_jaccard: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StopRule:
    """Stop at the first checkpoint whose top-``k`` bootstrap Jaccard reaches ``stability``,
    once there are at least ``min_successes`` successful samples. Meanwhile, stop scheduling the
    samples of a needle once ``drop_after`` of its samples failed and none succeeded (0: never);
    failed samples add nothing to the scores, which average the successful ones."""

    k: int = DEFAULT_K
    stability: float = DEFAULT_STABILITY
    min_successes: int = DEFAULT_MIN_SUCCESSES
    draws: int = DEFAULT_DRAWS
    seed: int = 0
    drop_after: int = DEFAULT_DROP_AFTER

    def __post_init__(self):
        if self.k < 1:
            raise UserError(f"the top-K set needs K >= 1, not {self.k}")
        if not 0 < self.stability <= 1:
            raise UserError(f"the stability target must lie in (0, 1], not {self.stability:g}")
        if self.min_successes < 1 or self.draws < 1:
            raise UserError("the minimum number of successes and of bootstrap draws must be at least 1")
        if self.drop_after < 0:
            raise UserError(f"needles are dropped after N >= 1 failures (0: never), not {self.drop_after}")

    def met(self, point: CurvePoint) -> bool:
        return point.successes >= self.min_successes and point.topk_jaccard >= self.stability

    def to_dict(self) -> dict:
        return asdict(self)


def as_samples(scores: HeadScores | np.ndarray) -> np.ndarray:
    """(n_samples, layers, heads) float64 array of ``scores`` (validated by ``HeadScores``)."""
    return scores.samples if isinstance(scores, HeadScores) else HeadScores(scores).samples


def top_k_mask(means: np.ndarray, k: int) -> np.ndarray:
    """(m, heads) bool: per row of ``means`` (m, heads), the ``k`` largest entries above 0."""
    order = np.argsort(-means, axis=1, kind="stable")[:, :k]  # (m, k), ties by position
    mask = np.zeros(means.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask & (means > 0)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(m,) Jaccard of the rows of two (m, heads) bool masks; 1 where both rows are empty."""
    union = (a | b).sum(axis=-1)
    both = (a & b).sum(axis=-1)
    return np.where(union > 0, both / np.maximum(union, 1), 1.0)


def bootstrap_means(samples: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """(draws, layers * heads) means of ``draws`` resamples (with replacement) of ``samples`` (n, L, H)."""
    n = samples.shape[0]
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=draws)  # (draws, n)
    return counts @ samples.reshape(n, -1) / n


def bootstrap(scores: HeadScores | np.ndarray, *, k: int = DEFAULT_K, draws: int = DEFAULT_DRAWS,
              seed: int | np.random.Generator = 0, threshold: float = RETRIEVAL_THRESHOLD,
              level: float = 0.95) -> Stability:
    """Stability of the top-``k`` and retrieval-head sets of ``scores`` (n, layers, heads).

    Jaccards are NaN, and intervals zero, when there are no samples.
    """
    samples = as_samples(scores)
    n, layers, heads = samples.shape
    if n == 0:
        zero = np.zeros((layers, heads))
        return Stability(0, k, draws, float("nan"), float("nan"), zero, zero)
    rng = np.random.default_rng(seed)
    full = samples.mean(axis=0).reshape(1, -1)  # (1, L*H)
    boot = bootstrap_means(samples, draws, rng)  # (draws, L*H)
    top = jaccard(top_k_mask(boot, k), top_k_mask(full, k))
    ret = jaccard(boot > threshold, full > threshold)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(boot, [tail, 100 - tail], axis=0).reshape(2, layers, heads)
    return Stability(n, k, draws, float(top.mean()), float(ret.mean()), low, high)


def checkpoint_seed(seed: int, n: int) -> np.random.Generator:
    """The generator of the measurement after ``n`` samples: the same whichever checkpoints are asked."""
    return np.random.default_rng([seed, n])


def measure(samples: np.ndarray, done: int, rule: StopRule) -> CurvePoint:
    """The curve point of successful ``samples`` (s, L, H) after ``done`` samples in all."""
    result = bootstrap(samples, k=rule.k, draws=rule.draws, seed=checkpoint_seed(rule.seed, done))
    return CurvePoint(done, result.n_samples, result.topk_jaccard, result.retrieval_jaccard)


def stability_curve(samples: HeadScores | np.ndarray, checkpoints, k: int = DEFAULT_K,
                    draws: int = DEFAULT_DRAWS, seed: int = 0) -> list[CurvePoint]:
    """Stability after the first n samples of ``samples`` (n, L, H), for each n in ``checkpoints``.

    Every sample here counts as successful (pass only successful samples). Checkpoints beyond
    the number of samples are dropped.
    """
    samples = as_samples(samples)
    rule = StopRule(k=k, draws=draws, seed=seed)
    return [measure(samples[:n], n, rule) for n in sorted(set(checkpoints)) if 0 < n <= samples.shape[0]]


def stopping_point(curve: list[CurvePoint], rule: StopRule = StopRule()) -> CurvePoint | None:
    """The first point of ``curve`` that meets ``rule`` (enough successes, top-K stability >= S), or None."""
    return next((point for point in curve if rule.met(point)), None)


def run_curve(ids: list[str], blocks: list[int], success: list[bool], samples: np.ndarray,
              rule: StopRule) -> list[CurvePoint]:
    """Stability after each block of a run, as a stop check after that block measured it.

    Args:
        ids, blocks, success: per record in run order (``blocks`` non-decreasing).
        samples: (n_records, layers, heads) scores of every record, failed ones included.

    Each point bootstraps the successful records so far taken in id order, the order
    ``successes_by_id`` gives, so a live check and this curve draw the same resamples.
    """
    ends = [i + 1 for i in range(len(blocks)) if i + 1 == len(blocks) or blocks[i + 1] != blocks[i]]
    points = []
    for end in ends:
        chosen = successes_by_id(ids[:end], success[:end])
        points.append(measure(samples[chosen], end, rule))
    return points


def failing_needles(outcomes, after: int) -> dict[int, int]:
    """Needles with at least ``after`` failures and no success, with their failures (none when ``after`` is 0).

    ``outcomes``: (needle index, success) pairs.
    """
    failures: dict[int, int] = {}
    succeeded = set()
    for needle, success in outcomes:
        if success:
            succeeded.add(needle)
        else:
            failures[needle] = failures.get(needle, 0) + 1
    return {needle: n for needle, n in failures.items() if after and n >= after and needle not in succeeded}


def successes_by_id(ids: list[str], success: list[bool]) -> list[int]:
    """Indices of the successful entries, ordered by id."""
    return [i for _, i in sorted((ids[i], i) for i in range(len(ids)) if success[i])]


def set_jaccards(a: np.ndarray, b: np.ndarray, k: int, threshold: float = RETRIEVAL_THRESHOLD) -> tuple[float, float]:
    """(top-``k`` Jaccard, retrieval-set Jaccard) of two (layers, heads) mean-score maps."""
    a, b = a.reshape(1, -1), b.reshape(1, -1)
    top = jaccard(top_k_mask(a, k), top_k_mask(b, k))
    return float(top[0]), float(jaccard(a > threshold, b > threshold)[0])


@dataclass(frozen=True)
class Replay:
    """The stop rule run over one random order of a score file's samples.

    ``stop`` is where it stopped (None: never, then the whole file was used); the Jaccards
    compare the prefix used with the full file.
    """

    stop: CurvePoint | None
    samples_used: int
    topk_jaccard: float
    retrieval_jaccard: float


def replay(samples: np.ndarray, rule: StopRule, *, step: int = DEFAULT_STEP,
           rng: np.random.Generator) -> Replay:
    """Shuffle ``samples`` (n, L, H) with ``rng``, check ``rule`` every ``step`` samples, compare with all."""
    n = samples.shape[0]
    shuffled = samples[rng.permutation(n)]
    checkpoints = sorted({*range(step, n + 1, step), n})
    stop = next((p for p in (measure(shuffled[:c], c, rule) for c in checkpoints) if rule.met(p)), None)
    used = stop.samples if stop else n
    top, ret = set_jaccards(shuffled[:used].mean(axis=0), samples.mean(axis=0), rule.k)
    return Replay(stop, used, top, ret)


def subsample_jaccards(samples: np.ndarray, n: int, k: int, draws: int,
                       rng: np.random.Generator) -> tuple[float, float]:
    """Mean (top-``k``, retrieval-set) Jaccard of ``draws`` random ``n``-sample subsets with the full set."""
    full = samples.mean(axis=0)
    pairs = [set_jaccards(samples[rng.choice(samples.shape[0], n, replace=False)].mean(axis=0), full, k)
             for _ in range(draws)]
    return float(np.mean([p[0] for p in pairs])), float(np.mean([p[1] for p in pairs]))


def split_half(samples: np.ndarray, k: int, *, groups=None, draws: int = 200, seed: int = 0) -> float | None:
    """Mean top-``k`` Jaccard between the mean scores of two disjoint halves of ``samples`` (n, L, H), over
    ``draws`` random splits: how reproducible the top-k set is on other data of the same kind.

    Without ``groups`` the samples are split at random; with ``groups`` (one key per sample, e.g. its
    needle) whole groups are, so no needle is in both halves: the agreement to expect from another
    grid of other needles of half the size. None with fewer than two samples (groups).
    """
    samples = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)
    keys = np.arange(len(samples)) if groups is None else np.asarray(groups)
    unique, index = np.unique(keys, return_inverse=True)
    if len(unique) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        first = np.isin(index, rng.permutation(len(unique))[: len(unique) // 2])
        a, b = samples[first].mean(axis=0, keepdims=True), samples[~first].mean(axis=0, keepdims=True)
        values.append(jaccard(top_k_mask(a, k), top_k_mask(b, k))[0])
    return float(np.mean(values))


def reproducibility(scores: HeadScores, top: int = 20) -> dict:
    """How well two disjoint halves of the samples agree on the top-``top`` and top-10 sets
    (``split_half``): ``samples`` splits samples at random, ``needles`` splits whole needles
    (None unless ``meta["needles"]`` names each sample's needle, as a detection run directory does)."""
    needles = scores.meta.get("needles")
    ks = sorted({10, top})
    return {"k": ks,
            "samples": [split_half(scores.samples, k) for k in ks],
            "needles": None if needles is None else [split_half(scores.samples, k, groups=needles) for k in ks]}


def check_stopping(scores: HeadScores, rule: StopRule = StopRule(), *, step: int = DEFAULT_STEP,
                   orders: int = 20, seed: int = 0) -> dict:
    """Replay ``rule`` on ``orders`` random orders of a score file's samples (e.g. the paper's).

    Returns the samples each order needed, how close each stopped prefix is to the full file,
    and, as a check, direct random subsampling of the median number of samples needed.
    """
    samples = as_samples(scores)
    if samples.shape[0] == 0:
        raise UserError(f"{scores.model or 'the score file'} holds no samples to replay")
    if step < 1 or orders < 1:
        raise UserError("--step and --orders must be at least 1")
    rng = np.random.default_rng(seed)
    runs = [replay(samples, rule, step=step, rng=rng) for _ in range(orders)]
    used = [r.samples_used for r in runs]
    median = int(np.median(used))
    direct_top, direct_ret = subsample_jaccards(samples, median, rule.k, rule.draws, rng)
    top, ret = [r.topk_jaccard for r in runs], [r.retrieval_jaccard for r in runs]
    return {
        "model": scores.model, "n_samples": samples.shape[0], "shape": list(samples.shape[1:]),
        "rule": rule.to_dict(), "step": step, "orders": orders, "seed": seed,
        "n_retrieval_heads": int((samples.mean(axis=0) > RETRIEVAL_THRESHOLD).sum()),
        "samples_needed": used, "never_stopped": sum(r.stop is None for r in runs),
        "median_samples": median, "min_samples": min(used), "max_samples": max(used),
        "stability_at_stop": [r.stop.topk_jaccard if r.stop else None for r in runs],
        "topk_jaccard_mean": float(np.mean(top)), "topk_jaccard_min": float(np.min(top)),
        "retrieval_jaccard_mean": float(np.mean(ret)), "retrieval_jaccard_min": float(np.min(ret)),
        "direct": {"samples": median, "draws": rule.draws, "topk_jaccard": direct_top, "retrieval_jaccard": direct_ret},
    }
