"""Few-shot exemplars, replayed in their env so every agent format can render them.

The exemplars live with their env, as data: ``exemplars.json`` in the env's
folder (format: :meth:`turngym.envs.core.TextEnv.exemplars`), each a task
dict for ``reset(options={"task": ...})`` and the (thought, action) pairs of
a solution. :func:`exemplars_for` finds them through the env id and replays
the actions in the real env for the observations, so the exemplars always
show the env's exact current wording and can never teach a move the env
would reject (it raises if one is invalid or does not win).

An env without exemplars gets none (the agent's format instructions alone).
This module depends on :mod:`turngym.envs` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from turngym.envs import env_exemplars, make


@dataclass(frozen=True)
class ExemplarStep:
    thought: str
    action: str
    observation: str = ""


@dataclass(frozen=True)
class Exemplar:
    """A solved episode: the problem as the env states it (without the instruction) and its steps."""

    problem: str
    steps: tuple[ExemplarStep, ...]


@cache
def exemplars_for(env_id: str | None) -> tuple[Exemplar, ...]:
    """The exemplars of ``env_id``, from its folder, replayed in the env (empty if it has none)."""
    sources = env_exemplars(env_id)
    if not sources:
        return ()
    out = []
    env = make(env_id)
    try:
        for source in sources:
            task = source["task"]
            obs, info = env.reset(options={"task": task})
            problem = obs
            instruction = info.get("instruction", "")
            if instruction and problem.startswith(instruction):
                problem = problem[len(instruction):].strip()
            steps = []
            for step in source["steps"]:
                thought, action = step["thought"], step["action"]
                obs, _, terminated, truncated, info = env.step(action)
                if not info.get("action_valid", True):
                    raise AssertionError(f"exemplar action {action!r} of {env_id} is invalid: {obs}")
                steps.append(ExemplarStep(thought, action, obs))
                if terminated or truncated:
                    break
            if not info.get("won"):
                raise AssertionError(f"an exemplar of {env_id} does not win its task {task}")
            out.append(Exemplar(problem, tuple(steps)))
    finally:
        env.close()
    return tuple(out)
