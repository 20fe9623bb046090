"""The KV-cache frontier: mean NIAH score against the fraction of the full cache's bytes, one line per policy."""

from __future__ import annotations

from pathlib import Path

from .style import ACCENT, HIGHLIGHT, figure, save

STYLES = {
    "retrieval": dict(color=HIGHLIGHT, marker="o", label="retrieval KV heads full"),
    "random": dict(color=ACCENT, marker="s", label="random KV heads full"),
    "uniform": dict(color="#6a9f58", marker="^", label="uniform sink + window (same bytes)"),
}


def frontier_plot(rows: list[dict], path: str | Path, *, title: str) -> Path:
    """``rows`` as in ``kveval.summarize``: x = ``kv_fraction``, y = ``mean_score``; ``full`` as a reference line."""
    fig, ax = figure((6.0, 4.0))
    for policy, style in STYLES.items():
        points = sorted((r["kv_fraction"], r["mean_score"]) for r in rows
                        if r["policy"] == policy and r["kv_fraction"] is not None and r["mean_score"] is not None)
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], linewidth=1.5, **style)
    full = next((r for r in rows if r["policy"] == "full" and r["mean_score"] is not None), None)
    if full is not None:
        ax.axhline(full["mean_score"], color="grey", linewidth=0.9, linestyle="--")
        ax.plot([1.0], [full["mean_score"]], marker="*", markersize=11, color="black", linestyle="none",
                label=f"full cache ({full['mean_score']:.1f})")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 105)
    ax.set_xlabel("KV cache bytes (fraction of the full cache)")
    ax.set_ylabel("mean NIAH score (ROUGE-1 recall x 100)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)
