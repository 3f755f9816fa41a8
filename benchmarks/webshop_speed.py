"""WebShop env speed: the text mode vs the browser mode (the same site in headless Chromium), side by side.

On the same seeded episodes (test tasks; action sequences found once on the text mode: the oracle's move or a
random admissible one, half and half, up to ``--steps`` actions or the purchase) measures

* **resets/s**: ``env.reset(options={"task_id": ...})`` (the browser loads the start page);
* **steps/s**: one ``env.step`` with everything ``info`` carries (admissible actions, state_key, progress,
  the reward on Buy Now); in the browser mode each step is typing or a click, a page load, a URL check and
  a DOM read;
* **start s**: building the env and its first reset (the browser mode starts the server and Chromium then).

Both modes must give the same observations (checked on every step). Prints a table and writes JSON.

    python -m turngym.benchmarks.webshop_speed                         # 20 episodes, up to 10 actions
    python -m turngym.benchmarks.webshop_speed --episodes 50 --out results/webshop_speed.json

Needs ``pip install 'turngym[webshop-browser]'`` and Debian's ``chromium`` for the browser mode; without them
only the text numbers are printed. This script may import every layer of turngym.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from turngym.envs.webshop.env import WebShopEnv


def episodes(count: int, steps: int, seed: int, nouns: str) -> list[tuple[str, list[str]]]:
    """(task_id, actions) per episode: a seeded mix of oracle and random admissible actions, on the text mode."""
    rng = np.random.default_rng(seed)
    env = WebShopEnv(split="test", nouns=nouns)
    out = []
    for i in range(count):
        task_id = f"test/{i}"
        env.reset(options={"task_id": task_id})
        actions = []
        for _ in range(steps):
            admissible = env.admissible_actions()
            action = env.oracle_action() if rng.random() < 0.5 else admissible[int(rng.integers(len(admissible)))]
            actions.append(action)
            if env.step(action)[2]:
                break
        out.append((task_id, actions))
    return out


def measure(env: WebShopEnv, plan: list[tuple[str, list[str]]], start_s: float) -> dict[str, Any]:
    """Resets/s and steps/s of ``env`` over ``plan``; the observations, for the cross-check."""
    reset_s = step_s = 0.0
    steps = 0
    seen = []
    for task_id, actions in plan:
        t0 = time.perf_counter()
        obs, _ = env.reset(options={"task_id": task_id})
        reset_s += time.perf_counter() - t0
        seen.append(obs)
        for action in actions:
            t0 = time.perf_counter()
            obs = env.step(action)[0]
            step_s += time.perf_counter() - t0
            steps += 1
            seen.append(obs)
    return {"episodes": len(plan), "steps": steps, "start_s": start_s, "resets_per_s": len(plan) / reset_s,
            "steps_per_s": steps / step_s, "observations": seen}


def run(mode: str, plan: list[tuple[str, list[str]]], nouns: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    env = WebShopEnv(split="test", mode=mode, nouns=nouns)
    env.reset(options={"task_id": plan[0][0]})
    start_s = time.perf_counter() - t0
    try:
        return measure(env, plan, start_s)
    finally:
        env.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=20, help="test tasks test/0 .. test/N-1, one episode each")
    parser.add_argument("--steps", type=int, default=10, help="at most this many actions an episode")
    parser.add_argument("--seed", type=int, default=0, help="seed of the action sequences")
    parser.add_argument("--nouns", default="heuristic", help="title noun tagger of the reward (heuristic, spacy)")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args(argv)

    plan = episodes(args.episodes, args.steps, args.seed, args.nouns)
    results = {"text": run("text", plan, args.nouns)}
    try:
        results["browser"] = run("browser", plan, args.nouns)
    except Exception as exc:  # noqa: BLE001 - no playwright or Chromium here: report the text mode alone
        print(f"browser mode skipped: {type(exc).__name__}: {exc}")
    if "browser" in results:
        text_obs, browser_obs = results["text"]["observations"], results["browser"]["observations"]
        if text_obs != browser_obs:
            i = next(i for i, (a, b) in enumerate(zip(text_obs, browser_obs)) if a != b)
            raise SystemExit(f"the modes differ at observation {i}: {text_obs[i][:200]!r} vs {browser_obs[i][:200]!r}")
    for r in results.values():
        r.pop("observations")

    print(f"WebShop, {len(plan)} test episodes, {results['text']['steps']} steps (same actions in each mode)")
    print(f"{'mode':<8} {'start s':>8} {'resets/s':>10} {'steps/s':>10}")
    for mode, r in results.items():
        print(f"{mode:<8} {r['start_s']:>8.2f} {r['resets_per_s']:>10.1f} {r['steps_per_s']:>10.1f}")
    if "browser" in results:
        print(f"text/browser steps/s: {results['text']['steps_per_s'] / results['browser']['steps_per_s']:.0f}x")
    out = {"benchmark": "webshop_speed", "args": vars(args), "machine": platform.machine(),
           "python": platform.python_version(), "results": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
