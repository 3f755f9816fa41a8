"""Time every registered credit estimator on a large synthetic batch; compare GiGPO with a per-sample loop.

The batch looks like an agent RL step at scale: groups of 8 rollouts of one
task, 30 steps each (default 1M steps, about 4,167 groups), rows shuffled,
a small per-step penalty plus a 0/1 outcome on the last step, and 16-hex
``state_key`` digests (the format of ``turngym.envs.core.stable_digest``):
the rollouts of a task share their first state, and about 30% of the later
steps land on a state that other rollouts of the task also visit. Every optional field is filled, so every estimator runs; one that
still fails is reported as skipped with its error.

For each estimator, best of ``--repeats``:
* cold: the first call on a freshly built batch whose state keys are fresh
  str objects (so their hashes are not cached yet), i.e. what a trainer pays
  once per batch;
* warm: a second call on the same batch (codes and layout cached);
* cold cpu: the cold call's process CPU time, which other load on the
  machine inflates less than wall-clock time (the load average is recorded).
Building the batch (validation, trajectory layout) is timed on its own.

GiGPO is compared with a straightforward per-sample implementation shaped
like verl-agent's ``gigpo/core_gigpo.py`` (dicts of lists, one sample at a
time, numpy per group; its O(S) form: verl-agent's own
``compute_step_discounted_returns`` calls ``np.where`` over the whole batch
for every step, O(S^2), about 2 minutes at 100k steps on this kind of CPU).
The loop runs on ``--loop-steps`` rows and its time is scaled linearly to
``--steps``; its output is checked against ``gigpo(singleton="raw")``.

    python -m turngym.benchmarks.credit_speed --steps 1000000 --out results/credit_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from turngym.credit import ESTIMATORS, StepBatch, anchor_group_stats, anchor_groups, compute_advantages

SHARED_FRACTION = 0.3


def synthesize(steps: int, group_size: int, traj_len: int, seed: int) -> dict[str, np.ndarray]:
    """Flat per-step arrays, rows shuffled; ``state_id`` (int) stands for the state digest."""
    rng = np.random.default_rng(seed)
    n_traj = -(-steps // traj_len)
    traj = np.repeat(np.arange(n_traj), traj_len)[:steps]
    step = np.tile(np.arange(traj_len), n_traj)[:steps]
    group = traj // group_size
    last = (step == traj_len - 1) | (np.arange(steps) == steps - 1)
    success = rng.random(n_traj) < 0.4
    reward = np.where(last, success[traj].astype(float), -0.01)
    # Every rollout of a task starts in the same state; later, a step lands with probability SHARED_FRACTION
    # on the (task, step) state that other rollouts may reach too, else on a state of its own.
    shared = (step == 0) | (rng.random(steps) < SHARED_FRACTION)
    shared_id = group * traj_len + step
    private_id = n_traj * traj_len + traj * traj_len + step
    state_id = np.where(shared, shared_id, private_id)
    tool_calls = rng.integers(0, 6, n_traj)
    perm = rng.permutation(steps)
    fields = {
        "group_id": group,
        "traj_id": traj,
        "step": step,
        "reward": reward,
        "state_id": state_id,
        "values": rng.normal(0.3, 0.2, steps),
        "progress": np.clip(step / traj_len + rng.normal(0, 0.05, steps), 0, 1),
        "info_gain": rng.normal(0, 0.1, steps),
        "gold_logprob": -rng.gamma(2.0, 1.0, steps),
        "num_tool_calls": tool_calls[traj],
        "entropy": rng.gamma(2.0, 0.5, steps),
        "action_valid": (rng.random(steps) < 0.9).astype(float),
    }
    return {k: v[perm] for k, v in fields.items()}


def digests(state_id: np.ndarray) -> np.ndarray:
    """Fresh 16-hex str objects (a multiplicative mix makes them look like sha1 prefixes)."""
    mixed = (state_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) & np.uint64(2**64 - 1)
    return np.array([f"{x:016x}" for x in mixed.tolist()], dtype=object)


def make_batch(data: dict[str, np.ndarray], keys: np.ndarray) -> StepBatch:
    fields = {k: v for k, v in data.items() if k != "state_id"}
    optional = {f for f in StepBatch.__dataclass_fields__}
    fields = {k: v for k, v in fields.items() if k in optional}
    return StepBatch(**fields, state_key=keys, observation=keys)


# ---- a per-sample GiGPO shaped like verl-agent's core_gigpo (its O(S) form) ---------------------------


def gigpo_per_sample(index, traj_index, steps, rewards, anchor, gamma=0.95, omega=1.0, eps=1e-6):
    """Episode + step advantages with dict-of-list loops over samples (mean_std_norm, verl-agent rules)."""
    bsz = len(rewards)
    # compute_step_discounted_returns, with a dict instead of np.where per step
    traj_rows = defaultdict(list)
    for i in range(bsz):
        traj_rows[traj_index[i]].append(i)
    step_returns = np.zeros(bsz)
    episode_score = np.zeros(bsz)
    for rows in traj_rows.values():
        rows.sort(key=lambda i: steps[i])
        running = 0.0
        total = 0.0
        for i in reversed(rows):
            running = rewards[i] + gamma * running
            step_returns[i] = running
            total += rewards[i]
        for i in rows:
            episode_score[i] = total  # the episode reward every step sample carries
    # episode_norm_reward: each (index, traj_index) once
    id2score = defaultdict(list)
    seen = set()
    for i in range(bsz):
        if (index[i], traj_index[i]) in seen:
            continue
        seen.add((index[i], traj_index[i]))
        id2score[index[i]].append(episode_score[i])
    id2mean, id2std = {}, {}
    for idx, scores in id2score.items():
        if len(scores) == 1:
            id2mean[idx], id2std[idx] = 0.0, 1.0
        else:
            arr = np.array(scores)
            id2mean[idx], id2std[idx] = arr.mean(), arr.std(ddof=1)
    episode = np.array([(episode_score[i] - id2mean[index[i]]) / (id2std[index[i]] + eps) for i in range(bsz)])
    # build_step_group: cluster identical anchors within each index
    step_group = {}
    uid = 0
    by_index = defaultdict(list)
    for i in range(bsz):
        by_index[index[i]].append(i)
    group_of = np.empty(bsz, dtype=np.int64)
    for idx, rows in by_index.items():
        for i in rows:
            key = (idx, anchor[i])
            if key not in step_group:
                step_group[key] = uid
                uid += 1
            group_of[i] = step_group[key]
    # step_norm_reward
    id2r = defaultdict(list)
    for i in range(bsz):
        id2r[group_of[i]].append(step_returns[i])
    s_mean, s_std = {}, {}
    for g, values in id2r.items():
        arr = np.array(values)
        s_mean[g] = arr.mean()
        s_std[g] = arr.std(ddof=1) if len(values) > 1 else 1.0
    step = np.array([(step_returns[i] - s_mean[group_of[i]]) / (s_std[group_of[i]] + eps) for i in range(bsz)])
    return episode + omega * step


# ---- timing ---------------------------------------------------------------------------------------------


def best_of(times: list[float]) -> float:
    return min(times) if times else float("nan")


def time_estimator(name, data, repeats, hparams):
    """Wall-clock and process-CPU seconds of a cold and a warm call, per repeat."""
    cold, warm, cold_cpu = [], [], []
    for _ in range(repeats):
        batch = make_batch(data, digests(data["state_id"]))
        t0, c0 = time.perf_counter(), time.process_time()
        compute_advantages(name, batch, **hparams)
        cold.append(time.perf_counter() - t0)
        cold_cpu.append(time.process_time() - c0)
        t0 = time.perf_counter()
        compute_advantages(name, batch, **hparams)
        warm.append(time.perf_counter() - t0)
    return cold, warm, cold_cpu


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000, help="rows (agent steps) in the batch")
    parser.add_argument("--group-size", type=int, default=8, help="rollouts per task group")
    parser.add_argument("--traj-len", type=int, default=30, help="steps per trajectory")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per estimator; the best is reported")
    parser.add_argument("--loop-steps", type=int, default=100_000, help="rows for the per-sample GiGPO loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/credit_speed.json"), help="JSON result file")
    args = parser.parse_args(argv)

    data = synthesize(args.steps, args.group_size, args.traj_len, args.seed)
    n_groups = len(np.unique(data["group_id"]))
    print(
        f"credit_speed: {args.steps:,} steps, {n_groups:,} groups of {args.group_size}, "
        f"{args.traj_len}-step trajectories, best of {args.repeats}; numpy {np.__version__}, "
        f"{os.cpu_count()} CPU(s)"
    )

    anchors = anchor_group_stats(anchor_groups(make_batch(data, digests(data["state_id"]))))
    print(
        f"anchor groups: {anchors['groups']:,.0f}, mean size {anchors['mean_size']:.2f}, "
        f"{anchors['shared_step_fraction']:.0%} of steps share their state with another step of the task"
    )

    build = []
    for _ in range(args.repeats):
        keys = digests(data["state_id"])
        t0 = time.perf_counter()
        make_batch(data, keys)
        build.append(time.perf_counter() - t0)

    runs = [(name, {}) for name in sorted(ESTIMATORS)]
    if "gigpo" in ESTIMATORS:
        runs.append(("gigpo", {"anchor": "observation"}))
    results = []
    for name, hparams in runs:
        label = name + "".join(f"[{k}={v}]" for k, v in hparams.items())
        try:
            cold, warm, cold_cpu = time_estimator(name, data, args.repeats, hparams)
            results.append(
                {
                    "estimator": label,
                    "status": "ok",
                    "cold_s": best_of(cold),
                    "warm_s": best_of(warm),
                    "cold_cpu_s": best_of(cold_cpu),
                    "cold_runs_s": cold,
                    "warm_runs_s": warm,
                    "cold_cpu_runs_s": cold_cpu,
                }
            )
        except Exception as err:  # noqa: BLE001  (an estimator needing what this batch lacks: report it, go on)
            results.append({"estimator": label, "status": f"skipped: {type(err).__name__}: {err}"})

    # the per-sample loop, on a slice of whole trajectories
    loop_steps = min(args.loop_steps, args.steps)
    small = synthesize(loop_steps, args.group_size, args.traj_len, args.seed + 1)
    keys = digests(small["state_id"])
    batch = make_batch(small, keys)
    t0, c0 = time.perf_counter(), time.process_time()
    reference = gigpo_per_sample(
        small["group_id"].tolist(),
        small["traj_id"].tolist(),
        small["step"].tolist(),
        small["reward"].tolist(),
        keys.tolist(),
    )
    loop_s, loop_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    ours = compute_advantages("gigpo", batch, singleton="raw")
    max_diff = float(np.max(np.abs(ours - reference)))
    loop_scaled = loop_s * args.steps / loop_steps
    gigpo_run = next((r for r in results if r["estimator"] == "gigpo" and r["status"] == "ok"), None)
    gigpo_cold = gigpo_run["cold_s"] if gigpo_run else None
    loop_cpu_scaled = loop_cpu_s * args.steps / loop_steps
    comparison = {
        "loop_steps": loop_steps,
        "loop_s": loop_s,
        "loop_scaled_to_steps_s": loop_scaled,
        "vectorized_cold_s": gigpo_cold,
        "speedup": loop_scaled / gigpo_cold if gigpo_cold else None,
        "loop_cpu_scaled_to_steps_s": loop_cpu_scaled,
        "vectorized_cold_cpu_s": gigpo_run["cold_cpu_s"] if gigpo_run else None,
        "speedup_cpu": loop_cpu_scaled / gigpo_run["cold_cpu_s"] if gigpo_run else None,
        "max_abs_diff": max_diff,
    }

    print(f"\nbatch build (validation + trajectory layout): {best_of(build):.3f} s")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(f"\n{'estimator':<28} {'cold s':>8} {'warm s':>8} {'cold cpu s':>10} {'Msteps/s':>9}")
    for r in results:
        if r["status"] == "ok":
            print(
                f"{r['estimator']:<28} {r['cold_s']:>8.3f} {r['warm_s']:>8.3f} {r['cold_cpu_s']:>10.3f} "
                f"{args.steps / r['cold_s'] / 1e6:>9.2f}"
            )
        else:
            print(f"{r['estimator']:<28} {r['status']}")
    print(
        f"\nGiGPO per-sample loop (verl-agent shaped, O(S)): {loop_s:.2f} s on {loop_steps:,} steps "
        f"-> {loop_scaled:.1f} s scaled to {args.steps:,}"
    )
    if gigpo_cold:
        print(
            f"vectorized gigpo (cold): {gigpo_cold:.3f} s -> {comparison['speedup']:.0f}x faster "
            f"(CPU time: {loop_cpu_scaled:.1f} s vs {gigpo_run['cold_cpu_s']:.3f} s, "
            f"{comparison['speedup_cpu']:.0f}x); max |difference| {max_diff:.2e}"
        )

    report = {
        "benchmark": "credit_speed",
        "config": vars(args) | {"out": str(args.out), "groups": n_groups, "shared_state_fraction": SHARED_FRACTION},
        "environment": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
        },
        "anchor_groups": anchors,
        "load_average_1m_5m_15m": list(os.getloadavg()),
        "batch_build_s": best_of(build),
        "batch_build_runs_s": build,
        "estimators": results,
        "gigpo_vs_per_sample_loop": comparison,
        "median_cold_s": statistics.median([r["cold_s"] for r in results if r["status"] == "ok"] or [float("nan")]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(args.out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)  # never a half-written result file
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
