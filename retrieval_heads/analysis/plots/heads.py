"""Figures of head scores (matplotlib, PNG). Each function takes data and a path, and returns the path.

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg canvas directly, so no
pyplot state or global backend is touched; matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .style import ACCENT, CMAP, HIGHLIGHT, figure as _figure, save as _save


def heatmap(values: np.ndarray, path: str | Path, *, title: str = "Retrieval score per head",
            xlabel: str = "head", colorbar_label: str = "mean retrieval score",
            applicable: np.ndarray | None = None) -> Path:
    """Layer x head heatmap of ``values`` (layers, heads), layer 0 at the top.

    ``applicable`` (layers, heads) bool: cells that are False (layers without softmax attention)
    are hatched grey instead of coloured.
    """
    values = np.asarray(values, dtype=np.float64)
    layers, heads = values.shape
    fig, ax = _figure((min(4 + heads * 0.18, 14), min(3 + layers * 0.16, 12)))
    if applicable is not None and not np.asarray(applicable).all():
        ax.set_facecolor("#d9d9d9")
        ax.patch.set_hatch("///")
        values = np.ma.masked_array(values, mask=~np.asarray(applicable, dtype=bool))
    image = ax.imshow(values, cmap=CMAP, aspect="auto", interpolation="nearest", vmin=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_title(title)
    _integer_ticks(ax, heads, layers)
    fig.colorbar(image, ax=ax, label=colorbar_label)
    return _save(fig, path)


def bucket_histogram(labels: Sequence[str], counts: Sequence[int], path: str | Path, *,
                     title: str = "Heads by mean retrieval score") -> Path:
    """Bar chart of the paper's Fig. 3 buckets, each bar labelled with its count and percent."""
    total = max(sum(counts), 1)
    fig, ax = _figure((6, 4))
    colors = ["#b8b8b8", "#9fb7d3", ACCENT, HIGHLIGHT][: len(counts)]
    bars = ax.bar(range(len(counts)), counts, color=colors)
    for bar, c in zip(bars, counts):
        ax.annotate(f"{c}\n{100 * c / total:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(labels)), [f"score {l}" for l in labels])
    ax.set_ylabel("number of heads")
    ax.set_title(title)
    ax.margins(y=0.2)
    return _save(fig, path)


def layer_distribution(per_layer: Sequence[int], path: str | Path, *,
                       title: str = "Retrieval heads per layer") -> Path:
    """Bar chart of retrieval heads in each layer."""
    fig, ax = _figure((7, 3.5))
    ax.bar(range(len(per_layer)), per_layer, color=ACCENT)
    ax.set_xlabel("layer")
    ax.set_ylabel("retrieval heads")
    ax.set_title(title)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def activation_frequency(names: Sequence[str], frequency: Sequence[float], path: str | Path, *,
                         scores: Sequence[float] | None = None,
                         title: str = "How often each retrieval head is active") -> Path:
    """Bars of the fraction of samples in which each named head scored > 0 (1.0 = always active)."""
    fig, ax = _figure((max(6, 0.28 * len(names) + 2), 4))
    freq = np.asarray(frequency, dtype=np.float64)
    colors = [HIGHLIGHT if f >= 1.0 else ACCENT for f in freq]
    ax.bar(range(len(names)), freq, color=colors)
    top = 1.05
    if scores is not None:
        ax.plot(range(len(names)), scores, "o", color="black", markersize=3, label="mean score (same axis)")
        ax.legend(loc="upper right", fontsize=8, framealpha=0.9)
        top = max(top, 1.05 * max(scores, default=0))
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylim(0, top)
    ax.set_ylabel("fraction of samples with score > 0")
    ax.set_title(title)
    return _save(fig, path)


def comparison_scatter(a: np.ndarray, b: np.ndarray, path: str | Path, *, label_a: str = "A",
                       label_b: str = "B", title: str | None = None, threshold: float = 0.1) -> Path:
    """Scatter of two models' mean score per head; heads above ``threshold`` in either are highlighted."""
    x, y = np.ravel(a), np.ravel(b)
    either = (x > threshold) | (y > threshold)
    fig, ax = _figure((5.5, 5.5))
    ax.scatter(x[~either], y[~either], s=6, color="#9a9a9a", alpha=0.6, label="other heads")
    ax.scatter(x[either], y[either], s=14, color=HIGHLIGHT, label=f"score > {threshold:g} in either")
    top = max(float(x.max(initial=0)), float(y.max(initial=0)), 1e-9) * 1.05
    ax.plot([0, top], [0, top], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel(f"{label_a}: mean retrieval score")
    ax.set_ylabel(f"{label_b}: mean retrieval score")
    ax.set_title(title or f"{label_a} vs {label_b}")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def _integer_ticks(ax, heads: int, layers: int) -> None:
    ax.set_xticks(range(0, heads, max(1, heads // 16)))
    ax.set_yticks(range(0, layers, max(1, layers // 16)))
