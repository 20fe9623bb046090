"""A kvpress ``DuoAttentionPress`` whose heads come from a local DuoAttention pattern directory.

kvpress's own ``DuoAttentionPress`` only downloads the patterns DuoAttention published for six
checkpoints (``load_attention_pattern``, keyed by ``model.config.name_or_path``). This subclass reads
a directory written by ``retrieval-heads convert RUN DIR --format duo`` (or one of DuoAttention's)
instead; everything else (which heads stream, the masking, ``compression_ratio``) is kvpress's.

Needs kvpress, which this package does not depend on: kvpress 0.5.5 declares ``transformers<5.3``,
so it lives in its own environment (docs/kvpress.md). This module uses only numpy from us.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.exports import read_duo_pattern
from ..errors import UserError

try:
    from kvpress import DuoAttentionPress
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "retrieval_heads.kv.press needs kvpress (pip install kvpress==0.5.5 in an environment with "
        "transformers<5.3; see docs/kvpress.md)"
    ) from exc


@dataclass
class PatternDuoAttentionPress(DuoAttentionPress):
    """``DuoAttentionPress`` reading ``pattern_dir`` (full_attention_heads.tsv + config.json).

    ``head_compression_ratio`` is the fraction of KV heads that become streaming heads (sink +
    recent window), lowest scores first: keeping the top 25% of KV heads full is 0.75.
    """

    pattern_dir: str = ""

    def __post_init__(self):
        if not self.pattern_dir:
            raise UserError("PatternDuoAttentionPress needs pattern_dir")
        if self.on_the_fly_scoring:
            raise UserError("PatternDuoAttentionPress reads its pattern from pattern_dir; on_the_fly_scoring "
                            "would ignore it")
        if not 0 <= self.head_compression_ratio <= 1:
            raise UserError(f"head_compression_ratio must lie in [0, 1], not {self.head_compression_ratio}")

    def load_attention_pattern(self, model):
        """``(sink_size, recent_size, scores)``; scores (layers, kv_heads) checked against ``model``."""
        kv, sink, recent = read_duo_pattern(self.pattern_dir)
        config = model.config.get_text_config()
        layers = config.num_hidden_layers
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        if kv.shape != (layers, kv_heads):
            raise UserError(f"{self.pattern_dir}: pattern is {kv.shape[0]} layers x {kv.shape[1]} KV heads, "
                            f"the model has {layers} x {kv_heads}")
        return sink, recent, kv


def duo_attention_press(pattern_dir, head_compression_ratio: float) -> PatternDuoAttentionPress:
    """A kvpress press streaming the ``head_compression_ratio`` lowest-scoring KV heads of ``pattern_dir``.

    Use it as any press: ``with press(model): model(input_ids, past_key_values=cache)``, or
    ``pipeline("kv-press-text-generation", ...)(context, question=q, press=press)``.
    """
    return PatternDuoAttentionPress(head_compression_ratio=head_compression_ratio, pattern_dir=str(pattern_dir))
