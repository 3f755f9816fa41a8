"""The real ALFWorld text engine as a backend: TextWorld's PddlEnv with ALFWorld's wrappers.

``ALFWorldEnv(engine="textworld")`` plays a task through exactly the stack
ALFWorld evaluates with: ``textworld.envs.PddlEnv`` (Fast Downward grounds
``alfred.pddl``) wrapped in ``alfworld``'s ``AlfredDemangler(shuffle=False)``
and ``AlfredInfos``, on the game file rebuilt from the task (the shipped
domain, the shipped grammar with the task sentence, the problem). It needs
``pip install 'turngym[alfworld]'`` (alfworld, textworld and the GPL
fast-downward-textworld build); both imports are lazy, so turngym itself
never loads them unless this engine is asked for.

This module depends on :mod:`turngym.envs.alfworld.tasks` and :mod:`turngym.errors`.
"""

from __future__ import annotations

from typing import Any

from turngym.envs.alfworld.tasks import domain_text, grammar_for
from turngym.errors import MissingDependencyError


def game_data(task: dict[str, Any]) -> dict[str, Any]:
    """The ``game.tw-pddl`` content of a task, as ALFWorld writes it."""
    return {"pddl_domain": domain_text(), "grammar": grammar_for(task["task_desc_templated"]),
            "pddl_problem": task["pddl_problem"], "solvable": True, "walkthrough": task.get("walkthrough")}


def _import_stack():
    # Note: importing alfworld creates the folder $ALFWORLD_DATA (default ~/.cache/alfworld).
    try:
        import textworld
        from textworld.envs.pddl import PddlEnv
    except ImportError as exc:
        raise MissingDependencyError("textworld", "alfworld", "ALFWorld's real engine (engine='textworld')") from exc
    try:
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos
    except ImportError as exc:
        raise MissingDependencyError("alfworld", "alfworld", "ALFWorld's real engine (engine='textworld')") from exc
    try:
        import fast_downward  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError("fast-downward-textworld", "alfworld",
                                     "ALFWorld's real engine (engine='textworld')") from exc
    return textworld, PddlEnv, AlfredDemangler, AlfredInfos


def textworld_available() -> bool:
    """Whether the real ALFWorld stack can be imported here."""
    try:
        _import_stack()
    except MissingDependencyError:
        return False
    return True


class TextWorldGame:
    """One task played by the real engine, with the native :class:`~turngym.envs.alfworld.game.Game`'s
    text interface: ``intro()``, ``step(command) -> (feedback, admissible)``, ``admissible_commands()``, ``won()``."""

    def __init__(self, task: dict[str, Any]):
        textworld, PddlEnv, AlfredDemangler, AlfredInfos = _import_stack()
        infos = textworld.EnvInfos(won=True, admissible_commands=True, extras=["gamefile"])
        self._env = AlfredInfos(AlfredDemangler(PddlEnv(infos), shuffle=False))
        self._env.load(game_data(task))
        self._state = self._env.reset()

    def intro(self) -> str:
        return self._state.feedback

    def admissible_commands(self) -> list[str]:
        return list(self._state["admissible_commands"])

    def won(self) -> bool:
        return bool(self._state["won"])

    def step(self, command: str) -> tuple[str, bool]:
        valid = command.strip() in self._state["admissible_commands"]
        self._state, _, _ = self._env.step(command)
        return self._state.feedback, valid

    def close(self) -> None:
        self._env.close()
