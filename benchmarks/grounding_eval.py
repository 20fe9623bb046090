"""Evaluate the grounding monitor (issue 15, parts 5 and 7) on held-out invented facts.

Data: ``benchmarks/data/grounding_facts.jsonl`` (60 questions, each with three invented facts of one
relation, e.g. three lighthouses and their keepers; the first is asked) and
``benchmarks/data/grounding_haystack.txt`` (prose from Python's module docstrings, not the
reference manual the heads were detected on). Each question gets its own context: a window of the
haystack of 1000, 1500 or 2000 tokens (cycling) with the three facts inserted at three depths.
Questions g00-g23 form the tuning split, g24-g59 the report split.

Parts (``--parts``, default all); ``--split tune`` runs only the tuning questions and measures on
them (in-sample, for choosing settings), the default measures on the report split:
  timing      a prefill vs. a grounding pass of a 2000-token question, each from an empty cache
              (medians of 3 after a warm-up round).
  tf          teacher-forced answers: per question the true answer (short and as a sentence), two
              fabricated values, a fabricated sentence, and a wrong extraction (the value of another
              inserted fact). The token threshold is chosen on the tuning split; the Lookback-Lens
              regression is trained on the tuning split; AUROCs are reported on the report split.
  gen         the model's own greedy answers to the same questions, unmasked and with the top-20
              retrieval heads masked while decoding, labelled by the task scorer; grounded with the
              unmasked model.
  extractive  the same on the built-in extractive-qa suite (task prompts), items 0-23 tuning, 24-59 report.
  knowledge   part 7: the unmasked model's knowledge answers (capitals) grounded in their prompt
              (do they copy from the question?), and masking (none / top-20 / random-20) on the
              original prompt and on a variant whose answer already states the subject.

Writes ``OUT/eval.json`` (every number), ``OUT/items-{tune,report}.jsonl`` (the teacher-forced items,
usable with ``retrieval-heads ground --items``) and prints markdown tables.

    python benchmarks/grounding_eval.py --scores runs/smollm2-135m/detect --out runs/smollm2-135m/grounding-eval
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from retrieval_heads.grounding import citations, metrics
from retrieval_heads.grounding.grounder import Grounder
from retrieval_heads.grounding.lookback import LookbackRecorder, lookback_ratios
from retrieval_heads.grounding.prompt import answer_from_text, build_prompt, locate

DATA = Path(__file__).parent / "data"
LENGTHS = (1000, 1500, 2000)
DEPTHS = ((20, 55, 85), (50, 15, 80), (80, 30, 60))  # (asked fact, other, other) in percent
MASK_K = 20
SCORES = ("grounding", "grounding x citation relevance", "mean token log-prob", "Lookback-Lens LR",
          "copy rate of all heads", "lexical overlap")


# ---- data -------------------------------------------------------------------------------------------

def load_facts() -> list[dict]:
    return [json.loads(line) for line in (DATA / "grounding_facts.jsonl").read_text().splitlines() if line.strip()]


def paragraphs() -> list[str]:
    return [p for p in (DATA / "grounding_haystack.txt").read_text().split("\n\n") if p.strip()]


def build_context(row: dict, index: int, paras: list[str], tokenizer) -> tuple[str, tuple[int, int]]:
    """The question's context (a haystack window with its three facts) and the asked fact's [start, end)."""
    from retrieval_heads.sweep.haystack import Haystack, insert_needle

    length = LENGTHS[index % len(LENGTHS)]
    start = (index * 17) % len(paras)
    window = "\n\n".join(paras[start:] + paras[:start])
    text = Haystack(window, tokenizer, min_tokens=length).cut(length - 120)
    for fact, depth in sorted(zip(row["facts"], DEPTHS[index % len(DEPTHS)]), key=lambda fd: -fd[1]):
        text, _, _ = insert_needle(text, fact, depth)  # deepest first: earlier insertions keep their depth
    at = text.index(row["facts"][row["target"]])
    return text, (at, at + len(row["facts"][row["target"]]))


def tf_answers(row: dict) -> list[tuple[str, str, int]]:
    """(kind, answer, label) of the teacher-forced answers of one question."""
    return [("true", row["answer"], 1), ("true-sentence", row["answer_sentence"], 1),
            *(("fabricated", f, 0) for f in row["fabricated"]),
            ("fabricated-sentence", row["fabricated_sentence"], 0), ("wrong-extraction", row["wrong"], 0)]


# ---- one grounded answer ------------------------------------------------------------------------------

def measure(grounder: Grounder, recorder: LookbackRecorder, prompt, answer) -> dict:
    """Everything the evaluation needs about one answer: kept keys (to re-threshold), scores, features."""
    recorder.expect(len(prompt.ids), len(answer.ids))
    keys, logprobs = grounder.forward(prompt.ids, answer.ids)
    feats = recorder.features(grounder.num_layers, grounder.num_heads).numpy()
    return {"prompt": prompt, "answer": answer, "keys": keys, "logprobs": logprobs, "lookback": feats}


def finish(grounder: Grounder, m: dict, fact_chars: tuple[int, int] | None) -> dict:
    """Per-answer scores at the grounder's current threshold."""
    g = grounder.interpret(m["prompt"], m["answer"], m["keys"], m["logprobs"])
    context, question = m["prompt"].context, m["prompt"].question
    relevance = citations.citation_relevance(question, context, [s.to_dict() for s in g.spans])
    out = {"grounding": g.grounding or 0.0, "mean token log-prob": g.mean_logprob,
           "copy rate of all heads": g.all_heads or 0.0,
           "lexical overlap": metrics.lexical_overlap(m["answer"].text, context),
           "grounding x citation relevance": (g.grounding or 0.0) * relevance, "restated": g.restated,
           "spans": [s.to_dict() for s in g.spans], "answer": m["answer"].text}
    if fact_chars is not None:
        out["cites_fact"] = any(fact_chars[0] <= s.context_start and s.context_end <= fact_chars[1] for s in g.spans)
        out["cites_outside_fact"] = any(not (fact_chars[0] <= s.context_start and s.context_end <= fact_chars[1])
                                        for s in g.spans)
    return out


def grounding_at(grounder: Grounder, rows: list[dict], threshold: float) -> list[float]:
    """Item grounding of each row's answer at ``threshold`` (its pass re-read, not re-run)."""
    grounder.threshold = threshold
    return [grounder.interpret(r["m"]["prompt"], r["m"]["answer"], r["m"]["keys"], r["m"]["logprobs"]).grounding or 0.0
            for r in rows]


# ---- tables ---------------------------------------------------------------------------------------------

def auroc_table(rows: list[dict]) -> list[dict]:
    """AUROC (95% interval resampling whole questions) of every score the rows carry."""
    labels, groups = [r["label"] for r in rows], [r["question_id"] for r in rows]
    return [metrics.auroc_row(name, [r[name] for r in rows], labels, groups=groups)
            for name in SCORES if all(name in r for r in rows)]


def lookback_scores(train: list[dict], test: list[dict]) -> np.ndarray | None:
    y = [r["label"] for r in train]
    if len(set(y)) < 2 or not test:
        return None
    model = metrics.LogisticRegression(l2=10.0).fit(np.stack([r["lookback"] for r in train]), y)
    return model.predict_proba(np.stack([r["lookback"] for r in test]))


def markdown(title: str, table: list[dict]) -> str:
    lines = [f"\n**{title}**\n", "| score | AUROC | 95% CI | n (correct) |", "|---|---|---|---|"]
    for r in table:
        auc = "-" if r["auroc"] is None else f"{r['auroc']:.3f}"
        ci = "-" if r["ci_low"] is None else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        lines.append(f"| {r['score']} | {auc} | {ci} | {r['n']} ({r['positives']}) |")
    return "\n".join(lines)


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("lookback", "m")} for r in rows]


# ---- parts ------------------------------------------------------------------------------------------------

def held_out(grounder, recorder, loaded, facts, mask, parts, out: Path) -> dict:
    """Parts tf and gen over the held-out facts; returns the raw rows (threshold applied later)."""
    from retrieval_heads.tasks.suites import Item

    paras, tok = paragraphs(), loaded.tokenizer
    tf, gen, files = [], [], {"tune": [], "report": []}
    for index, row in enumerate(tqdm(facts, "held-out questions")):
        context, fact_chars = build_context(row, index, paras, tok)
        prompt = build_prompt(tok, context, row["question"])
        base = {"question_id": row["id"], "split": row["split"], "tokens": len(prompt.ids), "fact_chars": fact_chars}
        if "tf" in parts:
            for kind, text, label in tf_answers(row):
                m = measure(grounder, recorder, prompt, answer_from_text(tok, text))
                tf.append({**base, "kind": kind, "label": label, "m": m, "lookback": m["lookback"]})
                files[row["split"]].append({"id": f"{row['id']}-{kind}-{len(files[row['split']])}", "context": context,
                                            "question": row["question"], "answer": text, "label": label, "kind": kind})
        if "gen" in parts:
            item = Item(row["id"], context, row["question"], (row["answer"],), tuple(other_values(row)))
            for condition, correct, m in own_answers(grounder, recorder, prompt, item, mask):
                gen.append({**base, "kind": condition, "label": int(correct), "m": m, "lookback": m["lookback"]})
    for split, rows in files.items():
        if rows:
            (out / f"items-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"tf": tf, "gen": gen}


def own_answers(grounder, recorder, prompt, item, mask):
    """(condition, correct, measures) of the model's greedy answer, unmasked and with the top heads masked."""
    from retrieval_heads.tasks.scoring import score

    for condition, ablate in (("none", None), (f"top-{MASK_K}", mask)):
        grounder.control.ablate = ablate
        answer = grounder.answer(prompt)
        grounder.control.ablate = None
        correct, _ = score(item, answer.text)
        if answer.ids:
            yield condition, correct, measure(grounder, recorder, prompt, answer)


def other_values(row: dict) -> list[str]:
    """Values of the other inserted facts (the distractors of the task scorer)."""
    template = row["relation"]
    pattern = re.escape(template).replace(re.escape("{S}"), "(.+?)").replace(re.escape("{V}"), "(.+?)")
    values = []
    for fact in row["facts"][1:]:
        match = re.fullmatch(pattern, fact)
        if match:
            values.append(match.group(2) if template.index("{S}") < template.index("{V}") else match.group(1))
    return values


def extractive(grounder, recorder, loaded, mask, n: int = 60, tune: int = 24) -> list[dict]:
    from retrieval_heads.tasks.suites import suite_items

    rows = []
    for index, item in enumerate(tqdm(suite_items("extractive-qa", n), "extractive-qa")):
        prompt = build_prompt(loaded.tokenizer, item.context, item.question, style="task")
        for condition, correct, m in own_answers(grounder, recorder, prompt, item, mask):
            rows.append({"question_id": item.id, "split": "tune" if index < tune else "report", "kind": condition,
                         "label": int(correct), "m": m, "lookback": m["lookback"], "fact_chars": None})
    return rows


def knowledge(grounder, loaded, plans: dict) -> dict:
    """Part 7: do knowledge answers copy from the question, and masking with the subject already stated."""
    from retrieval_heads.tasks.run import render, wilson
    from retrieval_heads.tasks.scoring import score
    from retrieval_heads.tasks.suites import KNOWLEDGE, Item

    tok = loaded.tokenizer
    capitals = [(q, a) for q, a in KNOWLEDGE if q.startswith("What is the capital of ")]
    results = {"n": len(capitals), "variants": {}}
    restated, first_restated, grounded_answers = [], [], []
    for variant in ("original", "stated"):
        rows = {name: [] for name in plans}
        for question, answers in tqdm(capitals, f"knowledge / {variant}"):
            subject = question[len("What is the capital of "):-1]
            item = Item("k", "", question, answers)
            text = render(tok, item)
            if variant == "stated":
                text += f"The capital of {subject} is"
            prompt = locate(tok, text, "", 0, question)
            for name, ablate in plans.items():
                grounder.control.ablate = ablate
                answer = grounder.answer(prompt, 24)
                grounder.control.ablate = None
                rows[name].append(bool(answer.ids) and score(item, answer.text)[0])
                if variant == "original" and name == "none" and answer.ids:
                    g = grounder.ground(prompt, answer)
                    restated.append(g.restated or 0.0)
                    counted = [t for t in g.tokens if t.counted]
                    first_restated.append(bool(counted) and counted[0].question_share >= grounder.threshold)
                    if len(grounded_answers) < 5:
                        grounded_answers.append({"answer": answer.text, "restated": g.restated,
                                                 "tokens": [(t.text, round(t.question_share, 2)) for t in counted]})
        known = rows["none"]
        table = {}
        for name, hits in rows.items():
            kept = [h for h, k in zip(hits, known) if k]
            table[name] = {"accuracy": sum(hits) / len(hits), "ci": wilson(sum(hits), len(hits)),
                           "accuracy_on_known": sum(kept) / len(kept) if kept else None,
                           "ci_on_known": wilson(sum(kept), len(kept)), "n_known": len(kept)}
        results["variants"][variant] = table
    results["restated_share_mean"] = float(np.mean(restated)) if restated else None
    results["answers_opening_with_question_copy"] = float(np.mean(first_restated)) if first_restated else None
    results["examples"] = grounded_answers
    return results


def timing(grounder: Grounder, loaded, facts: list[dict], repeats: int = 3) -> dict:
    """Median seconds of a plain prefill vs. a whole grounding pass (prefill + answer rows), each from an empty
    cache, on the first 2000-token held-out question; one untimed round first warms both up."""
    from retrieval_heads.core.engine import Engine
    from retrieval_heads.core.hooks import AttentionControl, attention_control

    index = LENGTHS.index(2000)
    row = facts[index]
    context, _ = build_context(row, index, paragraphs(), loaded.tokenizer)
    prompt = build_prompt(loaded.tokenizer, context, row["question"])
    answer = answer_from_text(loaded.tokenizer, row["answer_sentence"])
    control = AttentionControl()
    seconds: dict[str, list[float]] = {"prefill_s": [], "grounding_pass_s": []}
    for _ in range(repeats + 1):
        with attention_control(loaded.model, control):
            t0 = time.perf_counter()
            Engine(loaded.model, control, lambda t: False).prefill(prompt.ids)
            seconds["prefill_s"].append(time.perf_counter() - t0)
        fresh = Grounder(loaded.model, loaded.tokenizer, grounder.weights, applicable=grounder.applicable)
        t0 = time.perf_counter()
        fresh.ground(prompt, answer)
        seconds["grounding_pass_s"].append(time.perf_counter() - t0)
    return {"prompt_tokens": len(prompt.ids), "answer_tokens": len(answer.ids), "repeats": repeats,
            **{key: round(float(np.median(values[1:])), 2) for key, values in seconds.items()}}


def tqdm(items, desc):
    from tqdm.auto import tqdm as bar

    return bar(items, desc=desc, unit="q")


# ---- main -------------------------------------------------------------------------------------------------

def evaluate_rows(grounder, rows: list[dict], threshold: float, title: str, split: str = "report") -> tuple[list[dict], str]:
    """AUROC table on ``split`` (Lookback LR trained on the tuning split) at ``threshold``."""
    grounder.threshold = threshold
    for r in rows:
        r.update(finish(grounder, r["m"], r.get("fact_chars")))
    tune = [r for r in rows if r["split"] == "tune"]
    report = [r for r in rows if r["split"] == split]
    lookback = lookback_scores(tune, report)
    if lookback is not None:
        for r, value in zip(report, lookback):
            r["Lookback-Lens LR"] = float(value)
    table = auroc_table(report)
    caveat = "; in-sample: threshold and Lookback LR fitted on these answers" if split == "tune" else ""
    return table, markdown(f"{title} ({split} split, n={len(report)} answers to {len({r['question_id'] for r in report})} "
                           f"questions; Lookback LR trained on {len(tune)} tuning answers{caveat})", table)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--out", default="runs/smollm2-135m/grounding-eval")
    parser.add_argument("--parts", default="timing,tf,gen,extractive,knowledge")
    parser.add_argument("--questions", type=int, default=60, help="first N held-out questions (default all 60)")
    parser.add_argument("--split", choices=("report", "tune"), default="report",
                        help="where the tables are measured: report (default) or tune (only the tuning questions "
                             "are run; numbers in-sample, for choosing settings)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))

    from retrieval_heads.analysis.formats import load_scores
    from retrieval_heads.core.hooks import head_mask
    from retrieval_heads.masking.heads import plan_masking
    from retrieval_heads.models import load_model

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    loaded = load_model(args.model)
    scores = load_scores(args.scores)
    grounder = Grounder.from_scores(loaded, scores)
    shape = dict(num_layers=loaded.num_layers, num_heads=loaded.num_heads, scores=scores)
    top = head_mask(list(plan_masking(**shape, mask_top=MASK_K).heads), loaded.num_layers, loaded.num_heads)
    rand = head_mask(list(plan_masking(**shape, mask_random=MASK_K, seed=0).heads), loaded.num_layers, loaded.num_heads)
    recorder = LookbackRecorder()
    report: dict = {"model": loaded.name, "heads": [f"{l}-{h}" for l, h, _ in grounder.heads], "mask_k": MASK_K}
    text = []
    if "timing" in parts:
        report["timing"] = timing(grounder, loaded, load_facts())
        text.append(f"\none grounding pass vs one prefill (medians after a warm-up, same prompt): {report['timing']}")
    with lookback_ratios(loaded.model, recorder):
        facts = [f for f in load_facts()[: args.questions] if args.split == "report" or f["split"] == "tune"]
        raw = held_out(grounder, recorder, loaded, facts, top, parts, out) \
            if parts & {"tf", "gen"} else {"tf": [], "gen": []}
        ex = extractive(grounder, recorder, loaded, top, n=60 if args.split == "report" else 24) \
            if "extractive" in parts else []
    if raw["tf"]:  # the threshold that best separates true from fabricated answers (wrong extractions are copied)
        tune = [r for r in raw["tf"] if r["split"] == "tune" and r["kind"] != "wrong-extraction"]
        threshold, curve = metrics.choose_threshold(lambda t: grounding_at(grounder, tune, t), [r["label"] for r in tune])
        report["threshold"] = {"chosen": threshold, "tuning_curve": curve, "tuning_answers": len(tune)}
    else:
        threshold = grounder.threshold
    report["threshold_used"] = threshold
    for name, rows in (("teacher-forced", raw["tf"]), ("generated", raw["gen"]), ("extractive-qa", ex)):
        if not rows:
            continue
        table, md = evaluate_rows(grounder, rows, threshold, name, args.split)
        report[name] = {"auroc": table, "rows": strip(rows)}
        text.append(md)
        rep = [r for r in rows if r["split"] == args.split]
        report[name]["accuracy_by_condition"] = {k: (sum(r["label"] for r in rep if r["kind"] == k),
                                                     sum(1 for r in rep if r["kind"] == k))
                                                 for k in sorted({r["kind"] for r in rep})}
        report[name]["mean_grounding_by_kind"] = {k: float(np.mean([r["grounding"] for r in rep if r["kind"] == k]))
                                                  for k in sorted({r["kind"] for r in rep})}
        if name == "teacher-forced":
            plain = [r for r in rep if r["kind"] != "wrong-extraction"]
            report[name]["auroc_true_vs_fabricated"] = auroc_table(plain)
            text.append(markdown(f"true vs fabricated only (no wrong extractions), n={len(plain)}",
                                 report[name]["auroc_true_vs_fabricated"]))
            text.append(provenance_section(report, rep, args.split))
        if name != "teacher-forced":
            text.append(f"\naccuracy ({args.split} split): {report[name]['accuracy_by_condition']}; mean grounding by "
                        f"condition: { {k: round(v, 3) for k, v in report[name]['mean_grounding_by_kind'].items()} }")

    def save() -> None:  # after each stage, so an interrupted run keeps what it measured
        report["wall_seconds"] = round(time.perf_counter() - t0, 1)
        (out / "eval.json").write_text(json.dumps(report, indent=1, default=str))

    save()
    print(f"threshold chosen on the tuning split: {threshold}")
    print("\n".join(text), flush=True)
    if "knowledge" in parts:
        report["knowledge"] = knowledge(grounder, loaded, {"none": None, f"top-{MASK_K}": top, f"random-{MASK_K}": rand})
        save()
        print(knowledge_markdown(report["knowledge"]))
    print(f"\n{report['wall_seconds']} s; everything in {out}/eval.json")


def provenance_section(report: dict, rep: list[dict], split: str = "report") -> str:
    """What the citations say for true answers and wrong extractions (on ``split``)."""
    def rate(kind, key):
        rows = [r for r in rep if r["kind"] == kind]
        return sum(bool(r.get(key)) for r in rows), len(rows)

    true_in, n_true = rate("true", "cites_fact")
    wrong_in, n_wrong = rate("wrong-extraction", "cites_fact")
    wrong_out, _ = rate("wrong-extraction", "cites_outside_fact")
    pair = [r for r in rep if r["kind"] in ("true", "wrong-extraction")]
    table = auroc_table(pair)
    report["teacher-forced"]["provenance"] = {"true_cites_asked_fact": [true_in, n_true],
                                              "wrong_cites_asked_fact": [wrong_in, n_wrong],
                                              "wrong_cites_elsewhere": [wrong_out, n_wrong], "true_vs_wrong": table}
    return (f"\nprovenance ({split} split): true short answers citing a span inside the asked fact: {true_in}/{n_true}; "
            f"wrong extractions citing inside the asked fact: {wrong_in}/{n_wrong}, elsewhere: {wrong_out}/{n_wrong}"
            + markdown("true vs wrong extraction only", table))


def knowledge_markdown(k: dict) -> str:
    lines = [f"\n**knowledge QA, {k['n']} capitals**: mean share of answer tokens copied from the question "
             f"{k['restated_share_mean']:.2f}; answers whose first counted token is copied from the question "
             f"{k['answers_opening_with_question_copy']:.2f}\n", "| prompt | condition | accuracy | 95% CI | on items known unmasked |",
             "|---|---|---|---|---|"]
    for variant, table in k["variants"].items():
        for name, row in table.items():
            known = "-" if row["accuracy_on_known"] is None else f"{row['accuracy_on_known']:.2f} (n={row['n_known']})"
            lines.append(f"| {variant} | {name} | {row['accuracy']:.2f} | [{row['ci'][0]:.2f}, {row['ci'][1]:.2f}] | {known} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
