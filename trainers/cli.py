"""``turngym train``, ``sft``, ``eval`` and ``plot`` (command-line plugins of :mod:`turngym.cli`).

    turngym train RECIPE [KEY=VALUE ...] [--resume] [--help-config] [--print-config]
    turngym sft RECIPE [KEY=VALUE ...] [--print-config]

RECIPE is a YAML file (configs/grpo_blocksworld.yaml) or the name of a recipe shipped with turngym
(grpo_blocksworld).
    turngym eval RUN_DIR [--checkpoint PATH] [--split test] [--tasks 100] [KEY=VALUE ...] [--out eval.json]
    turngym plot RUN_DIR [--out curves.png]

Heavy imports (torch, transformers) happen inside ``run``, so building the
parser stays fast.
"""

from __future__ import annotations

import argparse
import json


def _config_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("recipe", nargs="?", help="YAML recipe: a file or the name of one shipped with turngym "
                        f"(e.g. gigpo_blocksworld, see configs/); omit to use the {what} defaults")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides typed by their key, e.g. algo.clip_high=0.28 agent.options.window=2 "
                             "'run.dir=runs/${env.id}'; +KEY=VALUE adds a key to a free mapping (agent.options, "
                             "env.kwargs, ...)")
    parser.add_argument("--help-config", action="store_true", help="print every config key with its help and exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (recipe, overrides, interpolations) as YAML and exit")


def _split(recipe: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    # `turngym train algo.lr=1` (no recipe): the first positional is an override.
    if recipe is not None and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        return None, [recipe, *overrides]
    return recipe, list(overrides)


class Train:
    """Train an LLM agent on a turngym env with multi-turn RL (GRPO, GiGPO, ... from turngym.credit).

    The run directory (run.dir) gets metrics.jsonl, TensorBoard events, config.yaml and checkpoints;
    `--resume` continues a killed run from its newest checkpoint with the same results.
    """

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        _config_args(parser, "RLConfig")
        parser.add_argument("--resume", action="store_true",
                            help="continue from the newest checkpoint in run.dir (bit-for-bit on CPU)")
        parser.add_argument("--dry-run", action="store_true",
                            help="validate the config for a cluster and print the world layout, memory per rank and "
                                 "the launch command, on CPU, without building anything (with --nodes, --gpus-per-node)")
        parser.add_argument("--nodes", type=int, default=1, help="nodes of the --dry-run layout")
        parser.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node of the --dry-run layout")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from turngym.trainers.config import RLConfig, describe, dump_yaml, load_config

        if args.help_config:
            print(describe(RLConfig))
            return 0
        recipe, overrides = _split(args.recipe, args.overrides)
        config = load_config(RLConfig, recipe, overrides)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        if args.dry_run:
            from turngym.trainers.dryrun import dry_run, render

            print(render(dry_run(config, args.nodes, args.gpus_per_node)))
            return 0
        from turngym.trainers.rl import RLTrainer

        trainer = RLTrainer(config, resume=args.resume)
        result = trainer.train()
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if not kk.startswith("time")} for k, v in result.items()},
                         indent=2))
        print(f"run directory: {config.run.dir} (plot it: turngym plot {config.run.dir})")
        from turngym.trainers.distributed import end_rank

        end_rank(0)  # under torchrun: leave past gloo's exit-time aborts (returns in a single process)
        return 0


class SFT:
    """Supervised fine-tuning on oracle (or recorded) trajectories in the agent's own format: an RL warm start."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        _config_args(parser, "SFTConfig")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from turngym.trainers.config import SFTConfig, describe, dump_yaml, load_config

        if args.help_config:
            print(describe(SFTConfig))
            return 0
        recipe, overrides = _split(args.recipe, args.overrides)
        config = load_config(SFTConfig, recipe, overrides)
        if args.print_config:
            print(dump_yaml(config), end="")
            return 0
        from turngym.trainers.sft import SFTTrainer

        result = SFTTrainer(config).train()
        print(json.dumps(result, indent=2))
        print(f"start RL from it: turngym train RECIPE model.path={result['checkpoint']}")
        return 0


class Eval:
    """Evaluate a training run's checkpoint exactly as the trainer's own evaluation does.

    The run's saved config.yaml gives the env, agent, prompt options, eval split and sampling
    (greedy by default); the checkpoint (default: the newest in RUN_DIR) gives the weights. Prints
    the eval record (success with its 95% Wilson interval, reward, turns); nothing in RUN_DIR changes.
    For other agents, models or several envs use `turngym bench`.
    """

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", help="a run directory of `turngym train` (holds config.yaml and checkpoints)")
        parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                            help="config overrides, e.g. run.eval_temperature=0.7 env.eval_split=test")
        parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the newest in RUN_DIR)")
        parser.add_argument("--split", default=None, help="task split (default: the run's env.eval_split)")
        parser.add_argument("--tasks", type=int, default=None, help="number of tasks (default: the run's run.eval_tasks)")
        parser.add_argument("--out", default=None, help="also write the record to this JSON file")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import tempfile
        from pathlib import Path

        from turngym.errors import TurngymError
        from turngym.trainers.config import RLConfig, load_config
        from turngym.trainers.runlog import latest_checkpoint, write_atomic

        run_dir = Path(args.run_dir)
        if not (run_dir / "config.yaml").is_file():
            raise TurngymError(f"{run_dir} has no config.yaml: give the run directory of a `turngym train` run")
        checkpoint = Path(args.checkpoint) if args.checkpoint else latest_checkpoint(run_dir)
        if checkpoint is None or not checkpoint.is_dir():
            raise TurngymError(f"no checkpoint to evaluate in {run_dir} (give one with --checkpoint RUN_DIR/checkpoint-N)")
        if args.tasks is not None and args.tasks < 1:
            raise TurngymError(f"--tasks {args.tasks}: needs at least 1 task")
        from turngym.trainers.rl import RLTrainer

        with tempfile.TemporaryDirectory(prefix="turngym-eval-") as scratch:
            config = load_config(RLConfig, run_dir / "config.yaml", [
                f"model.path={checkpoint}", "model.lora=false", f"run.dir={scratch}", "run.tensorboard=false",
                "run.wandb=false", "run.mlflow=false", "run.save_rollouts=false",
                "run.progress=false", *args.overrides])
            trainer = RLTrainer(config)
            try:
                record = trainer.evaluate(args.split, args.tasks)
            finally:
                trainer.log.close()
        record = {"checkpoint": str(checkpoint), **{k: v for k, v in record.items() if k != "iteration"}}
        text = json.dumps(record, indent=2)
        if args.out:
            write_atomic(Path(args.out), text + "\n")
        print(text)
        return 0


class Plot:
    """Draw a run's learning curves (success, reward, entropy, KL, clip fraction, ...) to a PNG."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", help="a run directory (holds metrics.jsonl)")
        parser.add_argument("--out", default=None, help="output PNG (default RUN_DIR/curves.png)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from turngym.trainers.runlog import plot_run

        print(plot_run(args.run_dir, args.out))
        return 0
