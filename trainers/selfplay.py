"""Werewolf self-play for the RL trainer: rollouts and evaluation through the Werewolf runner.

Multi-agent envs (registry kind ``pettingzoo``, i.e. Werewolf) do not go
through the gym :class:`~turngym.agents.runner.EpisodeRunner`: their games are
played by :class:`~turngym.agents.werewolf_runner.WerewolfRunner`, which
returns the same :class:`~turngym.agents.runner.RunStats` as the gym runner,
so the trainer's iteration reads both alike.

``env.kwargs`` of a self-play run: ``lineup`` (training; default ``all=llm``:
every seat is the policy), ``eval_lineup`` (evaluation; default
``village=llm,wolves=rule``), ``preset`` (default ``lspo7``) and any rules
field. ``agent.options`` go to the runner's
:class:`~turngym.agents.werewolf_runner.WerewolfLLMPolicy`.

Depends on ``turngym.agents`` (the runners) and ``turngym.envs`` (the registry); not on the trainer.
"""

from __future__ import annotations

from typing import Any

from turngym.agents.runner import RunStats, derive_seed
from turngym.agents.types import Trajectory

#: the lineups when ``env.kwargs`` names none.
TRAIN_LINEUP = "all=llm"
EVAL_LINEUP = "village=llm,wolves=rule"


def is_multi_agent(env_id: str) -> bool:
    """Whether ``env_id`` is a registered multi-agent (PettingZoo) env, played through its own runner."""
    from turngym.envs import registry

    entry = registry().get(env_id)
    return entry is not None and entry.kind == "pettingzoo"


def _runner(config: Any, engine: Any, lineup_key: str, default_lineup: str, temperature: float, top_p: float):
    from turngym.agents.werewolf_runner import WerewolfLLMPolicy, WerewolfRunner

    kwargs = dict(config.env.kwargs)
    lineup = kwargs.pop(lineup_key, default_lineup)
    for key in ("lineup", "eval_lineup"):
        kwargs.pop(key, None)
    preset = kwargs.pop("preset", "lspo7")
    a = config.agent
    llm = WerewolfLLMPolicy(temperature=temperature, top_p=top_p, max_tokens=a.max_tokens, **a.options)
    runner = WerewolfRunner(engine, lineup=lineup, preset=preset, env_config=kwargs, llm=llm,
                            max_concurrent=config.rollout.max_concurrent)
    return runner, lineup


def selfplay_rollout(config: Any, engine: Any, iteration: int) -> tuple[list[Trajectory], RunStats]:
    """``tasks_per_iter x group_size`` games; the LLM seats' trajectories, grouped by role, and the run's stats.

    Each game is a different deal, so a group is one role across this iteration's games (the role's mean
    outcome is the baseline): ``group_id = "<iteration>|<role>"``.
    """
    a = config.agent
    runner, _ = _runner(config, engine, "lineup", TRAIN_LINEUP, a.temperature, a.top_p)
    n = config.rollout.tasks_per_iter * config.rollout.group_size
    result = runner.run([derive_seed(config.run.seed, iteration, k) for k in range(n)])
    trajs = [t for t in result.trajectories if t.steps]
    for t in trajs:
        t.group_id = f"{iteration}|{t.meta.get('role', '')}"
    return trajs, result.stats


def selfplay_evaluate(config: Any, engine: Any, games: int) -> tuple[str, list[Trajectory], int]:
    """Play ``games`` fixed deals at ``run.eval_temperature``; returns the lineup, the policy's seats'
    trajectories and the number of games played."""
    runner, lineup = _runner(config, engine, "eval_lineup", EVAL_LINEUP, config.run.eval_temperature, 1.0)
    result = runner.run([derive_seed(config.run.seed, 99991, k) for k in range(games)])
    seats = [t for t in result.trajectories if t.meta.get("policy") == "llm"]
    return lineup, seats, len(result.games)


__all__ = ["EVAL_LINEUP", "TRAIN_LINEUP", "is_multi_agent", "selfplay_evaluate", "selfplay_rollout"]
