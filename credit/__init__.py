"""Credit assignment for multi-turn agents: advantage estimators as pure functions.

Every estimator takes a :class:`StepBatch` (one row per agent step, rows in
any order) and returns per-step advantages aligned to its rows::

    from turngym.credit import StepBatch, compute_advantages
    adv = compute_advantages("gigpo", batch, gamma=0.95, omega=1.0)

The trainer broadcasts a step's advantage to every token of that step's
response. This package depends on nothing else of ours.
"""

from __future__ import annotations

from turngym.credit.batch import (
    ESTIMATORS,
    StepBatch,
    check_estimator,
    compute_advantages,
    estimator_inputs,
    factorize,
    register_estimator,
)

# Importing an estimator module registers it in ESTIMATORS.
# -- outcome / value-based estimators --
from turngym.credit import dr_grpo, gae, gigpo, grpo, reinforce_pp, rloo  # noqa: F401,E402
from turngym.credit.gae import gae_advantages_and_returns  # noqa: E402
from turngym.credit.gigpo import GiGPOParts, anchor_group_stats, anchor_groups, gigpo_parts  # noqa: E402
# -- process / information estimators --
from turngym.credit import empg, igpo, spa, stratified_grpo  # noqa: F401,E402
from turngym.credit.spa import ProgressEstimator, fit_progress_estimator, progress_loss  # noqa: E402

__all__ = [
    "ESTIMATORS",
    "GiGPOParts",
    "ProgressEstimator",
    "StepBatch",
    "anchor_group_stats",
    "anchor_groups",
    "check_estimator",
    "compute_advantages",
    "estimator_inputs",
    "factorize",
    "fit_progress_estimator",
    "gae_advantages_and_returns",
    "gigpo_parts",
    "progress_loss",
    "register_estimator",
]
