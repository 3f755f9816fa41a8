"""The ``turngym`` command line: one console script, one subcommand per job.

    turngym envs [--json]                 list the registered environments
    turngym play ENV_ID [--oracle]        play an env in the terminal (or watch the oracle)
    turngym check ENV_ID|all              run turngym's env checker

Later layers add subcommands as plugins: a module with ``add_arguments(parser)``
and ``run(args) -> int`` (or ``"module:Object"`` naming an object that has
them) listed in ``_PLUGINS`` (imported when the parser is
built, so keep those modules free of heavy imports at the top). This module
may import every layer; nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import turngym
from turngym.errors import TurngymError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Command] = {}


def _command(name: str) -> Callable[[Command], Command]:
    def wrap(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return wrap


# ---- envs ------------------------------------------------------------------------------------


@_command("envs")
def cmd_envs(args: argparse.Namespace) -> int:
    entries = turngym.registry()
    if args.json:
        import gymnasium as gym

        rows = []
        for env_id, entry in entries.items():
            spec = gym.registry.get(env_id)
            rows.append({"id": env_id, "kind": entry.kind, "description": entry.description,
                         "max_episode_steps": spec.max_episode_steps if spec else None})
        print(json.dumps(rows, indent=2))
        return 0
    width = max((len(i) for i in entries), default=10)
    for env_id, entry in entries.items():
        print(f"{env_id:<{width}}  {entry.description}")
    return 0


# ---- play ------------------------------------------------------------------------------------

_PLAY_HELP = """Type an action and press Enter. When actions are listed you may type their number.
Commands: :hint (the oracle's move)  :actions (list admissible actions)  :reset  :quit"""


def _show(text: str, prefix: str = "") -> None:
    for line in text.splitlines() or [""]:
        print(prefix + line)


def _list_actions(info: dict[str, Any], limit: int) -> None:
    actions = info.get("admissible_actions")
    if not actions:
        return
    print(f"Admissible actions ({len(actions)}):")
    for i, action in enumerate(actions[:limit], 1):
        print(f"  {i:>2}. {action}")
    if len(actions) > limit:
        print(f"  ... and {len(actions) - limit} more (:actions lists all)")


@_command("play")
def cmd_play(args: argparse.Namespace) -> int:
    from turngym.envs.werewolf import is_werewolf_id
    from turngym.keyvalue import parse_key_values

    if is_werewolf_id(args.env_id):  # multi-agent: a seat against bots (turngym.envs.werewolf.play)
        from turngym.envs.werewolf.play import play_terminal

        return play_terminal(seat=args.seat, seed=args.seed, config=parse_key_values(args.kwarg, "--kwarg"))
    env = turngym.make(args.env_id, **parse_key_values(args.kwarg, "--kwarg"))
    options: dict[str, Any] = {"task_id": args.task_id} if args.task_id else {}
    obs, info = env.reset(seed=args.seed, options=options or None)
    print(f"== {args.env_id}  task {info['task_id']} ==")
    url = getattr(env.unwrapped, "url", None)  # a web env (WebShop's browser mode): the page's address
    if url:
        print(f"Open {url} in your browser to see the page (each action prints the next page's address).")
    if not args.oracle:
        print(_PLAY_HELP)
    print()
    _show(obs)
    _list_actions(info, args.max_listed)
    total, turns = 0.0, 0
    while True:
        if args.oracle:
            action = env.unwrapped.oracle_action()
            print(f"> {action}")
        else:
            try:
                action = input("> ")
            except EOFError:
                print()
                break
            command = action.strip()
            if command in (":quit", ":q"):
                break
            if command == ":hint":
                print(f"hint: {env.unwrapped.oracle_action()}")
                continue
            if command == ":actions":
                _list_actions(info, 10_000)
                continue
            if command == ":reset":
                obs, info = env.reset(options=options or None)
                total, turns = 0.0, 0
                _show(obs)
                _list_actions(info, args.max_listed)
                continue
            actions = info.get("admissible_actions") or []
            if command.isdigit() and 1 <= int(command) <= len(actions):
                action = actions[int(command) - 1]
                print(f"> {action}")
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        turns += 1
        _show(obs)
        if url:
            print(f"page: {env.unwrapped.url}")
        flags = [] if info["action_valid"] else ["invalid action"]
        if "progress" in info:
            flags.append(f"progress {info['progress']:.2f}")
        print(f"[reward {reward:g}{''.join(', ' + f for f in flags)}]")
        if terminated or truncated:
            outcome = "WON" if info["won"] else ("truncated" if truncated else "lost")
            print(f"== episode over: {outcome} after {turns} turns, return {total:g} ==")
            return 0 if (info["won"] or not args.oracle) else 1
        _list_actions(info, args.max_listed)
    return 0


# ---- check -----------------------------------------------------------------------------------


@_command("check")
def cmd_check(args: argparse.Namespace) -> int:
    from turngym.envs import registry
    from turngym.envs.check import EnvCheckError, check_env
    from turngym.errors import MissingDependencyError

    # "all" leaves out remote clients (turngym/Remote-v0): they need a server's url
    ids = [i for i, e in registry().items() if e.kind != "remote"] if args.env_id == "all" else [args.env_id]
    failed = 0
    for env_id in ids:
        try:
            report = check_env(env_id, seed=args.seed, episodes=args.episodes, junk=args.junk)
        except EnvCheckError as exc:
            if args.env_id == "all" and isinstance(exc.__cause__, MissingDependencyError):
                print(f"skip {env_id}: {exc.__cause__}")  # an optional stack not installed here
                continue
            failed += 1
            print(f"FAIL {env_id}: {exc}")
            continue
        took = sum(report.checks.values())
        print(f"ok   {env_id}: {len(report.checks)} checks in {took:.1f}s; {report.junk_actions} junk actions "
              f"({report.random_junk_actions} random): 0 exceptions, 0 state changes ({report.junk_rule})")
        for note in report.notes:
            print(f"     note: {note}")
    return 1 if failed else 0


# ---- plugins: subcommands that live with their layer ----------------------------------------

#: subcommand -> (module with add_arguments(parser) and run(args), help line)
_PLUGINS: dict[str, tuple[str, str]] = {
    "bench": ("turngym.benchmarks.bench", "evaluate agents on envs with honest statistics"),
    "serve": ("turngym.agents.serve", "serve an engine over an OpenAI-compatible HTTP API"),
    "serve-env": ("turngym.envs.remote", "serve envs over HTTP for turngym/Remote-v0 clients on other hosts"),
    "serve-retriever": ("turngym.envs.search.server", "serve a Search env retriever over a Search-R1-compatible HTTP API"),
    "swe": ("turngym.envs.swe.generate", "generate SWE bug-fixing tasks from PyPI sdists and check them with the oracle"),
    "train": ("turngym.trainers.cli:Train", "train an LLM agent with multi-turn RL from a YAML recipe"),
    "sft": ("turngym.trainers.cli:SFT", "supervised warm start on oracle or recorded trajectories"),
    "eval": ("turngym.trainers.cli:Eval", "evaluate a training run's checkpoint as the trainer does"),
    "plot": ("turngym.trainers.cli:Plot", "draw a run's learning curves to PNG"),
    "export": ("turngym.export", "convert trajectories to HF datasets, TRL SFT/DPO or verl parquet"),
}


def _add_plugins(sub: Any) -> None:
    import importlib

    for name, (module_name, help_line) in _PLUGINS.items():
        module_name, _, attr = module_name.partition(":")  # "pkg.module:Obj": an object with the two functions
        module = importlib.import_module(module_name)
        if attr:
            module = getattr(module, attr)
        parser = sub.add_parser(name, help=help_line, description=(module.__doc__ or help_line).strip().split("\n\n")[0])
        module.add_arguments(parser)
        _COMMANDS[name] = module.run


# ---- entry point -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="turngym",
        description="Multi-turn text environments and tools to train LLM agents on them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent("""\
            examples:
              turngym envs
              turngym play turngym/Game24-v0 --seed 3
              turngym play turngym/BlocksWorld-v0 --oracle
              turngym check all"""),
    )
    parser.add_argument("--version", action="version", version=f"turngym {turngym.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("envs", help="list the registered environments")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("play", help="play an environment in the terminal")
    p.add_argument("env_id", help="e.g. turngym/Game24-v0 (see `turngym envs`)")
    p.add_argument("--seed", type=int, default=None, help="seed of the task sampler")
    p.add_argument("--task-id", default=None, help="a task id such as test/17 (overrides --seed)")
    p.add_argument("--oracle", action="store_true", help="let the oracle play and print the transcript")
    p.add_argument("--kwarg", action="append", default=[], metavar="KEY=VALUE", help="env constructor argument (repeatable)")
    p.add_argument("--max-listed", type=int, default=12, help="how many admissible actions to list")
    p.add_argument("--seat", type=int, default=1, help="werewolf: the seat you play (1..N); bots take the others")

    p = sub.add_parser("check", help="run turngym's environment checker")
    p.add_argument("env_id", help="an env id, or 'all'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=4)
    p.add_argument("--junk", type=int, default=100, help="seeded random junk actions per env, on top of the fixed list")

    _add_plugins(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from turngym.threads import configure

    configure()  # OpenMP's settings, before any subcommand imports torch
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args.command](args)
    except TurngymError as exc:
        print(f"turngym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
