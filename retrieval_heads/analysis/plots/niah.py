"""Needle-in-a-haystack figures: the length x depth heatmap and the masking curve (the paper's Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .style import ACCENT, HIGHLIGHT, figure, save


def niah_heatmap(grid: dict[tuple[int, float], float], path: str | Path, *, title: str) -> Path:
    """Mean score (0-100) per cell: context length on x, needle depth on y, red (0) to green (100)."""
    lengths = sorted({l for l, _ in grid})
    depths = sorted({d for _, d in grid})
    values = np.full((len(depths), len(lengths)), np.nan)
    for (length, depth), score in grid.items():
        values[depths.index(depth), lengths.index(length)] = score
    fig, ax = figure((max(4.0, 0.6 * len(lengths) + 2.5), max(3.0, 0.35 * len(depths) + 1.8)))
    image = ax.imshow(values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(l) for l in lengths], rotation=45 if len(lengths) > 6 else 0)
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth (%)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="score (ROUGE-1 recall x 100)")
    return save(fig, path)


def mask_curve(rows: list[dict], path: str | Path, *, title: str) -> Path:
    """Mean NIAH score vs number of masked heads, top-K retrieval heads against K random heads."""
    fig, ax = figure((5.5, 3.6))
    for selection, color, label in (("top", HIGHLIGHT, "top-K retrieval heads"), ("random", ACCENT, "K random heads")):
        points = sorted((r["k"], r["mean_score"]) for r in rows if r["selection"] in (selection, "none"))
        if points:
            ax.plot([k for k, _ in points], [s for _, s in points], marker="o", color=color, label=label)
    ax.set_xlabel("number of masked heads K")
    ax.set_ylabel("mean NIAH score")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)
