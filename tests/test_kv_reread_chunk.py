"""KVzip's own scores in the re-read selection: each re-reading row's softmax over the chunk it re-reads."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import DynamicCache

from conftest import tiny_kv_eval
from retrieval_heads.errors import UserError
from retrieval_heads.kv.frontier import method_name
from retrieval_heads.kv.prefill import extend
from retrieval_heads.kv.reconstruct import CHUNK_SINK, CHUNK_SIZE, chunk_softmax, reconstruction_scores
from test_kv_reconstruct import CHUNK, CONTEXT, INSTRUCTION, WINDOW, _expected, _ids, _model


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_chunk_scores_are_the_restricted_softmax_maxima(family):
    model = _model(family)
    ids = _ids(CONTEXT)
    cache = DynamicCache(config=model.config)
    extend(model, cache, ids, 0, chunk_size=CHUNK)
    observed = reconstruction_scores(model, cache, ids, INSTRUCTION, window=WINDOW, chunk_size=CHUNK, pool=1,
                                     softmax="chunk")
    whole = reconstruction_scores(model, cache, ids, INSTRUCTION, window=WINDOW, chunk_size=CHUNK, pool=1)
    expected = _expected(model, ids, softmax="chunk")
    assert sorted(observed.scores) == sorted(expected)
    for layer, maxima in expected.items():
        torch.testing.assert_close(observed.scores[layer], maxima[:, :CONTEXT - WINDOW], atol=1e-5, rtol=1e-4)
        # renormalised over fewer keys, no weight falls: the chunk softmax is never below the context's
        assert bool((observed.scores[layer] >= whole.scores[layer] - 1e-6).all())
        assert not torch.allclose(observed.scores[layer], whole.scores[layer])


def test_chunk_softmax_keeps_sink_chunk_and_rows():
    weights = torch.full((1, 2, 12), 1 / 12)  # 8 context tokens, 4 re-reading rows' keys
    out = chunk_softmax(weights, total=8, start=6, end=8)
    assert CHUNK_SINK == 4  # KVzip's n_sink
    kept = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 2))
    assert torch.all(out[..., [4, 5]] == 0) and torch.allclose(out[..., kept], torch.full((1, 2, 10), 0.1))
    first = chunk_softmax(weights, total=8, start=0, end=4)  # the first chunk holds the sink itself
    assert torch.all(first[..., 4:8] == 0) and torch.allclose(first[..., :4], torch.full((1, 2, 4), 0.125))


def test_unknown_softmax_is_refused():
    model = _model("llama")
    with pytest.raises(ValueError, match="softmax must be one of"):
        reconstruction_scores(model, DynamicCache(config=model.config), _ids(8), INSTRUCTION, window=2, softmax="row")


def test_kv_eval_selects_by_kvzip_scores(tiny_tokenizer, tmp_path, monkeypatch):
    from retrieval_heads.kv import prefill
    from retrieval_heads.kv.evaluate import run_kv_eval

    calls = []

    def spy(*args, **kwargs):
        calls.append({k: kwargs[k] for k in ("chunk_size", "pool", "softmax")})
        return reconstruction_scores(*args, **kwargs)

    monkeypatch.setattr(prefill, "reconstruction_scores", spy)
    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    options = dict(budgets=[0.3], policies=["full", "snapkv", "adaptive"], sink=4, window=16, obs_window=8,
                   query_agnostic=True, progress=False)
    out = tmp_path / "out"
    summary = run_kv_eval(loaded, config, out, scores, selection="reread-chunk", **options)
    assert calls and all(c == {"chunk_size": CHUNK_SIZE, "pool": 1, "softmax": "chunk"} for c in calls)
    by = {r["policy"]: r for r in summary["rows"]}
    assert by["snapkv"]["selection"] == "reread-chunk" and method_name(by["adaptive"]) == "adaptive (reread-chunk)"
    for policy in ("snapkv", "adaptive"):
        assert by[policy]["compressed_kv_fraction"] == pytest.approx(0.3, abs=0.5 / 150)
        assert by[policy]["samples"] == 2
    run = out / "query-agnostic" / "snapkv-0.3" / "L200"
    assert json.loads((run / "kv_plan.json").read_text())["selection"] == "reread-chunk"
    with pytest.raises(UserError, match="another KV plan"):  # the other scores are another plan
        run_kv_eval(loaded, config, out, scores, resume=True, selection="reread", **options)
    calls.clear()
    run_kv_eval(loaded, config, tmp_path / "reread", scores, selection="reread", **options)
    assert calls and all(c["softmax"] == "context" and c["pool"] > 1 for c in calls)


def test_frontier_draws_kvzip_scores_apart_from_ours():
    from retrieval_heads.analysis.plots.kv import _task_style

    ours, kvzips = _task_style("adaptive (reread)", []), _task_style("adaptive (reread-chunk)", [])
    assert ours["color"] == kvzips["color"]  # the same policy
    assert (ours["linestyle"], ours["markerfacecolor"]) != (kvzips["linestyle"], kvzips["markerfacecolor"])
