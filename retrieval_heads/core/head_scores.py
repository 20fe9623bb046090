"""HeadScores: per-sample retrieval scores of every head, their aggregate, and the paper's JSON format."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

RETRIEVAL_THRESHOLD = 0.1  # a head scoring above this (mean over successful samples) is a retrieval head
KEY = re.compile(r"^(\d+)-(\d+)$")


@dataclass
class HeadScores:
    """Retrieval scores of every (layer, head), one matrix per successful sample.

    Attributes:
        samples: (n_samples, layers, heads) float64.
        model: the model these scores describe, when known.
        applicable: (layers, heads) bool, False for heads that do not exist: layers without softmax
            attention (linear-attention, Mamba or convolution layers of hybrid models) and heads
            beyond a layer's own head count. Their scores are 0; they are never ranked, counted as
            retrieval heads, written to the paper's JSON, or masked. None = every head exists.
    """

    samples: np.ndarray
    model: str | None = None
    meta: dict = field(default_factory=dict)
    applicable: np.ndarray | None = None

    def __post_init__(self):
        self.samples = np.asarray(self.samples, dtype=np.float64)
        if self.samples.ndim != 3:
            raise ValueError(f"samples must be (n, layers, heads), got shape {self.samples.shape}")
        if self.applicable is None:
            self.applicable = np.ones(self.samples.shape[1:], dtype=bool)
        self.applicable = np.asarray(self.applicable, dtype=bool)
        if self.applicable.shape != self.samples.shape[1:]:
            raise ValueError(f"applicable must be {self.samples.shape[1:]}, got {self.applicable.shape}")
        self.samples[:, ~self.applicable] = 0.0

    @property
    def attention_layers(self) -> list[int]:
        """Layers with at least one softmax-attention head."""
        return [int(i) for i in np.flatnonzero(self.applicable.any(axis=1))]

    @property
    def num_applicable(self) -> int:
        """Heads that exist (all heads, for models without hybrid layers)."""
        return int(self.applicable.sum())

    @property
    def num_layers(self) -> int:
        return self.samples.shape[1]

    @property
    def num_heads(self) -> int:
        return self.samples.shape[2]

    @property
    def shape(self) -> tuple[int, int]:
        return self.samples.shape[1], self.samples.shape[2]

    @property
    def num_samples(self) -> int:
        return self.samples.shape[0]

    @property
    def mean(self) -> np.ndarray:
        """(layers, heads) mean score over samples; zeros when there are none."""
        if self.num_samples == 0:
            return np.zeros(self.shape)
        return self.samples.mean(axis=0)

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` best existing heads as (layer, head, mean score), best first; ties broken by position."""
        flat = self.mean.ravel()
        exists = np.flatnonzero(self.applicable.ravel())
        order = exists[np.lexsort((exists, -flat[exists]))][:k]
        return [(int(i) // self.num_heads, int(i) % self.num_heads, float(flat[i])) for i in order]

    def retrieval_mask(self, threshold: float = RETRIEVAL_THRESHOLD) -> np.ndarray:
        """(layers, heads) bool: heads whose mean score exceeds ``threshold`` (the paper's 0.1)."""
        return (self.mean > threshold) & self.applicable

    def kv_view(self, num_kv_heads: int, reduce: str = "max") -> np.ndarray:
        """(layers, kv_heads) score of each KV head: max or mean over its query-head group.

        Layers without softmax attention score 0. Under multi-head latent attention (DeepSeek-V2/V3,
        Kimi-K2, MiniCPM3) transformers caches decompressed keys and values per head, so there is one
        KV head per query head and this view is the head view itself.
        """
        if self.num_heads % num_kv_heads:
            raise UserError(f"{self.num_heads} query heads cannot be grouped into {num_kv_heads} KV heads")
        grouped = self.mean.reshape(self.num_layers, num_kv_heads, self.num_heads // num_kv_heads)
        if reduce not in ("max", "mean"):
            raise ValueError(f"reduce must be 'max' or 'mean', not {reduce!r}")
        return grouped.max(axis=2) if reduce == "max" else grouped.mean(axis=2)

    def to_paper_dict(self) -> dict[str, list[float]]:
        """The paper's format: ``{"layer-head": [score per successful sample]}``, existing heads only."""
        return {
            f"{layer}-{head}": [float(x) for x in self.samples[:, layer, head]]
            for layer in range(self.num_layers)
            for head in range(self.num_heads)
            if self.applicable[layer, head]
        }

    @classmethod
    def from_paper_dict(cls, data: dict, *, source: str = "scores", model: str | None = None,
                        shape: tuple[int, int] | None = None) -> "HeadScores":
        """Parse the paper's ``{"layer-head": [...]}`` dict, validating keys, lengths and values.

        ``shape`` (layers, heads) is the model's, when known (a run's ``summary.json``); else the
        largest indices give it. Absent heads are not applicable (layers without softmax attention
        omit all theirs; a layer with fewer heads omits its last ones); any other gap is an error.
        """
        if not isinstance(data, dict) or not data:
            raise UserError(f"{source}: expected a non-empty JSON object of \"layer-head\" keys")
        cells = {}
        for key, values in data.items():
            match = KEY.match(str(key))
            if not match:
                raise UserError(f"{source}: key {key!r} is not of the form \"layer-head\"")
            if not isinstance(values, list) or not all(_is_number(v) for v in values):
                raise UserError(f"{source}: value of {key!r} must be a list of numbers")
            cells[int(match[1]), int(match[2])] = values
        layers, heads = shape or (1 + max(l for l, _ in cells), 1 + max(h for _, h in cells))
        if any(l >= layers or h >= heads for l, h in cells):
            raise UserError(f"{source}: heads beyond the model's {layers}x{heads} grid")
        applicable = np.zeros((layers, heads), dtype=bool)
        for layer, head in cells:
            applicable[layer, head] = True
        counts = applicable.sum(axis=1)
        if (applicable != (np.arange(heads)[None, :] < counts[:, None])).any():
            raise UserError(f"{source}: {len(cells)} heads given, a {layers}x{heads} grid needs {layers * heads} "
                            "(only whole layers or a layer's last heads may be absent)")
        lengths = {len(v) for v in cells.values()}
        if len(lengths) != 1:
            raise UserError(f"{source}: heads have different numbers of samples {sorted(lengths)[:5]}")
        samples = np.zeros((lengths.pop(), layers, heads))
        for (layer, head), values in cells.items():
            samples[:, layer, head] = values
        if not np.isfinite(samples).all() or (samples < 0).any():
            raise UserError(f"{source}: scores must be finite and non-negative")
        return cls(samples, model=model, applicable=None if applicable.all() else applicable)

    def save_paper_json(self, path: str | Path) -> None:
        from ..io import write_json_atomic

        write_json_atomic(path, self.to_paper_dict(), indent=None)

    @classmethod
    def load_paper_json(cls, path: str | Path) -> "HeadScores":
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"Score file not found: {p}") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{p}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
        return cls.from_paper_dict(data, source=str(p), model=p.stem)


def head_fields(scores: HeadScores, num_kv_heads: int) -> dict:
    """The head fields of a scores run's ``summary.json`` (detect, lookup): the 0.1 threshold, the heads above
    it, the top 20 and the KV-head view (max and mean over each group)."""
    return {
        "retrieval_threshold": RETRIEVAL_THRESHOLD,
        "n_retrieval_heads": int(scores.retrieval_mask().sum()),
        "top_heads": [{"layer": l, "head": h, "score": s} for l, h, s in scores.top(20)],
        "kv_head_scores": {reduce: scores.kv_view(num_kv_heads, reduce).round(6).tolist() for reduce in ("max", "mean")},
    }


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
