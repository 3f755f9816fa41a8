"""``turngym bench --env werewolf``: win rates per team and per (role, policy) with Wilson 95% intervals.

    turngym bench --env werewolf --agents rule --agents village=random,wolves=rule -n 200
    turngym bench --env werewolf --agents seer=llm,rest=rule --model default -n 20 --env-kwarg preset=lspo7

``turngym bench`` hands over to this module when every ``--env`` names Werewolf
(``werewolf``, ``Werewolf-v0``, ``turngym/Werewolf-v0``). Each ``--agent``/
``--agents`` value is a LINEUP (see :func:`turngym.agents.werewolf_runner.parse_lineup`),
one result row each. ``--episodes`` games per seed, ``--seeds`` seeds; game g of
seed s uses deal seed ``s * 100003 + g``, so lineups are compared on the same deals.

Statistics: the village's and the wolves' win rate over games (draws count as
neither), and for every (role, policy) pair the win rate of the games where that
role was played by that policy, counted once per game (the two wolves of a game
share one outcome), each with a Wilson score interval. Outputs ``summary.json``
and, when LLM seats played, their trajectories as JSONL in ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from turngym.agents.evaluation import wilson_interval
from turngym.benchmarks.bench import _load_engine, _pct, _write_summary
from turngym.keyvalue import parse_key_values


def is_werewolf_env(env_id: str) -> bool:
    from turngym.envs.werewolf import is_werewolf_id

    return is_werewolf_id(env_id)


def run(args: argparse.Namespace) -> int:
    from turngym.agents.types import save_trajectories
    from turngym.agents.werewolf_runner import WerewolfLLMPolicy, WerewolfRunner, parse_lineup
    from turngym.errors import TurngymError

    lineups = args.agent or ["rule"]
    for spec in lineups:
        parse_lineup(spec)
    if args.episodes < 1 or args.seeds < 1:
        raise TurngymError("--episodes and --seeds must be >= 1")
    env_config = parse_key_values(args.env_kwarg, "--env-kwarg")
    preset = env_config.pop("preset", "arena8")
    out = Path(args.out or f"results/bench-werewolf-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    seeds = [s * 100_003 + g for s in range(args.base_seed, args.base_seed + args.seeds) for g in range(args.episodes)]
    models = args.model or ["default"]
    engine, rows = None, []
    config = {k: v for k, v in vars(args).items() if k != "func"}
    for spec in lineups:
        llm = any(policy == "llm" for _, policy in parse_lineup(spec))
        for model in (models if llm else ["-"]):
            if llm and engine is None:
                engine = _load_engine(model, args)
            runner = WerewolfRunner(engine if llm else None, lineup=spec, preset=preset, env_config=env_config,
                                    llm=WerewolfLLMPolicy(temperature=args.temperature, top_p=args.top_p,
                                                          max_tokens=args.max_tokens),
                                    max_concurrent=args.max_concurrent, model_name=model if llm else "")
            result = runner.run(seeds)
            row = summarize_games(result.games)
            row.update(lineup=spec, model=model, preset=preset, stats=result.stats.to_dict())
            if result.trajectories:
                name = "werewolf__" + "".join(c if c.isalnum() else "_" for c in spec) + ".jsonl"
                save_trajectories(result.trajectories, out / name)
                row["trajectories"] = name
            rows.append(row)
            _write_summary(out, config, rows, interrupted=False)
    print(format_rows(rows))
    print(f"\nwrote {out / 'summary.json'}")
    return 0


def summarize_games(games: list[Any]) -> dict[str, Any]:
    """Team and (role, policy) win rates with Wilson intervals (see the module docstring)."""
    n = len(games)
    out: dict[str, Any] = {"games": n, "draws": sum(g.winner == "draw" for g in games)}
    for team in ("village", "wolves"):
        wins = sum(g.winner == team for g in games)
        out[f"{team}_wins"] = wins
        out[f"{team}_win_rate"] = wins / n if n else float("nan")
        out[f"{team}_ci95"] = list(wilson_interval(wins, n))
    per: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for g in games:
        seen = set()
        for seat, role in g.roles.items():
            key = (role, g.policies[seat])
            if key in seen:
                continue
            seen.add(key)
            team = "wolves" if role == "werewolf" else "village"
            per[key][0] += g.winner == team
            per[key][1] += 1
    out["by_role"] = [{"role": r, "policy": p, "wins": w, "games": k, "win_rate": w / k,
                       "ci95": list(wilson_interval(w, k))} for (r, p), (w, k) in sorted(per.items())]
    out["mean_steps"] = sum(g.steps for g in games) / n if n else float("nan")
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        lo, hi = r["village_ci95"]
        wlo, whi = r["wolves_ci95"]
        model = f"  model {r['model']}" if r["model"] != "-" else ""
        lines.append(f"lineup {r['lineup']!r}  preset {r['preset']}{model}  games {r['games']}  draws {r['draws']}  "
                     f"mean steps {r['mean_steps']:.0f}")
        lines.append(f"  village wins {_pct(r['village_win_rate'])}% [{_pct(lo)}, {_pct(hi)}]   "
                     f"wolves win {_pct(r['wolves_win_rate'])}% [{_pct(wlo)}, {_pct(whi)}]")
        for b in r["by_role"]:
            blo, bhi = b["ci95"]
            lines.append(f"    {b['role']:<9} played by {b['policy']:<6} won {_pct(b['win_rate']):>5}% "
                         f"[{_pct(blo)}, {_pct(bhi)}] of {b['games']} games")
    lines.append("CI: Wilson 95%; per-role rates count each game once per (role, policy).")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import argparse

    from turngym.benchmarks import bench

    _parser = argparse.ArgumentParser(prog="python -m turngym.benchmarks.werewolf_bench")
    bench.add_arguments(_parser)
    sys.exit(bench.run(_parser.parse_args(["--env", "werewolf", *sys.argv[1:]])))
