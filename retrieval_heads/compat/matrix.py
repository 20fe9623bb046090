"""Compatibility checks of one architecture on a tiny random model: probe, transparency, engine.

``check_architecture("qwen3_next", tokenizer)`` builds a tiny model and checks, in order:

1. **layout**: one dry pass finds the softmax-attention layers (or refuses the model, cleanly);
2. **probe**: the hook's top-1 key equals eager attention's argmax at every decode step, layer
   and head (attention logits scaled up so soft-caps and sinks matter);
3. **transparent**: with the probe on and nothing ablated, the logits equal the model's own;
4. **engine**: a two-sample detection and one NIAH sample with a head masked run end to end.

The result is one ``CheckResult`` (architecture | kind | status | note) per architecture.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass

import torch

from ..core.hooks import AttentionControl, attention_control
from ..errors import UserError
from .tiny import build_tiny

ENGINE_PROMPT_TOKENS = 400  # at least the engine check's prompts (320-token contexts plus the question)
LOGIT_SCALE = 40.0  # attention logits of tiny random models are ~1e-2: scaled up, caps and sinks bite


@dataclass
class CheckResult:
    architecture: str
    kind: str = ""
    status: str = "ok"  # ok | refused | fail | skip
    note: str = ""


def kind_of(model, layout) -> str:
    """dense | moe | sliding | sinks | hybrid | mla | multimodal, the most specific that applies."""
    text = model.config.get_text_config()
    if model.config is not text:
        return "multimodal"
    if layout.is_hybrid:
        return "hybrid"
    if layout.latent or getattr(text, "kv_lora_rank", None):
        return "mla"
    if any(hasattr(m, "sinks") for m in model.modules()):
        return "sinks"
    if any(k != "full_attention" for k in (getattr(text, "layer_types", None) or ["full_attention"])):
        return "sliding"
    names = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
    return "moe" if any(getattr(text, n, None) for n in names) else "dense"


def scale_attention_logits(model, factor: float = LOGIT_SCALE) -> None:
    """Multiply every attention module's ``scaling`` by ``factor`` and spread its sinks, so that
    soft-caps saturate and sinks carry real weight in a tiny random model."""
    for module in model.modules():
        if isinstance(getattr(module, "scaling", None), float) and hasattr(module, "layer_idx"):
            module.scaling *= factor
        sinks = getattr(module, "sinks", None)
        if isinstance(sinks, torch.nn.Parameter):
            with torch.no_grad():
                sinks.normal_(0.0, 3.0)


def _token_ids(seed: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (1, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def eager_reference(model, ids: torch.Tensor, steps: int) -> tuple[list[dict[int, torch.Tensor]], list[int]]:
    """Per decode step, {layer: (heads,) absolute argmax of eager attention weights}, and the tokens.

    Layers are matched to the ``attentions`` tuple in order of the layers that ran attention.
    """
    original = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with attention_control(model) as control:  # only to learn which layers run attention
            model(input_ids=ids[:, :2], use_cache=False)
            layers = sorted(control.seen)
        cache = _prefill(model, ids[:, :-1])
        token, rows, generated = ids[:, -1:], [], []
        for step in range(steps):
            out = model(input_ids=token, cache=cache, use_cache=True, output_attentions=True)
            weights = list(out.attentions)
            if len(weights) == model.config.get_text_config().num_hidden_layers:  # one entry per layer, any kind
                weights = [weights[l] for l in layers]
            weights = [a for a in weights if a is not None]
            if len(weights) != len(layers):
                raise RuntimeError(f"eager returned {len(weights)} attention maps for {len(layers)} attention layers")
            total = ids.shape[1] + step
            rows.append({l: w[0, :, -1].argmax(-1) + total - w.shape[-1] for l, w in zip(layers, weights)})
            token = out.logits[:, -1:].argmax(-1)
            generated.append(int(token))
        return rows, generated
    finally:
        model.set_attn_implementation(original)


@torch.no_grad()
def probe_positions(model, ids: torch.Tensor, steps: int, implementation: str = "eager"):
    """Per decode step, {layer: (heads,) absolute top-1 of the probe}, and the tokens (same loop as the engine)."""
    original = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        with attention_control(model) as control:
            control.decoding = False
            cache = _prefill(model, ids[:, :-1])
            control.probe, control.decoding = True, True
            token, rows, generated = ids[:, -1:], [], []
            for step in range(steps):
                out = model(input_ids=token, cache=cache, use_cache=True)
                rows.append({l: t[0] + ids.shape[1] + step for l, t in control.top1.items()})
                control.top1.clear()
                token = out.logits[:, -1:].argmax(-1)
                generated.append(int(token))
        return rows, generated
    finally:
        model.set_attn_implementation(original)


def _prefill(model, ids: torch.Tensor):
    """A cache holding ``ids``: the engine's, or the one the model makes itself."""
    from ..core.engine import builds_own_cache, new_cache, returned_cache

    cache = None if builds_own_cache(model) else new_cache(model, keep_past=False)
    out = model(input_ids=ids, cache=cache, use_cache=True)
    return cache if cache is not None else returned_cache(out)


def probe_mismatches(model, seed: int = 1, length: int = 40, steps: int = 3) -> tuple[int, int]:
    """(top-1 positions differing from eager argmax, positions compared), on eager attention."""
    vocab = model.config.get_text_config().vocab_size
    ids = _token_ids(seed, length, vocab)
    ref, ref_tokens = eager_reference(model, ids, steps)
    got, tokens = probe_positions(model, ids, steps)
    if tokens != ref_tokens:
        return -1, 0
    differ = total = 0
    for ref_row, got_row in zip(ref, got):
        for layer, expected in ref_row.items():
            found = got_row.get(layer)
            differ += expected.numel() if found is None else int((found[: expected.numel()] != expected).sum())
            total += expected.numel()
    return differ, total


@torch.no_grad()
def logit_change(model, seed: int = 2, length: int = 24) -> float:
    """Max |logits under the probe - the model's own logits| (must be 0: observing must not change it)."""
    ids = _token_ids(seed, length, model.config.get_text_config().vocab_size)
    plain = model(input_ids=ids).logits
    with attention_control(model, AttentionControl(probe=True)):
        hooked = model(input_ids=ids).logits
    return float((hooked.float() - plain.float()).abs().max())


def run_engine(model, tokenizer, name: str) -> str:
    """Two-sample detection and one masked NIAH sample through the engine; returns a short note."""
    from ..detection.detect import run_detection
    from ..masking.heads import MaskPlan, Selection
    from ..masking.niah import run_niah
    from ..models import LoadedModel
    from ..sweep.grid import SweepConfig

    loaded = LoadedModel(model, tokenizer, name, 0.0)
    config = SweepConfig(model=name, lengths=[320], depths=[50], max_new_tokens=3, chunk_size=64, batch_size=2)
    layer = loaded.layout.attention_layers[0]
    with tempfile.TemporaryDirectory() as tmp:
        config.needles = _two_needles(tmp)
        detection = run_detection(loaded, config, f"{tmp}/detect", progress=False)
        plan = MaskPlan(Selection.EXPLICIT, 1, ((layer, 0),))
        one = SweepConfig(**{**config.to_dict(), "shard": (0, 2)})
        niah = run_niah(loaded, one, f"{tmp}/niah", plan=plan, progress=False)
    summary = detection.summary
    return (f"{summary['samples']} samples, reuse={summary['timing'].get('prefix_reuse')}, "
            f"batched={summary['timing'].get('batched_decoding')}; niah {niah.summary.get('samples')} masked")


def _two_needles(directory: str) -> str:
    import json

    from ..sweep.haystack import load_needles

    path = f"{directory}/needles.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for n in load_needles()[:2]:
            f.write(json.dumps({"needle": n.needle, "question": n.question, "real_needle": n.real_needle}) + "\n")
    return path


def check_architecture(model_type: str, tokenizer, *, engine: bool = True) -> CheckResult:
    """All checks for ``model_type``; never raises (failures are in the result)."""
    from ..core.layout import inspect_attention

    result = CheckResult(model_type)
    try:
        model = build_tiny(model_type)
    except Exception as exc:  # noqa: BLE001 - a config the shrinker cannot build is reported, not fatal
        return CheckResult(model_type, "", "skip", f"tiny model not built: {_short(exc)}")
    try:
        layout = inspect_attention(model)
    except UserError as exc:
        broken = _plain_forward_error(model)  # the shrunk config itself may not run: not ours to check
        if broken:
            return CheckResult(model_type, "", "skip", f"tiny model does not run without the hook: {broken}")
        return CheckResult(model_type, "refused", "refused", str(exc))
    except Exception as exc:  # noqa: BLE001
        broken = _plain_forward_error(model)
        if broken:
            return CheckResult(model_type, "", "skip", f"tiny model does not run without the hook: {broken}")
        return CheckResult(model_type, "", "fail", f"dry run: {_short(exc)}")
    result.kind = kind_of(model, layout)
    scale_attention_logits(model)
    notes = []
    try:
        differ, total = probe_mismatches(model)
        if differ:
            result.status = "fail"
        notes.append("probe: eager decoded other tokens" if differ < 0 else f"probe {total - differ}/{total}")
        change = logit_change(model)
        if change != 0.0:
            result.status = "fail"
        notes.append(f"logit change {change:.1e}")
        if engine:
            notes.append(run_engine(model, tokenizer, model_type))
    except UserError as exc:
        result.status = "refused"
        notes.append(str(exc))
    except Exception as exc:  # noqa: BLE001
        broken = _plain_forward_error(model, length=ENGINE_PROMPT_TOKENS)  # as long as the engine's prompts
        result.status = "skip" if broken else "fail"
        notes.append(f"tiny model does not run without the hook: {broken}" if broken else _short(exc))
    result.note = "; ".join(notes)
    return result


@torch.no_grad()
def _plain_forward_error(model, length: int = 40) -> str | None:
    """Why the model fails on its own (no hook): a prefill of ``length`` tokens into a ``DynamicCache`` and one
    decode step, in eager and in its default attention; None when it runs."""
    ids = _token_ids(0, length, model.config.get_text_config().vocab_size)
    original = model.config._attn_implementation
    try:
        for implementation in dict.fromkeys((original, "eager")):
            model.set_attn_implementation(implementation)
            cache = _prefill(model, ids[:, :-1])
            model(input_ids=ids[:, -1:], cache=cache, use_cache=True)
    except Exception as exc:  # noqa: BLE001
        return _short(exc)
    finally:
        model.set_attn_implementation(original)
    return None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:160]}"
