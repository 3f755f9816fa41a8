"""The policy objective for the trainers: PPO-clip (asymmetric, dual-clip), KL to a reference, entropy bonus.

A thin layer over :mod:`turngym.kernels.policy_loss`, the one place where the
formulas live and are documented (the per-token PPO-clip and dual-clip
losses, the KL estimators, the aggregation modes, the micro-batch
normalizers): :func:`ppo_clip_loss` is
:func:`turngym.kernels.policy_loss.policy_loss_from_logprobs` under the
trainers' argument names (``agg``, ``mask``, ``norm_constant``), returning
a :class:`PolicyLoss`; :func:`kl_penalty`, :func:`aggregate_loss`,
:data:`KL_ESTIMATORS` and :data:`AGG_MODES` (the kernels'
``LOSS_AGG_MODES``) are the kernels' own. The kernels package also fuses the
same loss with the LM head (``fused_policy_loss``, logits never
materialized).

Everything here works on ``[B, T]`` tensors that the trainer already has:
``logprobs`` (current policy, with grad), ``old_logprobs`` (the rollout
policy's), ``advantages`` (per token, from ``turngym.trainers.tokens``),
``mask`` (1 on sampled tokens), optionally ``ref_logprobs`` and ``entropy``.
Under gradient accumulation pass the global ``num_tokens`` / ``num_seqs``
(from ``tokens.loss_normalizers``): the micro-batch losses then sum to the
full-batch loss exactly (tested). ``seq_ids=TokenBatch.segment_ids`` makes
the ``seq-mean-*`` modes average per step instead of per row.

Also here: :func:`dynamic_filter_groups` (DAPO's dynamic sampling filter:
drop groups whose rewards are all equal).

Depends on torch, numpy and ``turngym.kernels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from turngym.kernels.policy_loss import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    aggregate_loss,
    kl_penalty,
    policy_loss_from_logprobs,
)

AGG_MODES = LOSS_AGG_MODES

__all__ = ["AGG_MODES", "KL_ESTIMATORS", "PolicyLoss", "aggregate_loss", "dynamic_filter_groups", "kl_penalty",
           "ppo_clip_loss"]

# The kernels' metric names that the trainers' metrics spell differently.
_METRIC_NAMES = {"kl": "kl_mean"}


# ---- the policy loss -------------------------------------------------------------------------------------


@dataclass
class PolicyLoss:
    """The scalar ``loss`` to backpropagate and plain-float ``metrics`` (masked token means of this batch).

    Metrics: those of :func:`turngym.kernels.policy_loss.policy_loss_from_logprobs`
    (``loss``, ``pg_loss``, ``pg_clipfrac``, ``pg_clipfrac_lower``, ``ppo_kl``,
    ``approx_kl``, ``ratio_mean``, ``ratio_max``, ``ratio_min``, ``num_tokens``,
    with entropy ``entropy``/``entropy_loss``), except that the token mean of
    the KL estimator is named ``kl_mean`` (the kernels' ``kl``): with a
    reference, ``kl_loss``/``kl_mean``.
    """

    loss: torch.Tensor
    metrics: dict[str, float]


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, *, clip_low: float = 0.2, clip_high: float | None = None,
                  dual_clip: float | None = None, ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0,
                  kl_estimator: str = "k3", entropy: torch.Tensor | None = None, entropy_coef: float = 0.0,
                  agg: str = "token-mean", seq_ids: torch.Tensor | None = None, num_tokens: float | None = None,
                  num_seqs: float | None = None, norm_constant: float | None = None) -> PolicyLoss:
    """PPO-clip policy loss with asymmetric clip, optional dual-clip, KL to a reference and an entropy bonus.

    :func:`turngym.kernels.policy_loss.policy_loss_from_logprobs` (formulas,
    defaults and argument meanings in :mod:`turngym.kernels.policy_loss`),
    computed in at least float32: ``mask`` is its ``response_mask``, ``agg``
    its ``loss_agg_mode`` (one of :data:`AGG_MODES`), ``norm_constant`` its
    ``loss_scale_factor`` (see :func:`aggregate_loss`). All tensors are
    ``[B, T]`` and aligned; only ``mask > 0`` positions count (other positions
    may hold anything).
    """
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    loss, metrics = policy_loss_from_logprobs(
        logprobs.to(dtype), old_logprobs, advantages, mask, entropy=None if entropy is None else entropy.to(dtype),
        ref_logprobs=ref_logprobs, kl_coef=kl_coef, kl_estimator=kl_estimator, clip_low=clip_low,
        clip_high=clip_high, dual_clip=dual_clip, entropy_coef=entropy_coef, loss_agg_mode=agg, seq_ids=seq_ids,
        num_tokens=num_tokens, num_seqs=num_seqs, loss_scale_factor=norm_constant,
    )
    return PolicyLoss(loss=loss, metrics={_METRIC_NAMES.get(k, k): v for k, v in metrics.items()})


# ---- DAPO dynamic sampling -------------------------------------------------------------------------------


def dynamic_filter_groups(group_ids: Any, rewards: Any, *, atol: float = 0.0) -> np.ndarray:
    """DAPO's dynamic-sampling filter: a boolean keep-mask that drops groups whose rewards are all equal.

    DAPO (Yu et al., arXiv 2503.14476, section 3.2) over-samples and keeps only
    prompts whose G rollouts are neither all correct nor all wrong: such a
    group has zero group-normalized advantage for every member, so it adds
    no gradient but dilutes the batch. Here a group is dropped when
    ``max(r) - min(r) <= atol`` (``atol = 0``: exactly equal), which also
    drops singleton groups.

    Args:
        group_ids: one id per rollout (any hashable values, e.g. ``Trajectory.group_id``).
        rewards: one scalar per rollout (e.g. ``Trajectory.total_reward``), same length.

    Returns:
        ``keep`` (bool array, aligned to the inputs). The trainer keeps sampling
        groups until it has enough kept ones, as DAPO does.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    ids = list(group_ids.tolist() if hasattr(group_ids, "tolist") else group_ids)
    if rewards.ndim != 1 or len(ids) != len(rewards):
        raise ValueError(f"dynamic_filter_groups needs one reward per group id, got {len(ids)} ids and "
                         f"rewards of shape {rewards.shape}")
    codes: dict[Any, int] = {}
    code = np.fromiter((codes.setdefault(g, len(codes)) for g in ids), dtype=np.int64, count=len(ids))
    k = len(codes)
    hi = np.full(k, -np.inf)
    lo = np.full(k, np.inf)
    np.maximum.at(hi, code, rewards)
    np.minimum.at(lo, code, rewards)
    return (hi - lo > atol)[code]


# ---- EPO and AEPO terms (see turngym.trainers.rl for where they enter the loss) ------------------------------


def epo_entropy_penalty(entropy: torch.Tensor, turn: torch.Tensor, history_mean: Any, *, min_ratio: float = 0.5,
                        max_ratio: float = 1.5) -> torch.Tensor:
    """EPO's entropy-smoothing penalty per token, in a differentiable (hinge) form.

    ``history_mean[k]`` is the historical mean entropy of turn index ``k``
    (``Hbar_k``); a token of turn ``k`` pays ``relu(H - max_ratio Hbar_k) +
    relu(min_ratio Hbar_k - H)``: zero inside the band ``[min_ratio Hbar_k,
    max_ratio Hbar_k]``, growing linearly outside it. Tokens whose turn has
    no history (``turn < 0``, past the history, or ``Hbar_k <= 0``/NaN) pay 0.
    EPO's released code uses a constant (0 inside / 0.1 outside) with no
    gradient, which leaves the update unchanged; the hinge is the form that
    actually pulls the entropy back into the band.
    """
    hbar = torch.as_tensor(np.nan_to_num(np.asarray(history_mean, dtype=np.float64), nan=0.0),
                           dtype=entropy.dtype, device=entropy.device)
    if hbar.numel() == 0:
        return torch.zeros_like(entropy)
    known = (turn >= 0) & (turn < hbar.numel())
    ref = torch.where(known, hbar[turn.clamp(0, hbar.numel() - 1)], torch.zeros_like(entropy))
    hinge = torch.relu(entropy - max_ratio * ref) + torch.relu(min_ratio * ref - entropy)
    return torch.where(known & (ref > 0), hinge, torch.zeros_like(entropy))


def aepo_clip_correction(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                         mask: torch.Tensor, clip_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """AEPO's entropy-balanced (stop-gradient) clipping as a per-token term added to the PPO-clip loss.

    PPO-clip gives a token with ``A > 0`` and ``r > 1 + eps_high`` no gradient.
    AEPO's upper bound ``(1 + eps_high) / sg(r) * r`` keeps the forward value
    and gives it the gradient ``-A (1 + eps_high)`` w.r.t. ``log pi``. The term
    ``-A (1 + eps_high) (log pi - sg(log pi))`` is 0 in the forward pass and
    has exactly that gradient, so PPO loss + this term == AEPO's loss.
    Returns ``(term, selected)``.
    """
    ratio = torch.exp(torch.clamp(logprobs.detach() - old_logprobs, -20.0, 20.0))
    selected = (mask != 0) & (advantages > 0) & (ratio > 1.0 + clip_high)
    term = -advantages * (1.0 + clip_high) * (logprobs - logprobs.detach())
    return torch.where(selected, term, torch.zeros_like(term)), selected


def entropy_aware_advantage(advantages: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                            alpha: float = 0.2) -> torch.Tensor:
    """AEPO's entropy-aware advantage ``A (1 + alpha sg(H_norm))``.

    ``H_norm`` standardizes the entropy over the valid (mask != 0) tokens with
    the unbiased std (a zero std counts as 1); masked positions keep ``A``.
    """
    entropy = entropy.detach()
    valid_mask = mask != 0
    valid = entropy[valid_mask]
    if valid.numel() == 0:
        return advantages
    mean = valid.mean()
    std = valid.std(unbiased=True) if valid.numel() > 1 else torch.ones((), dtype=valid.dtype, device=valid.device)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return torch.where(valid_mask, advantages * (1 + alpha * (entropy - mean) / std), advantages)


def trajectory_balance_loss(log_z: torch.Tensor, log_pf: torch.Tensor, rewards: Any, *, reward_floor: float = 1e-4,
                            reward_temp: float = 1.0) -> torch.Tensor:
    """FoR's trajectory-balance residuals squared, per trajectory: ``(log Z + log P_F(tau) - log R(tau) / T)^2``.

    ``log_pf`` holds each trajectory's summed log-probs of every sampled token
    (all turns); ``log R = log max(R, reward_floor)`` keeps failures finite.
    """
    r = torch.as_tensor(np.asarray(rewards, dtype=np.float64), dtype=log_pf.dtype, device=log_pf.device)
    log_r = torch.log(torch.clamp(r, min=reward_floor)) / reward_temp
    return (log_z + log_pf - log_r) ** 2
