"""The paper's figures, recomputed from its published per-head score files.

The files live outside the project (``../shared/reference/head_scores`` next to the checkout, or
``$RETRIEVAL_HEADS_REFERENCE``); every test skips when they are absent.
"""

import json
import os
from functools import lru_cache
from pathlib import Path

import pytest

import retrieval_heads.analysis.properties as analysis
from retrieval_heads.analysis.formats import load_scores
from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores

LLAMA2_7B = "llama-2-7b-80k"
LLAMA2_13B = "llama-2-13b-64k"
MISTRAL = "Mistral-7B-v0.2-hf"
QWEN = "Qwen1.5-14B"
QWEN_CHAT = "Qwen1.5-14B-Chat"


def reference_dir() -> Path:
    env = os.environ.get("RETRIEVAL_HEADS_REFERENCE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "reference" / "head_scores"


@lru_cache(maxsize=None)
def _load(name: str) -> HeadScores:
    return load_scores(reference_dir() / f"{name}.json")


def paper(name: str) -> HeadScores:
    path = reference_dir() / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"paper's score file not available: {path}")
    return _load(name)


@pytest.mark.parametrize("name", [
    LLAMA2_7B,
    MISTRAL,
    QWEN,
    QWEN_CHAT,
    # Measured 33 of 1600 heads = 2.06%: sparse, but below the 3-6% band quoted for the paper's Fig. 3.
    pytest.param(LLAMA2_13B, marks=pytest.mark.xfail(strict=True, reason="2.06% retrieval heads, under 3%")),
])
def test_three_to_six_percent_of_heads_are_retrieval_heads(name):
    sp = analysis.sparsity(paper(name))
    assert 3.0 <= sp.percent_retrieval <= 6.0, f"{name}: {sp.n_retrieval} heads = {sp.percent_retrieval:.2f}%"


@pytest.mark.parametrize("name", [LLAMA2_7B, LLAMA2_13B, MISTRAL, QWEN, QWEN_CHAT])
def test_retrieval_heads_are_sparse_and_most_heads_never_retrieve(name):
    sp = analysis.sparsity(paper(name))
    zero, low, mid, high = (b.percent for b in sp.buckets)
    assert sp.percent_retrieval < 5.0  # the paper's abstract: "less than 5%" of heads are retrieval heads
    assert zero + low > 94.0 and zero > 50.0, f"{name}: buckets {[round(b.percent, 2) for b in sp.buckets]}"
    assert high < 1.0


def test_base_and_chat_models_share_retrieval_heads():
    result = analysis.compare(paper(QWEN), paper(QWEN_CHAT))
    assert result.pearson > 0.8, f"pearson={result.pearson:.4f}"
    assert result.topk_overlap_fraction >= 0.8, f"top-20 overlap {result.topk_overlap}"


@pytest.mark.parametrize("a, b", [(QWEN, LLAMA2_13B), (QWEN_CHAT, LLAMA2_13B), (MISTRAL, LLAMA2_7B)])
def test_different_families_do_not_correlate(a, b):
    result = analysis.compare(paper(a), paper(b))
    assert abs(result.pearson) < 0.1, f"{a} vs {b}: pearson={result.pearson:.4f}"


def test_llama2_7b_has_twelve_heads_active_in_every_sample():
    act = analysis.activation(paper(LLAMA2_7B))
    assert len(act.always_active) == 12, [(h.layer, h.head) for h in act.always_active]
    assert all(h.score > 0.1 for h in act.always_active)  # all of them are retrieval heads
    assert act.n_empty_samples == 0


@pytest.mark.parametrize("name", [QWEN, QWEN_CHAT])
def test_qwen_files_hold_samples_where_no_head_scored(name):
    """No Qwen head is active in every sample only because 8 samples score 0 for every head."""
    act = analysis.activation(paper(name))
    assert len(act.always_active) == 0 and act.n_empty_samples == 8 and act.n_always_active_nonempty > 20


def test_cli_reproduces_the_always_active_count(capsys):
    path = reference_dir() / f"{LLAMA2_7B}.json"
    paper(LLAMA2_7B)  # skip when absent
    assert main(["analyze", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["always_active"]) == 12 and out["n_retrieval_heads"] == 33
