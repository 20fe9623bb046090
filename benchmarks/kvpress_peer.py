"""kvpress 0.5.5's own presses on exactly the prompts ``retrieval-heads kv-eval`` builds (issue 25, item 4).

Runs in kvpress's own environment (kvpress 0.5.5 declares ``transformers<5.3`` and installs 5.2; what this
package needs there is what kvpress installs, plus rouge-score for the built-in needles' scorer), with this
checkout on ``PYTHONPATH``:

    python3 -m venv .venv-kvpress
    .venv-kvpress/bin/pip install torch==2.13.0 && .venv-kvpress/bin/pip install kvpress==0.5.5 rouge-score
    PYTHONPATH=. .venv-kvpress/bin/python benchmarks/kvpress_peer.py --needles ruler:niah_single_2:seed=3:n=4 \\
        --haystack paul-graham --lengths 4000 --depths 25,50,75 --budgets 0.05,0.1,0.2,0.5 \\
        --scores runs/smollm2-135m/detect --out runs/smollm2-135m/kvpress-peer

* **Prompts**: the sweep flags are kv-eval's own (``cli.common.add_sweep_args``, ``sweep_config_from_args``)
  and the prompts come from ``sweep.grid.prepare``, so every sample's token ids are kv-eval's. kvpress's
  pipeline would apply the chat template and tokenise a string itself; instead our ids go straight into
  ``KVPressTextGenerationPipeline._forward`` (kvpress's prefill under the press, then its greedy decoding
  of the question from the compressed cache), with ``context_ids`` and ``questions_ids`` split as below.
* **Settings** (``--settings``): ``question`` is kv-eval's default (the question in the prompt):
  ``context_ids`` = every prompt token but the last, ``questions_ids`` = the last token, so the press
  compresses a context that ends with the question (SnapKV's observation window holds the question).
  ``agnostic`` is ``kv-eval --query-agnostic`` and kvpress's own pipeline setting: ``context_ids`` end with
  the document (``haystack.question_start``), the question is prefilled into the compressed cache.
* **Budgets** are fractions of the full cache's KV bytes for the compressed tokens (the context), as
  kv-eval's ``compressed_kv_fraction``. Token presses (``ScorerPress``es, AdaKV, KVzip):
  ``compression_ratio = 1 - budget`` (kvpress keeps ``int(T * budget)`` tokens per head, or that many on
  average for AdaKV and KVzip). DuoAttention: ``bytes = (1 - h) * full + h * full * (sink + recent) / T``,
  so ``head_compression_ratio h = (1 - budget) / (1 - (sink + recent) / T)``; kvpress streams
  ``round(h * heads)`` KV heads. A budget below ``(sink + recent) / T`` cannot be met: its row says
  ``unreachable`` and is not run. ``duo-pattern`` streams the lowest-scoring KV heads of ``--scores`` (exported as
  ``convert --format duo`` does; sink and recent ``--duo-sink 64 --duo-recent 384``, kv-eval's ``--sink`` and
  ``--window``); ``duo-on-the-fly`` is kvpress's own scoring (``on_the_fly_scoring=True``: 50 BookSum chapters
  from the Hugging Face hub, sink 128, recent 256), which needs the hub.
* **Kept bytes** are measured from the cache after the answer (kvpress's pipeline cuts the question and
  answer back off, so the cache holds the compressed context): the bytes of its key and value tensors,
  less the (KV head, token) pairs kvpress masks instead of dropping (``module.masked_key_indices``: AdaKV,
  KVzip, DuoAttention; ``physical_kv_bytes`` keeps what the tensors still hold).
* **Decoding and scoring**: kvpress's greedy loop with its stop ids set to ours (EOS and every token whose
  text has a newline, ``engine.stop_condition``), and the answer cut at its first newline (kvpress checks
  the stop ids only from the second token on); scored by ``masking.niah.niah_record`` (RULER's string match
  for ``ruler:`` sets), as kv-eval scores its answers.

kvpress prefills the context in one forward pass (its hooks compress only a prefill that starts at position 0),
so every row is its own prefill. A row whose press raises (e.g. a masking press that finds no fake key for the
question's queries) records the error and the run goes on.

Writes ``OUT/rows.jsonl`` (one row per sample x setting x press x budget, appended as each finishes;
``--resume`` skips rows already there), ``OUT/summary.json`` and ``OUT/summary.md`` (mean score with a
95% bootstrap interval over samples, share of the same setting's full cache, kept bytes).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SETTINGS = ("question", "agnostic")
TOKEN_PRESSES = ("snapkv", "knorm", "streaming-llm", "expected-attention", "kvzip", "adakv-snapkv",
                 "adakv-expected-attention")
PRESSES = ("full",) + TOKEN_PRESSES + ("duo-pattern", "duo-on-the-fly")
DEFAULT_PRESSES = ("full",) + TOKEN_PRESSES + ("duo-pattern",)
DEFAULT_BUDGETS = (0.05, 0.1, 0.2, 0.5)
# kvpress 0.5.5 duo_attention_press.py: on-the-fly scoring sets sink_size, recent_size = 128, 256
ON_THE_FLY_SINK, ON_THE_FLY_RECENT = 128, 256
ROWS, SUMMARY = "rows.jsonl", "summary.json"


class Unreachable(Exception):
    """A budget the press cannot meet (DuoAttention below its sink + recent window)."""


# ---- budgets -> each press's own setting (pure; no kvpress needed) ----------------------------------------------

def compression_ratio(budget: float) -> float:
    """kvpress's ``compression_ratio`` (fraction of context tokens removed) for a share ``budget`` of KV bytes."""
    if not 0 < budget <= 1:
        raise ValueError(f"budget must lie in (0, 1], not {budget}")
    return max(0.0, 1.0 - budget)


def head_ratio(budget: float, tokens: int, sink: int, recent: int) -> float:
    """DuoAttention's ``head_compression_ratio`` h with (1 - h) + h (sink + recent) / tokens = budget."""
    if budget >= 1:
        return 0.0
    window = min(sink + recent, tokens) / tokens
    if window >= 1 or budget < window:
        raise Unreachable(f"DuoAttention keeps at least sink {sink} + recent {recent} of {tokens} tokens "
                          f"({window:.1%} of the bytes) even with every KV head streaming")
    return (1 - budget) / (1 - window)


def duo_fraction(h: float, heads: int, tokens: int, sink: int, recent: int) -> float:
    """The share of KV bytes kvpress's DuoAttentionPress keeps: ``round(h * heads)`` heads stream."""
    streaming = round(heads * h) / heads
    return 1 - streaming * (1 - min(sink + recent, tokens) / tokens)


@dataclass
class Built:
    press: object | None  # a kvpress press; None: full cache
    setting: dict  # what the press was given


def build_press(name: str, budget: float, tokens: int, *, heads: int, pattern_dir: str | None = None,
                duo_sink: int = 0, duo_recent: int = 0) -> Built:
    """The kvpress press ``name`` at ``budget`` (share of KV bytes) for a context of ``tokens`` tokens."""
    import kvpress

    if name == "full":
        return Built(None, {})
    if name in TOKEN_PRESSES:
        ratio = compression_ratio(budget)
        inner = {"snapkv": kvpress.SnapKVPress, "knorm": kvpress.KnormPress,
                 "streaming-llm": kvpress.StreamingLLMPress, "expected-attention": kvpress.ExpectedAttentionPress,
                 "adakv-snapkv": kvpress.SnapKVPress, "adakv-expected-attention": kvpress.ExpectedAttentionPress}
        if name == "kvzip":
            return Built(kvpress.KVzipPress(compression_ratio=ratio), {"compression_ratio": ratio})
        press = inner[name](compression_ratio=ratio)
        if name.startswith("adakv-"):
            press = kvpress.AdaKVPress(press)
        return Built(press, {"compression_ratio": ratio})
    if name == "duo-pattern":
        from retrieval_heads.kv.press import duo_attention_press

        h = head_ratio(budget, tokens, duo_sink, duo_recent)
        return Built(duo_attention_press(pattern_dir, h),
                     {"head_compression_ratio": h, "sink": duo_sink, "recent": duo_recent,
                      "nominal_fraction": duo_fraction(h, heads, tokens, duo_sink, duo_recent)})
    if name == "duo-on-the-fly":
        h = head_ratio(budget, tokens, ON_THE_FLY_SINK, ON_THE_FLY_RECENT)
        return Built(kvpress.DuoAttentionPress(head_compression_ratio=h, on_the_fly_scoring=True),
                     {"head_compression_ratio": h, "sink": ON_THE_FLY_SINK, "recent": ON_THE_FLY_RECENT,
                      "nominal_fraction": duo_fraction(h, heads, tokens, ON_THE_FLY_SINK, ON_THE_FLY_RECENT)})
    raise ValueError(f"unknown press {name!r}; choose from {', '.join(PRESSES)}")


# ---- measuring and running ----------------------------------------------------------------------------------------

def kept_bytes(model, cache, tokens: int) -> dict:
    """Bytes of the compressed context in ``cache``: its tensors, less the (head, token) pairs kvpress masks."""
    physical = masked = full = 0
    layers = model.model.layers
    for index, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        physical += keys.numel() * keys.element_size() + values.numel() * values.element_size()
        _, kv_heads, _, head_dim = keys.shape
        per_pair = head_dim * (keys.element_size() + values.element_size())
        full += tokens * kv_heads * per_pair
        found = getattr(layers[index].self_attn, "masked_key_indices", None)
        if found is not None:
            masked += len(found[0]) * per_pair
    return {"physical_kv_bytes": physical, "kept_kv_bytes": physical - masked, "full_kv_bytes": full,
            "kept_fraction": (physical - masked) / full if full else None}


def stop_ids(loaded) -> list[int]:
    """Every token id kv-eval's decoding stops at (``engine.stop_condition``: EOS, or a newline in its text)."""
    from retrieval_heads.core.engine import stop_condition

    stop = stop_condition(loaded.tokenizer, loaded.model)
    return [i for i in range(len(loaded.tokenizer)) if stop(i)]


def split_at(setting: str, tokenizer, prompt) -> int:
    """Where ``prompt``'s ids split into kvpress's ``context_ids`` and ``questions_ids`` in ``setting``."""
    from retrieval_heads.sweep.haystack import question_start

    if setting == "question":
        return len(prompt.ids) - 1
    if setting == "agnostic":
        return question_start(tokenizer, prompt)
    raise ValueError(f"unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")


def answer(pipe, ids: list[int], split: int, built: Built, max_new_tokens: int):
    """kvpress's compression and greedy decoding on our ids; returns (raw answer, cache, seconds)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    inputs = {"context_ids": torch.tensor([ids[:split]]), "questions_ids": [torch.tensor([ids[split:]])]}
    start = time.perf_counter()
    with torch.no_grad():
        raw = pipe._forward(inputs, max_new_tokens=max_new_tokens, press=built.press, cache=cache)[0]
    return raw, cache, time.perf_counter() - start


def score(loaded, inputs, spec, response: str) -> dict:
    """kv-eval's record of ``response`` (``niah_record``: score, contains_answer, failure)."""
    from retrieval_heads.masking.heads import MaskPlan
    from retrieval_heads.masking.niah import niah_record

    # niah_record decodes generation.generated_ids with the tokenizer and strips; the answer is already text
    view = SimpleNamespace(name=loaded.name, tokenizer=SimpleNamespace(decode=lambda ids, **kw: response))
    record = niah_record(view, MaskPlan(), spec, SimpleNamespace(generated_ids=[]), inputs)
    return {k: record[k] for k in ("response", "score", "contains_answer", "failure") if k in record}


def cut(raw: str) -> str:
    """The answer up to its first newline, as kv-eval's decoding stops there."""
    return raw.split("\n", 1)[0]


def row_key(row: dict) -> tuple:
    return row["id"], row["setting"], row["press"], float(row["budget"])


def run(loaded, config, out: Path, *, presses: list[str], budgets: list[float], settings: list[str],
        pattern_dir: str | None, duo_sink: int, duo_recent: int, resume: bool = False, progress: bool = True) -> dict:
    """Every sample x setting x press x budget (``full`` once, at budget 1); rows appended to ``out/rows.jsonl``."""
    from transformers import pipeline

    import kvpress  # noqa: F401  (registers the kv-press-text-generation pipeline, patches attention)

    logging.getLogger("kvpress.presses.kvzip_press").setLevel(logging.ERROR)  # its cost warning, once per press
    from retrieval_heads.sweep.grid import prepare

    out.mkdir(parents=True, exist_ok=True)
    identity = {"model": loaded.name, "config": config.to_dict(), "kvpress": kvpress_version(),
                "duo_sink": duo_sink, "duo_recent": duo_recent, "pattern_dir": pattern_dir}
    ident_path = out / "run.json"
    rows_path = out / ROWS
    if rows_path.exists() and not resume:
        raise SystemExit(f"{rows_path} exists: pass --resume to continue it or --overwrite to start again")
    if ident_path.exists() and resume:
        saved = json.loads(ident_path.read_text())
        if saved != json.loads(json.dumps(identity)):
            raise SystemExit(f"{ident_path}: --resume on a run of another model, sweep or pattern")
    ident_path.write_text(json.dumps(identity, indent=1))
    done = {row_key(r) for r in read_rows(rows_path)}

    inputs = prepare(config, loaded.tokenizer, loaded.max_context)
    model = loaded.model
    model.generation_config.eos_token_id = stop_ids(loaded)  # kvpress's loop stops where kv-eval's does
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=loaded.tokenizer)
    config_text = model.config.get_text_config()
    heads = config_text.num_hidden_layers * (getattr(config_text, "num_key_value_heads", None)
                                             or config_text.num_attention_heads)
    jobs = [(spec, setting, press, 1.0 if press == "full" else budget)
            for spec in inputs.specs for setting in settings for press in presses
            for budget in ([1.0] if press == "full" else budgets)]
    todo = [j for j in jobs if (j[0].id, j[1], j[2], float(j[3])) not in done]
    if progress:
        print(f"{len(jobs)} rows, {len(jobs) - len(todo)} already in {rows_path}", file=sys.stderr)
    failed: dict[str, str] = {}
    for n, (spec, setting, name, budget) in enumerate(todo, 1):
        prompt = inputs.prompts[spec.id]
        split = split_at(setting, loaded.tokenizer, prompt)
        row = {"id": spec.id, "setting": setting, "press": name, "budget": budget, "context_tokens": split,
               "question_tokens": len(prompt.ids) - split, "prompt_tokens": len(prompt.ids)}
        try:
            built = build_press(name, budget, split, heads=heads, pattern_dir=pattern_dir, duo_sink=duo_sink,
                                duo_recent=duo_recent)
        except Unreachable as exc:
            append_row(rows_path, {**row, "unreachable": str(exc)})
            continue
        if name in failed:
            append_row(rows_path, {**row, **built.setting, "error": failed[name]})
            continue
        try:
            raw, cache, seconds = answer(pipe, prompt.ids, split, built, config.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - a press that cannot run here is recorded, the rest go on
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
            if name == "duo-on-the-fly":  # its scores fail the same way for every row (offline: no BookSum)
                failed[name] = error
            print(f"{spec.id} {setting} {name} {budget:g} failed: {error}", file=sys.stderr)
            append_row(rows_path, {**row, **built.setting, "error": error})
            continue
        measured = kept_bytes(model, cache, split)
        row.update(built.setting)
        row.update(measured)
        row.update(score(loaded, inputs, spec, cut(raw)))
        row.update({"answer_raw": raw, "seconds": round(seconds, 3)})
        append_row(rows_path, row)
        if progress:
            print(f"[{n}/{len(todo)}] {spec.id} {setting} {name} {budget:g}: score {row['score']:.0f} "
                  f"kept {measured['kept_fraction']:.3f} ({seconds:.1f} s)", file=sys.stderr)
    rows = list(read_rows(rows_path))
    summary = summarize(rows)
    summary.update(identity)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(markdown(summary))
    return summary


def kvpress_version() -> str:
    from importlib.metadata import version

    return version("kvpress")


def read_rows(path: Path):
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                yield json.loads(line)


def append_row(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


# ---- summary ------------------------------------------------------------------------------------------------------

def bootstrap(values: np.ndarray, draws: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean (2000 resamples, seed 0, as ``benchmarks/kv_table.py``)."""
    if len(values) == 0:
        return math.nan, math.nan
    picks = np.random.default_rng(seed).integers(0, len(values), (draws, len(values)))
    means = values[picks].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(rows: list[dict]) -> dict:
    """One entry per (setting, press, budget): samples, mean score [95% CI], share of full, kept bytes."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setting"], r["press"], float(r["budget"])), []).append(r)
    full = {s: {r["id"]: r["score"] for r in rows if r["setting"] == s and r["press"] == "full" and "score" in r}
            for s in {r["setting"] for r in rows}}
    entries = []
    for (setting, press, budget), found in sorted(groups.items(), key=lambda kv: (kv[0][0], PRESSES.index(kv[0][1])
                                                                                  if kv[0][1] in PRESSES else 99,
                                                                                  kv[0][2])):
        scored = [r for r in found if r.get("score") is not None]
        entry = {"setting": setting, "press": press, "budget": budget, "samples": len(scored),
                 "unreachable": sum("unreachable" in r for r in found), "errors": sorted({r["error"] for r in found
                                                                                         if "error" in r})}
        if scored:
            values = np.array([r["score"] for r in scored], dtype=float)
            low, high = bootstrap(values)
            entry.update(mean_score=float(values.mean()), low=low, high=high,
                         contains=int(sum(bool(r.get("contains_answer")) for r in scored)),
                         kept_fraction=float(np.mean([r["kept_fraction"] for r in scored])),
                         seconds=float(np.mean([r["seconds"] for r in scored])))
            paired = [(r["score"], full[setting][r["id"]]) for r in scored if r["id"] in full.get(setting, {})]
            if paired and press != "full":
                a, b = (np.array(x, dtype=float) for x in zip(*paired))
                picks = np.random.default_rng(0).integers(0, len(a), (2000, len(a)))
                shares = a[picks].mean(1) / np.maximum(b[picks].mean(1), 1e-9)
                entry.update(share_of_full=float(a.mean() / max(b.mean(), 1e-9)),
                             share_low=float(np.percentile(shares, 2.5)), share_high=float(np.percentile(shares, 97.5)))
        entries.append(entry)
    return {"rows": entries}


def markdown(summary: dict) -> str:
    """A table per setting: presses down, budgets across; cells 'mean [95% CI] (kept bytes)'."""
    lines = []
    for setting in SETTINGS:
        entries = [e for e in summary["rows"] if e["setting"] == setting]
        if not entries:
            continue
        budgets = sorted({e["budget"] for e in entries if e["press"] != "full"})
        title = "question in the prompt (kv-eval default)" if setting == "question" else \
            "query-agnostic (kv-eval --query-agnostic; kvpress's pipeline)"
        lines += [f"### {title}", "", "| press | " + " | ".join(f"{b:.0%} of KV bytes" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for e in entries:
            if e["press"] == "full":
                lines.append(f"| full cache: {cell(e)} | " + " | " * (len(budgets) - 1) + " |")
        for press in [p for p in PRESSES if p != "full"]:
            mine = {e["budget"]: e for e in entries if e["press"] == press}
            if mine:
                lines.append(f"| {press} | " + " | ".join(cell(mine[b]) if b in mine else "" for b in budgets) + " |")
        lines.append("")
    lines.append("Cells: mean score [95% bootstrap interval over samples] (kept share of the context's KV bytes, "
                 "measured); n/a: budget below DuoAttention's sink + recent window; error: the press did not run.")
    return "\n".join(lines) + "\n"


def cell(e: dict) -> str:
    if e.get("mean_score") is None:
        return "error" if e["errors"] else "n/a"
    return f"{e['mean_score']:.1f} [{e['low']:.1f}, {e['high']:.1f}] ({e['kept_fraction']:.1%})"


# ---- command line -------------------------------------------------------------------------------------------------

def pattern_from(scores: str, out: Path, loaded, sink: int, recent: int) -> str:
    """A DuoAttention pattern directory: ``scores`` itself if it is one, else ``scores`` exported to
    ``out/duo_pattern`` (``convert --format duo``'s code: each KV head's max score)."""
    from retrieval_heads.analysis.formats import load_scores, save_scores

    if (Path(scores) / "full_attention_heads.tsv").exists():
        return scores
    config = loaded.model.config.get_text_config()
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return str(save_scores(load_scores(scores), out / "duo_pattern", "duo", num_kv_heads=kv_heads, sink=sink,
                           recent=recent))


def names(text: str, allowed: tuple, flag: str) -> list[str]:
    found = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in found if x not in allowed]
    if bad or not found:
        raise SystemExit(f"{flag}: unknown {bad[0] if bad else '(empty)'}; choose from {', '.join(allowed)}")
    return found


def main(argv: list[str] | None = None) -> int:
    from retrieval_heads.cli.common import add_sweep_args, numbers, sweep_config_from_args
    from retrieval_heads.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_sweep_args(parser, command="kvpress-peer", batch=False, blocks=False, share_prefix=False)
    g = parser.add_argument_group("kvpress")
    g.add_argument("--presses", default=",".join(DEFAULT_PRESSES), help=f"any of {', '.join(PRESSES)}")
    g.add_argument("--budgets", default=",".join(map(str, DEFAULT_BUDGETS)),
                   help="fractions of the full cache's KV bytes (of the compressed context)")
    g.add_argument("--settings", default=",".join(SETTINGS), help="question (kv-eval's default), agnostic "
                   "(kv-eval --query-agnostic, kvpress's pipeline)")
    g.add_argument("--scores", default=None, help="detect/lookup run, score file or DuoAttention directory for "
                   "duo-pattern")
    g.add_argument("--duo-sink", type=int, default=64, help="sink of duo-pattern's streaming heads (default 64, "
                   "kv-eval's --sink)")
    g.add_argument("--duo-recent", type=int, default=384, help="recent window of duo-pattern's streaming heads "
                   "(default 384, kv-eval's --window)")
    args = parser.parse_args(argv)
    presses = names(args.presses, PRESSES, "--presses")
    settings = names(args.settings, SETTINGS, "--settings")
    budgets = numbers(args.budgets, float, "--budgets")
    if any(not 0 < b <= 1 for b in budgets):
        raise SystemExit("--budgets are fractions of the KV bytes in (0, 1]")
    if "duo-pattern" in presses and not args.scores:
        raise SystemExit("duo-pattern needs --scores (a detect or lookup run, or a DuoAttention directory)")
    config = sweep_config_from_args(args)
    out = Path(args.out or f"runs/{args.model}/kvpress-peer")
    if args.overwrite and (out / ROWS).exists():
        (out / ROWS).unlink()
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map,
                        attn_implementation=args.attn_implementation or "sdpa")  # kvpress's masking refuses eager
    out.mkdir(parents=True, exist_ok=True)
    pattern, sink, recent = None, args.duo_sink, args.duo_recent
    if args.scores:
        from retrieval_heads.analysis.exports import read_duo_pattern

        pattern = pattern_from(args.scores, out, loaded, sink, recent)
        _, sink, recent = read_duo_pattern(pattern)  # a DuoAttention directory given as it is keeps its own
    summary = run(loaded, config, out, presses=presses, budgets=budgets, settings=settings, pattern_dir=pattern,
                  duo_sink=sink, duo_recent=recent, resume=args.resume, progress=not args.quiet)
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
