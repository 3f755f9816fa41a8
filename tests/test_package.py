"""Packaging: the repository root is the package, and every subpackage ships."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib

import pytest

import turngym

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_version_and_typed_marker():
    assert turngym.__version__.count(".") == 2
    assert (pathlib.Path(turngym.__file__).parent / "py.typed").exists()


def _data_packages() -> set[str]:
    """The folders pyproject lists as packages that hold only data (no ``__init__.py``)."""
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    return {p for p in listed if not (ROOT.joinpath(*p.split(".")[1:]) / "__init__.py").exists()}


def test_every_subpackage_is_listed_in_pyproject():
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    data = _data_packages()
    listed = set(setuptools_cfg["packages"]) - data
    found = {"turngym"}
    for init in ROOT.rglob("__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts and (rel.parts[0].startswith(".") or rel.parts[0] in {"tests", "build"}
                          or (ROOT / rel.parts[0] / "pyvenv.cfg").exists()):  # a virtual env made in the checkout
            continue
        if rel.parts:
            found.add("turngym." + ".".join(rel.parts))
    assert found == listed, f"pyproject.toml [tool.setuptools] packages must list exactly {sorted(found)}"
    # A data folder is a listed package with its own package-data entry, and no package-data pattern reaches
    # into a subfolder: setuptools would warn (and one day stop shipping it) for a folder missing from `packages`.
    package_data = setuptools_cfg["package-data"]
    for name in data:
        folder = ROOT.joinpath(*name.split(".")[1:])
        assert folder.is_dir() and any(f.is_file() for f in folder.iterdir()), f"{name}: no data files in {folder}"
        assert name in package_data, f"pyproject.toml: data package {name} has no [tool.setuptools.package-data] entry"
    deep = {pkg: pats for pkg, pats in package_data.items() if any("/" in pat for pat in pats)}
    assert not deep, f"list each data folder as a package with its own package-data entry instead: {deep}"


def test_cli_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "turngym.cli", "envs"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "turngym/Game24-v0" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("editable", [False, True])
def test_install_into_a_fresh_venv(tmp_path, editable):
    """`pip install .` and `pip install -e .` both give a working `gym.make`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    target = ["-e", str(ROOT)] if editable else [str(ROOT)]
    subprocess.run([str(py), "-m", "pip", "install", "-q", *target],
                   check=True, timeout=600, cwd=tmp_path)
    code = ("import gymnasium as gym, turngym, pathlib; env = gym.make('turngym:turngym/BlocksWorld-v0');"
            "env.reset(seed=0); print(pathlib.Path(turngym.__file__).parent)")
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    installed_at = pathlib.Path(out.stdout.strip())
    assert (installed_at == ROOT) == editable
    if not editable:
        assert (installed_at / "envs" / "game24" / "data" / "24.csv").exists()
        assert (installed_at / "envs" / "blocksworld" / "data" / "step_6.json").exists()
        for name in _data_packages():  # every data folder, with every file the checkout has in it
            rel = pathlib.Path(*name.split(".")[1:])
            shipped = {f.name for f in (ROOT / rel).iterdir() if f.is_file()}
            assert shipped <= {f.name for f in (installed_at / rel).iterdir()}, name


def test_the_lock_satisfies_every_declared_range():
    """constraints-lock.txt (what CI and the quick start install) lies inside pyproject's ranges."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"]) + [r for reqs in project["optional-dependencies"].values() for r in reqs]
    lock = {}
    for line in (ROOT / "constraints-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            lock[canonicalize_name(name)] = Version(version)
    assert canonicalize_name("torch") in lock and canonicalize_name("transformers") in lock
    for text in declared:
        req = Requirement(text)
        if req.name == "turngym" or canonicalize_name(req.name) not in lock:
            continue  # self-references between extras; extras the lock does not cover (vllm: its own venv)
        version = lock[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), f"lock has {req.name}=={version}, pyproject {text}"
