"""The `turngym` console script: envs, play (a person at a terminal, simulated by piped stdin), check."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from turngym.cli import main


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "turngym.cli", *args], input=stdin, capture_output=True,
                          text=True, timeout=300)


def test_envs_table_and_json(capsys):
    assert main(["envs"]) == 0
    table = capsys.readouterr().out
    assert "turngym/BlocksWorld-v0" in table and "turngym/Game24-v0" in table
    assert main(["envs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["id"] for r in rows} >= {"turngym/BlocksWorld-v0", "turngym/Game24-v0"}
    assert all(r["description"] and (r["max_episode_steps"] or r["kind"] != "gymnasium") for r in rows)


def test_play_by_typing_numbers_hints_and_junk():
    # Game24 test/0; ':hint' prints the oracle move; '1' picks the first admissible action; junk is fed back.
    out = run_cli("play", "turngym/Game24-v0", "--task-id", "test/0", stdin=":hint\nnot a move\n1\n:quit\n")
    assert out.returncode == 0, out.stderr
    assert "hint:" in out.stdout
    assert "invalid action" in out.stdout
    assert "Admissible actions" in out.stdout


def test_play_to_a_win_with_the_hints():
    # Typing the oracle's hint each turn wins: drive it with the oracle flag end to end.
    out = run_cli("play", "turngym/BlocksWorld-v0", "--task-id", "planbench_step4/0", "--oracle")
    assert out.returncode == 0, out.stderr
    assert "episode over: WON after 4 turns" in out.stdout


def test_play_ends_cleanly_on_eof():
    out = run_cli("play", "turngym/BlocksWorld-v0", "--seed", "1", stdin="")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("args, message", [
    (["play", "turngym/Game42-v0"], "did you mean 'turngym/Game24-v0'"),
    (["play", "turngym/Game24-v0", "--task-id", "test/9999"], "out of range"),
    (["play", "turngym/Game24-v0", "--kwarg", "split"], "KEY=VALUE"),
])
def test_bad_input_is_a_clear_error(args, message):
    out = run_cli(*args)
    assert out.returncode == 2
    assert message in out.stderr


def test_check_command():
    out = run_cli("check", "turngym/Game24-v0", "--episodes", "2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok   turngym/Game24-v0")
