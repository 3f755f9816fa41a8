"""Any turngym text env as a SkyRL-gym env (``skyrl_gym.envs.base_text_env.BaseTextEnv``).

Importing this module registers :class:`TurngymTextEnv` in SkyRL-gym's registry as ``"turngym"``, so a
SkyRL run names it as its env class (``environment.env_class=turngym``) and puts the turngym env id in
each dataset row's ``extras``::

    import skyrl_gym
    import turngym.integrations.skyrl  # registers "turngym"

    env = skyrl_gym.make("turngym", env_config={}, extras={"env_id": "turngym/Game24-v0", "task_id": "test/0"})
    messages, metadata = env.init([{"role": "system", "content": "Solve the puzzle."}])
    out = env.step("4 * 6 = 24")  # {"observations": [...], "reward": ..., "done": ..., "metadata": {...}}

Where things come from (``extras``, one dataset row, wins over ``env_config``, the run's env section):

* ``env_id`` (required): a single-agent turngym env id, made with ``gymnasium.make`` (its
  ``TimeLimit`` too: its ``max_episode_steps`` is the wrapper's ``max_turns``).
* ``env_kwargs``: keyword arguments of ``gymnasium.make`` (e.g. ``{"split": "test"}``).
* ``task_id``, ``split``, ``task``: the env's reset options (the task to play); ``seed``: reset's seed.

Mapping onto SkyRL's interface:

* ``init(prompt)``: resets the env; returns ``prompt`` (the row's chat messages, may be empty) followed
  by ``{"role": "user", "content": first observation}``, and the reset ``info`` as metadata.
* ``step(action)``: one env step on the model's text; ``observations`` is
  ``[{"role": "user", "content": observation}]``, or ``[]`` once the episode is done (SkyRL's own envs
  add no message then; the last observation is in ``metadata["observation"]``); ``reward`` is the
  env's reward for the step; ``done`` is ``terminated or truncated``; ``metadata`` is the env's
  ``info`` (task_id, won, action_valid, state_key, ...) plus ``terminated``, ``truncated`` and ``observation``.
* ``get_metrics()``: ``{"won": 0/1, "turns": n, "return": sum of rewards}`` of the episode.

The turngym env is ``self.env`` (``self.env.unwrapped.oracle_action()`` gives an expert move).
Depends on gymnasium, skyrl-gym and turngym.envs.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

import turngym.envs  # noqa: F401  (registers the turngym/... ids with gymnasium)
from turngym.errors import TaskError, require

_skyrl_text = require("skyrl_gym.envs.base_text_env", "skyrl", "turngym's SkyRL-gym env")
BaseTextEnv = _skyrl_text.BaseTextEnv
BaseTextEnvStepOutput = _skyrl_text.BaseTextEnvStepOutput

#: The id under which importing this module registers :class:`TurngymTextEnv` with SkyRL-gym.
SKYRL_ENV_ID = "turngym"
_RESET_OPTIONS = ("task_id", "split", "task")


def _setting(name: str, extras: dict[str, Any], env_config: dict[str, Any], default: Any = None) -> Any:
    return extras[name] if name in extras else env_config.get(name, default)


class TurngymTextEnv(BaseTextEnv):
    """A turngym Gymnasium text env behind SkyRL-gym's ``BaseTextEnv`` interface (see the module doc).

    Args:
        env_config: the run's env settings (a mapping; OmegaConf's DictConfig works); the keys below.
        extras: the dataset row's settings; they override ``env_config``. Keys: ``env_id`` (required),
            ``env_kwargs``, ``task_id``, ``split``, ``task``, ``seed``; SkyRL's own keys (``reward_spec``,
            ...) are ignored.
    """

    def __init__(self, env_config: Any = None, extras: dict[str, Any] | None = None) -> None:
        super().__init__()
        env_config = {str(k): env_config[k] for k in env_config} if env_config else {}
        extras = dict(extras or {})
        env_id = _setting("env_id", extras, env_config)
        if not env_id:
            raise TaskError(
                "turngym's SkyRL env needs env_id (a turngym env id such as 'turngym/Game24-v0') "
                "in the dataset row's extras or in env_config"
            )
        env_kwargs = dict(_setting("env_kwargs", extras, env_config, None) or {})
        self.env_id = str(env_id)
        self.env = gym.make(self.env_id, **env_kwargs)
        self.seed = _setting("seed", extras, env_config)
        self.reset_options = {
            k: _setting(k, extras, env_config) for k in _RESET_OPTIONS if _setting(k, extras, env_config) is not None
        }
        spec = self.env.spec
        self.max_turns = int(spec.max_episode_steps) if spec and spec.max_episode_steps else 0
        self.episode_return = 0.0
        self.won = False

    def init(self, prompt: list[dict[str, str]] | None = None) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """Reset the env; return ``prompt`` + the first observation as a user message, and the reset info."""
        observation, info = self.env.reset(seed=self.seed, options=self.reset_options or None)
        self.turns, self.episode_return, self.won = 0, 0.0, bool(info.get("won", False))
        return [*(prompt or []), {"role": "user", "content": observation}], dict(info)

    def step(self, action: str) -> Any:
        """One env step on the model's text (see the module doc for the output)."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.turns += 1
        self.episode_return += float(reward)
        self.won = bool(info.get("won", False))
        done = bool(terminated or truncated)
        metadata = {**info, "terminated": bool(terminated), "truncated": bool(truncated), "observation": observation}
        messages = [] if done else [{"role": "user", "content": observation}]
        return BaseTextEnvStepOutput(observations=messages, reward=float(reward), done=done, metadata=metadata)

    def get_metrics(self) -> dict[str, Any]:
        return {"won": float(self.won), "turns": self.turns, "return": self.episode_return}

    def close(self) -> None:
        self.env.close()


def register(env_id: str = SKYRL_ENV_ID) -> str:
    """Register :class:`TurngymTextEnv` with SkyRL-gym under ``env_id`` (again: a no-op); returns the id."""
    skyrl_gym = require("skyrl_gym", "skyrl", "turngym's SkyRL-gym env")
    if env_id not in skyrl_gym.registry:
        skyrl_gym.register(id=env_id, entry_point=f"{__name__}:TurngymTextEnv")
    return env_id


register()
