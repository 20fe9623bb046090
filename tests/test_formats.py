"""Loading and saving head scores: run directories, paper JSON, CSV, DuoAttention TSV; line-level errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval_heads.analysis import formats
from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError


@pytest.fixture
def scores() -> HeadScores:
    """3 samples, 2 layers x 4 query heads (2 KV heads of 2)."""
    rng = np.random.default_rng(0)
    samples = rng.random((3, 2, 4)) * (rng.random((3, 2, 4)) > 0.4)
    return HeadScores(samples, model="toy")


def make_run(tmp_path, scores: HeadScores, **summary) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    scores.save_paper_json(run / "head_scores.json")
    if summary:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_run_dir_reads_summary(tmp_path, scores):
    run = make_run(tmp_path, scores, model="org/toy-1b", num_layers=2, num_heads=4, num_kv_heads=2, config={})
    loaded = formats.load_scores(run)
    assert loaded.model == "org/toy-1b" and loaded.meta["num_kv_heads"] == 2 and loaded.meta["format"] == "run"
    np.testing.assert_allclose(loaded.samples, scores.samples)


def test_run_dir_without_summary_uses_directory_name(tmp_path, scores):
    loaded = formats.load_scores(make_run(tmp_path, scores))
    assert loaded.model == "run" and "num_kv_heads" not in loaded.meta


def test_run_dir_summary_shape_mismatch(tmp_path, scores):
    run = make_run(tmp_path, scores, model="m", num_layers=3, num_heads=4)
    with pytest.raises(UserError, match="num_layers is 3 but head_scores.json has 2"):
        formats.load_scores(run)


def test_directory_without_scores_is_rejected(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        formats.load_scores(tmp_path)


def test_json_round_trip(tmp_path, scores):
    path = formats.save_scores(scores, tmp_path / "s.json")
    loaded = formats.load_scores(path)
    np.testing.assert_allclose(loaded.samples, scores.samples)
    assert loaded.model == "s"


def test_csv_round_trip_keeps_means(tmp_path, scores):
    path = formats.save_scores(scores, tmp_path / "s.csv")
    assert path.read_text().splitlines()[0] == "layer,head,score,active_fraction"
    loaded = formats.load_scores(path)
    assert loaded.num_samples == 1 and loaded.meta["aggregate"]
    np.testing.assert_allclose(loaded.mean, scores.mean)


def test_tsv_round_trip_is_kv_level(tmp_path, scores):
    path = formats.save_scores(scores, tmp_path / "s.tsv", num_kv_heads=2)
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(len(line.split("\t")) == 2 for line in lines)
    loaded = formats.load_scores(path)
    assert loaded.meta["level"] == "kv" and loaded.meta["num_kv_heads"] == 2
    np.testing.assert_allclose(loaded.mean, scores.kv_view(2, "max"))


def test_tsv_reads_duoattention_style_file(tmp_path):
    path = tmp_path / "full_attention_heads.tsv"
    np.savetxt(path, np.array([[1.0, 0.25], [0.0, 0.5]]), delimiter="\t")
    loaded = formats.load_scores(path)
    np.testing.assert_allclose(loaded.mean, [[1.0, 0.25], [0.0, 0.5]])


def test_tsv_needs_the_number_of_kv_heads(tmp_path, scores):
    with pytest.raises(UserError, match="--kv-heads"):
        formats.save_scores(scores, tmp_path / "s.tsv")
    scores.meta["num_kv_heads"] = 4
    assert len(formats.save_scores(scores, tmp_path / "s.tsv").read_text().splitlines()[0].split("\t")) == 4


def test_kv_level_scores_cannot_become_paper_json(tmp_path):
    path = tmp_path / "a.tsv"
    path.write_text("0.1\t0.2\n")
    with pytest.raises(UserError, match="KV-level"):
        formats.save_scores(formats.load_scores(path), tmp_path / "b.json")


def test_format_is_sniffed_without_suffix(tmp_path, scores):
    for fmt in ("json", "csv"):
        path = formats.save_scores(scores, tmp_path / f"s.{fmt}")
        plain = path.rename(tmp_path / f"plain_{fmt}")
        assert formats.detect_format(plain) == fmt
    (tmp_path / "plain_tsv").write_text("0.1\t0.2\n0.3\t0.4\n")
    assert formats.detect_format(tmp_path / "plain_tsv") == "tsv"
    (tmp_path / "junk").write_text("hello world\n")
    with pytest.raises(UserError, match="cannot tell its format"):
        formats.load_scores(tmp_path / "junk")


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("layer,head,score\n0,0,0.1\n0,1,abc\n", "line 3: score 'abc' is not a number"),
    ("layer,head,score\n0,0,0.1\n0,x,0.2\n", "line 3: head 'x' is not an integer"),
    ("layer,head,score\n0,0,0.1\n0,1\n", "line 3: expected layer,head,score"),
    ("layer,head,score\n0,0,0.1\n0,0,0.2\n", "line 3: head 0-0 appears twice"),
    ("layer,head,score\n0,0,-0.1\n", "line 2: score -0.1 must be finite and non-negative"),
    ("layer,head,score\n0,0,nan\n", "line 2: score nan must be finite"),
    ("l,h,s\n0,0,0.1\n", "line 1: header must start with layer,head,score"),
    ("layer,head,score\n0,0,0.1\n1,1,0.2\n", "head 0-1 is missing"),
    ("layer,head,score\n", "no rows after the header"),
])
def test_malformed_csv_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(UserError, match=message) as err:
        formats.load_scores(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, message", [
    ("0.1\t0.2\n0.3\n", "line 2: 1 values, earlier lines have 2"),
    ("0.1\t0.2\n\n0.3\toops\n", "line 3: score 'oops' is not a number"),
    ("0.1\t-1\n", "line 1: score -1 must be finite and non-negative"),
    ("\n\n", "no rows"),
])
def test_malformed_tsv_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.tsv", text)
    with pytest.raises(UserError, match=message) as err:
        formats.load_scores(path)
    assert str(path) in str(err.value)


def test_malformed_json_names_file(tmp_path):
    with pytest.raises(UserError, match="bad.json: not valid JSON"):
        formats.load_scores(write(tmp_path, "bad.json", '{"0-0": [0.1,'))
    with pytest.raises(UserError, match="bad2.json: key 'x' is not"):
        formats.load_scores(write(tmp_path, "bad2.json", '{"x": [0.1]}'))


def test_kv_heads_override_is_checked(tmp_path, scores):
    path = formats.save_scores(scores, tmp_path / "s.json")
    assert formats.load_scores(path, num_kv_heads=2).meta["num_kv_heads"] == 2
    with pytest.raises(UserError, match="cannot be grouped into 3"):
        formats.load_scores(path, num_kv_heads=3)
    tsv = write(tmp_path, "kv.tsv", "0.1\t0.2\n")
    with pytest.raises(UserError, match="has 2 KV heads per layer, not 4"):
        formats.load_scores(tsv, num_kv_heads=4)


def test_as_kv_level_lets_query_scores_meet_a_tsv(tmp_path, scores):
    tsv = formats.load_scores(formats.save_scores(scores, tmp_path / "s.tsv", num_kv_heads=2))
    kv = formats.as_kv_level(scores, 2)
    assert kv.shape == tsv.shape == (2, 2)
    np.testing.assert_allclose(kv.mean, tsv.mean)


def test_cli_convert_and_compare_with_tsv(tmp_path, scores, capsys):
    src = formats.save_scores(scores, tmp_path / "s.json")
    assert main(["convert", str(src), str(tmp_path / "s.tsv"), "--kv-heads", "2"]) == 0
    assert main(["convert", str(src), str(tmp_path / "out.txt"), "--format", "csv"]) == 0
    assert formats.load_scores(tmp_path / "out.txt").meta["format"] == "csv"
    assert main(["convert", str(src), str(tmp_path / "x.tsv")]) == 2  # KV heads unknown
    assert main(["compare", str(src), str(tmp_path / "s.tsv"), "--kv-heads", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):])["pearson"] == pytest.approx(1.0)


def test_cli_malformed_csv_exits_2(tmp_path, capsys):
    path = write(tmp_path, "bad.csv", "layer,head,score\n0,0,zero\n")
    assert main(["analyze", str(path)]) == 2
    assert "bad.csv: line 2" in capsys.readouterr().err
