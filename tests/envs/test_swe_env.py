"""turngym/SWE-v0 end to end in its bwrap sandbox: the oracle resolves, an empty or a test-only submission does not,
the tools change the work copy and nothing else, progress and the report come from real test runs, hidden
information stays hidden. The registry-wide checker (tests/envs/test_registry.py) covers the Gymnasium contract."""

from __future__ import annotations

import json
import shutil

import gymnasium as gym
import pytest

import turngym.envs  # noqa: F401  (registers the envs)
from turngym.envs.swe.actions import format_call

pytest.importorskip("libcst")
if shutil.which("bwrap") is None:
    pytest.skip("the SWE sandbox needs bubblewrap (apt-get install bubblewrap; make setup installs it as root)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def env():
    e = gym.make("turngym/SWE-v0", split="test")
    yield e
    e.close()


def _play_oracle(env, task_id):
    obs, info = env.reset(options={"task_id": task_id})
    base = env.unwrapped
    total, steps, observations = 0.0, 0, [obs]
    while True:
        obs, reward, term, trunc, info = env.step(base.oracle_action())
        total, steps = total + reward, steps + 1
        observations.append(obs)
        assert info["action_valid"], obs
        if term or trunc:
            return total, info, observations


def test_the_oracle_resolves_test_tasks_and_an_empty_submission_does_not(env):
    ids = env.unwrapped.task_ids("test")[:2]
    for task_id in ids:
        total, info, observations = _play_oracle(env, task_id)
        assert total == 1.0 and info["won"] and info["progress"] == 1.0, observations[-1]
        assert info["tests"]["f2p_passed"] == info["tests"]["f2p_total"] > 0
        assert info["tests"]["p2p_passed"] == info["tests"]["p2p_total"]
        assert info["patch"].startswith("diff --git") or "---" in info["patch"]
        env.reset(options={"task_id": task_id})
        obs, reward, term, _trunc, info = env.step(format_call("submit"))
        assert term and reward == 0.0 and not info["won"] and info["progress"] == 0.0, obs
        assert info["tests"]["f2p_passed"] == 0 and "not resolved" in obs


def test_editing_the_tests_instead_of_the_code_does_not_resolve(env):
    """The evaluation takes the task's test files from the shipped tree, as SWE-bench re-applies its test patch."""
    task_id = env.unwrapped.task_ids("test")[0]
    env.reset(options={"task_id": task_id})
    task = env.unwrapped.task
    for test_file in task["turngym"]["test_files"]:
        env.step(format_call("bash", command=f"printf 'def test_ok():\\n    pass\\n' > {test_file}"))
    env.step(format_call("bash", command="printf 'import pytest\\n' > conftest.py"))
    obs, reward, term, _trunc, info = env.step(format_call("submit"))
    assert term and reward == 0.0 and not info["won"], obs


def test_tools_work_in_the_copy_and_progress_comes_from_test_runs(env):
    task_id = env.unwrapped.task_ids("test")[0]
    obs, info = env.reset(options={"task_id": task_id})
    task, base = env.unwrapped.task, env.unwrapped
    assert "Repository:" in obs and "/repo" in obs and info["progress"] == 0.0 and "tests" not in info
    key0 = info["state_key"]
    obs, _r, _t, _tr, info = env.step(format_call("bash", command="pwd; python -c 'import sys; print(sys.version_info[0])'; echo hi > scratch.txt"))
    assert info["action_valid"] and "[exit code 0]" in obs and "\n3\n" in f"\n{obs}"
    assert info["state_key"] != key0  # a new file is a change
    obs, _r, _t, _tr, info = env.step(format_call("bash", command="exit 3"))
    assert info["action_valid"] and "[exit code 3]" in obs  # a failing command is a valid action
    obs, _r, _t, _tr, info = env.step(format_call("run_tests", tests=""))
    assert info["action_valid"] and "tests" in info and info["progress"] == 0.0
    assert info["tests"]["f2p_total"] == len(task["FAIL_TO_PASS"])
    while True:  # the oracle's edits, then a test run: progress 1.0 before the submission
        action = base.oracle_action()
        if action.startswith("<function=submit>"):
            break
        env.step(action)
    obs, _r, _t, _tr, info = env.step(format_call("run_tests", tests=" ".join(task["turngym"]["test_files"])))
    assert info["progress"] == 1.0 and not info["won"], obs
    assert "passed" in obs


def test_undo_and_invalid_edits_leave_the_state_as_it_was(env):
    env.reset(options={"task_id": env.unwrapped.task_ids("test")[0]})
    base = env.unwrapped
    edit = base.oracle_action()
    assert edit.startswith("<function=str_replace>") or edit.startswith("<function=insert>")
    key0, state0 = base.state_key(), base.get_state()
    _obs, _r, _t, _tr, info = env.step(edit)
    assert info["action_valid"] and info["state_key"] != key0
    path = edit.split("<parameter=path>", 1)[1].split("</parameter>", 1)[0]
    _obs, _r, _t, _tr, info = env.step(format_call("undo_edit", path=path))
    assert info["action_valid"] and base.get_state() == state0 and info["state_key"] == key0
    for bad in (format_call("undo_edit", path=path), format_call("view", path="../../../etc/shadow"),
                format_call("str_replace", path=path, old_str="\u2603 not there", new_str="x")):
        obs, reward, term, _tr, info = env.step(bad)
        assert not info["action_valid"] and obs.startswith("Invalid action:") and reward == 0 and not term
        assert base.get_state() == state0


def test_the_sandbox_keeps_the_agent_off_the_network_and_the_host(env, tmp_path):
    env.reset(options={"task_id": env.unwrapped.task_ids("test")[0]})
    probe = ("python - <<'EOF'\nimport socket\ns = socket.socket()\ns.settimeout(2)\n"
             "try:\n    s.connect(('1.1.1.1', 80)); print('CONNECTED')\nexcept OSError as e:\n    print('blocked', e)\nEOF")
    obs, *_ = env.step(format_call("bash", command=probe))
    assert "blocked" in obs and "CONNECTED" not in obs
    obs, *_ = env.step(format_call("bash", command="touch /usr/turngym-escape 2>&1; ls /usr/turngym-escape 2>&1"))
    assert "No such file" in obs or "Read-only" in obs


def test_problem_statements_and_infos_do_not_leak_the_fix(env):
    """The gold patch's added lines never show in the first observation or in any info before the submission."""
    base = env.unwrapped
    for task_id in base.task_ids("test"):
        obs, info = env.reset(options={"task_id": task_id})
        gold = base.task["patch"]
        added = [line[1:].strip() for line in gold.splitlines() if line.startswith("+") and not line.startswith("+++")]
        text = obs + json.dumps(info)
        for line in added:
            if len(line) > 6:
                assert line not in text, (task_id, line)
        rest = json.dumps({k: v for k, v in info.items() if k != "instruction"})  # the statement names failing tests
        assert all(name not in rest for name in base.task["FAIL_TO_PASS"] + base.task["PASS_TO_PASS"])
