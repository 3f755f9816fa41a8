"""Stratified GRPO: Stratified Advantage Normalization (SAN), blended with global normalization.

Paper: Zhu, Chen, Yu, Zhao, Jia, "Stratified GRPO: Handling Structural
Heterogeneity in Reinforcement Learning of LLM Search Agents", arXiv 2510.06214.
No reference implementation is public.

The K rollouts of one prompt are partitioned into strata B_k by a structural
property, here the number of tool (search) calls, and each trajectory's return
R_i is standardized against its own stratum only, removing the cross-stratum
bias (Rbar_k - Rbar_global) that a single group baseline carries::

    A_SAN(i) = (R_i - mu_k) / (sigma_k + eps)          tau_i in B_k
    A_GN(i)  = (R_i - mu)   / (sigma   + eps)          mu, sigma over the whole group
    A(i)     = alpha * A_SAN(i) + (1 - alpha) * A_GN(i)

Every step of trajectory i gets A(i). Strata live inside a group (the rollouts
of one prompt), and "global" is the group statistic GRPO uses, not the batch:
Stratified GRPO modifies GRPO's per-prompt baseline, and its decomposition
A_G = A_S + (Rbar_k - Rbar_global) and variance theorem are stated over the K
trajectories sampled for a prompt (as read from summaries of the paper; its
full text was not retrievable here).

Inputs: `StepBatch.num_tool_calls` (the trajectory's count, on each of its rows),
`StepBatch.reward` (R_i = sum of the trajectory's step rewards).

Defaults: alpha = 0.8, eps = 1e-6, population std (ddof = 0), the std under which
the paper's properties hold (within a stratum with sigma_k > 0, A_SAN has mean 0
and variance 1; pooled, mean 0 and variance 1). The paper's alpha could not be
confirmed from the text available here; check it before relying on the default.

Choices where the paper is silent: a stratum whose returns are all equal (a
one-trajectory stratum included) gets A_SAN = 0, so it receives only
(1 - alpha) * A_GN; a one-trajectory group gets 0; both hold with eps = 0 too.
"""

from __future__ import annotations

import numpy as np

from turngym.credit.batch import StepBatch, factorize, register_estimator
from turngym.credit.groups import group_stats, trajectory_sums


@register_estimator("stratified_grpo", inputs=("num_tool_calls",))
def stratified_grpo(batch: StepBatch, *, alpha: float = 0.8, eps: float = 1e-6) -> np.ndarray:
    """Per-step Stratified GRPO advantages (SAN blended with group normalization).

    Args:
        batch: needs `num_tool_calls`.
        alpha: weight of the stratified estimator; 1 is pure SAN, 0 is group normalization.
        eps: added to each std.
    """
    batch.require("stratified_grpo", "num_tool_calls")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"stratified_grpo needs 0 <= alpha <= 1, got {alpha}")
    if len(batch) == 0:
        return np.zeros(0)
    calls = batch.num_tool_calls
    if calls.dtype.kind == "f" and not np.all(np.isfinite(calls)):
        raise ValueError("estimator 'stratified_grpo': StepBatch.num_tool_calls has NaN or inf entries")
    layout = batch.layout()
    returns = trajectory_sums(batch.reward, layout)
    calls_code = batch.codes("num_tool_calls")
    traj_calls = np.empty(layout.num_trajectories, dtype=np.int64)
    traj_calls[layout.traj] = calls_code
    if np.any(traj_calls[layout.traj] != calls_code):
        raise ValueError(
            "StepBatch.num_tool_calls must be the same on every row of a trajectory (it is per trajectory)"
        )
    stratum = factorize(layout.traj_group * (int(calls_code.max()) + 1) + traj_calls)
    a_san = _population_zscore(returns, stratum, eps)
    a_gn = _population_zscore(returns, layout.traj_group, eps)
    return (alpha * a_san + (1.0 - alpha) * a_gn)[layout.traj]


def _population_zscore(values: np.ndarray, codes: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / (std + eps) within each code, std the population std (ddof=0).

    A code whose values are all equal (one member included) gives 0, also with eps = 0.
    """
    stats = group_stats(values, codes)
    count = stats.count[codes]
    scale = stats.std[codes] * np.sqrt((count - 1) / count) + eps
    centered = values - stats.mean[codes]
    return np.divide(centered, scale, out=np.zeros_like(centered), where=scale > 0)
