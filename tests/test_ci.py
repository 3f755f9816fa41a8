"""CI runs every heavy test: the Makefile targets ``.ci/run`` calls exist and, together, select every test
marked ``slow`` or ``integration`` (``gpu`` ones aside: CI has no GPU), so a new heavy test cannot fall
outside CI unnoticed; and under ``TURNGYM_REQUIRE_EXTRAS=1`` a skip for a missing stack is an error.

Each target's pytest commands are read from ``make -n`` (variables expanded, as CI would run them) and
collected with ``--collect-only``: pytest itself decides what each ``-m``, path and ``--ignore`` selects.
"""

from __future__ import annotations

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import turngym

ROOT = pathlib.Path(turngym.__file__).resolve().parent
HEAVY = "(slow or integration) and not gpu"


def _env() -> dict[str, str]:
    """No make or pytest state from the caller; the switch off, so collecting a stack-less file is no error."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER",
                        "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST", "TURNGYM_REQUIRE_EXTRAS"}}
    env["PYTHONSAFEPATH"] = "1"
    return env


def ci_targets() -> list[str]:
    """The make targets .ci/run calls, in order."""
    targets = []
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["step"]:  # `step make TARGET`: timed (the step-timing block)
            words = words[1:]
        if words[:1] == ["make"]:
            targets += [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return targets


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


def pytest_commands(target: str) -> list[list[str]]:
    """The pytest arguments of each pytest command ``make <target>`` runs (setup taken as done)."""
    if shutil.which("make") is None:
        pytest.fail("`make` is not installed; CI runs the Makefile's targets (Debian package `make`)")
    out = subprocess.run(["make", "-n", "-o", "setup", target, f"VENV={sys.prefix}", "PYTEST_ARGS="], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env=_env(), check=False)
    assert out.returncode == 0, out.stderr
    commands = []
    for line in out.stdout.splitlines():
        words = shlex.split(line)
        if "pytest" in words and words[words.index("pytest") - 1] == "-m":
            commands.append(words[words.index("pytest") + 1:])
    return commands


def collected(args: list[str]) -> set[str]:
    """The test ids ``pytest <args>`` would run, from the checkout root with this interpreter."""
    args = [a for a in args if not re.fullmatch(r"-[qv]+|--quiet|--verbose", a)]  # -q once: one id a line
    cmd = [sys.executable, "-P", "-m", "pytest", *args, "--collect-only", "-q", "-p", "no:cacheprovider"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env(), check=False)
    assert out.returncode in (0, 5), f"{shlex.join(cmd)} failed to collect:\n{(out.stdout + out.stderr)[-3000:]}"
    return {line.strip() for line in out.stdout.splitlines() if "::" in line}


def test_ci_calls_only_makefile_targets():
    targets = ci_targets()
    assert {"setup", "test", "test-slow", "test-integration", "test-alfworld", "test-vllm"} <= set(targets)
    assert set(targets) <= makefile_targets(), f"unknown targets: {sorted(set(targets) - makefile_targets())}"


def test_every_command_in_ci_is_a_timed_step():
    lines = [shlex.split(line, comments=True) for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert not [w for w in lines if w[:1] == ["make"]], "run each make target as `step make ...` (timed)"


def _step_timing_block() -> str:
    text = (ROOT / ".ci" / "run").read_text()
    start, end = text.index("# ---- step timing"), text.index("# ---- end of step timing")
    return text[start:end]


def _run_ci_script(tmp_path, steps: str, *, terminate_after: float | None = None):
    script = tmp_path / "run"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\n" + _step_timing_block() + steps)
    proc = subprocess.Popen(["bash", str(script)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if terminate_after is not None:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(terminate_after)
        proc.terminate()
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out


def test_ci_prints_each_steps_time_and_stops_at_the_first_failure(tmp_path):
    rc, out = _run_ci_script(tmp_path, "step true\nstep bash -c 'exit 3'\nstep touch never\n")
    assert rc == 3, out
    summary = out[out.index(".ci/run step times"):]
    assert re.search(r"^  \d+ true \(exit 0\)$", summary, flags=re.MULTILINE), summary
    assert re.search(r"^  \d+ bash -c exit 3 \(exit 3\)$", summary, flags=re.MULTILINE), summary
    assert "total" in summary and "exit 3" in summary.splitlines()[-1]
    assert not (tmp_path / "never").exists()


def test_a_terminated_ci_names_the_running_step_and_stops_its_whole_tree(tmp_path):
    # the step's grandchild (a sleep under bash) writes its pid; a TERM to .ci/run must end it too
    step = "step bash -c 'sleep 300 & echo $! > grandchild; touch started; wait'\nstep touch never\n"
    t0 = time.monotonic()
    rc, out = _run_ci_script(tmp_path, "step true\n" + step, terminate_after=0.5)
    assert rc == 143 and time.monotonic() - t0 < 30, out
    summary = out[out.index(".ci/run step times"):]
    assert "(interrupted)" in summary and "sleep 300" in summary, summary
    assert re.search(r"^  \d+ true \(exit 0\)$", summary, flags=re.MULTILINE), summary
    assert not (tmp_path / "never").exists()
    assert _ends(int((tmp_path / "grandchild").read_text()))


def _ends(pid: int, wait_s: float = 10.0) -> bool:
    """Whether process ``pid`` is gone (or a zombie) within ``wait_s``."""
    proc = pathlib.Path(f"/proc/{pid}")
    deadline = time.monotonic() + wait_s
    while proc.exists() and time.monotonic() < deadline:
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.05)
    return not proc.exists()


def test_a_step_that_ignores_term_is_killed_after_a_grace_period(tmp_path):
    step = "step bash -c 'trap \"\" TERM; sleep 300 & echo $! > grandchild; touch started; wait'\n"
    t0 = time.monotonic()
    rc, out = _run_ci_script(tmp_path, step, terminate_after=0.5)
    assert rc == 143 and time.monotonic() - t0 < 40, out
    assert "(interrupted)" in out
    assert _ends(int((tmp_path / "grandchild").read_text()))


def test_ci_and_the_makefile_make_a_missing_stack_an_error():
    ci, makefile = (ROOT / ".ci" / "run").read_text(), (ROOT / "Makefile").read_text()
    assert re.search(r"^export TURNGYM_REQUIRE_EXTRAS=1$", ci, flags=re.MULTILINE)
    assert re.search(r"^export TURNGYM_REQUIRE_EXTRAS \?= 1$", makefile, flags=re.MULTILINE)


def test_every_slow_and_integration_test_runs_in_ci():
    commands = [args for target in ci_targets() for args in pytest_commands(target)]
    assert commands, ".ci/run's targets run no pytest command"
    with ThreadPoolExecutor(max_workers=2) as pool:
        heavy, *selected = pool.map(collected, [["-m", HEAVY], *commands])
    assert len(heavy) >= 20, f"expected the slow and integration tests, collected {sorted(heavy)}"
    missed = heavy - set().union(*selected)
    assert not missed, (f"no target that .ci/run calls selects these slow/integration tests: {sorted(missed)}; "
                        "add their file to a CI target in the Makefile (or a new target to .ci/run)")


SWITCH_PROBE = '''
import importlib.util

import pytest


def test_missing_module():
    pytest.importorskip("turngym_no_such_module")


@pytest.mark.skipif(importlib.util.find_spec("turngym_no_such_module") is None, reason="needs the stack")
def test_missing_module_mark():
    pass


def test_not_applicable():
    pytest.skip("not applicable here: nothing to check")


@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip("needs a CUDA GPU")


def test_passes():
    pass
'''


@pytest.mark.parametrize("switch", ["0", "1"])
def test_a_skip_for_a_missing_stack_is_an_error_under_the_switch(tmp_path, switch):
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: needs a CUDA GPU\n")
    (tmp_path / "test_probe.py").write_text(SWITCH_PROBE)
    cmd = [sys.executable, "-P", "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:xdist",
           "test_probe.py"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
                         env={**_env(), "TURNGYM_REQUIRE_EXTRAS": switch})
    summary = out.stdout.strip().splitlines()[-1]
    if switch == "1":
        assert out.returncode == 1 and "1 failed, 1 passed, 2 skipped, 1 error" in summary, out.stdout[-3000:]
        assert "FAILED test_probe.py::test_missing_module" in out.stdout
        assert "ERROR test_probe.py::test_missing_module_mark" in out.stdout
    else:
        assert out.returncode == 0 and "1 passed, 4 skipped" in summary, out.stdout[-3000:]
