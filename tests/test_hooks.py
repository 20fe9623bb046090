"""The registered attention function: probe top-1 equals eager argmax; the model is left as it was."""

from __future__ import annotations

import pytest
import torch
from conftest import FAMILIES, build_tiny

from retrieval_heads.compat.matrix import eager_reference, probe_positions
from retrieval_heads.core.hooks import AblationMode, AblationPhase, AttentionControl, attention_control, last_row_top1


def loaded_probe(model, ids: torch.Tensor, steps: int):
    """The probe's top-1 positions on the implementation the model was loaded with (SDPA for tiny models)."""
    return probe_positions(model, ids, steps, implementation=model.config._attn_implementation)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_probe_matches_eager_argmax(family):
    model = build_tiny(family)
    ids = torch.randint(0, 512, (1, 40), generator=torch.Generator().manual_seed(1))
    ref, ref_gen = eager_reference(model, ids, steps=4)
    got, gen = loaded_probe(model, ids, steps=4)
    assert gen == ref_gen
    assert [sorted(r) for r in got] == [sorted(r) for r in ref]
    mismatch = sum(int((r[l] != g[l]).sum()) for r, g in zip(ref, got) for l in r)
    assert mismatch == 0, f"{mismatch} top-1 positions differ\nref={ref}\ngot={got}"


@torch.no_grad()
def test_sliding_window_probe_never_points_outside_window():
    model = build_tiny("gemma3")  # layers 0 and 2 slide over 16 tokens
    ids = torch.randint(0, 512, (1, 60), generator=torch.Generator().manual_seed(2))
    got, _ = loaded_probe(model, ids, steps=3)
    for step in range(3):
        query_pos = ids.shape[1] - 1 + step
        for layer in (0, 2):
            assert (got[step][layer] > query_pos - 16).all(), got[step][layer]


@torch.no_grad()
def test_model_left_exactly_as_it_was():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    model = build_tiny("llama")
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(3))
    before = model(ids).logits
    keys = set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping)
    with pytest.raises(RuntimeError):
        with attention_control(model):
            assert model.config._attn_implementation.startswith("retrieval_heads_")
            raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert keys == (set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping))
    assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@torch.no_grad()
def test_no_ablation_leaves_logits_identical_to_sdpa(family):
    model = build_tiny(family)
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(4))
    plain = model(ids).logits
    control = AttentionControl(ablate=torch.zeros(3, 8, dtype=torch.bool), phase=AblationPhase.ALL)
    with attention_control(model, control):
        hooked = model(ids).logits
    max_diff = (hooked - plain).abs().max().item()
    assert torch.equal(hooked, plain), f"max_diff={max_diff:.2e}"


@pytest.mark.parametrize("mode", list(AblationMode))
@torch.no_grad()
def test_ablation_changes_only_when_heads_are_ablated(mode):
    model = build_tiny("llama")
    ids = torch.randint(0, 512, (1, 30), generator=torch.Generator().manual_seed(5))
    plain = model(ids).logits
    ablate = torch.zeros(3, 8, dtype=torch.bool)
    ablate[1, 2] = True
    with attention_control(model, AttentionControl(ablate=ablate, mode=mode, phase=AblationPhase.ALL)):
        hooked = model(ids).logits
    with attention_control(model, AttentionControl(ablate=ablate, mode=mode, phase=AblationPhase.DECODE)):
        prefill_only = model(ids).logits  # q_len > 1: decode-phase ablation must not apply
    assert not torch.allclose(hooked, plain)
    assert torch.equal(prefill_only, plain)


def test_uniform_ablation_attends_uniformly():
    torch.manual_seed(0)
    q = torch.zeros(1, 2, 1, 4)
    k = torch.randn(1, 1, 5, 4)
    mask = torch.tensor([True, True, False, True, True]).view(1, 1, 1, 5)
    # a zeroed query scores every visible key 0, so the first visible key wins the argmax
    assert last_row_top1(q, k, mask, 0.5).tolist() == [[-5, -5]]


def test_last_row_top1_handles_gqa_and_masks():
    q = torch.zeros(1, 4, 1, 2)
    q[0, 0, 0, 0] = q[0, 1, 0, 1] = q[0, 2, 0, 0] = q[0, 3, 0, 1] = 1.0
    k = torch.zeros(1, 2, 3, 2)
    k[0, 0, 1, 0] = 5  # KV head 0: key 1 matches dim 0
    k[0, 0, 2, 1] = 5  # KV head 0: key 2 matches dim 1
    k[0, 1, 0, 0] = 5  # KV head 1: key 0 matches dim 0
    k[0, 1, 1, 1] = 5  # KV head 1: key 1 matches dim 1
    got = last_row_top1(q, k, None, 1.0) + 3
    assert got.tolist() == [[1, 2, 0, 1]]
    float_mask = torch.zeros(1, 1, 1, 3)
    float_mask[..., 1] = float("-inf")
    assert (last_row_top1(q, k, float_mask, 1.0) + 3)[0, 0].item() != 1


def test_flex_attention_is_refused_before_any_hook_is_installed():
    """flex_attention hands its kernel a BlockMask, which neither the probe nor the head-wise caches read."""
    from transformers import AttentionInterface

    from retrieval_heads.errors import UserError
    from retrieval_heads.kv.attention import HeadwiseAttention

    model = build_tiny("llama")
    model.set_attn_implementation("flex_attention")
    names = set(AttentionInterface._global_mapping)
    for install in (attention_control, HeadwiseAttention):
        with pytest.raises(UserError, match="flex_attention"):
            with install(model):
                pass
        assert model.config._attn_implementation == "flex_attention"
    assert set(AttentionInterface._global_mapping) == names


@pytest.mark.parametrize("command", ["detect", "lookup", "kv-eval", "restore"])
def test_cli_refuses_flex_attention_in_one_line(command, tiny_tokenizer, tmp_path, capsys):
    import json

    from retrieval_heads.cli import main
    from retrieval_heads.compat.tiny import save_tiny

    directory = save_tiny(build_tiny("llama"), tiny_tokenizer, tmp_path / "llama")
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({f"{l}-{h}": [0.5] for l in range(3) for h in range(8)}))
    extra = ["--scores", str(scores)] if command == "kv-eval" else []
    extra += [] if command == "lookup" else ["--max-new-tokens", "3"]  # lookup generates nothing
    capsys.readouterr()
    code = main([command, "--model", str(directory), "--out", str(tmp_path / "run"), "--lengths", "200", "--depths",
                 "50", "--quiet", "--attn-implementation", "flex_attention", *extra])
    lines = [l for l in capsys.readouterr().err.splitlines() if l.strip() and "it/s]" not in l]
    assert code == 2 and len(lines) == 1 and "flex_attention" in lines[0], lines
    assert not list((tmp_path / "run").rglob("*.jsonl"))
