"""Werewolf bot benchmark: does rule-based village play beat random village play against rule-based wolves?

    python -m turngym.benchmarks.werewolf_bots --games 2000 --preset arena8 --preset lspo7

For each preset, plays N games (deal seeds 0..N-1, the same deals for both lineups) of rule-based wolves
against (a) a rule-based village and (b) a random village, on the pure-Python engine (no PettingZoo
needed), and prints the village's win rate with a Wilson 95% interval and the difference of the two rates
with a 95% normal interval. ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

from turngym.agents.evaluation import Z95, wilson_interval


def measure(preset: str, games: int, village: str, wolves: str = "rule") -> dict[str, Any]:
    from turngym.envs.werewolf.bots import make_bot, play_game
    from turngym.envs.werewolf.game import Game
    from turngym.envs.werewolf.rules import WEREWOLF, Rules

    rules = Rules.from_config(preset)
    bots = {"rule": make_bot("rule"), "random": make_bot("random")}
    wins = draws = steps = 0
    start = time.perf_counter()
    for seed in range(games):
        g = Game(rules, seed=seed)
        play_game(g, {p: bots[wolves if g.roles[p] == WEREWOLF else village] for p in g.players})
        wins += g.winner == "village"
        draws += g.winner == "draw"
        steps += g.steps
    lo, hi = wilson_interval(wins, games)
    return {"preset": preset, "village": village, "wolves": wolves, "games": games, "village_wins": wins,
            "village_win_rate": wins / games, "ci95": [lo, hi], "draws": draws, "mean_steps": steps / games,
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--games", type=int, default=1000, help="games per (preset, lineup) (default 1000)")
    parser.add_argument("--preset", action="append", default=[], help="rules preset (repeatable; default arena8, lspo7)")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    args = parser.parse_args(argv)
    rows = []
    for preset in args.preset or ["arena8", "lspo7"]:
        rule = measure(preset, args.games, "rule")
        rand = measure(preset, args.games, "random")
        p1, p2, n = rule["village_win_rate"], rand["village_win_rate"], args.games
        diff = p1 - p2
        half = Z95 * math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)
        rows.append({"preset": preset, "rule_village": rule, "random_village": rand, "difference": diff,
                     "difference_ci95": [diff - half, diff + half]})
        for r in (rule, rand):
            lo, hi = r["ci95"]
            print(f"{preset:<7} {r['village']:>6} village vs rule wolves: village wins {100 * r['village_win_rate']:5.1f}% "
                  f"[{100 * lo:.1f}, {100 * hi:.1f}] of {n} games (draws {r['draws']}, {r['mean_steps']:.0f} steps/game, "
                  f"{r['seconds']:.1f}s)")
        print(f"{preset:<7} difference rule - random: {100 * diff:+.1f} points [{100 * (diff - half):+.1f}, "
              f"{100 * (diff + half):+.1f}]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
