"""A sweep: model x needles x context lengths x depths, turned into samples and tokenised prompts."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

from .errors import UserError
from .haystack import Haystack, Needle, Prompt, build_prompt, load_haystack, load_needles
from .zoo import DEFAULT_MODEL

DEFAULT_LENGTHS = (1000, 1500, 2000)
DEFAULT_DEPTHS = (10.0, 50.0, 90.0)


@dataclass
class SweepConfig:
    """Everything that decides which samples a sweep runs and how; written next to the results."""

    model: str = DEFAULT_MODEL
    needles: str | None = None  # JSONL path; None = the built-in needles
    haystack: str | None = None  # .txt file or directory; None = Python's reference prose
    lengths: list[int] = field(default_factory=lambda: list(DEFAULT_LENGTHS))
    depths: list[float] = field(default_factory=lambda: list(DEFAULT_DEPTHS))
    max_new_tokens: int = 50
    dtype: str = "auto"
    device: str = "cpu"
    chunk_size: int = 512
    share_prefix: bool = True
    batch_size: int = 4  # samples decoded together
    shard: tuple[int, int] = (0, 1)  # (index, count)

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self, needles: list[Needle], haystack_text: str) -> dict:
        """The fields two runs must share for their samples to be comparable (resume, merge)."""
        digest = hashlib.sha256()
        for n in needles:
            digest.update(f"{n.needle}\x00{n.question}\x00{n.real_needle}\x01".encode())
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


@dataclass
class SweepInputs:
    """Needles, haystack and tokenised prompts of a sweep."""

    needles: list[Needle]
    haystack_text: str
    specs: list[SampleSpec]
    prompts: dict[str, Prompt]


def check_inputs(config: SweepConfig) -> tuple[list[Needle], str]:
    """Read and validate needles, haystack and grid, before any model is loaded."""
    needles = load_needles(config.needles)
    text = load_haystack(config.haystack)
    if not config.lengths or not config.depths:
        raise UserError("need at least one context length and one depth")
    bad = [d for d in config.depths if not 0 <= d <= 100]
    if bad:
        raise UserError(f"depths must lie in [0, 100], got {bad[0]:g}")
    return needles, text


def prepare(config: SweepConfig, tokenizer, max_context: int | None) -> SweepInputs:
    """Validate the config against the model and tokenise every prompt of this shard."""
    needles, text = check_inputs(config)
    longest = max(config.lengths)
    if max_context and longest + config.max_new_tokens > max_context:
        raise UserError(
            f"context length {longest} + {config.max_new_tokens} new tokens exceeds the model's maximum of {max_context} tokens"
        )
    haystack = Haystack(text, tokenizer, min_tokens=longest)
    specs = build_grid(len(needles), config.lengths, config.depths, config.shard)
    prompts = {s.id: make_prompt(tokenizer, haystack, needles[s.needle_index], s) for s in specs}
    return SweepInputs(needles, text, specs, prompts)


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
