"""Peak memory and time of per-token log-probs + entropy, forward and backward: naive vs per-row loop vs fused.

What an RL trainer computes for every response token: the log-prob of the
sampled token and the entropy of the next-token distribution, from the last
hidden states [T, H] and the LM head [V, H], then the backward pass to the
hidden states and the head's weight. The loss used here is
``-mean(logprobs) - 0.01 * mean(entropy)``, so both outputs carry gradient.

Variants (``--variants``):

* ``naive``   -- logits [T, V] -> log_softmax -> gather; entropy from the full
  softmax (``turngym.kernels.reference_logprobs``), autograd backward.
* ``rowloop`` -- the loop many RL frameworks use to cut the peak: the logits
  [T, V] are still built, then the log-sum-exp is taken row chunk by row
  chunk (``--row-chunk`` rows at a time; TRL's ``selective_log_softmax`` and
  verl's ``logprobs_from_logits_v2`` loop over rows) and the entropy too
  (verl's ``entropy_from_logits_with_chunking``).
* ``chunked`` -- ``turngym.kernels.fused_logprobs(impl="chunked")``: tiles of
  the logits, online log-sum-exp, tiles recomputed in the backward.
* ``fused_loss`` -- ``turngym.kernels.fused_token_loss(impl="chunked")``: the
  same loss, but given to the op up front, so each [chunk, V] block of logits
  is turned into its gradient in the forward pass (nothing recomputed; this
  is the path ``fused_policy_loss`` takes).
* ``triton``, ``triton_loss`` -- the same two with ``impl="triton"`` (CUDA only).

Each (variant, T, V) runs in a fresh subprocess so that peaks do not mix. On
CPU the peak is the resident set (VmHWM, reset through
``/proc/self/clear_refs`` after the inputs are built) minus the resident set
before the first forward; on CUDA ``torch.cuda.max_memory_allocated`` minus
the allocation before it. Both include the gradients of hidden and weight
(the weight gradient, V x H, is the floor of any exact method: 0.54 GB at
V=151,936, H=896, fp32). Time is the median wall time of the first
forward+backward and ``--repeats`` more (the least disturbed by other
load on a shared machine), with the process CPU time beside it.

    python -m turngym.benchmarks.logprob_memory                                   # the full grid (long on a small CPU)
    python -m turngym.benchmarks.logprob_memory --T 2048 --V 151936 --H 896       # the issue's target point
    python -m turngym.benchmarks.logprob_memory --T 1024 --V 49152 --variants naive,chunked --repeats 1

Prints a table with the ratios to naive and writes ``--out`` (JSON) and the
same stem with ``.csv`` (one row per op, provider, T, V, metric, value,
device, versions). This script may import every layer of turngym.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("naive", "rowloop", "chunked", "fused_loss", "triton", "triton_loss")
# Bytes per T*V element held at the peak, measured on CPU fp32 (T=2048, V=151,936): used only to skip
# shapes that would not fit in the memory this machine has free.
_PEAK_ELEMS = {"naive": 6.0, "rowloop": 4.5}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _available_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62


def rowloop_logprobs(hidden, weight, targets, row_chunk: int):
    """The per-row loop: full logits, then log-sum-exp and entropy a few rows at a time."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(hidden, weight).float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lse_parts, ent_parts = [], []
    for start in range(0, logits.shape[0], row_chunk):
        rows = logits[start : start + row_chunk]
        lse_rows = torch.logsumexp(rows, dim=-1)
        probs = torch.softmax(rows, dim=-1)
        lse_parts.append(lse_rows)
        ent_parts.append(lse_rows - (probs * rows).sum(-1))
    return picked - torch.cat(lse_parts), torch.cat(ent_parts)


def worker(args) -> dict:
    """Run one variant at one shape in this process; return its measurements."""
    import torch

    from turngym.kernels import fused_logprobs, fused_token_loss, reference_logprobs

    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.T, args.H, generator=gen).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.V, args.H, generator=gen) * 0.02).to(device, dtype).requires_grad_()
    targets = torch.randint(0, args.V, (args.T,), generator=gen).to(device)

    def token_loss(lp, ent, rows):
        return (-lp.sum() - 0.01 * ent.sum()) / args.T

    def step():
        if args.variant in ("fused_loss", "triton_loss"):
            impl = "chunked" if args.variant == "fused_loss" else "triton"
            loss = fused_token_loss(hidden, weight, targets, token_loss, impl=impl)[0]
            loss.backward()
            return float(loss)
        if args.variant == "naive":
            lp, ent, _ = reference_logprobs(hidden, weight, targets)
        elif args.variant == "rowloop":
            lp, ent = rowloop_logprobs(hidden, weight, targets, args.row_chunk)
        else:
            lp, ent = fused_logprobs(hidden, weight, targets, impl=args.variant)
        loss = -lp.mean() - 0.01 * ent.mean()
        loss.backward()
        return float(loss)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    gc.collect()
    if device.type == "cuda":
        sync()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_kb("VmRSS") * 1024
        with open("/proc/self/clear_refs", "w") as fh:  # resets VmHWM to the current RSS
            fh.write("5")
    times, cpu_times = [], []
    t0, c0 = time.perf_counter(), time.process_time()
    loss = step()
    sync()
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_kb("VmHWM") * 1024 - base
    for _ in range(args.repeats):
        hidden.grad = weight.grad = None
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {
        "variant": args.variant, "T": args.T, "V": args.V, "H": args.H, "dtype": args.dtype,
        "device": args.device, "peak_bytes": int(peak), "time_s": min(times),
        "times_s": times, "cpu_s": min(cpu_times), "cpu_times_s": cpu_times, "loss": loss, "threads": torch.get_num_threads(),
    }


def _versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def _device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} x{os.cpu_count()} cores"


def run_one(args, variant: str, T: int, V: int) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--worker", "--variant", variant, "--T", str(T), "--V", str(V),
        "--H", str(args.H), "--dtype", args.dtype, "--device", args.device, "--repeats", str(args.repeats),
        "--row-chunk", str(args.row_chunk),
    ]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"variant": variant, "T": T, "V": V, "error": (proc.stderr or proc.stdout).strip()[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    naive = {(r["T"], r["V"]): r for r in rows if r["variant"] == "naive" and "peak_bytes" in r}
    header = (f"{'T':>6} {'V':>7} {'variant':<11} {'peak MB':>9} {'wall s':>8} {'cpu s':>8} {'mem/naive':>10} "
              f"{'wall/naive':>11} {'cpu/naive':>10}")
    lines = [header]
    for r in rows:
        if "peak_bytes" not in r:
            lines.append(f"{r['T']:>6} {r['V']:>7} {r['variant']:<11} {r.get('skipped') or 'error: ' + r['error'][-60:]}")
            continue
        ref = naive.get((r["T"], r["V"]))
        mem_ratio = f"{r['peak_bytes'] / ref['peak_bytes']:.3f}" if ref else "-"
        time_ratio = f"{r['time_s'] / ref['time_s']:.2f}" if ref else "-"
        cpu_ratio = f"{r['cpu_s'] / ref['cpu_s']:.2f}" if ref else "-"
        lines.append(
            f"{r['T']:>6} {r['V']:>7} {r['variant']:<11} {r['peak_bytes'] / 2**20:>9.0f} {r['time_s']:>8.2f} "
            f"{r['cpu_s']:>8.2f} {mem_ratio:>10} {time_ratio:>11} {cpu_ratio:>10}"
        )
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096], help="token counts")
    parser.add_argument("--V", type=int, nargs="+", default=[49152, 151936], help="vocabulary sizes")
    parser.add_argument("--H", type=int, default=896, help="hidden size (SmolLM2-360M-like 896; SmolLM2 itself 576)")
    parser.add_argument("--variants", default=None, help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs after the first (measured) one")
    parser.add_argument("--row-chunk", type=int, default=256, help="rows per step of the rowloop variant")
    parser.add_argument("--out", type=Path, default=Path("results/logprob_memory.json"), help="JSON report; CSV beside it")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    from turngym.threads import configure

    configure()  # OpenMP's settings, before torch loads
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        args.T, args.V = args.T[0], args.V[0]
        print(json.dumps(worker(args)))
        return 0

    default = ["naive", "rowloop", "chunked", "fused_loss"] + (["triton", "triton_loss"] if args.device == "cuda" else [])
    variants = args.variants.split(",") if args.variants else default
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    rows = []
    for T in args.T:
        for V in args.V:
            for variant in variants:
                need = _PEAK_ELEMS.get(variant, 0.0) * T * V * (4 if args.dtype == "fp32" else 2)
                if args.device == "cpu" and need > 0.8 * _available_bytes():
                    rows.append({"variant": variant, "T": T, "V": V,
                                 "skipped": f"skipped: needs ~{need / 2**30:.1f} GB, not free now"})
                    print(_table(rows[-1:]).splitlines()[-1], flush=True)
                    continue
                rows.append(run_one(args, variant, T, V))
                print(_table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(_table(rows))

    versions = _versions()
    device_name = _device_name(args.device)
    report = {
        "benchmark": "logprob_memory", "H": args.H, "dtype": args.dtype, "device": device_name,
        "versions": versions, "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
        "loss": "-mean(logprobs) - 0.01 * mean(entropy)", "rows": rows,
    }
    _write_atomic(args.out, json.dumps(report, indent=2))
    csv_path = args.out.with_suffix(".csv")
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["op", "provider", "T", "V", "H", "dtype", "metric", "value", "device", "versions"])
        vers = " ".join(f"{k}={v}" for k, v in versions.items())
        for r in rows:
            if "peak_bytes" not in r:
                continue
            for metric, value in (("peak_bytes", r["peak_bytes"]), ("time_s", round(r["time_s"], 4)),
                                  ("cpu_s", round(r["cpu_s"], 4))):
                writer.writerow(["logprobs_entropy_fwd_bwd", r["variant"], r["T"], r["V"], args.H, args.dtype,
                                 metric, value, device_name, vers])
    tmp.replace(csv_path)
    print(f"\nwrote {args.out} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
