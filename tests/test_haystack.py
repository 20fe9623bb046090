"""Needles, haystack, needle insertion and needle span lookup."""

from __future__ import annotations

import pytest

from retrieval_heads.errors import UserError
from retrieval_heads.sweep.haystack import (
    Haystack,
    Needle,
    build_prompt,
    default_haystack,
    find_needle_span,
    insert_needle,
    load_haystack,
    load_needles,
    token_span,
)

NEEDLE = Needle("The secret code of the blue door is seven swans.", "What is the secret code of the blue door?", "seven swans")


def test_builtin_needles_are_varied_and_well_formed():
    needles = load_needles()
    assert len(needles) >= 6
    lengths = sorted(len(n.needle.split()) for n in needles)
    assert lengths[-1] >= 2 * lengths[0]
    for n in needles:
        assert n.real_needle in n.needle


def test_malformed_needles_file_names_the_line(tmp_path):
    path = tmp_path / "needles.jsonl"
    path.write_text('{"needle": "a.", "question": "q?", "real_needle": "a"}\n{"needle": "b."}\n')
    with pytest.raises(UserError, match=r"needles.jsonl:2: missing .*question"):
        load_needles(path)
    path.write_text("not json\n")
    with pytest.raises(UserError, match=r"needles.jsonl:1: not valid JSON"):
        load_needles(path)


def test_default_haystack_is_real_prose():
    text = default_haystack()
    assert len(text) > 100_000
    paragraphs = text.split("\n\n")
    assert all(p.endswith(".") for p in paragraphs)
    assert not any("::=" in p for p in paragraphs)


def test_empty_haystack_is_a_user_error(tmp_path):
    (tmp_path / "a.txt").write_text("   \n")
    with pytest.raises(UserError, match="empty"):
        load_haystack(tmp_path)
    with pytest.raises(UserError, match="not found"):
        load_haystack(tmp_path / "missing.txt")


def test_needle_goes_in_at_a_sentence_boundary():
    context = "One fish swims. Two fish swim. Red fish sleep. Blue fish dream."
    text, start, end = insert_needle(context, "NEEDLE.", 50)
    assert text[start:end] == "NEEDLE."
    assert text[:start].rstrip().endswith(".")
    assert text.startswith("One fish swims. Two fish swim. NEEDLE. Red")
    assert insert_needle(context, "N.", 0)[0].startswith("N. One")
    assert insert_needle(context, "N.", 100)[0].endswith("dream. N.")


def test_token_span_covers_exactly_the_overlapping_tokens():
    offsets = [(0, 3), (3, 7), (7, 12), (12, 15), (15, 15)]
    assert token_span(offsets, 4, 12) == (1, 3)
    assert token_span(offsets, 20, 30) is None


def test_find_needle_span_fallback():
    assert find_needle_span([9, 9, 1, 2, 3, 9], [1, 2, 3]) == (2, 5)
    assert find_needle_span([9, 9, 9], [1, 2]) is None


def test_prompt_span_decodes_to_the_needle(tiny_tokenizer):
    hay = Haystack(default_haystack(), tiny_tokenizer, min_tokens=800)
    for depth in (0, 37, 100):
        prompt = build_prompt(tiny_tokenizer, hay.cut(600), NEEDLE, depth)
        start, end = prompt.needle_span
        assert tiny_tokenizer.decode(prompt.ids[start:end]).strip() == NEEDLE.needle
        assert prompt.text.rstrip().endswith("Answer:")


def test_haystack_repeats_to_reach_the_budget(tiny_tokenizer):
    hay = Haystack("A short text. It has two sentences.", tiny_tokenizer, min_tokens=500)
    assert len(hay.token_ends) >= 500
    assert len(tiny_tokenizer(hay.cut(300), add_special_tokens=False)["input_ids"]) in range(295, 306)
