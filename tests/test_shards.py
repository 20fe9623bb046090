"""Shards, merge, and data-parallel launches: the merged run equals the single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import build_tiny, forced_answer

from retrieval_heads import merge_runs
from retrieval_heads.detection.detect import run_detection
from retrieval_heads.errors import UserError
from retrieval_heads.models import LoadedModel
from retrieval_heads.sweep.grid import SweepConfig, build_grid


def config(**kw) -> SweepConfig:
    base = dict(model="tiny-llama", lengths=[200, 260], depths=[0, 50, 100], max_new_tokens=3, chunk_size=64)
    return SweepConfig(**{**base, **kw})


def records(path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (path / "samples.jsonl").read_text().splitlines()]
    return {r["id"]: r for r in rows}


def test_shards_partition_the_grid():
    full = build_grid(3, [100, 200], [0, 50])
    parts = [build_grid(3, [100, 200], [0, 50], (i, 3)) for i in range(3)]
    assert sorted(s.id for p in parts for s in p) == sorted(s.id for s in full)
    assert len({s.id for p in parts for s in p}) == len(full)


def test_merged_shards_equal_a_single_run(tiny_tokenizer, tmp_path, forced_needles):
    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    with forced_answer(loaded.model, tiny_tokenizer):
        single = run_detection(loaded, config(needles=forced_needles), tmp_path / "single", progress=False)
        for i in range(2):
            run_detection(loaded, config(needles=forced_needles, shard=(i, 2)), tmp_path / f"s{i}", progress=False)
    merged = merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "merged")
    assert merged["samples"] == single.summary["samples"] == 24
    assert merged["successes"] == single.summary["successes"] == 24
    assert merged["top_heads"] == single.summary["top_heads"]
    a, b = records(tmp_path / "single"), records(tmp_path / "merged")
    assert a.keys() == b.keys()
    assert all(a[k]["head_scores"] == b[k]["head_scores"] and a[k]["response"] == b[k]["response"] for k in a)
    assert json.loads((tmp_path / "merged" / "head_scores.json").read_text()) == json.loads(
        (tmp_path / "single" / "head_scores.json").read_text())


def test_merge_refuses_different_configs(tiny_tokenizer, tmp_path):
    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    run_detection(loaded, config(lengths=[200], depths=[0], shard=(0, 2)), tmp_path / "a", progress=False)
    run_detection(loaded, config(lengths=[200], depths=[0], shard=(1, 2), max_new_tokens=2), tmp_path / "b", progress=False)
    with pytest.raises(UserError, match="max_new_tokens"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    with pytest.raises(UserError, match="not a finished run"):
        merge_runs([tmp_path / "a", tmp_path / "nothing"], tmp_path / "m")


@pytest.mark.slow
def test_torchrun_ranks_shard_and_rank0_merges(tiny_tokenizer, tmp_path):
    model = build_tiny("llama")
    model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "retrieval_heads", "detect", "--model", str(tmp_path / "tiny"), "--lengths", "200,260",
           "--depths", "0,100", "--max-new-tokens", "3", "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "shards" / "rank-0" / "samples.jsonl").exists() and (out / "shards" / "rank-1" / "samples.jsonl").exists()
    merged = records(out)
    assert len(merged) == 8 * 2 * 2
    assert json.loads((out / "summary.json").read_text())["timing"]["shards"] == 2


def test_kill_keeps_finished_samples_and_writes_the_summary(tiny_tokenizer, tmp_path):
    import signal
    import time

    build_tiny("llama").save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "retrieval_heads", "detect", "--model", str(tmp_path / "tiny"), "--lengths",
           "1500,2000,2500", "--num-depths", "10", "--max-new-tokens", "3", "--batch-size", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ((out / "samples.jsonl").exists() and (out / "samples.jsonl").stat().st_size):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-1000:]
    assert "--resume" in err
    finished = len((out / "samples.jsonl").read_text().splitlines())
    assert 0 < finished < 240
    assert json.loads((out / "summary.json").read_text())["samples"] == finished
