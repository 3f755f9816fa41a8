"""GiGPO: episode-level group advantage plus a step-level advantage within anchor-state groups.

Paper: Feng, Xue, Liu, An, "Group-in-Group Policy Optimization for LLM Agent
Training", arXiv 2505.10978 (NeurIPS 2025). Reference code: verl-agent
``gigpo/core_gigpo.py`` (read in its forks and in langfengQ/DrMAS, same API).

For a group of N trajectories of one task (same initial state)::

    R(tau_i)  = sum_t r_t^(i)                                            episode return
    A^E(tau_i) = (R(tau_i) - mean_j R(tau_j)) / F_norm                   Eq. 3
    R_t^(i)   = sum_{k >= t} gamma^(k-t) r_k^(i)                         Eq. 5, discounted step return
    G^S(s)    = {(a_t^(i), R_t^(i)) : s_t^(i) = s, over all i, t}        Eq. 6, anchor-state group
    A^S(a_t^(i)) = (R_t^(i) - mean_{G^S(s)} R) / F_norm(G^S(s))          Eq. 7
    A(a_t^(i)) = A^E(tau_i) + omega * A^S(a_t^(i))                       Eq. 8, on every token of step t

F_norm is the unbiased std (+ eps) with ``mode="std"``, or 1 with
``mode="mean_norm"`` (the paper's mean-only variant, after Dr.GRPO).
Defaults: gamma = 0.95 and omega = 1.0 (verl-agent's; omega = 1 weighs both levels alike),
eps = 1e-6, ``mode="std"``: the GRPO-form F_norm of Eq. 3, which
verl-agent's ALFWorld script selects (``mean_std_norm``, accepted here as an
alias); verl-agent's yaml default is ``mean_norm``. An anchor group with one
step (a state no other step visited) gets A^S = 0, as in the reference code;
anchor groups never cross task groups.

Anchors (``anchor=``):
* ``"state_key"`` (default): the env's canonical digest of the true state,
  ``batch.state_key``. Two steps share an anchor iff they are in the same
  task group and in the same state.
* ``"observation"``: exact match of ``batch.observation`` (the observation
  text the step acted on): what verl-agent does by default (its ``anchor``
  is the raw current observation) and ROLL does with ``state_hash``. Text can
  alias (two states, one description) or split (one state, two texts).
* ``"observation_similarity"``: verl-agent's ``enable_similarity`` option:
  within a task group, an observation joins the first cluster whose
  representative has ``difflib.SequenceMatcher(None, obs, rep).ratio() >=
  similarity_threshold`` (default 0.95), else opens a new cluster. Greedy and
  order-dependent, so observations are visited in a canonical order (first
  step at which they occur, then text), not in row order, to keep the result
  independent of how rows are ordered. It runs a Python loop over the
  distinct observations of each group (quadratic in them): an option for
  envs without ``state_key``, not the fast path.

Departures from the reference code:
* Group on the true ``state_key`` by default (see above).
* Each trajectory counts once in the episode group's mean/std, as in Eq. 3.
  verl-agent's current ``episode_norm_reward`` computes them over step
  samples by default (``compute_mean_std_cross_steps=True``: a trajectory
  weighs by its number of steps); ``episode_stats="step"`` reproduces that.
* A task group with one trajectory gets A^E = 0 by default; verl-agent uses
  mean := 0, std := 1 there (A^E = R or R / (1 + eps)): ``singleton="raw"``.
* Similarity clusters are built in canonical order (above), not row order.
* Rows may come in any order: step returns follow ``step`` within each
  trajectory (the reference scans a trajectory's samples in batch order).
* float64 throughout (the reference runs in float32).
"""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import NamedTuple

import numpy as np

from turngym.credit.batch import StepBatch, factorize, register_estimator
from turngym.credit.groups import discounted_returns, normalize_in_groups, trajectory_sums

ANCHORS = ("state_key", "observation", "observation_similarity")
MODES = {"std": "std", "mean_std_norm": "std", "mean_norm": "mean"}
EPISODE_STATS = ("trajectory", "step")


class GiGPOParts(NamedTuple):
    """The pieces of GiGPO's advantage, each aligned to the batch rows."""

    episode: np.ndarray  # A^E of the step's trajectory
    step: np.ndarray  # A^S within the step's anchor group (0 for a singleton anchor group)
    step_returns: np.ndarray  # discounted return-to-go R_t
    anchor: np.ndarray  # anchor-group code (0..k-1); equal codes, same task group and state


def anchor_groups(batch: StepBatch, anchor: str = "state_key", similarity_threshold: float = 0.95) -> np.ndarray:
    """Anchor-state group code of each row: steps of one task group (``group_id``) in one state.

    ``anchor`` picks what "one state" means: ``"state_key"``, ``"observation"``
    (exact text) or ``"observation_similarity"`` (see the module doc).
    """
    if anchor not in ANCHORS:
        raise ValueError(f"unknown GiGPO anchor {anchor!r}; expected one of {ANCHORS}")
    field = "state_key" if anchor == "state_key" else "observation"
    if getattr(batch, field) is None:
        alternative = " (or group on text with anchor='observation')" if field == "state_key" else ""
        raise ValueError(
            f"estimator 'gigpo' with anchor={anchor!r} needs StepBatch field {field!r}; "
            f"pass it when building the batch{alternative}"
        )
    layout = batch.layout()
    if len(batch) == 0:
        return np.zeros(0, dtype=np.int64)
    state = batch.codes(field)
    _reject_missing(batch, field)
    state_group = np.empty(int(state.max()) + 1, dtype=np.int64)
    state_group[state] = layout.group
    if np.array_equal(state_group[state], layout.group):
        exact = state  # no state seen in two task groups (the usual case): the state codes are the anchors
    else:
        exact = factorize(layout.group * len(state_group) + state)
    if anchor != "observation_similarity":
        return exact
    if not 0.0 < similarity_threshold <= 1.0:
        raise ValueError(f"similarity_threshold must be in (0, 1], got {similarity_threshold}")
    return _similarity_clusters(batch, exact, layout.group, similarity_threshold)


def anchor_group_stats(anchor: np.ndarray) -> dict[str, float]:
    """Sizes of the anchor groups (as verl-agent logs them): how much step-level signal a batch carries.

    ``shared_step_fraction`` is the fraction of steps whose anchor group has
    another member, i.e. the steps that get a nonzero step advantage at all.
    """
    sizes = np.bincount(np.asarray(anchor, dtype=np.int64))
    sizes = sizes[sizes > 0]
    if len(sizes) == 0:
        return {"groups": 0.0, "mean_size": 0.0, "max_size": 0.0, "singleton_ratio": 0.0, "shared_step_fraction": 0.0}
    return {
        "groups": float(len(sizes)),
        "mean_size": float(sizes.mean()),
        "max_size": float(sizes.max()),
        "singleton_ratio": float(np.mean(sizes == 1)),
        "shared_step_fraction": float(sizes[sizes > 1].sum() / sizes.sum()),
    }


def _reject_missing(batch: StepBatch, field: str) -> None:
    """None is hashable, so missing keys would silently form one big anchor group: refuse them."""
    values = getattr(batch, field)
    if values.dtype.kind != "O":
        return
    missing = np.flatnonzero(np.equal(values, None))
    if len(missing):
        row = int(missing[0])
        traj = batch.traj_id[row : row + 1].tolist()[0]
        raise ValueError(
            f"StepBatch.{field} is None on {len(missing)} row(s) (first: row {row}, traj_id {traj!r}, "
            f"step {batch.step[row]}); every step needs one for GiGPO's anchor groups"
        )


def _similarity_clusters(batch: StepBatch, exact: np.ndarray, group: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy representative clustering of the distinct observations of each task group."""
    k = int(exact.max()) + 1
    rows = np.arange(len(exact))
    some_row = np.zeros(k, dtype=np.int64)
    some_row[exact] = rows
    first_step = np.full(k, np.iinfo(np.int64).max)
    np.minimum.at(first_step, exact, batch.step)
    texts = batch.observation[some_row].tolist()
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"anchor='observation_similarity' needs text observations, got {type(bad).__name__}")
    cluster_group = group[some_row].tolist()
    first_step = first_step.tolist()
    order = sorted(range(k), key=lambda c: (cluster_group[c], first_step[c], texts[c]))
    cluster = np.empty(k, dtype=np.int64)
    reps: list[tuple[str, int]] = []
    current, next_id = None, 0
    for c in order:
        if cluster_group[c] != current:
            current, reps = cluster_group[c], []
        text = texts[c]
        for rep, cid in reps:
            matcher = SequenceMatcher(None, text, rep)
            # the quick ratios are upper bounds of ratio(): cheap rejections, same decisions
            if (
                matcher.real_quick_ratio() >= threshold
                and matcher.quick_ratio() >= threshold
                and matcher.ratio() >= threshold
            ):
                cluster[c] = cid
                break
        else:
            reps.append((text, next_id))
            cluster[c] = next_id
            next_id += 1
    return cluster[exact]


def gigpo_parts(
    batch: StepBatch,
    *,
    gamma: float = 0.95,
    mode: str = "std",
    eps: float = 1e-6,
    anchor: str = "state_key",
    similarity_threshold: float = 0.95,
    singleton: str = "zero",
    episode_stats: str = "trajectory",
) -> GiGPOParts:
    """GiGPO's episode and step advantages, step returns and anchor groups (arguments as :func:`gigpo`)."""
    if mode not in MODES:
        raise ValueError(f"unknown GiGPO mode {mode!r}; expected one of {tuple(MODES)}")
    if episode_stats not in EPISODE_STATS:
        raise ValueError(f"unknown episode_stats {episode_stats!r}; expected one of {EPISODE_STATS}")
    scale = MODES[mode]
    layout = batch.layout()
    anchor_codes = anchor_groups(batch, anchor, similarity_threshold)

    returns = trajectory_sums(batch.reward, layout)
    if episode_stats == "trajectory":
        episode = normalize_in_groups(
            returns, layout.traj_group, scale=scale, eps=eps, singleton=singleton, num_groups=layout.num_groups
        )[layout.traj]
    else:
        episode = normalize_in_groups(
            returns[layout.traj], layout.group, scale=scale, eps=eps, singleton=singleton, num_groups=layout.num_groups
        )

    step_returns = discounted_returns(batch.reward, layout, gamma)
    step = normalize_in_groups(step_returns, anchor_codes, scale=scale, eps=eps, singleton="zero")
    return GiGPOParts(episode=episode, step=step, step_returns=step_returns, anchor=anchor_codes)


@register_estimator(
    "gigpo", inputs=lambda anchor, **_: ("state_key",) if anchor == "state_key" else ("observation",)
)
def gigpo(
    batch: StepBatch,
    *,
    gamma: float = 0.95,
    omega: float = 1.0,
    mode: str = "std",
    eps: float = 1e-6,
    anchor: str = "state_key",
    similarity_threshold: float = 0.95,
    singleton: str = "zero",
    episode_stats: str = "trajectory",
) -> np.ndarray:
    """Per-step GiGPO advantages A^E + omega * A^S, aligned to the batch rows.

    Args:
        batch: the steps; needs ``state_key`` (default anchor) or ``observation``.
        gamma: discount of the step returns, in [0, 1].
        omega: weight of the step advantage (``step_advantage_w`` in verl-agent).
        mode: ``"std"`` (F_norm = std + eps; alias ``"mean_std_norm"``) or ``"mean_norm"`` (F_norm = 1).
        eps: added to the std in ``"std"`` mode.
        anchor: ``"state_key"``, ``"observation"`` or ``"observation_similarity"`` (module doc).
        similarity_threshold: SequenceMatcher ratio for ``"observation_similarity"``, in (0, 1].
        singleton: a one-trajectory task group's A^E: ``"zero"`` or ``"raw"`` (verl-agent).
        episode_stats: ``"trajectory"`` (Eq. 3: each trajectory once) or ``"step"`` (verl-agent's default).
    """
    parts = gigpo_parts(
        batch,
        gamma=gamma,
        mode=mode,
        eps=eps,
        anchor=anchor,
        similarity_threshold=similarity_threshold,
        singleton=singleton,
        episode_stats=episode_stats,
    )
    return parts.episode + omega * parts.step
