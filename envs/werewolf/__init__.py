"""Werewolf: a PettingZoo social-deduction game for language agents.

``env(**config)`` (AEC) and ``parallel_env(**config)`` need the ``werewolf``
extra (pettingzoo); the engine (:mod:`.game`), the rules (:mod:`.rules`) and
the bots (:mod:`.bots`) do not. See README.md in this folder.
"""

from __future__ import annotations

from typing import Any

from turngym.envs.werewolf.rules import PRESETS, Rules

ENV_ID = "turngym/Werewolf-v0"
_ALIASES = {"werewolf", "werewolf-v0", "turngym/werewolf-v0", "turngym:turngym/werewolf-v0"}


def is_werewolf_id(env_id: str) -> bool:
    """True for the names a user may type for this env: werewolf, Werewolf-v0, turngym/Werewolf-v0."""
    return isinstance(env_id, str) and env_id.strip().lower() in _ALIASES


def env(**config: Any):
    """The AEC env (see :class:`turngym.envs.werewolf.werewolf_env.WerewolfEnv`)."""
    from turngym.envs.werewolf.werewolf_env import env as make

    return make(**config)


def parallel_env(**config: Any):
    """The parallel env (see :class:`turngym.envs.werewolf.werewolf_env.WerewolfParallelEnv`)."""
    from turngym.envs.werewolf.werewolf_env import parallel_env as make

    return make(**config)


__all__ = ["ENV_ID", "PRESETS", "Rules", "env", "is_werewolf_id", "parallel_env"]
