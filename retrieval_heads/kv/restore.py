"""Restore scores: the KV heads that, kept whole, bring a compressed cache's answer back to the full cache's.

Lookup scores rank heads by where they look; this ranks them by what keeping them whole does, in the
setting where it matters most: a document's cache compressed before the question is known
(``kv-eval --query-agnostic``). Per sample, the document is prefilled into a plain cache (the last
``obs_window`` document tokens observed, as SnapKV does), and the full cache's own greedy answer is decoded
(the target: no labels, the behaviour compression should keep, as DuoAttention distils full attention).
Over the question and the teacher-forced answer, every KV head ``h`` of a global layer then runs gated:

    out_h = comp_h + g_h (full_h - comp_h)        (query rows of the question and the answer)

where ``full_h`` is the model's own attention over every document token and ``comp_h`` the same kernel
restricted to the document tokens SnapKV keeps for a non-full head at the budget (``keep_masks``). The
objective is the answer's mean log-probability per token. Greedy selection: all gates 0 (every head
compressed); the gradient of the objective over every sample ranks the heads not yet whole; the best is
made whole (gate 1); repeat for ``steps`` heads (``retrieval-snapkv``'s number of full heads at the budget).
On SmolLM2 (a prototype of these gates, 10 prompts) the gradient at all-compressed ranked heads as the exact
one-head restorations did (Spearman 0.99, same top 10) at one backward pass per sample instead of one forward pass per head and sample.

A head's score is its place in that order, mapped to (0.5, 1] (first 1.0; heads never chosen 0), so
``kv-eval --scores`` keeps the chosen heads whole in that order. A restore run directory has
``config.json``, ``steps.jsonl`` (one line per chosen head, written as it is chosen: the estimated gain and
the exact objective), ``head_scores.json`` and ``summary.json`` (``criterion`` ``restore``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..core.head_scores import HeadScores, head_fields
from ..errors import UserError
from ..io import read_jsonl
from ..models import LoadedModel
from ..sweep.grid import SweepConfig, prepare
from ..sweep.rundir import RunDir
from .cache import num_kv_heads, put_back
from .policy import (DEFAULT_OBS_WINDOW, DEFAULT_SINK, check_eligible, eligible_layers, rest_share, share_tokens,
                     whole_head_count)
from .snapkv import ObservationWindow, Observed, capture_window, select_positions

CRITERION = "restore"
STEPS = "steps.jsonl"


@dataclass
class Gates:
    """What the gated attention applies while ``doc_len`` is set (None: every call runs plain).

    ``keep[layer]``: (Hkv, doc_len) bool, the document tokens each KV head keeps compressed.
    ``gates[layer]``: (Hkv,) float, 0 = compressed, 1 = whole (may require grad).
    """

    doc_len: int | None = None
    keep: dict[int, torch.Tensor] = field(default_factory=dict)
    gates: dict[int, torch.Tensor] = field(default_factory=dict)


def compressed_mask(mask, keep: torch.Tensor, query: torch.Tensor, k_len: int, additive: bool) -> torch.Tensor:
    """(B|1, H, Q, K) mask: the model's ``mask`` (None = causal, bool, additive float, or (B, K) padding) with
    the document keys that ``keep`` (Hkv, T) drops hidden from each KV head's query heads."""
    from ..core.hooks import query_logits

    h, q_len = query.shape[1], query.shape[2]
    hkv, doc_len = keep.shape
    zeros_q = torch.zeros(1, 1, q_len, 1, device=query.device)
    zeros_k = torch.zeros(1, 1, k_len, 1, device=query.device)
    visible = query_logits(zeros_q, zeros_k, mask, 1.0, rows=q_len) == 0  # (B|1, 1, Q, K): 0 where visible
    visible = visible.expand(-1, h, -1, -1).clone()
    visible[..., :doc_len] &= keep.to(query.device).repeat_interleave(h // hkv, 0)[None, :, None, :]
    if not additive:
        return visible
    return torch.zeros(visible.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~visible, torch.finfo(query.dtype).min)


def gated_attention(state: Gates, inner, implementation: str):
    """Wrap the attention function ``inner``: global layers with keep masks run it twice (whole and
    compressed) on query rows past ``state.doc_len`` and mix the outputs per head by ``state.gates``."""

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        layer = getattr(module, "layer_idx", None)
        keep = state.keep.get(layer) if state.doc_len is not None else None
        if keep is None or kwargs.get("sliding_window") or not isinstance(key, torch.Tensor) \
                or key.shape[2] <= state.doc_len:
            return inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        whole, _ = inner(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
        additive = implementation == "eager" or (attention_mask is not None and attention_mask.dtype != torch.bool)
        mask = compressed_mask(attention_mask, keep, query, key.shape[2], additive)
        part, _ = inner(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)
        gate = state.gates[layer].to(part.dtype).repeat_interleave(query.shape[1] // key.shape[1])  # (H,)
        return part + gate[None, None, :, None] * (whole - part), None  # (B, Q, H, D)

    return attention


@contextmanager
def gating(model, state: Gates) -> Iterator[Gates]:
    """Run ``model`` with ``gated_attention`` around its current attention function; always restore it."""
    from ..core.hooks import around_kernel

    try:
        with around_kernel(model, lambda kernel, name: gated_attention(state, kernel, name), "retrieval_heads_gate"):
            yield state
    finally:
        state.doc_len = None


@dataclass
class Sample:
    """One prompt's document cache and target: ``ids`` are the question and the full cache's answer."""

    id: str
    cache: object  # a DynamicCache holding the document (doc_len tokens)
    doc_len: int
    ids: list[int]  # question tokens, then the answer's
    answer_len: int
    observed: Observed
    answer: str


@torch.no_grad()
def prepare_sample(model, tokenizer, sample_id: str, prompt_ids: list[int], doc_len: int, *, obs_window: int,
                   max_new_tokens: int, chunk_size: int = 512) -> Sample:
    """Prefill ``prompt_ids[:doc_len]`` observing its last ``obs_window`` tokens; decode the full answer."""
    from transformers import DynamicCache

    from ..core.engine import stop_condition
    from .prefill import extend

    observer = ObservationWindow(obs_window)
    cache = DynamicCache(config=model.config)
    with capture_window(model, observer):
        observer.arm(doc_len)
        extend(model, cache, prompt_ids[:doc_len], 0, chunk_size=chunk_size)
        observed = observer.take(num_kv_heads(model.config))
    stop, answer = stop_condition(tokenizer, model), []
    step = torch.tensor([prompt_ids[doc_len:]], device=next(model.parameters()).device)
    with put_back(cache):
        for _ in range(max_new_tokens):
            token = int(model(input_ids=step, cache=cache, use_cache=True).logits[0, -1].argmax())
            if stop(token):
                break
            answer.append(token)
            step = step.new_tensor([[token]])
    return Sample(sample_id, cache, doc_len, list(prompt_ids[doc_len:]) + answer, len(answer), observed,
                  tokenizer.decode(answer))


def answer_logprob(model, sample: Sample, state: Gates) -> torch.Tensor:
    """Mean log-probability of ``sample``'s answer tokens under ``state`` (a scalar, differentiable in the
    gates); ``sample.cache`` holds the document again afterwards."""
    if sample.answer_len == 0:
        return torch.zeros(())
    ids = torch.tensor([sample.ids], device=next(model.parameters()).device)
    state.doc_len = sample.doc_len
    try:
        with put_back(sample.cache):
            logits = model(input_ids=ids, cache=sample.cache, use_cache=True,
                           logits_to_keep=sample.answer_len + 1).logits[0, :-1].float()
    finally:
        state.doc_len = None
    target = ids[0, -sample.answer_len:]
    return logits.log_softmax(-1).gather(1, target[:, None]).mean()


def keep_masks(observed: Observed, layers: list[int], count: int, *, sink: int) -> dict[int, torch.Tensor]:
    """Per layer, (Hkv, T) bool: the ``count`` document tokens SnapKV keeps for each KV head."""
    masks = {}
    for layer in layers:
        scores = observed.scores[layer]
        rows = torch.zeros(scores.shape[0], observed.total, dtype=torch.bool)
        for head in range(scores.shape[0]):
            rows[head, select_positions(scores[head], observed.total, count, sink=sink, window=observed.window)] = True
        masks[layer] = rows
    return masks


def compressed_count(budget: float, heads: int, whole: int, doc_len: int) -> int:
    """Tokens each of the ``heads - whole`` non-whole KV heads keeps when ``whole`` heads keep all ``doc_len``
    and all of them together hold ``budget`` of the bytes (as ``retrieval-snapkv`` splits and rounds them)."""
    return int(share_tokens(rest_share(budget, heads, whole), doc_len))


def objective(model, samples: list[Sample], state: Gates, masks: list[dict], whole: np.ndarray,
              *, grad: bool) -> tuple[float, np.ndarray | None]:
    """Mean over ``samples`` of the answer's mean log-probability with ``whole`` (layers, Hkv) KV heads whole;
    with ``grad`` also its gradient in every gate, (layers, Hkv)."""
    layers = sorted(masks[0])
    total, grads = 0.0, np.zeros(whole.shape)
    for sample, keep in zip(samples, masks):
        state.keep = keep
        state.gates = {l: torch.tensor(whole[l], dtype=torch.float32, requires_grad=grad) for l in layers}
        with torch.set_grad_enabled(grad):
            value = answer_logprob(model, sample, state)
            if grad and value.requires_grad:
                found = torch.autograd.grad(value, [state.gates[l] for l in layers], allow_unused=True)
                for layer, g in zip(layers, found):
                    if g is not None:
                        grads[layer] += g.numpy()
        total += float(value.detach())
    n = max(1, len(samples))
    return total / n, (grads / n if grad else None)


def greedy_restore(model, samples: list[Sample], masks: list[dict], eligible: np.ndarray, steps: int,
                   on_step=None) -> list[dict]:
    """Make ``steps`` KV heads whole, one at a time, each the best by the gradient of ``objective`` at the
    heads chosen so far. ``on_step(step)`` gets each step's record as it is made; returns them all."""
    num_kv = next(iter(masks[0].values())).shape[0]
    whole = np.zeros((len(eligible), num_kv))
    chosen, state = [], Gates()
    with gating(model, state):
        before, _ = objective(model, samples, state, masks, whole, grad=False)
        for index in range(steps):
            _, grads = objective(model, samples, state, masks, whole, grad=True)
            grads[~eligible] = -np.inf
            grads[whole > 0] = -np.inf
            layer, head = np.unravel_index(int(np.argmax(grads)), grads.shape)
            whole[layer, head] = 1.0
            after, _ = objective(model, samples, state, masks, whole, grad=False)
            step = {"step": index, "kv_head": f"{layer}-{head}", "layer": int(layer), "head": int(head),
                    "estimated_gain": float(grads[layer, head]), "objective_before": before, "objective": after}
            chosen.append(step)
            if on_step:
                on_step(step)
            before = after
    return chosen


def order_scores(steps: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """(layers, Hkv): the i-th of n chosen KV heads scores 1 - 0.5 i / n (in (0.5, 1]); the rest 0."""
    scores = np.zeros(shape)
    for i, step in enumerate(steps):
        scores[step["layer"], step["head"]] = 1.0 - 0.5 * i / len(steps)
    return scores


@dataclass
class RestoreResult:
    scores: HeadScores
    summary: dict
    out: Path


def run_restore(loaded: LoadedModel, config: SweepConfig, out: str | Path, *, budget: float = 0.15,
                full_share: float = 0.8, sink: int = DEFAULT_SINK, obs_window: int = DEFAULT_OBS_WINDOW,
                steps: int | None = None, overwrite: bool = False, progress: bool = True) -> RestoreResult:
    """Restore scores of ``loaded`` over the NIAH grid of ``config`` (query-agnostic); results go to ``out``.

    ``budget`` (fraction of KV bytes) and ``full_share`` fix, as ``retrieval-snapkv`` would, how many KV heads
    go whole (``steps``, unless given) and how many tokens the others keep. Every prompt's document cache is
    held in memory during the selection. Each chosen head is appended to ``steps.jsonl`` as it is chosen;
    ``head_scores.json`` and ``summary.json`` are written at the end, also when interrupted.
    """
    from ..sweep.haystack import question_start
    from ..sweep.runner import progress_bar

    if loaded.layout.is_hybrid:
        raise UserError(f"{loaded.name} is a hybrid model whose cache also holds recurrent state, which restore "
                        "scoring cannot hold per prompt")
    if not 0 < budget <= 1 or not 0 <= full_share <= 1:
        raise UserError("--budgets is a fraction in (0, 1] and --full-share a share in [0, 1]")
    eligible = eligible_layers(loaded.model.config)
    check_eligible(eligible, loaded.name)
    heads = int(eligible.sum()) * loaded.num_kv_heads
    steps = whole_head_count(full_share, budget, heads) if steps is None else steps
    if not 0 < steps < heads:
        raise UserError(f"restore chooses between 1 and {heads - 1} KV heads; budget {budget:g} and full share "
                        f"{full_share:g} give {steps}")
    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    run = RunDir(out, STEPS)
    settings = {"budget": budget, "full_share": full_share, "sink": sink, "obs_window": obs_window, "steps": steps}
    run.start({**config.identity(inputs.needles, inputs.haystack_text), "criterion": CRITERION, **settings},
              config.to_dict(), resume=False, overwrite=overwrite)
    start, samples, masks = time.perf_counter(), [], []
    layers = np.flatnonzero(eligible).tolist()
    try:
        bar = progress_bar(len(inputs.specs), progress, 0)
        for spec in inputs.specs:
            prompt = inputs.prompts[spec.id]
            doc_len = question_start(loaded.tokenizer, prompt)
            sample = prepare_sample(loaded.model, loaded.tokenizer, spec.id, prompt.ids, doc_len,
                                    obs_window=obs_window, max_new_tokens=config.max_new_tokens,
                                    chunk_size=config.chunk_size)
            samples.append(sample)
            masks.append(keep_masks(sample.observed, layers, compressed_count(budget, heads, steps, doc_len),
                                    sink=sink))
            bar.update(1)
        bar.close()
        greedy_restore(loaded.model, samples, masks, eligible, steps,
                       on_step=lambda step: run.append({**step, "id": step["kv_head"]}))
    finally:
        result = finalize(loaded, config, run, samples, settings, time.perf_counter() - start)
    return result


def finalize(loaded: LoadedModel, config: SweepConfig, run: RunDir, samples: list[Sample], settings: dict,
             seconds: float) -> RestoreResult:
    """Scores from the steps in ``run`` into ``head_scores.json`` and ``summary.json``."""
    info = loaded.info
    steps = sorted(read_jsonl(run.records_path), key=lambda s: s["step"]) if run.records_path.exists() else []
    kv = order_scores(steps, (info.num_layers, loaded.num_kv_heads))
    per_query = np.repeat(kv, info.num_heads // loaded.num_kv_heads, axis=1)  # each query head its KV head's
    scores = HeadScores(per_query[None], model=info.name, applicable=info.applicable())
    scores.save_paper_json(run.path / "head_scores.json")
    summary = {
        **info.to_summary(), "criterion": CRITERION, "config": config.to_dict(), **settings,
        "samples": len(samples), "successes": len(samples), "chosen_kv_heads": [s["kv_head"] for s in steps],
        "objective_all_compressed": steps[0]["objective_before"] if steps else None,
        "objective_chosen": steps[-1]["objective"] if steps else None,
        "answers": {s.id: s.answer for s in samples},
        **head_fields(scores, info.num_kv_heads),
        "timing": {"model_load_s": loaded.load_seconds, "wall_s": seconds},
    }
    run.write_json("summary.json", summary)
    scores.meta.update(format="run", source=str(run.path), run_dir=str(run.path), summary=summary)
    return RestoreResult(scores, summary, run.path)
