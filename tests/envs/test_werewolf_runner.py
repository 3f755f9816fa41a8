"""Werewolf self-play: the batched multi-agent runner, lineups, `turngym bench --env werewolf`, `turngym play werewolf`."""

from __future__ import annotations

import importlib.util
import json

import pytest

from turngym.agents.engines import ScriptedEngine
from turngym.errors import TurngymError

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pettingzoo") is None,
                                reason="needs the werewolf extra: pip install 'turngym[werewolf]'")


def _reply(prompt) -> str:
    """A scripted model: it reads the admissible actions in its prompt and answers the first one, with chatter."""
    text = prompt[-1]["content"]
    tail = text.rsplit("\n\n", 1)[-1]
    for line in tail.splitlines():
        if line.startswith(("Admissible actions:", "Examples:")):
            first = line.split(": ", 1)[1].split(" | ")[0]
            return f"Let me think about it.\n{first}"
    return "pass"


def test_parse_lineup_and_seat_policy():
    from turngym.agents.werewolf_runner import parse_lineup, seat_policy

    lineup = parse_lineup("rule,wolves=random,seer=llm,3=llm")
    assert seat_policy(lineup, 1, "werewolf") == "random"
    assert seat_policy(lineup, 2, "seer") == "llm"
    assert seat_policy(lineup, 3, "werewolf") == "llm", "a seat number wins over a team"
    assert seat_policy(lineup, 4, "villager") == "rule"
    assert seat_policy(parse_lineup("wolves=random,rest=rule"), 1, "werewolf") == "random", "rest is only a default"
    with pytest.raises(TurngymError, match="unknown policy"):
        parse_lineup("village=gpt")
    with pytest.raises(TurngymError, match="unknown seat group"):
        parse_lineup("wizards=rule")


def test_runner_batches_llm_seats_across_games_and_records_trajectories():
    from turngym.agents.werewolf_runner import WerewolfRunner

    engine = ScriptedEngine(respond=_reply)
    runner = WerewolfRunner(engine, lineup="village=llm,wolves=rule", preset="small", max_concurrent=8)
    result = runner.run(range(8))
    assert len(result.games) == 8 and all(g.winner in ("village", "wolves", "draw") for g in result.games)
    # several games' LLM seats share one generate call
    assert max(len(batch) for batch in engine.calls) >= 4
    trajs = result.trajectories
    assert len(trajs) == 8 * 4, "one trajectory per (game, village seat)"
    for t in trajs:
        assert t.meta["policy"] == "llm" and t.meta["team"] == "village"
        assert t.group_id == f"{t.task_id}|{t.meta['role']}"
        if not t.steps:  # killed on the first night before its first turn: the outcome, no steps
            assert t.meta["env_steps"] == 0
            continue
        assert t.steps[-1].reward == t.total_reward and t.steps[-1].terminated
        assert t.won == (t.meta["winner"] == "village") and t.total_reward == (1.0 if t.won else -1.0)
        for s in t.steps:
            assert s.response_ids == list(s.response.encode()) and len(s.response_logprobs) == len(s.response_ids)
            assert s.state_key and s.info["format_ok"] and s.action_valid, (s.action, s.info)
            assert f"You are {t.meta['seat']}" in s.observation
            assert s.prompt[-1]["content"].startswith(s.observation)
    # the same seeds replay the same games
    again = WerewolfRunner(ScriptedEngine(respond=_reply), lineup="village=llm,wolves=rule", preset="small").run(range(8))
    assert [g.winner for g in again.games] == [g.winner for g in result.games]


def test_runner_without_llm_seats_needs_no_engine_and_bad_replies_never_stall():
    from turngym.agents.werewolf_runner import WerewolfRunner

    with pytest.raises(TurngymError, match="no engine"):
        WerewolfRunner(None, lineup="seer=llm")
    bots = WerewolfRunner(None, lineup="rule", preset="lspo7", record_bots=True).run(range(3))
    assert len(bots.trajectories) == 3 * 7
    junk = WerewolfRunner(ScriptedEngine(responses=["🐺🐺", "", "vote for whoever"], cycle=True), lineup="llm",
                          preset="small").run(range(2))
    assert all(g.winner == "draw" for g in junk.games)
    steps = [s for t in junk.trajectories for s in t.steps]
    assert steps and not any(s.action_valid for s in steps) and not any(s.info["format_ok"] for s in steps)


def test_bench_cli_reports_per_role_win_rates(tmp_path, capsys):
    from turngym.cli import main

    code = main(["bench", "--env", "werewolf", "--agents", "rule", "--agents", "village=random,wolves=rule",
                 "-n", "6", "--env-kwarg", "preset=small", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "village wins" in out and "seer      played by random" in out and "[" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["rows"]
    assert [r["lineup"] for r in rows] == ["rule", "village=random,wolves=rule"]
    assert rows[0]["games"] == 6 and len(rows[0]["village_ci95"]) == 2
    assert {b["role"] for b in rows[0]["by_role"]} == {"werewolf", "seer", "doctor", "villager"}


def test_bench_cli_with_an_llm_seat_writes_trajectories(tmp_path, monkeypatch):
    import turngym.benchmarks.werewolf_bench as wb
    from turngym.cli import main

    monkeypatch.setattr(wb, "_load_engine", lambda model, args: ScriptedEngine(respond=_reply))
    assert main(["bench", "--env", "turngym/Werewolf-v0", "--agents", "seer=llm,rest=rule", "-n", "3",
                 "--env-kwarg", "preset=small", "--out", str(tmp_path), "--no-progress"]) == 0
    files = list(tmp_path.glob("werewolf__*.jsonl"))
    assert len(files) == 1 and len(files[0].read_text().splitlines()) == 3


def test_play_in_the_terminal_against_bots():
    from turngym.envs.werewolf.play import play_terminal

    out: list[str] = []
    answers = iter(["1"] * 200)
    code = play_terminal(seat=3, seed=4, config={"preset": "small"}, read=lambda _: next(answers), write=out.append)
    text = "\n".join(out)
    assert code == 0 and "you are Player3" in text and "The game is over" in text and "moderator's log" in text
    with pytest.raises(TurngymError, match="out of range"):
        play_terminal(seat=9, config={"preset": "small"}, read=lambda _: "", write=out.append)


def test_cli_play_dispatches_werewolf(monkeypatch, capsys):
    from turngym.cli import main

    answers = iter([":quit"])
    monkeypatch.setattr("builtins.input", lambda _: next(answers))
    assert main(["play", "werewolf", "--seat", "2", "--seed", "1", "--kwarg", "preset=small"]) == 0
    assert "you are Player2" in capsys.readouterr().out


class _CharEngine:
    """A scripted engine with a short context counted in characters (one token per character), like a
    local engine's: render gives ids, replies name the first admissible action in the prompt."""

    name = "chars"

    def __init__(self, max_context: int):
        self.max_context = max_context
        self.prompt_lengths: list[int] = []

    def render(self, messages, tools=None):
        return [ord(c) for c in "".join(m["content"] for m in messages)]

    def generate(self, prompts, sampling, on_text=None):
        from turngym.agents.types import Completion

        out = []
        for ids in prompts:
            assert len(ids) < self.max_context, "a prompt overflowed the context"
            self.prompt_lengths.append(len(ids))
            text = _reply([{"content": "".join(map(chr, ids))}])
            out.append(Completion(text, list(text.encode()), [0.0] * len(text.encode()), prompt_ids=list(ids)))
        return out


def test_a_long_game_drops_its_oldest_transcript_lines_to_fit_the_context():
    from turngym.agents.werewolf_runner import WerewolfRunner

    engine = _CharEngine(max_context=2600)
    runner = WerewolfRunner(engine, lineup="llm", preset="small", max_concurrent=4)
    result = runner.run(range(4))
    assert len(result.games) == 4
    steps = [s for t in result.trajectories for s in t.steps]
    cut = [s for s in steps if s.info.get("transcript_lines_left_out")]
    assert cut, "no game outgrew 2,600 characters: the test needs a smaller context"
    budget = engine.max_context - runner.llm.sampling.max_tokens
    assert max(engine.prompt_lengths) <= budget
    for s in cut:
        content = s.prompt[-1]["content"]
        assert f"[... {s.info['transcript_lines_left_out']} earlier transcript line(s) left out" in content
        assert content.startswith(s.observation.split("\n\nTranscript:\n")[0])  # rules and role kept
        assert content.endswith(s.observation.rsplit("\n\n", 1)[1] + "\nYour action:")  # the question kept
        assert s.action_valid and s.info["format_ok"]
    with pytest.raises(TurngymError, match="longer context"):
        WerewolfRunner(_CharEngine(max_context=400), lineup="llm", preset="small").run(range(1))
