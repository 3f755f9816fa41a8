"""Does half precision pay on this CPU? The matmuls of a training step, float32 vs bfloat16 (vs float16), side by side.

    python -m turngym.benchmarks.cpu_dtypes                       # SmolLM2-135M's shapes, 256 tokens
    python -m turngym.benchmarks.cpu_dtypes --tokens 1024 --dtypes float32,bfloat16,float16 --out results/cpu_dtypes.json

Why: bf16 is 2-3x faster than float32 on a CPU with AMX-BF16 (prefill of
SmolLM2 3.3x, ``rollout_throughput``), so ``--dtype auto`` picks it there, and
``model.autocast`` / ``rollout.dtype`` offer it. On a CPU without native bf16
instructions torch still runs it, in a scalar fallback that is many times
slower than float32; nothing fails, the run just crawls (a Werewolf SFT step
did not finish in 13 minutes on a 2-core AMD EPYC). This benchmark measures
the gap on the machine at hand, and ``turngym.agents.engines.device`` warns
(``SlowDtypeWarning``) when a half precision is asked for on a CPU that lacks it.

What is timed: for each distinct matmul of a Llama decoder of the model's
shapes (default SmolLM2-135M: hidden 576, 9 query and 3 key/value heads of 64,
MLP 1536, vocabulary 49152, 30 layers) the three products of a training
step over ``--tokens`` rows: forward ``x @ W.T``, input gradient ``g @ W``
and weight gradient ``g.T @ x`` -- each the best of ``--repeats`` calls after
an untimed warm-up (a warm-up over a second is taken as the measurement). The step estimate weights each
decoder matmul by the layer count (attention scores and elementwise work
are not included: matmuls are most of a step's FLOPs at these lengths).
Printed per dtype: GFLOP/s of each product, the estimated step time and its
ratio to float32, the CPU's capability flags and the verdict of
:func:`~turngym.agents.engines.device.cpu_has_native`, and other processes'
CPU use during the run (``contention.CpuWatch``).

Measured on a 2-core AMD EPYC (AVX2 only: no AVX-512, no AMX), ``--threads 1
--dtypes float32,bfloat16,float16``, 256 rows, another job on the other core
(1.19 cores of other use): float32 43-80 GFLOP/s per product; bfloat16
0.5-18.9 (the vocabulary projection's input gradient 0.5), float16 0.5-11.5.
A forward+backward's matmuls: float32 3.1 s, bfloat16 79.0 s (25x), float16
87.3 s (28x). On the AMX machine of issue 24 the same bf16 gave SmolLM2's
prefill 3.3x float32's speed.
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

#: SmolLM2-135M-Instruct's shapes (config.json of the embedded model)
SMOLLM2 = {"hidden": 576, "heads": 9, "kv_heads": 3, "head_dim": 64, "intermediate": 1536, "vocab": 49152,
           "layers": 30}


def matmul_shapes(m: dict[str, int]) -> list[tuple[str, int, int, int]]:
    """``(name, in_features, out_features, count per step)`` of every distinct Linear of a Llama decoder."""
    h, q, kv = m["hidden"], m["heads"] * m["head_dim"], m["kv_heads"] * m["head_dim"]
    layers = m["layers"]
    return [("q_proj", h, q, layers), ("k_proj+v_proj", h, kv, 2 * layers), ("o_proj", q, h, layers),
            ("gate_proj+up_proj", h, m["intermediate"], 2 * layers), ("down_proj", m["intermediate"], h, layers),
            ("lm_head", h, m["vocab"], 1)]


def _best(fn, repeats: int) -> float:
    """Best of ``repeats`` timed calls after an untimed warm-up; a first call over a second is the measurement."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > 1.0:  # a slow fallback: more calls would only cost time
        return first
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(dtype_name: str, tokens: int, shapes, repeats: int, seed: int = 0) -> dict:
    import torch

    dtype = getattr(torch, dtype_name)
    gen = torch.Generator().manual_seed(seed)
    rows, step_s = [], 0.0
    for name, fan_in, fan_out, count in shapes:
        x = torch.randn(tokens, fan_in, generator=gen).to(dtype)
        w = torch.randn(fan_out, fan_in, generator=gen).to(dtype)
        g = torch.randn(tokens, fan_out, generator=gen).to(dtype)
        flops = 2.0 * tokens * fan_in * fan_out
        times = {"forward": _best(lambda x=x, w=w: x @ w.t(), repeats),
                 "grad_input": _best(lambda g=g, w=w: g @ w, repeats),
                 "grad_weight": _best(lambda g=g, x=x: g.t() @ x, repeats)}
        step_s += count * sum(times.values())
        rows.append({"matmul": name, "in": fan_in, "out": fan_out, "count": count,
                     **{f"{op}_s": t for op, t in times.items()},
                     **{f"{op}_gflops": flops / t / 1e9 for op, t in times.items()}})
    return {"dtype": dtype_name, "rows": rows, "step_matmul_s": step_s}


def main(argv: list[str] | None = None) -> int:
    from turngym.threads import configure

    configure()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=256, help="rows of every product (tokens of a micro-batch)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma list: float32, bfloat16, float16")
    p.add_argument("--repeats", type=int, default=3, help="best of this many calls per product")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--quick", action="store_true", help="8 rows, 1 repeat (the test)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    allowed = ("float32", "bfloat16", "float16")
    bad = [d for d in dtypes if d not in allowed]
    if bad or not dtypes:
        p.error(f"--dtypes {args.dtypes!r}: use a comma list of {', '.join(allowed)}")
    if args.tokens < 1 or args.repeats < 1:
        p.error("--tokens and --repeats must be >= 1")
    if args.quick:
        args.tokens, args.repeats = 8, 1

    import torch

    from turngym.agents.engines.device import NATIVE_CPU_FLAGS, cpu_has_native
    from turngym.benchmarks.contention import CpuWatch

    if args.threads:
        torch.set_num_threads(args.threads)
    caps = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    native_flags = [flag for flags_of in NATIVE_CPU_FLAGS.values() for flag in flags_of]
    flags = {k: bool(caps.get(k)) for k in ("avx2", "avx512_f", *native_flags)}
    print(f"CPU: {caps.get('cpu_name') or platform.processor() or '?'} ({caps.get('architecture', '?')}); "
          + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} rows per product; "
          f"SmolLM2-135M shapes")
    shapes = matmul_shapes(SMOLLM2)
    watch = CpuWatch()
    results = [measure(d, args.tokens, shapes, args.repeats) for d in dtypes]
    load = watch.stop()
    base = next((r for r in results if r["dtype"] == "float32"), results[0])
    print(f"\n{'matmul':<18} {'in':>5} {'out':>6}  " + "  ".join(f"{r['dtype']:>28}" for r in results))
    print(f"{'':<18} {'':>5} {'':>6}  " + "  ".join(f"{'GFLOP/s fwd / dX / dW':>28}" for _ in results))
    for i, (name, fan_in, fan_out, _count) in enumerate(shapes):
        cells = []
        for r in results:
            row = r["rows"][i]
            cells.append(f"{row['forward_gflops']:8.1f} {row['grad_input_gflops']:8.1f} "
                         f"{row['grad_weight_gflops']:8.1f}  ".rjust(28))
        print(f"{name:<18} {fan_in:>5} {fan_out:>6}  " + "  ".join(cells))
    print()
    for r in results:
        r["native"] = cpu_has_native(r["dtype"])
        r["vs_float32"] = r["step_matmul_s"] / base["step_matmul_s"]
        print(f"{r['dtype']:<9} matmuls of one forward+backward over {args.tokens} tokens: "
              f"{r['step_matmul_s']:.3f} s ({r['vs_float32']:.2f}x float32's time; native on this CPU: "
              f"{ {True: 'yes', False: 'no', None: 'unknown'}[r['native']] })")
    print(f"other processes' CPU use during the run: {load['other_cores']:.2f} cores"
          if load.get("other_cores") is not None else "other processes' CPU use: unknown here")
    if args.out:
        record = {"tokens": args.tokens, "repeats": args.repeats, "threads": torch.get_num_threads(),
                  "model_shapes": SMOLLM2, "cpu": caps.get("cpu_name"), "flags": flags, "results": results,
                  "contention": load, "torch": torch.__version__, "python": sys.version.split()[0],
                  "platform": platform.platform(), "cpu_count": os.cpu_count()}
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
