"""Head scores for other KV-cache tools: DuoAttention pattern directories and HeadKV score files.

DuoAttention pattern directory (what ``duo_attn.utils.load_attn_pattern`` in mit-han-lab/duo-attention
and ``DuoAttentionPress.load_attention_pattern`` in NVIDIA/kvpress read):
    full_attention_heads.tsv  one line per layer, one tab-separated float per KV head, no header.
                              Both loaders read it with ``np.loadtxt(..., delimiter="\\t")`` and clip
                              it to [0, 1]; a higher value means "keep this KV head's full cache".
                              They binarize by rank (DuoAttention's ``sparsify_attention_heads(...,
                              sparsity=s)``, kvpress's ``head_compression_ratio``), so retrieval
                              scores serve as they are. We write each KV head's retrieval score (max
                              over its query-head group), divided by the largest one if any exceeds 1
                              so that the loaders' clipping cannot tie the top heads.
    config.json               ``sink_size`` and ``recent_size``: what a streaming head keeps. We add
                              ``retrieval_heads`` (provenance); the loaders ignore other keys.
HeadKV score file (what ``ReasonSnapKVCluster.__init__`` in FYYFU/HeadKV ``headkv/snapkv_utils.py``
reads): the paper's ``{"layer-head": [score per sample]}`` JSON on the first line. HeadKV ignores the
keys: it takes ``np.mean`` of each value in file order, divides by their sum and reshapes to
(num_hidden_layers, num_attention_heads). So the keys must run layer-major with heads in numeric
order, every list must be non-empty and the scores must not all be zero.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.head_scores import HeadScores
from ..errors import UserError
from ..io import write_json_atomic, write_text_atomic

DUO_SCORES = "full_attention_heads.tsv"
DUO_CONFIG = "config.json"
DUO_SINK = 64  # DuoAttention's deployment setting (README example, scripts/longbench.sh, scripts/niah.sh)
DUO_RECENT = 256


def write_duo_pattern(kv: np.ndarray, directory: str | Path, *, sink: int = DUO_SINK,
                      recent: int = DUO_RECENT, info: dict | None = None) -> Path:
    """Write a DuoAttention pattern directory; returns it.

    Args:
        kv: (layers, kv_heads) non-negative scores, one per KV head.
        directory: created if missing; its ``full_attention_heads.tsv`` and ``config.json`` are replaced.
        sink, recent: the streaming heads' sink and recent-window sizes in tokens (``recent`` >= 1:
            kvpress masks ``keys[sink:-recent]``, which is empty for 0).
        info: extra provenance stored under ``config.json["retrieval_heads"]``.
    """
    kv = _check_kv(kv)
    _check_sizes(sink, recent)
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; the duo format writes a directory")
    top = float(kv.max())
    scale = 1.0 / top if top > 1 else 1.0
    write_text_atomic(out / DUO_SCORES, duo_tsv(kv * scale))
    provenance = {**(info or {}), "scale": scale}
    write_json_atomic(out / DUO_CONFIG, {"sink_size": sink, "recent_size": recent, "retrieval_heads": provenance})
    return out


def duo_tsv(kv: np.ndarray) -> str:
    """(layers, kv_heads) values as DuoAttention's TSV text: one line per layer, tabs, no header."""
    return "".join("\t".join(repr(float(x)) for x in row) + "\n" for row in kv)


def read_duo_pattern(directory: str | Path) -> tuple[np.ndarray, int, int]:
    """``(kv, sink_size, recent_size)`` as DuoAttention's ``load_attn_pattern`` returns them.

    ``kv`` is (layers, kv_heads), clipped to [0, 1]. Unlike ``np.loadtxt`` alone, a file with one
    column (one KV head per layer) or one line still reads as two-dimensional.
    """
    path = Path(directory) / DUO_SCORES
    if not path.is_file():
        raise UserError(f"{directory}: not a DuoAttention pattern directory (no {DUO_SCORES})")
    try:
        kv = np.loadtxt(path, dtype=float, delimiter="\t", ndmin=2)
    except ValueError as exc:
        raise UserError(f"{path}: not a tab-separated table of numbers ({exc})") from None
    if kv.size == 0:
        raise UserError(f"{path}: no rows")
    config = read_duo_config(directory)
    return np.clip(kv, 0, 1), config["sink_size"], config["recent_size"]


def read_duo_config(directory: str | Path) -> dict:
    """``config.json`` of a pattern directory, checked for integer ``sink_size`` and ``recent_size``."""
    path = Path(directory) / DUO_CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{directory}: no {DUO_CONFIG} (DuoAttention's loader needs sink_size and recent_size)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a JSON object")
    for key in ("sink_size", "recent_size"):
        value = config.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UserError(f"{path}: {key} must be a non-negative integer, not {value!r}")
    return config


def headkv_dict(scores: HeadScores) -> dict[str, list[float]]:
    """The paper's ``{"layer-head": [score per sample]}``, ordered as HeadKV reshapes it.

    Keys run layer-major, heads in numeric order (``0-9`` before ``0-10``). Raises UserError for
    KV-level scores (HeadKV reshapes to query heads), no samples, or all-zero scores.
    """
    if scores.meta.get("level") == "kv":
        raise UserError("HeadKV needs a score per query head; these scores are per KV head (from a TSV or "
                        "DuoAttention directory)")
    if scores.num_samples == 0:
        raise UserError("no successful samples: HeadKV would average empty score lists into NaN")
    if not scores.samples.any():
        raise UserError("every score is zero: HeadKV divides the scores by their sum")
    return {
        f"{layer}-{head}": [float(x) for x in scores.samples[:, layer, head]]
        for layer in range(scores.num_layers)
        for head in range(scores.num_heads)
    }


def write_headkv(scores: HeadScores, path: str | Path) -> Path:
    """Write the HeadKV score file (one JSON line, see ``headkv_dict``); returns the path."""
    p = Path(path)
    write_text_atomic(p, json.dumps(headkv_dict(scores)) + "\n")
    return p


def _check_kv(kv) -> np.ndarray:
    kv = np.asarray(kv, dtype=np.float64)
    if kv.ndim != 2 or kv.size == 0:
        raise UserError(f"a DuoAttention pattern needs (layers, kv_heads) scores, got shape {kv.shape}")
    if not np.isfinite(kv).all() or (kv < 0).any():
        raise UserError("DuoAttention pattern scores must be finite and non-negative")
    return kv


def _check_sizes(sink, recent) -> None:
    for name, value, least in (("sink", sink, 0), ("recent", recent, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise UserError(f"{name} size must be an integer >= {least}, not {value!r}")
