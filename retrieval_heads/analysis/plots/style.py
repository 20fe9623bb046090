"""The look every figure shares, and the two steps every plot takes: make a figure, save it."""

from __future__ import annotations

from pathlib import Path

CMAP = "viridis"
ACCENT = "#3b6ea8"
HIGHLIGHT = "#d9822b"
DPI = 110


def figure(size: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
