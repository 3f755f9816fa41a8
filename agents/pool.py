"""Env pools: where the runner's environments live and step, in parallel.

The runner owns ``size`` env *slots*; slot ``i`` holds one env for its whole
life (an episode's env state must stay where it is). It talks to the pool
through one method, :meth:`EnvPool.submit`, which returns a
``concurrent.futures.Future`` resolving to ``(result, seconds)``: the result
of the call and the env's own time for it. Calls:

    submit(slot, "reset", seed, options)   -> (obs, info)
    submit(slot, "step", action)           -> (obs, reward, terminated, truncated, info)
    submit(slot, "query", name)            -> env.unwrapped.<name>() (or the attribute's value)
    submit(slot, "rebuild")                -> None; closes the slot's env and makes a fresh one

An exception inside the env is set on the future (the runner turns it into
that episode's ``Trajectory.error``); the pool keeps serving other slots.

* :class:`ThreadEnvPool` (default): envs in this process, calls on a thread
  pool. Right for envs that wait (I/O, sandboxes, servers, sleeps) and for
  cheap envs; pure-Python CPU-bound envs share the GIL.
* :class:`ProcessEnvPool`: envs in worker processes (slot ``i`` lives in
  worker ``i % workers``), for CPU-heavy envs. ``env_fn`` must be picklable
  (a top-level function or ``functools.partial`` of one, e.g.
  ``partial(make_env, env_id, kwargs)``).

A Ray pool drops in by implementing the same two methods (``submit`` and
``close``) over actors. This module depends on :mod:`turngym.envs` (lazily)
and :mod:`turngym.errors`.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from turngym.errors import EnvFaultError

EnvFn = Callable[[], Any]


@runtime_checkable
class EnvPool(Protocol):
    """What the runner needs from a pool of env slots."""

    size: int

    def submit(self, slot: int, method: str, *args: Any) -> Future:
        """Run ``method`` on the env of ``slot``; the future gives ``(result, seconds)``."""
        ...

    def close(self) -> None:
        ...


def make_env(env_id: str, kwargs: dict[str, Any] | None = None) -> Any:
    """``turngym.make(env_id, **kwargs)``: the default, picklable env factory."""
    import turngym

    return turngym.make(env_id, **(kwargs or {}))


def env_call(env: Any, method: str, args: tuple) -> Any:
    """Apply one pool call to an env (shared by every pool, in whatever process holds the env)."""
    if method == "step":
        return env.step(args[0])
    if method == "reset":
        seed, options = args
        return env.reset(seed=seed, options=options)
    if method == "query":
        attr = getattr(env.unwrapped, args[0])
        return attr() if callable(attr) else attr
    raise ValueError(f"unknown env pool call {method!r}; use 'reset', 'step', 'query' or 'rebuild'")


class ThreadEnvPool:
    """Envs in this process, stepped on a thread pool.

    Args:
        env_fn: makes one env (called lazily, once per slot, and on "rebuild").
        size: number of env slots.
        workers: threads (default: ``size``, at most 64).
    """

    def __init__(self, env_fn: EnvFn, size: int, workers: int | None = None):
        if size < 1:
            raise ValueError(f"an env pool needs at least one slot, got size={size}")
        self.size = size
        self._env_fn = env_fn
        self._envs: list[Any] = [None] * size
        self._executor = ThreadPoolExecutor(max_workers=workers or min(size, 64), thread_name_prefix="turngym-env")

    def submit(self, slot: int, method: str, *args: Any) -> Future:
        return self._executor.submit(self._call, slot, method, args)

    def _call(self, slot: int, method: str, args: tuple) -> tuple[Any, float]:
        start = time.perf_counter()
        if method == "rebuild":
            old, self._envs[slot] = self._envs[slot], None
            _close_quietly(old)
            self._envs[slot] = self._env_fn()
            return None, time.perf_counter() - start
        if self._envs[slot] is None:
            self._envs[slot] = self._env_fn()
            start = time.perf_counter()  # construction is not the call's time
        result = env_call(self._envs[slot], method, args)
        return result, time.perf_counter() - start

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        for env in self._envs:
            _close_quietly(env)
        self._envs = [None] * self.size


def _close_quietly(env: Any) -> None:
    if env is None:
        return
    try:
        env.close()
    except Exception:
        pass


def _worker_main(conn: Any, env_fn: EnvFn) -> None:
    """A worker process: owns the envs of its slots, answers calls until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes us
    envs: dict[int, Any] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is None:
            break
        call_id, slot, method, args = message
        start = time.perf_counter()
        try:
            if method == "rebuild":
                _close_quietly(envs.pop(slot, None))
                envs[slot] = env_fn()
                result = None
            else:
                if slot not in envs:
                    envs[slot] = env_fn()
                    start = time.perf_counter()
                result = env_call(envs[slot], method, args)
            reply = (call_id, True, result, time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as text
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            reply = (call_id, False, detail, time.perf_counter() - start)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result
            conn.send((call_id, False, f"could not send the result of {method!r} back: {exc!r}", 0.0))
    for env in envs.values():
        _close_quietly(env)


class ProcessEnvPool:
    """Envs in worker processes (for CPU-heavy envs).

    Args:
        env_fn: picklable env factory (see the module docstring).
        size: number of env slots.
        workers: worker processes (default: ``min(size, os.cpu_count())``).
        start_method: multiprocessing start method ("spawn" by default: safe
            with threads and torch in the parent).
    """

    def __init__(self, env_fn: EnvFn, size: int, workers: int | None = None, start_method: str = "spawn"):
        if size < 1:
            raise ValueError(f"an env pool needs at least one slot, got size={size}")
        self.size = size
        n = max(1, min(workers or os.cpu_count() or 1, size))
        ctx = mp.get_context(start_method)
        self._ids = itertools.count()
        self._futures: dict[int, Future] = {}
        self._owner: dict[int, int] = {}
        self._lock = threading.Lock()
        self._workers: list[tuple[Any, Any, threading.Lock]] = []
        self._closed = False
        for w in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, env_fn), daemon=True, name=f"turngym-env-{w}")
            proc.start()
            child.close()
            self._workers.append((proc, parent, threading.Lock()))
            threading.Thread(target=self._read, args=(w,), daemon=True, name=f"turngym-env-reader-{w}").start()

    def submit(self, slot: int, method: str, *args: Any) -> Future:
        future: Future = Future()
        w = slot % len(self._workers)
        proc, conn, send_lock = self._workers[w]
        call_id = next(self._ids)
        with self._lock:
            self._futures[call_id] = future
            self._owner[call_id] = w
        try:
            if self._closed or not proc.is_alive():
                raise EnvFaultError(f"env worker process {w} is not running (exit code {proc.exitcode})")
            with send_lock:
                conn.send((call_id, slot, method, args))
        except Exception as exc:
            with self._lock:
                self._futures.pop(call_id, None)
                self._owner.pop(call_id, None)
            if not isinstance(exc, EnvFaultError):
                exc = EnvFaultError(f"could not send {method!r} to env worker {w}: {exc!r}")
            future.set_exception(exc)
        return future

    def _read(self, w: int) -> None:
        proc, conn, _ = self._workers[w]
        while True:
            try:
                call_id, ok, payload, seconds = conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = self._futures.pop(call_id, None)
                self._owner.pop(call_id, None)
            if future is None:
                continue
            if ok:
                future.set_result((payload, seconds))
            else:
                future.set_exception(EnvFaultError(f"env raised in worker {w}: {payload}"))
        # The worker is gone: fail whatever it still owed.
        with self._lock:
            owed = [cid for cid, owner in self._owner.items() if owner == w]
            futures = [self._futures.pop(cid) for cid in owed if cid in self._futures]
            for cid in owed:
                self._owner.pop(cid, None)
        for future in futures:
            if not future.done():
                future.set_exception(EnvFaultError(f"env worker process {w} died (exit code {proc.exitcode})"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc, conn, send_lock in self._workers:
            try:
                with send_lock:
                    conn.send(None)
            except Exception:
                pass
        for proc, conn, _ in self._workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()


def make_pool(kind: str | EnvPool, env_fn: EnvFn, size: int, workers: int | None = None) -> EnvPool:
    """A pool by name ("thread" or "process"), or the given pool object."""
    if not isinstance(kind, str):
        return kind
    if kind == "thread":
        return ThreadEnvPool(env_fn, size, workers)
    if kind == "process":
        return ProcessEnvPool(env_fn, size, workers)
    raise ValueError(f"unknown env pool {kind!r}; use 'thread' or 'process' (or pass an EnvPool object)")
