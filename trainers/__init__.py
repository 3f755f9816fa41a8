"""RL and SFT trainers: the token-exact core (samples, log-probs, the policy objective).

``tokens``: trajectories -> training samples (step-wise or one sequence per
episode), padded batches and micro-batches, never re-tokenizing text.
``logprobs``: per-token log-probs / entropy of a causal LM, chunked (or the
kernels package's fused op), and the engine-vs-trainer agreement check.
``objectives``: PPO-clip with clip-higher and dual-clip, KL estimators, loss
aggregation modes (a thin layer over ``turngym.kernels.policy_loss``, where
the formulas live), DAPO's zero-variance group filter, and every objective
(PPO, trajectory balance, step-DPO, EPO/AEPO terms) as ``objective(ctx, mb)``.

``config``: the trainers' config dataclasses, YAML recipes and overrides.
``rl``: the multi-turn RL loop (:class:`RLTrainer`), with ``update`` (its
gradient steps), ``step_dpo`` (Agent Q's search + DPO), ``selfplay``
(Werewolf) and ``distributed`` (torch.distributed); ``sft``: the SFT warm
start; ``model``: loading, LoRA, reference and saving the policy;
``runlog``: metrics, atomic checkpoints, plots; ``cli``: ``turngym train``,
``turngym sft``, ``turngym plot``.

Depends on ``turngym.agents`` (records), ``turngym.credit`` and
``turngym.kernels`` (the policy-loss formulas; its fused log-prob op is used
when it applies); needs torch (the ``hf`` extra).
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule. Imported on first use, so `import turngym.trainers.cli` (the CLI plugins) does not pull torch.
_EXPORTS = {
    "compare_logprobs": "logprobs", "reference_sequence_logprobs": "logprobs", "sequence_logprobs": "logprobs",
    "token_logprobs": "logprobs",
    "AGG_MODES": "objectives", "KL_ESTIMATORS": "objectives", "PolicyLoss": "objectives",
    "aggregate_loss": "objectives", "dynamic_filter_groups": "objectives", "kl_penalty": "objectives",
    "ppo_clip_loss": "objectives",
    "PrefixBreak": "tokens", "PrefixBreakError": "tokens", "TokenBatch": "tokens", "TrainingSample": "tokens",
    "build_samples": "tokens", "collate": "tokens", "loss_normalizers": "tokens", "pack_microbatches": "tokens",
    "prefix_breaks": "tokens", "step_batch": "tokens", "verify_samples": "tokens",
    "RLConfig": "config", "SFTConfig": "config", "load_config": "config",
    "RLTrainer": "rl", "train": "rl",
    "SFTTrainer": "sft",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'turngym.trainers' has no attribute {name!r}")
    return getattr(importlib.import_module(f"turngym.trainers.{module}"), name)


__all__ = list(_EXPORTS)
