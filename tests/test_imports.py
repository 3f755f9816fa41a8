"""Imports flow one way (docs/DESIGN.md): envs <- agents <- trainers <- benchmarks <- cli; credit and kernels
depend on nothing of ours (any layer above envs may use them); errors, files, http_server and keyvalue are leaves every
layer may use; testing.py serves tests only.

Every ``turngym.*`` import in the package counts, lazy ones inside functions included: a lazy import
is still a dependency, it only moves the failure to run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import turngym

ROOT = Path(turngym.__file__).resolve().parent
LEAVES = {"errors", "files", "http_server", "keyvalue", "threads"}
#: top-level part -> the parts it may import (besides itself and the leaves)
ALLOWED = {
    "errors": set(),
    "files": set(),
    "threads": set(),
    "http_server": set(),
    "keyvalue": set(),
    "credit": set(),
    "kernels": set(),
    "envs": set(),
    "agents": {"envs", "kernels"},
    "trainers": {"envs", "agents", "credit", "kernels"},
    "benchmarks": {"envs", "agents", "credit", "kernels", "trainers", "testing"},
    "export": {"agents"},
    "integrations": {"envs", "agents", "credit", "kernels", "trainers"},
    "cli": {"envs", "agents", "credit", "kernels", "trainers", "benchmarks"},
    "testing": {"envs", "agents", "credit", "kernels", "trainers"},
    "__init__": {"envs"},
}


def _modules() -> list[Path]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[0] in {"tests", "build", "scripts", "docker", "configs"}:
            continue
        if (ROOT / rel.parts[0] / "pyvenv.cfg").exists():
            continue
        out.append(rel)
    return out


def _part(rel: Path) -> str:
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.startswith("turngym."):
                found.add(name.split(".")[1])
    return found


def test_every_part_has_a_rule():
    parts = {_part(rel) for rel in _modules()}
    assert parts <= set(ALLOWED), f"add a rule for {sorted(parts - set(ALLOWED))} to ALLOWED (and to docs/DESIGN.md)"


@pytest.mark.parametrize("rel", _modules(), ids=str)
def test_imports_flow_one_way(rel):
    part = _part(rel)
    bad = {dep for dep in _imports(ROOT / rel) if dep != part and dep not in LEAVES and dep not in ALLOWED[part]}
    assert not bad, f"{rel} ({part}) imports turngym.{', turngym.'.join(sorted(bad))}: against the layer order"


def test_nothing_but_tests_imports_testing():
    # benchmarks/credit_learning.py builds its study's tiny random models with testing.tiny_llama.
    users = [str(rel) for rel in _modules() if _part(rel) not in ("testing", "benchmarks")
             and "testing" in _imports(ROOT / rel)]
    assert not users, f"turngym.testing is for tests; imported by {users}"
