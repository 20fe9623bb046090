"""The stability curve of a detection run: bootstrap Jaccard of the head sets vs samples run."""

from __future__ import annotations

from pathlib import Path

from .style import ACCENT, HIGHLIGHT, figure, save


def stability_plot(curve: list[dict], path: str | Path, *, k: int, target: float | None = None,
                   stop: int | None = None, title: str = "Stability of the detected heads") -> Path:
    """Top-``k`` and retrieval-set bootstrap Jaccard (y) after each block of samples (x).

    ``curve`` rows hold ``samples``, ``topk_jaccard`` and ``retrieval_jaccard`` (None where
    there was no successful sample yet); ``target`` draws the stop threshold, ``stop`` the
    number of samples after which the run stopped.
    """
    fig, ax = figure((5.5, 3.6))
    for key, color, label in (("topk_jaccard", HIGHLIGHT, f"top-{k} set"),
                              ("retrieval_jaccard", ACCENT, "retrieval heads (> 0.1)")):
        points = [(row["samples"], row[key]) for row in curve if row[key] is not None]
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", markersize=3, color=color, label=label)
    if target is not None:
        ax.axhline(target, color="grey", linewidth=0.8, linestyle="--", label=f"target {target:g}")
    if stop is not None:
        ax.axvline(stop, color="black", linewidth=0.8, linestyle=":", label=f"stopped after {stop}")
    ax.set_xlabel("samples run")
    ax.set_ylabel("bootstrap Jaccard with the estimate")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)
