"""Compressed (ragged) KV cache against DynamicCache and a per-head masked reference; SnapKV capture and
selection; the query-agnostic split of a prompt; kv-eval with token-level policies in both settings."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import builtin_needles, build_tiny, masked_attention
from transformers import AttentionInterface, DynamicCache
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from retrieval_heads.errors import UserError
from retrieval_heads.kv.attention import HeadwiseAttention
from retrieval_heads.kv.compressed import CompressedCache
from retrieval_heads.kv.policy import eligible_layers
from retrieval_heads.kv.snapkv import ObservationWindow, capture_window, pool_scores, select_positions

PER_TOKEN = 2 * 8 * 4  # keys + values of one KV head, head_dim 8, float32
INDEX = 8  # one int64 index entry


def ids_of(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def prefilled(model, ids: torch.Tensor, chunk: int = 16) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    for start in range(0, ids.shape[1], chunk):
        model(input_ids=ids[:, start:start + chunk], cache=cache, use_cache=True)
    return cache


@torch.no_grad()
def question_then_decode(model, cache, question: torch.Tensor, steps: int) -> torch.Tensor:
    """One multi-token forward of ``question`` into ``cache``, then greedy steps; (q + steps, vocab) logits."""
    logits = [model(input_ids=question, cache=cache, use_cache=True).logits[0]]
    token = logits[-1][-1].argmax().view(1, 1)
    for _ in range(steps):
        logits.append(model(input_ids=token, cache=cache, use_cache=True).logits[0])
        token = logits[-1][-1].argmax().view(1, 1)
    return torch.cat(logits)


def keep_all(model, total: int) -> dict[int, list[torch.Tensor]]:
    return {int(l): [torch.arange(total)] * 2 for l in np.flatnonzero(eligible_layers(model.config))}


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_keeping_everything_equals_dynamic_cache_exactly(family):
    """Prefill, question prefill (a multi-token forward after compression) and decode steps: bit-identical."""
    model = build_tiny(family)
    context, question = ids_of(40), ids_of(9, seed=1)
    reference = question_then_decode(model, prefilled(model, context), question, steps=4)
    with HeadwiseAttention(model):
        copied = CompressedCache.from_prefilled(model.config, prefilled(model, context), keep_all(model, 40))
        got = question_then_decode(model, copied, question, steps=4)
        in_place = CompressedCache(model.config)
        with torch.no_grad():
            for start in range(0, 40, 16):
                model(input_ids=context[:, start:start + 16], cache=in_place, use_cache=True)
        in_place.compress(keep_all(model, 40))
        again = question_then_decode(model, in_place, question, steps=4)
    for logits in (got, again):
        assert torch.equal(logits, reference), f"max_diff={(logits - reference).abs().max().item():.2e}"
    assert copied.kv_bytes() == copied.dense_kv_bytes()


def ragged_keep(family: str) -> dict[int, list[torch.Tensor]]:
    """Different counts per KV head, equal counts with different positions, one head keeping everything."""
    g = torch.Generator().manual_seed(3)

    def some(n):
        return torch.randperm(40, generator=g)[:n].sort().values

    plans = {0: [some(12), some(25)], 1: [torch.arange(40), some(7)], 2: [some(5), some(5)]}
    return {1: plans[1]} if family == "gemma3" else plans


def masked_reference(keep: dict[int, list[torch.Tensor]], compressed_at: int):
    """Dense-cache reference: KV head h of layer l sees its kept positions and every position >= compressed_at."""

    def visibility(module, q_pos, k_len, h):
        n_rep = module.num_key_value_groups
        causal = torch.arange(k_len)[None, :] <= q_pos  # (Q, K)
        visible = causal.expand(h, q_pos.shape[0], k_len).clone()
        for kv_head, positions in enumerate(keep.get(module.layer_idx, [])):
            allowed = torch.zeros(k_len, dtype=torch.bool)
            allowed[positions[positions < k_len]] = True
            allowed[compressed_at:] = True
            prefilling = q_pos < compressed_at  # the context's own prefill sees everything
            visible[kv_head * n_rep:(kv_head + 1) * n_rep] &= allowed | prefilling
        return visible

    return masked_attention(visibility)


@pytest.mark.parametrize("family", ["llama", "gemma3", "llama-eager"])
def test_ragged_cache_matches_per_head_masked_reference(family):
    model = build_tiny(family.removesuffix("-eager"))
    if family.endswith("-eager"):
        model.set_attn_implementation("eager")  # additive float masks, the eager kernel per group
    context, question = ids_of(40, seed=5), ids_of(6, seed=6)
    keep = ragged_keep(family.removesuffix("-eager"))
    with HeadwiseAttention(model):
        cache = CompressedCache.from_prefilled(model.config, prefilled(model, context), keep)
        got = question_then_decode(model, cache, question, steps=4)
    full = question_then_decode(model, prefilled(model, context), question, steps=4)
    original = model.config._attn_implementation
    AttentionInterface.register("kv_ragged_reference", masked_reference(keep, 40))
    AttentionMaskInterface.register("kv_ragged_reference", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    try:
        model.set_attn_implementation("kv_ragged_reference")
        reference = question_then_decode(model, prefilled(model, context), question, steps=4)
    finally:
        model.set_attn_implementation(original)
        AttentionInterface._global_mapping.pop("kv_ragged_reference", None)
        AttentionMaskInterface._global_mapping.pop("kv_ragged_reference", None)
    max_diff = (got - reference).abs().max().item()
    assert torch.allclose(got, reference, atol=1e-5), f"max_diff={max_diff:.2e}"
    assert (got - full).abs().max().item() > 1e-3  # the reference test is not a no-op


def test_compressed_cache_stores_exactly_the_chosen_positions():
    model = build_tiny("llama")
    keep = {0: [torch.tensor([0, 3, 9, 39]), torch.arange(40)], 1: [torch.tensor([5]), torch.tensor([1, 2])],
            2: [torch.arange(10), torch.arange(10) + 20]}
    source = prefilled(model, ids_of(40))
    before = [layer.keys.clone() for layer in source.layers]
    cache = CompressedCache.from_prefilled(model.config, source, keep)
    kept = sum(p.numel() for heads in keep.values() for p in heads)
    stored = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in layer.stored())
    assert cache.kv_bytes() == kept * PER_TOKEN == stored
    assert cache.kept_counts() == {0: [4, 40], 1: [1, 2], 2: [10, 10]}
    # held at once: the source (alive beside its copy), the copy and its indexes (kept positions, heads)
    indexes = (kept + 3 * 2) * INDEX
    assert cache.peak_kv_bytes == 3 * 2 * 40 * PER_TOKEN + kept * PER_TOKEN + indexes
    for index, heads in keep.items():
        layer = cache.layers[index]
        for h, positions in enumerate(heads):
            assert layer.positions(h).tolist() == positions.tolist()
            group = next(g for g in layer.groups if h in g.heads.tolist())
            row = g_row(group, h)
            assert torch.equal(group.keys[0, row], source.layers[index].keys[0, h, positions])
            assert torch.equal(group.values[0, row], source.layers[index].values[0, h, positions])
    assert all(torch.equal(b, layer.keys) for b, layer in zip(before, source.layers))  # the source is untouched
    with HeadwiseAttention(model):
        cache.decoding = True
        question_then_decode(model, cache, ids_of(1, seed=2), steps=2)
    assert cache.get_seq_length() == 43 and cache.decode_steps == 3
    assert cache.layers[1].positions(0).tolist() == [5, 40, 41, 42]  # every new token, to every head
    assert cache.kv_bytes() == (kept + 3 * 3 * 2) * PER_TOKEN
    assert cache.dense_kv_bytes() == 3 * 2 * 43 * PER_TOKEN
    assert cache.peak_kv_bytes == 3 * 2 * 40 * PER_TOKEN + cache.kv_bytes() + indexes


def bytes_alive(*caches) -> int:
    """nbytes of every distinct storage reachable from the caches' layers: their tensors (a view stands for
    the buffer it looks into) and those of the groups they list (compressed layers)."""
    storages = {}

    def visit(obj):
        for value in vars(obj).values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, torch.Tensor):
                    storages[item.untyped_storage().data_ptr()] = item.untyped_storage().nbytes()
                elif hasattr(item, "__dataclass_fields__"):
                    visit(item)

    for cache in caches:
        for layer in cache.layers:
            visit(layer)
    return sum(storages.values())


def test_peak_bytes_are_every_tensor_held_at_once():
    """The peak of a compressed copy of the shared prefill is what both caches hold at once: the prefill's
    preallocated buffers (not the views of their filled part), the copy's keys and values and its index
    tensors, at whichever moment after a forward pass holds the most."""
    from retrieval_heads.core.engine import Engine
    from retrieval_heads.core.hooks import AttentionControl
    from retrieval_heads.kv.prefill import cache_to_compress

    model = build_tiny("llama")
    engine = Engine(model, AttentionControl(), lambda token: False, chunk_size=16)
    source = cache_to_compress(engine, ids_of(40)[0].tolist(), room=24)  # buffers of 64 positions, 40 filled
    keep = {0: [torch.tensor([0, 3, 9, 39]), torch.arange(40)], 1: [torch.tensor([5]), torch.tensor([1, 2])],
            2: [torch.arange(10), torch.arange(10) + 20]}
    cache = CompressedCache.from_prefilled(model.config, source, keep)
    alive = [bytes_alive(source, cache)]
    with HeadwiseAttention(model), torch.no_grad():
        cache.decoding = False
        model(input_ids=ids_of(3, seed=2), cache=cache, use_cache=True)
        alive.append(bytes_alive(source, cache))
        cache.decoding = True
        for step in range(2):
            model(input_ids=ids_of(1, seed=3 + step), cache=cache, use_cache=True)
            alive.append(bytes_alive(source, cache))
    assert source.layers[0].keys.shape[-2] == 40 and bytes_alive(source) == 3 * 2 * 64 * PER_TOKEN
    assert cache.peak_kv_bytes == max(alive), (cache.peak_kv_bytes, alive)


def g_row(group, head: int) -> int:
    return group.heads.tolist().index(head)


def test_compressed_layer_refuses_bad_positions():
    model = build_tiny("llama")
    source = prefilled(model, ids_of(20))
    for bad in ([torch.tensor([3, 1]), torch.arange(20)], [torch.tensor([0, 20]), torch.arange(20)], [torch.arange(20)]):
        with pytest.raises(ValueError):
            CompressedCache.from_prefilled(model.config, source, {0: bad})


# ---- SnapKV ------------------------------------------------------------------------------------------


def planted_inputs(keys: int = 60, window: int = 6, planted: int = 23):
    """Query heads 2-3 (KV head 1) attend, in the window rows, strongly to key ``planted``."""
    g = torch.Generator().manual_seed(0)
    query = torch.randn(1, 4, keys, 8, generator=g) * 0.1
    key = torch.randn(1, 2, keys, 8, generator=g) * 0.1
    direction = torch.randn(8, generator=g)
    query[0, 2:4, -window:] += direction
    key[0, 1, planted] = direction * 4
    return query, key


def test_snapkv_selection_finds_a_planted_key_and_accumulates_chunks():
    window, planted = 6, 23
    query, key = planted_inputs(window=window, planted=planted)
    module = SimpleNamespace(layer_idx=0)
    whole, chunked = ObservationWindow(window), ObservationWindow(window)
    whole.arm(60)
    whole.observe(module, query, key, None, None, {})
    chunked.arm(60)
    for start, end in ((0, 32), (32, 57), (57, 60)):  # the window [54, 60) spans two chunks
        chunked.observe(module, query[:, :, start:end], key[:, :, :end], None, None, {})
    assert chunked.rows == {0: window}
    assert torch.allclose(whole.sums[0], chunked.sums[0], atol=1e-6)
    # each window row's weights sum to one over the keys it sees
    assert torch.allclose(whole.sums[0].sum(-1), torch.full((1, 4), float(window)), atol=1e-4)
    observed = chunked.take(num_kv_heads=2)
    scores = observed.scores[0]
    assert scores.shape == (2, 60 - window) and int(scores[1].argmax()) in range(planted - 3, planted + 4)
    kept = select_positions(scores[1], 60, 15, sink=2, window=window)  # 7 top tokens: the pooled plateau
    assert kept[2:9].tolist() == list(range(planted - 3, planted + 4)) and len(kept) == 15
    assert kept[:2].tolist() == [0, 1] and kept[-window:].tolist() == list(range(54, 60))
    assert select_positions(scores[1], 60, 4, sink=2, window=window).tolist() == [56, 57, 58, 59]
    assert select_positions(scores[1], 60, 60, sink=2, window=window).tolist() == list(range(60))
    with pytest.raises(RuntimeError, match="not seen whole"):
        partial = ObservationWindow(window)
        partial.arm(60)
        partial.observe(module, query[:, :, 57:], key, None, None, {})
        partial.take(num_kv_heads=2)


def test_pool_scores_spreads_a_spike_over_seven_keys():
    scores = torch.zeros(2, 30)
    scores[1, 10] = 1.0
    pooled = pool_scores(scores)
    assert pooled[1].nonzero().flatten().tolist() == list(range(7, 14)) and not pooled[0].any()


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # gemma2: soft-capped logits, sliding layers skipped
def test_capture_leaves_logits_unchanged_and_records_the_models_weights(family):
    model = build_tiny(family)
    model.set_attn_implementation("eager")
    for layer in model.model.layers:  # a soft-cap that bites (the tiny model's 50 leaves its logits as they are)
        if hasattr(layer.self_attn, "attn_logit_softcapping"):
            layer.self_attn.attn_logit_softcapping = 0.05
    ids, window = ids_of(50, seed=7), 8
    with torch.no_grad():
        weights = model(input_ids=ids, output_attentions=True).attentions
        plain = [model(input_ids=ids[:, s:s + 16], cache=cache, use_cache=True).logits
                 for cache in [DynamicCache(config=model.config)] for s in range(0, 50, 16)]
    observer = ObservationWindow(window)
    with capture_window(model, observer), torch.no_grad():
        observer.arm(50)
        cache = DynamicCache(config=model.config)
        captured = [model(input_ids=ids[:, s:s + 16], cache=cache, use_cache=True).logits for s in range(0, 50, 16)]
        sums = {layer: s.clone() for layer, s in observer.sums.items()}
    assert model.config._attn_implementation == "eager"
    assert all(torch.equal(a, b) for a, b in zip(plain, captured))
    eligible = np.flatnonzero(eligible_layers(model.config)).tolist()
    assert sorted(sums) == eligible
    for layer in eligible:
        expected = weights[layer][0, :, -window:, :].sum(-2)  # (H, K): the model's own softmax
        max_diff = (sums[layer][0] - expected).abs().max().item()
        assert torch.allclose(sums[layer][0], expected, atol=1e-5), f"layer {layer}: max_diff={max_diff:.2e}"


# ---- the query-agnostic split ----------------------------------------------------------------------------


CHAT = ("{% for m in messages %}<|user|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.mark.parametrize("chat", [False, True])
def test_question_start_splits_at_the_end_of_the_document(tiny_tokenizer, chat):
    from retrieval_heads.sweep.haystack import question_start
    from retrieval_heads.sweep.haystack import build_prompt, load_needles

    tokenizer = copy.deepcopy(tiny_tokenizer)
    if chat:
        tokenizer.chat_template = CHAT
    needle = load_needles()[0]
    prompt = build_prompt(tokenizer, "The harbour was quiet that morning. " * 20, needle, 50)
    split = question_start(tokenizer, prompt)
    context, question = tokenizer.decode(prompt.ids[:split]), tokenizer.decode(prompt.ids[split:])
    assert context + question == prompt.text
    assert context.endswith("</document>\n") and needle.needle in context and needle.question not in context
    assert question.startswith("Based on the content of the document") and needle.question in question
    assert (question.endswith("<|assistant|>") and context.startswith("<|user|>")) if chat else question.endswith("Answer:")
    with pytest.raises(UserError, match="end of the document"):
        question_start(tokenizer, type(prompt)(prompt.ids, prompt.needle_span, "no document here"))


# ---- kv-eval -----------------------------------------------------------------------------------------------


def test_kv_eval_token_policies_in_both_settings(tiny_tokenizer, tmp_path):
    from retrieval_heads.core.head_scores import HeadScores
    from retrieval_heads.kv.evaluate import run_kv_eval
    from retrieval_heads.models import LoadedModel
    from retrieval_heads.sweep.grid import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    scores = HeadScores(np.random.default_rng(2).random((2, 3, 8)), meta={"num_kv_heads": 2})
    needles = builtin_needles(tmp_path, 2)
    config = SweepConfig(model="tiny-llama", needles=needles, lengths=[200], depths=[50.0], max_new_tokens=3,
                         chunk_size=64)
    policies = ["full", "uniform", "snapkv", "retrieval-snapkv", "headkv"]
    out = tmp_path / "out"
    options = dict(budgets=[0.3], policies=policies, sink=4, window=16, obs_window=8, progress=False)
    first = run_kv_eval(loaded, config, out, scores, **options)
    assert all(r["query_agnostic"] is False for r in first["rows"])
    second = run_kv_eval(loaded, config, out, scores, query_agnostic=True, **options)
    rows = second["rows"]
    assert [(r["policy"], r["query_agnostic"]) for r in rows] == [(p, qa) for qa in (False, True) for p in policies]
    for row in rows:
        for key in ("policy", "budget", "kv_bytes", "full_kv_bytes", "mean_score", "samples", "kv_fraction"):
            assert row[key] is not None, (row["policy"], key)
        assert row["samples"] == 2
    by = {(r["policy"], r["query_agnostic"]): r for r in rows}
    for policy in ("snapkv", "retrieval-snapkv", "headkv"):
        assert by[policy, False]["obs_window"] == 8 and by[policy, False]["window"] is None
        # b x T kept of ~199 prompt tokens, plus 3 decoded tokens for every head
        assert by[policy, False]["kv_fraction"] == pytest.approx(0.3, abs=0.03)
        assert by[policy, True]["kv_fraction"] > by[policy, False]["kv_fraction"]  # the question is not compressed
        for qa in (False, True):  # right after compression every policy holds its budget
            assert by[policy, qa]["compressed_kv_fraction"] == pytest.approx(0.3, abs=0.5 / 150)
    assert by["uniform", True]["compressed_kv_fraction"] == pytest.approx(0.3, abs=0.5 / 150)
    assert by["full", True]["compressed_kv_fraction"] == 1.0
    samples = [json.loads(l) for l in (out / "query-agnostic" / "snapkv-0.3" / "L200" / "kv_samples.jsonl").read_text().splitlines()]
    results = [json.loads(l) for l in (out / "query-agnostic" / "snapkv-0.3" / "L200" / "results.jsonl").read_text().splitlines()]
    assert all(s["compressed_tokens"] < r["prompt_tokens"] - 10 for s, r in zip(samples, results))
    plan = json.loads((out / "query-agnostic" / "headkv-0.3" / "L200" / "kv_plan.json").read_text())
    assert plan["query_agnostic"] is True and plan["selection"] == "window"
    assert json.loads((out / "snapkv-0.3" / "L200" / "kv_plan.json").read_text())["query_agnostic"] is False
    assert (out / "kv_frontier.png").stat().st_size > 0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["query_agnostic"] is True and len(saved["rows"]) == 2 * len(policies)
    with pytest.raises(UserError, match="another KV plan"):
        run_kv_eval(loaded, config, out, scores, query_agnostic=True, resume=True, **{**options, "obs_window": 4})
    with pytest.raises(UserError, match="--prefill full"):
        run_kv_eval(loaded, config, tmp_path / "lambda", scores, prefill="lambda", **options)


def interrupt_after(monkeypatch, writes: int) -> None:
    """Stop kv-eval (KeyboardInterrupt) right after its ``writes``-th JSONL append, NIAH records and KV rows alike."""
    import retrieval_heads.kv.evaluate as evaluate
    import retrieval_heads.kv.prefill as prefill
    import retrieval_heads.sweep.rundir as rundir
    from retrieval_heads.io import append_jsonl

    count = [0]

    def append(path, row):
        append_jsonl(path, row)
        count[0] += 1
        if count[0] == writes:
            raise KeyboardInterrupt

    for module in (prefill, evaluate, rundir):
        monkeypatch.setattr(module, "append_jsonl", append)


@pytest.mark.parametrize("damage", ["between-writes", "torn-line", "row-missing"])
def test_kv_eval_resume_gives_every_sample_its_kv_row_once(tiny_tokenizer, tmp_path, monkeypatch, damage):
    """A run stopped between a sample's two writes (its KV row and its NIAH record), one killed mid-row (a torn
    last line), or one that lost a KV row (an older kv-eval wrote the record first): ``--resume`` completes it
    with every sample's record and KV row written once."""
    from conftest import tiny_kv_eval

    from retrieval_heads.kv.evaluate import run_kv_eval

    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    out, options = tmp_path / "out", dict(budgets=[0.3], policies=["full", "snapkv"], sink=4, window=16, obs_window=8,
                                          progress=False)
    runs = [out / "full" / "L200", out / "snapkv-0.3" / "L200"]
    with monkeypatch.context() as patch:
        # per sample, per condition: two writes; 3 stops inside the first sample's snapkv, 4 right after it
        interrupt_after(patch, 3 if damage == "between-writes" else 4)
        with pytest.raises(KeyboardInterrupt):
            run_kv_eval(loaded, config, out, scores, **options)
    rows = runs[1] / "kv_samples.jsonl"
    if damage == "torn-line":
        with rows.open("a", encoding="utf-8") as fh:
            fh.write('{"id": "next", "tokens": 2')
    elif damage == "row-missing":
        rows.write_text("")
    summary = run_kv_eval(loaded, config, out, scores, resume=True, **options)
    assert [r["samples"] for r in summary["rows"]] == [2, 2]
    lines = {run.parent.name: [[json.loads(l) for l in (run / name).read_text().splitlines()]
                               for name in ("results.jsonl", "kv_samples.jsonl")] for run in runs}
    assert {name: [len(rows) for rows in both] for name, both in lines.items()} == {"full": [2, 2], "snapkv-0.3": [2, 2]}
    for records, kv in lines.values():
        assert sorted(r["id"] for r in kv) == sorted(r["id"] for r in records) and len({r["id"] for r in kv}) == 2


def test_kv_eval_cli_refuses_unknown_policies_and_budgets(capsys):
    from retrieval_heads.cli import main

    assert main(["kv-eval", "--scores", "nowhere", "--policies", "full,snapk"]) == 2
    assert "Did you mean: snapkv?" in capsys.readouterr().err
    assert main(["kv-eval", "--scores", "nowhere", "--budgets", "0.1,0"]) == 2
    assert "KV bytes in (0, 1]" in capsys.readouterr().err


def test_head_level_kv_eval_resume_gives_every_sample_its_kv_row_once(tiny_tokenizer, tmp_path, monkeypatch):
    """Head-level plans prefilled per condition: a run stopped right after a sample's first write keeps records
    and KV rows in step, and ``--resume`` completes it with one row per record (the row is written first)."""
    from conftest import tiny_kv_eval

    import retrieval_heads.kv.evaluate as evaluate

    loaded, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    out, options = tmp_path / "out", dict(budgets=[0.5], policies=["full", "uniform"], sink=4, window=16,
                                          share_prefill=False, progress=False)
    run = out / "full" / "L200"
    with monkeypatch.context() as patch:
        interrupt_after(patch, 1)
        with pytest.raises(KeyboardInterrupt):
            evaluate.run_kv_eval(loaded, config, out, scores, **options)
    records, rows = ([json.loads(l) for l in (run / name).read_text().splitlines()] if (run / name).exists() else []
                     for name in ("results.jsonl", "kv_samples.jsonl"))
    assert {r["id"] for r in records} <= {r["id"] for r in rows}  # no sample is done without its KV row
    summary = evaluate.run_kv_eval(loaded, config, out, scores, resume=True, **options)
    assert [r["samples"] for r in summary["rows"]] == [2, 2]
    for name in ("full", "uniform-0.5"):
        records, rows = ([json.loads(l) for l in (out / name / "L200" / f).read_text().splitlines()]
                         for f in ("results.jsonl", "kv_samples.jsonl"))
        assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in records) and len(rows) == 2
