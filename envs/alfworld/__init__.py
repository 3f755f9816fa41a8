"""ALFWorld: text household tasks on a native engine faithful to the real game.

``turngym/ALFWorld-v0`` is :class:`~turngym.envs.alfworld.env.ALFWorldEnv`.
The pieces are usable on their own: :mod:`.game` plays a PDDL problem with
ALFWorld's commands and text, :mod:`.planner` finds shortest plans,
:mod:`.tasks` loads the shipped games and users' ``game.tw-pddl`` files and
generates new ones, :mod:`.textworld_engine` runs the real ALFWorld stack
(``turngym[alfworld]``, imported lazily), :mod:`.fidelity` compares the two.
"""

from __future__ import annotations

from turngym.envs.alfworld.env import ALFWorldEnv, ALFWorldState
from turngym.envs.alfworld.game import Game, Scene
from turngym.envs.alfworld.planner import Planner
from turngym.envs.alfworld.tasks import (
    TASK_TYPES,
    generate_task,
    load_alfworld_dir,
    load_game_file,
    load_split,
    validate_task,
)

__all__ = [
    "TASK_TYPES", "ALFWorldEnv", "ALFWorldState", "Game", "Planner", "Scene", "generate_task", "load_alfworld_dir",
    "load_game_file", "load_split", "validate_task",
]
