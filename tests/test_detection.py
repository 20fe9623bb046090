"""End-to-end detection on a tiny random model: files, resume without double counting, interruption."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import build_tiny, forced_answer

from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.detection.detect import run_detection, scores_from_records, sparsity_counts
from retrieval_heads.errors import UserError
from retrieval_heads.models import LoadedModel
from retrieval_heads.sweep.grid import SweepConfig


@pytest.fixture
def loaded(tiny_tokenizer):
    return LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)


def config(**kw) -> SweepConfig:
    base = dict(model="tiny-llama", lengths=[200, 300], depths=[0, 50], max_new_tokens=4, chunk_size=64)
    base.update(kw)
    return SweepConfig(**base)


def test_detection_writes_every_output(loaded, tmp_path, forced_needles):
    with forced_answer(loaded.model, loaded.tokenizer):
        result = run_detection(loaded, config(needles=forced_needles), tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 * 2 * 2
    row = rows[0]
    for key in ("id", "model", "context_length", "prompt_tokens", "depth_percent", "needle_index", "prompt_ids",
                "needle_span", "generated_ids", "response", "rouge1_recall", "success", "head_scores"):
        assert key in row
    assert np.asarray(row["head_scores"]).shape == (3, 8)
    start, end = row["needle_span"]
    assert 0 < start < end <= row["prompt_tokens"] == len(row["prompt_ids"])
    assert abs(row["prompt_tokens"] - row["context_length"]) <= 8
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples"] == 16 and summary["successes"] == 16 and summary["num_kv_heads"] == 2
    assert all(r["response"] == "in the" and r["success"] for r in rows)
    assert np.asarray(summary["kv_head_scores"]["max"]).shape == (3, 2)
    assert set(summary["timing"]) >= {"wall_s", "model_load_s", "prefill_s", "decode_s", "scoring_s", "io_s"}
    paper = json.loads((tmp_path / "head_scores.json").read_text())
    assert len(paper) == 24 and all(len(v) == summary["successes"] for v in paper.values())
    assert result.scores.num_samples == summary["successes"]
    import torch
    import transformers

    versions = json.loads((tmp_path / "config.json").read_text())["versions"]
    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__


def test_rerun_needs_resume_and_never_double_counts(loaded, tmp_path):
    run_detection(loaded, config(lengths=[200]), tmp_path, progress=False)
    with pytest.raises(UserError, match="--resume"):
        run_detection(loaded, config(lengths=[200]), tmp_path, progress=False)
    run_detection(loaded, config(lengths=[200, 300]), tmp_path, resume=True, progress=False)
    ids = [json.loads(line)["id"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 32
    with pytest.raises(UserError, match="max_new_tokens"):
        run_detection(loaded, config(max_new_tokens=5), tmp_path, resume=True, progress=False)


def test_interrupted_run_keeps_finished_samples(loaded, tmp_path, monkeypatch):
    from retrieval_heads.core import engine

    calls = {"n": 0}
    original = engine.Engine.generate_batch

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(engine.Engine, "generate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_detection(loaded, config(lengths=[200], batch_size=2), tmp_path, progress=False)
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 4
    assert json.loads((tmp_path / "summary.json").read_text())["samples"] == 4
    monkeypatch.setattr(engine.Engine, "generate_batch", original)
    run_detection(loaded, config(lengths=[200]), tmp_path, resume=True, progress=False)
    assert len((tmp_path / "samples.jsonl").read_text().splitlines()) == 16


def test_context_longer_than_the_model_is_refused(loaded, tmp_path):
    with pytest.raises(UserError, match="exceeds the model's maximum"):
        run_detection(loaded, config(lengths=[5000]), tmp_path, progress=False)


def test_aggregation_uses_successful_samples_only():
    records = [
        {"success": True, "head_scores": [[1.0, 0.0]]},
        {"success": False, "head_scores": [[9.0, 9.0]]},
        {"success": True, "head_scores": [[0.0, 0.5]]},
    ]
    scores = scores_from_records(records, (1, 2))
    assert scores.num_samples == 2
    assert scores.mean.tolist() == [[0.5, 0.25]]
    assert sparsity_counts(np.array([0.0, 0.05, 0.2, 0.7])) == {"zero": 1, "(0, 0.1]": 1, "(0.1, 0.5]": 1, "> 0.5": 1}


def test_head_scores_paper_round_trip(tmp_path):
    scores = HeadScores(np.random.default_rng(0).random((4, 3, 2)))
    scores.save_paper_json(tmp_path / "s.json")
    again = HeadScores.load_paper_json(tmp_path / "s.json")
    assert np.allclose(again.samples, scores.samples)
    assert scores.kv_view(1, "max").shape == (3, 1)
    assert scores.top(1)[0][2] == pytest.approx(scores.mean.max())
