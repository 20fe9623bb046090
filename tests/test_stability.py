"""Stability of detected heads: bootstrap, curve and stop rule; balanced sample order; --until-stable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_paper_scores import paper

import retrieval_heads.analysis.properties as analysis
from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError
from retrieval_heads.sweep.stability import (
    CurvePoint, StopRule, bootstrap, check_stopping, failing_needles, jaccard, measure, run_curve, stability_curve,
    stopping_point, successes_by_id, top_k_mask,
)
from retrieval_heads.sweep.grid import balanced_order, build_grid, sample_blocks
from retrieval_heads.sweep.runner import in_blocks

REPO = Path(__file__).resolve().parents[1]


def planted(n: int = 80, seed: int = 0) -> np.ndarray:
    """(n, 6, 8): 5 heads score about 0.5 in every sample, the others small sparse noise."""
    rng = np.random.default_rng(seed)
    samples = rng.random((n, 6, 8)) * 0.05 * (rng.random((n, 6, 8)) > 0.7)
    for layer, head in [(0, 1), (2, 3), (3, 0), (4, 7), (5, 5)]:
        samples[:, layer, head] = 0.5 + 0.1 * rng.standard_normal(n)
    return samples.clip(0)


def noise(n: int = 80, seed: int = 0) -> np.ndarray:
    """(n, 6, 8): every head equally likely to score; no head stands out."""
    return np.random.default_rng(seed).random((n, 6, 8))


# --- bootstrap -------------------------------------------------------------------------------

def test_jaccard_of_two_empty_sets_is_one():
    a = np.array([[False, False], [True, False], [True, True]])
    b = np.array([[False, False], [False, True], [True, False]])
    assert jaccard(a, b).tolist() == [1.0, 0.0, 0.5]


def test_top_k_ranks_only_heads_that_scored_and_breaks_ties_by_position():
    means = np.array([[0.0, 0.3, 0.3, 0.1, 0.0]])
    assert top_k_mask(means, 2).tolist() == [[False, True, True, False, False]]
    assert top_k_mask(means, 10).tolist() == [[False, True, True, True, False]]
    assert not top_k_mask(np.zeros((1, 5)), 3).any()


def test_planted_heads_are_stable_and_noise_is_not():
    stable = bootstrap(planted(), k=5, draws=50, seed=0)
    unstable = bootstrap(noise(), k=5, draws=50, seed=0)
    assert stable.topk_jaccard == 1.0 and stable.retrieval_jaccard == 1.0, stable
    assert unstable.topk_jaccard < 0.6, unstable.topk_jaccard
    assert unstable.retrieval_jaccard == 1.0  # every head's mean is about 0.5: all are above 0.1


def test_retrieval_set_near_the_threshold_is_unstable():
    rng = np.random.default_rng(1)
    samples = 0.1 + 0.05 * rng.standard_normal((40, 4, 4))  # every head hovers around 0.1
    assert bootstrap(samples.clip(0), k=4, seed=0).retrieval_jaccard < 0.8


def test_intervals_hold_the_mean_and_narrow_with_more_samples():
    few, many = bootstrap(planted(20), k=5, seed=0), bootstrap(planted(400), k=5, seed=0)
    mean = planted(400).mean(axis=0)
    assert (many.low <= mean + 1e-12).all() and (mean <= many.high + 1e-12).all()
    assert (many.high - many.low)[2, 3] < (few.high - few.low)[2, 3] / 2
    heads = many.head_intervals([(2, 3, float(mean[2, 3]))])
    assert heads[0]["low"] < heads[0]["score"] < heads[0]["high"]


def test_bootstrap_is_seeded_and_accepts_head_scores():
    a, b = bootstrap(HeadScores(noise()), k=5, seed=3), bootstrap(noise(), k=5, seed=3)
    assert a.topk_jaccard == b.topk_jaccard and np.array_equal(a.low, b.low) and np.array_equal(a.high, b.high)
    assert a.topk_jaccard != bootstrap(noise(), k=5, seed=4).topk_jaccard
    empty = bootstrap(np.zeros((0, 2, 2)))
    assert empty.n_samples == 0 and np.isnan(empty.topk_jaccard)
    with pytest.raises(ValueError):
        bootstrap(np.zeros((3, 4)))


# --- curve and stop rule ---------------------------------------------------------------------

def test_curve_and_stopping_point_on_planted_and_noise():
    rule = StopRule(k=5, stability=0.95, min_successes=20)
    curve = stability_curve(planted(), [10, 20, 40, 80, 500], k=5)
    assert [p.samples for p in curve] == [10, 20, 40, 80]  # beyond the samples: dropped
    stop = stopping_point(curve, rule)
    assert stop is not None and stop.samples == 20  # stable from the start, but 20 successes needed
    assert stopping_point(stability_curve(noise(), [10, 20, 40, 80], k=5), rule) is None


def test_a_checkpoint_measures_the_same_whichever_others_are_asked():
    alone = stability_curve(noise(), [40], k=5)[0]
    among = [p for p in stability_curve(noise(), [10, 40, 70], k=5) if p.samples == 40][0]
    assert alone == among


def test_stop_rule_validates_and_counts_successes():
    rule = StopRule(k=5, stability=0.9, min_successes=10)
    assert not rule.met(CurvePoint(50, 9, 1.0, 1.0)) and rule.met(CurvePoint(50, 10, 0.9, 0.0))
    assert not rule.met(CurvePoint(50, 10, float("nan"), 1.0))
    for bad in (dict(k=0), dict(stability=1.5), dict(min_successes=0)):
        with pytest.raises(UserError):
            StopRule(**bad)


def test_run_curve_ends_each_block_and_matches_a_live_check():
    samples = planted(30)
    ids = [f"s{i:02d}" for i in range(30)][::-1]  # run order is not id order
    success = [i % 3 != 0 for i in range(30)]
    blocks = [i // 8 for i in range(30)]
    rule = StopRule(k=5)
    curve = run_curve(ids, blocks, success, samples, rule)
    assert [p.samples for p in curve] == [8, 16, 24, 30]
    assert [p.successes for p in curve] == [sum(success[:n]) for n in (8, 16, 24, 30)]
    live = measure(samples[successes_by_id(ids, success)], 30, rule)  # what StabilityWatch computes
    assert curve[-1] == live


# --- sample order ----------------------------------------------------------------------------

def pair_spread(specs, first: str, second: str) -> int:
    """Largest (max - min) count of any pair of values of ``first`` and ``second`` in ``specs``, over the grid's."""
    counts = {(a, b): 0 for a in ALL_VALUES[first] for b in ALL_VALUES[second]}
    for s in specs:
        counts[getattr(s, first), getattr(s, second)] += 1
    return max(counts.values()) - min(counts.values())


def marginal_spread(specs) -> int:
    """Largest (max - min) count of any needle, length or depth value in ``specs``, over the grid's values."""
    worst = 0
    for key in ("needle_index", "context_length", "depth_percent"):
        counts = {v: 0 for v in ALL_VALUES[key]}
        for s in specs:
            counts[getattr(s, key)] += 1
        worst = max(worst, max(counts.values()) - min(counts.values()))
    return worst


GRID = build_grid(8, [1000, 2000, 3000, 4000, 5000], [0.0, 25.0, 50.0, 75.0, 100.0])
ALL_VALUES = {k: sorted({getattr(s, k) for s in GRID}) for k in ("needle_index", "context_length", "depth_percent")}


def test_every_prefix_of_the_balanced_order_covers_the_grid_evenly():
    order = balanced_order(GRID)
    assert sorted(s.id for s in order) == sorted(s.id for s in GRID)
    assert max(marginal_spread(order[:n]) for n in range(1, len(order) + 1)) <= 2
    assert marginal_spread(GRID[:40]) > 2  # the grid's own order is not balanced (the check can fail)
    assert max(pair_spread(order[:n], "needle_index", "context_length") for n in range(1, len(order) + 1)) <= 2
    assert max(pair_spread(order[:n], "context_length", "depth_percent") for n in range(1, len(order) + 1)) <= 4
    pairs = {(s.context_length, s.depth_percent) for s in order[:25]}
    assert len(pairs) >= 19  # the first 25 samples spread over the 25 length x depth cells
    assert balanced_order(list(reversed(GRID))) == order  # depends on the set, not the given order


def test_blocks_cut_the_balanced_order_and_work_on_shards():
    blocks = sample_blocks(GRID, 20)
    assert sorted(blocks.values()) == [i // 20 for i in range(len(GRID))]
    first = [s for s in GRID if blocks[s.id] == 0]
    assert {s.needle_index for s in first} == set(range(8)) and {s.context_length for s in first} == set(ALL_VALUES["context_length"])
    assert set(sample_blocks(GRID, 0).values()) == {0}
    with pytest.raises(UserError):
        sample_blocks(GRID, -1)
    for i in range(3):
        shard = build_grid(8, [1000, 2000, 3000, 4000, 5000], [0.0, 25.0, 50.0, 75.0, 100.0], (i, 3))
        head = [s for s in shard if sample_blocks(shard, 20)[s.id] == 0]
        assert len(head) == 20 and {s.context_length for s in head} == set(ALL_VALUES["context_length"])


def test_in_blocks_cuts_a_block_sorted_list_at_each_change_of_block():
    specs = build_grid(2, [100], [0.0, 50.0, 100.0])
    blocks = {s.id: i // 2 for i, s in enumerate(specs)}
    assert in_blocks(specs, blocks) == [specs[0:2], specs[2:4], specs[4:6]]
    assert in_blocks(specs[1:2], blocks) == [specs[1:2]]
    assert in_blocks([], blocks) == []


# --- replay on score files -------------------------------------------------------------------

def test_check_stopping_on_planted_and_noise():
    found = check_stopping(HeadScores(planted(200), model="toy"), StopRule(k=5), step=10, orders=5)
    assert found["median_samples"] == 20 and found["never_stopped"] == 0
    assert found["topk_jaccard_mean"] == 1.0 and found["direct"]["topk_jaccard"] == 1.0
    lost = check_stopping(HeadScores(noise(100)), StopRule(k=5), step=20, orders=3)
    assert lost["never_stopped"] == 3 and lost["samples_needed"] == [100, 100, 100]
    with pytest.raises(UserError, match="no samples"):
        check_stopping(HeadScores(np.zeros((0, 2, 2))))


def test_analyze_until_stable_cli(tmp_path, capsys):
    HeadScores(planted(120), model="toy").save_paper_json(tmp_path / "toy.json")
    assert main(["analyze", str(tmp_path / "toy.json"), "--until-stable", "--stable-k", "5", "--stability", "0.9",
                 "--orders", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rule"]["k"] == 5 and result["rule"]["stability"] == 0.9
    assert len(result["samples_needed"]) == 4 and result["n_samples"] == 120
    assert main(["analyze", str(tmp_path / "toy.json"), "--until-stable", "--orders", "2"]) == 0
    assert "samples needed: median" in capsys.readouterr().out
    (tmp_path / "means.csv").write_text("layer,head,score\n0,0,0.5\n0,1,0.0\n")
    assert main(["analyze", str(tmp_path / "means.csv"), "--until-stable"]) == 2
    assert "per-sample scores" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "toy.json"), "--until-stable", "--stability", "2"]) == 2


def _direct_jaccards(scores: HeadScores, n: int, k: int, draws: int, seed: int) -> tuple[float, float]:
    """Top-k and retrieval-set Jaccard of random n-sample subsets with the whole file, via analysis.compare."""
    rng = np.random.default_rng(seed)
    top, ret = [], []
    for _ in range(draws):
        sub = HeadScores(scores.samples[rng.choice(scores.num_samples, n, replace=False)])
        c = analysis.compare(sub, scores, top=k)
        top.append(c.topk_overlap / (2 * k - c.topk_overlap))
        ret.append(c.jaccard)
    return float(np.mean(top)), float(np.mean(ret))


@pytest.mark.parametrize("name", ["Mistral-7B-v0.2-hf", "Qwen1.5-14B-Chat"])
def test_paper_stopping_point_agrees_with_direct_subsampling(name):
    scores = paper(name)
    result = check_stopping(scores, StopRule(k=20), step=10, orders=20, seed=0)
    assert result["never_stopped"] == 0 and result["median_samples"] <= scores.num_samples / 2
    top, ret = _direct_jaccards(scores, result["median_samples"], 20, draws=100, seed=1)
    assert abs(result["topk_jaccard_mean"] - top) < 0.04, (result["topk_jaccard_mean"], top)
    assert abs(result["retrieval_jaccard_mean"] - ret) < 0.06, (result["retrieval_jaccard_mean"], ret)
    assert abs(result["direct"]["topk_jaccard"] - top) < 0.03
    assert result["topk_jaccard_mean"] >= 0.9  # the rule's promise holds against the full file


# --- detect --until-stable on a tiny model ---------------------------------------------------

@pytest.fixture
def loaded(tiny_tokenizer):
    from conftest import build_tiny

    from retrieval_heads.models import LoadedModel

    return LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)


def test_until_stable_stops_after_a_block_and_resume_finishes_the_grid(loaded, tmp_path, monkeypatch):
    import retrieval_heads.detection.detect as detection
    from retrieval_heads.sweep.grid import SweepConfig

    monkeypatch.setattr(detection, "is_success", lambda recall: True)  # a random model never retrieves
    config = SweepConfig(model="tiny-llama", lengths=[200, 260], depths=[0, 50, 100], max_new_tokens=2,
                         chunk_size=64, batch_size=4, block_size=8)
    rule = StopRule(k=5, stability=0.9, min_successes=12)
    result = detection.run_detection(loaded, config, tmp_path, progress=False, until_stable=rule)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped_early"] is True and summary["grid_samples"] == 48
    assert summary["samples_run"] == summary["samples"] == 16  # two blocks of 8: the first has < 12 successes
    assert summary["stability"]["target"] == 0.9 and summary["stability"]["stable"] is True
    assert [p["samples"] for p in summary["stability_curve"]] == [8, 16]
    assert (tmp_path / "stability.png").stat().st_size > 1000
    assert result.summary["stability"] == summary["stability"]
    ran = {json.loads(line)["id"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()}
    blocks = sample_blocks(build_grid(8, [200, 260], [0.0, 50.0, 100.0]), 8)
    assert ran == {i for i, b in blocks.items() if b < 2}  # the first two blocks of the balanced order

    rest = detection.run_detection(loaded, config, tmp_path, resume=True, progress=False)
    assert rest.summary["stopped_early"] is False and rest.summary["samples_run"] == 48
    assert rest.summary["stability"]["target"] is None and len(rest.summary["stability_curve"]) == 6
    from retrieval_heads.analysis.report import build_report

    text = build_report(tmp_path).read_text()
    assert "<h2>Stability</h2>" in text and "48 of 48 samples" in text


def test_failing_needles_need_enough_failures_and_no_success():
    outcomes = [(0, False), (0, False), (1, False), (1, True), (2, False)]
    assert failing_needles(outcomes, 2) == {0: 2}
    assert failing_needles(outcomes, 1) == {0: 2, 2: 1}
    assert failing_needles(outcomes, 0) == {}
    with pytest.raises(UserError):
        StopRule(drop_after=-1)


def test_until_stable_leaves_out_needles_that_keep_failing(loaded, tmp_path, monkeypatch):
    """Only needle 0 is ever retrieved: once another needle failed twice it gets no samples in later blocks,
    needle 0 runs everywhere, and the summary names the dropped needles and the samples skipped."""
    import retrieval_heads.detection.detect as detection
    from retrieval_heads.sweep.grid import SweepConfig

    record = detection._record

    def graded(loaded, spec, *rest):
        return {**record(loaded, spec, *rest), "success": spec.needle_index == 0}

    monkeypatch.setattr(detection, "_record", graded)
    config = SweepConfig(model="tiny-llama", lengths=[200, 260], depths=[0, 50, 100], max_new_tokens=2,
                         chunk_size=64, batch_size=3, block_size=8)
    never = StopRule(k=5, min_successes=1000, drop_after=2)
    detection.run_detection(loaded, config, tmp_path / "drop", progress=False, until_stable=never)
    summary = json.loads((tmp_path / "drop" / "summary.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "drop" / "samples.jsonl").read_text().splitlines()]
    blocks = sample_blocks(build_grid(8, [200, 260], [0.0, 50.0, 100.0]), 8)
    failures: dict[int, list[int]] = {}
    for r in sorted(records, key=lambda r: blocks[r["id"]]):
        earlier = [b for b in failures.get(r["needle_index"], []) if b < blocks[r["id"]]]
        assert len(earlier) < 2  # no sample in a block after the one where its needle's second failure came
        if not r["success"]:
            failures.setdefault(r["needle_index"], []).append(blocks[r["id"]])
    assert sum(r["needle_index"] == 0 for r in records) == 6  # the retrieved needle runs at every length and depth
    assert summary["samples_run"] + summary["samples_skipped"] == 48 and summary["samples_skipped"] > 0
    assert {n["needle_index"] for n in summary["dropped_needles"]} == {n for n, f in failures.items() if len(f) >= 2}
    assert sum(n["skipped"] for n in summary["dropped_needles"]) == summary["samples_skipped"]
    assert summary["stability"]["drop_after"] == 2

    keep = StopRule(k=5, min_successes=1000, drop_after=0)
    detection.run_detection(loaded, config, tmp_path / "keep", progress=False, until_stable=keep)
    summary = json.loads((tmp_path / "keep" / "summary.json").read_text())
    assert summary["samples_run"] == 48 and summary["samples_skipped"] == 0 and summary["dropped_needles"] == []


def test_detect_cli_until_stable_then_resume(tiny_tokenizer, tmp_path, monkeypatch, capsys):
    from conftest import build_tiny

    import retrieval_heads.detection.detect as detection

    monkeypatch.setattr(detection, "is_success", lambda recall: True)
    build_tiny("llama").save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    args = ["detect", "--model", str(tmp_path / "tiny"), "--lengths", "200", "--depths", "0,100", "--max-new-tokens",
            "2", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args + ["--until-stable", "--stable-k", "5", "--min-successes", "4", "--block-size", "4"]) == 0
    assert "stopped early after 4 of 16 samples" in capsys.readouterr().out
    assert main(args + ["--resume"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples_run"] == 16 and not summary["stopped_early"]
    assert main(args + ["--until-stable", "--stability", "1.5"]) == 2
    assert "stability target" in capsys.readouterr().err
    assert main(args + ["--block-size", "-1"]) == 2


def test_merged_shards_that_stopped_early_say_so(loaded, tmp_path, monkeypatch):
    import retrieval_heads.detection.detect as detection
    from retrieval_heads import merge_runs
    from retrieval_heads.sweep.grid import SweepConfig

    monkeypatch.setattr(detection, "is_success", lambda recall: True)
    rule = StopRule(k=5, stability=0.9, min_successes=4)
    for i in range(2):
        config = SweepConfig(model="tiny-llama", lengths=[200], depths=[0, 100], max_new_tokens=2, chunk_size=64,
                             block_size=4, shard=(i, 2))
        detection.run_detection(loaded, config, tmp_path / f"s{i}", progress=False, until_stable=rule)
    merged = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert merged["stopped_early"] is True and merged["samples_run"] == 8 and merged["grid_samples"] == 16
    assert merged["stability"]["target"] == 0.9 and merged["stability"]["k"] == 5


def test_until_stable_checks_at_block_ends_whatever_the_batch_size(loaded, tmp_path, monkeypatch):
    """Batches of 3 and blocks of 8: the checks come after 8 and 16 samples, not after 9 and 18."""
    import retrieval_heads.detection.detect as detection
    from retrieval_heads.sweep.grid import SweepConfig

    monkeypatch.setattr(detection, "is_success", lambda recall: True)
    config = SweepConfig(model="tiny-llama", lengths=[200, 260], depths=[0, 50, 100], max_new_tokens=2,
                         chunk_size=64, batch_size=3, block_size=8)
    checked = []
    measure_at = detection.measure
    monkeypatch.setattr(detection, "measure", lambda s, done, rule: checked.append(done) or measure_at(s, done, rule))
    detection.run_detection(loaded, config, tmp_path, progress=False, until_stable=StopRule(k=5, min_successes=12))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert checked == [8, 16] and summary["samples_run"] == 16 and summary["stopped_early"]
    assert [p["samples"] for p in summary["stability_curve"]] == checked  # the live checks are the recorded curve


def test_ranks_take_one_stop_decision_for_the_whole_run(monkeypatch):
    """Two ranks: rank 1 has one block, rank 0 three. Each round measures the union of both ranks' samples, so
    both decide alike; rank 1, done, keeps taking rounds until rank 0 stops, and neither stops on its own shard."""
    import threading
    from types import SimpleNamespace

    import retrieval_heads.detection.detect as detection
    from retrieval_heads.sweep.distributed import Launch

    barrier, slots = threading.Barrier(2), [None, None]

    def all_gather(obj):
        rank = int(threading.current_thread().name)
        slots[rank] = obj
        barrier.wait()
        gathered = list(slots)
        barrier.wait()
        return gathered

    monkeypatch.setattr(detection, "all_gather", all_gather)
    samples = planted(12)
    rule = StopRule(k=5, stability=0.9, min_successes=6)
    blocks = {0: [range(0, 2), range(2, 4), range(4, 6)], 1: [range(6, 10)]}  # rank -> its blocks (sample indices)
    decisions = {0: [], 1: []}

    def rank(r: int) -> None:
        watch = detection.StabilityWatch(rule, (6, 8), Launch(r, 2, r))
        sweep = SimpleNamespace(run=SimpleNamespace(records=lambda: []))
        for i, block in enumerate(blocks[r]):
            for j in block:
                watch.add({"id": f"s{j:02d}", "needle_index": j % 3, "success": True, "head_scores": samples[j].tolist()})
            if i == len(blocks[r]) - 1:  # the runner does not check after the last block
                watch.drain(sweep)
                decisions[r].append(("drained", watch.last.samples))
                return
            stop = watch(sweep)
            decisions[r].append((stop, watch.last.samples))
            if stop:
                return

    threads = [threading.Thread(target=rank, args=(r,), name=str(r)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert decisions[0] == [(True, 6)]  # 2 + 4 samples: 6 successes; rank 0 alone had 2
    assert decisions[1] == [("drained", 6)]


def test_ranks_share_which_needles_failed():
    """A needle that failed once on each of two ranks is dropped on both after the round that shares it."""
    import threading
    from types import SimpleNamespace

    import retrieval_heads.detection.detect as detection
    from retrieval_heads.sweep.distributed import Launch
    from retrieval_heads.sweep.grid import SampleSpec

    barrier, slots = threading.Barrier(2), [None, None]

    def all_gather(obj):
        slots[int(threading.current_thread().name)] = obj
        barrier.wait()
        gathered = list(slots)
        barrier.wait()
        return gathered

    rule = StopRule(k=5, min_successes=100, drop_after=2)
    sweep = SimpleNamespace(run=SimpleNamespace(records=lambda: []))
    spec = SampleSpec(1, 200, 50.0)
    before, after = {}, {}

    def rank(r: int) -> None:
        watch = detection.StabilityWatch(rule, (2, 2), Launch(r, 2, r))
        watch.add({"id": f"r{r}", "needle_index": 1, "success": False, "head_scores": [[0.0] * 2] * 2})
        before[r] = spec.id in watch.skips(sweep, [spec])  # one failure known here
        watch(sweep)  # a round
        after[r] = spec.id in watch.skips(sweep, [spec])

    import pytest as _pytest
    with _pytest.MonkeyPatch.context() as patch:
        patch.setattr(detection, "all_gather", all_gather)
        threads = [threading.Thread(target=rank, args=(r,), name=str(r)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert before == {0: False, 1: False} and after == {0: True, 1: True}


def test_prefix_reuse_counts_whole_chunks_of_each_common_prefix():
    from retrieval_heads.sweep.grid import prefix_reuse

    a, b, c = [1, 2, 3, 4, 5, 6, 9], [1, 2, 3, 4, 5, 7, 9], [8, 2, 3, 9]
    assert prefix_reuse([a, b, c], 2) == (4, 6 + 6 + 3)  # a-b share 5 tokens, 4 in whole chunks; c shares none
    assert prefix_reuse([a, b], 1) == (5, 12)
    assert prefix_reuse([], 4) == (0, 0)


def test_blocks_keep_most_of_the_prefixes_the_grid_shares_in_prompt_order(tiny_tokenizer):
    """A paper-style grid (10 needles x 4 lengths x 5 depths) in blocks of 20, each block in prompt order, reuses
    at least 0.55 of the prefill tokens the whole grid reuses in prompt order (0.585 here; the order that also
    balanced (needle, depth) pairs kept 0.523: it never gave a needle depth 0 twice in a block)."""
    from retrieval_heads.sweep.grid import SweepConfig, prefix_reuse, prepare

    config = SweepConfig(needles=str(REPO / "benchmarks" / "data" / "heldout_needles.jsonl"),
                         lengths=[300, 450, 600, 750], depths=[0.0, 25.0, 50.0, 75.0, 100.0])
    inputs = prepare(config, tiny_tokenizer, None)
    ids = {s.id: inputs.prompts[s.id].ids for s in inputs.specs}
    blocks = sample_blocks(inputs.specs, 20)
    in_blocks_order = sorted(inputs.specs, key=lambda s: (blocks[s.id], ids[s.id]))
    blocked, total = prefix_reuse([ids[s.id] for s in in_blocks_order], 16)
    whole, same_total = prefix_reuse(sorted(ids.values()), 16)
    assert total == same_total and len(inputs.specs) == 200
    assert blocked / whole >= 0.55


def test_split_half_tells_needle_to_needle_noise_from_sample_noise():
    from retrieval_heads.sweep.stability import split_half

    rng = np.random.default_rng(0)
    # 6 needles, 40 samples each: heads 0-1 score high everywhere; each needle also lights a head of its own
    samples = rng.random((240, 2, 8)) * 0.01
    samples[:, 0, :2] += 1.0
    needles = np.repeat(np.arange(6), 40)
    for i, n in enumerate(needles):
        samples[i, 1, n] += 0.1 + 0.1 * n
    assert split_half(samples, 2) == 1.0 and split_half(samples, 2, groups=needles) == 1.0
    random_halves, needle_halves = split_half(samples, 5), split_half(samples, 5, groups=needles)
    assert random_halves > 0.9 and needle_halves == 0.25  # ranks 3-5: the heads of whichever needles a half holds
    assert split_half(samples[:1], 5) is None and split_half(samples, 5, groups=[0] * 240) is None
    assert split_half(samples, 5, groups=needles, seed=3) == split_half(samples, 5, groups=needles, seed=3)


def test_analyze_reports_reproducibility_and_finds_each_samples_needle(tmp_path):
    from retrieval_heads.analysis.formats import load_scores

    rng = np.random.default_rng(1)
    samples = rng.random((6, 2, 4))
    run = tmp_path / "run"
    run.mkdir()
    HeadScores(samples, model="toy").save_paper_json(run / "head_scores.json")
    records = [{"id": f"s{i}", "needle_index": i % 3, "success": True, "head_scores": samples[i].tolist()}
               for i in range(6)]
    records.insert(2, {"id": "f", "needle_index": 2, "success": False, "head_scores": np.zeros((2, 4)).tolist()})
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(records)))  # another order
    loaded = load_scores(run)
    assert loaded.meta["needles"] == [i % 3 for i in range(6)]
    from retrieval_heads.sweep.stability import reproducibility

    result = reproducibility(loaded, 3)
    assert result["k"] == [3, 10] and result["needles"] is not None
    assert all(0 <= v <= 1 for v in result["samples"])
    (run / "samples.jsonl").write_text(json.dumps(records[0]) + "\n")  # a sample without its record: no needles
    assert "needles" not in load_scores(run).meta
    assert reproducibility(load_scores(run), 3)["needles"] is None
    assert main(["analyze", str(run), "--json"]) == 0
