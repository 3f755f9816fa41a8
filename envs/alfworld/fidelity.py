"""Play one task in the native and the real engine side by side and compare every step.

Used by ``tests/envs/test_alfworld_fidelity.py`` and runnable by hand::

    python -m turngym.envs.alfworld.fidelity --split valid_seen --games 140

Needs the real stack (``pip install 'turngym[alfworld]'``). Each game is
played twice per engine: the oracle's shortest plan from reset, then a seeded
random walk (admissible commands mixed with rejected and junk ones) finished
by the oracle. At each step the observation, reward, terminated flag, won,
action_valid and admissible commands must be equal.

This module depends on :mod:`turngym.envs.alfworld.env` only.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from typing import Any

from turngym.envs.alfworld.env import ALFWorldEnv

_JUNK = ("", "jump", "look around", "Look", "take everything", "go to", "inventory please", "  help  ")


@dataclass
class FidelityReport:
    games: int = 0
    steps: int = 0
    mismatches: list[str] = field(default_factory=list)


def _compare(where: str, native: Any, real: Any, report: FidelityReport) -> bool:
    if native != real:
        report.mismatches.append(f"{where}: native {str(native)[:300]!r} != real {str(real)[:300]!r}")
        return False
    return True


def _episode(task: dict, native: ALFWorldEnv, real: ALFWorldEnv, walk_steps: int, rng: random.Random,
             report: FidelityReport, label: str) -> None:
    obs_n, info_n = native.reset(options={"task": task})
    obs_r, info_r = real.reset(options={"task": task})
    if not (_compare(f"{label} reset obs", obs_n, obs_r, report)
            and _compare(f"{label} reset admissible", info_n["admissible_actions"], info_r["admissible_actions"], report)):
        return
    for step in range(walk_steps + 60):
        if step < walk_steps:
            roll = rng.random()
            if roll < 0.75:
                action = rng.choice(info_n["admissible_actions"])
            elif roll < 0.9:
                illegal = native.illegal_actions()
                action = rng.choice(illegal) if illegal else rng.choice(_JUNK)
            else:
                action = rng.choice(_JUNK)
        else:
            action = native.oracle_action()
        out_n = native.step(action)
        out_r = real.step(action)
        report.steps += 1
        where = f"{label} step {step} {action!r}"
        ok = (_compare(f"{where} obs", out_n[0], out_r[0], report)
              and _compare(f"{where} reward", out_n[1], out_r[1], report)
              and _compare(f"{where} terminated", out_n[2], out_r[2], report)
              and all(_compare(f"{where} {k}", out_n[4][k], out_r[4][k], report)
                      for k in ("won", "action_valid", "admissible_actions")))
        if not ok or out_n[2]:
            if ok and step >= walk_steps and not out_n[4]["won"]:
                report.mismatches.append(f"{where}: the oracle did not win")
            return
    report.mismatches.append(f"{label}: no win within {walk_steps + 60} steps")


def compare_task(task: dict, walk_steps: int = 30, seed: int = 0, report: FidelityReport | None = None,
                 envs: tuple[ALFWorldEnv, ALFWorldEnv] | None = None) -> FidelityReport:
    """Compare the engines on one task: the oracle from reset, then a random walk finished by the oracle."""
    report = report or FidelityReport()
    native, real = envs or (ALFWorldEnv(), ALFWorldEnv(engine="textworld"))
    name = task.get("game_id", "task")
    _episode(task, native, real, 0, random.Random(seed), report, f"{name} oracle")
    _episode(task, native, real, walk_steps, random.Random(seed), report, f"{name} walk")
    report.games += 1
    return report


def main(argv: list[str] | None = None) -> int:
    from turngym.envs.alfworld.tasks import load_split

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("--games", type=int, default=140)
    parser.add_argument("--walk-steps", type=int, default=30)
    args = parser.parse_args(argv)
    envs = (ALFWorldEnv(), ALFWorldEnv(engine="textworld"))
    report = FidelityReport()
    for i, task in enumerate(load_split(args.split)[: args.games]):
        compare_task(task, args.walk_steps, seed=i, report=report, envs=envs)
    print(f"games={report.games} steps={report.steps} mismatches={len(report.mismatches)}")
    for m in report.mismatches[:20]:
        print("  " + m)
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
