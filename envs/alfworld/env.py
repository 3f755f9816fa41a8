"""ALFWorld: text household tasks (Shridhar et al., 2021) as a turngym env, on a native engine.

This module depends on nothing else of ours but :mod:`turngym.envs` and :mod:`turngym.errors`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from turngym.envs.alfworld.game import Game, GameState, Scene
from turngym.envs.alfworld.pddl import parse_problem
from turngym.envs.alfworld.planner import Planner
from turngym.envs.alfworld.tasks import TASK_TYPES, generate_task, load_split, validate_task
from turngym.envs.core import TextEnv, Transition, stable_digest
from turngym.errors import TaskError

INSTRUCTION = """\
ALFWorld. You are in a house with receptacles (cabinets, countertops, a fridge, ...) holding objects. \
Each turn, type one command, exactly as the game lists them:
- go to <receptacle>, open <receptacle>, close <receptacle>, examine <receptacle or held object>
- take <object> from <receptacle> (one object in hand at a time), move <object> to <receptacle>
- heat/cool/clean <object> with <receptacle> (microwave, fridge, sink basin), use <lamp>
- look, inventory, help
Objects and receptacles are named with a number, e.g. "mug 2" or "countertop 1". \
A command the game does not accept gives "Nothing happens."."""

ENGINES = ("native", "textworld")

_SCENES: OrderedDict[str, tuple[Scene, Planner]] = OrderedDict()
_SCENE_CACHE_SIZE = 512


def scene_for(problem_text: str) -> tuple[Scene, Planner]:
    """The parsed scene and its planner for a PDDL problem (LRU-cached: resets of a seen task are cheap)."""
    key = stable_digest(problem_text)
    hit = _SCENES.get(key)
    if hit is not None:
        _SCENES.move_to_end(key)
        return hit
    scene = Scene(parse_problem(problem_text))
    hit = (scene, Planner(scene))
    _SCENES[key] = hit
    if len(_SCENES) > _SCENE_CACHE_SIZE:
        _SCENES.popitem(last=False)
    return hit


@dataclass(frozen=True)
class ALFWorldState:
    """The game part of an ALFWorld snapshot: the native game's facts, and (textworld engine only)
    the commands played since reset, which restoring replays in the real engine."""

    facts: GameState
    history: tuple[str, ...] = ()


class ALFWorldEnv(TextEnv):
    """ALFWorld's text household tasks: find, clean/heat/cool and place objects, look at them under a lamp.

    The TextWorld side of ALFWorld (Shridhar et al., ICLR 2021): each game is a
    PDDL problem of the ``alfred`` domain in one of 120 AI2-THOR rooms, played
    with text commands. Six task types: pick_and_place_simple,
    look_at_obj_in_light, pick_clean_then_place_in_recep,
    pick_heat_then_place_in_recep, pick_cool_then_place_in_recep,
    pick_two_obj_and_place. The default engine is turngym's native Python
    engine, which reproduces the real game's observations, admissible commands
    and wins (checked step by step against it); ``engine="textworld"`` plays
    the real ALFWorld stack (``pip install 'turngym[alfworld]'``).

    ## Observation
    ``reset`` returns the instruction (the command forms) and the game's own
    intro, e.g.::

        -= Welcome to TextWorld, ALFRED! =-

        You are in the middle of a room. Looking quickly around you, you see a cabinet 2,
        a cabinet 1, a countertop 1, a fridge 1, a microwave 1, and a sinkbasin 1.

        Your task is to: put a clean mug in coffeemachine.

    Each ``step`` returns the game's feedback ("You arrive at fridge 1. The
    fridge 1 is closed.", "You pick up the mug 2 from the countertop 1.", ...).

    ## Action
    One command per step, any ``str``; the game accepts exactly the commands of
    ``info["admissible_actions"]`` (leading/trailing spaces ignored). Anything
    else gives "Nothing happens.", leaves the state unchanged and sets
    ``info["action_valid"]`` to False. Commands that change nothing (look,
    inventory, examine, help) are valid.

    ## Rewards
    1.0 on the step that completes the task; 0.0 otherwise (plus
    ``invalid_action_penalty`` on an invalid action).

    ## Episode end
    Terminated when the task is done. Truncated by the registered TimeLimit
    (``max_episode_steps=50``, ALFWorld's evaluation budget).

    ## Info
    ``task_id``, ``instruction``, ``action_valid``, ``won``, ``state_key``
    (digest of the game's dynamic facts), ``admissible_actions`` (the game's
    sorted list), ``progress`` = clip(1 - d(s)/d(s0), 0, 1) with d the
    shortest-plan length to the goal, and ``task_type``.

    ## Oracle and analysis
    ``oracle_action()`` is the first command of a shortest plan
    (:class:`~turngym.envs.alfworld.planner.Planner`; its plans match the
    length of ALFWorld's expert walkthroughs on every shipped game),
    ``distance_to_goal()`` that plan's length, ``illegal_actions()`` a few
    well-formed commands the game rejects here, and ``get_state()`` /
    ``set_state()`` snapshot ``{"task", "done", "game"}`` with ``game`` an
    :class:`ALFWorldState`.

    ## Tasks
    ``"valid_seen"`` (default): ALFWorld's 140 seen-validation games.
    ``"train_sample"``: 200 of its training games. ``"generated"``:
    ``generated_size`` new solvable games from the seeded generator
    (:func:`~turngym.envs.alfworld.tasks.generate_task`, seeds
    ``generator_seed * 1_000_003 + index``). ``reset(options={"task": record})``
    plays any record in the shipped JSON Lines format (see
    :mod:`turngym.envs.alfworld.tasks`; users' ``game.tw-pddl`` files convert
    with ``load_game_file`` / ``load_alfworld_dir``).

    Args:
        split: the split ``reset()`` samples from (default ``"valid_seen"``).
        engine: ``"native"`` (default) or ``"textworld"`` (the real ALFWorld stack;
            state_key, progress and the oracle still come from the native engine
            run alongside, and ``set_state`` replays the commands).
        task_types: restrict sampled splits to these task types (default: all six).
        generated_size: number of tasks in the ``"generated"`` split (default 1000).
        generator_seed: seed of the ``"generated"`` split (default 0).
        invalid_action_penalty: reward added on an invalid action (default 0.0).
        render_mode: ``None``, ``"ansi"`` or ``"human"``.

    ## Version History
    * v0: initial release.
    """

    default_split = "valid_seen"

    def __init__(self, split: str | None = None, engine: str = "native", task_types: tuple[str, ...] | None = None,
                 generated_size: int = 1000, generator_seed: int = 0, invalid_action_penalty: float = 0.0,
                 render_mode: str | None = None):
        if engine not in ENGINES:
            raise TaskError(f"unknown ALFWorld engine {engine!r}; use one of {ENGINES}")
        if task_types is not None:
            unknown = sorted(set(task_types) - set(TASK_TYPES))
            if unknown:
                raise TaskError(f"unknown ALFWorld task_types {unknown}; known: {', '.join(TASK_TYPES)}")
        self.engine = engine
        self.task_types = tuple(task_types) if task_types else None
        self.generated_size = int(generated_size)
        self.generator_seed = int(generator_seed)
        self._split_index: dict[str, list[int]] = {}
        super().__init__(split=split, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)
        if engine == "textworld":
            from turngym.envs.alfworld.textworld_engine import _import_stack

            _import_stack()  # fail at construction, naming the extra, not at the first reset
        self._game: Game | None = None
        self._planner: Planner | None = None
        self._real = None
        self._history: list[str] = []
        self._start_distance = 0
        self._key_cache: tuple[GameState, str] | None = None

    # ---- tasks ----------------------------------------------------------------------------------
    def _indices(self, split: str) -> list[int]:
        if split not in self._split_index:
            records = load_split(split)
            self._split_index[split] = [i for i, r in enumerate(records)
                                        if self.task_types is None or r.get("task_type") in self.task_types]
        return self._split_index[split]

    def splits(self) -> dict[str, int]:
        sizes = {"generated": self.generated_size}
        for name in ("valid_seen", "train_sample"):
            sizes[name] = len(self._indices(name)) if self.task_types else len(load_split(name))
        return sizes

    def load_task(self, split: str, index: int) -> dict[str, Any]:
        if split == "generated":
            seed = self.generator_seed * 1_000_003 + index
            if self.task_types:
                return generate_task(seed, task_type=self.task_types[index % len(self.task_types)])
            return generate_task(seed)
        if split in ("valid_seen", "train_sample"):
            return dict(load_split(split)[self._indices(split)[index]])
        raise TaskError(f"unknown split {split!r} for ALFWorldEnv; known splits: {sorted(self.splits())}")

    def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        return validate_task(task)

    # ---- game -----------------------------------------------------------------------------------
    def _load(self, task: dict[str, Any]) -> None:
        scene, planner = scene_for(task["pddl_problem"])
        self._game = Game(scene, task["task_desc_templated"])
        self._planner = planner

    def _start(self, task: dict[str, Any]) -> str:
        self._load(task)
        self._start_distance = self._planner.distance(self._game) or 0
        self._history = []
        if self.engine == "textworld":
            self._open_real(task)
            return self._real.intro()
        return self._game.intro()

    def _open_real(self, task: dict[str, Any]) -> None:
        from turngym.envs.alfworld.textworld_engine import TextWorldGame

        if self._real is not None:
            self._real.close()
        self._real = TextWorldGame(task)

    def _apply(self, action: str) -> Transition:
        if self.engine == "textworld":
            text, valid = self._real.step(action)
            if valid:
                self._game.step(action)
                self._history.append(action.strip())
            done = self._real.won()
        else:
            text, valid = self._game.step(action)
            done = valid and self._game.won()
        return Transition(text, valid=valid, reward=1.0 if done else 0.0, terminated=done)

    @property
    def instruction(self) -> str:
        return INSTRUCTION

    @property
    def won(self) -> bool:
        if self._game is None:
            return False
        if self.engine == "textworld" and self._real is not None:
            return self._real.won()
        return self._game.won()

    # ---- state ----------------------------------------------------------------------------------
    def _get_state(self) -> ALFWorldState:
        return ALFWorldState(self._game.snapshot(), tuple(self._history) if self.engine == "textworld" else ())

    def _set_state(self, state: ALFWorldState) -> None:
        if not isinstance(state, ALFWorldState):
            raise TypeError(f"the game part of an ALFWorld snapshot must be an ALFWorldState, got {type(state).__name__}")
        self._load(self.task)
        self._start_distance = self._planner.distance(self._game) or 0  # from the task's start
        self._game.restore(state.facts)
        if self.engine == "textworld":
            self._open_real(self.task)
            for command in state.history:
                self._real.step(command)
            self._history = list(state.history)

    def state_key(self) -> str:
        facts = self._game.snapshot()
        if self._key_cache is None or self._key_cache[0] is not facts:
            self._key_cache = (facts, stable_digest(repr(facts)))
        return self._key_cache[1]

    # ---- oracle and analysis --------------------------------------------------------------------
    def admissible_actions(self) -> list[str]:
        if self.engine == "textworld":
            return self._real.admissible_commands()
        return self._game.admissible_commands()

    def oracle_action(self) -> str:
        """The first command of a shortest plan ("look" once the task is done or if none exists)."""
        plan = self._planner.plan(self._game)
        return plan[0] if plan else "look"

    def distance_to_goal(self) -> int | None:
        """Length of a shortest plan from here (None if the goal cannot be reached)."""
        return self._planner.distance(self._game)

    def progress(self) -> float:
        if self.won:
            return 1.0
        d = self.distance_to_goal()
        if d is None or self._start_distance <= 0:
            return 0.0
        return min(1.0, max(0.0, 1.0 - d / self._start_distance))

    def illegal_actions(self) -> list[str]:
        """A few well-formed commands the game rejects here (walking to where you are, taking what is elsewhere)."""
        game = self._game
        admissible = set(game.admissible_commands())
        names = game.scene.names
        out = [f"go to {names[r]}" for r in game.scene.loc_receps.get(game.location, ())][:2]
        away = [r for r in game.scene.receptacles if game.location not in game.scene.recep_locs[r]]
        for r in away[:8]:
            for o in sorted(game.contents.get(r, ()))[:1]:
                out.append(f"take {names[o]} from {names[r]}")
        if away:
            out.append(f"open {names[away[0]]}")
        out.append("Go To " + names[away[0]] if away else "LOOK")
        return [c for c in out if c not in admissible][:6]

    def _info(self, action_valid: bool) -> dict[str, Any]:
        info = super()._info(action_valid)
        info["task_type"] = (self.task or {}).get("task_type")
        return info

    def close(self) -> None:
        if self._real is not None:
            self._real.close()
            self._real = None
        super().close()
