"""The KV-cache frontier: mean NIAH score against the fraction of the full cache's bytes, one line per policy.

One panel per setting found in the rows: the question inside the compressed prompt, and query-agnostic
(compressed before the question is known).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .style import ACCENT, DPI, HIGHLIGHT, save

STYLES = {
    "retrieval": dict(color=HIGHLIGHT, marker="o", label="retrieval KV heads full + sink/window"),
    "random": dict(color=ACCENT, marker="s", label="random KV heads full + sink/window"),
    "uniform": dict(color="#6a9f58", marker="^", label="uniform sink + window"),
    "snapkv": dict(color="#8a5bb5", marker="v", label="SnapKV (same tokens per KV head)"),
    "retrieval-snapkv": dict(color="#c23b3b", marker="D", label="retrieval KV heads full + SnapKV"),
    "headkv": dict(color="#2a9d9d", marker="P", label="HeadKV (budget by retrieval score)"),
    "adaptive": dict(color="#d08c2b", marker="X", label="adaptive (budget by the evidence, all KV heads)"),
    "retrieval-adaptive": dict(color="#7a1f1f", marker="*", label="retrieval KV heads full + adaptive"),
}
SETTINGS = ((False, "question in the prompt"), (True, "query-agnostic (question after compression)"))


def frontier_plot(rows: list[dict], path: str | Path, *, title: str) -> Path:
    """``rows`` as in ``kv.evaluate.summarize``: x = ``kv_fraction``, y = ``mean_score``; ``full`` as a reference
    line; a panel per ``query_agnostic`` value present. Selections and token rankings under today's names
    (``kv.policy.current_names`` reads old ones; ``kv.evaluate`` passes its rows through it)."""
    from matplotlib.figure import Figure

    settings = [(flag, label) for flag, label in SETTINGS if any(bool(r.get("query_agnostic")) == flag for r in rows)]
    settings = settings or [SETTINGS[0]]
    fig = Figure(figsize=(max(6.0, 5.5 * len(settings)), 5.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    xs = [r["kv_fraction"] for r in rows if r["policy"] != "full" and r["kv_fraction"] is not None]
    right = 1.05 if not xs or max(xs) > 0.6 else max(xs) * 1.2  # low budgets: zoom in, full as a line
    for ax, (flag, label) in zip(axes, settings):
        _panel(ax, [r for r in rows if bool(r.get("query_agnostic")) == flag], right)
        ax.set_title(label if len(settings) > 1 else title, fontsize=10)
    if len(settings) > 1:
        fig.suptitle(title, fontsize=11)
    axes[0].set_ylabel("mean NIAH score (ROUGE-1 recall x 100)")
    handles = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    columns = 3 if len(settings) > 1 else 2
    if max(map(len, handles), default=0) > 45:  # long entries (re-read tokens, ranked by ...) get fewer columns
        columns -= 1
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=columns, fontsize=8)
    return save(fig, path)


def _panel(ax, rows: list[dict], right: float) -> None:
    mixed = len({r.get("selection") for r in rows if r.get("selection")}) > 1  # then window-chosen lines are dashed
    for policy, style in STYLES.items():
        for selection, ranking in sorted({_tokens(r) for r in rows if r["policy"] == policy}):
            points = sorted((r["kv_fraction"], r["mean_score"]) for r in rows
                            if r["policy"] == policy and _tokens(r) == (selection, ranking)
                            and r["kv_fraction"] is not None and r["mean_score"] is not None)
            line = dict(linestyle="--", alpha=0.6) if mixed and selection == "window" else {}
            if ranking == "retrieval-heads":
                line["linestyle"] = ":"
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], linewidth=1.5,
                        **{**style, "label": label(style["label"], selection, ranking)}, **line)
    full = next((r for r in rows if r["policy"] == "full" and r["mean_score"] is not None), None)
    if full is not None:
        ax.axhline(full["mean_score"], color="grey", linewidth=0.9, linestyle="--",
                   label=f"full cache ({full['mean_score']:.1f})")
        if right >= 1.0:
            ax.plot([1.0], [full["mean_score"]], marker="*", markersize=11, color="black", linestyle="none")
    ax.set_xlim(0, right)
    ax.set_ylim(0, 105)
    ax.set_xlabel("KV cache bytes (fraction of the full cache)")
    ax.grid(alpha=0.3)


def _tokens(row: dict) -> tuple[str, str]:
    """How a row's tokens were chosen: (selection, token ranking), "" where not recorded."""
    return row.get("selection") or "", row.get("token_ranking") or ""


def label(base: str, selection: str, ranking: str = "") -> str:
    """A policy's legend entry, naming tokens chosen by re-reading (``selection="reread"``, ``kv/reconstruct.py``)
    rather than by SnapKV's observation window, and tokens ranked by the retrieval heads for every head
    (``token_ranking="retrieval-heads"``); today's names only."""
    if selection in ("reread", "reread-chunk"):
        tokens = "re-read tokens" + (" (KVzip's scores)" if selection == "reread-chunk" else "")
        base = base.replace("SnapKV", tokens) if "SnapKV" in base else f"{base}, {tokens}"
    return f"{base}, ranked by retrieval heads" if ranking == "retrieval-heads" else base


FULL_METHODS = ("full", "kvpress:full")  # kv.frontier's full caches: ours and kvpress's
PEER_COLORS = ("#444444", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#1f77b4", "#9467bd", "#ff7f0e",
               "#2ca02c")


def task_frontier_plot(entries: list[dict], path: str | Path, *, title: str) -> Path:
    """``entries`` as in ``kv.frontier.frontier``: x = measured ``kv_fraction``, y = the task-set ``score`` with its
    95% interval; a panel per setting present; the full cache as a line, kvpress's presses dashed."""
    from matplotlib.figure import Figure

    settings = [flag for flag, _ in SETTINGS if any(e["query_agnostic"] == flag for e in entries)] or [False]
    fig = Figure(figsize=(max(6.0, 5.5 * len(settings)), 5.2), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, len(settings), sharey=True, squeeze=False)[0]
    methods = list(dict.fromkeys(e["method"] for e in entries if e["method"] not in FULL_METHODS))
    peers = [m for m in methods if m.startswith("kvpress:")]
    right = 1.1 * max((e["kv_fraction"] for e in entries if e["kv_fraction"] is not None
                       and e["method"] not in FULL_METHODS), default=1.0 / 1.1)  # the same in every panel
    for ax, flag in zip(axes, settings):
        mine = [e for e in entries if e["query_agnostic"] == flag]
        for method in methods:
            points = sorted((e["kv_fraction"], e["score"], e["score_low"], e["score_high"]) for e in mine
                            if e["method"] == method and e["kv_fraction"] is not None)
            if not points:
                continue
            style = _task_style(method, peers)
            x, y, low, high = (np.array(v) for v in zip(*points))
            ax.errorbar(x, y, yerr=[y - low, high - y], capsize=2, linewidth=1.4, elinewidth=0.8, **style)
        full = next((e for e in mine if e["method"] == "full"), None) or next(
            (e for e in mine if e["method"] == "kvpress:full"), None)
        if full is not None:
            ax.axhline(full["score"], color="grey", linewidth=0.9, linestyle="--",
                       label=f"full cache ({full['score']:.1f})")
            ax.axhspan(full["score_low"], full["score_high"], color="grey", alpha=0.08)
        ax.set_xlim(0, right)
        ax.set_ylim(0, 105)
        ax.set_xlabel("KV cache bytes kept (fraction of the full cache, measured)")
        ax.set_title(dict(SETTINGS)[flag], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("task-set score (mean of task means)")
    fig.suptitle(title, fontsize=11)
    handles = {}
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(name, handle)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=3, fontsize=8)
    return save(fig, path)


def _task_style(method: str, peers: list[str]) -> dict:
    if method in peers:
        return dict(color=PEER_COLORS[peers.index(method) % len(PEER_COLORS)], marker="x", linestyle="--",
                    label=method)
    base = STYLES.get(method.split(" (")[0], dict(color="black", marker="o"))
    followed = "follow " in method  # beside the same policy on the evidence's own scores
    kvzip_scored = "reread-chunk" in method  # beside the same policy on our re-read scores
    return dict(color=base["color"], marker="D" if followed else base["marker"],
                linestyle=":" if followed else "-." if kvzip_scored else "-",
                markerfacecolor="none" if kvzip_scored else base["color"], label=method)
