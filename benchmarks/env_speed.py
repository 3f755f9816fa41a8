"""ALFWorld env speed: the native engine vs the real one (TextWorld PddlEnv + alfworld), side by side.

On the same shipped games and the same command sequences, measures

* **resets/s**: loading and resetting a game (native "cold" = the scene parsed
  from the PDDL text again, as for a task never seen; "warm" = a task already
  seen, scene cached; the real engine reloads the game file every time, as
  ALFWorld's gym env does);
* **steps/s**: one ``env.step`` with everything ``info`` carries (admissible
  commands, won; the native env also state_key and progress).

Two levels: ``engine`` (the bare game objects: native ``Game`` vs
``TextWorldGame``) and ``env`` (``ALFWorldEnv(engine=...)`` through the
Gymnasium API). Prints a table with the native/real ratios and writes JSON.

    python -m turngym.benchmarks.env_speed                       # 10 valid_seen games, 40 steps each
    python -m turngym.benchmarks.env_speed --games 20 --steps 60 --out results/env_speed.json

Needs ``pip install 'turngym[alfworld]'`` for the real engine; without it only
the native numbers are printed. This script may import every layer of turngym.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from turngym.envs.alfworld import env as alf_env
from turngym.envs.alfworld.env import ALFWorldEnv
from turngym.envs.alfworld.game import Game
from turngym.envs.alfworld.tasks import load_split
from turngym.envs.alfworld.textworld_engine import TextWorldGame, textworld_available


def command_sequences(tasks: list[dict], steps: int, seed: int) -> list[list[str]]:
    """Per task, a seeded random walk of admissible commands (one in ten rejected), found on the native engine."""
    rng = random.Random(seed)
    out = []
    for task in tasks:
        scene, _ = alf_env.scene_for(task["pddl_problem"])
        game = Game(scene, task["task_desc_templated"])
        seq = []
        for _ in range(steps):
            cmd = rng.choice(game.admissible_commands()) if rng.random() < 0.9 else "jump"
            game.step(cmd)
            seq.append(cmd)
        out.append(seq)
    return out


def _time(reset: Callable[[dict], Any], step: Callable[[Any, str], bool], tasks, seqs, cold: bool
          ) -> dict[str, float]:
    """Resets/s and steps/s: ``reset(task)`` returns a handle, ``step(handle, cmd)`` returns True when the
    game ended (the rest of that sequence is skipped). ``cold``: the scene cache is emptied before each reset."""
    reset_s = step_s = 0.0
    n_steps = 0
    for task, seq in zip(tasks, seqs):
        if cold:
            alf_env._SCENES.clear()
        t0 = time.perf_counter()
        handle = reset(task)
        reset_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for cmd in seq:
            n_steps += 1
            if step(handle, cmd):
                break
        step_s += time.perf_counter() - t0
    return {"resets_per_s": len(tasks) / reset_s, "steps_per_s": n_steps / step_s}


def _time_engine(make_game, tasks, seqs, cold) -> dict[str, float]:
    """The bare engine: a game per task, then step + admissible commands + won per command."""
    def reset(task):
        game = make_game(task)
        game.intro()
        return game

    def step(game, cmd) -> bool:
        game.step(cmd)
        game.admissible_commands()
        game.won()
        return False

    return _time(reset, step, tasks, seqs, cold)


def _native_game(task):
    scene, _ = alf_env.scene_for(task["pddl_problem"])
    return Game(scene, task["task_desc_templated"])


def _time_env(engine: str, tasks, seqs, cold: bool) -> dict[str, float]:
    """Through the Gymnasium env (one instance, reset per task)."""
    env = ALFWorldEnv(engine=engine)
    try:
        return _time(lambda task: env.reset(options={"task": task}), lambda _, cmd: bool(env.step(cmd)[2]),
                     tasks, seqs, cold)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("--games", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="results/env_speed.json")
    args = parser.parse_args(argv)

    records = load_split(args.split)
    tasks = [records[i] for i in range(0, len(records), max(1, len(records) // args.games))][: args.games]
    seqs = command_sequences(tasks, args.steps, args.seed)
    rows: dict[str, dict[str, float]] = {
        "engine native (cold)": _time_engine(_native_game, tasks, seqs, cold=True),
        "engine native (warm)": _time_engine(_native_game, tasks, seqs, cold=False),
        "env native (cold)": _time_env("native", tasks, seqs, cold=True),
        "env native (warm)": _time_env("native", tasks, seqs, cold=False),
    }
    real = textworld_available()
    if real:
        rows["engine textworld"] = _time_engine(TextWorldGame, tasks, seqs, cold=False)
        rows["env textworld"] = _time_env("textworld", tasks, seqs, cold=False)
    print(f"ALFWorld env speed: {len(tasks)} {args.split} games, {args.steps} commands each")
    print(f"{'':24} {'resets/s':>10} {'steps/s':>10}")
    for name, r in rows.items():
        print(f"{name:24} {r['resets_per_s']:10.1f} {r['steps_per_s']:10.1f}")
    ratios = {}
    if real:
        for level in ("engine", "env"):
            base = rows[f"{level} textworld"]
            for temp in ("cold", "warm"):
                mine = rows[f"{level} native ({temp})"]
                ratios[f"{level} ({temp})"] = {k: mine[k] / base[k] for k in ("resets_per_s", "steps_per_s")}
        print("native / textworld:")
        for name, r in ratios.items():
            print(f"  {name:16} resets x{r['resets_per_s']:.1f}   steps x{r['steps_per_s']:.1f}")
    else:
        print("(the real engine is not installed: pip install 'turngym[alfworld]' to compare)")
    result = {"split": args.split, "games": len(tasks), "steps_per_game": args.steps, "rows": rows, "ratios": ratios,
              "python": platform.python_version(), "machine": platform.machine()}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(out)
    return result


if __name__ == "__main__":
    main()
