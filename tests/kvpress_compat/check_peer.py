"""Check of ``benchmarks/kvpress_peer.py`` (kvpress's presses on kv-eval's prompts) on a tiny random Llama.

kvpress 0.5.5 declares ``transformers<5.3``, so this runs in its own environment, not under pytest
(``.ci/run`` builds one; the scorer of the default needles also wants ``rouge-score`` there, this check uses
a RULER set, scored by string match): ``PYTHONPATH=. python tests/kvpress_compat/check_peer.py``.

A random Llama (2 layers, 4 query heads, 2 KV heads) with SmolLM2's tokenizer (from the model cache,
``retrieval-heads models pull smollm2-135m``; a random 49152-token vocabulary otherwise is not possible
offline), 2 RULER niah_single_2 prompts of 400 tokens, both settings. Checks, exiting 1 at the first failure:

1. the prompts are kv-eval's: the harness's context + question ids are ``prepare``'s ids, and its full-cache
   answer (kvpress's pipeline, no press) is the answer of kv-eval's own engine (chunked prefill of all but
   the last token, then greedy decoding with kv-eval's stop rule), in both settings. The engine runs in this
   project's own environment (``.venv/bin/python`` of the checkout, or ``$RH_PYTHON``; skipped with a note when
   there is none): under kvpress's transformers 5.2 the engine's greedy tokens differ from a plain forward
   pass's, under 5.25 they agree;
2. at budget 1.0 every press gives the full-cache answer and keeps 100% of the bytes;
3. at budgets 0.1, 0.3 and 0.5 the bytes measured from the cache are the budget within one token per KV head
   (1/T) for token presses; for DuoAttention they are what round(h * heads) streaming heads keep, within half a
   head's share of the budget; dropping presses shrink the tensors, masking presses (AdaKV, KVzip, Duo) keep
   them whole and mask;
4. a budget under DuoAttention's sink + recent is recorded as unreachable, not run;
5. ``--resume`` runs nothing twice; the summary and its markdown table are written.
DuoAttention on the fly (kvpress's scores from BookSum) is tried once, at budget 1.0 (its sink 128 + recent 256
exceed these prompts), and reported; offline it cannot load its data set, which is not a failure of this check.
Masking presses need a fake key that every query of the question scores ~-inf; the random model's queries are
given a shared direction (a q_proj bias) so that one exists, as a trained model's do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kvpress_peer as peer  # noqa: E402
from retrieval_heads.analysis.formats import save_scores  # noqa: E402
from retrieval_heads.core.head_scores import HeadScores  # noqa: E402
from retrieval_heads.models import load_model  # noqa: E402
from retrieval_heads.sweep.grid import SweepConfig, prepare  # noqa: E402

TOKENIZER = Path(os.path.expanduser("~/.cache/retrieval-heads/models/smollm2-135m"))
LAYERS, HEADS, KV_HEADS, HEAD_DIM = 2, 4, 2, 16
SINK, RECENT = 4, 16  # the duo pattern's, small enough for 400-token prompts
BUDGETS = [0.1, 0.3, 0.5]
MASKING = ("kvzip", "adakv-snapkv", "adakv-expected-attention", "duo-pattern")


def tiny_model_dir(directory: Path) -> str:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                         max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, attention_bias=True)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # larger logits, so that greedy choices are far from ties
        # Masking presses (AdaKV, KVzip, DuoAttention) hide keys behind a fake key that every query of the
        # question must score ~-inf (attention_patch.search_hyperplane). Random queries have no such common
        # half-space; a trained model's share a direction. Give the queries one, in the slowest RoPE pair.
        for layer in model.model.layers:
            attention = layer.self_attn
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj):
                proj.bias.zero_()
            layer.self_attn.q_proj.bias.view(HEADS, HEAD_DIM)[:, HEAD_DIM // 2 - 1] = 8.0
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def sweep(path: str) -> SweepConfig:
    return SweepConfig(model=path, needles="ruler:niah_single_2:seed=3:n=2", haystack="paul-graham", lengths=[400],
                       depths=[50], max_new_tokens=8)


def engine_answers(path: str) -> dict[str, str]:
    """kv-eval's full-cache answers: the engine's chunked prefill of ids[:-1], greedy decoding, its stop rule."""
    from retrieval_heads.core.engine import Engine, stop_condition
    from retrieval_heads.core.hooks import AttentionControl

    loaded = load_model(path, attn_implementation="sdpa")
    inputs = prepare(sweep(path), loaded.tokenizer, loaded.max_context)
    engine = Engine(loaded.model, AttentionControl(), stop_condition(loaded.tokenizer, loaded.model), chunk_size=128,
                    share_prefix=False)
    found = {}
    for spec in inputs.specs:
        generation = engine.generate(inputs.prompts[spec.id].ids, 8, probe=False)
        found[spec.id] = loaded.tokenizer.decode(generation.generated_ids, skip_special_tokens=True).strip()
    return found


def reference_answers(path: str) -> tuple[dict[str, str] | None, str]:
    """``engine_answers`` run by this project's own environment (transformers 5.x as it requires: the engine's
    greedy tokens differ under kvpress's transformers 5.2); None when there is none."""
    python = os.environ.get("RH_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
    if not Path(python).exists():
        return None, f"no project environment at {python} (set RH_PYTHON)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([python, __file__, "--engine-answers", path], capture_output=True, text=True, env=env,
                          timeout=300)
    if done.returncode:
        raise AssertionError(f"kv-eval's engine failed in {python}:\n{done.stderr[-2000:]}")
    version = subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    return json.loads(done.stdout.strip().splitlines()[-1]), f"{python}, transformers {version}"


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def main() -> int:
    if not TOKENIZER.exists():
        print(f"check_peer SKIPPED: no SmolLM2 tokenizer at {TOKENIZER} (retrieval-heads models pull smollm2-135m)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tiny_model_dir(tmp / "tiny")
        loaded = load_model(path, attn_implementation="sdpa")
        config = sweep(path)
        inputs = prepare(config, loaded.tokenizer, loaded.max_context)
        kv_eval, reference = reference_answers(path)
        scores = HeadScores(np.random.default_rng(0).random((3, LAYERS, HEADS)), model="tiny")
        pattern = str(save_scores(scores, tmp / "pattern", "duo", num_kv_heads=KV_HEADS, sink=SINK, recent=RECENT))
        presses = ["full"] + list(peer.TOKEN_PRESSES) + ["duo-pattern"]
        out = tmp / "run"
        kwargs = dict(presses=presses, settings=list(peer.SETTINGS), pattern_dir=pattern, duo_sink=SINK,
                      duo_recent=RECENT, progress=False)
        peer.run(loaded, config, out, budgets=[1.0] + BUDGETS + [0.01], **kwargs)
        rows = list(peer.read_rows(out / peer.ROWS))
        errors = [r for r in rows if "error" in r]
        check(not errors, f"presses failed: {sorted({(r['press'], r['error']) for r in errors})}")
        by = {peer.row_key(r): r for r in rows}

        # 1. kv-eval's prompts and answers
        for spec in inputs.specs:
            ids = inputs.prompts[spec.id].ids
            for setting in peer.SETTINGS:
                full = by[(spec.id, setting, "full", 1.0)]
                check(full["prompt_tokens"] == len(ids), "prompt length differs from prepare's")
                check(full["kept_fraction"] == 1.0, f"full cache keeps {full['kept_fraction']}")
                check(kv_eval is None or full["response"] == kv_eval[spec.id],
                      f"{spec.id} {setting}: kvpress full answer {full['response']!r} != kv-eval's "
                      f"{kv_eval[spec.id]!r}")
            agnostic = by[(spec.id, "agnostic", "full", 1.0)]
            check(agnostic["context_tokens"] < len(ids) - 1, "agnostic context holds the question")

        # 2.-4. every press, every budget
        worst = {}
        for r in rows:
            if r["press"] == "full":
                continue
            key = f"{r['id']} {r['setting']} {r['press']} {r['budget']:g}"
            full = by[(r["id"], r["setting"], "full", 1.0)]
            tokens = r["context_tokens"]
            if r["budget"] == 0.01:
                check(("unreachable" in r) == r["press"].startswith("duo"),
                      f"{key}: unreachable is {'unreachable' in r}")
                if "unreachable" in r:
                    continue
            if r["budget"] == 1.0:
                check(r["response"] == full["response"], f"{key}: {r['response']!r} != full {full['response']!r}")
                check(r["kept_fraction"] == 1.0, f"{key}: keeps {r['kept_fraction']}")
                continue
            gap = abs(r["kept_fraction"] - r["budget"])
            if r["press"].startswith("duo"):
                check(abs(r["kept_fraction"] - r["nominal_fraction"]) < 1e-9,
                      f"{key}: kept {r['kept_fraction']} != round(h * heads) heads' {r['nominal_fraction']}")
                limit = (1 - (SINK + RECENT) / tokens) / (2 * LAYERS * KV_HEADS) + 1e-9
            else:
                limit = 1 / tokens + 1e-9
            check(gap <= limit, f"{key}: kept {r['kept_fraction']:.4f} vs budget (limit {limit:.4f})")
            worst[r["press"]] = max(worst.get(r["press"], 0.0), gap)
            masking = r["press"] in MASKING
            check((r["physical_kv_bytes"] == r["full_kv_bytes"]) == masking,
                  f"{key}: physical {r['physical_kv_bytes']} of {r['full_kv_bytes']} bytes (masking={masking})")

        # 5. resume runs nothing twice; summary written
        before = len(rows)
        summary = peer.run(loaded, config, out, budgets=[1.0] + BUDGETS + [0.01], resume=True, **kwargs)
        check(len(list(peer.read_rows(out / peer.ROWS))) == before, "--resume ran rows again")
        check((out / "summary.md").exists() and summary["rows"], "no summary")
        table = (out / "summary.md").read_text()

        # DuoAttention on the fly: tried once, reported
        fly = tmp / "fly"
        peer.run(loaded, config, fly, budgets=[1.0], presses=["duo-on-the-fly"], settings=["agnostic"],
                 pattern_dir=None, duo_sink=SINK, duo_recent=RECENT, progress=False)
        fly_rows = list(peer.read_rows(fly / peer.ROWS))
        fly_note = (fly_rows[0].get("error") or fly_rows[0].get("unreachable")
                    or f"ran, kept {fly_rows[0]['kept_fraction']:.3f}")

    print(table)
    same = f"equal kv-eval's engine ({reference})" if kv_eval else f"NOT compared with kv-eval's engine: {reference}"
    print(f"kvpress peer harness: {before} rows, {len(inputs.specs)} prompts x 2 settings; full-cache answers {same}; "
          f"budget 1.0 reproduces them for all {len(presses) - 1} presses; kept bytes within "
          "tolerance, largest |kept - budget|: " + ", ".join(f"{p} {g:.4f}" for p, g in worst.items()))
    print(f"duo-on-the-fly: {fly_note}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--engine-answers"]:  # run by reference_answers in the project's environment
        print(json.dumps(engine_answers(sys.argv[2])))
        sys.exit(0)
    sys.exit(main())
