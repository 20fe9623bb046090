"""Grounding monitor: copy events, provenance spans and offsets, the Grounder's pass, outputs, statistics.

The model-level tests run tiny random Llamas built in-process; one of them has two heads of layer 0
rewired to attend to chosen tokens, so their copy events and spans are known exactly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_tiny

from retrieval_heads.errors import UserError
from retrieval_heads.grounding import evaluate, signal
from retrieval_heads.grounding.grounder import Grounder
from retrieval_heads.grounding.items import GroundItem, load_items, run_items
from retrieval_heads.grounding.prompt import answer_from_ids, answer_from_text, build_prompt, trim
from retrieval_heads.grounding.provenance import token_runs
from retrieval_heads.grounding.run import ground_items
from retrieval_heads.models import LoadedModel

CONTEXT = ("The harbour of Pellin is quiet in winter. The lighthouse keeper is called Orla Vesk and "
           "she keeps three goats. Ships from Skarn arrive on Tuesdays.")
QUESTION = "Who keeps the lighthouse?"


# ---- pure functions ----------------------------------------------------------------------------

def test_copy_events_follow_the_paper_criterion_inside_the_region():
    keys = torch.tensor([[[2, 5]], [[3, 9]], [[7, 3]]])  # (R=3, L=1, H=2)
    prompt = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    answer = torch.tensor([12, 13, 99])
    holds = answer[:, None] == prompt[None, :]  # (R, P)
    copies = signal.copy_events(keys, holds, (2, 8))
    expected = torch.tensor([[[True, False]], [[True, False]], [[False, False]]])
    assert torch.equal(copies, expected), copies
    assert not signal.copy_events(keys, holds, (4, 8)).any()  # same tokens, outside the region
    weights = torch.tensor([[0.75, 0.25]], dtype=torch.float64)
    assert signal.weighted_share(copies, weights).tolist() == [0.75, 0.75, 0.0]
    assert signal.token_sources(copies, keys, weights).tolist() == [2, 3, -1]


class TableTokenizer:
    """decode() from a fixed table: token texts chosen by the test."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def decode(self, ids, **kwargs) -> str:
        return "".join(self.texts[i] for i in ids)


def test_matcher_compares_text_across_segmentations():
    texts = [" Orv", "hor", "Or", "v", " the", "the", "e", "\n"]
    matcher = signal.TokenMatcher(TableTokenizer(texts))
    assert matcher.same(5, 4) and matcher.same(2, 0) and matcher.same(1, 1)  # whitespace; "Or" inside " Orv"
    assert not matcher.same(3, 0)  # single characters match only exactly
    assert not matcher.same(6, 4) and not matcher.same(5, 0)
    holds = matcher.matrix([2, 3, 1], [4, 0, 1, 7])
    assert holds.tolist() == [[False, True, False, False], [False, False, False, False], [False, False, True, False]]


def test_token_sources_prefer_the_continuation_of_the_previous_source():
    keys = torch.tensor([[[4, 4, 9]], [[10, 5, 10]]])  # row 1: two heads say 10, one says 5 (= 4 + 1)
    copies = torch.ones(2, 1, 3, dtype=torch.bool)
    weights = torch.ones(1, 3, dtype=torch.float64)
    assert signal.token_sources(copies, keys, weights).tolist() == [4, 5]


def test_token_runs_split_on_gaps_and_jumps():
    grounded = [True, True, False, True, True, True]
    sources = [7, 8, -1, 20, 21, 30]
    assert token_runs(grounded, sources) == [(0, 2), (3, 5), (5, 6)]
    assert token_runs([False, False], [-1, -1]) == []


def test_head_weights_select_retrieval_heads_or_top_k():
    mean = np.array([[0.0, 0.3, 0.05], [0.6, 0.0, 0.11]])
    w = signal.head_weights(mean)
    assert w.tolist() == [[0.0, 0.3, 0.0], [0.6, 0.0, 0.11]]
    assert signal.head_weights(mean, top_k=1).tolist() == [[0.0, 0.0, 0.0], [0.6, 0.0, 0.0]]
    assert signal.head_weights(mean, applicable=np.array([[1, 1, 1], [0, 1, 1]], bool)).tolist()[1][0] == 0.0
    with pytest.raises(UserError, match="no head"):
        signal.head_weights(np.zeros((2, 3)))


def test_offsets_round_trip_to_the_right_characters(tiny_tokenizer):
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    assert prompt.text[slice(*prompt.context_chars)] == CONTEXT
    assert prompt.text[slice(*prompt.question_chars)] == QUESTION
    start, end = prompt.context_tokens
    assert end - start > 10
    for t in range(start, end):
        c0, c1 = prompt.context_range(t)
        assert CONTEXT[c0:c1] == tiny_tokenizer.decode([prompt.ids[t]]).strip(), t
    for answer in (answer_from_text(tiny_tokenizer, " Orla Vesk keeps it."),
                   answer_from_ids(tiny_tokenizer, tiny_tokenizer(" Orla Vesk keeps it.")["input_ids"])):
        pieces = [answer.token_text(i) for i in range(len(answer.ids))]
        assert pieces == [tiny_tokenizer.decode([i]).strip() for i in answer.ids]
        assert "".join(pieces) == answer.text.replace(" ", "")


def test_trim_and_task_prompts_locate_context_and_question(tiny_tokenizer):
    assert trim("  ab c ", 0, 7) == (2, 6) and trim("   ", 0, 3) == (3, 3)
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION, style="task")
    assert prompt.text[slice(*prompt.context_chars)] == CONTEXT
    assert prompt.context_chars[1] <= prompt.question_chars[0]
    with pytest.raises(UserError, match="prompt style"):
        build_prompt(tiny_tokenizer, CONTEXT, QUESTION, style="chat")


def test_auroc_matches_pairwise_counting_and_bootstrap_brackets_it():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = labels * 0.8 + rng.normal(0, 0.6, 60)
    scores[:5] = scores[5]  # some ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairs = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert evaluate.auroc(scores, labels) == pytest.approx(pairs)
    low, high = evaluate.bootstrap_auroc(scores, labels, n=500)
    assert low < pairs < high
    grouped = evaluate.bootstrap_auroc(scores, labels, groups=np.arange(60) // 4, n=500)
    assert grouped[0] < pairs < grouped[1]
    assert evaluate.auroc([0.1, 0.2], [1, 1]) is None


def test_logistic_regression_and_lexical_overlap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] - x[:, 2] > 0).astype(int)
    model = evaluate.LogisticRegression(l2=0.1).fit(x, y)
    assert evaluate.auroc(model.predict_proba(x), y) > 0.97
    assert evaluate.lexical_overlap("Orla Vesk, of course", CONTEXT) == pytest.approx(2 / 3)
    assert evaluate.lexical_overlap("the", CONTEXT) == 0.0


def test_items_file_is_checked_line_by_line(tmp_path):
    good = tmp_path / "items.jsonl"
    good.write_text(json.dumps({"context": "c", "question": "q?", "answer": "a", "label": 1, "topic": "x"}) + "\n"
                    + json.dumps({"id": "b", "context": "c", "question": "q?"}) + "\n")
    items = load_items(good)
    assert [i.id for i in items] == ["line-1", "b"] and items[0].keep == {"topic": "x"} and items[1].answer is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "c", "question": "q?", "label": 2}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl: line 1: 'label' must be 0 or 1"):
        load_items(bad)


# ---- a head forced to attend to a chosen token ---------------------------------------------------

def force_heads(model, targets: dict[int, int]) -> None:
    """Rewire layer 0 so query head h attends to the position holding token ``targets[h]`` (and no other
    head of layer 0 prefers any key): embeddings carry a constant unit and one marker unit per target
    token; the head's query reads the constant and its KV head's keys read the marker, on the slowest
    rotary pair (theta = 0.001 for head_dim 8), so RoPE scales the target logit by cos(distance * theta) > 0.
    The heads must use different KV heads."""
    head_dim = model.config.head_dim
    group = model.config.num_attention_heads // model.config.num_key_value_heads
    dim = head_dim // 2 - 1
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.zero_()
        emb[:, 0] = 1.0
        attn = model.model.layers[0].self_attn
        model.model.layers[0].input_layernorm.weight.fill_(1.0)
        attn.q_proj.weight.zero_()
        attn.k_proj.weight.zero_()
        for unit, (head, token) in enumerate(sorted(targets.items()), start=1):
            emb[token, unit] = 1.0
            attn.q_proj.weight[head * head_dim + dim, 0] = 4.0
            attn.k_proj.weight[(head // group) * head_dim + dim, unit] = 4.0
    assert len({h // group for h in targets}) == len(targets)


def test_forced_heads_yield_exactly_the_expected_copy_events_and_span(tiny_tokenizer):
    model = build_tiny("llama")
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    start, end = prompt.context_tokens
    once = {t for t in prompt.ids if prompt.ids.count(t) == 1}
    m = next(i for i in range(start, end - 1) if prompt.ids[i] in once and prompt.ids[i + 1] in once
             and tiny_tokenizer.decode(prompt.ids[i : i + 2]).strip().replace(" ", "").isalpha())
    a, b = prompt.ids[m], prompt.ids[m + 1]
    filler = [t for t in range(10, 500) if t not in prompt.ids and tiny_tokenizer.decode([t]).strip().isalpha()][:2]
    force_heads(model, {0: a, 4: b})  # query heads 0 and 4 read KV heads 0 and 1
    weights = torch.zeros(3, 8, dtype=torch.float64)
    weights[0, 0] = weights[0, 4] = 1.0
    grounder = Grounder(model, tiny_tokenizer, weights, threshold=0.5, chunk_size=16)
    answer = answer_from_ids(tiny_tokenizer, [filler[0], a, b, filler[1]])
    keys, _ = grounder.forward(prompt.ids, answer.ids)
    assert keys[1, 0, 0] == m and keys[2, 0, 4] == m + 1, keys[:, 0, [0, 4]]
    copies = signal.copy_events(keys, grounder.matcher.matrix(answer.ids, prompt.ids), prompt.context_tokens)
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[1, 0] = expected[2, 4] = True
    assert torch.equal(copies[:, 0] & (weights[0] > 0), expected), copies[:, 0]

    result = grounder.ground(prompt, answer)
    assert [t.grounded for t in result.tokens] == [False, True, True, False]
    assert [t.share for t in result.tokens] == [0.0, 0.5, 0.5, 0.0]
    assert result.grounding == 0.5
    assert len(result.spans) == 1
    span = result.spans[0]
    assert span.tokens == (1, 3)
    cited = answer.text[span.answer_start:span.answer_end]
    assert cited == CONTEXT[span.context_start:span.context_end] == tiny_tokenizer.decode([a, b]).strip()
    assert result.tokens[1].source == prompt.context_range(m)


def test_teacher_forced_rows_equal_the_decode_steps(tiny_tokenizer):
    from retrieval_heads.engine import Engine
    from retrieval_heads.hooks import AttentionControl, attention_control

    model = build_tiny("llama")
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    control = AttentionControl()
    with attention_control(model, control):
        gen = Engine(model, control, lambda t: False, chunk_size=16).generate(prompt.ids, 6, probe=True)
    grounder = Grounder(model, tiny_tokenizer, torch.ones(3, 8), chunk_size=16)
    keys, logprobs = grounder.forward(prompt.ids, gen.generated_ids)
    same = (keys == gen.top1).float().mean().item()
    assert same > 0.99, f"teacher-forced top-1 equals the decode steps' in {same:.1%} of (step, layer, head)"
    assert (logprobs < 0).all() and logprobs.shape == (6,)
    again, _ = grounder.forward(prompt.ids, gen.generated_ids)  # kept cache: same numbers
    assert torch.equal(again, keys)


def test_lookback_ratios_nest_with_the_probe(tiny_tokenizer):
    from retrieval_heads.grounding.lookback import LookbackRecorder, lookback_ratios

    model = build_tiny("llama")
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    grounder = Grounder(model, tiny_tokenizer, torch.ones(3, 8), chunk_size=16)
    answer = answer_from_text(tiny_tokenizer, " Orla Vesk")
    plain = grounder.forward(prompt.ids, answer.ids)[0]
    recorder = LookbackRecorder()
    with lookback_ratios(model, recorder):
        recorder.expect(len(prompt.ids), len(answer.ids))
        nested = grounder.forward(prompt.ids, answer.ids)[0]
    assert torch.equal(plain, nested)
    feats = recorder.features(3, 8)
    assert feats.shape == (24,) and (feats > 0).all() and (feats <= 1).all()
    assert torch.allclose(recorder.ratios[0][0, :, 0], torch.ones(8))  # first token: nothing generated before it
    assert model.config._attn_implementation == "sdpa"


# ---- outputs ---------------------------------------------------------------------------------------

def test_ground_items_writes_results_summary_and_report(tiny_tokenizer, tmp_path):
    model = build_tiny("llama")
    grounder = Grounder(model, tiny_tokenizer, torch.ones(3, 8), threshold=0.05, chunk_size=16)
    items = [GroundItem("true", CONTEXT, QUESTION, "Orla Vesk", label=1, keep={"kind": "true"}),
             GroundItem("fake", CONTEXT, QUESTION, "Bram Tollis", label=0),
             GroundItem("gen", CONTEXT, QUESTION)]
    summary = ground_items(grounder, items, tmp_path, progress=False, max_new_tokens=4)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["true", "fake", "gen"] and rows[0]["kind"] == "true"
    for r in rows:
        assert {"answer", "grounding", "tokens", "spans", "mean_logprob"} <= set(r)
        for t in r["tokens"]:
            assert {"text", "grounded", "source"} <= set(t)
            assert t["text"] == r["answer"][t["start"]:t["end"]]
    assert rows[2]["generated"] and not rows[0]["generated"]
    assert summary["n"] == 3 and summary["labelled"] == 2
    assert {row["score"] for row in summary["auroc"]} >= {"grounding", "lexical overlap"}
    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html and "fake: grounding" in html and html.count('<span class="t ') >= 4
    with pytest.raises(UserError, match="--resume"):
        ground_items(grounder, items, tmp_path, progress=False)


def test_run_items_rebuild_a_detection_run(tiny_tokenizer, tmp_path):
    from retrieval_heads.detection import run_detection
    from retrieval_heads.sweep import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    config = SweepConfig(model="tiny-llama", lengths=[200], depths=[50], max_new_tokens=4, chunk_size=64)
    run_detection(loaded, config, tmp_path / "detect", progress=False)
    items = run_items(tmp_path / "detect", tiny_tokenizer)
    assert len(items) == 8 and all(it.prompt is not None and it.answer_ids is not None for it in items)
    assert all(it.prompt.context in it.prompt.text and it.label in (0, 1) for it in items)
    with pytest.raises(UserError, match="no config.json"):
        run_items(tmp_path, tiny_tokenizer)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no samples.jsonl or results.jsonl"):
        run_items(tmp_path, tiny_tokenizer)


def test_cli_ground_end_to_end_and_user_errors(tiny_tokenizer, tmp_path, capsys):
    from retrieval_heads.cli import main
    from retrieval_heads.compat.tiny import save_tiny

    model_dir = save_tiny(build_tiny("llama"), tiny_tokenizer, tmp_path / "model")
    scores = tmp_path / "scores.csv"
    scores.write_text("layer,head,score\n" + "".join(f"{l},{h},{0.5 if (l, h) == (2, 3) else 0}\n"
                                                     for l in range(3) for h in range(8)))
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "a", "context": CONTEXT, "question": QUESTION, "answer": "Orla", "label": 1})
                     + "\n" + json.dumps({"id": "b", "context": CONTEXT, "question": QUESTION, "answer": "Bob",
                                          "label": 0}) + "\n")
    out = tmp_path / "out"
    code = main(["ground", "--model", str(model_dir), "--items", str(items), "--scores", str(scores),
                 "--out", str(out), "--quiet", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["heads_used"] == [{"layer": 2, "head": 3, "weight": 0.5}] and summary["n"] == 2
    assert (out / "report.html").is_file()
    assert main(["ground", "--model", str(model_dir), "--items", str(items), "--scores", str(tmp_path / "none.csv"),
                 "--out", str(tmp_path / "o2")]) == 2
    assert main(["ground", "--model", str(model_dir), "--items", str(items), "--scores", str(scores),
                 "--threshold", "1.5", "--out", str(tmp_path / "o3"), "--quiet"]) == 2
    assert "threshold" in capsys.readouterr().err
