"""Every estimator declares the StepBatch fields it reads, and the declaration is exact.

Registry-wide: a batch with the required fields plus exactly the declared inputs runs; removing any
one declared input is an error (so trainers that fill what is declared never feed a silent default).
"""

from __future__ import annotations

import numpy as np
import pytest

from turngym.credit import ESTIMATORS, StepBatch, compute_advantages, estimator_inputs
from turngym.credit.batch import OPTIONAL_FIELDS, register_estimator

# Hyper-parameter settings that change what an estimator reads.
CASES = [(name, {}) for name in sorted(ESTIMATORS)] + [
    ("spa", {"beta": 0.0}),
    ("gigpo", {"anchor": "observation"}),
    ("gigpo", {"anchor": "observation_similarity"}),
    ("empg", {"base": "gigpo"}),
    ("empg", {"base": "spa"}),
]


def _batch(fields: tuple[str, ...], rng: np.random.Generator) -> StepBatch:
    # 2 groups x 3 trajectories x 3 steps; outcome on the last step; repeated states within a group.
    rows = [(g, g * 3 + j, t) for g in range(2) for j in range(3) for t in range(3)]
    group, traj, step = (np.array(c) for c in zip(*rows, strict=True))
    outcome = rng.integers(0, 2, size=6).astype(float)
    reward = np.where(step == 2, outcome[traj], 0.0)
    data = {"group_id": group, "traj_id": traj, "step": step, "reward": reward}
    available = {
        "state_key": np.array([f"s{g}-{t}-{j % 2}" for g, j, t in zip(group, traj, step, strict=True)], dtype=object),
        "observation": np.array([f"obs {g} {t} {j % 2}" for g, j, t in zip(group, traj, step, strict=True)],
                                dtype=object),
        "values": rng.normal(size=len(rows)),
        "progress": rng.uniform(size=len(rows)),
        "info_gain": rng.normal(size=len(rows)),
        "gold_logprob": -rng.uniform(0.1, 3.0, size=len(rows)),
        "num_tool_calls": np.repeat(rng.integers(0, 3, size=6), 3),
        "entropy": rng.uniform(0.1, 2.0, size=len(rows)),
        "action_valid": rng.integers(0, 2, size=len(rows)).astype(float),
    }
    data.update({f: available[f] for f in fields})
    return StepBatch(**data)


def test_every_estimator_declares_known_fields():
    for name in ESTIMATORS:
        assert set(estimator_inputs(name)) <= set(OPTIONAL_FIELDS)


@pytest.mark.parametrize(("name", "hparams"), CASES, ids=[f"{n}-{h}" for n, h in CASES])
def test_declared_inputs_are_sufficient_and_necessary(name, hparams):
    rng = np.random.default_rng(0)
    inputs = estimator_inputs(name, **hparams)
    adv = compute_advantages(name, _batch(inputs, rng), **hparams)
    assert adv.shape == (18,) and np.all(np.isfinite(adv))
    for missing in inputs:
        with pytest.raises((ValueError, TypeError), match=missing):
            compute_advantages(name, _batch(tuple(f for f in inputs if f != missing), rng), **hparams)


def test_worked_declarations():
    assert estimator_inputs("grpo") == ()
    assert estimator_inputs("spa") == ("progress", "action_valid")
    assert estimator_inputs("spa", beta=0.0) == ("progress",)
    assert estimator_inputs("empg", base="gigpo") == ("entropy", "state_key")
    assert estimator_inputs("stratified_grpo") == ("num_tool_calls",)
    assert estimator_inputs("igpo") == ("gold_logprob",)
    assert estimator_inputs("gae") == ("values",)


def test_bad_declarations_and_names_are_errors():
    with pytest.raises(ValueError, match="unknown inputs"):
        register_estimator("bogus_inputs", inputs=("entropyy",))
    with pytest.raises(KeyError, match="did you mean 'gigpo'"):
        estimator_inputs("gigpoo")
    with pytest.raises(TypeError, match="did you mean 'omega'"):
        estimator_inputs("gigpo", omegaa=1.0)
