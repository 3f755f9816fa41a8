"""Trainer throughput: turngym's RL trainer vs TRL's GRPOTrainer, same model, batch and lengths, back to back.

    python -m turngym.benchmarks.trl_compare --steps 6

What is held equal (``shared/research/trl-comparison.md``): SmolLM2-135M-Instruct
in float32, full fine-tuning, 1 prompt x 8 samples per step, one optimizer
step per generation, no gradient accumulation, up to 64 new tokens at
temperature 1.0 (no top-k/top-p), stop at ``<|im_end|>``, SmolLM2's chat
template with its default system prompt, beta = 0 (no reference model),
learning rate 1e-6 with AdamW and gradient-norm clipping, no gradient
checkpointing, TRL without vLLM, seed 0, the same torch thread count.

The task is one chat prompt ("Name a colour of the sky on a clear day.")
whose reward is 1 when the reply says "blue": a reward the model sometimes
earns, so the weights move and replicate samples differ.

Token accounting, per step: unpadded prompt tokens (once per sample) +
completion tokens up to and including the first EOS, divided by the step's
wall time; step 1 (warm-up) is dropped. Also reported: seconds per step and
completion tokens per step. turngym's step is a whole trainer iteration
(rollout through its batched runner + log-prob + update), TRL's a
``Trainer`` step (generate + loss + backward + AdamW). Results go to
``results/trl_compare.json`` (and print as a table with the ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

PROMPT = "Name a colour of the sky on a clear day."
ENV_ID = "turngym-bench/OnePrompt-v0"


def reward_text(text: str) -> float:
    return 1.0 if "blue" in text.lower() else 0.0


def _register_env() -> str:
    import gymnasium as gym

    from turngym.envs.core import TextEnv, Transition

    class OnePromptEnv(TextEnv):
        """One prompt, one graded reply."""

        def splits(self) -> dict[str, int]:
            return {"train": 1, "test": 1}

        def load_task(self, split: str, index: int) -> dict[str, Any]:
            return {"prompt": PROMPT}

        def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
            return {"prompt": str(task["prompt"])}

        def _start(self, task: dict[str, Any]) -> str:
            self._won = False
            self._done = False
            return task["prompt"]

        @property
        def instruction(self) -> str:
            return PROMPT

        def _apply(self, action: str) -> Transition:
            r = reward_text(action)
            self._won, self._done = r > 0, True
            return Transition("done", valid=True, reward=r, terminated=True)

        @property
        def won(self) -> bool:
            return self._won

        def state_key(self) -> str:
            return f"done={self._done}"

        def _get_state(self) -> Any:
            return {"won": self._won, "done": self._done}

        def _set_state(self, state: Any) -> None:
            self._won, self._done = bool(state["won"]), bool(state["done"])

    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=OnePromptEnv, max_episode_steps=1)
    return ENV_ID


def run_turngym(model_path: Path, steps: int, seed: int, out_dir: Path,
                overrides: list[str] = ()) -> list[dict[str, float]]:
    from turngym.trainers.config import RLConfig, load_config
    from turngym.trainers.rl import RLTrainer

    env_id = _register_env()
    cfg = load_config(RLConfig, None, [
        f"model.path={model_path}", "model.dtype=float32", f"env.id={env_id}", "env.eval_split=train",
        "agent.name=chat", "agent.temperature=1.0", "agent.max_tokens=64", "rollout.tasks_per_iter=1",
        "rollout.group_size=8", "rollout.max_concurrent=8", "algo.estimator=grpo", "algo.kl_coef=0.0",
        "algo.clip_high=0.2", "algo.loss_agg_mode=token-mean", "optim.lr=1e-6", "optim.max_grad_norm=1.0",
        f"optim.micro_batch_tokens={8 * 256}", f"run.iterations={steps}", "run.eval_tasks=0", "run.save_every=100000",
        f"run.seed={seed}", f"run.dir={out_dir / 'turngym'}", "run.progress=false", "run.tensorboard=false",
        *overrides])
    trainer = RLTrainer(cfg)
    rows = []
    for _ in range(steps):
        rec = trainer.iteration()
        rows.append({"seconds": rec["time_total"], "prompt_tokens": rec["prompt_tokens"],
                     "completion_tokens": rec["generated_tokens"], "reward": rec["reward_mean"],
                     "generate_s": rec["time_generate"], "update_s": rec["time_credit_update"]})
    return rows


def run_trl(model_path: Path, steps: int, seed: int, out_dir: Path, bf16: bool = False) -> list[dict[str, float]]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, local_files_only=True, dtype=torch.float32)
    messages = [{"role": "user", "content": PROMPT}]
    prompt_len = len(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    counts: list[dict[str, float]] = []

    def reward(completions, completion_ids=None, **_: Any) -> list[float]:
        n = 0
        for ids in completion_ids or []:
            ids = list(ids)
            n += (ids.index(eos) + 1) if eos in ids else len(ids)
        counts.append({"completion_tokens": n, "prompt_tokens": prompt_len * len(completions)})
        return [reward_text(c[-1]["content"] if isinstance(c, list) else str(c)) for c in completions]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    data = Dataset.from_dict({"prompt": [messages] * (steps * 8)})
    config = GRPOConfig(
        output_dir=str(out_dir / "trl"), num_generations=8, per_device_train_batch_size=8, steps_per_generation=1,
        gradient_accumulation_steps=1, max_completion_length=64, temperature=1.0, top_p=1.0, top_k=0, beta=0.0,
        learning_rate=1e-6, max_grad_norm=1.0, bf16=bf16, fp16=False, gradient_checkpointing=False, use_vllm=False,
        max_steps=steps, logging_steps=1, report_to=[], seed=seed, use_cpu=True, save_strategy="no",
        disable_tqdm=True)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=reward, args=config, train_dataset=data,
                          callbacks=[Clock()])
    trainer.train()
    return [{"seconds": t, **c} for t, c in zip(times, counts)]


def _load() -> list[float]:
    """The machine's load averages: a busy second core slows 2-thread runs many times over."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    rows = rows[1:] if len(rows) > 1 else rows  # drop the warm-up step
    secs = [r["seconds"] for r in rows]
    tokens = [r["prompt_tokens"] + r["completion_tokens"] for r in rows]
    return {"steps": len(rows), "seconds_per_step": statistics.mean(secs),
            "tokens_per_s": sum(tokens) / sum(secs),
            "completion_tokens_per_step": statistics.mean(r["completion_tokens"] for r in rows),
            "completion_tokens_per_s": sum(r["completion_tokens"] for r in rows) / sum(secs),
            # turngym's split of the step (rollout's generate calls; credit + log-probs + update)
            **{k: statistics.mean(r[k] for r in rows) for k in ("generate_s", "update_s") if k in rows[0]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/trl_compare")
    p.add_argument("--only", choices=["turngym", "trl"], default=None)
    p.add_argument("--model", default="default",
                   help="default (the embedded SmolLM2-135M-Instruct), a local HF folder, or a Hub id ORG/NAME[@REV]")
    p.add_argument("--bf16", action="store_true",
                   help="a second, labelled comparison: bf16 in both, fp32 weights (turngym: bf16 autocast in the "
                        "update and sampling from a bf16 copy, model.autocast=bfloat16 rollout.dtype=bfloat16; TRL: "
                        "bf16=True); the held-equal comparison is float32 in both")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override of the turngym run (repeatable), e.g. optim.share_prefix=false; "
                        "a result that is not the held-equal setting says so in its 'overrides'")
    args = p.parse_args(argv)

    from turngym.threads import configure

    configure()  # OpenMP's settings, before torch loads
    import torch
    import transformers

    from turngym.agents.engines.default_model import resolve_model
    from turngym.benchmarks.contention import CpuWatch, idle_check

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = resolve_model(args.model)
    result: dict[str, Any] = {"model": str(path), "steps": args.steps, "threads": args.threads,
                              "torch": torch.__version__, "transformers": transformers.__version__,
                              "machine": platform.machine(), "processor": platform.processor(),
                              "precision": "bf16 (fp32 weights)" if args.bf16 else "float32", "load_before": _load()}
    overrides = (["model.autocast=bfloat16", "rollout.dtype=bfloat16"] if args.bf16 else []) + args.set
    result["other_cores_before"] = idle_check()["other_cores"]
    if args.only != "trl":
        watch = CpuWatch()
        result["turngym"] = summarize(run_turngym(path, args.steps, args.seed, out, overrides))
        result["turngym"]["other_cores"] = watch.stop()["other_cores"]
        result["overrides"] = overrides
        print("turngym:", json.dumps(result["turngym"]), flush=True)
    if args.only != "turngym":
        import trl

        result["trl_version"] = trl.__version__
        watch = CpuWatch()
        result["trl"] = summarize(run_trl(path, args.steps, args.seed, out, bf16=args.bf16))
        result["trl"]["other_cores"] = watch.stop()["other_cores"]
        print("trl:    ", json.dumps(result["trl"]), flush=True)
    if "turngym" in result and "trl" in result:
        result["ratio_tokens_per_s"] = result["turngym"]["tokens_per_s"] / result["trl"]["tokens_per_s"]
        result["ratio_step_time"] = result["trl"]["seconds_per_step"] / result["turngym"]["seconds_per_step"]
        print(f"\n{'':10s} {'tok/s':>8s} {'s/step':>8s} {'compl tok/step':>15s}")
        for name in ("turngym", "trl"):
            r = result[name]
            print(f"{name:10s} {r['tokens_per_s']:8.1f} {r['seconds_per_step']:8.1f} {r['completion_tokens_per_step']:15.1f}")
        print(f"ratio turngym/trl ({result['precision']}): {result['ratio_tokens_per_s']:.2f}x tokens/s, "
              f"{result['ratio_step_time']:.2f}x step time")
    result["load_after"] = _load()
    print(f"load average (1, 5, 15 min): before {result['load_before']}, after {result['load_after']}")
    others = [result["other_cores_before"]] + [result[k]["other_cores"] for k in ("turngym", "trl") if k in result]
    print("other processes' CPU use (cores): before " + ", during ".join(
        "n/a" if x is None else f"{x:.2f}" for x in others))
    if any(x is not None and x > 0.2 for x in others):
        print("WARNING: other work ran beside this benchmark; its timings are not an idle machine's")
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
