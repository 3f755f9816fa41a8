"""What sharing a trajectory's transcript buys the SFT update: four ways to run the same steps, side by side.

    python -m turngym.benchmarks.sft_sharing                        # SmolLM2-135M on recorded Werewolf turns
    python -m turngym.benchmarks.sft_sharing --steps 4 --out results/sft_sharing.json
    python -m turngym.benchmarks.sft_sharing --quick                # tiny random model (the test)

Why: multi-turn SFT data whose every turn is a fresh prompt (Werewolf's LLM
seat is shown the whole game so far each turn) repeats the transcript turn
after turn: the 1,005 village turns of 64 recorded lspo7 games hold 679k
prompt tokens for 7.7k target tokens, and only ~235k distinct ones once a
trajectory's turns share what their prompts repeat. The SFT trainer can draw
whole trajectories per step (``data.batch_by=trajectory``) and run each
micro-batch as its prefix tree (``optim.share_prefix``: every token that
several rows hold after the same ids runs once; the same log-probs and
gradients within float rounding, ``tests/trainers/test_logprobs.py``).

What is timed: the data is ``werewolf_learn``'s record (``--games`` all-rule
lspo7 games, the village seats' turns rendered exactly as the LLM seat's
prompts, the bot's move as the target). For each of the four settings
(``data.batch_by`` sample or trajectory x ``optim.share_prefix`` off or on)
the SFT trainer's own step plan (``step_plan``, seed 0) and micro-batch
packing are run, forward and backward under ``sequence_logprobs`` as in the
trainer (no optimizer step: it does not change the cost), for ``--steps``
steps after one untimed warm-up step. Printed per setting: sample tokens per
second (the steps' tokens, whatever was shared), the tokens actually run,
seconds per step, and the ratio to the trainer's old path (sample, off), with
other processes' CPU use (``contention.CpuWatch``). The four settings take
different steps (a trajectory step holds whole trajectories), so the
comparison is per sample token.

Measured on a 2-core Intel Xeon with AVX-512 (no AVX512-BF16, no AMX), fp32,
SmolLM2-135M-Instruct, 64 recorded games: see the README (Werewolf SFT).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from turngym.files import write_text_atomic

SETTINGS = (("sample", False), ("sample", True), ("trajectory", False), ("trajectory", True))


def record_samples(out: Path, games: int, model: str, quick: bool) -> tuple[list[Any], Any, str]:
    """The SFT samples of ``werewolf_learn``'s record phase (cached under ``out``) and the model's path."""
    from turngym.agents.types import load_trajectories
    from turngym.agents.werewolf_runner import WerewolfLLMPolicy
    from turngym.benchmarks import werewolf_learn as wl
    from turngym.trainers.tokens import build_samples

    base = wl.tiny_base(out / "base", wl.PRESET) if quick else model
    tok, max_context = wl._load_tokenizer(base)
    renderer = wl.Renderer(tok, max_context, WerewolfLLMPolicy(temperature=0.7, max_tokens=8 if quick else 96))
    rec = wl.record(out, games, wl.PRESET, renderer, base)
    trajs = load_trajectories(rec["file"])
    return build_samples(trajs, None, mode="auto"), tok, base


def time_setting(model: Any, samples: list[Any], pad_id: int, batch_by: str, share: bool, steps: int,
                 batch_size: int, micro_batch_tokens: int) -> dict[str, Any]:
    """Forward+backward of the first ``steps`` steps (after one warm-up) of the trainer's plan and packing."""
    from turngym.trainers import logprobs

    trees: list[int] = []
    plain_tree = logprobs._prefix_tree

    def tree(*a: Any) -> Any:
        packed = plain_tree(*a)
        if packed is not None:
            trees.append(len(packed[0]))
        return packed

    logprobs._prefix_tree = tree
    try:
        return _time(model, samples, pad_id, batch_by, share, steps, batch_size, micro_batch_tokens, trees)
    finally:
        logprobs._prefix_tree = plain_tree


def _time(model: Any, samples: list[Any], pad_id: int, batch_by: str, share: bool, steps: int, batch_size: int,
          micro_batch_tokens: int, trees: list[int]) -> dict[str, Any]:
    import numpy as np

    from turngym.benchmarks.contention import CpuWatch
    from turngym.trainers import logprobs
    from turngym.trainers.sft import step_microbatches, step_plan
    from turngym.trainers.tokens import collate

    plan = [idx for _, idx in step_plan(samples, 1, batch_size, batch_by, np.random.default_rng(0))]
    out = {"batch_by": batch_by, "share_prefix": share, "steps": min(steps, len(plan) - 1), "sample_tokens": 0,
           "run_tokens": 0, "seconds": 0.0}
    for k, idx in enumerate(plan[:steps + 1]):
        micro = step_microbatches(samples, idx, share, micro_batch_tokens)  # the trainer's own packing
        t0 = time.perf_counter()
        run = 0
        for local in micro:
            rows = [idx[j] for j in local]
            batch = collate(samples, pad_id, indices=rows)
            logp = logprobs.sequence_logprobs(model, batch.input_ids, batch.attention_mask, loss_mask=batch.loss_mask,
                                              position_ids=batch.position_ids, share_prefix=share)
            (-logp.sum()).backward()
            # the tokens the decoder ran: the packed tree when it was taken, else the padded batch
            run += trees.pop() if trees else batch.input_ids.numel()
        model.zero_grad(set_to_none=True)
        if k == 0:
            watch = CpuWatch()
            continue
        out["seconds"] += time.perf_counter() - t0
        out["sample_tokens"] += sum(len(samples[i]) for i in idx)
        out["run_tokens"] += run
    out["cpu"] = watch.stop()
    out["tokens_per_s"] = out["sample_tokens"] / max(out["seconds"], 1e-9)
    out["seconds_per_step"] = out["seconds"] / max(out["steps"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="the model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--games", type=int, default=64, help="recorded all-rule lspo7 games (default 64)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per setting, after one warm-up (default 3)")
    p.add_argument("--batch-size", type=int, default=8, help="samples per step (data.batch_size, default 8)")
    p.add_argument("--micro-batch-tokens", type=int, default=4096, help="optim.micro_batch_tokens (default 4096)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--data", default="results/sft_sharing", help="folder for the recorded games (reused)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--quick", action="store_true", help="tiny random model, 2 games, 1 timed step")
    args = p.parse_args(argv)
    if args.steps < 1 or args.games < 1:
        p.error("--steps and --games must be >= 1")
    if args.quick:
        args.games, args.steps = 2, 1

    from turngym.threads import configure

    configure()
    import torch
    from transformers import AutoModelForCausalLM

    from turngym.agents.engines.default_model import resolve_model
    from turngym.benchmarks.contention import idle_check

    if args.threads or args.quick:
        torch.set_num_threads(args.threads or 1)
    data = Path(args.data)
    samples, tok, base = record_samples(data, args.games, args.model, args.quick)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(base, progress=False), dtype=torch.float32)
    model.train()
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    before = idle_check()
    print(f"{len(samples)} SFT samples, {sum(map(len, samples))} tokens; other processes before: "
          f"{before['other_cores']} cores; {torch.get_num_threads()} threads", flush=True)
    rows = []
    for batch_by, share in SETTINGS:
        r = time_setting(model, samples, pad, batch_by, share, args.steps, args.batch_size, args.micro_batch_tokens)
        rows.append(r)
        print(f"  batch_by={batch_by:10s} share_prefix={str(share).lower():5s}: {r['tokens_per_s']:7.1f} sample "
              f"tokens/s, {r['seconds_per_step']:6.1f} s/step, ran {r['run_tokens']} of {r['sample_tokens']} tokens "
              f"(other processes {r['cpu']['other_cores']} cores)", flush=True)
    old = rows[0]["tokens_per_s"]
    for r in rows:
        r["vs_sample_unshared"] = r["tokens_per_s"] / old if old else None
    print("\nsample tokens/s vs the old SFT path (batch_by=sample, share_prefix off):")
    for r in rows:
        print(f"  {r['batch_by']:10s} {'shared' if r['share_prefix'] else 'padded':7s} {r['vs_sample_unshared']:.2f}x")
    result = {"model": base, "games": args.games, "steps": args.steps, "batch_size": args.batch_size,
              "micro_batch_tokens": args.micro_batch_tokens, "threads": torch.get_num_threads(),
              "samples": len(samples), "tokens": sum(map(len, samples)), "rows": rows, "quick": args.quick}
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
