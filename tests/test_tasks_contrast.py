"""Top-K against random-K on the same items: the drops, their difference and ratio, paired bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval_heads.cli.tasks import contrast_line
from retrieval_heads.masking.heads import MaskPlan
from retrieval_heads.tasks.contrast import paired_drops, top_random_contrasts
from retrieval_heads.tasks.run import Condition
from retrieval_heads.tasks.suites import Item


def test_point_values_are_the_accuracy_drops():
    none = [1] * 10
    top = [0] * 6 + [1] * 4     # drop 0.6
    random = [0] * 2 + [1] * 8  # drop 0.2
    c = paired_drops(none, top, random)
    assert c["n"] == 10
    assert c["drop_top"] == pytest.approx(0.6) and c["drop_random"] == pytest.approx(0.2)
    assert c["difference"] == pytest.approx(0.4) and c["ratio"] == pytest.approx(3.0)
    assert c["difference_low"] <= 0.4 <= c["difference_high"]
    assert c["ratio_low"] <= 3.0 and (c["ratio_high"] is None or c["ratio_high"] >= 3.0)


def test_the_bootstrap_keeps_an_items_answers_together():
    """Top-K and random-K fail on the same items: paired, the difference never varies; unpaired it would."""
    none = [1] * 20
    top = [0] * 10 + [1] * 10
    random = [0] * 10 + [1] * 10
    c = paired_drops(none, top, random)
    assert c["difference_low"] == c["difference_high"] == 0.0
    assert c["ratio_low"] == c["ratio_high"] == 1.0
    assert c["ratio_undefined"] == 0


def test_a_random_drop_of_zero_leaves_the_ratio_unbounded():
    c = paired_drops([1] * 8, [0] * 8, [1] * 8)
    assert c["ratio"] is None and c["ratio_high"] is None and c["ratio_low"] is None
    assert c["difference"] == pytest.approx(1.0)
    assert "no ratio" in contrast_line({"suite": "s", "k": 2, **c})
    neither = paired_drops([0, 1], [0, 1], [0, 1])
    assert neither["ratio"] is None and neither["ratio_undefined"] == neither["draws"]


def test_the_interval_narrows_with_more_items():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 800):
        none = np.ones(n, int)
        top, random = (rng.random(n) > 0.6).astype(int), (rng.random(n) > 0.2).astype(int)
        c = paired_drops(none, top, random)
        widths.append(c["difference_high"] - c["difference_low"])
    assert widths[1] < widths[0] / 2


class _Suite:
    def __init__(self, name, only_known=False):
        self.name, self.only_known = name, only_known


def _records(suite, answers):
    return [{"id": f"{suite}/{cond}/i{i}", "correct": bool(ok)} for cond, row in answers.items()
            for i, ok in enumerate(row)]


def test_contrasts_pair_conditions_by_k_and_filter_known_items():
    items = {s: [Item(f"i{i}", "context", "q", ("a",)) for i in range(4)] for s in ("qa", "known")}
    answers = {"none": [1, 1, 1, 0], "top-2": [0, 0, 1, 0], "random-2": [1, 0, 1, 0], "top-3": [0, 0, 0, 0]}
    records = _records("qa", answers) + _records("known", answers)
    conditions = [Condition(name, MaskPlan(k=int(name.split("-")[1]) if "-" in name else 0)) for name in answers]
    rows = top_random_contrasts(records, [_Suite("qa"), _Suite("known", only_known=True)], conditions, items)
    assert [(r["suite"], r["k"], r["n"]) for r in rows] == [("qa", 2, 4), ("known", 2, 3)]  # top-3 has no random-3
    assert rows[0]["drop_top"] == pytest.approx(0.5) and rows[0]["drop_random"] == pytest.approx(0.25)
    assert rows[1]["drop_top"] == pytest.approx(2 / 3) and rows[1]["ratio"] == pytest.approx(2.0)
