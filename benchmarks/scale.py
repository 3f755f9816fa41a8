"""Env steps/s as env workers are added: local threads, local processes, Ray actors and the env server.

Three envs, all BlocksWorld replaying the same oracle episodes:

* **plain**: BlocksWorld as it is, whose step is ~0.1 ms of pure Python: what a backend costs per call;
* **CPU-bound**: each step first does ``--cpu`` seconds of pure-Python work (a heavier simulator): more
  workers help only where there are more cores and the workers do not share one GIL;
* **I/O-bound**: each step first waits ``--latency`` seconds (a sandbox, a browser, a retriever or an LLM
  judge on another host): more workers help as long as they can wait at once.

Every backend replays the same seeded episodes (the oracle's actions, found once on a local env) on ``N``
env slots with ``N`` workers, each slot driven by its own client thread, for ``--steps`` steps in all; the
table gives steps/s and the speed-up over the same backend with one worker, measured side by side in one
run. On a 2-core machine the CPU-bound env cannot scale past 2 (and threads not at all); the I/O-bound one
should scale with the workers on every backend.

    python -m turngym.benchmarks.scale                                  # thread + process (+ ray, server if installed)
    python -m turngym.benchmarks.scale --workers 1 2 4 --steps 2000 --latency 0.02 --out results/scale.json

Ray needs ``pip install 'turngym[ray]'``; the env server ``turngym[serve]``. A backend that is not installed is
left out with a note. This script may import every layer of turngym.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import gymnasium as gym

ENV_ID = "turngym/BlocksWorld-v0"


def _burn(seconds: float) -> None:
    """Pure-Python work (it holds the GIL) for about ``seconds``."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for i in range(200):
            x = (x * 31 + i) % 1000003


class CostEnv(gym.Wrapper):
    """An env whose every step (and reset) first waits ``wait_s`` (I/O) or computes ``cpu_s`` (pure Python)."""

    def __init__(self, env: gym.Env, wait_s: float = 0.0, cpu_s: float = 0.0):
        super().__init__(env)
        self.wait_s, self.cpu_s = wait_s, cpu_s

    def _cost(self) -> None:
        if self.wait_s:
            time.sleep(self.wait_s)
        if self.cpu_s:
            _burn(self.cpu_s)

    def reset(self, **kwargs: Any):
        self._cost()
        return self.env.reset(**kwargs)

    def step(self, action: Any):
        self._cost()
        return self.env.step(action)


def make_bench_env(env_id: str, wait_s: float, cpu_s: float) -> gym.Env:
    """The picklable factory of every backend (processes and Ray actors import this module)."""
    import turngym

    env = turngym.make(env_id)
    return CostEnv(env, wait_s, cpu_s) if wait_s or cpu_s else env


def make_remote_env(url: str, env_id: str, wait_s: float, cpu_s: float) -> gym.Env:
    import turngym

    env = turngym.make("turngym/Remote-v0", url=url, env_id=env_id)
    return CostEnv(env, wait_s, cpu_s) if wait_s or cpu_s else env


def oracle_plans(env_id: str, seeds: range) -> list[tuple[int, list[str]]]:
    """(seed, the oracle's actions from reset(seed)) per seed, found on a local env."""
    import turngym

    env = turngym.make(env_id)
    plans = []
    for seed in seeds:
        env.reset(seed=seed)
        actions = []
        for _ in range(100):
            action = env.unwrapped.oracle_action()
            actions.append(action)
            _obs, _r, term, trunc, _info = env.step(action)
            if term or trunc:
                break
        plans.append((seed, actions))
    env.close()
    return plans


def drive(pool: Any, slots: int, plans: list[tuple[int, list[str]]], steps: int) -> float:
    """Steps/s of ``pool``: each slot replays plans round-robin from its own thread until ``steps`` are done."""
    done = [0]
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(slot: int) -> None:
        i = slot
        try:
            while True:
                seed, actions = plans[i % len(plans)]
                i += slots
                pool.submit(slot, "reset", seed, None).result()
                for action in actions:
                    with lock:
                        if done[0] >= steps:
                            return
                        done[0] += 1
                    pool.submit(slot, "step", action).result()
        except BaseException as exc:  # noqa: BLE001 (reported after the run)
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(s,), daemon=True) for s in range(slots)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return done[0] / elapsed


@contextlib.contextmanager
def env_server(env_id: str):
    """``turngym serve-env env_id`` on 127.0.0.1 (a free port) in a subprocess; yields its URL."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-P", "-m", "turngym.cli", "serve-env", env_id, "--host", "127.0.0.1",
                             "--port", str(port), "--max-sessions", "64"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"serve-env exited: {proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(Exception):
            proc.wait(timeout=10)


def available_backends(wanted: list[str]) -> tuple[list[str], list[str]]:
    kept, notes = [], []
    for name in wanted:
        if name == "ray":
            try:
                import ray  # noqa: F401

                from turngym.agents.pool import make_pool  # noqa: F401
            except ImportError:
                notes.append("ray: not installed (pip install 'turngym[ray]')")
                continue
        if name == "server":
            try:
                import turngym.envs

                if "turngym/Remote-v0" not in turngym.envs.registry():
                    raise ImportError
            except ImportError:
                notes.append("server: turngym/Remote-v0 is not available")
                continue
        kept.append(name)
    return kept, notes


def run(backends: list[str], workers: list[int], steps: int, latency: float, cpu_s: float, seed: int) -> dict[str, Any]:
    from turngym.agents.pool import make_pool

    plans = oracle_plans(ENV_ID, range(seed, seed + 64))
    if "ray" in backends:  # one local Ray for every Ray pool (a pool that starts Ray stops it when it closes)
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    # the plain env (pool overhead dominates), a CPU-bound step (on the env's host), an I/O-bound step
    for kind, lat, burn in (("plain", 0.0, 0.0), ("cpu-bound", 0.0, cpu_s), ("io-bound", latency, 0.0)):
        for backend in backends:
            with contextlib.ExitStack() as stack:
                if backend == "server":
                    url = stack.enter_context(env_server(ENV_ID))
                    env_fn = partial(make_remote_env, url, ENV_ID, lat, burn)
                    pool_kind = "thread"
                else:
                    env_fn = partial(make_bench_env, ENV_ID, lat, burn)
                    pool_kind = backend
                base = None
                for n in workers:
                    pool = make_pool(pool_kind, env_fn, n, n)
                    try:
                        drive(pool, n, plans, min(steps, 4 * n))  # warm-up: envs built, workers started
                        budget = steps if kind == "plain" else max(50 * n, steps // 10)
                        rate = drive(pool, n, plans, budget)
                    finally:
                        pool.close()
                    base = base or rate
                    rows.append({"env": kind, "backend": backend, "workers": n, "steps_per_s": round(rate, 1),
                                 "speedup": round(rate / base, 2)})
                    print(f"{kind:9s}  {backend:8s}  workers {n}:  {rate:9.1f} steps/s  x{rate / base:.2f}", flush=True)
    return {"rows": rows, "steps": steps, "latency_s": latency, "cpu_s": cpu_s, "seed": seed, "env": ENV_ID,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "loadavg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=["thread", "process", "ray", "server"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=2000, help="steps per measurement of the CPU-bound env")
    parser.add_argument("--latency", type=float, default=0.02, help="seconds each step of the I/O-bound env waits")
    parser.add_argument("--cpu", type=float, default=0.004, help="seconds of pure-Python work each step of the CPU-bound env does")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    backends, notes = available_backends(args.backends)
    for note in notes:
        print(f"left out: {note}")
    result = run(backends, args.workers, args.steps, args.latency, args.cpu, args.seed)
    result["left_out"] = notes
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
