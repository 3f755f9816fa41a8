"""Evaluate agents on envs with honest statistics: the ``turngym bench`` subcommand.

    turngym bench --env turngym/Game24-v0 --agent react --episodes 8
    turngym bench --env turngym/Game24-v0 --env turngym/BlocksWorld-v0 --agent oracle --agent random --seeds 3
    turngym bench --list

Tasks. For each seed s in ``base_seed .. base_seed + seeds - 1``, the runner
plays the first ``--episodes`` tasks of ``--split`` in an order shuffled with
s (:func:`turngym.agents.runner.plan_episodes`), each ``--runs-per-task``
times. Different seeds thus draw different task subsets (unless N covers
the split) and different samples; the same seed always gives the same tasks
and sampling seeds.

Statistics (after Bjarnason, Silva & Monperrus, "On Randomness in Agentic
Evals", arXiv 2602.07150: a single run is not a result):

* success rate over every episode of every seed, with a 95% Wilson score
  interval (it stays honest at 0% and 100% and for small N, where a normal
  or bootstrap interval collapses to a point);
* the across-seed spread: the success rate of each seed, their mean and
  sample standard deviation (and min..max), so run-to-run noise is visible
  next to the interval;
* with ``--runs-per-task k > 1``: the unbiased pass@k (solved at least once in
  k runs) and pass^k (solved in all k runs) over tasks;
* mean reward, mean env steps, invalid-action rate (steps the env rejected),
  format-failure rate (replies that broke the agent's format), generated
  tokens/s and env steps/s over the run's wall clock, and the wall time split
  into generate / env (waiting on envs) / other (agent, rendering).

Episodes whose env failed (``Trajectory.error``) count as attempted and not
won (an env that crashes on hard tasks cannot inflate success), and their
number is shown beside success (``err``). Success, interval, reward,
turns and env errors come from :func:`turngym.agents.evaluation.eval_record`,
the record the trainers' evaluations build too.

Outputs (``--out DIR``, default ``results/bench-<time>``): ``summary.json``
(configuration, versions, every row's statistics) and one file of
trajectories per (env, agent, model): JSONL (``--format jsonl``, the default:
one trajectory per line, each appended as its episode ends) or Parquet
(``--format parquet``: one row per trajectory, written when the run stops;
needs pyarrow, ``turngym[parquet]``); both hold the fields of
docs/trajectories.md. Ctrl-C stops the run; what finished is written and
summarized (marked ``interrupted``).

This module is a ``turngym`` CLI plugin: ``add_arguments(parser)`` and
``run(args)``. It imports no torch at module level.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from turngym.agents.evaluation import eval_record, pass_at_k, pass_hat_k
from turngym.files import write_text_atomic
from turngym.keyvalue import parse_key_values

#: the trajectory file formats of ``--format`` (docs/trajectories.md)
TRAJECTORY_FORMATS = ("jsonl", "parquet")

MODEL_OPTIONS = {
    "default": "the embedded SmolLM2-135M-Instruct on transformers (converted once, then offline)",
    "PATH or hf:PATH": "a local Hugging Face model folder or .gguf file on transformers (CPU or GPU)",
    "ORG/NAME[@REV]": "a Hugging Face Hub model from the HF cache (fetched unless HF_HUB_OFFLINE=1)",
    "vllm:PATH|default": "the same models on vLLM (GPU)",
    "openai:URL[#MODEL]": "any OpenAI-compatible server, e.g. openai:http://127.0.0.1:8000/v1",
}


# ---- CLI -------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from turngym.agents.context import CONTEXT_MODES
    from turngym.agents.factory import AGENTS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = ("examples:\n"
                     "  turngym bench --env turngym/Game24-v0 --agent react --episodes 8\n"
                     "  turngym bench --env turngym/Game24-v0 --agent oracle --agent random --seeds 3\n"
                     "  turngym bench --list")
    parser.add_argument("--list", action="store_true", help="list envs, agents, model options and context modes")
    parser.add_argument("--env", action="append", default=[], metavar="ID", help="env id (repeatable)")
    parser.add_argument("--agent", "--agents", action="append", default=[], metavar="NAME",
                        help=f"agent (repeatable): {', '.join(AGENTS)} (default: react); "
                             "for werewolf a seat lineup such as village=rule,wolves=random")
    parser.add_argument("--model", action="append", default=[], metavar="SPEC",
                        help="default | PATH | hf:PATH | vllm:PATH | openai:URL[#MODEL] (repeatable; default: default)")
    parser.add_argument("--episodes", "-n", type=int, default=8, help="tasks per seed (default 8)")
    parser.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1; 3+ for a spread)")
    parser.add_argument("--base-seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--runs-per-task", type=int, default=1, metavar="K",
                        help="rollouts of each task per seed; K > 1 adds pass@K and pass^K (default 1)")
    parser.add_argument("--split", default="test", help="task split (default test)")
    parser.add_argument("--out", default=None, metavar="DIR", help="output folder (default results/bench-<time>)")
    parser.add_argument("--format", default="jsonl", choices=TRAJECTORY_FORMATS,
                        help="trajectory files: jsonl (default; one line per episode as it ends) or parquet "
                             "(one row per episode, written when the run stops; needs turngym[parquet])")
    parser.add_argument("--context", default="window", choices=CONTEXT_MODES,
                        help="LLM agents' context mode (default window)")
    parser.add_argument("--window", type=int, default=4, help="turns kept in window mode (default 4)")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    parser.add_argument("--max-tokens", type=int, default=160, help="token budget of one reply (default 160)")
    parser.add_argument("--max-concurrent", type=int, default=16,
                        help="live episodes at once = the generate batch (default 16)")
    parser.add_argument("--max-steps", type=int, default=None, help="env steps per episode (default: the env's limit)")
    parser.add_argument("--pool", default="thread", choices=("thread", "process", "ray"),
                        help="env pool (default thread; ray needs turngym[ray])")
    parser.add_argument("--workers", type=int, default=None, help="env pool threads/processes")
    parser.add_argument("--schedule", default="auto", choices=("auto", "lockstep", "continuous"),
                        help="runner schedule: continuous batching (auto, where the engine has it) or lockstep turns")
    parser.add_argument("--overlap-env", action="store_true",
                        help="continuous schedule: decode while env steps run (faster with slow envs; batch shapes "
                             "then depend on timing, so results are reproducible only up to float rounding)")
    parser.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                        help="env constructor argument (repeatable)")
    parser.add_argument("--engine-kwarg", action="append", default=[], metavar="KEY=VALUE",
                        help="engine constructor argument, e.g. device=cuda (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--keep-prompts", action="store_true", help="store each step's chat messages too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.list:
        print_listing()
        return 0
    from turngym.envs import check_env_id
    from turngym.errors import TurngymError

    if not args.env:
        raise TurngymError("bench needs at least one --env (see `turngym bench --list`)")
    from turngym.benchmarks.werewolf_bench import is_werewolf_env

    trajectory_format = getattr(args, "format", "jsonl")
    if trajectory_format not in TRAJECTORY_FORMATS:
        raise TurngymError(f"--format {trajectory_format!r}: use one of {', '.join(TRAJECTORY_FORMATS)}")
    if trajectory_format == "parquet":  # before any model loads
        from turngym.errors import require

        if any(is_werewolf_env(e) for e in args.env):
            raise TurngymError("the Werewolf bench writes JSONL only: drop --format parquet")
        require("pyarrow", "parquet", "turngym bench --format parquet")
    if all(is_werewolf_env(e) for e in args.env):  # multi-agent: its own runner and statistics
        from turngym.benchmarks.werewolf_bench import run as run_werewolf

        return run_werewolf(args)
    for name, value in (("--episodes", args.episodes), ("--seeds", args.seeds), ("--runs-per-task", args.runs_per_task),
                        ("--max-concurrent", args.max_concurrent)):
        if value < 1:
            raise TurngymError(f"{name} must be >= 1, got {value}")
    envs = [check_env_id(e) for e in args.env]
    agents = args.agent or ["react"]
    models = args.model or ["default"]
    from turngym.agents.factory import make_agent

    for env_id in envs:  # fail on a bad agent name before loading any model
        for name in agents:
            make_agent(name, env_id, **_agent_options(name, args))

    out = Path(args.out or f"results/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    rows, interrupted = [], False
    config = {k: v for k, v in vars(args).items() if k not in ("func",)}
    for model in models:
        engine = None
        for env_id in envs:
            for name in agents:
                agent = make_agent(name, env_id, **_agent_options(name, args))
                if agent.uses_engine and engine is None:
                    engine = _load_engine(model, args)
                row, stopped = _bench_one(env_id, agent, engine if agent.uses_engine else None,
                                          model if agent.uses_engine else "-", args, out)
                rows.append(row)
                _write_summary(out, config, rows, interrupted=stopped)
                if stopped:
                    interrupted = True
                    break
            if interrupted:
                break
        engine = None
        if interrupted:
            break
    print()
    print(format_table(rows))
    print(f"\nwrote {out / 'summary.json'} and {len(rows)} trajectory file(s) in {out}/")
    if interrupted:
        print("interrupted: the numbers above cover the finished episodes only", file=sys.stderr)
        return 130
    return 0


def print_listing() -> None:
    import gymnasium as gym

    import turngym
    from turngym.agents.context import CONTEXT_MODES
    from turngym.agents.factory import AGENTS

    entries = turngym.registry()
    print("envs:")
    width = max((len(i) for i in entries), default=10)
    for env_id, entry in entries.items():
        if entry.kind != "gymnasium":
            continue
        spec = gym.registry.get(env_id)
        splits = ""
        try:
            env = turngym.make(env_id)
            sizes = env.unwrapped.splits()
            env.close()
            splits = "  [splits: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + "]"
        except Exception:
            pass
        steps = f"  max {spec.max_episode_steps} steps" if spec and spec.max_episode_steps else ""
        print(f"  {env_id:<{width}}  {entry.description}{steps}{splits}")
    print("\nagents (--agent):")
    for name, text in AGENTS.items():
        print(f"  {name:<8}  {text}")
    print("\nmodels (--model):")
    for name, text in MODEL_OPTIONS.items():
        print(f"  {name:<20}  {text}")
    print(f"\ncontext modes (--context): {', '.join(CONTEXT_MODES)}")


# ---- one (env, agent, model) ------------------------------------------------------------------------


def _agent_options(name: str, args: argparse.Namespace) -> dict[str, Any]:
    if name.strip().lower() in ("oracle", "random"):
        return {}
    return {"context": args.context, "window": args.window, "temperature": args.temperature, "top_p": args.top_p,
            "max_tokens": args.max_tokens}


def _load_engine(model: str, args: argparse.Namespace) -> Any:
    # Idle OpenMP threads sleep instead of spinning. Measured on a 2-core machine shared with other
    # jobs: SmolLM2-135M decoding with torch's 2 threads went from 0.7 to 9.6 tokens/s at batch 1
    # (6.4 -> 63.7 at batch 16). Must be set before torch loads; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from turngym.agents.engines import make_engine

    print(f"loading model {model!r} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    engine = make_engine(model, **parse_key_values(args.engine_kwarg, "--engine-kwarg"))
    print(f"loaded {getattr(engine, 'name', model)} in {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    return engine


def _slug(text: str) -> str:
    """A file-name-safe short name: "turngym/Game24-v0" -> "Game24-v0"."""
    last = text.rstrip("/").split("/")[-1] if text else ""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in last).strip("_") or "x"


def _bench_one(env_id: str, agent: Any, engine: Any, model: str, args: argparse.Namespace,
               out: Path) -> tuple[dict[str, Any], bool]:
    from turngym.agents.runner import EpisodeRunner, plan_episodes

    env_kwargs = parse_key_values(args.env_kwarg, "--env-kwarg")
    seeds = list(range(args.base_seed, args.base_seed + args.seeds))
    specs = []
    for seed in seeds:
        specs += plan_episodes(env_id, split=args.split, num_tasks=args.episodes, group_size=args.runs_per_task,
                               seed=seed, env_kwargs=env_kwargs, start_index=len(specs))
    label = f"{_slug(env_id)} {agent.name}" + (f" {_slug(model)}" if model != "-" else "")
    bar = _progress(len(specs), label, disable=args.no_progress)
    runner = EpisodeRunner(env_id, agent, engine, env_kwargs=env_kwargs, pool=args.pool, workers=args.workers,
                           max_concurrent=args.max_concurrent, max_steps=args.max_steps, schedule=args.schedule,
                           deterministic=not args.overlap_env,
                           keep_prompts=args.keep_prompts, model_name=getattr(engine, "name", model) if engine else "",
                           on_trajectory=bar.update_with, on_turn=bar.turn)
    parquet = getattr(args, "format", "jsonl") == "parquet"
    path = out / (f"{_slug(env_id)}__{agent.name}" + (f"__{_slug(model)}" if model != "-" else "")
                  + (".parquet" if parquet else ".jsonl"))
    try:
        result = runner.run(specs, out=None if parquet else path)  # JSONL: appended as each episode ends
    finally:
        bar.close()
    if parquet:  # the runner returns the finished episodes however it stopped (Ctrl-C included)
        from turngym.agents.types import save_trajectories_parquet

        save_trajectories_parquet(result.trajectories, path)
    row = summarize(result.trajectories, result.stats.to_dict(), seeds=seeds, runs_per_task=args.runs_per_task)
    row.update(env=env_id, agent=agent.name, model=getattr(engine, "name", model) if engine else "-",
               context=getattr(agent, "context_mode", "-") if agent.uses_engine else "-",
               split=args.split, planned_episodes=len(specs), trajectories=path.name,
               interrupted=result.stats.interrupted)
    return row, result.stats.interrupted


class _progress:
    """tqdm when available, else a counter on stderr."""

    def __init__(self, total: int, desc: str, disable: bool):
        self._bar = None
        self._done, self._won, self._total, self._desc, self._disable = 0, 0, total, desc, disable
        if disable:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit="ep", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            pass

    def update_with(self, traj: Any) -> None:
        self._done += 1
        self._won += bool(traj.won)
        if self._disable:
            return
        if self._bar is not None:
            self._bar.set_postfix(success=f"{self._won}/{self._done}", refresh=False)
            self._bar.update(1)
        else:
            print(f"\r{self._desc}: {self._done}/{self._total} episodes, {self._won} won", end="", file=sys.stderr,
                  flush=True)

    def turn(self, stats: Any) -> None:
        """After every batched turn: show that the run moves even before an episode ends."""
        if self._bar is not None and stats.generate_calls:
            self._bar.set_postfix(success=f"{self._won}/{self._done}", turns=stats.generate_calls,
                                  tok_s=f"{stats.tokens_per_s:.0f}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif not self._disable:
            print(file=sys.stderr)


# ---- statistics --------------------------------------------------------------------------------------


def summarize(trajectories: Sequence[Any], stats: dict[str, Any], seeds: Sequence[int] = (0,),
              runs_per_task: int = 1) -> dict[str, Any]:
    """The statistics of one (env, agent, model) run (see the module docstring)."""
    rec = eval_record(trajectories, seconds=stats.get("wall_s", 0.0))  # success, CI, reward, turns, env errors
    ok = [t for t in trajectories if t.error is None]
    per_seed: dict[int, list[bool]] = defaultdict(list)
    for t in trajectories:  # attempted episodes, as the record's success rate
        per_seed[t.meta.get("plan_seed", 0)].append(bool(t.won) and t.error is None)
    seed_rates = [sum(v) / len(v) for _, v in sorted(per_seed.items()) if v]
    mean_seed = sum(seed_rates) / len(seed_rates) if seed_rates else float("nan")
    sd_seed = (math.sqrt(sum((r - mean_seed) ** 2 for r in seed_rates) / (len(seed_rates) - 1))
               if len(seed_rates) > 1 else float("nan"))
    acted = [s for t in ok for s in t.steps if s.info.get("kind", "act") == "act"]
    invalid = sum(1 for s in acted if not s.action_valid)
    format_fail = sum(1 for s in acted if s.info.get("format_ok") is False)
    row: dict[str, Any] = {
        "episodes": rec.episodes,
        "errors": rec.env_errors,
        "error_examples": rec.error_examples,
        "successes": rec.successes,
        "success_rate": rec.success_rate,
        "ci95": [rec.ci_low, rec.ci_high],
        "ci_method": "wilson",
        "seeds": list(seeds),
        "success_by_seed": seed_rates,
        "seed_mean": mean_seed,
        "seed_sd": sd_seed,
        "mean_reward": rec.reward_mean,
        "mean_turns": rec.turns_mean,
        "invalid_action_rate": invalid / len(acted) if acted else float("nan"),
        "format_failure_rate": format_fail / len(acted) if acted else float("nan"),
        "env_steps": stats.get("env_steps", 0),
        "generated_tokens": stats.get("generated_tokens", 0),
        "tokens_per_s": stats.get("tokens_per_s", 0.0),
        "env_steps_per_s": stats.get("env_steps_per_s", 0.0),
        "wall_s": stats.get("wall_s", 0.0),
        "generate_s": stats.get("generate_s", 0.0),
        "env_s": stats.get("env_wait_s", 0.0),
        "other_s": stats.get("other_s", 0.0),
        "run_stats": stats,
    }
    if runs_per_task > 1:
        groups: dict[str, list[bool]] = defaultdict(list)
        for t in ok:
            groups[t.group_id].append(bool(t.won))
        full = [v for v in groups.values() if len(v) >= runs_per_task]
        k = runs_per_task
        row[f"pass@{k}"] = sum(pass_at_k(len(v), sum(v), k) for v in full) / len(full) if full else float("nan")
        row[f"pass^{k}"] = sum(pass_hat_k(len(v), sum(v), k) for v in full) / len(full) if full else float("nan")
        row["pass_k"] = k
    return row


# ---- output ------------------------------------------------------------------------------------------


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: float) -> str:
    return "-" if _nan(x) else f"{100 * x:.1f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text comparison table, one line per (env, agent, model)."""
    headers = ["env", "agent", "model", "n", "success % [95% CI]", "seed sd", "reward", "turns", "invalid %",
               "err", "tok/s", "steps/s", "gen s", "env s"]
    k = next((r["pass_k"] for r in rows if "pass_k" in r), None)
    if k:
        headers[6:6] = [f"pass@{k}", f"pass^{k}"]
    lines = []
    for r in rows:
        lo, hi = r["ci95"]
        cells = [
            _slug(r["env"]), r["agent"] + ("*" if r.get("interrupted") else ""),
            _short_model(r["model"]), str(r["episodes"]),
            f"{_pct(r['success_rate'])} [{_pct(lo)}, {_pct(hi)}]",
            "-" if _nan(r["seed_sd"]) else f"{100 * r['seed_sd']:.1f}",
            "-" if _nan(r["mean_reward"]) else f"{r['mean_reward']:.2f}",
            "-" if _nan(r["mean_turns"]) else f"{r['mean_turns']:.1f}",
            _pct(r["invalid_action_rate"]), str(r["errors"]),
            f"{r['tokens_per_s']:.0f}" if r["generated_tokens"] else "-",
            f"{r['env_steps_per_s']:.1f}", f"{r['generate_s']:.1f}", f"{r['env_s']:.1f}",
        ]
        if k:
            cells[6:6] = [_pct(r.get(f"pass@{k}", float("nan"))), _pct(r.get(f"pass^{k}", float("nan")))]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in lines]
    seeds = rows[0]["seeds"] if rows else []
    out.append(f"n = episodes over {len(seeds)} seed(s) (env errors included as not won, counted in err); CI: Wilson 95%; "
               "seed sd: spread of per-seed success (needs >= 2 seeds); * = interrupted")
    return "\n".join(out)


def _short_model(name: str) -> str:
    return name if len(name) <= 28 else "..." + name[-25:]


def _versions() -> dict[str, Any]:
    import turngym

    out = {"turngym": turngym.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count()}
    for mod in ("torch", "transformers", "vllm", "gymnasium", "numpy"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "?")
    return out


def _write_summary(out: Path, config: dict[str, Any], rows: list[dict[str, Any]], interrupted: bool) -> None:
    payload = {"config": config, "versions": _versions(), "interrupted": interrupted,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": rows}
    text = json.dumps(_finite(payload), indent=2, default=str)
    write_text_atomic(out / "summary.json", text + "\n")


def _finite(value: Any) -> Any:
    """NaN/inf -> None, so summary.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
