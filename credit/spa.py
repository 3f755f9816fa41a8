"""SPA: Stepwise Progress Attribution.

Paper: Wang, Leong, Wang, Wang, Li, "SPA-RL: Reinforcing LLM Agents via Stepwise
Progress Attribution", arXiv 2505.20732. Reference code: WangHanLinHenry/SPA-RL-Agent.

A progress estimator P assigns every step t of a trajectory a contribution
c_t = P(history up to and including a_t), trained so that the contributions of a
trajectory add up to its final (delayed) reward R::

    L(P) = mean over trajectories of (R - sum_t c_t)^2

At RL time the step reward fuses the contribution with a grounding signal
g_t = 1 if the env could execute a_t, else 0::

    r_t = alpha * c_t + beta * g_t

and the agent is trained with PPO on these step rewards. Here the advantage is
turn-level GAE over r_t when the batch carries critic `values`::

    delta_t = r_t + gamma * V_{t+1} - V_t   (V after the last step = 0)
    A_t     = delta_t + gamma * lam * A_{t+1}

and, without a critic, the discounted return-to-go A_t = sum_{k>=t} gamma^(k-t) r_k
(GAE with V = 0 and lam = 1).

Inputs: `StepBatch.progress` holds c_t (or, with ``progress_is_cumulative=True``,
the estimated progress after step t, whose first differences are c_t);
`StepBatch.action_valid` holds g_t. `StepBatch.reward` is not read: the
contributions already redistribute the outcome reward.

Defaults: alpha = 1.0, beta = 0.5 (the released code adds 0.5 for a valid action
to the contribution; the paper's text was not retrievable here to confirm its own
symbols), gamma = 1.0, lam = 0.95 (TRL PPOTrainer defaults, which the released
StepPPOTrainer builds on; its config file is not released).

Departures from the released code (the paper is followed):
- `prm/rl_data_org.py` overwrites the estimator's contributions with the
  leave-one-out centred final reward R_i - mean_{j != i} R_j on every step; here
  the given contributions are used, as the paper describes.
- The released code derives validity from the observation an action returned
  (it lacks ALFWorld's "Nothing happens") and always grants the final action
  +0.5, since no observation follows it; here each step's own `action_valid`
  is used, the final step's included.
- `ppo/step_ppotrainer.py::compute_rewards` multiplies step k's score by
  (K - k - 1), so the last step's reward counts 0 times; not reproduced.
- PPO there is token-level GAE with the step reward on the step's last action
  token and a KL penalty on every token; here GAE runs at the turn level and the
  KL term is left to the trainer.

Also here: :func:`fit_progress_estimator`, a CPU progress estimator (linear, or a
small numpy MLP) on per-step feature vectors, trained with the paper's loss
(:func:`progress_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from turngym.credit.batch import StepBatch, factorize, register_estimator
from turngym.credit.groups import next_in_trajectory, reverse_discounted_cumsum


def spa_rewards(
    batch: StepBatch,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    progress_is_cumulative: bool = False,
) -> np.ndarray:
    """SPA's fused step rewards r_t = alpha * c_t + beta * g_t, aligned to the batch rows."""
    batch.require("spa", "progress")
    _require_finite(batch, "progress")
    if beta != 0.0:
        if batch.action_valid is None:
            raise ValueError(
                "estimator 'spa' needs StepBatch field 'action_valid' for its grounding signal "
                "(1 if the env executed the step's action); pass it, or set beta=0 to drop the grounding term"
            )
        _require_finite(batch, "action_valid")
    contribution = batch.progress
    if progress_is_cumulative:
        # progress after step t minus progress after step t-1 (0 before the first step)
        layout = batch.layout()
        progress_sorted = batch.progress[layout.order]
        previous_sorted = np.zeros(len(batch))
        previous_sorted[1:] = progress_sorted[:-1]
        previous = np.empty(len(batch))
        previous[layout.order] = previous_sorted
        contribution = batch.progress - np.where(layout.position > 0, previous, 0.0)
    rewards = alpha * contribution
    if beta != 0.0:
        rewards = rewards + beta * batch.action_valid
    return rewards


@register_estimator(
    "spa", inputs=lambda beta, **_: ("progress", "action_valid") if beta != 0.0 else ("progress",)
)
def spa(
    batch: StepBatch,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 1.0,
    lam: float = 0.95,
    progress_is_cumulative: bool = False,
) -> np.ndarray:
    """Per-step SPA advantages: GAE (with `values`) or return-to-go of the fused step rewards.

    Args:
        batch: needs `progress` and, unless beta == 0, `action_valid`; `values` optional.
        alpha: weight of the progress contribution c_t.
        beta: weight of the grounding signal g_t.
        gamma: discount over steps.
        lam: GAE lambda, used only when the batch has `values`.
        progress_is_cumulative: `progress` is the estimated progress after each step
            instead of its contribution; contributions are its first differences.
    """
    if not 0.0 <= gamma <= 1.0 or not 0.0 <= lam <= 1.0:
        raise ValueError(f"spa needs 0 <= gamma <= 1 and 0 <= lam <= 1, got gamma={gamma}, lam={lam}")
    rewards = spa_rewards(batch, alpha=alpha, beta=beta, progress_is_cumulative=progress_is_cumulative)
    layout = batch.layout()
    if batch.values is None:
        return reverse_discounted_cumsum(rewards, layout, gamma)
    _require_finite(batch, "values")
    delta = rewards + gamma * next_in_trajectory(batch.values, layout, fill=0.0) - batch.values
    return reverse_discounted_cumsum(delta, layout, gamma * lam)


def _require_finite(batch: StepBatch, name: str) -> None:
    values = getattr(batch, name)
    if not np.all(np.isfinite(values)):
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"estimator 'spa': StepBatch.{name} has NaN or inf entries (first at row {row})")


@dataclass
class ProgressEstimator:
    """A fitted progress estimator: ``estimator(features)`` gives per-step contributions c_t.

    Attributes:
        kind: "linear" (c = x.w + b) or "mlp" (c = w2 . tanh(W1 x + b1) + b2, on standardized x).
        params: the fitted parameters by name.
        train_loss: final training loss, mean over trajectories of (R - sum_t c_t)^2.
    """

    kind: str
    params: dict[str, np.ndarray]
    train_loss: float
    feature_mean: np.ndarray = field(repr=False)
    feature_scale: np.ndarray = field(repr=False)

    def __call__(self, features: Any) -> np.ndarray:
        x = _as_features(features)
        if x.shape[1] != len(self.feature_mean):
            raise ValueError(f"progress estimator was fitted on {len(self.feature_mean)} features, got {x.shape[1]}")
        if self.kind == "linear":
            return x @ self.params["w"] + self.params["b"]
        z = (x - self.feature_mean) / self.feature_scale
        return np.tanh(z @ self.params["W1"] + self.params["b1"]) @ self.params["w2"] + self.params["b2"]


def fit_progress_estimator(
    features: Any,
    traj_id: Any,
    outcome: Any,
    *,
    hidden: int = 0,
    l2: float = 1e-8,
    steps: int = 3000,
    lr: float = 0.01,
    seed: int = 0,
) -> ProgressEstimator:
    """Fit a progress estimator whose per-step contributions sum to each trajectory's outcome.

    Minimizes SPA's loss mean_j (R_j - sum_{t in j} c(x_t))^2 (+ l2 * |weights|^2).
    With ``hidden=0`` c is linear, c(x) = x.w + b, and the fit is the closed-form
    ridge solution on per-trajectory feature sums; with ``hidden > 0`` c is a one
    hidden layer tanh MLP trained by full-batch Adam (numpy only, no GPU).

    Args:
        features: (n_steps, n_features) per-step features (1-D: one feature).
        traj_id: trajectory of each step (any hashable values).
        outcome: the trajectory's final reward, repeated on each of its steps.
        hidden: hidden width of the MLP; 0 for the linear estimator.
        l2: ridge penalty on the weights (not the biases).
        steps, lr, seed: Adam iterations, step size and initialization seed (MLP only).

    Returns:
        A :class:`ProgressEstimator`; call it on features to get contributions, which
        go into ``StepBatch(progress=...)``.
    """
    x = _as_features(features)
    traj = factorize(np.asarray(traj_id))
    outcome = np.asarray(outcome, dtype=np.float64)
    if not (len(traj) == len(outcome) == len(x)):
        raise ValueError(
            f"features, traj_id and outcome need one row per step, got {len(x)}, {len(traj)}, {len(outcome)}"
        )
    if len(x) == 0:
        raise ValueError("fit_progress_estimator needs at least one step")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(outcome))):
        raise ValueError("fit_progress_estimator: features and outcome must be finite (no NaN or inf)")
    target = _per_trajectory_outcome(traj, outcome)
    n_traj = len(target)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    if hidden <= 0:
        return _fit_linear(x, traj, n_traj, target, l2, mean, scale)
    return _fit_mlp(x, traj, n_traj, target, hidden, l2, steps, lr, seed, mean, scale)


def progress_loss(contribution: Any, traj_id: Any, outcome: Any) -> float:
    """SPA's progress-estimator loss: mean over trajectories of (R - sum_t c_t)^2.

    `outcome` is the trajectory's final reward, repeated on each of its steps.
    """
    contribution = np.asarray(contribution, dtype=np.float64)
    traj = factorize(np.asarray(traj_id))
    target = _per_trajectory_outcome(traj, np.asarray(outcome, dtype=np.float64))
    return _trajectory_loss(contribution, traj, len(target), target)


def _per_trajectory_outcome(traj: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    if len(traj) != len(outcome):
        raise ValueError(f"traj_id and outcome need one row per step, got {len(traj)} and {len(outcome)}")
    target = np.empty(int(traj.max()) + 1 if len(traj) else 0)
    target[traj] = outcome
    if np.any(target[traj] != outcome):
        raise ValueError("outcome must be the same on every step of a trajectory (its final reward, repeated)")
    return target


def _as_features(features: Any) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be (n_steps, n_features), got shape {x.shape}")
    return x


def _trajectory_loss(contribution: np.ndarray, traj: np.ndarray, n_traj: int, target: np.ndarray) -> float:
    residual = np.bincount(traj, weights=contribution, minlength=n_traj) - target
    return float(np.mean(residual**2))


def _fit_linear(x, traj, n_traj, target, l2, mean, scale) -> ProgressEstimator:
    # sum_t (x_t.w + b) = (sum_t x_t).w + n_j b: least squares on per-trajectory sums.
    d = x.shape[1]
    design = np.empty((n_traj, d + 1))
    for j in range(d):  # loop over features, not rows
        design[:, j] = np.bincount(traj, weights=x[:, j], minlength=n_traj)
    design[:, d] = np.bincount(traj, minlength=n_traj)
    penalty = np.full(d + 1, l2 * n_traj)
    penalty[d] = 0.0
    gram = design.T @ design + np.diag(penalty)
    theta = np.linalg.lstsq(gram, design.T @ target, rcond=None)[0]
    params = {"w": theta[:d], "b": np.float64(theta[d])}
    loss = _trajectory_loss(x @ params["w"] + params["b"], traj, n_traj, target)
    return ProgressEstimator("linear", params, loss, mean, scale)


def _fit_mlp(x, traj, n_traj, target, hidden, l2, steps, lr, seed, mean, scale) -> ProgressEstimator:
    rng = np.random.default_rng(seed)
    z = (x - mean) / scale
    d = z.shape[1]
    params = {
        "W1": rng.normal(0.0, 1.0 / np.sqrt(d), size=(d, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0.0, 1.0 / np.sqrt(hidden), size=hidden),
        "b2": np.zeros(()),
    }
    moment1 = {k: np.zeros_like(v) for k, v in params.items()}
    moment2 = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8
    for it in range(1, steps + 1):
        h = np.tanh(z @ params["W1"] + params["b1"])
        c = h @ params["w2"] + params["b2"]
        residual = np.bincount(traj, weights=c, minlength=n_traj) - target
        dc = (2.0 / n_traj) * residual[traj]  # dL/dc_t, the same for every step of a trajectory
        dh = np.outer(dc, params["w2"]) * (1.0 - h * h)
        grads = {
            "W1": z.T @ dh + 2.0 * l2 * params["W1"],
            "b1": dh.sum(axis=0),
            "w2": h.T @ dc + 2.0 * l2 * params["w2"],
            "b2": np.asarray(dc.sum()),
        }
        for k, grad in grads.items():
            moment1[k] = beta1 * moment1[k] + (1 - beta1) * grad
            moment2[k] = beta2 * moment2[k] + (1 - beta2) * grad**2
            step = lr * (moment1[k] / (1 - beta1**it)) / (np.sqrt(moment2[k] / (1 - beta2**it)) + adam_eps)
            params[k] = params[k] - step
    estimator = ProgressEstimator("mlp", params, 0.0, mean, scale)
    estimator.train_loss = _trajectory_loss(estimator(x), traj, n_traj, target)
    return estimator
