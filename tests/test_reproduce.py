"""``benchmarks/reproduce.py``: every README result names a study, every study's commands parse, and the rows
read what the product writes."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


reproduce = _load("reproduce")


def test_every_readme_result_table_names_a_study_that_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = readme[readme.index("## Key results"):readme.index("## Supported architectures")]
    sections = re.split(r"\n\*\*(.+?)\*\* \(", results)[1:]
    assert sections, "no result sections found"
    for title, body in zip(sections[::2], sections[1::2]):
        named = re.findall(r"reproduce\.py ([a-z0-9-]+)", body)
        assert named, f"the README's {title!r} results name no benchmarks/reproduce.py study"
        assert set(named) <= set(reproduce.STUDIES), set(named) - set(reproduce.STUDIES)


@pytest.mark.parametrize("name", sorted(reproduce.STUDIES))
def test_every_study_command_parses(name, tmp_path):
    from retrieval_heads.cli import build_parser

    parser = build_parser()
    for step in reproduce.STUDIES[name].steps:
        argv = step.command(tmp_path)
        if argv[0] == "retrieval-heads":
            parser.parse_args(argv[1:])  # SystemExit on a flag the CLI does not offer
        else:
            assert (ROOT / argv[1]).is_file(), argv[1]


def test_detection_rows_read_a_detect_run(tiny_tokenizer, tmp_path, forced_needles):
    from conftest import build_tiny, forced_answer

    from retrieval_heads.detection.detect import run_detection
    from retrieval_heads.models import LoadedModel
    from retrieval_heads.sweep.grid import SweepConfig

    loaded = LoadedModel(build_tiny("llama"), tiny_tokenizer, "tiny-llama", 0.0)
    config = SweepConfig(model="tiny-llama", needles=forced_needles, lengths=[200], depths=[50], max_new_tokens=4,
                         chunk_size=64)
    with forced_answer(loaded.model, loaded.tokenizer):
        result = run_detection(loaded, config, tmp_path / "detect", progress=False)
    [row] = reproduce.detection_rows("detect")(tmp_path)
    summary = result.summary
    assert row.startswith(f"tiny-llama: {summary['n_retrieval_heads']} of 24 heads")
    assert f"{summary['successes']} of {summary['samples']} samples retrieved" in row


def _condition(root: Path, name: str, scores: list[float]) -> None:
    run = root / name / "L4000"
    run.mkdir(parents=True)
    run.joinpath("results.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "score": s}) + "\n"
                                                     for i, s in enumerate(scores)))
    run.joinpath("kv_samples.jsonl").write_text("".join(json.dumps({"id": f"s{i}", "kv_bytes": 1, "dense_kv_bytes": 10})
                                                        + "\n" for i in range(len(scores))))


def test_pooled_share_pools_the_samples_of_every_setting(tmp_path):
    kv_table = _load("kv_table")
    _condition(tmp_path / "a", "full", [100, 50])
    _condition(tmp_path / "a", "snapkv-0.15", [100, 0])
    _condition(tmp_path / "b", "full", [50, 0])
    _condition(tmp_path / "b", "snapkv-0.15", [50, 50])
    found = kv_table.pooled_share([tmp_path / "a", tmp_path / "b"], policy="snapkv", budget=0.15)
    assert found["samples"] == 4 and found["share"] == pytest.approx(200 / 200) and found["against_share"] == 1
    assert found["low"] <= found["share"] <= found["high"]
    with pytest.raises(SystemExit, match="no retrieval-snapkv-0.15"):
        kv_table.pooled_share([tmp_path / "a"], policy="retrieval-snapkv", budget=0.15)
    assert np.isfinite(found["high"])


def test_kvpress_steps_run_in_kvpress_environment(tmp_path, monkeypatch):
    step = next(s for s in reproduce.STUDIES["kv-ruler-frontier"].steps if s.argv[0] == "kvpress-python")
    monkeypatch.setenv(reproduce.KVPRESS_PYTHON, str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="kvpress's own environment"):
        reproduce.executable(step.command(tmp_path))
    python = tmp_path / "python"
    python.write_text("")
    monkeypatch.setenv(reproduce.KVPRESS_PYTHON, str(python))
    argv = reproduce.executable(step.command(tmp_path))
    assert argv[:2] == [str(python), "benchmarks/kvpress_peer.py"] and "--resume" in argv and step.capture
