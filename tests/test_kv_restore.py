"""Restore scores: gated attention against the compressed cache and the plain model, gradients, the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from conftest import builtin_needles, build_tiny
from retrieval_heads.kv.attention import HeadwiseAttention
from retrieval_heads.kv.compressed import CompressedCache
from retrieval_heads.kv.prefill import extend
from retrieval_heads.kv.restore import (Gates, Sample, answer_logprob, compressed_count, gating, keep_masks,
                                        objective, order_scores, run_restore)
from retrieval_heads.kv.snapkv import Observed
from retrieval_heads.models import LoadedModel
from retrieval_heads.sweep.grid import SweepConfig

DOC, TAIL = 40, 12  # document tokens; question + answer tokens fed after it


def _sample(model, seed=0, answer_len=5):
    ids = torch.randint(0, 512, (DOC + TAIL,), generator=torch.Generator().manual_seed(seed)).tolist()
    cache = DynamicCache(config=model.config)
    extend(model, cache, ids[:DOC], 0, chunk_size=16)
    layers = model.config.num_hidden_layers
    scores = {l: torch.rand(model.config.num_key_value_heads, DOC - 4, generator=torch.Generator().manual_seed(l))
              for l in range(layers)}
    return Sample("s", cache, DOC, ids[DOC:], answer_len, Observed(DOC, 4, scores), ""), ids


def _eligible(model):
    types = getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers
    return [l for l, t in enumerate(types) if t == "full_attention"]


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_oss"])
def test_gates_at_zero_are_the_compressed_cache_and_at_one_the_plain_model(family):
    from retrieval_heads.compat.tiny import build_tiny as build_tiny_arch

    model = build_tiny_arch(family) if family == "gpt_oss" else build_tiny(family)
    sample, ids = _sample(model)
    masks = keep_masks(sample.observed, _eligible(model), 10, sink=2)
    hkv = model.config.num_key_value_heads
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([ids])).logits[0, DOC:].float()
        cache = CompressedCache.from_prefilled(model.config, sample.cache, {
            l: [m.nonzero()[:, 0] for m in masks[l]] for l in masks})
        with HeadwiseAttention(model):
            compressed = model(input_ids=torch.tensor([ids[DOC:]]), cache=cache).logits[0].float()
    state = Gates()
    with gating(model, state), torch.no_grad():
        for gate, expected in ((0.0, compressed), (1.0, plain)):
            state.keep, state.gates = masks, {l: torch.full((hkv,), gate) for l in masks}
            state.doc_len = DOC
            logits = model(input_ids=torch.tensor([ids[DOC:]]), cache=sample.cache,
                           use_cache=True).logits[0].float()
            state.doc_len = None
            torch.testing.assert_close(logits, expected, atol=2e-4, rtol=1e-4)
            sample.cache = _fresh(model, ids)
    assert not torch.allclose(plain, compressed, atol=1e-3)  # the masks do drop something


def _fresh(model, ids):
    cache = DynamicCache(config=model.config)
    extend(model, cache, ids[:DOC], 0, chunk_size=16)
    return cache


def test_answer_logprob_leaves_the_document_cache_as_it_was_and_its_gradient_is_the_slope():
    model = build_tiny("llama")
    sample, _ = _sample(model)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in sample.cache.layers]
    masks = [keep_masks(sample.observed, _eligible(model), 8, sink=2)]
    whole = np.zeros((3, model.config.num_key_value_heads))
    state = Gates()
    with gating(model, state):
        value, grads = objective(model, [sample], state, masks, whole, grad=True)
        again, _ = objective(model, [sample], state, masks, whole, grad=False)
        layer, head = np.unravel_index(np.argmax(np.abs(grads)), grads.shape)
        step = 1e-3
        moved = whole.copy()
        moved[layer, head] = step
        shifted, _ = objective(model, [sample], state, masks, moved, grad=False)
    assert value == pytest.approx(again, abs=1e-6)
    assert (shifted - value) / step == pytest.approx(grads[layer, head], rel=0.05, abs=1e-4)
    assert abs(grads[layer, head]) > 1e-4
    for (k, v), layer_now in zip(before, sample.cache.layers):
        assert torch.equal(k, layer_now.keys) and torch.equal(v, layer_now.values)
    assert state.doc_len is None


def test_answer_logprob_is_the_mean_log_probability_of_the_answer_tokens():
    model = build_tiny("llama")
    sample, ids = _sample(model, answer_len=4)
    state = Gates()  # no keep masks: every call plain
    with gating(model, state), torch.no_grad():
        value = float(answer_logprob(model, sample, state))
        logits = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
    targets = ids[-4:]
    expected = np.mean([float(logits[len(ids) - 5 + i, t]) for i, t in enumerate(targets)])
    assert value == pytest.approx(expected, abs=1e-5)


def test_counts_and_order_scores():
    assert compressed_count(0.15, 90, 10, 4000) == round((13.5 - 10) / 80 * 4000)
    assert compressed_count(0.5, 4, 0, 100) == 50
    steps = [{"layer": 2, "head": 1}, {"layer": 0, "head": 0}]
    scores = order_scores(steps, (3, 2))
    assert scores[2, 1] == 1.0 and scores[0, 0] == 0.75 and scores.sum() == 1.75


def test_run_restore_writes_scores_that_kv_eval_reads(tiny_tokenizer, tmp_path):
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.errors import UserError
    from retrieval_heads.kv.evaluate import run_kv_eval, scores_label

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    needles = builtin_needles(tmp_path, 2)
    config = SweepConfig(model="tiny-llama", needles=needles, lengths=[200], depths=[50.0], chunk_size=64,
                         max_new_tokens=4)
    out = tmp_path / "restore"
    result = run_restore(loaded, config, out, budget=0.5, full_share=0.8, sink=4, obs_window=8, progress=False)
    steps = [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 == len(result.summary["chosen_kv_heads"])  # floor(0.8 x 0.5 x 6)
    assert len({s["kv_head"] for s in steps}) == 2
    scores = load_scores(out)
    kv = scores.kv_view(2)
    assert kv[steps[0]["layer"], steps[0]["head"]] == 1.0 and kv[steps[1]["layer"], steps[1]["head"]] == 0.75
    assert (kv > 0).sum() == 2 and result.summary["criterion"] == "restore"
    assert scores_label(scores) == f"restore: {out}"
    with pytest.raises(UserError, match="--overwrite"):
        run_restore(loaded, config, out, budget=0.5, sink=4, obs_window=8, progress=False)
    # no full share given: the one restore chose with (0.8; kv-eval's own default 0.5 would keep 1 of the 2 whole)
    summary = run_kv_eval(loaded, config, tmp_path / "kv", scores, budgets=[0.5], policies=["retrieval-snapkv"],
                          sink=4, obs_window=8, query_agnostic=True, progress=False)
    assert sorted(summary["rows"][0]["full_kv_heads"]) == sorted(s["kv_head"] for s in steps)
    assert summary["full_share"] == 0.8 and summary["full_share_from"].startswith("recorded by the restore run")


def test_kv_eval_cli_keeps_whole_exactly_the_heads_restore_chose(tiny_tokenizer, tmp_path, capsys):
    """restore's help says kv-eval --scores DIR keeps its heads whole: at restore's budget, without --full-share,
    kv-eval's retrieval-snapkv keeps exactly those heads whole, and says which full share it used."""
    from retrieval_heads.cli import main
    from retrieval_heads.compat.tiny import save_tiny

    directory = save_tiny(build_tiny("llama"), tiny_tokenizer, tmp_path / "llama")
    sweep = ["--model", str(directory), "--needles", builtin_needles(tmp_path, 2), "--lengths", "200", "--depths",
             "50", "--chunk-size", "64", "--max-new-tokens", "4", "--dtype", "float32", "--quiet", "--sink", "4",
             "--obs-window", "8"]
    assert main(["restore", *sweep, "--out", str(tmp_path / "restore"), "--budgets", "0.5"]) == 0
    chosen = json.loads((tmp_path / "restore" / "summary.json").read_text())["chosen_kv_heads"]
    assert len(chosen) == 2  # floor(0.8 x 0.5 x 6); a share of 0.5 would keep floor(1.5) = 1
    capsys.readouterr()
    assert main(["kv-eval", *sweep, "--scores", str(tmp_path / "restore"), "--out", str(tmp_path / "kv"),
                 "--budgets", "0.5", "--policies", "full,retrieval-snapkv", "--query-agnostic"]) == 0
    out = capsys.readouterr().out
    assert f"retrieval-snapkv: full share 0.8 (recorded by the restore run {tmp_path / 'restore'}" in out
    rows = json.loads((tmp_path / "kv" / "summary.json").read_text())["rows"]
    kept = next(r for r in rows if r["policy"] == "retrieval-snapkv")["full_kv_heads"]
    assert sorted(kept) == sorted(chosen)
