"""The paper's Fig. 7 as one call: NIAH score as K grows, top-K retrieval heads against K random heads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..core.head_scores import HeadScores
from ..core.hooks import AttentionControl
from ..errors import UserError
from ..io import write_json_atomic
from ..models import LoadedModel
from ..sweep.grid import SweepConfig
from ..sweep.haystack import needles_metric
from .heads import MaskPlan, Selection, random_heads, random_pool, top_heads
from .niah import run_niah

DEFAULT_KS = (0, 2, 5, 10, 20, 30, 50, 100)


def usable_ks(ks: list[int], scores: HeadScores) -> list[int]:
    """``ks`` capped at the model's head count and at the heads random-K can draw from (``random_pool``)."""
    kept = sorted({k for k in ks if 0 <= k <= min(len(random_pool(scores, k)), scores.num_layers * scores.num_heads)})
    if not kept:
        raise UserError(f"no K in {ks} fits this model ({len(random_pool(scores, 0))} non-retrieval heads)")
    return kept


def run_mask_sweep(
    loaded: LoadedModel,
    config: SweepConfig,
    out: str | Path,
    scores: HeadScores,
    *,
    ks: list[int] = list(DEFAULT_KS),
    control: AttentionControl | None = None,
    seed: int = 0,
    per_sample: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Run NIAH with no heads, top-K and random-K heads masked for every K; write the table and the curve.

    Each condition is an ordinary NIAH run directory under ``out`` (``none``, ``top-K``, ``random-K``),
    so an interrupted sweep resumes condition by condition. ``per_sample`` draws new random heads for
    every sample (keyed by sample id) instead of one set per K.
    """
    from ..analysis.plots.niah import mask_curve

    out = Path(out)
    control = control or AttentionControl()
    rows = []
    for selection, k in _conditions(usable_ks(ks, scores)):
        if selection is Selection.TOP:
            plan = MaskPlan(Selection.TOP, k, tuple(top_heads(scores, k)))
        elif selection is Selection.RANDOM:
            plan = MaskPlan(Selection.RANDOM, k, tuple(random_heads(scores, k, seed)), per_sample=per_sample, seed=seed,
                            scores=scores)
        else:
            plan = MaskPlan()
        name = "none" if k == 0 else f"{selection.value}-{k}"
        result = run_niah(loaded, config, out / name, plan=plan, control=replace(control, ablate=None, top1={}),
                          resume=resume, overwrite=overwrite, progress=progress)
        rows.append({"selection": plan.selection.value, "k": k, "mean_score": result.summary["mean_score"],
                     "contains_rate": result.summary["contains_rate"], "failures": result.summary["failures"],
                     "masked_heads": plan.masked_heads})
    summary = {"model": loaded.name, "config": config.to_dict(), "metric": needles_metric(config.needles),
               "mask_mode": control.mode.value,
               "mask_phase": control.phase.value, "seed": seed, "random_per_sample": per_sample, "rows": rows}
    write_json_atomic(out / "summary.json", summary)
    title = f"{loaded.name}: top-K vs random-K heads masked\n{control.mode.value} mode, {control.phase.value} phase"
    mask_curve(rows, out / "mask_sweep.png", title=title)
    return summary


def _conditions(ks: list[int]):
    for k in ks:
        if k == 0:
            yield Selection.NONE, 0
        else:
            yield Selection.TOP, k
            yield Selection.RANDOM, k
