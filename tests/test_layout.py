"""The repository root is the package, and none of its folders may shadow an installed distribution.

Whenever the root is on ``sys.path`` (``python -m ...`` or ``python -c`` run from the root), its
folders are importable as top-level names too; ``kernels/`` then hid the ``kernels`` distribution
that transformers 5.25 imports and ``make test`` failed from a fresh clone. The defences (see
docs/DESIGN.md, "Layout"): ``import turngym`` takes the root off ``sys.path`` and refuses to run
once a root folder has already been imported as a top-level name; the Makefile runs Python with
``-P`` under ``PYTHONSAFEPATH=1``; tests/conftest.py imports turngym first; benchmarks are run as
``python -m turngym.benchmarks.<name>``. These tests launch the documented commands from the root
and check every colliding name resolves to its distribution.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

import turngym

ROOT = pathlib.Path(turngym.__file__).resolve().parent


def _root_names() -> set[str]:
    """Top-level names the root would provide on sys.path: packages (folders) and modules (.py files)."""
    names = set()
    for entry in ROOT.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir() and entry.name.isidentifier():
            names.add(entry.name)
        elif entry.suffix == ".py" and entry.stem.isidentifier():
            names.add(entry.stem)
    return names


def colliding_names() -> list[str]:
    """Root names that are also a top-level module of an installed distribution or of the stdlib."""
    provided = set(importlib.metadata.packages_distributions()) | set(sys.stdlib_module_names)
    return sorted(n for n in _root_names() & provided if n != "turngym")


def _from_root(module) -> bool:
    origin = pathlib.Path(getattr(module, "__file__", None) or "").resolve()
    return origin.is_relative_to(ROOT) and not origin.is_relative_to(pathlib.Path(sys.prefix).resolve())


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give: no safe-path switch, no make or pytest state."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONSAFEPATH", "PYTHONPATH", "MAKEFLAGS", "MAKELEVEL", "MFLAGS", "PYTEST_ADDOPTS",
                        "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_CURRENT_TEST"}}
    env.update(extra)
    return env


def test_the_collision_this_layout_guards_against_is_known():
    # kernels/ vs the `kernels` distribution (a dependency of transformers >= 5.25) is the case that broke
    # CI; if this list grows, the guards below cover the new name automatically.
    assert "kernels" in _root_names()
    assert set(colliding_names()) <= _root_names()


def test_root_is_not_on_sys_path_after_import():
    assert all(not os.path.exists(p or ".") or not os.path.samefile(p or ".", ROOT) for p in sys.path)


@pytest.mark.parametrize("name", colliding_names() or ["kernels"])
def test_colliding_names_resolve_to_their_distribution_in_this_process(name):
    """The suite itself runs the README's way (`make test`): here every colliding name is the real one."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"not applicable here: {name} has no installed distribution in this environment, nothing to shadow")
    module = __import__(name)
    assert not _from_root(module), f"{name} was imported from the checkout ({module.__file__}), not its distribution"


@pytest.mark.parametrize("how", ["python -c", "python -m"])
def test_documented_python_commands_from_the_root_import_distributions(how, tmp_path):
    names = colliding_names()
    if not names:
        pytest.skip("not applicable here: no root folder collides with an installed distribution")
    probe = ("import turngym, importlib, pathlib, sys\n"
             f"root = pathlib.Path({str(ROOT)!r})\n"
             f"for name in {names!r}:\n"
             "    m = importlib.import_module(name)\n"
             "    f = pathlib.Path(m.__file__).resolve()\n"
             "    assert not (f.is_relative_to(root) and not f.is_relative_to(pathlib.Path(sys.prefix).resolve())), f\n"
             "print('ok')\n")
    if how == "python -c":
        cmd = [sys.executable, "-c", probe]
    else:  # `python -m <module>` puts the working directory (the root) first on sys.path, as README commands do
        (tmp_path / "probe_layout.py").write_text(probe)
        cmd = [sys.executable, "-m", "probe_layout"]
    env = _clean_env(PYTHONPATH=str(tmp_path)) if how == "python -m" else _clean_env()
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_root_folder_imported_before_turngym_is_a_clear_error():
    out = subprocess.run([sys.executable, "-c", "import kernels, turngym"], check=False, cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=_clean_env())
    assert out.returncode != 0
    assert "imported from this checkout" in out.stderr and "python -P" in out.stderr


def test_benchmark_module_runs_from_the_root():
    out = subprocess.run([sys.executable, "-m", "turngym.benchmarks.credit_speed", "--help"], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env=_clean_env())
    assert out.returncode == 0, out.stderr[-2000:]


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    tests = [c for c in commands if "test" in c]
    assert len(tests) == 1, f"README's quick start should show one test command, found {tests}"
    return tests[0]


def test_readme_test_command_as_the_readme_runs_it():
    """`make test` from the root, restricted to this file's in-process probe (the full suite is the caller)."""
    command = _readme_test_command()
    assert command == "make test"
    if shutil.which("make") is None:
        pytest.fail("`make` is not installed; the README's test command needs it (Debian package `make`)")
    venv = pathlib.Path(sys.prefix)
    args = "tests/test_layout.py -k in_this_process -p no:cacheprovider"
    # -o setup: use this interpreter's venv as it is (the suite is already running in it).
    out = subprocess.run([*command.split(), "-o", "setup", f"VENV={venv}", f"PYTEST_ARGS={args}"], check=False, cwd=ROOT,
                         capture_output=True, text=True, timeout=600, env=_clean_env())
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert " passed" in out.stdout, out.stdout[-2000:]


def test_plain_python_m_pytest_from_the_root_is_safe_too():
    """Without the Makefile's -P, tests/conftest.py's `import turngym` takes the root off sys.path."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layout.py", "-k",
           "in_this_process"]
    out = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=600, env=_clean_env())
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
