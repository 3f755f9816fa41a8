"""IGPO: Information Gain-based Policy Optimization.

Paper: Wang, Dai, Ye, Gan, Yao, Deng, Wu, Ying, "Information Gain-based Policy
Optimization: A Simple and Effective Approach for Multi-Turn LLM Agents",
arXiv 2510.14967. Reference code: GuoqingWang1/IGPO.

After every turn the gold answer a = (a_1..a_L) is teacher-forced and scored by
the policy's length-normalized probability::

    pi(a | q, o_<=t) = exp( (1/L) sum_j log pi(a_j | q, o_<=t, a_<j) )

Turn t of rollout i earns its information gain, and the answer turn T its outcome::

    r_{i,t} = pi(a | q, o_<=t) - pi(a | q, o_<=t-1)     1 <= t < T
    r_{i,T} = outcome reward (F1 in the paper)

All turn rewards of the G rollouts of a question are pooled and z-normalized,
then accumulated with discount gamma; every token of turn t gets A_{i,t}::

    r~_{i,t} = (r_{i,t} - mean(R)) / (std(R) + eps),   R = {r_{j,k}} over the whole group
    A_{i,t}  = sum_{k=t}^{T_i} gamma^(k-t) r~_{i,k}

Inputs: `StepBatch.gold_logprob` on the row of step t is log pi(a | q, o_<t): the
gold answer's mean token log-prob given the context that step acts on (step 0:
the prompt alone), so a trajectory's rows carry exactly the T states the T-1
gains need. Or pass the gains directly as `StepBatch.info_gain` (on each
non-final step; it wins over `gold_logprob`; its value on the final step is
ignored). The outcome is `StepBatch.reward` on the final step.

Defaults: gain="prob" (the paper's probability gain; "logprob" uses the gain
in log-probability), gamma = 1.0 (the value the released trainer hard-codes; the
paper's own default was not retrievable here), eps = 1e-6, std unbiased
(torch.std), as in turngym's GRPO.

Departures and choices:
- The released `compute_grpo_outcome_advantage` (the one its trainer calls) scans
  returns token by token with the running return reset at masked (observation)
  tokens, subtracts the group mean per token position and never divides by the
  std; here the paper's pooled z-normalization and turn-level discounting are
  used.
- Per-step env rewards on non-final steps (normally 0) are added to the gain.
- A group whose pool holds one reward (one rollout of one turn) gets 0, as
  turngym's GRPO does for singleton groups; ``singleton="raw"`` gives verl's
  r / (1 + eps).
"""

from __future__ import annotations

import numpy as np

from turngym.credit.batch import StepBatch, register_estimator
from turngym.credit.groups import next_in_trajectory, normalize_in_groups, reverse_discounted_cumsum

GAINS = ("prob", "logprob")


def igpo_turn_rewards(batch: StepBatch, *, gain: str = "prob") -> np.ndarray:
    """IGPO's raw turn rewards: information gain on non-final steps, the outcome on the final one."""
    if gain not in GAINS:
        raise ValueError(f"igpo gain must be one of {GAINS}, got {gain!r}")
    layout = batch.layout()
    not_last = layout.position < layout.length[layout.traj] - 1
    if batch.info_gain is not None:
        info_gain = np.where(not_last, batch.info_gain, 0.0)
        if not np.all(np.isfinite(info_gain)):
            raise ValueError("estimator 'igpo': StepBatch.info_gain has NaN or inf entries on non-final steps")
    elif batch.gold_logprob is not None:
        if not np.all(np.isfinite(batch.gold_logprob)):
            raise ValueError("estimator 'igpo': StepBatch.gold_logprob has NaN or inf entries")
        score = np.exp(batch.gold_logprob) if gain == "prob" else batch.gold_logprob
        info_gain = np.where(not_last, next_in_trajectory(score, layout) - score, 0.0)
    else:
        raise ValueError(
            "estimator 'igpo' needs StepBatch field 'gold_logprob' (the gold answer's mean token log-prob "
            "given each step's context) or 'info_gain' (precomputed per-step gains); pass one of them"
        )
    return batch.reward + info_gain


@register_estimator("igpo", inputs=("gold_logprob",))  # or info_gain, precomputed
def igpo(
    batch: StepBatch, *, gamma: float = 1.0, gain: str = "prob", eps: float = 1e-6, singleton: str = "zero"
) -> np.ndarray:
    """Per-step IGPO advantages: group-pooled z-normalized turn rewards, discounted to go.

    Args:
        batch: needs `gold_logprob` or `info_gain`; the outcome is `reward` on the final step.
        gamma: discount over turns.
        gain: "prob" (paper: gain in probability) or "logprob" (gain in log-probability).
        eps: added to the pooled std.
        singleton: ``"zero"`` or ``"raw"`` (verl: r / (1 + eps)) for a group whose pool holds one reward.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"igpo needs 0 <= gamma <= 1, got {gamma}")
    layout = batch.layout()
    rewards = igpo_turn_rewards(batch, gain=gain)
    normalized = normalize_in_groups(
        rewards, layout.group, scale="std", eps=eps, singleton=singleton, num_groups=layout.num_groups
    )
    return reverse_discounted_cumsum(normalized, layout, gamma)
