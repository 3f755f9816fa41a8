"""turngym.agents.evaluation: Wilson interval, pass@k / pass^k, paired proportions, eval record; worked values."""

from __future__ import annotations

import itertools
import math

import pytest

from turngym.agents.evaluation import (
    Z95,
    EvalRecord,
    eval_record,
    paired_proportions,
    pass_at_k,
    pass_hat_k,
    wilson_interval,
)
from turngym.agents.types import Step, Trajectory

# ---- Wilson score interval ----------------------------------------------------------------------------------


@pytest.mark.parametrize("successes, n, lo, hi", [
    (0, 10, 0.0, 0.2775),   # z^2 / (n + z^2)
    (10, 10, 0.7225, 1.0),  # n / (n + z^2)
    (5, 10, 0.2366, 0.7634),
    (8, 10, 0.4902, 0.9433),
    (1, 1, 0.2065, 1.0),
    (50, 100, 0.4038, 0.5962),
])
def test_wilson_interval_worked_values(successes, n, lo, hi):
    got = wilson_interval(successes, n)
    assert math.isclose(got[0], lo, abs_tol=1e-4) and math.isclose(got[1], hi, abs_tol=1e-4), got


def test_wilson_interval_edges_are_exact():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no data: anything is possible
    for n in (1, 2, 7, 10, 1000):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
        assert math.isclose(wilson_interval(0, n)[1], Z95**2 / (n + Z95**2), rel_tol=1e-12)
        assert math.isclose(wilson_interval(n, n)[0], n / (n + Z95**2), rel_tol=1e-12)
    for c in range(11):  # symmetric: c of n and n - c of n mirror each other
        lo, hi = wilson_interval(c, 10)
        lo2, hi2 = wilson_interval(10 - c, 10)
        assert 0.0 <= lo <= c / 10 <= hi <= 1.0
        assert math.isclose(lo, 1 - hi2, abs_tol=1e-12) and math.isclose(hi, 1 - lo2, abs_tol=1e-12)


def test_wilson_interval_z_sets_the_level():
    lo95, hi95 = wilson_interval(3, 10)
    lo99, hi99 = wilson_interval(3, 10, z=2.5758293035489)
    assert lo99 < lo95 and hi99 > hi95


@pytest.mark.parametrize("successes, n", [(-1, 10), (11, 10), (1, 0), (0, -1)])
def test_wilson_interval_rejects_impossible_counts(successes, n):
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(successes, n)


# ---- pass@k and pass^k --------------------------------------------------------------------------------------


def _by_enumeration(n: int, c: int, k: int) -> tuple[float, float]:
    """P(some / every one of k runs drawn without replacement from n succeeds), counted over all subsets."""
    runs = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(runs, k))
    return sum(any(s) for s in subsets) / len(subsets), sum(all(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_and_pass_hat_k_match_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            some, every = _by_enumeration(n, c, k)
            assert math.isclose(pass_at_k(n, c, k), some, abs_tol=1e-12), (n, c, k)
            assert math.isclose(pass_hat_k(n, c, k), every, abs_tol=1e-12), (n, c, k)


def test_pass_at_k_worked_values():
    assert math.isclose(pass_at_k(5, 2, 2), 1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert math.isclose(pass_at_k(10, 3, 1), 0.3)  # k = 1: the success rate
    assert pass_at_k(10, 0, 5) == 0.0 and pass_at_k(10, 6, 5) == 1.0  # n - c < k: every 5 runs hold a success
    assert math.isclose(pass_hat_k(5, 3, 2), 3 / 10)  # C(3,2)/C(5,2)
    assert pass_hat_k(10, 0, 1) == 0.0 and pass_hat_k(10, 10, 10) == 1.0
    assert math.isclose(pass_at_k(200, 1, 100), 0.5) and 0.0 < pass_hat_k(200, 150, 100) < 1e-10  # big n: no overflow


def test_fewer_runs_than_k_have_no_estimate():
    for c in (0, 1):  # the old copy said pass@2 = 1.0 from one failed run
        assert math.isnan(pass_at_k(1, c, 2)) and math.isnan(pass_hat_k(1, c, 2))
    assert math.isnan(pass_at_k(0, 0, 1))


@pytest.mark.parametrize("n, c, k", [(4, 5, 2), (4, -1, 2), (4, 2, 0), (-1, 0, 1)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    for fn in (pass_at_k, pass_hat_k):
        with pytest.raises(ValueError, match="k >= 1 and 0 <= c <= n"):
            fn(n, c, k)


# ---- paired proportions -------------------------------------------------------------------------------------


def _pairs(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[bool], list[bool]]:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def test_paired_proportions_worked_example():
    """The Werewolf rule village against the SFT village on 200 shared deals (stop 30's numbers)."""
    got = paired_proportions(*_pairs(12, 45, 14, 129))
    assert (got["n"], got["both"], got["only_a"], got["only_b"], got["neither"]) == (200, 12, 45, 14, 129)
    assert got["p_a"] == 57 / 200 and got["p_b"] == 26 / 200 and math.isclose(got["diff"], 31 / 200)
    assert math.isclose(got["ci95"][0], 0.0814, abs_tol=1e-4) and math.isclose(got["ci95"][1], 0.2274, abs_tol=1e-4)
    # exact McNemar: 2 P(X <= 14), X ~ Bin(59, 1/2), summed independently of the implementation
    tail = sum(math.comb(59, i) for i in range(15)) / 2**59
    assert math.isclose(got["mcnemar_p"], 2 * tail, rel_tol=1e-12) and math.isclose(got["mcnemar_p"], 6.53e-5,
                                                                                      rel_tol=1e-3)


def test_paired_interval_is_the_unpaired_one_when_the_pairs_are_uncorrelated():
    """phi = 0 when 0 <= both*neither - only_a*only_b <= n/2: then Newcombe's paired interval is the square-and-add
    combination of the two Wilson intervals (method 10 of the unpaired paper)."""
    both, only_a, only_b, neither = 5, 15, 5, 15  # both*neither - only_a*only_b = 0
    got = paired_proportions(*_pairs(both, only_a, only_b, neither))
    n, wa, wb = 40, 20, 10
    (la, ua), (lb, ub) = wilson_interval(wa, n), wilson_interval(wb, n)
    d = wa / n - wb / n
    assert math.isclose(got["ci95"][0], d - math.hypot(wa / n - la, ub - wb / n), rel_tol=1e-12)
    assert math.isclose(got["ci95"][1], d + math.hypot(wb / n - lb, ua - wa / n), rel_tol=1e-12)


def test_pairing_narrows_the_interval_when_outcomes_agree():
    """Correlated pairs (the same deals are hard for both) give a narrower interval than the same margins
    uncorrelated, and the interval always holds the difference."""
    tight = paired_proportions(*_pairs(18, 2, 0, 20))    # 20 vs 18 of 40, nearly always agreeing
    loose = paired_proportions(*_pairs(9, 11, 9, 11))    # same margins, agreeing by chance
    assert math.isclose(tight["diff"], 0.05) and math.isclose(loose["diff"], 0.05)
    assert tight["ci95"][1] - tight["ci95"][0] < 0.6 * (loose["ci95"][1] - loose["ci95"][0])
    for t in (tight, loose):
        assert -1 <= t["ci95"][0] <= t["diff"] <= t["ci95"][1] <= 1


def test_paired_interval_covers_the_true_difference():
    """Monte Carlo coverage of the 95% interval on correlated pairs (each deal's difficulty shared by both
    players): close to nominal, as Newcombe reports for method 10."""
    import random

    rng = random.Random(0)
    for p_a, p_b, shared in ((0.3, 0.15, 0.6), (0.5, 0.5, 0.3), (0.1, 0.05, 0.0)):
        hits, reps = 0, 1500
        for _ in range(reps):
            a, b = [], []
            for _ in range(200):
                u = rng.random()  # the deal's difficulty: with prob. `shared` both players see the same draw
                a.append((u if rng.random() < shared else rng.random()) < p_a)
                b.append((u if rng.random() < shared else rng.random()) < p_b)
            lo, hi = paired_proportions(a, b)["ci95"]
            hits += lo <= p_a - p_b <= hi
        assert 0.93 <= hits / reps <= 0.975, (p_a, p_b, shared, hits / reps)


def test_paired_proportions_edges():
    none = paired_proportions([], [])
    assert math.isnan(none["diff"]) and none["ci95"] == (-1.0, 1.0) and none["mcnemar_p"] == 1.0
    same = paired_proportions(*_pairs(3, 0, 0, 7))  # no discordant pair: no evidence of a difference
    assert same["diff"] == 0 and same["mcnemar_p"] == 1.0 and same["ci95"][0] < 0 < same["ci95"][1]
    extreme = paired_proportions(*_pairs(0, 10, 0, 0))  # a always, b never
    assert extreme["diff"] == 1.0 and extreme["ci95"][1] == 1.0 and extreme["mcnemar_p"] == 2 / 2**10
    with pytest.raises(ValueError, match="3 outcomes against 2"):
        paired_proportions([True, False, True], [True, False])


# ---- the eval record ----------------------------------------------------------------------------------------


def _traj(won: bool, reward: float = 0.0, env_steps: int = 2, error: str | None = None, summaries: int = 0):
    steps = [Step(observation="o") for _ in range(env_steps)] + [Step(observation="", info={"kind": "summarize"})
                                                                  for _ in range(summaries)]
    return Trajectory(env_id="e", task_id="t", group_id="g", won=won, total_reward=reward, error=error, steps=steps,
                      meta={"env_steps": env_steps})


def test_eval_record_scores_attempted_episodes_and_shows_env_errors():
    """Issue 17: an env that crashes on hard tasks must not inflate success: crashes are attempted, not won."""
    trajs = [_traj(True, 1.0, 2), _traj(False, 0.0, 4, summaries=3), _traj(True, 1.0, 3), _traj(False, error="boom"),
             _traj(False, error="boom"), _traj(False, error="dead server")]
    rec = eval_record(trajs, split="test", seconds=1.5)
    lo, hi = wilson_interval(2, 6)
    assert rec == EvalRecord(split="test", episodes=6, successes=2, success_rate=2 / 6, ci_low=lo, ci_high=hi,
                             reward_mean=2 / 3, turns_mean=3.0, env_errors=3, error_examples=["boom", "dead server"],
                             time_eval=1.5)
    record = rec.to_dict()
    for key in ("split", "episodes", "successes", "success_rate", "ci_low", "ci_high", "reward_mean", "turns_mean",
                "env_errors", "time_eval"):
        assert key in record


def test_eval_record_with_nothing_scored_is_unknown_not_zero():
    rec = eval_record([], split="test")
    assert rec.episodes == 0 and rec.env_errors == 0 and (rec.ci_low, rec.ci_high) == (0.0, 1.0)
    assert math.isnan(rec.success_rate) and math.isnan(rec.reward_mean) and math.isnan(rec.turns_mean)
    rec = eval_record([_traj(False, error="boom")], split="test")  # attempted once, crashed: 0 of 1, no means
    assert (rec.episodes, rec.successes, rec.success_rate, rec.env_errors) == (1, 0, 0.0, 1)
    assert math.isnan(rec.reward_mean) and math.isnan(rec.turns_mean)


def test_eval_record_turns_fall_back_to_the_steps():
    t = _traj(True, env_steps=3)
    t.meta.clear()
    assert eval_record([t]).turns_mean == 3.0
