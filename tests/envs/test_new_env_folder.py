"""A new env is one folder and one register line: the checker, the agents and the runner need nothing else.

The folder here is an out-of-tree plugin written to a temp dir (env.py, README, exemplars.json, tools.json),
so the test also proves the env-side lookups go through the env's own package, never through a list in
turngym. An env inside turngym adds its package and data files to pyproject.toml as well (the README's
"Adding an environment"); the last test checks that every in-repo env folder's data files ship.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import gymnasium as gym
import pytest

import turngym
from turngym.agents.engines import ScriptedEngine
from turngym.agents.exemplars import exemplars_for
from turngym.agents.preact import PReActAgent
from turngym.agents.react import ReActAgent
from turngym.agents.runner import run_episodes
from turngym.agents.tool_calling import ToolCallingAgent
from turngym.envs import env_class
from turngym.envs.check import check_env
from turngym.errors import TurngymError

ROOT = Path(turngym.__file__).resolve().parent

ENV_PY = '''"""Counter: reach the target number with 'add 1' / 'sub 1' (a plugin env for turngym's tests)."""

from turngym.envs.core import TextEnv, Transition, stable_digest


class CounterEnv(TextEnv):
    """Walk from a start number to a target on 0..9, one step a turn.

    Actions: ``add 1`` or ``sub 1``. Reward 1.0 on reaching the target (the episode ends).
    ``info`` fills the standard keys plus ``admissible_actions`` and ``progress``.
    """

    default_split = "test"

    def splits(self):
        return {"test": 10}

    def load_task(self, split, index):
        return {"start": index, "target": (index + 2) % 10}

    def validate_task(self, task):
        return {"start": int(task["start"]), "target": int(task["target"])}

    def _start(self, task):
        self.value, self.target = task["start"], task["target"]
        return self._describe()

    def _describe(self):
        return f"You are at {self.value}. The target is {self.target}."

    @property
    def instruction(self):
        return "Reach the target number. Actions: 'add 1' or 'sub 1'."

    @property
    def won(self):
        return self.value == self.target

    def _apply(self, action):
        move = action.strip().lower()
        if move == "add 1" and self.value < 9:
            self.value += 1
        elif move == "sub 1" and self.value > 0:
            self.value -= 1
        else:
            return Transition(f"Invalid action {action[:40]!r}. {self._describe()}", valid=False)
        return Transition(self._describe(), valid=True, reward=1.0 if self.won else 0.0, terminated=self.won)

    def state_key(self):
        return stable_digest([self.value, self.target])

    def _get_state(self):
        return (self.value, self.target)

    def _set_state(self, state):
        self.value, self.target = state

    def admissible_actions(self):
        return [a for a, ok in (("add 1", self.value < 9), ("sub 1", self.value > 0)) if ok]

    def progress(self):
        d0 = abs(self.task["start"] - self.target)
        return 1.0 if d0 == 0 else max(0.0, 1.0 - abs(self.value - self.target) / d0)

    def oracle_action(self):
        return "add 1" if self.value < self.target else "sub 1"

    def illegal_actions(self):
        return ["sub 1"] if self.value == 0 else (["add 1"] if self.value == 9 else ["add 2"])
'''

EXEMPLARS = [{"task": {"start": 5, "target": 3}, "steps": [
    {"thought": "3 is below 5, so I go down.", "action": "sub 1"},
    {"thought": "One more step down reaches 3.", "action": "sub 1"},
]}]

TOOLS = [{"name": "move", "description": "Move one step up or down.",
          "parameters": {"direction": {"type": "string", "enum": ["add", "sub"], "description": "add or sub"}},
          "clean": {"direction": ["strip", "lower"]},
          "action": "{direction} 1",
          "action_pattern": "^(?P<direction>add|sub) 1$"}]

CALL_ADD = '<tool_call>{"name": "move", "arguments": {"direction": " ADD "}}</tool_call>'


@pytest.fixture
def plugin(tmp_path, monkeypatch, request):
    """Writes the plugin's folder; yields (package name, folder); unregisters it afterwards."""
    package = f"counter_plugin_{request.node.name.replace('[', '_').replace(']', '_').replace('-', '_')}"
    folder = tmp_path / package
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    (folder / "env.py").write_text(ENV_PY)
    (folder / "README.md").write_text("# Counter\n\nReach the target with 'add 1' / 'sub 1'.\n")
    (folder / "exemplars.json").write_text(json.dumps(EXEMPLARS, indent=1))
    (folder / "tools.json").write_text(json.dumps(TOOLS, indent=1))
    monkeypatch.syspath_prepend(str(tmp_path))
    env_id = f"{package}/Counter-v0"
    yield package, folder, env_id
    from turngym import envs

    gym.registry.pop(env_id, None)
    envs._ENTRIES.pop(env_id, None)
    envs._ENTRY_POINTS.pop(env_id, None)
    exemplars_for.cache_clear()
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def test_a_plugin_env_is_its_folder_and_one_register_line(plugin):
    package, folder, env_id = plugin
    written = sorted(p.relative_to(folder.parent) for p in folder.parent.rglob("*") if p.is_file())

    turngym.register(env_id, entry_point=f"{package}.env:CounterEnv", max_episode_steps=20,
                     description="Reach the target number.")

    # the checker
    report = check_env(env_id)
    assert set(report.checks) >= {"spaces", "gymnasium", "info_keys", "determinism", "invalid_actions",
                                  "state_restore", "state_key", "oracle"}

    # the agents find its exemplars and tools in its folder, through its id
    assert env_class(env_id).exemplars() == EXEMPLARS and env_class(env_id).tool_specs() == TOOLS
    (shot,) = exemplars_for(env_id)  # replayed in the env: the observations are the env's own
    assert shot.problem == "You are at 5. The target is 3."
    assert [s.observation for s in shot.steps] == ["You are at 4. The target is 3.", "You are at 3. The target is 3."]
    for agent in (ReActAgent(env_id), PReActAgent(env_id)):
        assert "Example 1:" in agent.system and "3 is below 5, so I go down." in agent.system
    tool = ToolCallingAgent(env_id)
    tool.bind(ScriptedEngine(["x"]))
    assert [t.name for t in tool.toolset] == ["move"]
    assert '"name": "move"' in tool.system  # the schema, in the system message (the template ignores tools)
    assert '{"name": "move", "arguments": {"direction": "sub"}}' in tool.system  # the exemplar, as calls
    assert tool.parse_action(CALL_ADD) == ("add 1", True, "")

    # and the runner plays it: test/0 is 0 -> 2, two calls of move(add)
    result = run_episodes(env_id, ToolCallingAgent(env_id), ScriptedEngine([CALL_ADD], cycle=True), num_tasks=1)
    (trajectory,) = result.trajectories
    assert trajectory.won and [s.action for s in trajectory.steps] == ["add 1", "add 1"]

    # nothing was written outside the folder (bytecode caches aside)
    after = sorted(p.relative_to(folder.parent) for p in folder.parent.rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts)
    assert after == written


def test_a_subclass_elsewhere_uses_its_parents_data_and_bad_tools_are_named(plugin):
    package, folder, env_id = plugin
    turngym.register(env_id, entry_point=f"{package}.env:CounterEnv", max_episode_steps=20, description="x")
    parent = env_class(env_id)
    variant = type("HardCounterEnv", (parent,), {"__module__": __name__})  # this test folder has no JSON files
    assert variant.exemplars() == EXEMPLARS and variant.tool_specs() == TOOLS

    (folder / "tools.json").write_text(json.dumps([{**TOOLS[0], "action": "{dir} 1"}]))
    with pytest.raises(TurngymError, match=r"tool 'move' of .*tools.json.*names \['dir'\]"):
        ToolCallingAgent(env_id)
    (folder / "tools.json").write_text("[{")
    with pytest.raises(TurngymError, match=r"tools.json \(data of CounterEnv\) is not valid JSON"):
        ToolCallingAgent(env_id)


def test_every_in_repo_env_data_file_ships_in_the_wheel():
    """pyproject's package-data covers every file of every env folder that is not Python source. A data
    folder (no ``__init__.py``) is a listed package with its own package-data entry (tests/test_package.py)."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {ROOT.joinpath(*p.split(".")[1:]): p for p in tool["packages"]}
    package_data = tool.get("package-data", {})
    shipped = {f for folder, package in folders.items()
               for pattern in package_data.get(package, []) for f in folder.glob(pattern) if f.is_file()}
    env_packages = [p for p in tool["packages"] if p.startswith("turngym.envs.")
                    and (ROOT.joinpath(*p.split(".")[1:]) / "__init__.py").exists()]
    assert env_packages
    for package in env_packages:
        folder = ROOT.joinpath(*package.split(".")[1:])
        data = {p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
                and "__pycache__" not in p.parts
                and not (p.parent != folder and (p.parent / "__init__.py").exists())}  # a subpackage's own
        missing = sorted(str(p.relative_to(ROOT)) for p in data - shipped)
        owners = sorted({folders.get(ROOT / Path(m).parent,
                                     f"turngym.{Path(m).parent.as_posix().replace('/', '.')} (list it in packages too)")
                         for m in missing})
        assert not missing, f"add these to [tool.setuptools.package-data] of {owners} in pyproject.toml: {missing}"
