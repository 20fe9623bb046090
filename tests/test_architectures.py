"""Architecture coverage: one of each kind through the compatibility checks and the CLI, plus the engine
and run-machinery fixes that came with it (each test fails on the code before its fix)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import bypass_model
from conftest import build_tiny

from retrieval_heads.compat.matrix import check_architecture, logit_change, scale_attention_logits
from retrieval_heads.compat.tiny import build_tiny as build_tiny_arch
from retrieval_heads.compat.tiny import save_tiny
from retrieval_heads.core.engine import Engine, new_cache, stop_condition
from retrieval_heads.core.hooks import AblationPhase, AttentionControl, attention_control
from retrieval_heads.errors import UserError

REPRESENTATIVE = {  # one of each kind
    "llama": "dense", "qwen3_moe": "moe", "gemma2": "sliding", "gpt_oss": "sinks", "qwen3_next": "hybrid",
    "deepseek_v3": "mla", "gemma3": "multimodal",
}


@pytest.mark.parametrize("arch", sorted(REPRESENTATIVE))
def test_representative_architectures_pass_every_check(arch, tiny_tokenizer):
    row = check_architecture(arch, tiny_tokenizer)
    assert (row.status, row.kind) == ("ok", REPRESENTATIVE[arch]), row.note


# Families that computed attention inside their own modules in some release; each moves onto the interface when
# transformers ports it (Falcon in 5.25). Which side one falls on is measured here, not listed.
MOVING = ["falcon", "bloom", "mpt", "xglm"]


def _one_line_refusal(capsys) -> list[str]:
    return [l for l in capsys.readouterr().err.splitlines() if l.strip() and "it/s]" not in l]  # weight-loading bars


@pytest.mark.parametrize("arch", MOVING)
def test_an_architecture_passes_every_check_or_is_refused_in_one_line(arch, tiny_tokenizer, tmp_path, capsys):
    """The contract for any architecture: the matrix checks pass and the CLI detects, or both refuse it cleanly."""
    row = check_architecture(arch, tiny_tokenizer)
    assert row.status in ("ok", "refused"), row.note
    directory = save_tiny(build_tiny_arch(arch), tiny_tokenizer, tmp_path / arch)
    capsys.readouterr()
    code = _detect_cli(directory, tmp_path / "run")
    if row.status == "ok":  # probe == eager argmax everywhere, logits unchanged, detection and masked NIAH ran
        assert "logit change 0.0e+00" in row.note and code == 0, row.note
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["samples"] == 8
    else:
        assert "attention interface" in row.note or "no softmax attention" in row.note, row.note
        lines = _one_line_refusal(capsys)
        assert code == 2 and len(lines) == 1 and row.note in lines[0], lines
        assert not (tmp_path / "run" / "samples.jsonl").exists()


def test_attention_outside_the_interface_is_refused(tiny_tokenizer):
    row = check_architecture(bypass_model.register(), tiny_tokenizer)
    assert row.status == "refused" and "attention interface" in row.note, row.note


@pytest.mark.parametrize("arch", ["gemma2", "gpt_oss"])
def test_probe_leaves_soft_capped_and_sink_logits_unchanged(arch, monkeypatch):
    """Observing must not change the model: the old fallback (Llama's eager, no softcap or sinks) does."""
    import retrieval_heads.core.hooks as hooks
    from transformers.models.llama.modeling_llama import eager_attention_forward

    model = build_tiny_arch(arch)
    scale_attention_logits(model)
    assert logit_change(model) == 0.0
    monkeypatch.setattr(hooks, "model_kernel", lambda module, name: eager_attention_forward)
    assert logit_change(model) > 1e-3


def _detect_cli(directory, out, *extra) -> int:
    from retrieval_heads.cli import main

    return main(["detect", "--model", str(directory), "--out", str(out), "--lengths", "300", "--depths", "50",
                 "--max-new-tokens", "3", "--chunk-size", "64", "--quiet", "--dtype", "float32", *extra])


def test_cli_detects_on_a_saved_hybrid_and_marks_its_linear_layers(tiny_tokenizer, tmp_path):
    model = build_tiny_arch("qwen3_next")
    kinds = model.config.layer_types
    directory = save_tiny(model, tiny_tokenizer, tmp_path / "qwen3-next")
    assert _detect_cli(directory, tmp_path / "run") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    attention = [i for i, k in enumerate(kinds) if k == "full_attention"]
    assert summary["attention_layers"] == attention and len(attention) < len(kinds)
    assert summary["timing"]["prefix_reuse"] is False and "recurrent state" in summary["timing"]["prefix_reuse_off"]
    paper = json.loads((tmp_path / "run" / "head_scores.json").read_text())
    assert {int(k.split("-")[0]) for k in paper} == set(attention)
    from retrieval_heads.analysis.formats import load_scores

    scores = load_scores(tmp_path / "run")
    assert scores.shape == (len(kinds), summary["num_heads"])
    assert scores.attention_layers == attention
    assert all(layer in attention for layer, _, _ in scores.top(100))


@pytest.mark.parametrize("arch", ["gpt_oss", "deepseek_v3", "gemma3"])
def test_cli_detects_on_saved_sinks_latent_and_multimodal_checkpoints(arch, tiny_tokenizer, tmp_path):
    directory = save_tiny(build_tiny_arch(arch), tiny_tokenizer, tmp_path / arch)
    assert _detect_cli(directory, tmp_path / "run") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples"] == 8 and np.asarray(summary["kv_head_scores"]["max"]).shape[0] == summary["num_layers"]


def test_cli_refuses_attention_outside_the_interface_in_one_line(tiny_tokenizer, tmp_path, capsys):
    directory = save_tiny(build_tiny_arch(bypass_model.register()), tiny_tokenizer, tmp_path / "bypass")
    capsys.readouterr()
    assert _detect_cli(directory, tmp_path / "run") == 2
    lines = _one_line_refusal(capsys)
    assert len(lines) == 1 and "attention interface" in lines[0], lines
    assert not (tmp_path / "run" / "samples.jsonl").exists()


def test_masking_a_head_of_a_linear_attention_layer_is_refused():
    from retrieval_heads.masking.heads import plan_masking

    applicable = np.array([[False] * 4, [True] * 4])
    with pytest.raises(UserError, match="no softmax attention"):
        plan_masking(num_layers=2, num_heads=4, mask_heads="0-1", applicable=applicable)
    assert plan_masking(num_layers=2, num_heads=4, mask_heads="1-1", applicable=applicable).heads == ((1, 1),)


# ---- engine and run machinery ------------------------------------------------------------------------

@torch.no_grad()
def test_one_token_last_prefill_chunk_is_not_a_decode_step():
    """A prompt whose last prefill chunk has one token must not get decode-phase ablation."""
    model = build_tiny("llama")
    ids = torch.randint(0, 512, (65,), generator=torch.Generator().manual_seed(0)).tolist()  # chunks 64 + 1
    ablate = torch.ones(3, 8, dtype=torch.bool)
    caches = []
    for heads in (None, ablate):
        control = AttentionControl(ablate=heads, phase=AblationPhase.DECODE)
        with attention_control(model, control):
            engine = Engine(model, control, lambda t: False, chunk_size=64, share_prefix=False)
            caches.append(engine.prefill(ids))
    for plain, masked in zip(caches[0].layers, caches[1].layers):
        assert torch.equal(plain.keys, masked.keys)


@torch.no_grad()
def test_headwise_cache_does_not_evict_on_a_one_token_prefill_chunk():
    from retrieval_heads.kv.attention import HeadwiseAttention
    from retrieval_heads.kv.cache import HeadwiseCache

    model = build_tiny("llama")
    full = np.zeros((3, 2), dtype=bool)
    full[:, 0] = True
    ids = torch.randint(0, 512, (65,), generator=torch.Generator().manual_seed(1)).tolist()
    with HeadwiseAttention(model):
        control = AttentionControl()
        cache = HeadwiseCache(model.config, full, sink=4, window=8, prefill="full")
        engine = Engine(model, control, lambda t: False, chunk_size=64, cache_factory=lambda: cache)
        engine.prefill(ids)
        assert cache.stream_lengths()[0] == 65  # prefill="full": nothing evicted before decoding
        engine.decode(cache, ids + [5], 2, probe=False)
        assert cache.stream_lengths()[0] == 4 + 8


@torch.no_grad()
def test_finished_samples_of_a_batch_are_handed_over_before_the_batch_ends(tiny_tokenizer):
    model = build_tiny("llama")
    prompts = [torch.randint(0, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (30, 40)]
    calls = {"n": 0}

    def stop(token: int) -> bool:  # the first sample stops at its first token, the other never
        calls["n"] += 1
        return calls["n"] == 1

    def boom(module, args, kwargs):
        if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[1] == 1 and calls["n"] >= 2:
            raise KeyboardInterrupt

    done = []
    with attention_control(model) as control:
        engine = Engine(model, control, stop, chunk_size=64)
        handle = model.register_forward_pre_hook(boom, with_kwargs=True)
        try:
            with pytest.raises(KeyboardInterrupt):
                engine.generate_batch(prompts, 5, on_done=lambda i, g: done.append((i, g.generated_ids)))
        finally:
            handle.remove()
    assert [i for i, _ in done] == [0] and len(done[0][1]) == 1


def test_batched_decoding_of_latent_attention_matches_one_by_one(tiny_tokenizer):
    """Keys and values of different head sizes (MLA) in the preallocated left-padded batch."""
    model = build_tiny_arch("deepseek_v3")
    prompts = [torch.randint(3, 512, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (30, 41)]
    with attention_control(model) as control:
        engine = Engine(model, control, stop_condition(tiny_tokenizer, model), chunk_size=16)
        assert engine.can_batch
        batched = engine.generate_batch(prompts, 4)
        single = [engine.generate(p, 4) for p in prompts]
    assert [g.generated_ids for g in batched] == [g.generated_ids for g in single]


def test_recurrent_caches_turn_prefix_reuse_and_batching_off():
    model = build_tiny_arch("qwen3_next")
    engine = Engine(model, AttentionControl(), lambda t: False)
    assert not engine.share_prefix and not engine.can_batch and "recurrent" in engine.reuse_off
    assert new_cache(model, keep_past=False) is not None


def test_merge_of_a_shard_without_summary_is_a_user_error(tmp_path):
    from retrieval_heads import merge_runs

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"identity": {}, "config": {}}))
        (tmp_path / name / "samples.jsonl").write_text("")
    with pytest.raises(UserError, match="summary.json"):
        merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")


def test_resume_with_another_grid_records_both_grids(tiny_tokenizer, tmp_path):
    from retrieval_heads.detection.detect import run_detection
    from retrieval_heads.models import LoadedModel
    from retrieval_heads.sweep.grid import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    base = dict(model="tiny-llama", depths=[50], max_new_tokens=2, chunk_size=64, shard=(0, 4))
    run_detection(loaded, SweepConfig(lengths=[200], **base), tmp_path, progress=False)
    result = run_detection(loaded, SweepConfig(lengths=[300], **base), tmp_path, resume=True, progress=False)
    grids = json.loads((tmp_path / "config.json").read_text())["grids"]
    assert [g["lengths"] for g in grids] == [[200], [300]]
    assert result.summary["grids"] == grids and result.summary["samples"] == 4


def test_niah_on_an_empty_shard_prints_instead_of_crashing(tiny_tokenizer, tmp_path, capsys):
    model = build_tiny("llama")
    directory = save_tiny(model, tiny_tokenizer, tmp_path / "llama")
    from retrieval_heads.cli import main

    code = main(["niah", "--model", str(directory), "--out", str(tmp_path / "n"), "--lengths", "200", "--depths", "50",
                 "--shard", "8/9", "--quiet", "--max-new-tokens", "2"])
    assert code == 0 and "no samples" in capsys.readouterr().out


@pytest.mark.parametrize("arch", ["qwen3_next", "gpt_oss", "deepseek_v3"])
def test_cli_lookup_on_saved_hybrid_sinks_and_latent_checkpoints(arch, tiny_tokenizer, tmp_path):
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.cli import main

    model = build_tiny_arch(arch)
    kinds = getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers
    directory = save_tiny(model, tiny_tokenizer, tmp_path / arch)
    code = main(["lookup", "--model", str(directory), "--out", str(tmp_path / "run"), "--lengths", "300",
                 "--depths", "50", "--chunk-size", "64", "--quiet", "--dtype", "float32"])
    assert code == 0
    scores = load_scores(tmp_path / "run")
    global_layers = [i for i, k in enumerate(kinds) if k == "full_attention"]
    assert scores.num_samples == 8 and scores.mean[global_layers].sum() > 0
    assert scores.mean[[i for i in range(len(kinds)) if i not in global_layers]].sum() == 0


@pytest.mark.parametrize("arch", ["gpt_oss", "deepseek_v3", "qwen3_next"])
def test_cli_restore_on_saved_sinks_and_latent_checkpoints_refuses_hybrids(arch, tiny_tokenizer, tmp_path, capsys):
    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.cli import main

    model = build_tiny_arch(arch)
    kinds = getattr(model.config, "layer_types", None) or ["full_attention"] * model.config.num_hidden_layers
    directory = save_tiny(model, tiny_tokenizer, tmp_path / arch)
    code = main(["restore", "--model", str(directory), "--out", str(tmp_path / "run"), "--lengths", "300",
                 "--depths", "50", "--chunk-size", "64", "--quiet", "--dtype", "float32", "--budget", "0.5",
                 "--sink", "4", "--obs-window", "8", "--max-new-tokens", "3", "--steps", "1"])
    if arch == "qwen3_next":
        assert code == 2 and "hybrid" in capsys.readouterr().err
        return
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    chosen = summary["chosen_kv_heads"]
    assert chosen and all(kinds[int(name.split("-")[0])] == "full_attention" for name in chosen)
    kv = load_scores(tmp_path / "run").kv_view(model.config.num_key_value_heads)
    assert (kv > 0).sum() == len(chosen) and kv.max() == 1.0


@pytest.mark.parametrize("arch", ["gpt_oss", "deepseek_v3"])
def test_cli_kv_eval_re_reading_selection_on_saved_sinks_refuses_latent_checkpoints(arch, tiny_tokenizer, tmp_path,
                                                                                       capsys):
    from retrieval_heads.analysis.formats import save_scores
    from retrieval_heads.cli import main
    from retrieval_heads.core.head_scores import HeadScores

    model = build_tiny_arch(arch)
    text = model.config
    directory = save_tiny(model, tiny_tokenizer, tmp_path / arch)
    scores = HeadScores(np.random.default_rng(0).random((2, text.num_hidden_layers, text.num_attention_heads)),
                        meta={"num_kv_heads": text.num_key_value_heads})
    save_scores(scores, tmp_path / "scores.json")
    out = tmp_path / "kv"
    code = main(["kv-eval", "--model", str(directory), "--scores", str(tmp_path / "scores.json"), "--out", str(out),
                 "--lengths", "300", "--depths", "50", "--chunk-size", "64", "--quiet", "--dtype", "float32",
                 "--budgets", "0.3", "--policies", "full,snapkv,retrieval-snapkv", "--sink", "4", "--obs-window", "8",
                 "--max-new-tokens", "3", "--query-agnostic", "--selection", "reread",
                 "--token-ranking", "retrieval-heads", "--own-share", "0.3"])
    if arch == "deepseek_v3":  # one latent per layer, shared by every head: no KV head keeps tokens of its own
        assert code == 2 and "multi-head latent attention" in capsys.readouterr().err
        return
    assert code == 0, capsys.readouterr().err
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [(r["policy"], r["selection"]) for r in rows] == [
        ("full", None), ("snapkv", "reread"), ("retrieval-snapkv", "reread")]
    assert all(r["samples"] == 8 for r in rows)
    assert [r["own_share"] for r in rows] == [None, 0.3, 0.3]
    assert 0.29 < rows[1]["compressed_kv_fraction"] < 0.5  # 0.3 of the global layers; gpt-oss's sliding ones as they are


def test_kolibri_sparse_indexed_attention_passes_every_check(tiny_tokenizer):
    """Kolibri 1.1 (transformers 5.25+): its shrunk layer-index lists must point inside the tiny model."""
    from retrieval_heads.compat.tiny import causal_lm_architectures

    if "kolibri1_1" not in causal_lm_architectures():
        pytest.skip("this transformers has no Kolibri 1.1")
    row = check_architecture("kolibri1_1", tiny_tokenizer)
    assert row.status == "ok", row.note
