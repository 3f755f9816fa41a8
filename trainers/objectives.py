"""The trainers' objectives: PPO-clip (asymmetric, dual-clip, KL, entropy), trajectory balance, step-DPO, EPO/AEPO.

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
drop groups whose rewards are all equal), the EPO / AEPO / trajectory-balance
formulas, and the objectives as the trainers call them.

Objectives. Every objective and every added loss term is a function with one
signature, ``objective(ctx, mb) -> (loss, metrics)``: ``ctx`` a
:class:`LossContext` (the algo config, the policy's forward, the reference,
log Z, the trajectories' returns: no trainer), ``mb`` a :class:`MicroBatch`
(one collated micro-batch with its log-probs, entropies and normalizers).
:data:`OBJECTIVES` maps ``algo.objective`` to its function (``ppo``:
:func:`ppo_objective`, ``tb``: :func:`trajectory_balance_objective`,
``step_dpo``: :func:`step_dpo_objective`), :func:`loss_terms` lists the terms
added to PPO's loss (:func:`aepo_clip_term`, :func:`epo_entropy_term`). The
trainer picks them once, at construction.

The opt-in objectives and terms (formulas from ``shared/research/credit-spec.md``):

* **EPO** (Xu et al., arXiv 2509.22576): ``L = L_pg - c_H [agg(H) - c_s agg(P)]``
  with ``P_t = relu(H_t - r_hi * Hbar_k) + relu(r_lo * Hbar_k - H_t)`` where
  ``Hbar_k`` is the historical mean entropy of turn index k (mean over past
  iterations). The released code's penalty is a constant mask with no
  gradient; this hinge is the differentiable form of the paper's intent.
* **AEPO** (Dong et al., arXiv 2510.14545): entropy-balanced clipping keeps
  the gradient of tokens with ``A > 0`` and ``r > 1 + eps_high`` bounded
  at ``-A (1 + eps_high)`` instead of dropping it (forward loss unchanged):
  added here as ``-A (1 + eps_high) (log pi - sg(log pi))`` on exactly those
  tokens; entropy-aware advantage ``A' = A (1 + alpha sg(H_norm))`` with H
  normalized over the valid tokens of the micro-batch.
* **FoR trajectory balance** (Yu et al., arXiv 2406.05673):
  ``L_TB(tau) = (log Z + sum_t log pi(a_t | s_t) - log R(tau) / T)^2``,
  ``log R = log max(R, floor)``, with ``log Z`` one learned scalar (its own
  learning rate ``algo.tb_logz_lr``; FoR learns it per problem family);
  ``sum_t`` runs over every sampled token of every turn. No advantages are
  used.
* **Step-level DPO** (Agent Q, Putta et al., arXiv 2408.07199): the pairs and
  the search that finds them are in :mod:`turngym.trainers.step_dpo`.

Depends on torch, numpy and ``turngym.kernels``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from turngym.kernels.policy_loss import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    aggregate_loss,
    kl_penalty,
    policy_loss_from_logprobs,
)

if TYPE_CHECKING:
    from turngym.trainers.config import AlgoConfig
    from turngym.trainers.tokens import TokenBatch, TrainingSample

AGG_MODES = LOSS_AGG_MODES

__all__ = ["AGG_MODES", "KL_ESTIMATORS", "OBJECTIVES", "LossContext", "MicroBatch", "Objective", "PolicyLoss",
           "aepo_clip_correction", "aepo_clip_term", "aggregate_loss", "dynamic_filter_groups",
           "entropy_aware_advantage", "epo_entropy_penalty", "epo_entropy_term", "kl_penalty", "loss_terms",
           "ppo_clip_loss", "ppo_objective", "step_dpo_objective", "trajectory_balance_loss",
           "trajectory_balance_objective"]

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


# ---- EPO and AEPO terms (see the objectives below for where they enter the loss) ------------------------------


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


# ---- the objectives as the trainers call them ---------------------------------------------------------------


@dataclass
class LossContext:
    """What an objective reads besides its micro-batch (the trainer builds one per update).

    ``forward(batch, with_entropy, model=None)`` gives the per-token log-probs (and entropies) of a
    :class:`~turngym.trainers.tokens.TokenBatch` under the policy (or ``model``) at the sampling
    temperature; ``reference`` is the frozen reference (:class:`~turngym.trainers.model.Reference`, its
    ``active()`` yields the model) or None; ``log_z`` FoR's learned log Z (``tb``) or None; ``returns[i]``
    the total reward of trajectory ``i`` of this update (``TrainingSample.traj_index``; ``tb``).
    """

    algo: AlgoConfig
    forward: Callable[..., Any]
    reference: Any = None
    log_z: torch.Tensor | None = None
    returns: Sequence[float] = ()


@dataclass
class MicroBatch:
    """One micro-batch as the objectives see it: ``[B, T]`` tensors aligned with ``batch``.

    ``rows``: the samples of the batch's rows; ``logprobs`` (with grad) and ``entropy`` of the current
    policy; ``mask``: ``batch.loss_mask > 0``; ``old_logprobs``: the rollout policy's; ``advantages``: per
    token (AEPO's entropy-aware form when ``algo.aepo_advantage``); ``seq_ids``: the ``seq-mean-*`` segments
    (None: per row); ``turn``: each token's turn index (EPO; -1 off the loss mask); ``entropy_reference``:
    EPO's historical mean entropy per turn index (None before the first iteration); ``norms``: the
    mini-batch's global loss normalizers (``num_tokens``, ``num_seqs``, ``norm_constant``, ``num_trajs``;
    step-DPO: ``num_pairs``); ``ref_margin``: step-DPO's reference log-ratio per pair.
    """

    batch: TokenBatch
    rows: list[TrainingSample]
    logprobs: torch.Tensor
    mask: torch.Tensor
    norms: dict[str, float]
    entropy: torch.Tensor | None = None
    old_logprobs: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    seq_ids: torch.Tensor | None = None
    turn: torch.Tensor | None = None
    entropy_reference: Any = None
    ref_margin: torch.Tensor | None = None


#: ``objective(ctx, mb) -> (loss, metrics)``; metrics are plain floats (step-DPO: per-pair lists).
Objective = Callable[[LossContext, MicroBatch], "tuple[torch.Tensor, dict[str, Any]]"]


def _aggregate(ctx: LossContext, mb: MicroBatch, values: torch.Tensor) -> torch.Tensor:
    """``values`` aggregated as the PPO loss is (``algo.loss_agg_mode`` with the global normalizers)."""
    a = ctx.algo
    scale = mb.norms["norm_constant"] if a.loss_agg_mode == "seq-mean-token-sum-norm" else None
    return aggregate_loss(values, mb.batch.loss_mask, a.loss_agg_mode, mb.seq_ids, mb.norms["num_tokens"],
                          mb.norms["num_seqs"], scale)


def ppo_objective(ctx: LossContext, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
    """PPO-clip (clip-higher, dual-clip), KL to the reference (when there is one) and the entropy bonus.

    :func:`turngym.kernels.policy_loss.policy_loss_from_logprobs` on the micro-batch; with EPO
    (``algo.epo_smooth_coef``) the entropy enters through :func:`epo_entropy_term` instead.
    """
    a = ctx.algo
    ref = None
    if ctx.reference is not None:
        with torch.no_grad(), ctx.reference.active() as ref_model:
            ref = ctx.forward(mb.batch, False, model=ref_model)
    scale = mb.norms["norm_constant"] if a.loss_agg_mode == "seq-mean-token-sum-norm" else None
    loss, m = policy_loss_from_logprobs(
        mb.logprobs, mb.old_logprobs, mb.advantages, mb.batch.loss_mask, entropy=mb.entropy, ref_logprobs=ref,
        kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, clip_low=a.clip_low, clip_high=a.clip_high,
        dual_clip=a.dual_clip or None, entropy_coef=a.entropy_coef if not a.epo_smooth_coef else 0.0,
        loss_agg_mode=a.loss_agg_mode, seq_ids=mb.seq_ids, num_tokens=mb.norms["num_tokens"],
        num_seqs=mb.norms["num_seqs"], loss_scale_factor=scale)
    return loss, {k: v for k, v in m.items() if k != "num_tokens"}


def aepo_clip_term(ctx: LossContext, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
    """AEPO's entropy-balanced clipping, added to PPO's loss: :func:`aepo_clip_correction`, aggregated."""
    term, kept = aepo_clip_correction(mb.logprobs, mb.old_logprobs, mb.advantages, mb.mask, ctx.algo.clip_high)
    return _aggregate(ctx, mb, term), {"aepo_kept_frac": float(kept.sum()) / max(1, int(mb.mask.sum()))}


def epo_entropy_term(ctx: LossContext, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
    """EPO's entropy term, added to PPO's loss: ``-c_H [agg(H) - c_s agg(P)]`` (:func:`epo_entropy_penalty`)."""
    a = ctx.algo
    ent = mb.entropy
    penalty = (epo_entropy_penalty(ent, mb.turn, mb.entropy_reference, min_ratio=a.epo_min_ratio,
                                   max_ratio=a.epo_max_ratio)
               if mb.entropy_reference is not None else torch.zeros_like(ent))
    term = -(a.entropy_coef * (_aggregate(ctx, mb, ent) - a.epo_smooth_coef * _aggregate(ctx, mb, penalty)))
    return term, {"epo_penalty": float(penalty.detach()[mb.mask].mean()) if bool(mb.mask.any()) else 0.0}


def trajectory_balance_objective(ctx: LossContext, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
    """FoR's trajectory balance over the trajectories of this micro-batch (the trainer keeps them whole).

    ``log P_F`` of a trajectory sums the sampled tokens' log-probs of all its rows;
    :func:`trajectory_balance_loss` with ``ctx.returns``, summed and divided by ``norms["num_trajs"]``.
    """
    a = ctx.algo
    logp, mask = mb.logprobs, mb.mask
    per_traj: dict[int, Any] = {}
    for row, s in enumerate(mb.rows):
        lp = torch.where(mask[row], logp[row], torch.zeros_like(logp[row])).sum()
        per_traj[s.traj_index] = per_traj.get(s.traj_index, 0.0) + lp
    order = list(per_traj)
    rewards = [ctx.returns[ti] for ti in order]
    per = trajectory_balance_loss(ctx.log_z, torch.stack([per_traj[ti] for ti in order]), rewards,
                                  reward_floor=a.tb_reward_floor, reward_temp=a.tb_reward_temp)
    loss = per.sum() / mb.norms["num_trajs"]
    return loss, {"tb_loss": float(per.detach().mean()), "tb_residual_abs": float(per.detach().sqrt().mean())}


def step_dpo_objective(ctx: LossContext, mb: MicroBatch) -> tuple[torch.Tensor, dict[str, Any]]:
    """DPO over preference pairs: rows ``2i`` / ``2i + 1`` hold pair i's chosen / rejected reply.

    ``L = -log sigmoid(beta [(log pi(y_w) - log pi(y_l)) - ref_margin])`` per pair (``log pi(y)`` the sum
    over the reply's tokens, ``ref_margin`` the reference's log-ratio, ``beta = algo.dpo_beta``), summed and
    divided by ``norms["num_pairs"]``. Metrics: per-pair lists (loss, preference accuracy, reward margin).
    """
    import torch.nn.functional as F

    beta = ctx.algo.dpo_beta
    lp = (mb.logprobs * mb.mask).sum(-1)
    margin = lp[0::2] - lp[1::2] - mb.ref_margin
    loss = -F.logsigmoid(beta * margin).sum() / mb.norms["num_pairs"]
    margin = margin.detach()
    return loss, {"dpo_loss": (-F.logsigmoid(beta * margin)).tolist(),
                  "pref_accuracy": (margin > 0).float().tolist(), "reward_margin": (beta * margin).tolist()}


#: ``algo.objective`` -> its function.
OBJECTIVES: dict[str, Objective] = {"ppo": ppo_objective, "tb": trajectory_balance_objective,
                                    "step_dpo": step_dpo_objective}


def loss_terms(algo: AlgoConfig) -> list[Objective]:
    """The terms added to the objective's loss, in order: AEPO's clipping, EPO's entropy smoothing (PPO only)."""
    if algo.objective != "ppo":
        return []
    return [term for on, term in ((algo.aepo_clipping, aepo_clip_term), (algo.epo_smooth_coef, epo_entropy_term))
            if on]
