"""Exact leave-one-sentence-out (LOO) attribution of a ground run's HotpotQA answers, and how the
grounding's citations and ContextCite rank sentences against it (issue 26, item 3).

For each answer (the same selection as ``contextcite_peer.py``: the first answers in ``results.jsonl``
with a non-empty answer and supporting sentences) and each of its ``sentence_spans``, the sentence is
removed from the context (its characters, with the spaces on one side of it so that no double space is
left: the spaces before it, else the spaces after it; never a newline), the prompt is rebuilt exactly as
the ground run built it (``grounding.prompt.build_prompt``, the run's prompt style and chat template),
and the answer's total log-probability is measured teacher-forced. A sentence's LOO score is the drop
from the full context: log p(answer | full) - log p(answer | without it). One pass for the full context
and one per sentence: S + 1 forward passes per answer. By default each sentence's pass takes the tokens
before the removed sentence from the full pass's KV cache (they are the same tokens) and reads only the
rest, about half the prompt on average (``tokens_read`` vs ``tokens_full_passes``); ``--no-prefix-cache``
reads every prompt whole (the same drops up to float rounding).

The answer is tokenised from its text (``answer_from_text``; the run stores the text, not the generated
ids); ``retokenised_match`` tells whether the tokens are the run's (its ``tokens`` texts) and
``full_logprob_run`` is the run's own sum of token log-probabilities, for comparison.

Compared with LOO, per answer: the grounding's per-sentence weight (``citations.sentence_weights``: cited
characters in each sentence, from the run's ``spans``), and ContextCite-A's per-sentence scores
(``OUT/contextcite-A.jsonl`` written by ``contextcite_peer.py``, when present): Spearman's rank
correlation with the LOO drops (mean over answers with a bootstrap 95% interval; an answer whose method
scores are all equal has no rank correlation and counts as 0, the ``constant`` column counts them), the
share of answers whose top sentence is LOO's top sentence, and
recall@1, recall@2, precision@2 against the supporting sentences for every method, LOO included.

    python benchmarks/loo_reference.py RUN --out OUT --limit 10          # LOO on the first 10 answers
    python benchmarks/loo_reference.py RUN --out OUT --n 30 --report     # tables only, from what OUT holds

Writes ``OUT/loo.jsonl`` (per answer: id, ``scores`` = drops aligned to ``sentence_spans``, the log-probs,
``passes``, ``seconds``) and ``OUT/comparison.json``, and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from contextcite_peer import (  # noqa: E402
    Counter, citation_metrics, fmt, mean_ci, ranked, read_jsonl, run_identity, select_answers, spearman, summarize,
    supporting_indices, table)


def remove_sentence(context: str, start: int, end: int) -> str:
    """``context`` without [start, end) and the spaces on one side of it (before it when there are any,
    else after it; newlines stay), so that the sentences around it keep one separator."""
    before = start
    while before > 0 and context[before - 1] == " ":
        before -= 1
    if before < start:
        return context[:before] + context[end:]
    after = end
    while after < len(context) and context[after] == " ":
        after += 1
    return context[:start] + context[after:]


def answer_logprob(model, prompt_ids: list[int], answer_ids: list[int], *, cache=None, start: int = 0,
                   keep_cache: bool = False):
    """Total log-probability of ``answer_ids`` teacher-forced after ``prompt_ids`` (one forward pass).

    ``cache`` (with ``start``): a KV cache holding exactly the first ``start`` tokens of ``prompt_ids``;
    the pass then reads only the tokens after them. ``keep_cache``: also return the pass's cache."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([(prompt_ids + answer_ids)[start:]], device=device)
    with torch.no_grad():
        out = model(input_ids=ids, cache=cache, use_cache=cache is not None or keep_cache,
                    logits_to_keep=len(answer_ids) + 1)
    logits = out.logits[0, :-1].float()
    target = torch.tensor(answer_ids, device=device)[:, None]
    total = float(torch.log_softmax(logits, dim=-1).gather(-1, target).sum())
    return (total, out.cache) if keep_cache else total


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def loo_line(model, tokenizer, answer: dict, style: str, counter, *, prefix_cache: bool = True) -> dict:
    """One answer's LOO drops. ``prefix_cache``: each ablated prompt reuses the full prompt's KV cache up
    to the first token where the two differ (the tokens before the removed sentence), so each pass reads
    only the rest; without it every pass reads the whole prompt (the same numbers up to float rounding)."""
    import copy

    from retrieval_heads.grounding.prompt import answer_from_text, build_prompt

    t0, before = time.perf_counter(), counter.calls
    context, question = answer["context"], answer["question"]
    tokens = answer_from_text(tokenizer, answer["answer"])
    full_ids = build_prompt(tokenizer, context, question, style=style).ids
    if prefix_cache:
        full, cache = answer_logprob(model, full_ids, tokens.ids, keep_cache=True)
    else:
        full, cache = answer_logprob(model, full_ids, tokens.ids), None
    sentences = [tuple(s) for s in answer["sentence_spans"]]
    ablated, read = [], len(full_ids) + len(tokens.ids)
    for s, e in sentences:
        ids = build_prompt(tokenizer, remove_sentence(context, s, e), question, style=style).ids
        if cache is None:
            ablated.append(answer_logprob(model, ids, tokens.ids))
            read += len(ids) + len(tokens.ids)
            continue
        start = min(common_prefix(ids, full_ids), len(ids) - 1)
        kept = copy.deepcopy(cache)
        kept.crop(start - kept.get_seq_length())  # keep the first ``start`` tokens
        ablated.append(answer_logprob(model, ids, tokens.ids, cache=kept, start=start))
        read += len(ids) + len(tokens.ids) - start
    drops = [full - lp for lp in ablated]
    supporting = supporting_indices(answer)
    order = ranked(drops, sentences)
    run_tokens = [t["text"] for t in answer.get("tokens") or ()]
    return {"id": answer["id"], "label": answer.get("label"), "scores": [round(d, 6) for d in drops], "ranked": order,
            "supporting": supporting, **citation_metrics(order, supporting),
            "full_logprob": round(full, 6), "ablated_logprobs": [round(lp, 6) for lp in ablated],
            "full_logprob_run": round(sum(t["logprob"] for t in answer.get("tokens") or ()), 4),
            "retokenised_match": [tokens.token_text(i) for i in range(len(tokens.ids))] == run_tokens,
            "answer_tokens": len(tokens.ids), "prompt_tokens": len(full_ids), "sentences": len(sentences),
            "prefix_cache": prefix_cache, "tokens_read": read,
            "tokens_full_passes": (len(sentences) + 1) * (len(full_ids) + len(tokens.ids)),
            "passes": counter.calls - before, "seconds": round(time.perf_counter() - t0, 3)}


# ---- comparison (pure) ---------------------------------------------------------------------------

def grounding_line(answer: dict) -> dict:
    """The grounding's citations of one answer as a method line: per-sentence cited characters, ranked as
    ``citations.ranked_sentences`` ranks them, with the passes the run paid for the answer."""
    from retrieval_heads.grounding.citations import sentence_weights

    sentences = [tuple(s) for s in answer["sentence_spans"]]
    weights = [float(w) for w in sentence_weights(answer.get("spans") or (), sentences)]
    order = ranked(weights, sentences)
    paid = answer.get("forward_passes") or {}
    return {"id": answer["id"], "scores": weights, "ranked": order, **citation_metrics(order, supporting_indices(answer)),
            "passes": paid.get("teacher_forced", 0), "passes_total": sum(paid.values()),
            "seconds": None, "seconds_run": answer.get("seconds")}


def correlations(method: dict[str, dict], loo: dict[str, dict], ids: Sequence[str]) -> dict:
    """Spearman with LOO per answer over ``ids`` present in both: mean with interval, ``constant`` the
    answers where either side has no ranking (counted as 0)."""
    rhos, constant, top = [], 0, []
    for i in ids:
        if i in method and i in loo:
            rho = spearman(method[i]["scores"], loo[i]["scores"])
            constant += rho is None
            rhos.append(0.0 if rho is None else rho)
            top.append(float(bool(method[i]["ranked"]) and bool(loo[i]["ranked"])
                             and method[i]["ranked"][0] == loo[i]["ranked"][0]))
    return {**mean_ci(rhos), "constant": constant, "top1_agreement": mean_ci(top)}


def compare(run: str | Path, out: str | Path, n: int | None) -> dict:
    out = Path(out)
    answers = select_answers(run, n)
    ids = [a["id"] for a in answers]
    methods = {"grounding citations": {a["id"]: grounding_line(a) for a in answers}}
    for path in sorted(out.glob("contextcite-*.jsonl"), key=lambda p: int(p.stem.split("-")[1])):
        methods[f"ContextCite-{path.stem.split('-')[1]}"] = {line["id"]: line for line in read_jsonl(path)}
    loo = {line["id"]: line for line in read_jsonl(out / "loo.jsonl")} if (out / "loo.jsonl").is_file() else {}
    all_ids = [i for i in ids if all(i in m for m in methods.values())]
    loo_ids = [i for i in all_ids if i in loo]
    result = {"run": str(run), "answers": len(all_ids), "loo_answers": len(loo_ids), "date": time.strftime("%Y-%m-%d"),
              "all": {name: summarize([m[i] for i in all_ids]) for name, m in methods.items()},
              "loo_subset": {name: summarize([m[i] for i in loo_ids]) for name, m in {**methods, "LOO": loo}.items()},
              "spearman_with_loo": {name: correlations(m, loo, loo_ids) for name, m in methods.items()}}
    if loo_ids:
        result["loo_logprob_gap_vs_run"] = float(np.max([abs(loo[i]["full_logprob"] - loo[i]["full_logprob_run"])
                                                         for i in loo_ids]))
        result["loo_retokenised_match"] = sum(loo[i]["retokenised_match"] for i in loo_ids)
    ground = methods["grounding citations"]
    result["grounding_passes_total"] = float(np.mean([ground[i]["passes_total"] for i in all_ids])) if all_ids else None
    result["grounding_seconds_run"] = float(np.mean([ground[i]["seconds_run"] or 0.0 for i in all_ids])) if all_ids else None
    return result


def report(result: dict) -> str:
    text = f"**All {result['answers']} answers** (forward passes to attribute the given answer):\n\n"
    text += table(list(result["all"].items()))
    if result.get("grounding_passes_total") is not None:
        text += (f"\nThe grounding's citations come from its one teacher-forced pass over the answer, the prompt's cache "
                 f"kept from generating it; the run paid {result['grounding_passes_total']:.1f} passes per answer in all "
                 f"(prefill chunks, decode steps, that pass), {result['grounding_seconds_run']:.1f} s per answer.\n")
    if result["loo_answers"]:
        text += f"\n**The first {result['loo_answers']} answers, LOO included:**\n\n"
        text += table(list(result["loo_subset"].items()))
        text += ("\n| method | Spearman with LOO, mean over answers [95% CI] | answers | constant (counted 0) "
                 "| top sentence = LOO's top sentence |\n|---|---|---|---|---|\n")
        for name, row in result["spearman_with_loo"].items():
            text += f"| {name} | {fmt(row)} | {row['n']} | {row['constant']} | {fmt(row['top1_agreement'])} |\n"
    return text


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a ground --dataset hotpotqa run directory")
    parser.add_argument("--out", required=True, help="where loo.jsonl goes (and contextcite-*.jsonl are read)")
    parser.add_argument("--limit", type=int, default=10, help="LOO on the first K selected answers (default 10)")
    parser.add_argument("--n", type=int, default=None, help="compare over the first N selected answers (default: all "
                        "that every ContextCite file holds)")
    parser.add_argument("--report", action="store_true", help="no LOO passes: the tables from what OUT holds")
    parser.add_argument("--model", help="model (default: the run's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-prefix-cache", dest="prefix_cache", action="store_false",
                        help="every pass reads the whole prompt (default: the tokens before the removed sentence "
                             "come from the full prompt's cache)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        import torch

        from retrieval_heads.models import load_model

        if args.threads:
            torch.set_num_threads(args.threads)

        identity = run_identity(args.run)
        style = identity.get("prompt", "document")
        loaded = load_model(args.model or identity.get("model", "smollm2-135m"))
        counter = Counter(loaded.model)
        path = out / "loo.jsonl"
        done = {line["id"] for line in read_jsonl(path)} if path.is_file() else set()
        for answer in select_answers(args.run, args.limit):
            if answer["id"] in done:
                continue
            line = loo_line(loaded.model, loaded.tokenizer, answer, style, counter, prefix_cache=args.prefix_cache)
            with path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            print(f"  LOO {line['id']}: {line['sentences']} sentences, recall@2 {line['recall@2']:.2f}, "
                  f"{line['passes']} passes, {line['seconds']:.1f} s, log p {line['full_logprob']:.3f} "
                  f"(run {line['full_logprob_run']:.3f})", flush=True)
    result = compare(args.run, out, args.n)
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(report(result))


if __name__ == "__main__":
    main()
