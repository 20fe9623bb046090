"""Figures are written as PNGs; the HTML report is self-contained, escaped, and finds the run's other results."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from retrieval_heads.analysis import plots
from retrieval_heads.analysis.report import build_report, write_plots
from retrieval_heads.cli import main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def scores() -> HeadScores:
    """5 samples, 4 layers x 4 heads (2 KV heads); head 2-1 always active."""
    rng = np.random.default_rng(0)
    samples = rng.random((5, 4, 4)) * 0.2 * (rng.random((5, 4, 4)) > 0.6)
    samples[:, 2, 1] = 0.7
    return HeadScores(samples, model="toy")


@pytest.fixture
def run_dir(tmp_path, scores):
    """A run directory with a summary, a NIAH result with rows, and a figure in a subdirectory."""
    run = tmp_path / "run"
    run.mkdir()
    scores.save_paper_json(run / "head_scores.json")
    summary = {"model": "toy <script>alert(1)</script>", "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
               "config": {"lengths": [1000, 2000], "haystack": "https://example.com/essay.txt"}}
    (run / "summary.json").write_text(json.dumps(summary))
    niah = run / "niah_top20"
    niah.mkdir()
    (niah / "summary.json").write_text(json.dumps({
        "masked_heads": 20, "mean_recall": 0.42,
        "rows": [{"length": 1000, "depth": 0.0, "recall": 1.0}, {"length": 2000, "depth": 50.0, "recall": "<i>0</i>"}],
    }))
    (run / "kv_eval").mkdir()
    (run / "kv_eval" / "summary.json").write_text("{broken")
    plots.heatmap(np.eye(3), niah / "recall.png", title="recall")
    return run


def assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


def test_each_plot_writes_a_png_and_returns_its_path(tmp_path, scores):
    written = [
        plots.heatmap(scores.mean, tmp_path / "h.png"),
        plots.bucket_histogram(["= 0", "(0, 0.1]", "(0.1, 0.5]", "> 0.5"], [10, 5, 2, 1], tmp_path / "b.png"),
        plots.layer_distribution([0, 1, 3, 0], tmp_path / "l.png"),
        plots.activation_frequency(["L0H1", "L2H1"], [0.5, 1.0], tmp_path / "a.png", scores=[0.2, 1.3]),
        plots.comparison_scatter(scores.mean, scores.mean.T, tmp_path / "sub" / "c.png", label_a="x", label_b="y"),
    ]
    for path in written:
        assert_png(path)


def test_write_plots_covers_kv_view(tmp_path, scores):
    figures = write_plots(scores, tmp_path, num_kv_heads=2)
    names = {f.path.name for f in figures}
    assert names == {"heatmap.png", "buckets.png", "layers.png", "activation.png", "kv_heatmap.png"}
    for f in figures:
        assert_png(f.path)


def test_plotting_modules_import_without_matplotlib():
    code = "import sys, retrieval_heads.analysis.plots, retrieval_heads.cli.analyze; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_report_is_self_contained_and_escaped(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "report.html"
    text = path.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<link" not in text and "<script" not in text and "@import" not in text
    assert text.count("data:image/png;base64,") >= 6  # 5 analysis figures + recall.png
    assert "toy &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;i&gt;0&lt;/i&gt;" in text
    assert "niah_top20" in text and "mean_recall" in text and "Could not read summary.json" in text
    assert "niah_top20/recall.png" in text
    assert "https://example.com/essay.txt" in text  # shown as text, never fetched
    assert "lengths" in text and "Dynamic activation" in text and "KV heads" in text


def test_report_out_option_and_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere"  # a directory, as every other --out
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert (out / "report.html").is_file() and str(out / "report.html") in captured.out and not captured.err
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a run directory"):
        build_report(tmp_path / "elsewhere")


def test_analyze_and_compare_write_plots(run_dir, tmp_path, capsys):
    assert main(["analyze", str(run_dir), "--plots", str(tmp_path / "figs")]) == 0
    assert_png(tmp_path / "figs" / "kv_heatmap.png")
    assert main(["compare", str(run_dir), str(run_dir / "head_scores.json"), "--plot", str(tmp_path / "c.png")]) == 0
    assert_png(tmp_path / "c.png")
    assert "Pearson r (mean scores):   1.0000" in capsys.readouterr().out


def test_run_without_successful_samples(tmp_path, capsys):
    run = tmp_path / "empty"
    run.mkdir()
    HeadScores(np.zeros((0, 2, 4))).save_paper_json(run / "head_scores.json")
    assert "no successful samples" in build_report(run).read_text()
    assert main(["analyze", str(run)]) == 0
    assert "not available (there are no successful samples)" in capsys.readouterr().out


@pytest.mark.parametrize("kv_heads_known", [True, False])
def test_report_shows_kv_head_scores_as_a_heatmap_beside_the_heads(run_dir, scores, kv_heads_known):
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["kv_head_scores"] = {r: scores.kv_view(2, r).round(6).tolist() for r in ("max", "mean")}
    if not kv_heads_known:  # only the summary's table can give the KV-head view
        del summary["num_kv_heads"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    text = build_report(run_dir).read_text()
    assert "kv_head_scores" not in text and "[[" not in text  # no raw nested lists in the configuration table
    pair = text[text.index('<div class="pair">'):]
    block = pair[:pair.index("</div>")]
    assert block.count("data:image/png;base64,") == 2 and "Score of each KV head" in block


def test_frontier_names_the_token_selection_of_each_line(tmp_path, monkeypatch):
    from retrieval_heads.analysis.plots import kv
    from retrieval_heads.kv.policy import current_names

    drawn = []
    real = kv._panel

    def spy(ax, rows, right):
        real(ax, rows, right)
        drawn.extend((line.get_label(), line.get_linestyle()) for line in ax.get_lines())

    monkeypatch.setattr(kv, "_panel", spy)
    row = dict(query_agnostic=True, kv_fraction=0.15, mean_score=20.0)
    rows = [{**row, "policy": "full", "selection": None, "kv_fraction": 1.0, "mean_score": 40.0},
            {**row, "policy": "snapkv", "selection": "snapkv"}, {**row, "policy": "snapkv", "selection": "reconstruct"},
            {**row, "policy": "headkv", "selection": "reconstruct"},
            {**row, "policy": "snapkv", "selection": "reconstruct", "token_ranking": "retrieval"}]
    rows = [current_names(r) for r in rows]  # old selection names, read as today's (as kv-eval does)
    assert kv.frontier_plot(rows, tmp_path / "f.png", title="t").stat().st_size > 0
    assert ("SnapKV (same tokens per KV head)", "--") in drawn
    assert ("re-read tokens (same tokens per KV head)", "-") in drawn
    assert ("HeadKV (budget by retrieval score), re-read tokens", "-") in drawn
    assert ("re-read tokens (same tokens per KV head), ranked by retrieval heads", ":") in drawn
