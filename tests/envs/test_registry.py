"""Every registered env passes turngym's checker; the registry and make() behave as documented.

New envs are covered by being registered: the parametrization reads the registry, every kind included
(a PettingZoo env goes through the checker's AEC variant). The default tier tries 100 seeded random junk
actions per env on top of the fixed list; the slow tier 1,000.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import gymnasium as gym
import pytest

import turngym
from turngym.envs import gymnasium_ids, registry
from turngym.envs.check import check_env
from turngym.errors import UnknownEnvError


def _checkable_here() -> list[str]:
    """Every registered id but the ``remote`` ones: a client of `turngym serve-env` needs a live server, and
    tests/envs/test_remote.py runs the same checker on it against one on 127.0.0.1."""
    return [env_id for env_id, entry in registry().items() if entry.kind != "remote"]


def _needs_its_stack(env_id: str) -> None:
    if registry()[env_id].kind == "pettingzoo" and importlib.util.find_spec("pettingzoo") is None:
        pytest.skip("needs the werewolf extra: pip install 'turngym[werewolf]'")


def _assert_checked(env_id: str, report, junk: int) -> None:
    expected = {"gymnasium", "oracle"} if registry()[env_id].kind == "gymnasium" else {"pettingzoo", "leaks"}
    assert expected | {"invalid_actions", "determinism"} <= set(report.checks), report.checks
    assert report.random_junk_actions == junk and report.junk_actions > junk


@pytest.mark.parametrize("env_id", _checkable_here())
def test_registered_env_passes_checker(env_id):
    _needs_its_stack(env_id)
    _assert_checked(env_id, check_env(env_id), junk=100)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", _checkable_here())
def test_registered_env_passes_checker_with_1000_random_junk_actions(env_id):
    _needs_its_stack(env_id)
    _assert_checked(env_id, check_env(env_id, junk=1000), junk=1000)


def test_every_registered_kind_goes_through_the_checker():
    kinds = {entry.kind for entry in registry().values()}
    assert kinds == {"gymnasium", "pettingzoo", "remote"}, "a new kind of env needs its checker variant"


@pytest.mark.parametrize("env_id", gymnasium_ids())
def test_registered_env_is_a_text_env_with_docs(env_id):
    env = gym.make(env_id)
    doc = type(env.unwrapped).__doc__ or ""
    assert len(doc.splitlines()) > 10, f"{env_id}: document observations, actions, rewards and info keys in the class docstring"
    assert env.spec.max_episode_steps, f"{env_id}: register it with max_episode_steps"
    assert registry()[env_id].description


def test_both_make_spellings_work_in_a_fresh_interpreter():
    code = (
        "import gymnasium as gym\n"
        "env = gym.make('turngym:turngym/Game24-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "import turngym\n"
        "env2 = turngym.make('turngym/BlocksWorld-v0')\n"
        "env2.reset(seed=0)\n"
        "print(info['task_id'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "/" in out.stdout


def test_unknown_id_suggests_closest():
    with pytest.raises(UnknownEnvError, match=r"did you mean 'turngym/Game24-v0'"):
        turngym.make("turngym/Game42-v0")
    with pytest.raises(UnknownEnvError, match="BlocksWorld"):
        turngym.make("turngym/Blockworld-v0")


def test_short_id_is_accepted():
    env = turngym.make("Game24-v0")
    assert env.spec.id == "turngym/Game24-v0"


def test_registry_lists_envs_registered_straight_through_gymnasium():
    from turngym.envs.core import TextEnv

    gym.register("turngym/ThirdParty-v0", entry_point=TextEnv)
    try:
        assert "turngym/ThirdParty-v0" in registry()
    finally:
        del gym.registry["turngym/ThirdParty-v0"]


def test_bad_reset_options_name_the_fix():
    from turngym.errors import TaskError

    env = turngym.make("turngym/Game24-v0")
    with pytest.raises(TaskError, match="unknown reset option"):
        env.reset(options={"taskid": "test/1"})
    with pytest.raises(TaskError, match="out of range"):
        env.reset(options={"task_id": "test/100000"})
    with pytest.raises(TaskError, match="unknown split"):
        env.reset(options={"task_id": "nosuchsplit/0"})
    with pytest.raises(TaskError, match="malformed"):
        env.reset(options={"task_id": "17"})
