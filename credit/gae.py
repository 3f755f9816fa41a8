"""GAE at turn level: generalized advantage estimation over the steps of a trajectory, with a critic.

Papers: Schulman, Moritz, Levine, Jordan, Abbeel, "High-Dimensional
Continuous Control Using Generalized Advantage Estimation", arXiv 1506.02438;
used by PPO (Schulman et al., "Proximal Policy Optimization Algorithms",
arXiv 1707.06347).

Each turn t of a trajectory is one MDP step with reward r_t and critic value
V_t = V(s_t) (``batch.values``)::

    delta_t = r_t + gamma V_{t+1} - V_t          (V after the last step = 0)
    A_t     = sum_{k >= t} (gamma lam)^(k-t) delta_k
    returns = A_t + V_t                           (the critic's targets: gae_advantages_and_returns)

Defaults: gamma = 0.99, lam = 0.95, the PPO paper's (verl's token-level GAE
defaults to gamma = lam = 1.0). No whitening by default; ``whiten=True``
normalizes the advantages over the batch like verl (mean 0, unbiased var,
eps 1e-8), after the returns are taken.

Departures:
* Turn level, as verl-agent / RAGEN's "bi-level" GAE: one value per turn,
  read by the trainer where it chooses (e.g. at the turn's last prompt
  token); verl's ``compute_gae_advantage_return`` runs the same recursion
  per token.
* Every trajectory is treated as terminated after its last step. For a
  time-limit truncation, bootstrap by adding gamma * V(s_T) to the last
  step's reward: that is exactly the missing delta term.
"""

from __future__ import annotations

import numpy as np

from turngym.credit.batch import StepBatch, register_estimator
from turngym.credit.groups import next_in_trajectory, reverse_discounted_cumsum, whiten as whiten_batch


def gae_advantages_and_returns(
    batch: StepBatch, *, gamma: float = 0.99, lam: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Turn-level GAE advantages and critic returns (A + V), both aligned to the batch rows, unwhitened."""
    batch.require("gae", "values")
    if not np.all(np.isfinite(batch.values)):
        raise ValueError("StepBatch.values has NaN or inf entries; GAE needs a finite critic value on every step")
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    layout = batch.layout()
    delta = batch.reward + gamma * next_in_trajectory(batch.values, layout, fill=0.0) - batch.values
    advantages = reverse_discounted_cumsum(delta, layout, gamma * lam)
    return advantages, advantages + batch.values


@register_estimator("gae", inputs=("values",))
def gae(batch: StepBatch, *, gamma: float = 0.99, lam: float = 0.95, whiten: bool = False) -> np.ndarray:
    """Per-step GAE advantages, aligned to the batch rows.

    Args:
        batch: the steps; needs ``values`` (the critic's V(s_t) for each step).
        gamma: discount, in [0, 1].
        lam: GAE lambda, in [0, 1] (0: one-step TD error; 1: Monte Carlo return minus V).
        whiten: normalize the advantages over the batch (verl does, after taking the returns).
    """
    advantages, _ = gae_advantages_and_returns(batch, gamma=gamma, lam=lam)
    return whiten_batch(advantages) if whiten else advantages
