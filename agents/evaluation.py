"""How well a set of episodes went, computed one way everywhere: the Wilson interval, pass@k and the eval record.

* :func:`wilson_interval`: the Wilson score interval of a success rate
  (Wilson, 1927). Unlike the normal (Wald) interval it stays honest at 0%
  and 100% and for small n: 0/10 gives [0, 0.278], not the point [0, 0].
* :func:`pass_at_k` and :func:`pass_hat_k`: the unbiased estimators of
  pass@k (at least one of k runs solves the task; Chen et al., 2021,
  "Evaluating Large Language Models Trained on Code", eq. 1) and pass^k (all
  k runs solve it; Yao et al., 2024, tau-bench) from c successes in n >= k
  runs of one task.
* :func:`paired_proportions`: two success rates measured on the same tasks
  (the same deals, say, before and after training): the 2x2 table of
  outcomes, the difference with Newcombe's interval for paired data (1998,
  "Improved confidence intervals for the difference between binomial
  proportions based on paired data", method 10: the two Wilson intervals
  combined with the correlation of the pairs) and the exact McNemar test
  (a two-sided binomial test on the discordant pairs). Pairing matters: the
  shared deals' difficulty cancels, so a paired interval is narrower than
  two independent ones.
* :class:`EvalRecord` (built by :func:`eval_record`): what one evaluation
  measured. ``turngym bench``, the RL trainer's eval (gym envs and Werewolf
  self-play) and the SFT trainer's eval all build it here, so their numbers
  mean the same thing.

Edge cases, decided once:

* ``wilson_interval(0, 0) == (0.0, 1.0)``: no data, no knowledge. At 0
  successes the low end is exactly 0.0, at n successes the high end is
  exactly 1.0 (the formula reaches them only up to rounding).
* ``pass_at_k``/``pass_hat_k`` with n < k are NaN: no unbiased estimator
  exists from fewer than k runs (``C(n, k) = 0``); callers keep only tasks
  with at least k runs.
* Episodes whose env failed (``Trajectory.error``) count as attempted and
  not won: the success rate is over every attempted episode, so an env that
  crashes on the hard tasks cannot inflate it, and ``env_errors`` shows how
  many there were beside it (with ``error_examples``). Reward and turn means
  are over the episodes that finished (a crash has neither). With no episode,
  the rate is NaN and the interval (0, 1); with no finished one, the means
  are NaN.
* Bad counts (negative, successes > n, k < 1) raise ``ValueError``; so do
  paired outcome lists of different lengths.
* ``paired_proportions`` of no pairs: difference NaN, interval (-1, 1),
  McNemar p 1.0; with no discordant pair McNemar's p is 1.0.

Depends on nothing of ours: the episodes are read by attribute (``won``,
``total_reward``, ``error``, ``steps``, ``meta``) like
:class:`~turngym.agents.types.Trajectory`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: z for a two-sided 95% interval (the 0.975 quantile of the standard normal).
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of ``successes`` out of ``n`` (95% by default); ``(0.0, 1.0)`` when ``n == 0``.

    center = (p + z^2 / 2n) / (1 + z^2 / n),
    half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / 4n^2),  with p = successes / n.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"wilson_interval({successes}, {n}): needs 0 <= successes <= n")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def paired_proportions(a: Sequence[bool], b: Sequence[bool], z: float = Z95) -> dict[str, Any]:
    """Success rates ``a`` and ``b`` measured on the same n tasks (``a[i]``, ``b[i]``: task i's outcomes).

    The table: ``both`` won, ``only_a``, ``only_b``, ``neither``. ``diff = p_a - p_b`` with Newcombe's
    method-10 interval: with Wilson intervals (l_a, u_a), (l_b, u_b) and the pairs' correlation

        phi = C / sqrt((both + only_a)(only_b + neither)(both + only_b)(only_a + neither)),
        C = B - n/2 if B > n/2, 0 if 0 <= B <= n/2, B if B < 0,  B = both * neither - only_a * only_b,

    low  = diff - sqrt((p_a - l_a)^2 - 2 phi (p_a - l_a)(u_b - p_b) + (u_b - p_b)^2),
    high = diff + sqrt((p_b - l_b)^2 - 2 phi (p_b - l_b)(u_a - p_a) + (u_a - p_a)^2).

    ``mcnemar_p``: the exact two-sided McNemar test, 2 P(X <= min(only_a, only_b)) for X ~ Bin(only_a +
    only_b, 1/2), capped at 1. Worked example: 200 deals, 12 won by both, 45 by a only, 14 by b only: diff
    0.155, interval [0.076, 0.231], p = 6.5e-5.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_proportions: {len(a)} outcomes against {len(b)}; pair each task's two outcomes")
    n = len(a)
    both = sum(bool(x) and bool(y) for x, y in zip(a, b))
    only_a = sum(bool(x) and not bool(y) for x, y in zip(a, b))
    only_b = sum(not bool(x) and bool(y) for x, y in zip(a, b))
    neither = n - both - only_a - only_b
    out: dict[str, Any] = {"n": n, "both": both, "only_a": only_a, "only_b": only_b, "neither": neither,
                           "mcnemar_p": _mcnemar_exact(only_a, only_b)}
    if n == 0:
        return {**out, "p_a": math.nan, "p_b": math.nan, "diff": math.nan, "ci95": (-1.0, 1.0)}
    wins_a, wins_b = both + only_a, both + only_b
    p_a, p_b = wins_a / n, wins_b / n
    (l_a, u_a), (l_b, u_b) = wilson_interval(wins_a, n, z), wilson_interval(wins_b, n, z)
    margins = wins_a * (n - wins_a) * wins_b * (n - wins_b)
    phi = 0.0
    if margins > 0:
        cross = both * neither - only_a * only_b
        corrected = cross - n / 2 if cross > n / 2 else (0.0 if cross >= 0 else cross)
        phi = corrected / math.sqrt(margins)
    diff = p_a - p_b
    low = diff - math.sqrt(max(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2))
    high = diff + math.sqrt(max(0.0, (p_b - l_b) ** 2 - 2 * phi * (p_b - l_b) * (u_a - p_a) + (u_a - p_a) ** 2))
    return {**out, "p_a": p_a, "p_b": p_b, "diff": diff, "ci95": (max(-1.0, low), min(1.0, high))}


def _mcnemar_exact(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar p: twice the smaller binomial tail of the discordant pairs, at most 1."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2 ** m
    return min(1.0, 2 * tail)


def _check_counts(fn: str, n: int, c: int, k: int) -> None:
    if k < 1 or n < 0 or not 0 <= c <= n:
        raise ValueError(f"{fn}(n={n}, c={c}, k={k}): needs k >= 1 and 0 <= c <= n")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with ``c`` successes in ``n`` runs: 1 - C(n - c, k) / C(n, k).

    1.0 when every k of the n runs include a success (n - c < k); NaN when n < k.
    """
    _check_counts("pass_at_k", n, c, k)
    if n < k:
        return float("nan")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Unbiased pass^k of one task (all k of k runs succeed): C(c, k) / C(n, k); NaN when n < k."""
    _check_counts("pass_hat_k", n, c, k)
    if n < k:
        return float("nan")
    return math.comb(c, k) / math.comb(n, k)


@dataclass
class EvalRecord:
    """What one evaluation measured (see the module docstring for the edge cases).

    Attributes:
        split: what was evaluated: the task split, or the Werewolf lineup.
        episodes: attempted episodes (env errors included).
        successes: episodes won.
        success_rate: ``successes / episodes``: an env error counts as not won (NaN with no episode).
        ci_low, ci_high: the 95% Wilson interval of the success rate.
        reward_mean: mean total reward of the finished episodes (NaN when none).
        turns_mean: mean env steps of the finished episodes (memory-only turns,
            e.g. summaries, not counted; NaN when none).
        env_errors: episodes whose env failed (missing data, not failures).
        error_examples: up to three distinct env error messages.
        time_eval: wall seconds of the evaluation.
    """

    split: str
    episodes: int
    successes: int
    success_rate: float
    ci_low: float
    ci_high: float
    reward_mean: float
    turns_mean: float
    env_errors: int = 0
    error_examples: list[str] = field(default_factory=list)
    time_eval: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def env_steps(trajectory: Any) -> int:
    """The env steps of an episode: the runner's count (``meta["env_steps"]``), else its number of steps."""
    return int(trajectory.meta.get("env_steps", len(trajectory.steps)))


def eval_record(trajectories: Iterable[Any], *, split: str = "", seconds: float = 0.0) -> EvalRecord:
    """The :class:`EvalRecord` of ``trajectories`` (every episode played, env failures included)."""
    trajectories = list(trajectories)
    scored = [t for t in trajectories if t.error is None]
    failed = [t for t in trajectories if t.error is not None]
    n, wins, done = len(trajectories), sum(bool(t.won) for t in scored), len(scored)
    lo, hi = wilson_interval(wins, n)
    nan = float("nan")
    return EvalRecord(
        split=split, episodes=n, successes=wins, success_rate=wins / n if n else nan, ci_low=lo, ci_high=hi,
        reward_mean=sum(float(t.total_reward) for t in scored) / done if done else nan,
        turns_mean=sum(env_steps(t) for t in scored) / done if done else nan,
        env_errors=len(failed), error_examples=sorted({str(t.error) for t in failed})[:3], time_eval=float(seconds))


__all__ = ["Z95", "EvalRecord", "env_steps", "eval_record", "pass_at_k", "pass_hat_k", "wilson_interval"]
