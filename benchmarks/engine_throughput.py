"""Generated tokens per second of the hf engine: one sequence at a time vs one batched call, side by side.

Both runs use the same engine, the same chat prompts (different questions,
so prompt lengths differ and left padding is exercised) and the same
sampling (temperature 1, a seed per prompt). EOS is ignored by default so
every completion has exactly ``--max-tokens`` tokens and both runs do the
same work per sequence; ``--stop-at-eos`` measures the natural lengths
instead. The sequential run covers the first ``--sequential-prompts``
prompts (it is the slow one), the batched run all ``--batch`` of them;
tokens/s is generated tokens over wall-clock seconds of ``generate`` (prefill
included), best of ``--repeats``. The machine's load average is recorded:
on a shared CPU, other processes move these numbers a lot.

    python -m turngym.benchmarks.engine_throughput                     # SmolLM2-135M, batch 1 vs 16
    python -m turngym.benchmarks.engine_throughput --batch 32 --max-tokens 128 --out results/engine_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from turngym.files import write_text_atomic

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about autumn.", "Explain what a hash table is.",
    "List three prime numbers.", "How do plants make food?", "Give me a tip for learning Python.",
    "What is 17 times 3?", "Describe a cat in one sentence.", "Why is the sky blue?",
    "Name a famous painter and one of their works.", "What does a compiler do?", "Suggest a name for a robot.",
    "How many legs does a spider have?", "Translate 'good morning' into Spanish.",
    "What is the boiling point of water?", "Tell me a fun fact about octopuses.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="default | a HF model folder | a .gguf file")
    parser.add_argument("--batch", type=int, default=16, help="prompts in the batched call")
    parser.add_argument("--sequential-prompts", type=int, default=4, help="prompts run one at a time")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--stop-at-eos", action="store_true", help="let completions end at EOS")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from turngym.agents.engines.hf import HFEngine
    from turngym.agents.types import SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    engine = HFEngine(args.model, device=args.device, dtype=args.dtype, max_batch_size=args.batch,
                      **({} if args.stop_at_eos else {"eos_token_ids": []}))
    load_s = time.perf_counter() - t0
    questions = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" (variant {i})")
                 for i in range(args.batch)]
    prompts = [engine.render([{"role": "user", "content": q}]) for q in questions]
    params = [SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i) for i in range(args.batch)]
    engine.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0))  # warm-up

    def timed(batches):
        best = None
        for _ in range(args.repeats):
            tokens, start = 0, time.perf_counter()
            for idx in batches:
                outs = engine.generate([prompts[i] for i in idx], [params[i] for i in idx])
                tokens += sum(len(o.token_ids) for o in outs)
            seconds = time.perf_counter() - start
            if best is None or tokens / seconds > best[0] / best[1]:
                best = (tokens, seconds)
        return best

    n_seq = min(args.sequential_prompts, args.batch)
    seq_tokens, seq_s = timed([[i] for i in range(n_seq)])
    bat_tokens, bat_s = timed([list(range(args.batch))])
    rows = [("sequential (batch 1)", n_seq, seq_tokens, seq_s), (f"batched (x{args.batch})", args.batch,
                                                                  bat_tokens, bat_s)]
    print(f"{engine.name} on {engine.device} ({str(engine.dtype).removeprefix('torch.')}), "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}, "
          f"model load {load_s:.1f}s")
    print(f"{'run':<22}{'prompts':>8}{'tokens':>8}{'seconds':>9}{'tok/s':>9}")
    for name, n, tokens, seconds in rows:
        print(f"{name:<22}{n:>8}{tokens:>8}{seconds:>9.2f}{tokens / seconds:>9.1f}")
    ratio = (bat_tokens / bat_s) / (seq_tokens / seq_s)
    print(f"batched / sequential: {ratio:.1f}x")
    if args.out:
        record = {
            "model": engine.name, "device": str(engine.device), "dtype": str(engine.dtype),
            "threads": torch.get_num_threads(), "max_tokens": args.max_tokens, "stop_at_eos": args.stop_at_eos,
            "sequential": {"prompts": n_seq, "tokens": seq_tokens, "seconds": seq_s, "tok_s": seq_tokens / seq_s},
            "batched": {"prompts": args.batch, "tokens": bat_tokens, "seconds": bat_s, "tok_s": bat_tokens / bat_s},
            "ratio": ratio, "load_average": os.getloadavg(), "load_seconds": load_s,
            "python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        }
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
