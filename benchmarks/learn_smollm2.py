"""Does the embedded SmolLM2-135M-Instruct learn? Success before/after SFT and RL on held-out tasks, on CPU.

    python -m turngym.benchmarks.learn_smollm2 --minutes 20
    python -m turngym.benchmarks.learn_smollm2 --recipe configs/gigpo_blocksworld.yaml --lora --minutes 30

Phases (each evaluated greedily on the same held-out tasks, Wilson 95% CIs):

0. the model as shipped;
1. optional SFT warm start on oracle plans in the agent's format (``--sft-episodes``; 0 skips it);
2. RL with the recipe (GRPO by default) for a wall-clock budget (``--minutes``).

Default task family: BlocksWorld with 3-4 blocks and 2-step optimal plans
(``env.kwargs={num_blocks: [3, 4], plan_length: 2}``): train and test tasks are
generated from disjoint seeds. Writes ``OUT/results.json``, the RL run's
``metrics.jsonl`` and ``OUT/curves.png`` (learning curves), and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _fmt(rec: dict) -> str:
    return (f"{rec['success_rate'] * 100:5.1f}%  [{rec['ci_low'] * 100:4.1f}, {rec['ci_high'] * 100:4.1f}]  "
            f"(n={rec['episodes']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="configs/grpo_blocksworld.yaml")
    p.add_argument("--minutes", type=float, default=20.0, help="RL wall-clock budget")
    p.add_argument("--sft-episodes", type=int, default=32, help="oracle episodes for the warm start (0: none)")
    p.add_argument("--sft-epochs", type=int, default=2)
    p.add_argument("--sft-lr", type=float, default=None, help="SFT learning rate (default 5e-5, 5e-4 with --lora)")
    p.add_argument("--eval-tasks", type=int, default=30)
    p.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    p.add_argument("--out", default="results/learn_smollm2")
    p.add_argument("overrides", nargs="*", help="recipe overrides KEY=VALUE")
    args = p.parse_args(argv)

    from turngym.threads import configure

    configure()  # OpenMP's settings, before torch loads
    import torch

    from turngym.trainers.config import RLConfig, SFTConfig, load_config
    from turngym.trainers.model import load_policy
    from turngym.trainers.rl import RLTrainer
    from turngym.trainers.runlog import plot_run
    from turngym.trainers.sft import SFTTrainer

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = ["env.kwargs={num_blocks: [3, 4], plan_length: 2}", "env.split=train", "env.eval_split=test",
                 "env.max_steps=6", f"run.eval_tasks={args.eval_tasks}", f"run.dir={out / 'rl'}", "run.eval_every=0",
                 "run.save_every=1000", "run.iterations=1000", *args.overrides]
    if args.lora:
        overrides += ["model.lora=true", "optim.lr=2e-4"]
    cfg = load_config(RLConfig, args.recipe, overrides)
    torch.manual_seed(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    model, tok = load_policy(replace_lora(cfg.model, False))
    results: dict = {"recipe": args.recipe, "overrides": overrides, "lora": args.lora, "minutes": args.minutes,
                     "torch_threads": torch.get_num_threads()}

    trainer = RLTrainer(cfg, model=model, tokenizer=tok)
    results["before"] = trainer.evaluate()
    print("before:      ", _fmt(results["before"]), flush=True)

    if args.sft_episodes:
        sft_cfg = load_config(SFTConfig, None, [
            f"env.id={cfg.env.id}", f"env.split={cfg.env.split}", f"env.eval_split={cfg.env.eval_split}",
            f"env.kwargs={json.dumps(cfg.env.kwargs)}", f"env.max_steps={cfg.env.max_steps}",
            f"agent.name={cfg.agent.name}", f"agent.options={json.dumps(cfg.agent.options)}",
            f"data.episodes={args.sft_episodes}", f"data.epochs={args.sft_epochs}",
            f"optim.lr={args.sft_lr or (5e-4 if args.lora else 5e-5)}",
            f"run.dir={out / 'sft'}", "run.eval_tasks=0", f"run.seed={cfg.run.seed}"])
        t0 = time.perf_counter()
        sft = SFTTrainer(sft_cfg, model=trainer.model, tokenizer=tok)
        sft_result = sft.train()
        results["sft_seconds"] = time.perf_counter() - t0
        results["after_sft"] = trainer.evaluate()
        results["sft_samples"] = sft_result["samples"]
        print("after SFT:   ", _fmt(results["after_sft"]), f"({results['sft_seconds']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    iters = 0
    while time.perf_counter() - t0 < args.minutes * 60:
        rec = trainer.iteration()
        iters += 1
        print(f"  RL iter {rec['iteration']:3d}: train success {rec['success_rate']:.2f}  reward {rec['reward_mean']:.2f}  "
              f"entropy {rec.get('entropy', float('nan')):.3f}  {rec['time_total']:.0f} s", flush=True)
    results["rl_seconds"] = time.perf_counter() - t0
    results["rl_iterations"] = iters
    results["after_rl"] = trainer.evaluate()
    print("after RL:    ", _fmt(results["after_rl"]), f"({iters} iterations, {results['rl_seconds']:.0f} s)", flush=True)
    trainer.log.close()
    try:
        results["curves"] = str(plot_run(out / "rl", out / "curves.png"))
    except Exception as exc:  # noqa: BLE001 (no matplotlib: the numbers are still there)
        results["curves"] = f"not drawn: {exc}"
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'results.json'}")
    return 0


def replace_lora(model_cfg, lora: bool):
    # The policy is loaded without LoRA; the trainer wraps it when the config asks for it.
    from dataclasses import replace

    return replace(model_cfg, lora=lora)


if __name__ == "__main__":
    raise SystemExit(main())
