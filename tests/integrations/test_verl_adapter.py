"""turngym's estimators through verl's advantage-estimator registry, against the real verl package.

Needs the `verl` extra, in its own venv (`make test-verl`: verl pins its own transformers). verl is imported
in a fixture, not at collection, so the main venv's `make test` (which deselects these integration tests)
does not fail collecting this file under TURNGYM_REQUIRE_EXTRAS=1.
"""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # `make test-verl`: verl has its own venv (its own transformers pin)

torch = pytest.importorskip("torch")

from turngym.credit import StepBatch, compute_advantages  # noqa: E402

core_algos = tg_verl = None  # set by _verl below


@pytest.fixture(autouse=True)
def _verl():
    global core_algos, tg_verl
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    from turngym.integrations import verl

    tg_verl = verl


def _batch(rows: int = 8, length: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, length + 1, (rows,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).float()
    rewards = torch.zeros(rows, length)
    rewards[torch.arange(rows), lengths - 1] = torch.randint(0, 2, (rows,), generator=gen).float()
    rewards[0, lengths[0] - 1], rewards[1, lengths[1] - 1] = 1.0, 0.0  # group "a" is never all-equal
    index = np.array(["a", "a", "a", "a", "b", "b", "b", "b"][:rows], dtype=object)
    return rewards, mask, index


def test_every_estimator_but_gae_is_in_verls_registry():
    for name in ("grpo", "rloo", "dr_grpo", "reinforce_pp", "gigpo", "empg", "igpo", "spa", "stratified_grpo"):
        assert core_algos.get_adv_estimator_fn(f"turngym_{name}") is tg_verl.make_adv_estimator(name)
    with pytest.raises(ValueError, match="turngym_gae"):
        core_algos.get_adv_estimator_fn("turngym_gae")


def test_turngym_grpo_in_verl_equals_verls_own_grpo():
    rewards, mask, index = _batch()
    ours, ours_returns = core_algos.get_adv_estimator_fn("turngym_grpo")(
        token_level_rewards=rewards, response_mask=mask, index=index, config=None
    )
    theirs, _ = core_algos.compute_grpo_outcome_advantage(
        token_level_rewards=rewards.clone(), response_mask=mask, index=index
    )
    assert ours.shape == rewards.shape and ours.dtype == rewards.dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert torch.equal(ours_returns, ours)
    assert torch.all(ours[mask == 0] == 0)
    assert ours[0, 0] > 0 > ours[1, 0]  # the winner of group "a" is pushed up, the loser down


def test_singleton_group_follows_turngym_default_unless_config_says_raw():
    rewards = torch.tensor([[0.0, 1.0]])
    mask = torch.ones(1, 2)
    fn = core_algos.get_adv_estimator_fn("turngym_grpo")
    adv, _ = fn(token_level_rewards=rewards, response_mask=mask, index=np.array(["solo"]), config=None)
    assert torch.all(adv == 0)  # turngym: a lone rollout has no baseline
    adv, _ = fn(
        token_level_rewards=rewards,
        response_mask=mask,
        index=np.array(["solo"]),
        config={"turngym": {"singleton": "raw"}},
    )
    theirs, _ = core_algos.compute_grpo_outcome_advantage(rewards.clone(), mask, np.array(["solo"]))
    torch.testing.assert_close(adv, theirs)  # verl's R / (1 + eps)


def test_gigpo_through_verl_equals_turngyms_direct_call():
    # verl-agent's layout: one row per step; 2 trajectories of task "t" over 2 turns, rows interleaved.
    traj = np.array(["x", "y", "x", "y", "z", "z"], dtype=object)
    group = np.array(["t", "t", "t", "t", "u", "u"], dtype=object)
    state = np.array(["s0", "s0", "s1", "s2", "q0", "q1"], dtype=object)
    step_reward = np.array([0.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    rewards = torch.zeros(6, 3)
    rewards[:, -1] = torch.tensor(step_reward, dtype=torch.float32)
    mask = torch.ones(6, 3)
    mask[1, 2] = 0
    adv, returns = core_algos.get_adv_estimator_fn("turngym_gigpo")(
        token_level_rewards=rewards, response_mask=mask, index=group, config=None, traj_index=traj, state_key=state
    )
    step = np.array([0, 0, 1, 1, 0, 1])  # turns in batch order within each trajectory
    direct = compute_advantages(
        "gigpo", StepBatch(group_id=group, traj_id=traj, step=step, reward=step_reward, state_key=state)
    )
    expected = torch.as_tensor(direct, dtype=torch.float32)[:, None] * mask
    torch.testing.assert_close(adv, expected)
    assert torch.equal(returns, adv)
    assert direct[0] != 0  # the shared first state s0 carries a step-level signal

    with_steps, _ = core_algos.get_adv_estimator_fn("turngym_gigpo")(
        token_level_rewards=rewards,
        response_mask=mask,
        index=group,
        traj_index=traj,
        step_index=step,
        state_key=state,
        config={"turngym": {"omega": 0.0}},
    )
    episode_only = compute_advantages(
        "gigpo", StepBatch(group_id=group, traj_id=traj, step=step, reward=step_reward, state_key=state), omega=0.0
    )
    torch.testing.assert_close(with_steps, torch.as_tensor(episode_only, dtype=torch.float32)[:, None] * mask)


def test_bad_inputs_name_what_is_missing():
    rewards, mask, _ = _batch()
    fn = core_algos.get_adv_estimator_fn("turngym_gigpo")
    with pytest.raises(ValueError, match="needs index"):
        fn(token_level_rewards=rewards, response_mask=mask)
    with pytest.raises(ValueError, match="state_key"):
        fn(token_level_rewards=rewards, response_mask=mask, index=np.arange(8) // 4, traj_index=np.arange(8))
    with pytest.raises(TypeError, match="anchor_obs"):
        fn(token_level_rewards=rewards, response_mask=mask, index=np.arange(8) // 4, anchor_obs=np.arange(8))
    with pytest.raises(ValueError, match="one entry per row"):
        fn(token_level_rewards=rewards, response_mask=mask, index=np.arange(3))
    with pytest.raises(TypeError, match="did you mean 'omega'"):
        tg_verl.make_adv_estimator("gigpo", omgea=1.0)


def test_compute_advantage_on_a_data_proto_passes_verl_agents_step_keys():
    from verl import DataProto

    traj = np.array(["x", "y", "x", "y"], dtype=object)
    group = np.array(["t", "t", "t", "t"], dtype=object)
    anchor_obs = np.array(["start", "start", "left", "right"], dtype=object)
    step_reward = np.array([0.0, 0.0, 1.0, 0.0])
    rewards = torch.zeros(4, 2)
    rewards[:, -1] = torch.tensor(step_reward, dtype=torch.float32)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": torch.ones(4, 2)},
        non_tensors={"uid": group, "traj_uid": traj, "anchor_obs": anchor_obs},
    )
    out = tg_verl.compute_advantage(data, "turngym_gigpo", anchor="observation")
    direct = compute_advantages(
        "gigpo",
        StepBatch(group_id=group, traj_id=traj, step=[0, 0, 1, 1], reward=step_reward, observation=anchor_obs),
        anchor="observation",
    )
    assert out is data
    torch.testing.assert_close(
        data.batch["advantages"], torch.as_tensor(direct, dtype=torch.float32)[:, None].expand(4, 2)
    )
    assert torch.equal(data.batch["returns"], data.batch["advantages"])

    no_groups = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": torch.ones(4, 2)})
    with pytest.raises(ValueError, match=r"non_tensor_batch\['uid'\]"):
        tg_verl.compute_advantage(no_groups, "grpo")
