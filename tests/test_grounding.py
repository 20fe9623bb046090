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
from retrieval_heads.grounding import metrics, signal
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


def test_located_evidence_reads_the_next_row_one_position_back():
    prompt = torch.tensor([10, 11, 12, 13, 14, 15, 16, 17])
    answer = torch.tensor([12, 20, 14])  # 20 is no prompt token: the answer leaves the context after 12
    holds = answer[:, None] == prompt[None, :]
    # (R + 1 = 4, L = 1, H = 3). Head 0 attends, on the row after a token, to the position after the
    # token's occurrence (3 after 12 on row 1, 5 after 14 on row R = 3). Head 1 attends to the
    # position before a token (1 before 12 on row 0, 3 before 14 on row 2) or to the token itself on
    # the row after it (2 on row 1): no evidence. Head 2 copies 14 on its own row (the paper's criterion).
    keys = torch.tensor([[[0, 1, 0]], [[3, 2, 0]], [[0, 3, 4]], [[5, 0, 0]]])
    events, positions = signal.evidence(keys, holds, (0, 8))
    assert events[:, 0].tolist() == [[True, False, False], [False, False, False], [True, False, True]], events[:, 0]
    assert positions[:, 0].tolist() == [[2, -1, -1], [-1, -1, -1], [4, -1, 4]], positions[:, 0]
    without_row_r = signal.evidence(keys[:3], holds, (0, 8))[0][:, 0, 0]
    assert without_row_r.tolist() == [True, False, False]  # 14 was located by row R only
    assert not signal.evidence(keys, holds, (3, 8))[0][0].any()  # 12 at position 2 lies outside the region


def test_words_match_across_segmentations_but_not_by_shared_pieces():
    context = "Cargo of barley, 1518 and Orvhor."
    c_offsets = [(0, 5), (5, 8), (8, 15), (15, 16), (16, 21), (21, 25), (25, 28), (28, 29), (29, 32), (32, 33)]
    # "Cargo", " of", " barley", ",", " 1518", " and", " Or", "v", "hor", "."
    c_words = [None if w is None else context[w[0]:w[1]] for w in signal.word_spans(context, c_offsets)]
    assert c_words == ["Cargo", "of", "barley", None, "1518", "and", "Orvhor", "Orvhor", "Orvhor", None]
    answer = "BARley 1518 Orlan."
    a_offsets = [(0, 3), (3, 6), (7, 8), (8, 9), (9, 10), (10, 11), (12, 14), (14, 17), (17, 18)]
    a_spans = signal.word_spans(answer, a_offsets)
    a_words = [None if w is None else answer[w[0]:w[1]] for w in a_spans]
    holds = signal.holds(a_words, c_words)
    assert holds[:2, 2].all() and holds[2:6, 4].all()  # "bar"+"ley" ~ " barley" (any case); digits ~ their number
    assert not holds[6:8, 6:9].any()  # "Or"+"lan" shares the piece "Or" with "Orvhor", not the word
    assert not holds[8].any() and not holds[:, 3].any()  # punctuation holds nothing
    assert signal.word_index(a_spans) == [0, 0, 1, 1, 1, 1, 2, 2, -1]
    assert signal.word_parts([(5, 9)], [(6, 12)]) == [(6, 9)]
    cjk = "北京市"
    assert signal.word_spans(cjk, [(0, 1), (1, 3)]) == [(0, 1), (1, 3)]  # unspaced scripts: token for token


def test_evidence_for_one_piece_counts_for_the_whole_word():
    events = torch.zeros(4, 1, 2, dtype=torch.bool)
    events[1, 0, 0] = events[3, 0, 1] = True
    pooled = signal.pool_words(events, [0, 0, -1, 1])
    assert pooled[:, 0].tolist() == [[True, False], [True, False], [False, False], [False, True]]


def test_token_sources_map_pieces_into_the_cited_word_and_prefer_continuations():
    prompt = "Kelsel wrote. Orvhor Nesver. Orvhor Nesver"
    p_offsets = [(0, 6), (6, 12), (12, 13), (13, 20), (20, 27), (27, 28), (28, 35), (35, 42)]
    p_spans = signal.word_spans(prompt, p_offsets)
    answer = "Orvhor Nesver"
    a_offsets = [(0, 2), (2, 6), (7, 13)]  # "Or", "vhor", " Nesver"
    a_spans = signal.word_spans(answer, a_offsets)
    # head 0 (weight 1) points "Or" at the second Orvhor; for "Nesver", heads 1 and 2 (weight 0.8 + 0.8) point
    # at the first Nesver, head 0 at the second, which continues "Orvhor " where the answer has it: it wins
    positions = torch.full((3, 1, 3), -1)
    positions[0, 0, 0] = 6
    positions[2, 0] = torch.tensor([7, 4, 4])
    weights = torch.tensor([[1.0, 0.8, 0.8]], dtype=torch.float64)
    sources = signal.token_sources(positions, weights, [True, True, True], answer_text=answer, answer_spans=a_spans,
                                   answer_parts=signal.word_parts(a_offsets, a_spans), prompt_text=prompt,
                                   prompt_spans=p_spans)
    assert sources == [(29, 31), (31, 35), (36, 42)], sources
    assert [prompt[a:b] for a, b in sources] == ["Or", "vhor", "Nesver"]
    alone = signal.token_sources(positions, weights, [False, False, True], answer_text=answer, answer_spans=a_spans,
                                 answer_parts=signal.word_parts(a_offsets, a_spans), prompt_text=prompt,
                                 prompt_spans=p_spans)
    assert alone == [None, None, (21, 27)]  # without a previous word the heaviest occurrence wins


def test_token_runs_join_copies_in_order_and_bridge_punctuation():
    answer, context = "tin-plates, by ship", "of tin-plates, by ship. And ship"
    parts = [(0, 3), None, (4, 10), None, (12, 14), (15, 19)]  # "tin", "-", "plates", ",", " by", " ship"
    sources = [(3, 6), None, (7, 13), None, (15, 17), (18, 22)]
    assert token_runs(parts, sources, answer, context) == [(0, 6)]
    assert token_runs(parts, sources[:5] + [(28, 32)], answer, context) == [(0, 5), (5, 6)]  # a jump
    assert token_runs(parts, sources[:4] + [None, (18, 22)], answer, context) == [(0, 3), (5, 6)]  # an ungrounded word
    assert token_runs([None, (0, 2)], [None, None], "  ab", "ab") == []


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
    assert metrics.auroc(scores, labels) == pytest.approx(pairs)
    low, high = metrics.bootstrap_auroc(scores, labels, n=500)
    assert low < pairs < high
    grouped = metrics.bootstrap_auroc(scores, labels, groups=np.arange(60) // 4, n=500)
    assert grouped[0] < pairs < grouped[1]
    assert metrics.auroc([0.1, 0.2], [1, 1]) is None


def test_logistic_regression_and_lexical_overlap():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    y = (x[:, 0] - x[:, 2] > 0).astype(int)
    model = metrics.LogisticRegression(l2=0.1).fit(x, y)
    assert metrics.auroc(model.predict_proba(x), y) > 0.97
    assert metrics.lexical_overlap("Orla Vesk, of course", CONTEXT) == pytest.approx(2 / 3)
    assert metrics.lexical_overlap("the", CONTEXT) == 0.0


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


def one_token(tokenizer, prompt, text: str) -> int:
    """The id of ``text``, a single token found exactly once in the prompt."""
    ids = tokenizer(text)["input_ids"]
    assert len(ids) == 1 and prompt.ids.count(ids[0]) == 1, (text, ids)
    return ids[0]


def test_forced_heads_yield_exactly_the_expected_evidence_and_span(tiny_tokenizer):
    model = build_tiny("llama")
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    and_ = one_token(tiny_tokenizer, prompt, " and")
    she = tiny_tokenizer(" she")["input_ids"]  # " s" + "he"
    m = prompt.ids.index(and_)
    assert len(she) > 1 and prompt.ids[m + 1:m + 1 + len(she)] == she and prompt.ids.count(she[0]) == 1
    force_heads(model, {0: and_, 4: she[0]})  # query heads 0 and 4 read KV heads 0 and 1
    weights = torch.zeros(3, 8, dtype=torch.float64)
    weights[0, 0] = weights[0, 4] = 1.0
    grounder = Grounder(model, tiny_tokenizer, weights, threshold=0.5, chunk_size=16)
    first, last = tiny_tokenizer(" Bram")["input_ids"], tiny_tokenizer(" Tollis")["input_ids"]
    assert not {and_, she[0]} & set(first + last)
    answer = answer_from_ids(tiny_tokenizer, first + [and_] + she + last)
    a, b, n = len(first), len(first) + 1, len(answer.ids)  # " and" is token a, " s" token b
    keys, _ = grounder.forward(prompt.ids, answer.ids)
    assert keys.shape == (n + 1, 3, 8)  # one row per answer token, and row n reads the last one
    assert (keys[:a + 1, 0, 0] == m).all() and (keys[:b + 1, 0, 4] == m + 1).all(), keys[:, 0, [0, 4]]

    a_words = [None if w is None else answer.text[w[0]:w[1]] for w in signal.word_spans(answer.text, answer.offsets)]
    p_words = [None if w is None else prompt.text[w[0]:w[1]] for w in signal.word_spans(prompt.text, prompt.offsets)]
    holds = signal.holds(a_words, p_words)
    copied = signal.copy_events(keys[:n], holds, prompt.context_tokens)[:, 0, [0, 4]]
    located = signal.copy_events(signal.next_row_keys(keys, n), holds, prompt.context_tokens)[:, 0, [0, 4]]
    expected_copies, expected_located = torch.zeros(n, 2, dtype=torch.bool), torch.zeros(n, 2, dtype=torch.bool)
    expected_copies[a, 0] = expected_copies[b, 1] = True  # each head on the row producing its token
    expected_located[a, 1] = True  # head 4, on the row reading " and", attends right after it: to " s"
    assert torch.equal(copied, expected_copies), copied
    assert torch.equal(located, expected_located), located

    result = grounder.ground(prompt, answer)
    shares = [t.share for t in result.tokens]
    she_rows = range(b, b + len(she))
    assert shares == [1.0 if i == a else 0.5 if i in she_rows else 0.0 for i in range(n)], shares  # "he": pooled
    assert [t.grounded for t in result.tokens] == [i == a or i in she_rows for i in range(n)]
    counted = sum(t.counted for t in result.tokens)
    assert result.grounding == pytest.approx((1 + len(she)) / counted)
    assert len(result.spans) == 1
    span = result.spans[0]
    assert span.tokens == (a, b + len(she))
    assert answer.text[span.answer_start:span.answer_end] == CONTEXT[span.context_start:span.context_end] == "and she"
    assert span.context_start == CONTEXT.index("and she")
    assert result.tokens[a].source == (CONTEXT.index("and she"), CONTEXT.index("and she") + 3)


def test_a_head_after_a_token_grounds_it_a_head_before_it_does_not(tiny_tokenizer):
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    and_ = one_token(tiny_tokenizer, prompt, " and")
    m = prompt.ids.index(and_)
    s_ = prompt.ids[m + 1]  # " s" of "she", right after " and"
    assert tiny_tokenizer.decode([s_]) == " s" and prompt.ids.count(s_) == 1
    at = CONTEXT.index("and she")

    def grounder_at(token):
        """Layer 0 head 0, the only selected head, attends to ``token`` on every row whose answer so far lacks it."""
        model = build_tiny("llama")
        force_heads(model, {0: token})
        weights = torch.zeros(3, 8, dtype=torch.float64)
        weights[0, 0] = 1.0
        return Grounder(model, tiny_tokenizer, weights, threshold=0.5, chunk_size=16)

    def ground(grounder, text, rows=None):
        answer = answer_from_text(tiny_tokenizer, text)
        keys, logprobs = grounder.forward(prompt.ids, answer.ids)
        return grounder.interpret(prompt, answer, keys[:rows], logprobs)

    on_and, on_s = grounder_at(and_), grounder_at(s_)
    copied = ground(on_and, " and")  # the paper's criterion on the first token: row 0 attends to it
    assert copied.grounding == 1.0 and copied.tokens[0].source == (at, at + 3)
    before = ground(on_and, " she")  # attending to the position right before "she" is no evidence for it
    assert before.grounding == 0.0 and before.spans == [] and all(t.share == 0 for t in before.tokens)
    after = ground(on_s, " and")  # attending right after " and", on the row reading it (row R), grounds it
    assert after.grounding == 1.0 and after.tokens[0].source == (at, at + 3)
    assert ground(on_s, " and", rows=-1).grounding == 0.0  # without row R nothing does
    phrase = ground(on_s, " and she")  # row 1 copies " s" and locates " and": one span from the first token on
    assert phrase.grounding == 1.0 and len(phrase.spans) == 1
    span = phrase.spans[0]
    assert (span.answer_start, span.answer_end, span.context_start, span.context_end) == (1, 8, at, at + 7)
    assert span.tokens == (0, len(phrase.tokens))


def test_teacher_forced_rows_equal_the_decode_steps(tiny_tokenizer):
    from retrieval_heads.core.engine import Engine
    from retrieval_heads.core.hooks import AttentionControl, attention_control

    model = build_tiny("llama")
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    control = AttentionControl()
    with attention_control(model, control):
        gen = Engine(model, control, lambda t: False, chunk_size=16).generate(prompt.ids, 6, probe=True)
    grounder = Grounder(model, tiny_tokenizer, torch.ones(3, 8), chunk_size=16)
    keys, logprobs = grounder.forward(prompt.ids, gen.generated_ids)
    assert keys.shape[0] == 7  # six answer rows and the row reading the last answer token
    same = (keys[:6] == gen.top1).float().mean().item()
    assert same > 0.99, f"teacher-forced top-1 equals the decode steps' in {same:.1%} of (step, layer, head)"
    assert (logprobs < 0).all() and logprobs.shape == (6,)
    again, _ = grounder.forward(prompt.ids, gen.generated_ids)  # kept cache: same numbers
    assert torch.equal(again, keys)


def test_a_hybrid_model_grounds_a_repeated_prompt_as_on_a_fresh_cache(tiny_tokenizer):
    """Qwen3-Next's linear-attention layers carry recurrent state that the kept cache cannot cut back: every
    answer to a prompt must be grounded as if it were the first (the old kept cache read the last answer too)."""
    from retrieval_heads.compat.tiny import build_tiny as build_tiny_arch

    model = build_tiny_arch("qwen3_next")
    kinds = model.config.layer_types
    assert "linear_attention" in kinds
    weights = torch.zeros(len(kinds), model.config.num_attention_heads)
    weights[kinds.index("full_attention")] = 1.0
    prompt = build_prompt(tiny_tokenizer, CONTEXT, QUESTION)
    true, fake = (answer_from_text(tiny_tokenizer, text) for text in (" Orla Vesk", " Bram Tollis"))

    def grounder():
        return Grounder(model, tiny_tokenizer, weights, threshold=0.05, chunk_size=16)

    alone = {name: grounder().ground(prompt, answer).to_record() for name, answer in (("true", true), ("fake", fake))}
    shared = grounder()
    again = [shared.ground(prompt, answer).to_record() for answer in (true, fake, true)]
    assert again == [alone["true"], alone["fake"], alone["true"]], [r["mean_logprob"] for r in again]
    generated = shared.answer(prompt, 4)  # decoding into the kept cache, then grounding on it
    assert generated.ids == grounder().answer(prompt, 4).ids
    assert shared.ground(prompt, true).to_record() == alone["true"]


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
    for r in rows:  # the cues and features the detectors of ground-eval read
        assert 0 <= r["citation_relevance"] <= 1 and len(r["length_position"]) == 3
        assert r["length_position"][0] == len(r["tokens"]) and len(r["lookback"]) == 3 * 8
    # the features are the grounding pass's own: the same as one recorded around a lone pass
    from retrieval_heads.grounding.lookback import LookbackRecorder, lookback_ratios

    prompt, answer = build_prompt(tiny_tokenizer, CONTEXT, QUESTION), answer_from_text(tiny_tokenizer, "Bram Tollis")
    recorder = LookbackRecorder()
    with lookback_ratios(model, recorder):
        recorder.expect(len(prompt.ids), len(answer.ids))
        grounder.forward(prompt.ids, answer.ids)
    assert rows[1]["lookback"] == pytest.approx(recorder.features(3, 8).tolist(), abs=1e-5)
    assert summary["n"] == 3 and summary["labelled"] == 2
    assert {row["score"] for row in summary["auroc"]} >= {"grounding", "lexical overlap"}
    html = (tmp_path / "report.html").read_text()
    assert "<script" not in html and "fake: grounding" in html and html.count('<span class="t ') >= 4
    with pytest.raises(UserError, match="--resume"):
        ground_items(grounder, items, tmp_path, progress=False)


def test_run_items_rebuild_a_detection_run(tiny_tokenizer, tmp_path):
    from retrieval_heads.detection.detect import run_detection
    from retrieval_heads.sweep.grid import SweepConfig

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


def test_an_empty_niah_response_is_grounded_as_the_empty_answer_it_was(tiny_tokenizer, tmp_path):
    """A masked model's empty response keeps its label (wrong) and is grounded as empty, never answered anew."""
    from retrieval_heads.masking.heads import MaskPlan, Selection
    from retrieval_heads.masking.niah import run_niah
    from retrieval_heads.sweep.grid import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    config = SweepConfig(model="tiny-llama", lengths=[200], depths=[50], max_new_tokens=4, chunk_size=64, shard=(0, 4))
    run_niah(loaded, config, tmp_path / "niah", plan=MaskPlan(Selection.EXPLICIT, 2, ((0, 1), (2, 3))), progress=False)
    results = tmp_path / "niah" / "results.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    rows[0].update(response="", score=0.0)  # what a masked model that said nothing records
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = run_items(tmp_path / "niah", tiny_tokenizer)
    silent = next(it for it in items if it.id == rows[0]["id"])
    assert silent.answer == "" and silent.label == 0 and silent.keep["masked_heads"] == ["0-1", "2-3"]
    grounder = Grounder(loaded.model, tiny_tokenizer, torch.ones(3, 8), chunk_size=64)
    ground_items(grounder, [silent], tmp_path / "ground", progress=False)
    record = json.loads((tmp_path / "ground" / "results.jsonl").read_text())
    assert record["answer"] == "" and not record["generated"] and record["label"] == 0
    assert record["grounding"] is None and record["tokens"] == [] and record["spans"] == []


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
