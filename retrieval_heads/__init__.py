"""retrieval-heads: find, test and use the retrieval heads of transformer language models.

The public API is imported lazily, so ``import retrieval_heads`` stays instant:

    from retrieval_heads import load_model, SweepConfig, run_detection

These names are the stable imports; the modules behind them (``core``, ``sweep``, the experiments,
``analysis``) may move between releases without shims.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_model": "models",
    "LoadedModel": "models",
    "SweepConfig": "sweep.grid",
    "run_detection": "detection.detect",
    "run_lookup": "kv.lookup",
    "run_niah": "masking.niah",
    "run_mask_sweep": "masking.sweep",
    "plan_masking": "masking.heads",
    "load_scores": "analysis.formats",
    "merge_runs": "cli.merge",
    "HeadScores": "core.head_scores",
    "StopRule": "sweep.stability",
    "attention_control": "core.hooks",
    "AttentionControl": "core.hooks",
    "AblationMode": "core.hooks",
    "AblationPhase": "core.hooks",
    "HeadwiseCache": "kv.cache",
    "HeadwiseAttention": "kv.attention",
    "top_fraction": "kv.policy",
    "eligible_layers": "kv.policy",
    "CompressedCache": "kv.compressed",
    "run_kv_eval": "kv.evaluate",
    "run_restore": "kv.restore",
    "UserError": "errors",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'retrieval_heads' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
