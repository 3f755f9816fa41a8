"""turngym envs as SkyRL-gym envs, against the real skyrl-gym package (needs the `skyrl` extra)."""

from __future__ import annotations

import gymnasium as gym
import pytest

skyrl_gym = pytest.importorskip("skyrl_gym")

from turngym.errors import TaskError
from turngym.integrations.skyrl import SKYRL_ENV_ID, TurngymTextEnv, register


def _direct_oracle_episode(env_id: str, task_id: str) -> tuple[list[str], list[float], str]:
    env = gym.make(env_id)
    env.reset(options={"task_id": task_id})
    actions, rewards, done = [], [], False
    while not done:
        actions.append(env.unwrapped.oracle_action())
        observation, reward, terminated, truncated, _ = env.step(actions[-1])
        rewards.append(reward)
        done = terminated or truncated
    return actions, rewards, observation


@pytest.mark.parametrize("env_id", ["turngym/Game24-v0", "turngym/BlocksWorld-v0"])
def test_oracle_episode_through_skyrl_wins_with_the_envs_reward(env_id):
    assert register() == SKYRL_ENV_ID  # importing registered it; again is a no-op
    env = skyrl_gym.make(SKYRL_ENV_ID, env_config={}, extras={"env_id": env_id, "task_id": "test/3"})
    assert isinstance(env, skyrl_gym.envs.base_text_env.BaseTextEnv)
    assert env.max_turns == gym.spec(env_id).max_episode_steps

    system = {"role": "system", "content": "Play the game."}
    messages, metadata = env.init([system])
    assert messages[0] == system and messages[1]["role"] == "user"
    assert messages[1]["content"].startswith(metadata["instruction"])
    assert metadata["task_id"] == "test/3" and metadata["won"] is False

    actions, rewards, last_observation = _direct_oracle_episode(env_id, "test/3")
    outputs = [env.step(env.env.unwrapped.oracle_action()) for _ in actions]
    assert [out["reward"] for out in outputs] == rewards
    assert all(not out["done"] and out["observations"][0]["role"] == "user" for out in outputs[:-1])
    final = outputs[-1]
    assert final["done"] and final["observations"] == []
    assert final["metadata"]["won"] is True and final["metadata"]["terminated"] is True
    assert final["metadata"]["observation"] == last_observation
    assert sum(out["reward"] for out in outputs) > 0
    assert env.get_metrics() == {"won": 1.0, "turns": len(actions), "return": sum(rewards)}
    env.close()


def test_row_extras_override_env_config_and_pick_the_task():
    env = TurngymTextEnv(
        env_config={"env_id": "turngym/BlocksWorld-v0", "task_id": "train/0"},
        extras={"env_id": "turngym/Game24-v0", "task_id": "train/5", "reward_spec": {"ground_truth": None}},
    )
    _, metadata = env.init()
    assert env.env_id == "turngym/Game24-v0" and metadata["task_id"] == "train/5"


def test_an_invalid_move_is_an_observation_not_an_error():
    env = TurngymTextEnv(extras={"env_id": "turngym/Game24-v0", "task_id": "test/0"})
    env.init([])
    out = env.step("this is not arithmetic")
    assert not out["done"] and out["metadata"]["action_valid"] is False
    assert out["observations"][0]["content"]


def test_missing_env_id_names_the_fix():
    with pytest.raises(TaskError, match="needs env_id"):
        skyrl_gym.make(SKYRL_ENV_ID, env_config={}, extras={"task_id": "test/0"})
