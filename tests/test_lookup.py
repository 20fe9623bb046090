"""Lookup scores: attention mass of the question and answer rows on the needle, against eager attention."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import builtin_needles, build_tiny
from retrieval_heads.kv.lookup import needle_attention, run_lookup
from retrieval_heads.models import LoadedModel
from retrieval_heads.sweep.grid import SweepConfig


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_needle_attention_is_the_models_own_attention_on_the_span(family):
    model = build_tiny(family)
    ids = torch.randint(0, 512, (1, 60), generator=torch.Generator().manual_seed(3))
    span, rows_from = (20, 27), 45
    mass = needle_attention(model, ids[0].tolist(), span, rows_from, chunk_size=16)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True).attentions
    sliding = [t != "full_attention" for t in getattr(model.config, "layer_types", ["full_attention"] * 3)]
    for layer, w in enumerate(weights):
        expected = np.zeros(8) if sliding[layer] else w[0, :, rows_from:, span[0]:span[1]].sum(-1).mean(-1).numpy()
        np.testing.assert_allclose(mass[layer], expected, atol=1e-5, err_msg=f"layer {layer}")
    assert mass.max() > 0


def test_run_lookup_writes_a_run_directory_that_resumes(tiny_tokenizer, tmp_path):
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.errors import UserError

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    needles = builtin_needles(tmp_path, 2)
    config = SweepConfig(model="tiny-llama", needles=needles, lengths=[260], depths=[20.0, 70.0], chunk_size=64)
    out = tmp_path / "lookup"
    result = run_lookup(loaded, config, out, progress=False)
    rows = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and result.summary["samples"] == 4 and result.summary["criterion"] == "lookup"
    for row in rows:
        start, end = row["needle_span"]
        assert start < end <= row["question_start"] < row["prompt_tokens"]
        assert np.asarray(row["head_scores"]).shape == (3, 8)
    expected = np.mean([r["head_scores"] for r in rows], axis=0)
    scores = load_scores(out)
    np.testing.assert_allclose(scores.mean, expected, atol=1e-6)
    assert scores.kv_view(2).shape == (3, 2)
    from retrieval_heads.kv.evaluate import scores_label

    assert scores_label(result.scores) == scores_label(scores) == f"lookup: {out}"
    with pytest.raises(UserError, match="--resume"):
        run_lookup(loaded, config, out, progress=False)
    again = run_lookup(loaded, config, out, resume=True, progress=False)
    assert again.summary["samples"] == 4
    assert len((out / "samples.jsonl").read_text().splitlines()) == 4


def test_kv_eval_reads_a_lookup_run_and_names_its_scores(tiny_tokenizer, tmp_path):
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.kv.evaluate import run_kv_eval

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    needles = builtin_needles(tmp_path, 1)
    config = SweepConfig(model="tiny-llama", needles=needles, lengths=[260], depths=[50.0], chunk_size=64,
                         max_new_tokens=2)
    run_lookup(loaded, config, tmp_path / "lookup", progress=False)
    scores = load_scores(tmp_path / "lookup")
    summary = run_kv_eval(loaded, config, tmp_path / "kv", scores, budgets=[0.3], policies=["full", "retrieval-snapkv"],
                          sink=4, obs_window=8, full_share=0.8, query_agnostic=True, progress=False)
    assert summary["scores"] == f"lookup: {tmp_path / 'lookup'}"
    assert [r["scores"] for r in summary["rows"]] == [summary["scores"]] * 2


def test_merged_lookup_shards_stay_a_lookup_run_for_kv_eval(tiny_tokenizer, tmp_path):
    from dataclasses import replace

    from retrieval_heads import merge_runs
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.kv.evaluate import scores_label

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    config = SweepConfig(model="tiny-llama", needles=builtin_needles(tmp_path, 2), lengths=[260], depths=[20.0, 70.0],
                         chunk_size=64)
    whole = run_lookup(loaded, config, tmp_path / "whole", progress=False)
    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        run_lookup(loaded, replace(config, shard=(i, 2)), shard, progress=False)
    merged = tmp_path / "merged"
    summary = merge_runs(shards, merged)
    assert summary["criterion"] == "lookup" and summary["samples"] == 4
    assert json.loads((merged / "config.json").read_text())["identity"]["criterion"] == "lookup"
    scores = load_scores(merged)
    assert scores_label(scores) == f"lookup: {merged}"
    np.testing.assert_allclose(scores.mean, whole.scores.mean, atol=1e-6)
