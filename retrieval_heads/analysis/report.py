"""One self-contained HTML report of a run directory: configuration, detected heads, their properties,
and whatever other results (NIAH, mask sweeps, KV-cache and task evaluations, figures) the run holds.

The file references nothing outside itself: inline CSS, figures as base64 PNG data URIs, every piece
of text passed through ``html.escape``.
"""

from __future__ import annotations

import base64
import html
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from typing import Any, Iterable, Sequence

from ..core.head_scores import HeadScores
from ..errors import UserError
from . import plots, properties
from .formats import RUN_SCORES, load_run_dir, read_summary

# result directories looked for inside the run directory and beside it (runs/<model>/niah, ...)
RESULT_DIRS = ("niah*", "mask*sweep*", "kv*eval*", "tasks*")
MAX_TABLE_ROWS = 500
# summary.json fields the report recomputes and shows in its own sections
DERIVED = ("config", "top_heads", "sparsity", "n_retrieval_heads", "retrieval_threshold", "stability",
           "stability_curve", "kv_head_scores")
STABILITY_PLOT = "stability.png"  # written by detection into the run directory
KV_HEATMAP = "kv_heatmap.png"
REPORT = "report.html"  # the report's name in its directory (``report --out DIR``; default: the run directory)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.45;padding:0 1em}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #3b6ea8;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em}.meta{color:#666}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f5f9}td.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#666;font-size:.9em}
.note{color:#666;font-style:italic}code{background:#f4f4f4;padding:0 .2em}
.pair{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}.pair figure{flex:1 1 45%;min-width:300px}
"""


@dataclass(frozen=True)
class Plot:
    """A written figure: its caption and PNG file."""

    caption: str
    path: Path


def write_plots(scores: HeadScores, out_dir: str | Path, *, top: int = 20,
                num_kv_heads: int | None = None) -> list[Plot]:
    """Every analysis figure of ``scores`` as PNG files in ``out_dir``."""
    out = Path(out_dir)
    name = scores.model or "scores"
    sp = properties.sparsity(scores)
    level = "KV head" if properties.is_kv_level(scores) else "head"
    written = [
        Plot("Mean retrieval score of every head",
             plots.heatmap(scores.mean, out / "heatmap.png", title=f"{name}: mean retrieval score", xlabel=level,
                          applicable=scores.applicable)),
        Plot("Heads by mean score (the paper's Fig. 3 buckets)",
             plots.bucket_histogram([b.label for b in sp.buckets], [b.count for b in sp.buckets],
                                    out / "buckets.png", title=f"{name}: heads by mean score")),
        Plot("Retrieval heads (mean > 0.1) per layer",
             plots.layer_distribution(sp.per_layer, out / "layers.png", title=f"{name}: retrieval heads per layer")),
    ]
    if properties.has_per_sample_scores(scores):
        act = properties.activation(scores)
        shown = act.retrieval or properties.top_heads(scores, top)
        which = "retrieval head" if act.retrieval else "top head"
        written.append(Plot(
            f"Fraction of samples in which each {which} scored > 0 (orange: every sample)",
            plots.activation_frequency([f"L{h.layer}H{h.head}" for h in shown], [h.active_fraction for h in shown],
                                       out / "activation.png", scores=[h.score for h in shown],
                                       title=f"{name}: how often {which}s are active")))
    if num_kv_heads and not properties.is_kv_level(scores) and num_kv_heads < scores.num_heads:
        written.append(Plot(
            f"Score of each KV head (max over its {scores.num_heads // num_kv_heads} query heads)",
            plots.heatmap(scores.kv_view(num_kv_heads, "max"), out / KV_HEATMAP,
                          title=f"{name}: KV-head score (max over group)", xlabel="KV head",
                          applicable=np.repeat(scores.applicable.any(axis=1)[:, None], num_kv_heads, axis=1))))
    return written


def build_report(run_dir: str | Path, out: str | Path | None = None, *, top: int = 20) -> Path:
    """Write the HTML report of ``run_dir`` to ``out`` (default ``run_dir/report.html``); returns its path."""
    from ..io import write_text_atomic

    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"run directory not found: {run}")
    if not (run / RUN_SCORES).is_file():
        raise UserError(f"{run}: not a run directory (no {RUN_SCORES}); run `retrieval-heads detect` first")
    scores = load_run_dir(run)
    target = Path(out) if out is not None else run / REPORT
    write_text_atomic(target, render_report(run, scores, top=top))
    return target


def render_report(run: Path, scores: HeadScores, *, top: int = 20) -> str:
    """The report's HTML text."""
    summary = read_summary(run)
    kv = scores.meta.get("num_kv_heads")
    result = properties.analyze(scores, top=top, num_kv_heads=kv)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_plots(scores, tmp, top=top, num_kv_heads=kv)
        if not any(f.path.name == KV_HEATMAP for f in written):
            written += _summary_kv_heatmap(summary, scores, tmp)
        figures = {f.path.name: _figure(f.caption, f.path) for f in written}
    title = f"Retrieval heads of {scores.model or run.name}"
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="meta">{_e(_shape_line(scores, kv))} &middot; run directory <code>{_e(str(run))}</code></p>',
        _config_section(summary),
        _detection_section(result, figures),
        _activation_section(result, figures),
        _kv_section(result, figures),
        _stability_section(run, summary),
        _results_section(run),
        _images_section(run),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + "\n</body></html>\n"
    )


def _shape_line(scores: HeadScores, kv: int | None) -> str:
    parts = [f"{scores.num_layers} layers x {scores.num_heads} heads"]
    if kv:
        parts.append(f"{kv} KV heads")
    parts.append(f"{scores.num_samples} successful samples")
    return ", ".join(parts)


def _config_section(summary: dict) -> str:
    if not summary:
        return '<h2>Configuration</h2><p class="note">No summary.json in the run directory.</p>'
    config = summary.get("config")
    top_level = {k: v for k, v in summary.items() if k not in DERIVED and not _is_row_list(v)}
    parts = ["<h2>Configuration</h2>", _key_value_table(_flatten(top_level))]
    if isinstance(config, dict):
        parts += ["<h3>Detection settings</h3>", _key_value_table(_flatten(config))]
    return "\n".join(parts)


def _detection_section(result: dict, figures: dict[str, str]) -> str:
    buckets = [[b["label"], b["count"], f'{b["percent"]:.2f}%'] for b in result["buckets"]]
    top = [[i + 1, h["layer"], h["head"], h["score"], h["active_fraction"]] for i, h in enumerate(result["top_heads"])]
    per_layer = ", ".join(f"L{l}: {n}" for l, n in enumerate(result["retrieval_heads_per_layer"]) if n)
    return "\n".join([
        "<h2>Detected retrieval heads</h2>",
        f'<p><b>{result["n_retrieval_heads"]}</b> of {result["shape"]["layers"] * result["shape"]["heads"]} heads '
        f'({result["percent_retrieval_heads"]:.2f}%) have a mean retrieval score above {result["threshold"]:g}.</p>',
        _side_by_side(figures.get("heatmap.png", ""), figures.get(KV_HEATMAP, "")),
        f'<h3>Top {len(top)} heads</h3>',
        _table(["rank", "layer", "head", "mean score", "active fraction"], top),
        "<h3>Sparsity</h3>",
        _table(["mean score", "heads", "percent"], buckets),
        figures.get("buckets.png", ""),
        "<h3>Retrieval heads per layer</h3>",
        f"<p>{_e(per_layer or 'None.')}</p>",
        figures.get("layers.png", ""),
    ])


def _activation_section(result: dict, figures: dict[str, str]) -> str:
    head = "<h2>Dynamic activation</h2>"
    if result["activation"] is None:
        why = "these scores are means only" if result["aggregate"] else "there are no successful samples"
        return head + f'<p class="note">Not available: {why}.</p>'
    act = result["activation"]
    always = ", ".join(f'L{h["layer"]}H{h["head"]} ({h["score"]:.3f})' for h in result["always_active"])
    rows = [[h["layer"], h["head"], h["score"], h["active_fraction"]] for h in act["retrieval_heads"]]
    return "\n".join([
        head,
        f'<p>A head is active in a sample when it scores &gt; 0 there. <b>{act["n_always_active"]}</b> heads are '
        f'active in every one of the {act["n_samples"]} samples.</p>',
        f"<p>Always active (mean score): {_e(always)}</p>" if always else "",
        (f'<p class="note">{act["n_empty_samples"]} samples have no active head at all (a needle-span mismatch?); '
         f'excluding them, {act["n_always_active_nonempty"]} heads are always active.</p>')
        if act["n_empty_samples"] else "",
        figures.get("activation.png", ""),
        "<h3>How often each retrieval head is active</h3>",
        _table(["layer", "head", "mean score", "active fraction"], rows) if rows else '<p class="note">No retrieval heads.</p>',
    ])


def _kv_section(result: dict, figures: dict[str, str]) -> str:
    kv = result["kv_heads"]
    if kv is None or kv["group_size"] <= 1:
        return ""
    rows = [[h["layer"], h["head"], h["score"]] for h in kv["top"]]
    return "\n".join([
        "<h2>KV heads</h2>",
        f'<p>{kv["num_kv_heads"]} KV heads per layer, each shared by {kv["group_size"]} query heads; '
        f'{kv["n_retrieval_kv_heads"]} KV heads serve at least one retrieval head (heatmap beside the '
        'heads\' one above).</p>',
        _table(["layer", "KV head", "max score over group"], rows),
    ])


def _stability_section(run: Path, summary: dict) -> str:
    """How stable the detected heads are (bootstrap), whether the run stopped early, the curve."""
    info, curve = summary.get("stability"), summary.get("stability_curve")
    if not isinstance(info, dict) or info.get("topk_jaccard") is None:
        return ""
    ran = f'{summary.get("samples_run")} of {summary.get("grid_samples")} samples of the grid'
    target = f', target {info["target"]:g}' if info.get("target") is not None else ""
    stop = (f"The run stopped early (<code>--until-stable</code>{target}) after {ran}."
            if summary.get("stopped_early") else f"{ran[0].upper()}{ran[1:]} ran.")
    rows = [[p["samples"], p["successes"], p["topk_jaccard"], p["retrieval_jaccard"]] for p in curve or []]
    intervals = [[h["layer"], h["head"], h["score"], h["low"], h["high"]] for h in info.get("top_heads", [])]
    plot = run / STABILITY_PLOT
    return "\n".join([
        "<h2>Stability</h2>",
        f"<p>{stop} Resampling the {info['successes']} successful samples ({info['draws']} bootstrap draws), "
        f"the top-{info['k']} set agrees with the estimate at a mean Jaccard of <b>{info['topk_jaccard']:.3f}</b> "
        f"and the retrieval-head set (&gt; 0.1) at <b>{info['retrieval_jaccard']:.3f}</b>.</p>",
        _figure("Bootstrap Jaccard after each block of samples", plot) if plot.is_file() else "",
        _table(["samples", "successes", f"top-{info['k']} Jaccard", "retrieval-set Jaccard"], rows) if rows else "",
        f"<h3>Score intervals of the top-{info['k']} heads (2.5-97.5 percentile of the bootstrap)</h3>" if intervals else "",
        _table(["layer", "head", "mean score", "low", "high"], intervals) if intervals else "",
    ])


def result_summaries(run: Path) -> list[Path]:
    """``summary.json`` of NIAH, mask-sweep, KV-cache and task runs inside ``run`` or beside it."""
    roots = (run, run.resolve().parent)
    return sorted({p.resolve() for root in roots for pattern in RESULT_DIRS for p in root.glob(f"{pattern}/summary.json")})


def _results_section(run: Path) -> str:
    found = result_summaries(run)
    if not found:
        return ""
    parts = ["<h2>Other results</h2>"]
    for path in found:
        parts.append(f"<h3>{_e(str(path.parent.relative_to(run.resolve().parent)))}</h3>")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            parts.append(f'<p class="note">Could not read {_e(path.name)}: {_e(str(exc))}</p>')
            continue
        parts.append(_result_tables(data))
    return "\n".join(parts)


def _result_tables(data: Any) -> str:
    """Scalar fields as a key/value table, each list of dicts (e.g. ``rows``) as a table."""
    if not isinstance(data, dict):
        return _key_value_table({"value": data})
    scalars = {k: v for k, v in data.items() if not _is_row_list(v)}
    parts = [_key_value_table(_flatten(scalars))] if scalars else []
    for key, value in data.items():
        if _is_row_list(value):
            parts.append(f"<p><b>{_e(str(key))}</b> ({len(value)} rows)</p>")
            parts.append(_rows_table(value))
    return "\n".join(parts)


def _images_section(run: Path) -> str:
    dirs = [run.resolve()] + [p.parent for p in result_summaries(run)]
    shown = (run / STABILITY_PLOT).resolve()  # already in the stability section
    images = sorted({p.resolve() for d in dirs for p in d.rglob("*.png") if p.is_file()} - {shown})
    if not images:
        return ""
    base = run.resolve().parent
    parts = ["<h2>Figures of this run and its NIAH, masking, KV-cache and task results</h2>"]
    parts += [_figure(str(p.relative_to(base)), p) for p in images]
    return "\n".join(parts)


def _figure(caption: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _side_by_side(*figures: str) -> str:
    """Figures (HTML) in one row, wrapping on narrow screens."""
    shown = [f for f in figures if f]
    return shown[0] if len(shown) == 1 else (f'<div class="pair">{"".join(shown)}</div>' if shown else "")


def _summary_kv_heatmap(summary: dict, scores: HeadScores, out: str) -> list[Plot]:
    """The KV-head heatmap from ``summary.json``'s ``kv_head_scores`` (max over each group), when the scores
    alone could not give it (KV heads unknown to them)."""
    found = (summary or {}).get("kv_head_scores")
    table = found.get("max") if isinstance(found, dict) else None
    try:
        kv = np.asarray(table, dtype=np.float64)
    except (TypeError, ValueError):
        return []
    if kv.ndim != 2 or kv.shape[0] != scores.num_layers or kv.shape[1] >= scores.num_heads:
        return []
    name = scores.model or "scores"
    return [Plot(f"Score of each KV head (max over its {scores.num_heads // kv.shape[1]} query heads)",
                 plots.heatmap(kv, Path(out) / KV_HEATMAP, title=f"{name}: KV-head score (max over group)",
                               xlabel="KV head"))]


def _rows_table(rows: list[dict]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [str(k) for k in row if str(k) not in columns]
    shown = [[row.get(c) for c in columns] for row in rows[:MAX_TABLE_ROWS]]
    note = f'<p class="note">First {MAX_TABLE_ROWS} of {len(rows)} rows.</p>' if len(rows) > MAX_TABLE_ROWS else ""
    return _table(columns, shown) + note


def _key_value_table(items: dict) -> str:
    return _table(["field", "value"], [[k, v] for k, v in items.items()])


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: Any) -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{_e(_fmt(value))}</td>' if numeric else f"<td>{_e(_fmt(value))}</td>"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _flatten(data: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys: ``{"a": {"b": 1}} -> {"a.b": 1}``; lists stay whole."""
    flat: dict = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _is_row_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(r, dict) for r in value)


def _e(text: str) -> str:
    return html.escape(text, quote=True)
