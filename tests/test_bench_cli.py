"""`turngym bench`: the CLI end to end with the oracle, its statistics, files and errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from turngym.agents.evaluation import pass_at_k, pass_hat_k, wilson_interval
from turngym.agents.types import load_trajectories
from turngym.benchmarks.bench import format_table, summarize
from turngym.cli import main

G24 = "turngym/Game24-v0"
BW = "turngym/BlocksWorld-v0"


def test_oracle_scores_100_percent_through_the_cli(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["bench", "--env", G24, "--env", BW, "--agent", "oracle", "--episodes", "5", "--seeds", "2",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "success % [95% CI]" in printed and "100.0 [" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is False and len(summary["rows"]) == 2
    for row in summary["rows"]:
        assert row["agent"] == "oracle" and row["episodes"] == 10 and row["errors"] == 0
        assert row["success_rate"] == 1.0 and row["success_by_seed"] == [1.0, 1.0]
        assert row["ci95"][1] == 1.0 and 0.6 < row["ci95"][0] < 0.8  # Wilson, n = 10
        assert row["invalid_action_rate"] == 0.0 and row["env_steps_per_s"] > 0
        trajs = load_trajectories(out / row["trajectories"])
        assert len(trajs) == 10 and all(t.won for t in trajs)
        assert sorted({t.meta["plan_seed"] for t in trajs}) == [0, 1]


def test_the_console_script_runs_bench(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "turngym.cli", "bench", "--env", G24, "--agent", "oracle",
                           "--agent", "random", "--episodes", "4", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("Game24-v0")]
    assert len(lines) == 2 and "oracle" in lines[0] and "random" in lines[1]  # a comparison table
    assert (out / "Game24-v0__oracle.jsonl").exists() and (out / "Game24-v0__random.jsonl").exists()


def test_list_shows_envs_agents_and_models(capsys):
    assert main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for word in (G24, BW, "react", "p-react", "tool", "oracle", "random", "openai:URL", "workspace", "splits"):
        assert word in out


@pytest.mark.parametrize("argv, message", [
    (["bench", "--env", G24, "--agent", "reactt"], "did you mean 'react'"),
    (["bench", "--env", "turngym/Game42-v0", "--agent", "oracle"], "Game24"),
    (["bench", "--agent", "oracle"], "at least one --env"),
    (["bench", "--env", G24, "--agent", "oracle", "--episodes", "0"], "--episodes must be >= 1"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_bench_module_imports_no_torch():
    code = "import sys, turngym.cli, turngym.benchmarks.bench; turngym.cli.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_wilson_interval_matches_known_values():
    lo, hi = wilson_interval(8, 10)
    assert math.isclose(lo, 0.4902, abs_tol=1e-3) and math.isclose(hi, 0.9433, abs_tol=1e-3)
    assert wilson_interval(0, 8)[0] == 0.0 and wilson_interval(0, 8)[1] > 0.3
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_pass_at_k_and_pass_hat_k():
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 3, 2) == 1.0
    assert math.isclose(pass_at_k(4, 1, 2), 0.5)
    assert math.isclose(pass_hat_k(4, 2, 2), 1 / 6) and pass_hat_k(4, 4, 2) == 1.0


def test_summary_counts_env_errors_as_attempted_and_reports_the_seed_spread():
    """Issue 17: an env error is an attempted episode not won (shown in `errors`), so crashes cannot inflate success."""
    from turngym.agents.types import Step, Trajectory

    def traj(won, seed, error=None, valid=True):
        return Trajectory(env_id=G24, task_id="t", group_id=f"g{seed}", won=won, error=error,
                          total_reward=float(won), steps=[Step(observation="o", action_valid=valid)],
                          meta={"plan_seed": seed, "env_steps": 1})

    trajs = [traj(True, 0), traj(False, 0, valid=False), traj(True, 1), traj(True, 1), traj(False, 1, error="boom")]
    row = summarize(trajs, {"wall_s": 2.0, "env_steps": 4, "env_steps_per_s": 2.0}, seeds=[0, 1])
    assert row["episodes"] == 5 and row["errors"] == 1 and row["successes"] == 3
    assert row["success_by_seed"] == [0.5, 2 / 3] and math.isclose(row["seed_sd"], math.sqrt(2 * (1 / 12) ** 2))
    assert math.isclose(row["invalid_action_rate"], 0.25)
    row.update(env=G24, agent="x", model="-")
    assert "60.0 [" in format_table([row])


@pytest.mark.slow
def test_react_with_the_embedded_model_runs_and_reports(tmp_path):
    """The issue's done-means (short): bench runs ReAct on the embedded SmolLM2 and reports honestly."""
    out = tmp_path / "react"
    assert main(["bench", "--env", G24, "--agent", "react", "--episodes", "2", "--max-steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    row = json.loads((out / "summary.json").read_text())["rows"][0]
    assert row["episodes"] == 2 and row["errors"] == 0 and row["generated_tokens"] > 0
    trajs = load_trajectories(out / row["trajectories"])
    assert all(s.response_ids and s.prompt_ids for t in trajs for s in t.steps)


@pytest.mark.slow
def test_react_and_tool_agents_with_the_embedded_model_run_on_swe(tmp_path):
    """Issue 20's done-means: bench runs ReAct and the tool-calling agent on SWE (bwrap sandbox) with SmolLM2."""
    pytest.importorskip("libcst")
    out = tmp_path / "swe"
    assert main(["bench", "--env", "turngym/SWE-v0", "--agent", "react", "--agent", "tool", "--model", "default",
                 "--episodes", "1", "--max-steps", "2", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert [r["agent"] for r in rows] == ["react", "tool"]
    for row in rows:
        assert row["episodes"] == 1 and row["errors"] == 0 and row["generated_tokens"] > 0
        trajs = load_trajectories(out / row["trajectories"])
        assert all(len(t.steps) >= 1 and all(s.response_ids for s in t.steps) for t in trajs)
