"""KVzip-style re-reading scores: equal to the model's own attention, the cache untouched, kv-eval's selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from conftest import build_tiny, tiny_kv_eval
from retrieval_heads.core.engine import new_cache
from retrieval_heads.errors import UserError
from retrieval_heads.kv.policy import eligible_layers
from retrieval_heads.kv.prefill import extend
from retrieval_heads.kv.reconstruct import CHUNK_SINK, reconstruction_scores
from retrieval_heads.kv.snapkv import pool_scores

CONTEXT, WINDOW, CHUNK = 40, 4, 16
INSTRUCTION = [7, 8, 9]


def _model(family: str):
    from retrieval_heads.compat.tiny import build_tiny as build_tiny_arch

    model = build_tiny_arch(family) if family == "gpt_oss" else build_tiny(family)
    model.set_attn_implementation("eager")
    return model


def _ids(length: int, seed: int = 0) -> list[int]:
    return torch.randint(10, 512, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def _expected(model, ids: list[int], softmax: str = "context") -> dict[int, torch.Tensor]:
    """Per global layer, (Hkv, CONTEXT): max over chunks' rows and group heads of eager attention weights; with
    ``softmax="chunk"`` each chunk's weights renormalised over the first ``CHUNK_SINK`` tokens, the chunk and the
    re-reading rows alone (the softmax of those logits), the other context tokens 0."""
    hkv = model.config.num_key_value_heads
    found = {}
    for start in range(0, CONTEXT, CHUNK):
        end = min(start + CHUNK, CONTEXT)
        full = ids + INSTRUCTION + ids[start:end]
        attentions = model(input_ids=torch.tensor([full]), output_attentions=True).attentions
        for layer in np.flatnonzero(eligible_layers(model.config)).tolist():
            w = attentions[layer][0, :, CONTEXT:, :].float()  # (H, rows, K)
            if softmax == "chunk":
                keys = list(range(min(CHUNK_SINK, start))) + list(range(start, end)) + list(range(CONTEXT, len(full)))
                part = torch.zeros_like(w)
                part[..., keys] = w[..., keys] / w[..., keys].sum(-1, keepdim=True)
                w = part
            best = w[..., :CONTEXT].reshape(hkv, -1, w.shape[1], CONTEXT).amax(dim=(1, 2))
            found[layer] = best if layer not in found else torch.maximum(found[layer], best)
    return found


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt_oss"])  # sliding layers skipped; learned sinks
def test_scores_are_the_models_own_attention_maxima_pooled(family):
    model = _model(family)
    ids = _ids(CONTEXT)
    cache = DynamicCache(config=model.config)
    extend(model, cache, ids, 0, chunk_size=CHUNK)
    observed = reconstruction_scores(model, cache, ids, INSTRUCTION, window=WINDOW, chunk_size=CHUNK)
    expected = _expected(model, ids)
    assert observed.total == CONTEXT and observed.window == WINDOW
    assert sorted(observed.scores) == sorted(expected)
    for layer, maxima in expected.items():
        torch.testing.assert_close(observed.scores[layer], pool_scores(maxima[:, :CONTEXT - WINDOW]),
                                   atol=1e-5, rtol=1e-4)
    raw = reconstruction_scores(model, cache, ids, INSTRUCTION, window=WINDOW, chunk_size=CHUNK, pool=1)
    for layer, maxima in expected.items():  # pool 1: the maxima themselves
        torch.testing.assert_close(raw.scores[layer], maxima[:, :CONTEXT - WINDOW], atol=1e-5, rtol=1e-4)
    assert model.config._attn_implementation == "eager"  # the wrapper is gone


@pytest.mark.parametrize("keep_past", [False, True])  # a plain DynamicCache, or the engine's preallocated one
def test_re_reading_leaves_the_cache_as_it_was(keep_past):
    model = _model("gemma3")  # sliding layers (window 16) evict while re-reading
    ids, question = _ids(CONTEXT), _ids(6, seed=1)

    def prefilled():
        cache = new_cache(model, keep_past=True) if keep_past else DynamicCache(config=model.config)
        extend(model, cache, ids, 0, chunk_size=CHUNK)
        return cache

    with torch.no_grad():
        untouched = model(input_ids=torch.tensor([question]), cache=prefilled(), use_cache=True).logits
        cache = prefilled()
        reconstruction_scores(model, cache, ids, INSTRUCTION, window=WINDOW, chunk_size=CHUNK)
        assert cache.get_seq_length() == CONTEXT
        after = model(input_ids=torch.tensor([question]), cache=cache, use_cache=True).logits
    assert torch.equal(untouched, after)


def test_re_reading_refuses_a_cache_it_cannot_put_back():
    from retrieval_heads.kv.compressed import CompressedCache

    model = _model("llama")
    with pytest.raises(ValueError, match="plain key/value cache, not one with CompressedLayer"):
        reconstruction_scores(model, CompressedCache(model.config), _ids(8), INSTRUCTION, window=2)


def test_kv_eval_selects_by_re_reading(tiny_tokenizer, tmp_path):
    from retrieval_heads.kv.evaluate import run_kv_eval

    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    options = dict(budgets=[0.3], policies=["full", "snapkv", "retrieval-snapkv"], sink=4, window=16, obs_window=8,
                   query_agnostic=True, progress=False)
    out = tmp_path / "out"
    summary = run_kv_eval(loaded, config, out, scores, selection="reread", **options)
    assert summary["selection"] == "reread"
    by = {r["policy"]: r for r in summary["rows"]}
    assert by["full"]["selection"] is None and by["snapkv"]["selection"] == "reread"
    for policy in ("snapkv", "retrieval-snapkv"):
        assert by[policy]["compressed_kv_fraction"] == pytest.approx(0.3, abs=0.5 / 150)
        assert by[policy]["samples"] == 2
    run = out / "query-agnostic" / "snapkv-0.3" / "L200"
    assert json.loads((run / "kv_plan.json").read_text())["selection"] == "reread"
    assert json.loads((run / "kv_timing.json").read_text())["selection_s"] > 0
    with pytest.raises(UserError, match="another KV plan"):  # the observation window's evidence is another plan
        run_kv_eval(loaded, config, out, scores, resume=True, **options)
    with pytest.raises(UserError, match="--selection"):
        run_kv_eval(loaded, config, tmp_path / "bad", scores, selection="kvzip", **options)
    # a directory run before the renames resumes, under the old name as under the new: nothing runs again
    for path in out.rglob("kv_plan.json"):
        path.write_text(json.dumps(as_written_before_the_renames(json.loads(path.read_text()))))
    assert json.loads((run / "kv_plan.json").read_text())["selection"] == "reconstruct"
    for name in ("reconstruct", "reread"):
        again = run_kv_eval(loaded, config, out, scores, resume=True, selection=name, **options)
        assert again["selection"] == "reread"
        assert [r["mean_score"] for r in again["rows"]] == [r["mean_score"] for r in summary["rows"]]
        assert [r["samples"] for r in again["rows"]] == [2, 2, 2]


def as_written_before_the_renames(plan: dict) -> dict:
    """A ``kv_plan.json`` as kv-eval wrote it before the selections and the ranking were renamed and the plan's one
    ``window`` split in two (and when the full plan recorded the library's sink 4 and window 64)."""
    old = {k: v for k, v in plan.items() if k not in ("recent_window", "obs_window")}
    if plan["policy"] == "full":
        old.update(sink=4, window=64)
    else:
        old["window"] = plan["obs_window"] if "obs_window" in plan else plan["recent_window"]
    if old.get("selection"):
        old["selection"] = {"window": "snapkv", "reread": "reconstruct"}[old["selection"]]
    if old.get("token_ranking") == "retrieval-heads":
        old["token_ranking"] = "retrieval"
    return old


def _grid_main():
    """``benchmarks/kv_selection_grid.py``'s ``main`` (the benchmarks are scripts, not a package)."""
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kv_selection_grid.py"
    return runpy.run_path(str(path), run_name="kv_selection_grid")["main"]


def test_grid_evidence_cache_is_never_read_for_other_inputs(tiny_tokenizer, tmp_path, monkeypatch):
    """Evidence kept for one set of needles is not reused for another: the shared directory ends up holding what
    a fresh directory holds for the second run."""
    from conftest import builtin_needles

    from retrieval_heads.compat.tiny import save_tiny

    model = save_tiny(build_tiny("llama"), tiny_tokenizer, tmp_path / "llama")
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({f"{l}-{h}": [0.5 if h < 4 else 0.0] for l in range(3) for h in range(8)}))
    (tmp_path / "a").mkdir()
    first = builtin_needles(tmp_path / "a", 1)
    second = tmp_path / "b.jsonl"
    second.write_text(json.dumps({"needle": "The lighthouse keeper hides the spare key under the blue stone.",
                                  "question": "Where is the spare key hidden?",
                                  "real_needle": "under the blue stone"}) + "\n")
    main = _grid_main()

    def grid(needles, evidence: str, out: str) -> None:
        monkeypatch.setattr("sys.argv", [
            "kv_selection_grid.py", "--model", str(model), "--scores", str(scores), "--needles", str(needles),
            "--length", "200", "--max-new-tokens", "2", "--sink", "4", "--obs-window", "8", "--threads", "1",
            "--variants", "snapkv:0.5", "--evidence", str(tmp_path / evidence), "--out", str(tmp_path / out)])
        main()

    grid(first, "shared", "first.jsonl")
    grid(second, "shared", "second.jsonl")
    grid(second, "fresh", "fresh.jsonl")
    shared = [torch.load(p) for p in sorted((tmp_path / "shared").iterdir())]
    (fresh_path,) = (tmp_path / "fresh").iterdir()
    fresh = torch.load(fresh_path)
    assert any(all(torch.equal(s["scores"][l], fresh["scores"][l]) for l in fresh["scores"]) for s in shared)
