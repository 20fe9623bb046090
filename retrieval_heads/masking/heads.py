"""Which heads to ablate: top-K by retrieval score, K random non-retrieval heads, or an explicit list."""

from __future__ import annotations

import enum
import random
import re
import zlib
from dataclasses import dataclass

import numpy as np

from ..core.head_scores import RETRIEVAL_THRESHOLD, HeadScores
from ..errors import UserError

Head = tuple[int, int]
HEAD = re.compile(r"^\s*(\d+)-(\d+)\s*$")


class Selection(str, enum.Enum):
    NONE = "none"
    TOP = "top"
    RANDOM = "random"
    EXPLICIT = "explicit"


def parse_heads(text: str, num_layers: int, num_heads: int, applicable: np.ndarray | None = None) -> list[Head]:
    """``"16-19,11-15"`` -> [(16, 19), (11, 15)], each checked against the model's shape.

    ``applicable`` (layers, heads) bool: heads that exist; layers without softmax attention
    (hybrid models) have none to mask.
    """
    heads = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        match = HEAD.match(part)
        if not match:
            raise UserError(f"head '{part}' is not of the form layer-head (e.g. 16-19)")
        layer, head = int(match[1]), int(match[2])
        if layer >= num_layers or head >= num_heads:
            raise UserError(f"head '{part}' does not exist: the model has {num_layers} layers x {num_heads} heads")
        if applicable is not None and not applicable[layer, head]:
            raise UserError(f"head '{part}' does not exist: layer {layer} has "
                            f"{'no softmax attention (a linear-attention, Mamba or convolution layer)' if not applicable[layer].any() else f'{int(applicable[layer].sum())} heads'}")
        heads.append((layer, head))
    if not heads:
        raise UserError("--mask-heads lists no heads")
    return heads


def check_shape(scores: HeadScores, num_layers: int, num_heads: int) -> None:
    if scores.shape != (num_layers, num_heads):
        raise UserError(
            f"score file is for a {scores.num_layers}x{scores.num_heads} model, this model has {num_layers}x{num_heads} heads"
        )


def check_k(k: int, available: int, what: str) -> None:
    if k < 0:
        raise UserError(f"{what}: K must be >= 0")
    if k > available:
        raise UserError(f"{what}: K={k} is larger than the {available} heads available")


def top_heads(scores: HeadScores, k: int) -> list[Head]:
    """The ``k`` highest-scoring heads (ties broken by position)."""
    check_k(k, scores.num_applicable, "--mask-top")
    return [(layer, head) for layer, head, _ in scores.top(k)]


def random_pool(scores: HeadScores, k: int, threshold: float = RETRIEVAL_THRESHOLD) -> list[Head]:
    """The heads ``k`` random heads are drawn from: the non-retrieval heads (score at most ``threshold``) outside
    the top ``k``, so that the control never masks a head of the top-K it is compared with (when K exceeds the
    number of retrieval heads, the top K reach below the threshold)."""
    top = {(layer, head) for layer, head, _ in scores.top(k)}
    mean = scores.mean
    return [(l, h) for l in range(scores.num_layers) for h in range(scores.num_heads)
            if mean[l, h] <= threshold and scores.applicable[l, h] and (l, h) not in top]


def random_heads(scores: HeadScores, k: int, seed: int, threshold: float = RETRIEVAL_THRESHOLD) -> list[Head]:
    """``k`` heads drawn with ``seed`` from ``random_pool``: non-retrieval heads outside the top ``k``."""
    pool = random_pool(scores, k, threshold)
    check_k(k, len(pool), "--mask-random (non-retrieval heads outside the top K)")
    return sorted(random.Random(seed).sample(pool, k))


@dataclass(frozen=True)
class MaskPlan:
    """The ablation of a run: how heads are chosen, and the heads (fixed, or re-drawn per sample)."""

    selection: Selection = Selection.NONE
    k: int = 0
    heads: tuple[Head, ...] = ()
    per_sample: bool = False
    seed: int = 0
    scores: HeadScores | None = None

    def heads_for(self, sample_id: str) -> tuple[Head, ...]:
        """Heads ablated for the sample ``sample_id`` (a per-sample draw depends on the id, not on sharding)."""
        if self.selection is Selection.RANDOM and self.per_sample:
            return tuple(random_heads(self.scores, self.k, seed=self.seed * 1_000_003 + zlib.crc32(sample_id.encode())))
        return self.heads

    @property
    def masked_heads(self) -> list[str] | str:
        """``"layer-head"`` names of the masked heads, or ``"per-sample"`` when each sample draws its own."""
        if self.selection is Selection.RANDOM and self.per_sample:
            return "per-sample"
        return [f"{l}-{h}" for l, h in self.heads]

    def describe(self) -> dict:
        return {"selection": self.selection.value, "k": self.k, "per_sample": self.per_sample, "seed": self.seed,
                "heads": [f"{l}-{h}" for l, h in self.heads]}


def plan_masking(
    *, num_layers: int, num_heads: int, scores: HeadScores | None = None, mask_top: int | None = None,
    mask_random: int | None = None, mask_heads: str | None = None, seed: int = 0, per_sample: bool = False,
    applicable: np.ndarray | None = None,
) -> MaskPlan:
    """Turn the masking flags into a MaskPlan; at most one of top, random or explicit.

    ``applicable`` (layers, heads) bool marks the heads that exist (``ModelInfo.applicable()``).
    """
    chosen = [name for name, v in (("--mask-top", mask_top), ("--mask-random", mask_random), ("--mask-heads", mask_heads)) if v is not None]
    if len(chosen) > 1:
        raise UserError(f"choose one of {', '.join(chosen)}")
    if mask_heads is not None:
        heads = parse_heads(mask_heads, num_layers, num_heads, applicable)
        return MaskPlan(Selection.EXPLICIT, len(heads), tuple(heads))
    if mask_top is None and mask_random is None:
        return MaskPlan()
    if scores is None:
        raise UserError(f"{chosen[0]} needs --scores FILE (a head-score file or a detection run directory)")
    check_shape(scores, num_layers, num_heads)
    if mask_top is not None:
        return MaskPlan(Selection.TOP, mask_top, tuple(top_heads(scores, mask_top)), seed=seed)
    heads = tuple(random_heads(scores, mask_random, seed))
    return MaskPlan(Selection.RANDOM, mask_random, heads, per_sample=per_sample, seed=seed, scores=scores)
