"""The retrieval score on hand-made attention, and the ROUGE success filter."""

from __future__ import annotations

import pytest
import torch

from retrieval_heads.core.scoring import is_success, retrieval_scores, rouge1_recall


def test_copy_events_score_one_over_span_length():
    prompt = torch.tensor([5, 6, 10, 11, 12, 13, 7, 8])  # needle span [2, 6) = tokens 10 11 12 13
    generated = torch.tensor([10, 11, 99, 13])
    top1 = torch.zeros(4, 2, 3, dtype=torch.long)  # (steps, layers, heads)
    top1[:, 0, 0] = torch.tensor([2, 3, 4, 5])  # copies at steps 0, 1, 3 (step 2 produced 99, not 12)
    top1[:, 0, 1] = torch.tensor([3, 2, 4, 4])  # attends in the span, never to the token it produces
    top1[:, 1, 2] = torch.tensor([2, 0, 0, 5])  # copies twice
    top1[:, 1, 0] = torch.tensor([9, 9, 9, 9])  # beyond the prompt (a generated token): never counts
    scores = retrieval_scores(top1, generated, prompt, (2, 6))
    expected = torch.zeros(2, 3, dtype=torch.float64)
    expected[0, 0], expected[1, 2] = 3 / 4, 2 / 4
    assert torch.equal(scores, expected)


def test_tokens_equal_to_needle_tokens_outside_the_span_do_not_count():
    prompt = torch.tensor([10, 1, 10, 2])
    top1 = torch.tensor([[[0]], [[2]]])  # (2 steps, 1 layer, 1 head)
    assert retrieval_scores(top1, torch.tensor([10, 10]), prompt, (2, 4)).item() == pytest.approx(0.5)


def test_invalid_span_is_refused():
    with pytest.raises(ValueError):
        retrieval_scores(torch.zeros(1, 1, 1, dtype=torch.long), torch.tensor([1]), torch.tensor([1, 2]), (1, 1))


def test_rouge_recall_uses_stemming_and_threshold():
    assert rouge1_recall("eat a sandwich", "He eats sandwiches") == pytest.approx(2 / 3)
    assert is_success(rouge1_recall("purple elephant seventeen", "purple elephant seventeen!"))
    assert not is_success(rouge1_recall("purple elephant seventeen", "a purple thing"))
    assert not is_success(0.5)
