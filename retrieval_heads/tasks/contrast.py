"""Top-K against random-K on the same items: how much more masking the retrieval heads costs.

For every suite and every K run both as ``top-K`` and ``random-K`` (beside ``none``), on the items answered
under all three conditions (for a ``only_known`` suite, those the unmasked model got right):

* ``drop_top`` and ``drop_random``: accuracy without masking minus accuracy with the heads masked;
* ``difference`` (``drop_top - drop_random``) and ``ratio`` (``drop_top / drop_random``), each with a
  percentile 95% interval from a paired bootstrap over items: a resample keeps an item's three answers together.

A ratio needs a positive random drop. A resample whose random drop is 0 or less while the top drop is positive has
an unbounded ratio (it counts as infinite, and an interval end there is ``None``); one where neither drop is
positive has none, and it is left out of the ratio's interval (``ratio_undefined`` counts them).
"""

from __future__ import annotations

import math

import numpy as np

DRAWS = 4000
SEED = 0
LEVEL = 0.95


def paired_drops(none, top, random, *, draws: int = DRAWS, seed: int = SEED, level: float = LEVEL) -> dict:
    """The drops of one suite and K from per-item correctness (0/1, in the same item order), with intervals."""
    none, top, random = (np.asarray(x, dtype=float) for x in (none, top, random))
    n = len(none)
    picks = np.random.default_rng(seed).integers(0, n, (draws, n))
    drop_top = (none[picks] - top[picks]).mean(1)
    drop_random = (none[picks] - random[picks]).mean(1)
    ratios = _ratios(drop_top, drop_random)
    defined = np.sort(ratios[~np.isnan(ratios)])
    tail = (1 - level) / 2
    full_top, full_random = float((none - top).mean()), float((none - random).mean())
    full_ratio = float(_ratios(np.array([full_top]), np.array([full_random]))[0])
    difference_low, difference_high = np.quantile(drop_top - drop_random, [tail, 1 - tail])
    return {
        "n": n, "drop_top": full_top, "drop_random": full_random, "difference": full_top - full_random,
        "difference_low": float(difference_low), "difference_high": float(difference_high),
        "ratio": _finite(full_ratio),
        "ratio_low": _finite(defined[math.floor(tail * len(defined))]) if len(defined) else None,
        "ratio_high": _finite(defined[math.ceil((1 - tail) * len(defined)) - 1]) if len(defined) else None,
        "ratio_undefined": int(np.isnan(ratios).sum()), "draws": draws, "level": level,
    }


def _ratios(drop_top: np.ndarray, drop_random: np.ndarray) -> np.ndarray:
    safe = np.where(drop_random > 0, drop_random, 1.0)
    return np.where(drop_random > 0, drop_top / safe, np.where(drop_top > 0, np.inf, np.nan))


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def top_random_contrasts(records: list[dict], suites, conditions, items: dict) -> list[dict]:
    """One row per suite and K with both ``top-K`` and ``random-K``: ``paired_drops`` on their shared items."""
    by_id = {r["id"]: r for r in records}
    names = {c.name for c in conditions}
    ks = sorted(c.k for c in conditions if c.name.startswith("top-") and f"random-{c.k}" in names)
    rows = []
    for suite in suites:
        for k in ks:
            triples = [[by_id.get(f"{suite.name}/{name}/{item.id}") for name in ("none", f"top-{k}", f"random-{k}")]
                       for item in items[suite.name]]
            triples = [t for t in triples if None not in t and (t[0]["correct"] or not suite.only_known)]
            if not triples:
                continue
            none, top, random = ([int(t[i]["correct"]) for t in triples] for i in range(3))
            rows.append({"suite": suite.name, "k": k, **paired_drops(none, top, random)})
    return rows
