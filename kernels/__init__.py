"""Fused log-prob / entropy / policy-loss ops for RL on LLMs, without [tokens x vocab] logits.

    from turngym.kernels import fused_logprobs, fused_policy_loss
    with torch.no_grad():                        # old / reference log-probs: one matmul, tiles only
        old_logprobs, _ = fused_logprobs(hidden, model.lm_head.weight, targets)
    loss, metrics = fused_policy_loss(hidden, model.lm_head.weight, targets, response_mask,
                                      advantages, old_logprobs, clip_low=0.2, clip_high=0.28)
    loss.backward()                              # gradients were formed in the forward pass

``fused_logprobs`` gives per-token log-probs and entropies with a backward
(tiles recomputed); ``fused_token_loss`` takes any loss that is a sum of
per-token terms and forms the gradient in the forward (what
``fused_policy_loss`` uses); ``policy_loss_from_logprobs`` is the same PPO /
GRPO loss on log-probs you already have.

Each op has a plain torch reference (the ground truth of the tests), a chunked
torch implementation (any device; the CPU default) and a Triton one (the CUDA
default; optional extra ``turngym[triton]``, imported only when used).
This package depends on nothing of ours except ``turngym.errors``.
"""

from __future__ import annotations

from turngym.kernels.logprob import (
    IGNORE_INDEX,
    fused_logprobs,
    fused_token_loss,
    reference_logprobs,
    reference_logprobs_from_logits,
)
from turngym.kernels.policy_loss import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    aggregate_loss,
    fused_policy_loss,
    kl_penalty,
    policy_loss_from_logprobs,
    ppo_clip_token_loss,
)

__all__ = [
    "IGNORE_INDEX",
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "aggregate_loss",
    "fused_logprobs",
    "fused_policy_loss",
    "fused_token_loss",
    "kl_penalty",
    "policy_loss_from_logprobs",
    "ppo_clip_token_loss",
    "reference_logprobs",
    "reference_logprobs_from_logits",
]
