"""``turngym train``, ``turngym sft`` and ``turngym plot`` (command-line plugins of :mod:`turngym.cli`).

    turngym train configs/grpo_blocksworld.yaml [KEY=VALUE ...] [--resume] [--help-config]
    turngym sft configs/sft_blocksworld.yaml [KEY=VALUE ...]
    turngym plot RUN_DIR [--out curves.png]

Heavy imports (torch, transformers) happen inside ``run``, so building the
parser stays fast.
"""

from __future__ import annotations

import argparse
import json


def _config_args(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("recipe", nargs="?", help=f"YAML recipe (see configs/); omit to use the {what} defaults")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides with YAML values, e.g. algo.clip_high=0.28 rollout.group_size=8")
    parser.add_argument("--help-config", action="store_true", help="print every config key with its help and exit")


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

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from turngym.trainers.config import RLConfig, describe, load_config

        if args.help_config:
            print(describe(RLConfig))
            return 0
        recipe, overrides = _split(args.recipe, args.overrides)
        config = load_config(RLConfig, recipe, overrides)
        from turngym.trainers.rl import RLTrainer

        trainer = RLTrainer(config, resume=args.resume)
        result = trainer.train()
        print(json.dumps({k: {kk: vv for kk, vv in v.items() if not kk.startswith("time")} for k, v in result.items()},
                         indent=2))
        print(f"run directory: {config.run.dir} (plot it: turngym plot {config.run.dir})")
        return 0


class SFT:
    """Supervised fine-tuning on oracle (or recorded) trajectories in the agent's own format: an RL warm start."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        _config_args(parser, "SFTConfig")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from turngym.trainers.config import SFTConfig, describe, load_config

        if args.help_config:
            print(describe(SFTConfig))
            return 0
        recipe, overrides = _split(args.recipe, args.overrides)
        config = load_config(SFTConfig, recipe, overrides)
        from turngym.trainers.sft import SFTTrainer

        result = SFTTrainer(config).train()
        print(json.dumps(result, indent=2))
        print(f"start RL from it: turngym train RECIPE model.path={result['checkpoint']}")
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
