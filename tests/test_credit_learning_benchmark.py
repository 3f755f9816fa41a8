"""benchmarks/credit_learning.py runs (its --quick version, under a minute on 2 cores) and keeps its output's promises:
every estimator has every seed's results, intervals hold their means, the paired difference is the mean of the
per-seed differences, and the PNG and JSON are written. Learning outcomes are the study's, not asserted here."""

from __future__ import annotations

import json

import numpy as np
import pytest

from turngym.benchmarks import credit_learning

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("scipy")
pytest.importorskip("matplotlib")


def test_sign_trail_passes_the_env_checker_and_its_splits_are_disjoint():
    from turngym.envs.check import check_env

    credit_learning.register()
    check_env(credit_learning.ENV_ID)
    train, test = credit_learning.SPLITS["train"], credit_learning.SPLITS["test"]
    assert len(train) == 36 and len(test) == 12 and not set(train) & set(test)
    assert {len(t) for t in test} == set(credit_learning.LENGTHS)


def test_the_oracle_wins_a_wrong_move_steps_back_and_only_a_lone_move_word_moves():
    env = credit_learning.SignTrailEnv(split="train")
    obs, info = env.reset(options={"task": {"signs": ["left", "right", "right", "left"]}})
    assert obs.split()[-credit_learning.SIGN_REPEAT - 1:] == ["signs"] + ["left"] * credit_learning.SIGN_REPEAT
    assert info["state_key"].endswith(":0")
    obs, reward, done, _, info = env.step("right")  # wrong at cell 0: stays at 0
    assert (obs.split(), reward, done, info["state_key"][-2:]) == (["left"] * 6, 0.0, False, ":0")
    for reply in ("<unk> hello", "<unk> left", "left left", ""):  # the reply must be exactly one move word
        _, _, _, _, info = env.step(reply)
        assert not info["action_valid"] and info["state_key"].endswith(":0")
    obs, _, _, _, info = env.step(" Left ")  # case and surrounding space ignored
    assert info["action_valid"] and info["state_key"].endswith(":1") and obs.split() == ["right"] * 6
    _, _, _, _, info = env.step("left")  # wrong at cell 1: back to 0
    assert info["state_key"].endswith(":0")
    for _ in range(4):
        obs, reward, done, _, info = env.step(env.unwrapped.oracle_action())
    assert (obs, reward, done, info["won"]) == ("goal", 1.0, True, True)


def test_quick_study_writes_every_seed_and_consistent_statistics(tmp_path, capsys):
    out = tmp_path / "study"
    assert credit_learning.main(["--quick", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    seeds, estimators = result["seeds"], result["estimators"]
    assert len(seeds) >= 2 and estimators == list(credit_learning.ESTIMATORS)
    runs = {(r["estimator"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {(e, s) for e in estimators for s in seeds}
    for (est, _), run in runs.items():
        assert run["eval_iterations"][0] == 0 and run["eval_iterations"][-1] == result["iterations"]
        assert len(run["train_success"]) == result["iterations"]
        assert run["final_heldout_success"] == run["heldout_success"][-1]
        assert all(0.0 <= s <= 1.0 for s in run["heldout_success"])
        if est == "spa":  # the learned progress estimator, never the env's ground truth
            assert run["credit_input_checks"]["oracle_signal"] == 0.0
            assert "spa_progress_loss" in run["credit_input_checks"]
        if est == "empg":  # the trainer fed it the policy's step entropies
            assert run["credit_input_checks"]["step_entropy_mean"] > 0.0
    for est, row in result["summary"]["estimators"].items():
        assert row["per_seed"] == [runs[est, s]["final_heldout_success"] for s in seeds]
        assert row["final_mean"] == pytest.approx(np.mean(row["per_seed"]))
        assert row["ci_low"] <= row["final_mean"] <= row["ci_high"]
        assert row["curve_mean_per_seed"] == pytest.approx([np.mean(runs[est, s]["heldout_success"][1:]) for s in seeds])
        assert row["curve_mean"] == pytest.approx(np.mean(row["curve_mean_per_seed"]))
    diff = result["summary"]["gigpo_minus_grpo"]
    per_seed = [runs["gigpo", s]["final_heldout_success"] - runs["grpo", s]["final_heldout_success"] for s in seeds]
    assert diff["per_seed"] == pytest.approx(per_seed)
    assert diff["mean"] == pytest.approx(np.mean(per_seed))
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"]
    assert 0.0 <= diff["paired_t_p"] <= 1.0 and 0.0 <= diff["wilcoxon_p"] <= 1.0
    assert diff["wins"] + diff["losses"] + diff["ties"] == len(seeds)
    curve = result["summary"]["gigpo_minus_grpo_curve_mean"]
    assert curve["mean"] == pytest.approx(np.mean(result["summary"]["estimators"]["gigpo"]["curve_mean_per_seed"])
                                          - np.mean(result["summary"]["estimators"]["grpo"]["curve_mean_per_seed"]))
    printed = capsys.readouterr().out
    assert "GiGPO - GRPO" in printed and all(e in printed for e in estimators)


def test_paired_statistics_on_known_numbers():
    d = credit_learning.paired([0.5, 0.75, 1.0, 0.5], [0.25, 0.5, 0.5, 0.5])
    assert d["mean"] == pytest.approx(0.25) and (d["wins"], d["losses"], d["ties"]) == (3, 0, 1)
    # t interval of [0.25, 0.25, 0.5, 0]: sd 0.2041, t(0.975, 3) = 3.1824
    assert d["ci_high"] - d["mean"] == pytest.approx(3.1824 * 0.2041 / 2, rel=1e-3)
    assert credit_learning.t_interval([0.5, 0.5]) == (0.5, 0.5, 0.5)
