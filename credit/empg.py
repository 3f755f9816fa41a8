"""EMPG: Entropy-Modulated Policy Gradients.

Paper: Wang, Liu, Fu, Li, Wang, Lin, Yue, Zhang, Wang, Wang, "Harnessing
Uncertainty: Entropy-Modulated Policy Gradients for Long-Horizon LLM Agents",
arXiv 2509.09265 (ByteDance Seed). No code is released; the project page
(empgseed-seed.github.io) gives pseudocode ``compute_empg_advantage``.

The expected norm of a softmax policy's score function grows with its entropy,
so confident steps get small updates and uncertain steps large ones. EMPG
re-scales each step's share of the trajectory advantage by a decreasing
function of the step's entropy and adds a bonus for leading to a clear (low
entropy) next step. With H the step's mean token entropy::

    H_norm = (H - min H) / (max H - min H + 1e-8)        min, max over all steps of the batch (Eq. 12)
    g(H)   = exp(-k H_norm) / (mean_batch exp(-k H_norm) + 1e-8)    self-calibrating scale, mean 1 (Eq. 10)
    f(H)   = exp(-k_f H_norm)                            future-clarity bonus (Eq. 11)
    A_mod(i, t) = g(H_{i,t}) * A(i, t) + zeta * f(H_{i,t+1})    bonus only where step t+1 exists
    A_final = A_mod - mean_batch(A_mod)

A(i, t) is the base advantage: the trajectory's GRPO (or DAPO) outcome advantage
in the paper; here any registered estimator (``base``, default "grpo"), so the
step-level ones can be modulated too.

Inputs: `StepBatch.entropy` (the step's mean token entropy under the rollout
policy); whatever the base estimator needs.

Defaults: k = 1.0, k_f = 1.0, zeta = 0.1 (the pseudocode's signature), base "grpo".

Departures and open points:
- Eq. 10-12 and the constants come from the official pseudocode; the way the
  two terms combine and the final batch centering (``center=True``) follow the
  paper as read in turngym's research notes, not code, since the pseudocode's
  second half and the paper's text were not retrievable here. ``center=False``
  returns A_mod.
- The pseudocode averages token entropies over a step's assistant segment,
  found by chat-template token ids; here the trainer supplies that average.
- The batch statistics (min, max, mean g, centering) are over steps (rows), each
  step counting once, as in the pseudocode; they are not token-weighted.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from turngym.credit.batch import ESTIMATORS, StepBatch, estimator_inputs, register_estimator
from turngym.credit.groups import next_in_trajectory

BaseEstimator = Callable[[StepBatch], np.ndarray]


def empg_modulation(entropy: np.ndarray, *, k: float = 1.0, k_f: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """EMPG's per-step scale g(H) and clarity f(H) from step entropies (batch min-max normalized)."""
    entropy = np.asarray(entropy, dtype=np.float64)
    if len(entropy) == 0:
        return np.zeros(0), np.zeros(0)
    low, high = entropy.min(), entropy.max()
    h_norm = (entropy - low) / (high - low + 1e-8)
    confidence = np.exp(-k * h_norm)
    scale = confidence / (confidence.mean() + 1e-8)
    clarity = np.exp(-k_f * h_norm)
    return scale, clarity


@register_estimator("empg", inputs=lambda base, **_: ("entropy", *_base_inputs(base)))
def empg(
    batch: StepBatch,
    *,
    k: float = 1.0,
    k_f: float = 1.0,
    zeta: float = 0.1,
    base: str | BaseEstimator = "grpo",
    center: bool = True,
) -> np.ndarray:
    """Per-step EMPG advantages: entropy-scaled base advantage plus the future-clarity bonus.

    Args:
        batch: needs `entropy`, plus what the base estimator needs.
        k: sharpness of the self-calibrating scale g(H).
        k_f: sharpness of the future-clarity bonus f(H).
        zeta: weight of the future-clarity bonus.
        base: name of a registered estimator giving A(i, t), or a function ``f(batch)``
            returning per-step advantages; estimator defaults are used (wrap it in a
            function for other hyperparameters).
        center: subtract the batch mean of the modulated advantages.
    """
    batch.require("empg", "entropy")
    if not np.all(np.isfinite(batch.entropy)):
        row = int(np.flatnonzero(~np.isfinite(batch.entropy))[0])
        raise ValueError(f"estimator 'empg': StepBatch.entropy has NaN or inf entries (first at row {row})")
    if len(batch) == 0:
        return np.zeros(0)
    base_fn = _base_estimator(base)
    base_adv = np.asarray(base_fn(batch), dtype=np.float64)
    if base_adv.shape != (len(batch),):
        raise ValueError(f"empg base estimator returned shape {base_adv.shape}, expected ({len(batch)},)")
    layout = batch.layout()
    scale, clarity = empg_modulation(batch.entropy, k=k, k_f=k_f)
    has_next = layout.position < layout.length[layout.traj] - 1
    bonus = np.where(has_next, next_in_trajectory(clarity, layout), 0.0)
    modulated = scale * base_adv + zeta * bonus
    if center:
        modulated = modulated - modulated.mean()
    return modulated


def _base_inputs(base: str | BaseEstimator) -> tuple[str, ...]:
    """What the base estimator reads (a function given as base declares nothing)."""
    if callable(base) or base == "empg":
        return ()
    return estimator_inputs(base)


def _base_estimator(base: str | BaseEstimator) -> BaseEstimator:
    if callable(base):
        return base
    if base == "empg":
        raise ValueError("empg cannot use itself as its base estimator")
    if base not in ESTIMATORS:
        raise KeyError(
            f"empg base estimator {base!r} is not registered (known: {', '.join(sorted(ESTIMATORS))}); "
            "import turngym.credit to register the built-in ones"
        )
    return ESTIMATORS[base]
