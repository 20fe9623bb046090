"""A sweep: model x needles x context lengths x depths, turned into samples and tokenised prompts."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from ..errors import UserError
from ..zoo import DEFAULT_MODEL
from .haystack import Haystack, Needle, NeedleSet, Prompt, build_prompt, load_needle_set

DEFAULT_LENGTHS = (1000, 1500, 2000)
DEFAULT_DEPTHS = (10.0, 50.0, 90.0)
# the one depth of a task with no needle (``NeedleSet.has_depth`` False): its samples are recorded at depth 0
NO_DEPTH = 0.0
# samples per block of the balanced order when a run may stop early (``detect --until-stable``)
DEFAULT_BLOCK_SIZE = 20
# axis pairs (0 needle, 1 length, 2 depth) whose combinations ``balanced_order`` spreads evenly
BALANCED_PAIRS = ((0, 1), (1, 2))


@dataclass
class SweepConfig:
    """Everything that decides which samples a sweep runs and how; written next to the results."""

    model: str = DEFAULT_MODEL
    needles: str | None = None  # JSONL path or a named set (ruler:<task>[:seed=S][:n=N]); None = the built-in needles
    haystack: str | None = None  # name, .txt file or directory; None = the needle set's own, else Python's reference prose
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    depths: list[float] = field(default_factory=lambda: list(DEFAULT_DEPTHS))
    max_new_tokens: int = 50
    dtype: str = "auto"
    device: str = "cpu"
    chunk_size: int = 512
    share_prefix: bool = True
    batch_size: int = 4  # samples decoded together
    shard: tuple[int, int] = (0, 1)  # (index, count)
    block_size: int = 0  # run in balanced blocks of this many samples (``sample_blocks``); 0: one block

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self, needles: list[Needle], haystack_text: str) -> dict:
        """The fields two runs must share for their samples to be comparable (resume, merge)."""
        digest = hashlib.sha256()
        for n in needles:
            digest.update(n.fingerprint().encode())
        return {
            "model": self.model,
            "dtype": self.dtype,
            "max_new_tokens": self.max_new_tokens,
            "needles_sha256": digest.hexdigest(),
            "haystack_sha256": hashlib.sha256(haystack_text.encode()).hexdigest(),
        }


@dataclass(frozen=True)
class SampleSpec:
    """One cell of the grid."""

    needle_index: int
    context_length: int
    depth_percent: float

    @property
    def id(self) -> str:
        return f"n{self.needle_index}-L{self.context_length}-d{self.depth_percent:g}"


def linear_grid(minimum: float, maximum: float, count: int) -> list[float]:
    """``count`` evenly spaced values from ``minimum`` to ``maximum`` (the paper's np.linspace)."""
    if count < 1:
        raise UserError("a grid needs at least one value")
    if count == 1:
        return [float(minimum)]
    step = (maximum - minimum) / (count - 1)
    return [minimum + i * step for i in range(count)]


def build_grid(num_needles: int, lengths: list[int], depths: list[float], shard: tuple[int, int] = (0, 1)) -> list[SampleSpec]:
    """All samples in a fixed order (needle, length, depth); ``shard=(i, n)`` keeps every n-th from i."""
    index, count = shard
    specs = [SampleSpec(n, int(length), float(depth)) for n in range(num_needles) for length in lengths for depth in depths]
    return specs[index::count]


def balanced_order(specs: list[SampleSpec]) -> list[SampleSpec]:
    """``specs`` in an order whose every prefix covers needles, lengths and depths evenly.

    Greedy: each next sample is the one whose needle, length and depth have been used least so
    far (then whose (needle, length) and (length, depth) pairs have), ties going to values spread
    furthest from those already used (a van der Corput order of each axis), then to grid order.
    Deterministic for a set of specs, whatever order they come in; works on any subset of the grid,
    e.g. a shard.

    (Needle, depth) pairs are not balanced: left free, the order gives a needle the same depth at
    two lengths within a block, and at depth 0 (the needle first) those two prompts share all of the
    shorter one. In blocks of 20 of a 10-needle x 4-length x 5-depth grid (smollm2 tokenizer), the first
    60 samples reuse 0.34 of their prefill tokens instead of 0.28 (``prefix_reuse``, chunks of 512).
    """
    import numpy as np

    specs = sorted(specs, key=lambda s: (s.needle_index, s.context_length, s.depth_percent))
    idx = _axis_indices(specs)  # (S, 3)
    spread = np.array([[_radical_inverse(int(i)) for i in row] for row in idx]).reshape(-1, 3).sum(axis=1)
    counts = [np.zeros(idx[:, a].max(initial=0) + 1) for a in range(3)]
    pairs = {(a, b): np.zeros((len(counts[a]), len(counts[b]))) for a, b in BALANCED_PAIRS}
    scale = 3 * len(specs) + 1  # more than any sum of pair counts
    left = np.ones(len(specs), dtype=bool)
    order = []
    for _ in specs:
        single = sum(counts[a][idx[:, a]] for a in range(3))  # (S,)
        pair = sum(c[idx[:, a], idx[:, b]] for (a, b), c in pairs.items())  # (S,)
        pick = int(np.argmin(np.where(left, (single * scale + pair) * 4 + spread, np.inf)))  # spread < 3 < 4
        left[pick] = False
        order.append(specs[pick])
        for a in range(3):
            counts[a][idx[pick, a]] += 1
        for (a, b), c in pairs.items():
            c[idx[pick, a], idx[pick, b]] += 1
    return order


def _axis_indices(specs: list[SampleSpec]):
    """(S, 3) int array: index of each spec's needle, length and depth among the distinct values."""
    import numpy as np

    columns = [[s.needle_index for s in specs], [s.context_length for s in specs], [s.depth_percent for s in specs]]
    ranks = [{v: i for i, v in enumerate(sorted(set(col)))} for col in columns]
    return np.array([[rank[v] for v in col] for rank, col in zip(ranks, columns)], dtype=int).T.reshape(-1, 3)


def sample_blocks(specs: list[SampleSpec], block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, int]:
    """Block index of every sample id: consecutive ``block_size`` samples of ``balanced_order``.

    Stopping after any block leaves a balanced sample; the runner sorts each block by prompt
    tokens so its prompts still share prefixes. ``block_size`` 0 puts everything in block 0.
    """
    if block_size < 0:
        raise UserError(f"block size must be 0 (one block) or positive, not {block_size}")
    if block_size == 0:
        return {s.id: 0 for s in specs}
    return {s.id: i // block_size for i, s in enumerate(balanced_order(specs))}


def prefix_reuse(prompts: list[list[int]], chunk_size: int) -> tuple[int, int]:
    """(tokens reused, tokens to prefill in all) when the engine prefills ``prompts`` in this order.

    Each prompt prefills all its ids but the last (the first decoding input) and keeps what
    ``reusable_length`` allows of the prompt before it.
    """
    from ..core.engine import reusable_length

    reused, total, previous = 0, 0, None
    for ids in prompts:
        ids = ids[:-1]
        reused += reusable_length(previous, ids, chunk_size) if previous is not None else 0
        total += len(ids)
        previous = ids
    return reused, total


def _radical_inverse(i: int) -> float:
    """Base-2 van der Corput number of ``i``: 0, 0.5, 0.25, 0.75, ... (spreads 0, 1, 2, ... over [0, 1))."""
    result, scale = 0.0, 0.5
    while i:
        result += scale * (i & 1)
        i >>= 1
        scale /= 2
    return result


@dataclass
class SweepInputs:
    """Needles, haystack and tokenised prompts of a sweep."""

    needles: list[Needle]
    haystack_text: str  # what the run's identity hashes: the haystack, or what a task's contexts are built from
    specs: list[SampleSpec]
    prompts: dict[str, Prompt]
    metric: str = "rouge1_recall"  # how answers are scored (scoring.answer_score), the needle set's


def check_inputs(config: SweepConfig) -> tuple[NeedleSet, str]:
    """Read and validate needles, haystack and grid, before any model is loaded.

    The haystack is ``config.haystack``, or the one a named needle set names (which a set defined by its
    haystack, like ruler:niah_single_1, keeps); for a task that builds its own contexts (ruler:vt, ...), what
    they are built from (``NeedleSet.haystack_text``).
    """
    needle_set = load_needle_set(config.needles)
    text = needle_set.haystack_text(config.haystack)
    if not config.lengths or not config.depths:
        raise UserError("need at least one context length and one depth")
    bad = [d for d in config.depths if not 0 <= d <= 100]
    if bad:
        raise UserError(f"depths must lie in [0, 100], got {bad[0]:g}")
    return needle_set, text


def prepare(config: SweepConfig, tokenizer, max_context: int | None) -> SweepInputs:
    """Validate the config against the model and tokenise every prompt of this shard."""
    needle_set, text = check_inputs(config)
    needles = list(needle_set.needles)
    longest = max(config.lengths)
    if max_context and longest + config.max_new_tokens > max_context:
        raise UserError(
            f"context length {longest} + {config.max_new_tokens} new tokens exceeds the model's maximum of {max_context} tokens"
        )
    specs = build_grid(len(needles), config.lengths, grid_depths(needle_set, config.depths), config.shard)
    if needle_set.contexts is not None:
        from .contexts import task_prompt

        prompts = {s.id: task_prompt(tokenizer, needle_set.contexts, needles[s.needle_index], s.needle_index,
                                     s.context_length) for s in specs}
    else:
        haystack = Haystack(text, tokenizer, min_tokens=longest)
        prompts = {s.id: make_prompt(tokenizer, haystack, needles[s.needle_index], s) for s in specs}
    return SweepInputs(needles, text, specs, prompts, metric=needle_set.metric)


def grid_depths(needle_set: NeedleSet, depths: list[float]) -> list[float]:
    """The depths a sweep of ``needle_set`` runs: ``depths``, or ``NO_DEPTH`` alone for a task with no needle."""
    return list(depths) if needle_set.has_depth else [NO_DEPTH]


def make_prompt(tokenizer, haystack: Haystack, needle: Needle, spec: SampleSpec) -> Prompt:
    """The prompt of ``spec``, its haystack sized so the whole prompt has about ``context_length`` tokens."""
    overhead = len(build_prompt(tokenizer, "", needle, 0).ids)
    budget = spec.context_length - overhead
    if budget <= 0:
        raise UserError(f"context length {spec.context_length} is shorter than the prompt's {overhead} fixed tokens")
    return build_prompt(tokenizer, haystack.cut(budget), needle, spec.depth_percent)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0 <= i < n."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UserError(f"--shard must look like i/n (e.g. 0/4), got '{text}'") from None
    if not 0 <= index < count:
        raise UserError(f"--shard {text}: need 0 <= i < n")
    return index, count
