"""The single-agent text environment contract, as a small base class.

Every turngym Gymnasium env derives from :class:`TextEnv`, which owns what is
the same everywhere: text spaces, task resolution from ``reset`` options
(seeded sampling, ``task_id``, a full task dict), the standard ``info`` keys,
observation sanitizing, the opt-in invalid-action penalty and rendering. A
subclass supplies the game: its tasks, its state, its transition.

Contract a subclass implements (the checker in :mod:`turngym.envs.check`
verifies it):

* ``splits() -> dict[str, int]``: split name -> number of tasks.
* ``load_task(split, index) -> dict``: the task at that index (deterministic).
* ``validate_task(task) -> dict``: check and normalize a user-given task dict;
  raise :class:`~turngym.errors.TaskError` naming the bad field.
* ``_start(task) -> str``: set the state from the task; return the first
  observation (the instruction is shown by the base class).
* ``_apply(action) -> Transition``: one step. An unparseable or illegal
  action returns ``Transition(valid=False, ...)`` and leaves the state
  unchanged; it never raises.
* ``instruction``, ``won``, ``state_key()``, ``_get_state()``/``_set_state()``,
  ``oracle_action()``, and where known ``admissible_actions()``,
  ``progress()``, ``illegal_actions()``.

What LLM agents need to know of an env lives with it, as plain JSON in the
env's own package folder (found from the class, so an env outside turngym
works the same): ``exemplars.json`` (solved tasks for few-shot prompts) and
``tools.json`` (its actions as tool-calling schemas); :meth:`TextEnv.exemplars`
and :meth:`TextEnv.tool_specs` read them, and describe their format.

This module depends on nothing of ours but :mod:`turngym.errors`.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym

from turngym.envs.spaces import MAX_ACTION_LENGTH, MAX_OBSERVATION_LENGTH, text_space, to_charset
from turngym.errors import TaskError, TurngymError

#: Keys every env puts in ``info`` after ``reset`` and ``step``.
REQUIRED_INFO_KEYS = ("task_id", "instruction", "action_valid", "won", "state_key")
#: Keys an env fills where it knows them.
OPTIONAL_INFO_KEYS = ("admissible_actions", "progress")
#: Files in an env's package folder that tell LLM agents about the env (plain JSON; see TextEnv.exemplars/tool_specs).
EXEMPLARS_FILE = "exemplars.json"
TOOLS_FILE = "tools.json"


@dataclass(frozen=True)
class Transition:
    """What a subclass's ``_apply`` returns for one action."""

    observation: str
    valid: bool
    reward: float = 0.0
    terminated: bool = False


def stable_digest(obj: Any) -> str:
    """A short, process-independent digest of a JSON-able value.

    ``hash()`` of a str changes between Python processes (PYTHONHASHSEED);
    ``state_key`` must not, so keys are sha1 digests of canonical JSON.
    """
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def parse_task_id(task_id: str) -> tuple[str, int]:
    """Split ``"test/17"`` into ``("test", 17)``; raise ``TaskError`` if malformed."""
    if not isinstance(task_id, str) or "/" not in task_id:
        raise TaskError(f"task_id {task_id!r} is malformed: expected '<split>/<index>', e.g. 'test/17'")
    split, _, index = task_id.rpartition("/")
    try:
        return split, int(index)
    except ValueError:
        raise TaskError(f"task_id {task_id!r} is malformed: the part after '/' must be an integer index") from None


def env_data_file(cls: type, name: str) -> Any:
    """The JSON file ``name`` from the folder of the module that defines ``cls``, or of its nearest base
    class that has one (a variant subclass defined elsewhere shares its parent's data); None if none has it."""
    for klass in cls.__mro__:
        if klass is TextEnv or not issubclass(klass, TextEnv):
            continue
        source = getattr(sys.modules.get(klass.__module__), "__file__", None)
        path = Path(source).parent / name if source else None
        if path is not None and path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise TurngymError(f"{path} (data of {klass.__name__}) is not valid JSON: {exc}") from None
    return None


class TextEnv(gym.Env[str, str]):
    """Base class of turngym's single-agent text environments.

    Args:
        split: the split ``reset()`` samples tasks from when no task is given.
        invalid_action_penalty: reward added on an invalid action (0 = off).
        render_mode: ``None``, ``"ansi"`` (``render()`` returns the text) or
            ``"human"`` (``render()`` prints it).
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}
    #: The split sampled by default.
    default_split = "train"
    max_observation_length = MAX_OBSERVATION_LENGTH
    max_action_length = MAX_ACTION_LENGTH

    def __init__(self, split: str | None = None, invalid_action_penalty: float = 0.0, render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode {render_mode!r} is not supported; use one of {self.metadata['render_modes']}")
        self.split = split or self.default_split
        if self.split not in self.splits():
            raise TaskError(f"unknown split {self.split!r} for {type(self).__name__}; known splits: {sorted(self.splits())}")
        self.invalid_action_penalty = float(invalid_action_penalty)
        self.render_mode = render_mode
        self.observation_space = text_space(self.max_observation_length)
        self.action_space = text_space(self.max_action_length)
        self.task: dict[str, Any] | None = None
        self.task_id: str | None = None
        self._last_observation = ""
        self._done = False

    # ---- subclass API -------------------------------------------------------------------
    def splits(self) -> dict[str, int]:
        raise NotImplementedError

    def load_task(self, split: str, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        return dict(task)

    def _start(self, task: dict[str, Any]) -> str:
        raise NotImplementedError

    def _apply(self, action: str) -> Transition:
        raise NotImplementedError

    @property
    def instruction(self) -> str:
        raise NotImplementedError

    @property
    def won(self) -> bool:
        raise NotImplementedError

    def state_key(self) -> str:
        raise NotImplementedError

    def _get_state(self) -> Any:
        """A snapshot of the game state (picklable, comparable with ==).

        Two snapshots of one task are equal iff the states are equal;
        ``state_key`` digests the same content. The step counter owned by
        ``TimeLimit`` is not part of the state. The base class adds the task
        and the episode-over flag (see :meth:`get_state`).
        """
        raise NotImplementedError

    def _set_state(self, state: Any) -> None:
        """Restore a snapshot from :meth:`_get_state`."""
        raise NotImplementedError

    def oracle_action(self) -> str:
        """An expert's action from the current state (optimal where computable)."""
        raise NotImplementedError

    def admissible_actions(self) -> list[str] | None:
        return None

    def progress(self) -> float | None:
        return None

    def illegal_actions(self) -> list[str]:
        """Valid-looking but illegal moves from the current state (for the checker)."""
        return []

    # ---- what LLM agents know of the env: plain data in its folder ---------------------------
    @classmethod
    def exemplars(cls) -> list[dict[str, Any]]:
        """Solved tasks for few-shot prompts: the env folder's ``exemplars.json`` ([] without one).

        A list of ``{"task": {...}, "steps": [{"thought": "...", "action": "..."}, ...]}``: ``task`` is a
        task dict for ``reset(options={"task": ...})`` (never a test task: few-shot prompts must not leak
        test answers), the steps an episode that wins it. Observations are not stored: agents replay the
        actions in the env, so an exemplar always shows the env's current wording.
        """
        return env_data_file(cls, EXEMPLARS_FILE) or []

    @classmethod
    def tool_specs(cls) -> list[dict[str, Any]]:
        """The env's actions as tools for tool-calling agents: the env folder's ``tools.json`` ([] without one).

        A list of ``{"name", "description", "parameters", "action", ...}``: ``parameters`` maps each
        argument to its JSON schema (all required); ``action`` is the action text, a ``str.format``
        template over the arguments. Optional: ``clean`` (argument -> steps applied in order to the
        value as text: ``"strip"``, ``"lower"`` or ``[regex, replacement]``) and ``action_pattern`` (a
        regex whose named groups read an action text back into arguments; the first tool whose pattern
        matches an exemplar's action shows that action as its call). An env without tools gets the
        agent's generic ``act(action)`` tool.
        """
        return env_data_file(cls, TOOLS_FILE) or []

    # ---- snapshots (tree search, checks) -----------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """The full state: task, whether the episode is over, and the game state.

        Restoring it with :meth:`set_state` (in this or a fresh instance of
        the same env) continues the episode exactly; used by tree search
        (step-level DPO), the checker and tests.
        """
        if self.task is None:
            raise TurngymError(f"{type(self).__name__}.get_state() called before reset()")
        return {"task": self.task, "done": self._done, "game": self._get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore a snapshot taken by :meth:`get_state`."""
        if not isinstance(state, dict) or set(state) != {"task", "done", "game"}:
            raise TypeError("set_state() needs a snapshot from get_state(): a dict with keys 'task', 'done', 'game'")
        self.task, self.task_id = state["task"], state["task"]["task_id"]
        self._done = state["done"]
        self._set_state(state["game"])

    # ---- tasks --------------------------------------------------------------------------
    def task_ids(self, split: str | None = None) -> list[str]:
        """All task ids of a split, in order."""
        split = split or self.split
        n = self._split_size(split)
        return [f"{split}/{i}" for i in range(n)]

    def get_task(self, task_id: str) -> dict[str, Any]:
        split, index = parse_task_id(task_id)
        n = self._split_size(split)
        if not 0 <= index < n:
            raise TaskError(f"task_id {task_id!r} is out of range: split {split!r} has tasks 0..{n - 1}")
        task = dict(self.load_task(split, index))
        task["task_id"] = task_id
        return task

    def _split_size(self, split: str) -> int:
        sizes = self.splits()
        if split not in sizes:
            raise TaskError(f"unknown split {split!r} for {type(self).__name__}; known splits: {sorted(sizes)}")
        return sizes[split]

    def _resolve_task(self, options: dict[str, Any] | None) -> dict[str, Any]:
        options = dict(options or {})
        unknown = set(options) - {"task", "task_id", "split"}
        if unknown:
            raise TaskError(f"unknown reset option(s) {sorted(unknown)}; known: 'task', 'task_id', 'split'")
        if "task" in options:
            given = options["task"]
            if not isinstance(given, dict):
                raise TaskError(f"reset option 'task' must be a dict, got {type(given).__name__}")
            task = self.validate_task(given)
            task.setdefault("task_id", given.get("task_id") or f"custom/{stable_digest(task)}")
            return task
        if "task_id" in options:
            return self.get_task(options["task_id"])
        split = options.get("split", self.split)
        n = self._split_size(split)
        return self.get_task(f"{split}/{int(self.np_random.integers(n))}")

    # ---- gymnasium API --------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        task = self._resolve_task(options)
        self.task, self.task_id = task, task["task_id"]
        self._done = False
        first = self._start(task)
        obs = self._finish_observation(f"{self.instruction}\n\n{first}" if first else self.instruction)
        return obs, self._info(action_valid=True)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self.task is None:
            raise TurngymError(f"{type(self).__name__}.step() called before reset()")
        if self._done:
            raise TurngymError(f"{type(self).__name__}.step() called after the episode ended; call reset() first")
        if not isinstance(action, str):
            # Engines hand us text; bytes or None are a caller bug, not an agent move.
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        result = self._apply(action)
        reward = float(result.reward)
        if not result.valid:
            reward += self.invalid_action_penalty
        self._done = bool(result.terminated)
        obs = self._finish_observation(result.observation)
        return obs, reward, self._done, False, self._info(action_valid=result.valid)

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return self._last_observation
        if self.render_mode == "human":
            print(self._last_observation)
        return None

    # ---- helpers --------------------------------------------------------------------------
    def _finish_observation(self, text: str) -> str:
        self._last_observation = to_charset(text, self.max_observation_length)
        return self._last_observation

    def _info(self, action_valid: bool) -> dict[str, Any]:
        info: dict[str, Any] = {
            "task_id": self.task_id,
            "instruction": self.instruction,
            "action_valid": bool(action_valid),
            "won": bool(self.won),
            "state_key": self.state_key(),
        }
        admissible = self.admissible_actions()
        if admissible is not None:
            info["admissible_actions"] = list(admissible)
        progress = self.progress()
        if progress is not None:
            info["progress"] = float(progress)
        return info
