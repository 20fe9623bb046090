"""``kv-frontier``: a task set's average against KV bytes from kv-eval runs and kvpress peer runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval_heads.errors import UserError
from retrieval_heads.kv.frontier import frontier, markdown, task_name, write_frontier


def fake_kv_eval(path, needles, conditions: dict[tuple[bool, str, float], dict[str, float]]):
    """A kv-eval output directory as ``run_kv_eval`` lays it out: ``summary.json`` rows and, per condition,
    ``results.jsonl`` and ``kv_samples.jsonl`` (bytes kept = budget)."""
    rows = []
    for (agnostic, policy, budget), scores in conditions.items():
        rows.append({"policy": policy, "budget": budget, "query_agnostic": agnostic,
                     "selection": "reread" if agnostic and policy != "full" else None,
                     "token_ranking": "retrieval-heads" if agnostic and policy != "full" else None})
        name = "full" if policy == "full" else f"{policy}-{budget:g}"
        run = (path / "query-agnostic" if agnostic else path) / name / "L4000"
        run.mkdir(parents=True)
        (run / "results.jsonl").write_text("".join(json.dumps({"id": i, "score": s}) + "\n" for i, s in scores.items()))
        (run / "kv_samples.jsonl").write_text("".join(
            json.dumps({"id": i, "kv_bytes": 1, "dense_kv_bytes": 1, "compressed_kv_bytes": budget * 1000,
                        "compressed_dense_kv_bytes": 1000}) + "\n" for i in scores))
    (path / "summary.json").write_text(json.dumps({"config": {"needles": needles, "lengths": [4000]}, "rows": rows}))
    return path


def fake_peer(path, needles, rows):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({"config": {"needles": needles, "lengths": [4000]}}))
    (path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def entry(result, method, budget, agnostic=False):
    return next(e for e in result["entries"] if e["method"] == method and e["budget"] == budget
                and e["query_agnostic"] == agnostic)


def test_task_names_come_from_the_needle_set():
    assert task_name("ruler:niah_single_2:seed=3:n=4") == "niah_single_2"
    assert task_name("benchmarks/data/kv_needles_eval2.jsonl") == "kv_needles_eval2"
    assert task_name(None) == "default"


def test_the_average_is_the_mean_of_task_means_paired_with_full_on_the_same_samples(tmp_path):
    # task a: 4 samples, full all 100, snapkv right on 2; task b: 2 samples, full 100 and 0, snapkv only one sample
    a = fake_kv_eval(tmp_path / "a", "ruler:niah_single_2:seed=3:n=4", {
        (False, "full", 1.0): {"a0": 100, "a1": 100, "a2": 100, "a3": 100},
        (False, "snapkv", 0.1): {"a0": 100, "a1": 0, "a2": 100, "a3": 0}})
    b = fake_kv_eval(tmp_path / "b", "ruler:vt:seed=3:n=2", {
        (False, "full", 1.0): {"b0": 100, "b1": 0},
        (False, "snapkv", 0.1): {"b0": 100}})
    result = frontier([a, b], draws=500)
    assert result["tasks"] == ["niah_single_2", "vt"]
    full, snapkv = entry(result, "full", 1.0), entry(result, "snapkv", 0.1)
    assert full["score"] == pytest.approx((100 + 50) / 2) and full["samples"] == 6  # not the pooled 83.3
    # snapkv: task means 50 and 100 (b1 missing); its full on the same samples: 100 and 100
    assert snapkv["score"] == pytest.approx(75) and snapkv["full"] == pytest.approx(100)
    assert snapkv["share"] == pytest.approx(0.75) and snapkv["samples"] == 5 and snapkv["tasks"] == 2
    assert snapkv["score_low"] <= 75 <= snapkv["score_high"] and snapkv["score_high"] - snapkv["score_low"] > 0
    assert snapkv["share_low"] <= 0.75 <= snapkv["share_high"]
    assert snapkv["kv_fraction"] == pytest.approx(0.1)
    assert snapkv["by_task"] == {"niah_single_2": {"score": 50, "full": 100, "samples": 4},
                                 "vt": {"score": 100, "full": 100, "samples": 1}}


def test_peer_presses_join_their_setting_and_skip_rows_without_a_score(tmp_path):
    run = fake_kv_eval(tmp_path / "run", "ruler:niah_single_2:seed=3:n=2", {
        (False, "full", 1.0): {"s0": 100, "s1": 100},
        (True, "full", 1.0): {"s0": 100, "s1": 0},
        (True, "snapkv", 0.1): {"s0": 100, "s1": 0}})
    peer = fake_peer(tmp_path / "peer", "ruler:niah_single_2:seed=3:n=2", [
        {"id": "s0", "setting": "agnostic", "press": "full", "budget": 1.0, "score": 100, "kept_fraction": 1.0},
        {"id": "s0", "setting": "agnostic", "press": "knorm", "budget": 0.1, "score": 0, "kept_fraction": 0.1},
        {"id": "s1", "setting": "agnostic", "press": "knorm", "budget": 0.1, "score": 0, "kept_fraction": 0.1},
        {"id": "s0", "setting": "agnostic", "press": "duo-pattern", "budget": 0.1, "unreachable": "below sink"},
        {"id": "s0", "setting": "question", "press": "snapkv", "budget": 0.05, "score": 100, "kept_fraction": 0.05}])
    result = frontier([run], [peer], draws=200)
    knorm = entry(result, "kvpress:knorm", 0.1, agnostic=True)
    assert knorm["score"] == 0 and knorm["full"] == 50 and knorm["share"] == 0  # kv-eval's full is the reference
    ours = entry(result, "snapkv (reread, retrieval-heads)", 0.1, agnostic=True)
    assert ours["share"] == pytest.approx(1.0)
    assert entry(result, "kvpress:snapkv", 0.05)["full"] == 100  # the question setting's own full
    assert not any(e["method"] == "kvpress:duo-pattern" for e in result["entries"])
    text = markdown(result)
    assert "### question in the prompt" in text and "### query-agnostic" in text and "kvpress:knorm" in text
    paths = write_frontier(result, tmp_path / "out", title="test")
    assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert json.loads((tmp_path / "out" / "frontier.json").read_text())["entries"] == json.loads(json.dumps(
        result["entries"]))


def test_a_real_kv_eval_run_gives_its_own_means(tiny_tokenizer, tmp_path):
    from conftest import tiny_kv_eval

    from retrieval_heads.kv.evaluate import run_kv_eval

    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    summary = run_kv_eval(loaded, config, tmp_path / "out", scores, budgets=[0.3], policies=["full", "snapkv"], sink=4,
                          window=16, obs_window=8, progress=False)
    result = frontier([tmp_path / "out"], draws=100)
    for row in summary["rows"]:
        found = entry(result, row["policy"], row["budget"])
        assert found["score"] == pytest.approx(row["mean_score"]) and found["samples"] == row["samples"]
        assert found["kv_fraction"] == pytest.approx(row["compressed_kv_fraction"])
    full = entry(result, "full", 1.0)
    assert full["share"] is None if full["score"] == 0 else np.isclose(full["share"], 1.0)  # no share of nothing


def test_cli_refuses_what_is_not_a_run(tmp_path, capsys):
    from retrieval_heads.cli import main

    assert main(["kv-frontier", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "not a kv-eval run" in capsys.readouterr().err
    assert main(["kv-frontier", "--peer", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert main(["kv-frontier", "--out", str(tmp_path / "out")]) == 2
    with pytest.raises(UserError):
        frontier([], [])


def test_runs_of_one_task_on_other_prompts_are_refused(tmp_path):
    """Samples pair by id, so a peer run of another seed (same ids, other prompts) must not join."""
    run = fake_kv_eval(tmp_path / "run", "ruler:niah_single_2:seed=3:n=1", {(False, "full", 1.0): {"s0": 100}})
    peer = fake_peer(tmp_path / "peer", "ruler:niah_single_2:seed=2:n=1", [
        {"id": "s0", "setting": "question", "press": "full", "budget": 1.0, "score": 0, "kept_fraction": 1.0}])
    with pytest.raises(UserError, match="other prompts.*seed=3.*seed=2"):
        frontier([run], [peer])


def test_method_names_say_how_tokens_were_chosen_and_a_pool_that_is_not_the_models():
    from retrieval_heads.kv.frontier import method_name

    assert method_name({"policy": "snapkv", "selection": "window", "token_ranking": "own"}) == "snapkv"
    assert method_name({"policy": "adaptive", "selection": "reread", "token_ranking": "own", "pool": "model"}) == \
        "adaptive (reread)"
    assert method_name({"policy": "adaptive", "selection": "window", "token_ranking": "own", "pool": "layer"}) == \
        "adaptive (layer pool)"
