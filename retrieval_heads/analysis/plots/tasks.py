"""Task accuracy under head masking: one group of bars per suite, one bar per condition, Wilson CIs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .style import ACCENT, HIGHLIGHT, figure as _figure, save as _save

_COLORS = {"none": "#8c8c8c", "top": HIGHLIGHT, "random": ACCENT}
_EXTRA = ("#6a9f58", "#a05195", "#d45087", "#2f4b7c")


def _color(condition: str, index: int) -> str:
    return _COLORS.get(condition.split("-")[0], _EXTRA[index % len(_EXTRA)])


def task_accuracy(rows: Sequence[dict], path: str | Path, *, title: str = "Task accuracy with heads masked") -> Path:
    """Grouped bars of ``accuracy`` per (suite, condition) with ``ci_low``/``ci_high`` whiskers.

    ``rows`` are the ``summary.json`` rows of ``retrieval-heads tasks``; each bar is labelled with
    its n under the suite's name. Rows without items (accuracy None) are drawn as empty slots.
    """
    suites = list(dict.fromkeys(r["suite"] for r in rows))
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    by_key = {(r["suite"], r["condition"]): r for r in rows}
    width = 0.8 / max(len(conditions), 1)
    fig, ax = _figure((max(5.5, 2.6 + 1.5 * len(suites) * max(len(conditions), 2) / 3), 4.2))
    for j, condition in enumerate(conditions):
        xs, heights, low, high = [], [], [], []
        for i, suite in enumerate(suites):
            row = by_key.get((suite, condition))
            if row is None or row.get("accuracy") is None:
                continue
            acc = row["accuracy"]
            xs.append(i - 0.4 + width * (j + 0.5))
            heights.append(acc)
            low.append(max(acc - row["ci_low"], 0.0))
            high.append(max(row["ci_high"] - acc, 0.0))
        if not xs:
            continue
        ax.bar(xs, heights, width * 0.92, yerr=[low, high], capsize=3, color=_color(condition, j), label=condition,
               error_kw={"elinewidth": 1, "ecolor": "#333333"})
    ax.set_xticks(range(len(suites)), [f"{suite}\n{_n_label(rows, suite)}" for suite in suites])
    ax.set_xlim(-0.6, len(suites) - 0.4)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("task suite")
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(title)
    ax.legend(title="heads masked", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _n_label(rows: Sequence[dict], suite: str) -> str:
    ns = sorted({r["n"] for r in rows if r["suite"] == suite})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"
