"""One vocabulary across commands: each word means one thing everywhere, a renamed flag or value keeps its old
spelling for one release (accepted, with one warning line), and a command offers only the flags it acts on."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from retrieval_heads.cli import build_parser, main
from retrieval_heads.core.head_scores import HeadScores
from retrieval_heads.errors import UserError


def parse(argv: list[str]):
    return build_parser().parse_args(argv)


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("retrieval-heads: warning:")]


def one_warning(capsys, old: str, new: str) -> None:
    err = capsys.readouterr().err
    assert warnings_in(err) == [f"retrieval-heads: warning: {old} is deprecated; use {new}"], err


def rejected(argv: list[str], capsys) -> None:
    """argparse refuses ``argv`` (exit 2, "unrecognized arguments")."""
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    assert stop.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# ---- 1. --stability S is the target; --until-stable the switch (detect and analyze alike) ------------------------

@pytest.fixture
def per_sample_file(tmp_path):
    rng = np.random.default_rng(0)
    samples = (rng.random((60, 3, 4)) < 0.05).astype(float)
    samples[:, 0, 1] = samples[:, 2, 3] = 1.0
    path = tmp_path / "toy.json"
    HeadScores(samples, model="toy").save_paper_json(path)
    return str(path)


def replay(argv: list[str], capsys) -> dict:
    assert main(argv + ["--orders", "2", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_stability_is_the_target_in_detect_and_analyze(per_sample_file, capsys):
    detect = parse(["detect", "--until-stable", "--stability", "0.9"])
    assert detect.until_stable is True and detect.stability == 0.9
    analyze = parse(["analyze", per_sample_file, "--until-stable", "--stability", "0.9"])
    assert analyze.until_stable is True and analyze.stability == 0.9 and analyze.source == per_sample_file
    assert not warnings_in(capsys.readouterr().err)
    result = replay(["analyze", per_sample_file, "--until-stable", "--stability", "0.9"], capsys)
    assert result["rule"]["stability"] == 0.9
    assert "rule" not in replay(["analyze", per_sample_file, "--stability", "0.9"], capsys)  # no switch, no replay


def test_analyze_target_is_a_deprecated_spelling_of_stability(per_sample_file, capsys):
    new = replay(["analyze", per_sample_file, "--until-stable", "--stability", "0.8"], capsys)
    old = replay(["analyze", per_sample_file, "--until-stable", "--target", "0.8"], capsys)
    assert old == new and old["rule"]["stability"] == 0.8
    main(["analyze", per_sample_file, "--until-stable", "--target", "0.8", "--orders", "2"])
    one_warning(capsys, "--target", "--stability")


@pytest.mark.parametrize("where", ["after the run", "before the run"])
def test_bare_analyze_stability_is_a_deprecated_spelling_of_until_stable(per_sample_file, capsys, where):
    argv = (["analyze", per_sample_file, "--stability"] if where == "after the run"
            else ["analyze", "--stability", per_sample_file])
    old = replay(argv, capsys)
    assert old == replay(["analyze", per_sample_file, "--until-stable"], capsys)
    assert old["rule"]["stability"] == 0.95
    main(argv + ["--orders", "2"])
    one_warning(capsys, "--stability without a value", "--until-stable")


def test_analyze_without_a_source_is_one_line(capsys):
    assert main(["analyze", "--until-stable"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["retrieval-heads: error: analyze needs RUN_OR_SCORES: a run directory or a score file"]


# ---- 2. --budgets everywhere; restore takes one ------------------------------------------------------------------

def test_restore_takes_budgets_and_budget_is_a_deprecated_alias(capsys):
    assert parse(["restore", "--budgets", "0.3"]).budgets == "0.3"
    assert parse(["restore"]).budgets == "0.15"
    assert not warnings_in(capsys.readouterr().err)
    assert parse(["restore", "--budget", "0.3"]).budgets == "0.3"
    one_warning(capsys, "--budget", "--budgets")


def test_restore_refuses_more_than_one_budget_in_one_line(capsys):
    assert main(["restore", "--model", "no-such-model", "--budgets", "0.1,0.2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "retrieval-heads: error: restore chooses heads for one budget; --budgets 0.1,0.2 names 2 (run restore once "
        "per budget)"]
    assert main(["restore", "--model", "no-such-model", "--budget", "0.1,0.2"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2  # the deprecation, then the error


def test_bench_kv_budget_is_bytes_for_every_cache():
    import runpy
    from pathlib import Path

    from retrieval_heads.kv.policy import PolicySettings

    bench = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kv.py"))
    kv = np.random.default_rng(0).random((4, 3))
    eligible = np.ones(4, dtype=bool)
    settings = PolicySettings(sink=4, window=60)
    for budget in (0.05, 0.2, 0.5):
        for policy in ("headwise", "retrieval", "uniform", "snapkv", "headkv"):
            job, plan = bench["cache_job"](policy, budget, 1000, kv_scores=kv, eligible=eligible, settings=settings)
            assert plan.byte_fraction(1000) <= budget + 0.5 / 1000, (policy, budget)
        headwise, plan = bench["cache_job"]("headwise", budget, 1000, kv_scores=kv, eligible=eligible,
                                            settings=settings)
        assert headwise["prefill"] == "lambda" and (headwise["sink"], headwise["window"]) == (plan.sink,
                                                                                              plan.recent_window)
    _, plan = bench["cache_job"]("headwise", 0.2, 1000, kv_scores=kv, eligible=eligible, settings=settings)
    # 0.2 of the bytes hold 1 whole head of 12 ((1000 + 11 x 64) / 12000 = 0.142; 2: 0.218); 0.2 of the heads was 2
    assert plan.num_full == 1


# ---- 3. report --out is a directory --------------------------------------------------------------------------------

@pytest.fixture
def run_dir(tmp_path):
    from retrieval_heads.io import write_json_atomic

    run = tmp_path / "run"
    run.mkdir()
    HeadScores(np.random.default_rng(1).random((6, 2, 4)), model="toy").save_paper_json(run / "head_scores.json")
    write_json_atomic(run / "summary.json", {"model": "toy", "num_layers": 2, "num_heads": 4})
    return run


def test_report_out_is_a_directory_and_a_file_name_is_deprecated(run_dir, tmp_path, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").is_file() and not capsys.readouterr().err
    assert main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.html").is_file() and not capsys.readouterr().err
    old = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(run_dir), "--out", str(old)]) == 0
    assert old.is_file() and not (old / "report.html").exists()
    one_warning(capsys, "--out FILE.html", "--out DIR (the report is DIR/report.html)")


# ---- 4. a command offers only the flags it acts on -------------------------------------------------------------

@pytest.mark.parametrize("command, flag", [
    (c, f) for c in ("lookup", "restore", "kv-eval") for f in (["--batch-size", "2"], ["--block-size", "5"])
] + [("lookup", ["--no-share-prefix"]), ("restore", ["--no-share-prefix"]), ("restore", ["--resume"]),
       ("lookup", ["--max-new-tokens", "5"])])
def test_flags_a_command_ignores_are_not_offered(command, flag, capsys):
    rejected([command, "--scores", "x", *flag] if command == "kv-eval" else [command, *flag], capsys)


def test_flags_are_still_offered_where_they_act():
    for command in ("detect", "niah", "mask-sweep"):
        args = parse([command, "--batch-size", "2", "--block-size", "5", "--no-share-prefix", "--resume"]
                     + (["--scores", "x"] if command == "mask-sweep" else []))
        assert (args.batch_size, args.block_size, args.no_share_prefix, args.resume) == (2, 5, True, True)
    kv = parse(["kv-eval", "--scores", "x", "--no-share-prefix", "--resume"])  # its prefills reuse prefixes
    assert kv.no_share_prefix and kv.resume
    assert parse(["lookup", "--resume"]).resume


def test_sweep_config_reads_flags_a_command_does_not_offer_as_their_defaults():
    from retrieval_heads.cli.common import sweep_config_from_args
    from retrieval_heads.sweep.grid import SweepConfig

    config = sweep_config_from_args(parse(["restore", "--lengths", "300"]))
    default = SweepConfig()
    assert (config.batch_size, config.block_size, config.share_prefix) == (default.batch_size, 0, True)


# ---- 5. one name, one thing: selections, token rankings, windows, defaults ------------------------------------

@pytest.mark.parametrize("flag, old, new", [
    ("--selection", "snapkv", "window"), ("--selection", "reconstruct", "reread"),
    ("--token-ranking", "retrieval", "retrieval-heads")])
def test_kv_eval_old_values_are_deprecated_aliases(flag, old, new, capsys):
    dest = flag.lstrip("-").replace("-", "_")
    assert getattr(parse(["kv-eval", "--scores", "x", flag, new]), dest) == new
    assert not warnings_in(capsys.readouterr().err)
    assert getattr(parse(["kv-eval", "--scores", "x", flag, old]), dest) == new
    one_warning(capsys, f"{flag} {old}", f"{flag} {new}")
    with pytest.raises(SystemExit):
        parse(["kv-eval", "--scores", "x", flag, "kvzip"])


def test_kv_eval_defaults_are_the_new_names(capsys):
    args = parse(["kv-eval", "--scores", "x"])
    assert (args.selection, args.token_ranking) == ("window", "own") and not capsys.readouterr().err


def test_the_library_reads_old_names_in_one_place():
    from retrieval_heads.kv.policy import KvPlan, PolicySettings, current, current_names

    assert PolicySettings(selection="snapkv", token_ranking="retrieval") == PolicySettings(
        selection="window", token_ranking="retrieval-heads")
    assert KvPlan("snapkv", np.ones((1, 1), bool), np.ones(1, bool), selection="reconstruct").selection == "reread"
    assert current("selection", "window") == "window" and current("token_ranking", None) is None
    assert current_names({"selection": "snapkv", "token_ranking": "retrieval", "policy": "snapkv"}) == {
        "selection": "window", "token_ranking": "retrieval-heads", "policy": "snapkv"}


def _plans():
    from retrieval_heads.kv.policy import PolicySettings, make_plan

    kv, eligible = np.array([[0.9, 0.0], [0.5, 0.2]]), np.ones(2, dtype=bool)
    settings = PolicySettings(sink=4, window=16, obs_window=8)
    return {policy: make_plan(policy, 0.5, 200, kv_scores=kv, eligible=eligible, settings=settings)
            for policy in ("full", "retrieval", "uniform", "snapkv")}


def test_a_plan_has_a_recent_window_and_an_observation_window_apart():
    plans = _plans()
    assert (plans["retrieval"].recent_window, plans["retrieval"].obs_window) == (16, None)
    assert (plans["snapkv"].recent_window, plans["snapkv"].obs_window) == (0, 8)
    assert "obs_window" not in plans["retrieval"].describe() and plans["retrieval"].describe()["recent_window"] == 16
    assert "recent_window" not in plans["snapkv"].describe() and plans["snapkv"].describe()["obs_window"] == 8
    assert not {"sink", "recent_window", "obs_window"} & set(plans["full"].describe())  # keeps every token
    assert all("window" not in plan.describe() for plan in plans.values())


def _before_the_renames(described: dict) -> dict:
    """What kv-eval wrote to kv_plan.json before: one ``window``, old names, the full plan's sink 4 and window 64."""
    old = {k: v for k, v in described.items() if k not in ("recent_window", "obs_window")}
    if described["policy"] == "full":
        return {**old, "sink": 4, "window": 64}
    old["window"] = described.get("obs_window", described.get("recent_window"))
    if "selection" in old:
        old["selection"] = {"window": "snapkv", "reread": "reconstruct"}[old["selection"]]
    return old


def test_old_kv_plan_files_resume(tmp_path):
    from retrieval_heads.kv.policy import read_plan
    from retrieval_heads.kv.prefill import describe
    from retrieval_heads.kv.records import PLAN, check_plan

    for name, plan in _plans().items():
        run = tmp_path / name
        run.mkdir()
        (run / "results.jsonl").write_text('{"id": "s0"}\n')
        described = describe(plan, False)
        old = _before_the_renames(json.loads(json.dumps(described)))
        assert read_plan(old) == json.loads(json.dumps(described))
        (run / PLAN).write_text(json.dumps(old))
        check_plan(run, described, resume=True, overwrite=False)  # not "another plan"
        assert json.loads((run / PLAN).read_text()) == json.loads(json.dumps(described))  # rewritten as today's
    other = describe(_plans()["snapkv"], True)
    with pytest.raises(UserError, match="another KV plan"):
        check_plan(tmp_path / "snapkv", other, resume=True, overwrite=False)


def test_one_set_of_sink_and_window_defaults():
    from retrieval_heads.cli.kv import KvEval
    from retrieval_heads.cli.restore import Restore
    from retrieval_heads.kv import policy
    from retrieval_heads.kv.attention import HeadwiseCacheFactory
    from retrieval_heads.kv.cache import HeadwiseCache
    from retrieval_heads.kv.evaluate import run_kv_eval
    from retrieval_heads.kv.restore import run_restore
    from retrieval_heads.kv.snapkv import ObservationWindow

    expected = {"sink": policy.DEFAULT_SINK, "window": policy.DEFAULT_WINDOW, "obs_window": policy.DEFAULT_OBS_WINDOW}
    assert expected == {"sink": 64, "window": 384, "obs_window": 32}
    settings = policy.PolicySettings()
    assert {k: getattr(settings, k) for k in expected} == expected
    kv_eval = parse(["kv-eval", "--scores", "x"])
    assert {k: getattr(kv_eval, k) for k in expected} == expected
    restore = parse(["restore"])
    assert (restore.sink, restore.obs_window) == (expected["sink"], expected["obs_window"])
    for fn in (run_kv_eval, run_restore, policy.top_fraction, policy.top_count, policy.retrieval_for_bytes,
               policy.above_threshold, policy.explicit, policy.random_plan, policy.uniform_for_bytes,
               HeadwiseCache.__init__, HeadwiseCache.from_prefilled, HeadwiseCacheFactory.__init__):
        params = inspect.signature(fn).parameters
        for name, value in expected.items():
            if name in params:
                assert params[name].default == value, (fn.__qualname__, name)
    plan = policy.KvPlan("retrieval", np.zeros((1, 1), bool), np.ones(1, bool))
    assert (plan.sink, plan.recent_window) == (expected["sink"], expected["window"])
    assert ObservationWindow().window == expected["obs_window"]
    assert KvEval and Restore


# ---- 6. the full share restore chose with is the one kv-eval uses by default ------------------------------------

def test_full_share_comes_from_a_restore_run_unless_given():
    from retrieval_heads.kv.evaluate import full_share_for
    from retrieval_heads.kv.policy import DEFAULT_FULL_SHARE

    restored = HeadScores(np.zeros((1, 2, 2)), meta={"source": "runs/x/restore", "summary": {
        "criterion": "restore", "full_share": 0.8, "budget": 0.15}})
    assert full_share_for(restored) == (0.8, "recorded by the restore run runs/x/restore, with its heads chosen "
                                             "for budget 0.15")
    assert full_share_for(restored, 0.3) == (0.3, "given")
    looked_up = HeadScores(np.zeros((1, 2, 2)), meta={"summary": {"criterion": "lookup"}})
    assert full_share_for(looked_up) == (DEFAULT_FULL_SHARE, "default")
    assert parse(["kv-eval", "--scores", "x"]).full_share is None  # resolved against the scores
