"""Head-wise KV cache: exact against DynamicCache when all heads are full, against a per-head masked
reference otherwise; bytes by hand; eviction; GQA and Gemma 3 sliding layers; policies; kv-eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import builtin_needles, build_tiny, masked_attention
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

from retrieval_heads.core.engine import Engine
from retrieval_heads.core.hooks import attention_control
from retrieval_heads.kv.attention import HeadwiseAttention, HeadwiseCacheFactory
from retrieval_heads.kv.cache import HeadwiseCache, HeadwiseLayer, cache_held_bytes, cache_stats, streaming_positions
from retrieval_heads.kv.policy import (
    above_threshold,
    eligible_layers,
    explicit,
    heads_for_fraction,
    random_plan,
    top_fraction,
    uniform_for_bytes,
)

SINK, WINDOW = 3, 7
HEAD_LEVEL = ["full", "retrieval", "random", "uniform"]


def ids_of(length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(seed))


# (layers, kv_heads) of the tiny models: a full KV head, a streaming one, and an all-streaming layer
MIXED = np.array([[True, False], [False, True], [False, False]])


@torch.no_grad()
def run_chunked(model, cache, ids: torch.Tensor, chunk: int, steps: int) -> tuple[torch.Tensor, list[int]]:
    """Chunked prefill then greedy decode; (positions, vocab) logits of every prompt token and step."""
    logits = []
    for start in range(0, ids.shape[1], chunk):
        logits.append(model(input_ids=ids[:, start:start + chunk], cache=cache, use_cache=True).logits[0])
    if not steps:
        return torch.cat(logits), []
    decoded, generated = decode_steps(model, cache, logits[-1][-1].argmax().view(1, 1), steps)
    return torch.cat([*logits, decoded]), generated

@torch.no_grad()
def decode_steps(model, cache, token: torch.Tensor, steps: int) -> tuple[torch.Tensor, list[int]]:
    """Greedy decoding from ``cache``; (steps, vocab) logits and the tokens fed."""
    logits, generated = [], []
    for _ in range(steps):
        generated.append(int(token))
        step = model(input_ids=token, cache=cache, use_cache=True).logits[0]
        logits.append(step)
        token = step[-1].argmax().view(1, 1)
    return torch.cat(logits), generated


def reference_attention(full: np.ndarray, sink: int, window: int, chunk_of=None):
    """Slow reference on a dense cache: per-head masks, streaming heads see j <= i and (j < sink or j >= i - window).

    ``chunk_of(i)``: the start of query ``i``'s prefill chunk, for ``prefill="chunk"``, where the window
    counts back from the chunk's start instead of from ``i``.
    """

    def visibility(module, q_pos, k_len, h):
        k_pos = torch.arange(k_len)[None, :]
        causal = k_pos <= q_pos
        start = q_pos if chunk_of is None else chunk_of(q_pos)
        lam = causal & ((k_pos < sink) | (k_pos >= start - window))
        streaming = torch.tensor(~full[module.layer_idx]).repeat_interleave(module.num_key_value_groups)  # (H,)
        return torch.where(streaming[:, None, None], lam, causal)  # (H, Q, K)

    return masked_attention(visibility)


@torch.no_grad()
def reference_run(model, full, ids, steps, sink=SINK, window=WINDOW, chunk_of=None):
    original = model.config._attn_implementation
    AttentionInterface.register("kv_reference", reference_attention(full, sink, window, chunk_of))
    AttentionMaskInterface.register("kv_reference", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    try:
        model.set_attn_implementation("kv_reference")
        return run_chunked(model, DynamicCache(config=model.config), ids, chunk=ids.shape[1], steps=steps)
    finally:
        model.set_attn_implementation(original)
        AttentionInterface._global_mapping.pop("kv_reference", None)
        AttentionMaskInterface._global_mapping.pop("kv_reference", None)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_all_full_equals_dynamic_cache_exactly(family):
    model = build_tiny(family)
    ids = ids_of(50)
    ref_logits, ref_tokens = run_chunked(model, DynamicCache(config=model.config), ids, chunk=16, steps=6)
    full = np.ones((3, 2), dtype=bool)
    with HeadwiseAttention(model):
        logits, tokens = run_chunked(model, HeadwiseCache(model.config, full, sink=SINK, window=WINDOW), ids, chunk=16, steps=6)
        generated = model.generate(ids, max_new_tokens=6, do_sample=False, cache=HeadwiseCache(model.config, full))
    reference = model.generate(ids, max_new_tokens=6, do_sample=False, cache=DynamicCache(config=model.config))
    assert tokens == ref_tokens
    assert torch.equal(logits, ref_logits), f"max_diff={(logits - ref_logits).abs().max().item():.2e}"
    assert torch.equal(generated, reference)


@pytest.mark.parametrize("family", ["llama", "gemma3", "llama-eager"])
@pytest.mark.parametrize("chunk", [5, 16, 64])
def test_streaming_heads_match_per_head_masked_reference(family, chunk):
    model = build_tiny(family.removesuffix("-eager"))  # GQA: 8 query heads read 2 KV heads
    if family.endswith("-eager"):
        model.set_attn_implementation("eager")  # additive float masks, the eager backend per group
    full = MIXED
    ids = ids_of(45, seed=2)
    ref_logits, ref_tokens = reference_run(model, full, ids, steps=5)
    with HeadwiseAttention(model):
        logits, tokens = run_chunked(model, HeadwiseCache(model.config, full, sink=SINK, window=WINDOW), ids, chunk=chunk, steps=5)
    max_diff = (logits - ref_logits).abs().max().item()
    assert torch.allclose(logits, ref_logits, atol=1e-5), f"max_diff={max_diff:.2e}"
    assert tokens == ref_tokens


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("prefill", ["chunk", "full"])
def test_other_prefill_modes_match_reference(family, prefill):
    model = build_tiny(family)
    full, ids, chunk = MIXED, ids_of(45, seed=3), 16
    prompt = ids.shape[1]
    if prefill == "chunk":  # the window counts back from the chunk's start; decode steps: from themselves
        chunk_of = lambda i: torch.where(i < prompt, i // chunk * chunk, i)
    else:  # everything visible while prefilling
        chunk_of = lambda i: torch.where(i < prompt, 0, i)
    ref_logits, ref_tokens = reference_run(model, full, ids, steps=4, chunk_of=chunk_of)
    with HeadwiseAttention(model):
        cache = HeadwiseCache(model.config, full, sink=SINK, window=WINDOW, prefill=prefill)
        logits, tokens = run_chunked(model, cache, ids, chunk=chunk, steps=4)
    max_diff = (logits - ref_logits).abs().max().item()
    assert torch.allclose(logits, ref_logits, atol=1e-5), f"max_diff={max_diff:.2e}"
    assert tokens == ref_tokens
    assert set(cache.stream_lengths().values()) == {SINK + WINDOW}




@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("plan", ["mixed", "all-full"])
def test_from_prefilled_equals_full_prefill_mode(family, plan):
    """A head-wise copy of a plain prefilled cache decodes like a cache prefilled with prefill="full",
    and leaves the prefilled cache as it was (it serves the next plan)."""
    model = build_tiny(family)
    full = MIXED if plan == "mixed" else np.ones_like(MIXED)
    ids = ids_of(45, seed=4)
    with HeadwiseAttention(model):
        direct = HeadwiseCache(model.config, full, sink=SINK, window=WINDOW, prefill="full")
        with torch.no_grad():
            token = model(input_ids=ids, cache=direct, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        ref_logits, ref_tokens = decode_steps(model, direct, token, steps=5)
        prefilled = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=ids, cache=prefilled, use_cache=True)
        before = [layer.keys.clone() for layer in prefilled.layers]
        copied = HeadwiseCache.from_prefilled(model.config, prefilled, full, sink=SINK, window=WINDOW)
        logits, tokens = decode_steps(model, copied, token, steps=5)
    max_diff = (logits - ref_logits).abs().max().item()
    assert torch.allclose(logits, ref_logits, atol=1e-5), f"max_diff={max_diff:.2e}"
    assert tokens == ref_tokens
    assert copied.kv_bytes() == direct.kv_bytes() and copied.dense_kv_bytes() == direct.dense_kv_bytes()
    assert copied.peak_kv_bytes == cache_held_bytes(prefilled) + cache_held_bytes(copied)  # both held at once
    assert all(torch.equal(b, layer.keys) for b, layer in zip(before, prefilled.layers))

def test_streaming_changes_outputs():
    """Guards the reference test against a no-op: a streaming plan must differ from the full cache."""
    model = build_tiny("llama")
    ids = ids_of(45, seed=2)
    full_logits, _ = run_chunked(model, DynamicCache(config=model.config), ids, chunk=16, steps=2)
    with HeadwiseAttention(model):
        logits, _ = run_chunked(model, HeadwiseCache(model.config, MIXED, sink=SINK, window=WINDOW), ids, chunk=16, steps=2)
    assert (logits - full_logits).abs().max().item() > 1e-3


def test_bytes_match_per_head_lengths():
    model = build_tiny("llama")  # 3 layers, 2 KV heads, head_dim 8, float32
    full = MIXED
    prompt, steps = 60, 4
    with HeadwiseAttention(model):
        cache = HeadwiseCache(model.config, full, sink=SINK, window=WINDOW)
        run_chunked(model, cache, ids_of(prompt), chunk=16, steps=steps)
    tokens = prompt + steps
    per_token = 2 * 8 * 4  # keys + values, head_dim 8, 4 bytes
    expected = sum(int(row.sum()) * tokens * per_token + int((~row).sum()) * (SINK + WINDOW) * per_token for row in full)
    stored = sum(t.untyped_storage().nbytes() for layer in cache.layers for t in layer.stored())
    assert cache.get_seq_length() == tokens
    assert cache.kv_bytes() == expected == stored
    assert cache.dense_kv_bytes() == 3 * 2 * tokens * per_token
    assert cache.peak_kv_bytes == expected + 3 * 2 * 8  # and every layer's head indexes (int64)
    assert cache.decode_steps == steps


def test_streaming_heads_hold_exactly_sink_plus_window_after_long_prefill():
    model = build_tiny("llama")
    with HeadwiseAttention(model):
        cache = HeadwiseCache(model.config, MIXED, sink=SINK, window=WINDOW)
        run_chunked(model, cache, ids_of(200), chunk=32, steps=0)
    assert cache.stream_lengths() == {0: SINK + WINDOW, 1: SINK + WINDOW, 2: SINK + WINDOW}
    assert cache.layers[0].full_keys.shape[-2] == 200
    assert cache.layers[2].full_keys is None
    assert streaming_positions(200, SINK, WINDOW).tolist() == [0, 1, 2] + list(range(193, 200))
    # peak stays bounded during chunked prefill: at most what the last state holds (evicted after each chunk)
    assert cache.peak_kv_bytes == cache_held_bytes(cache)


def test_short_prompt_keeps_everything():
    model = build_tiny("llama")
    with HeadwiseAttention(model):
        cache = HeadwiseCache(model.config, MIXED, sink=SINK, window=WINDOW)
        run_chunked(model, cache, ids_of(6), chunk=4, steps=0)
    assert cache.stream_lengths() == {0: 6, 1: 6, 2: 6}
    assert cache.kv_bytes() == cache.dense_kv_bytes()


def test_gemma3_sliding_layers_untouched():
    model = build_tiny("gemma3")  # layers: sliding, full, sliding
    assert eligible_layers(model.config).tolist() == [False, True, False]
    plan = np.zeros((3, 2), dtype=bool)
    with HeadwiseAttention(model):
        cache = HeadwiseCache(model.config, plan, sink=SINK, window=WINDOW)
        run_chunked(model, cache, ids_of(60), chunk=16, steps=2)
    assert isinstance(cache.layers[0], DynamicSlidingWindowLayer) and isinstance(cache.layers[2], DynamicSlidingWindowLayer)
    assert isinstance(cache.layers[1], HeadwiseLayer)
    assert cache.stream_lengths() == {1: SINK + WINDOW}
    assert cache.layers[0].keys.shape[-2] <= model.config.sliding_window


def test_model_restored_after_context():
    model = build_tiny("llama")
    before = set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping)
    with HeadwiseAttention(model) as attention:
        inside = model.config._attn_implementation
        assert inside.startswith("retrieval_heads_kv_")
        attention.install()  # idempotent
        assert model.config._attn_implementation == inside
    assert model.config._attn_implementation == "sdpa"
    assert all(layer.self_attn.config._attn_implementation == "sdpa" for layer in model.model.layers)
    assert (set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping)) == before
    with pytest.raises(RuntimeError), HeadwiseAttention(model):
        raise RuntimeError("boom")
    assert model.config._attn_implementation == "sdpa"
    assert (set(AttentionInterface._global_mapping), set(AttentionMaskInterface._global_mapping)) == before


def never_stop(_token: int) -> bool:
    return False


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_engine_with_factory_inside_attention_control(family):
    """The Engine path run_niah uses: the factory wraps attention_control's function; all-full equals plain."""
    model = build_tiny(family)
    prompts = [ids_of(70, seed=s)[0].tolist() for s in range(3)]
    with attention_control(model) as control:
        plain = [Engine(model, control, never_stop, chunk_size=16, share_prefix=False).generate(p, 5, probe=False)
                 for p in prompts]
    stats = []
    with HeadwiseAttention(model) as attention:
        with attention_control(model) as control:
            factory = HeadwiseCacheFactory(attention, np.ones((3, 2), dtype=bool))
            engine = Engine(model, control, never_stop, chunk_size=16, cache_factory=factory)
            got = []
            for p in prompts:
                got.append(engine.generate(p, 5, probe=False))
                stats.append(cache_stats(factory.current))
            factory.close()
            streaming = HeadwiseCacheFactory(attention, MIXED, sink=SINK, window=WINDOW)
            Engine(model, control, never_stop, chunk_size=16, cache_factory=streaming).generate(prompts[0], 5, probe=False)
    assert [g.generated_ids for g in got] == [g.generated_ids for g in plain]
    assert [s["decode_steps"] for s in stats] == [5, 5, 5]
    assert all(s["kv_bytes"] == s["dense_kv_bytes"] for s in stats)
    assert model.config._attn_implementation == "sdpa"


# ---- policies ----------------------------------------------------------------------------------------


def test_top_fraction_and_threshold():
    kv = np.array([[0.0, 0.9], [0.5, 0.1], [0.3, 0.3]])
    eligible = np.array([True, True, True])
    plan = top_fraction(kv, 0.5, eligible=eligible)
    assert plan.full.tolist() == [[False, True], [True, False], [True, False]]  # tie at 0.3: lower index first
    assert plan.num_full == 3 and plan.budget == 0.5
    assert above_threshold(kv, 0.2, eligible=eligible).full_heads() == ["0-1", "1-0", "2-0", "2-1"]
    assert heads_for_fraction(0.35, 90) == 32 and heads_for_fraction(0.1, 90) == 9


def test_policies_skip_sliding_layers():
    kv = np.array([[9.0, 9.0], [0.5, 0.1], [9.0, 9.0]])
    eligible = np.array([False, True, False])
    assert top_fraction(kv, 0.5, eligible=eligible).full_heads() == ["1-0"]
    plan = random_plan((3, 2), 2, eligible=eligible, seed=1)
    assert plan.full_heads() == ["1-0", "1-1"] and not plan.full[[0, 2]].any()
    with pytest.raises(Exception, match="sliding"):
        explicit("0-1", (3, 2), eligible=eligible)


def test_random_plan_is_seeded():
    eligible = np.ones(30, dtype=bool)
    a = random_plan((30, 3), 9, eligible=eligible, seed=4)
    assert a.full.tolist() == random_plan((30, 3), 9, eligible=eligible, seed=4).full.tolist()
    assert a.num_full == 9
    assert a.full.tolist() != random_plan((30, 3), 9, eligible=eligible, seed=5).full.tolist()


def test_uniform_matches_bytes():
    kv = np.random.default_rng(0).random((30, 3))
    plan = top_fraction(kv, 0.2, eligible=np.ones(30, dtype=bool), sink=4, window=64)
    tokens = 4000
    expected = plan.byte_fraction(tokens)
    uniform = uniform_for_bytes(plan.full.shape, expected, tokens, eligible=plan.eligible, sink=plan.sink)
    assert not uniform.full.any()
    assert expected == pytest.approx((18 * 4000 + 72 * 68) / (90 * 4000))
    assert uniform.byte_fraction(tokens) == pytest.approx(expected, abs=1 / tokens)
    assert uniform.sink + uniform.recent_window == round(expected * tokens)


# ---- kv-eval end to end ------------------------------------------------------------------------------


def test_kv_eval_writes_rows_and_frontier(tiny_tokenizer, tmp_path):
    from retrieval_heads.core.head_scores import HeadScores
    from retrieval_heads.kv.evaluate import run_kv_eval
    from retrieval_heads.models import LoadedModel
    from retrieval_heads.sweep.grid import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    scores = HeadScores(np.random.default_rng(0).random((2, 3, 8)), meta={"num_kv_heads": 2})
    needles = builtin_needles(tmp_path, 2)
    config = SweepConfig(model="tiny-llama", needles=needles, lengths=[200], depths=[50.0], max_new_tokens=4,
                         chunk_size=64)
    tmp_path = tmp_path / "out"
    # 2 of 6 KV heads full at 199 tokens: (2 x 199 + 4 x (4 + 16)) / (6 x 199) = 0.40 of the bytes
    summary = run_kv_eval(loaded, config, tmp_path, scores, budgets=[0.41], policies=HEAD_LEVEL, sink=4, window=16,
                          progress=False)
    rows = {r["policy"]: r for r in summary["rows"]}
    assert set(rows) == {"full", "retrieval", "random", "uniform"}
    for key in ("budget", "kv_bytes", "full_kv_bytes", "mean_score", "peak_rss_mb", "decode_tokens_per_s"):
        assert all(r[key] is not None for r in rows.values()), key
    assert rows["full"]["kv_fraction"] == pytest.approx(1.0)
    assert rows["retrieval"]["num_full_kv_heads"] == rows["random"]["num_full_kv_heads"] == 2
    assert rows["retrieval"]["kv_fraction"] < 0.6
    assert rows["uniform"]["kv_fraction"] == pytest.approx(rows["retrieval"]["kv_fraction"], abs=0.05)
    assert (tmp_path / "kv_frontier.png").stat().st_size > 0
    assert json.loads((tmp_path / "summary.json").read_text())["rows"][0]["policy"] == "full"
    # a rerun with --resume skips finished samples; another plan in the same directory is refused
    again = run_kv_eval(loaded, config, tmp_path, scores, budgets=[0.41], policies=HEAD_LEVEL, sink=4, window=16,
                        progress=False, resume=True)
    for key in ("mean_score", "kv_bytes", "peak_rss_mb", "decode_tokens_per_s"):  # nothing re-ran, nothing changed
        assert [r[key] for r in again["rows"]] == [r[key] for r in summary["rows"]], key
    with pytest.raises(Exception, match="another KV plan"):
        run_kv_eval(loaded, config, tmp_path, scores, budgets=[0.41], policies=HEAD_LEVEL, sink=4, window=8,
                    progress=False, resume=True)


def test_shared_prefill_equals_prefill_per_condition(tiny_tokenizer, tmp_path):
    """kv-eval's one-prefill-per-prompt path gives every condition the answers, scores and KV bytes of
    a per-condition run (the per-condition path prefills streaming heads through the head-wise
    attention split, so logits may differ in the last float bits: compared through greedy answers)."""

    from retrieval_heads.core.head_scores import HeadScores
    from retrieval_heads.kv.evaluate import run_kv_eval
    from retrieval_heads.models import LoadedModel
    from retrieval_heads.sweep.grid import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    scores = HeadScores(np.random.default_rng(1).random((2, 3, 8)), meta={"num_kv_heads": 2})
    needles = builtin_needles(tmp_path, 2)
    config = SweepConfig(model="tiny-llama", needles=needles, lengths=[220, 300], depths=[20.0, 60.0],
                         max_new_tokens=5, chunk_size=32)
    runs = {}
    for shared in (True, False):
        out = tmp_path / ("shared" if shared else "separate")
        summary = run_kv_eval(loaded, config, out, scores, budgets=[0.4], policies=HEAD_LEVEL, sink=4, window=16,
                              progress=False, share_prefill=shared)
        assert summary["shared_prefill"] is shared
        runs[shared] = (out, summary)
    for a, b in zip(runs[True][1]["rows"], runs[False][1]["rows"]):
        assert (a["policy"], a["samples"], a["kv_bytes"], a["mean_score"]) == (b["policy"], b["samples"], b["kv_bytes"], b["mean_score"])
    for run in (runs[True][0] / "retrieval-0.4").glob("L*"):
        other = runs[False][0] / "retrieval-0.4" / run.name
        for name in ("results.jsonl", "kv_samples.jsonl"):
            # bytes right after compression; the peak also counts the shared prefill, held beside every copy; a KV
            # row's sample id (written before the sample's record, which marks it done)
            shared_only = ("compressed_kv_bytes", "compressed_dense_kv_bytes", "peak_kv_bytes",
                           *(("id",) if name == "kv_samples.jsonl" else ()))
            mine = sorted(({k: v for k, v in json.loads(l).items() if k not in shared_only}
                           for l in (run / name).read_text().splitlines()), key=lambda r: r.get("id", json.dumps(r)))
            theirs = sorted(({k: v for k, v in json.loads(l).items() if k not in shared_only}
                             for l in (other / name).read_text().splitlines()), key=lambda r: r.get("id", json.dumps(r)))
            assert mine == theirs, name
        assert json.loads((run / "summary.json").read_text())["timing"]["prefill_shared_by"] == 4


class _InProcess:
    """Stands in for ``ProcessPoolExecutor``: runs what is submitted here, at once (no spawn in unit tests)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        from concurrent.futures import Future

        done = Future()
        done.set_result(fn(*args))
        return done


def test_isolated_conditions_load_like_the_parent_which_lets_go_of_its_weights(tiny_tokenizer, tmp_path, monkeypatch):
    """A condition run in its own process loads the model with every load setting of the parent (here the
    eager kernel and a device map, which the child dropped before), while the parent holds no weights."""
    import concurrent.futures
    import gc
    import weakref

    from conftest import tiny_kv_eval

    import retrieval_heads.kv.evaluate as evaluate
    from retrieval_heads.models import load_model

    _, scores, config = tiny_kv_eval(tiny_tokenizer, tmp_path)
    saved = tmp_path / "tiny-llama"
    build_tiny("llama").save_pretrained(saved)
    tiny_tokenizer.save_pretrained(saved)
    loaded = load_model(str(saved), attn_implementation="eager", device_map="cpu")
    parent = weakref.ref(loaded.model)
    children = []
    real = evaluate.run_condition

    def child(loaded_here, **job):
        gc.collect()
        model = loaded_here.model
        settings = getattr(loaded_here, "settings", None)  # what it was loaded with
        children.append((model.config._attn_implementation, getattr(settings, "device_map", None), parent() is None))
        return real(loaded_here, **job)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", _InProcess)
    monkeypatch.setattr(evaluate, "run_condition", child)
    summary = evaluate.run_kv_eval(loaded, config, tmp_path / "out", scores, budgets=[0.4], policies=["full", "uniform"],
                                   sink=4, window=16, share_prefill=False, isolate=True, progress=False)
    assert summary["isolated"] and [r["samples"] for r in summary["rows"]] == [2, 2]
    assert children == [("eager", "cpu", True)] * 2
    built = evaluate.LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    with pytest.raises(evaluate.UserError, match="--no-isolate"):
        evaluate.run_kv_eval(built, config, tmp_path / "built", scores, budgets=[0.4], policies=["full"],
                             share_prefill=False, isolate=True, progress=False)


@pytest.mark.parametrize("command", ["kv-eval", "restore", "lookup"])
def test_kv_commands_refuse_a_model_without_a_full_attention_layer(command, tiny_tokenizer, tmp_path):
    """A Mistral whose ``sliding_window`` makes every layer slide has no KV head to keep whole or compress: refused
    before any run starts, instead of every policy silently being the full cache."""
    from retrieval_heads.compat.tiny import build_tiny as build_tiny_arch
    from retrieval_heads.core.head_scores import HeadScores
    from retrieval_heads.errors import UserError
    from retrieval_heads.kv.evaluate import run_kv_eval
    from retrieval_heads.kv.lookup import run_lookup
    from retrieval_heads.kv.restore import run_restore
    from retrieval_heads.models import LoadedModel
    from retrieval_heads.sweep.grid import SweepConfig

    model = build_tiny_arch("mistral", sliding_window=16)  # 2 layers, 4 heads, 2 KV heads, no layer_types
    loaded = LoadedModel(model, tiny_tokenizer, "tiny-mistral", 0.0)
    config = SweepConfig(model="tiny-mistral", needles=builtin_needles(tmp_path, 1), lengths=[200], depths=[50.0],
                         max_new_tokens=2, chunk_size=64)
    scores = HeadScores(np.full((1, 2, 4), 0.5), meta={"num_kv_heads": 2})
    out = tmp_path / "out"
    run = {"kv-eval": lambda: run_kv_eval(loaded, config, out, scores, budgets=[0.2], sink=4, window=8, progress=False),
           "restore": lambda: run_restore(loaded, config, out, sink=4, obs_window=8, progress=False),
           "lookup": lambda: run_lookup(loaded, config, out, progress=False)}[command]
    with pytest.raises(UserError, match="no full-attention layer") as refused:
        run()
    assert "\n" not in str(refused.value)
    assert not out.exists()
