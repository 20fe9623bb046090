"""Exports for other KV tools: DuoAttention pattern directories and HeadKV score files.

Each format is read back the way its tool reads it (DuoAttention's ``load_attn_pattern``: np.loadtxt
with tabs, clipped to [0, 1], plus ``config.json``; HeadKV's ``ReasonSnapKVCluster``: first line,
np.mean of each value in file order, reshaped to (layers, heads)), rewritten here from their code.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from retrieval_heads.analysis import exports, formats
from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError

LAYERS, HEADS, KV_HEADS = 4, 12, 3  # not square, 12 heads so that "0-10" sorts before "0-2" as text


@pytest.fixture
def scores() -> HeadScores:
    """3 samples, 4 layers x 12 query heads (3 KV heads of 4), about half the scores zero."""
    rng = np.random.default_rng(1)
    samples = rng.random((3, LAYERS, HEADS)) * (rng.random((3, LAYERS, HEADS)) > 0.5)
    return HeadScores(samples, model="toy")


@pytest.fixture
def run(tmp_path, scores) -> Path:
    """A detection run directory whose summary.json knows the number of KV heads."""
    path = tmp_path / "run"
    path.mkdir()
    scores.save_paper_json(path / "head_scores.json")
    summary = {"model": "org/toy", "num_layers": LAYERS, "num_heads": HEADS, "num_kv_heads": KV_HEADS}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def duoattention_load(directory: Path):
    """``(heads, sink_size, recent_size)`` the way DuoAttention's load_attn_pattern reads them."""
    heads = np.loadtxt(os.path.join(directory, "full_attention_heads.tsv"), dtype=float, delimiter="\t")
    config = json.load(open(os.path.join(directory, "config.json")))
    return np.clip(heads, 0, 1), config["sink_size"], config["recent_size"]


def headkv_load(path: Path, num_layers: int, num_heads: int) -> np.ndarray:
    """(layers, heads) normalized scores the way HeadKV's ReasonSnapKVCluster reads them (temp 1)."""
    with open(path) as file:
        head_list = json.loads(file.readline())
    means = np.array([np.mean(values) for values in head_list.values()])
    return (means / means.sum()).reshape(num_layers, num_heads)


# DuoAttention pattern directory

def test_duo_directory_loads_with_duoattention_loader(tmp_path, run, scores):
    out = tmp_path / "pattern"
    assert main(["convert", str(run), str(out), "--format", "duo", "--sink", "32", "--recent", "128"]) == 0
    heads, sink, recent = duoattention_load(out)
    assert heads.shape == (LAYERS, KV_HEADS)
    np.testing.assert_array_equal(heads, scores.kv_view(KV_HEADS, "max"))
    assert (sink, recent) == (32, 128)
    first = (out / "full_attention_heads.tsv").read_text().splitlines()[0]
    assert [float(x) for x in first.split("\t")] == list(heads[0])  # no header line


def test_duo_defaults_and_provenance(tmp_path, run):
    assert main(["convert", str(run), str(tmp_path / "p"), "--format", "duo"]) == 0
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert (config["sink_size"], config["recent_size"]) == (exports.DUO_SINK, exports.DUO_RECENT) == (64, 256)
    info = config["retrieval_heads"]
    assert info["model"] == "org/toy" and info["num_kv_heads"] == KV_HEADS and info["scale"] == 1.0


def test_duo_from_a_bare_score_file_needs_kv_heads(tmp_path, scores, capsys):
    src = formats.save_scores(scores, tmp_path / "s.json")
    out = tmp_path / "p"
    assert main(["convert", str(src), str(out), "--format", "duo"]) == 2
    err = capsys.readouterr().err
    assert "--kv-heads" in err and err.count("\n") == 1
    assert not out.exists()
    assert main(["convert", str(src), str(out), "--format", "duo", "--kv-heads", str(KV_HEADS)]) == 0
    assert duoattention_load(out)[0].shape == (LAYERS, KV_HEADS)


def test_duo_uneven_grouping_is_a_user_error(tmp_path, scores, capsys):
    src = formats.save_scores(scores, tmp_path / "s.json")
    assert main(["convert", str(src), str(tmp_path / "p"), "--format", "duo", "--kv-heads", "5"]) == 2
    assert "12 query heads cannot be grouped into 5 KV heads" in capsys.readouterr().err


def test_sink_and_recent_belong_to_duo(tmp_path, run, capsys):
    assert main(["convert", str(run), str(tmp_path / "s.csv"), "--sink", "8"]) == 2
    assert "duo format only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # argparse: kvpress masks keys[sink:-recent], empty for 0
        main(["convert", str(run), str(tmp_path / "p"), "--format", "duo", "--recent", "0"])
    assert exit_.value.code == 2


def test_duo_directory_round_trips(tmp_path, run, scores):
    out = formats.save_scores(formats.load_scores(run), tmp_path / "p", "duo", sink=4, recent=8)
    assert formats.detect_format(out) == "duo"
    loaded = formats.load_scores(out)
    assert loaded.meta["level"] == "kv" and loaded.meta["num_kv_heads"] == KV_HEADS
    assert (loaded.meta["sink_size"], loaded.meta["recent_size"]) == (4, 8) and loaded.model == "org/toy"
    np.testing.assert_array_equal(loaded.mean, scores.kv_view(KV_HEADS, "max"))
    again = formats.save_scores(loaded, tmp_path / "q", "duo")  # KV-level scores need no --kv-heads
    np.testing.assert_array_equal(duoattention_load(again)[0], loaded.mean)


def test_duoattention_published_directory_loads(tmp_path):
    """A directory as DuoAttention ships them: np.savetxt floats, their config keys, sink 128."""
    gates = np.array([[1.0, 0.02, 0.7], [0.0, 1.0, 0.3]])
    np.savetxt(tmp_path / "full_attention_heads.tsv", gates, delimiter="\t")
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "models/Llama-3-8B", "sink_size": 128,
                                                      "recent_size": 256, "threshold": 0.5}))
    loaded = formats.load_scores(tmp_path)
    assert loaded.model == "models/Llama-3-8B" and loaded.meta["format"] == "duo"
    np.testing.assert_allclose(loaded.mean, gates)
    kv, sink, recent = exports.read_duo_pattern(tmp_path)
    np.testing.assert_allclose(kv, gates)
    assert (sink, recent) == (128, 256)


def test_one_kv_head_per_layer_still_reads_as_a_matrix(tmp_path):
    exports.write_duo_pattern(np.array([[0.2], [0.5], [0.0]]), tmp_path)
    assert duoattention_load(tmp_path)[0].shape == (3,)  # np.loadtxt alone flattens one column
    assert exports.read_duo_pattern(tmp_path)[0].shape == (3, 1)


def test_scores_above_one_are_rescaled_not_clipped(tmp_path):
    kv = np.array([[2.0, 1.5], [0.5, 0.0]])
    exports.write_duo_pattern(kv, tmp_path)
    heads = duoattention_load(tmp_path)[0]
    np.testing.assert_allclose(heads, kv / 2)  # clipping would tie 2.0 and 1.5
    assert json.loads((tmp_path / "config.json").read_text())["retrieval_heads"]["scale"] == 0.5


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "config.json").write_text('{"sink_size": 4, "recent_size": 8}'), "no full_attention_heads.tsv"),
    (lambda d: (d / "full_attention_heads.tsv").write_text("0.1\t0.2\n"), "no config.json"),
    (lambda d: [(d / "full_attention_heads.tsv").write_text("0.1\t0.2\n"),
                (d / "config.json").write_text('{"sink_size": 4}')], "recent_size must be a non-negative integer"),
    (lambda d: [(d / "full_attention_heads.tsv").write_text("0.1\tx\n"),
                (d / "config.json").write_text('{"sink_size": 4, "recent_size": 8}')], "not a tab-separated table"),
])
def test_bad_pattern_directories(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(UserError, match=message):
        exports.read_duo_pattern(tmp_path)


def test_duo_output_must_be_a_directory(tmp_path, run):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        formats.save_scores(formats.load_scores(run), tmp_path / "file", "duo")


# HeadKV score file

def test_headkv_file_reshapes_layer_major(tmp_path, scores):
    shuffled = scores.to_paper_dict()
    src = tmp_path / "text_order.json"  # keys as text sorts them: 0-0, 0-1, 0-10, 0-11, 0-2, ...
    src.write_text(json.dumps(dict(sorted(shuffled.items()))))
    out = tmp_path / "headkv.json"
    assert main(["convert", str(src), str(out), "--format", "headkv"]) == 0
    assert len(out.read_text().splitlines()) == 1
    got = headkv_load(out, LAYERS, HEADS)
    np.testing.assert_allclose(got, scores.mean / scores.mean.sum())
    assert not np.allclose(headkv_load(src, LAYERS, HEADS), got)  # the text order would misplace heads


def test_headkv_from_a_run_keeps_every_sample(tmp_path, run, scores):
    out = formats.save_scores(formats.load_scores(run), tmp_path / "h.json", "headkv")
    data = json.loads(out.read_text())
    assert list(data)[:3] == ["0-0", "0-1", "0-2"] and len(data["3-11"]) == 3
    np.testing.assert_allclose(headkv_load(out, LAYERS, HEADS), scores.mean / scores.mean.sum())


def test_headkv_rejects_what_its_loader_cannot_read(tmp_path, scores):
    kv = formats.load_scores(formats.save_scores(scores, tmp_path / "s.tsv", num_kv_heads=KV_HEADS))
    with pytest.raises(UserError, match="per KV head"):
        exports.write_headkv(kv, tmp_path / "a.json")
    with pytest.raises(UserError, match="no successful samples"):
        exports.write_headkv(HeadScores(np.zeros((0, 2, 2))), tmp_path / "b.json")
    with pytest.raises(UserError, match="every score is zero"):
        exports.write_headkv(HeadScores(np.zeros((2, 2, 2))), tmp_path / "c.json")
    assert not any((tmp_path / n).exists() for n in ("a.json", "b.json", "c.json"))


# the paper's published scores (skipped without ../shared)

def test_paper_scores_export_to_both_formats(tmp_path):
    path = Path(__file__).resolve().parents[2] / "shared" / "reference" / "head_scores" / "Mistral-7B-v0.2-hf.json"
    if not path.is_file():
        pytest.skip(f"paper's score file not available: {path}")
    mistral = formats.load_scores(path, num_kv_heads=8)  # Mistral-7B: 32 layers, 32 query heads, 8 KV heads
    heads, _, _ = duoattention_load(formats.save_scores(mistral, tmp_path / "duo", "duo"))
    assert heads.shape == (32, 8)
    np.testing.assert_array_equal(heads, mistral.kv_view(8, "max"))
    out = formats.save_scores(mistral, tmp_path / "headkv.json", "headkv")
    np.testing.assert_allclose(headkv_load(out, 32, 32), mistral.mean / mistral.mean.sum())
