"""``benchmarks/kvpress_peer.py``'s budget conversions and summary, without kvpress (which lives in its own
environment: ``tests/kvpress_compat/check_peer.py`` runs the presses there)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("kvpress_peer", ROOT / "benchmarks" / "kvpress_peer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["kvpress_peer"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_token_presses_remove_the_rest_of_the_bytes(peer):
    assert peer.compression_ratio(1.0) == 0.0
    assert peer.compression_ratio(0.2) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        peer.compression_ratio(0.0)


def test_duo_head_ratio_counts_the_window_of_streaming_heads(peer):
    # 4000 tokens, sink 64 + recent 384: a streaming head keeps 11.2% of its bytes
    h = peer.head_ratio(0.2, 4000, 64, 384)
    assert (1 - h) + h * 448 / 4000 == pytest.approx(0.2)
    assert peer.head_ratio(1.0, 4000, 64, 384) == 0.0
    with pytest.raises(peer.Unreachable):
        peer.head_ratio(0.1, 4000, 64, 384)
    # kvpress streams round(h * heads) KV heads; 90 KV heads (SmolLM2): 81 stream at h = 0.9009
    assert peer.duo_fraction(h, 90, 4000, 64, 384) == pytest.approx(1 - 81 / 90 * (1 - 448 / 4000))


def test_summary_pairs_each_press_with_its_settings_full_cache(peer):
    rows = [{"id": i, "setting": "question", "press": "full", "budget": 1.0, "score": s, "contains_answer": s > 0,
             "kept_fraction": 1.0, "seconds": 1.0} for i, s in (("a", 100.0), ("b", 50.0))]
    rows += [{"id": i, "setting": "question", "press": "snapkv", "budget": 0.1, "score": s, "contains_answer": s > 0,
              "kept_fraction": 0.1, "seconds": 1.0} for i, s in (("a", 50.0), ("b", 25.0))]
    rows.append({"id": "a", "setting": "question", "press": "duo-pattern", "budget": 0.1, "unreachable": "below"})
    summary = peer.summarize(rows)
    snap = next(e for e in summary["rows"] if e["press"] == "snapkv")
    assert snap["mean_score"] == 37.5 and snap["share_of_full"] == pytest.approx(0.5) and snap["contains"] == 2
    assert snap["low"] <= 37.5 <= snap["high"]
    duo = next(e for e in summary["rows"] if e["press"] == "duo-pattern")
    assert duo["samples"] == 0 and duo["unreachable"] == 1
    table = peer.markdown(summary)
    assert "| snapkv | 37.5 [25.0, 50.0] (10.0%) |" in table and "| duo-pattern | n/a |" in table
