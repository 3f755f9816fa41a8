"""Every command the READMEs show is checked against the code: parsed by the real CLI, recipes and
overrides loaded and validated, cheap commands run for real, documented modules importable.

A renamed flag, subcommand, config key or benchmark module breaks this test instead of a user.
(Recipes themselves train in tests/trainers/test_recipes.py; `make` targets in tests/test_layout.py.)
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import turngym

ROOT = Path(turngym.__file__).resolve().parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "envs").glob("*/README.md"))]


def _bash_commands(text: str) -> list[str]:
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def _turngym_commands() -> list[str]:
    cmds = []
    for doc in DOCS:
        for line in _bash_commands(doc.read_text()):
            if line.startswith("turngym "):
                cmds.append(line)
            elif line.startswith("torchrun ") and "-m turngym.cli" in line:
                cmds.append("turngym " + line.split("-m turngym.cli", 1)[1].strip())
        # inline training commands in prose (a figure's exact command), possibly wrapped over lines
        for span in re.findall(r"`(turngym (?:train|sft) [^`]+)`", doc.read_text()):
            cmds.append(" ".join(span.split()))
    return cmds


def _python_modules() -> list[str]:
    found = set()
    for doc in DOCS:
        found.update(re.findall(r"python -m (turngym(?:\.\w+)+)", doc.read_text()))
    return sorted(found)


#: commands cheap enough to run exactly as documented
RUN = {"turngym envs", "turngym bench --list", "turngym play turngym/Game24-v0 --oracle", "turngym train --help-config"}


def test_the_readmes_show_commands():
    cmds = _turngym_commands()
    assert len(cmds) >= 15 and any(c.startswith("turngym train") for c in cmds)
    assert len(_python_modules()) >= 5


@pytest.mark.parametrize("command", _turngym_commands())
def test_readme_turngym_command(command, tmp_path, monkeypatch):
    from turngym.cli import build_parser, main

    argv = shlex.split(command)[1:]
    args = build_parser().parse_args(argv)  # a renamed flag or subcommand exits here
    if args.command in ("train", "sft") and not getattr(args, "help_config", False):
        from turngym.trainers.cli import _split
        from turngym.trainers.config import RLConfig, SFTConfig, load_config

        recipe, overrides = _split(args.recipe, args.overrides)
        if recipe and (ROOT / recipe).is_file():
            recipe = ROOT / recipe  # a path in the checkout; else a shipped recipe's name
        load_config(RLConfig if args.command == "train" else SFTConfig, recipe, overrides)
    if command in RUN:
        monkeypatch.chdir(tmp_path)
        assert main(argv) == 0
    if args.command == "bench" and "--model" not in argv and "--list" not in argv:
        monkeypatch.chdir(tmp_path)  # oracle/random baselines: quick, run as shown
        assert main(argv) == 0


@pytest.mark.parametrize("module", _python_modules())
def test_readme_python_module_runs(module):
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage" in out.stdout.lower()
