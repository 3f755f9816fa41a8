"""benchmarks/werewolf_learn --quick: record rule games, SFT a tiny model, evaluate; the data's contracts; resuming."""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("pettingzoo")
pytest.importorskip("transformers")

ROLE_WORDS = ("werewolf", "seer", "doctor", "villager")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from turngym.benchmarks import werewolf_learn

    out = tmp_path_factory.mktemp("werewolf_learn")
    assert werewolf_learn.main(["--quick", "--out", str(out)]) == 0
    return out


def test_results_structure(quick_run):
    result = json.loads((quick_run / "results.json").read_text())
    assert result["quick"] and result["lineup"] == "village=llm,wolves=rule" and result["eval_games"] == 2
    assert [r["name"] for r in result["rows"]] == ["rule", "base", "sft"]
    for r in result["rows"]:
        assert r["games"] == 2 and 0 <= r["village_win_rate"] <= 1
        lo, hi = r["ci95"]
        assert 0 <= lo <= r["village_win_rate"] <= hi <= 1
    rule, base, sft = result["rows"]
    assert rule["llm_turns"] == 0 and rule["invalid_rate"] is None and rule["model"] is None
    for r in (base, sft):
        assert r["llm_turns"] > 0 and 0 <= r["invalid_rate"] <= 1 and 0 <= r["unparsed_rate"] <= 1
        # the engine's prompt-side work, a line per chunk: every LLM turn's prompt counted, the cache's share in it
        work = r["prefill"]
        assert work["prompt_tokens"] > 0 and 0 <= work["cached_tokens"] <= work["prompt_tokens"]
        assert work["prefill_tokens"] <= work["padded_tokens"] and work["seconds"] > 0
        chunks = [json.loads(line) for line in (quick_run / "eval" / r["name"] / "prefill.jsonl").read_text().splitlines()]
        assert sorted(seed for c in chunks for seed in c["seeds"]) == [0, 1]
        assert sum(c["prompt_tokens"] for c in chunks) == work["prompt_tokens"]
    assert rule["prefill"] is None
    assert sft["model"] == result["sft"]["checkpoint"] and base["model"] == result["base_model"]
    rec = result["record"]
    assert rec["games"] == 2 and rec["trajectories"] > 0 and rec["turns"] > 0
    replay = rec["replay"]
    assert replay["accepted"] == replay["parsed"] == replay["turns"] == rec["turns"]
    assert result["sft"]["samples"] > 0 and result["sft"]["episodes"] == rec["trajectories"]  # all games kept
    # the SFT steps are whole village trajectories (their turns share the transcript in one forward)
    assert result["sft"]["inputs"]["batch_by"] == result["batch_by"] == "trajectory"
    assert result["prefix_cache_gib"] == 4.0
    # paired by deal: each stage against the one before, each LLM village against the rule village
    pairs = {(c["a"], c["b"]): c for c in result["comparisons"]}
    assert list(pairs) == [("sft", "base"), ("base", "rule"), ("sft", "rule")]
    games = {r["name"]: {json.loads(line)["seed"]: json.loads(line)["winner"] == "village"
                         for line in (quick_run / "eval" / r["name"] / "games.jsonl").read_text().splitlines()}
             for r in result["rows"]}
    by_name = {r["name"]: r for r in result["rows"]}
    for (a, b), c in pairs.items():
        assert c["n"] == 2 and c["both"] + c["only_a"] + c["only_b"] + c["neither"] == 2
        assert c["only_a"] == sum(games[a][s] and not games[b][s] for s in (0, 1))
        assert c["both"] + c["only_a"] == by_name[a]["village_wins"]
        assert c["both"] + c["only_b"] == by_name[b]["village_wins"]
        assert c["ci95"][0] <= c["diff"] <= c["ci95"][1] and 0 < c["mcnemar_p"] <= 1


def test_bad_prefix_cache_bound_is_a_usage_error(tmp_path, capsys):
    from turngym.benchmarks import werewolf_learn

    with pytest.raises(SystemExit):
        werewolf_learn.main(["--quick", "--out", str(tmp_path), "--prefix-cache-gib", "-1"])
    assert "--prefix-cache-gib must be >= 0" in capsys.readouterr().err


def _renderer(out):
    from transformers import AutoTokenizer

    from turngym.agents.werewolf_runner import WerewolfLLMPolicy
    from turngym.benchmarks.werewolf_learn import Renderer

    result = json.loads((out / "results.json").read_text())
    tok = AutoTokenizer.from_pretrained(out / "base")
    return Renderer(tok, 16384, WerewolfLLMPolicy(temperature=result["temperature"],
                                                   max_tokens=result["max_tokens"])), result


def test_sft_data_is_valid_play_from_the_seat_view(quick_run):
    """The contract: every recorded village target parses into the bot's action, the env accepts it when the
    deals are replayed with the village answered from the data, and every prompt is built from the seat's own
    observation only (no other seat's role or private talk)."""
    from turngym.agents.types import load_trajectories
    from turngym.agents.werewolf_runner import WerewolfLLMPolicy
    from turngym.benchmarks.werewolf_learn import RECORD_SEED, replay_check

    renderer, result = _renderer(quick_run)
    trajs = load_trajectories(quick_run / "data" / "village.jsonl")
    assert trajs and all(t.meta["team"] == "village" and t.steps for t in trajs)
    eos = renderer.eos
    for t in trajs:
        role, seat = t.meta["role"], t.meta["seat"]
        for s in t.steps:
            assert s.action_valid
            assert s.response_ids[-1] == eos
            text = renderer.tokenizer.decode(s.response_ids[:-1])
            assert WerewolfLLMPolicy.parse(text) == (s.action, True)
            assert s.prompt_ids == renderer.prompt(s.observation)[1]
            lines = s.observation.partition("\n\nTranscript:\n")[2].split("\n\n")[0].split("\n")
            for line in lines:
                tag = re.match(r"^\[([^\]]*)\]", line)
                assert tag, line
                scope = tag.group(1).partition("|")[2].strip()
                assert scope in ("", "only you"), f"{seat} sees a line meant for others: {line}"
                if scope == "only you" and role != "seer":
                    others = [w for w in ROLE_WORDS if w != role and w in line.lower()]
                    assert not others, f"{seat} ({role}) got a private line naming a role: {line}"
            assert f"You are {seat}." in s.observation
    seeds = [RECORD_SEED + k for k in range(result["record"]["games"])]
    from types import SimpleNamespace

    games = [SimpleNamespace(seed=sd, winner=w) for sd, w in
             {t.seed: t.meta["winner"] for t in trajs}.items()]
    replay = replay_check(trajs, renderer, result["preset"], seeds, games)
    assert replay["turns"] == replay["accepted"] == replay["parsed"] > 0
    assert replay["same_actions"] == replay["trajectories"] and replay["unused_prompts"] == 0


def test_second_run_skips_finished_phases(quick_run, capsys):
    from turngym.benchmarks import werewolf_learn

    before = json.loads((quick_run / "results.json").read_text())
    capsys.readouterr()
    assert werewolf_learn.main(["--quick", "--out", str(quick_run)]) == 0
    printed = capsys.readouterr().out
    assert "record: done" in printed and "SFT: done" in printed
    assert "games to play" not in printed
    after = json.loads((quick_run / "results.json").read_text())
    assert after["rows"] == before["rows"] and after["sft"] == before["sft"]


def test_autocast_redoes_the_sft_and_is_recorded(quick_run, tmp_path, capsys):
    """--autocast bfloat16 is part of the SFT's inputs (a finished fp32 SFT is not reused for it), reaches the
    trainer, and results.json says which setting its numbers come from."""
    import shutil

    from turngym.benchmarks import werewolf_learn

    out = tmp_path / "copy"
    shutil.copytree(quick_run, out)
    capsys.readouterr()
    assert werewolf_learn.main(["--quick", "--out", str(out), "--autocast", "bfloat16"]) == 0
    printed = capsys.readouterr().out
    assert "SFT: done" not in printed
    result = json.loads((out / "results.json").read_text())
    assert result["autocast"] == "bfloat16" and result["sft"]["inputs"]["autocast"] == "bfloat16"


def test_skip_sft_plays_the_other_rows_without_training(tmp_path, capsys):
    """--skip sft (no self-play): the rows that need no fine-tuned model are played and nothing is trained, so a
    session can bank the base row's games and a later one train and play the rest."""
    from turngym.benchmarks import werewolf_learn

    out = tmp_path / "banked"
    assert werewolf_learn.main(["--quick", "--out", str(out), "--skip", "sft"]) == 0
    assert "SFT: skipped" in capsys.readouterr().out
    assert not (out / "sft").exists()
    result = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["rule", "base"] and result["sft"] is None
    played = (out / "eval" / "base" / "games.jsonl").read_text()
    assert werewolf_learn.main(["--quick", "--out", str(out)]) == 0  # the later session: SFT, then its row
    result = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["rule", "base", "sft"] and result["sft"]["samples"] > 0
    assert (out / "eval" / "base" / "games.jsonl").read_text() == played  # banked games are not replayed


@pytest.mark.slow
def test_selfplay_phase_adds_a_row(tmp_path):
    """--selfplay-iterations 1 from the quick SFT checkpoint (about 2 minutes on 2 CPU cores: every seat's long
    transcript is a training sample)."""
    from turngym.benchmarks import werewolf_learn

    assert werewolf_learn.main(["--quick", "--out", str(tmp_path), "--selfplay-iterations", "1"]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["rule", "base", "sft", "selfplay"]
    assert result["selfplay"]["iterations"] == 1 and result["rows"][3]["model"] == result["selfplay"]["checkpoint"]
    assert [(c["a"], c["b"]) for c in result["comparisons"]][:3] == [("sft", "base"), ("selfplay", "sft"),
                                                                      ("selfplay", "base")]
    # the learning signal of each iteration, from the trainer's own metrics
    (it,) = result["selfplay"]["curve"]
    assert it["iteration"] == 1 and it["episodes"] > 0 and 0 <= it["invalid_action_rate"] <= 1
    assert 0 <= it["adv_zero_frac"] <= 1 and it["reward_std"] >= 0 and it["time_total"] > 0
