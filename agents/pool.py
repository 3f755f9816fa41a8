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

* :class:`RayEnvPool`: envs in Ray actors (slot ``i`` in actor ``i % workers``),
  local or across a cluster; a dead actor is restarted and its episodes become
  env errors. Needs ``pip install 'turngym[ray]'``.

This module depends on :mod:`turngym.envs` (lazily), :mod:`turngym.errors` and,
for the Ray pool only, ``ray`` (imported lazily).
"""

from __future__ import annotations

import contextlib
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



class _EnvActor:
    """A Ray actor's body: the envs of its slots (slot -> env), made lazily, fresh after every restart.

    ``incarnation`` is new each time Ray (re)starts the actor: a call carrying the incarnation its slot's
    episode started in fails if the actor restarted since (its env, and the episode's state, are gone).
    """

    def __init__(self, env_fn: EnvFn):
        import uuid

        self._env_fn = env_fn
        self._envs: dict[int, Any] = {}
        self.incarnation = uuid.uuid4().hex

    def call(self, slot: int, method: str, args: tuple, expected: str | None) -> tuple[Any, float, str]:
        start = time.perf_counter()
        if method == "rebuild":
            _close_quietly(self._envs.pop(slot, None))
            self._envs[slot] = self._env_fn()
            return None, time.perf_counter() - start, self.incarnation
        if method != "reset" and expected is not None and expected != self.incarnation:
            raise EnvFaultError(f"the Ray actor of env slot {slot} restarted: the episode's env state is lost")
        if slot not in self._envs:
            self._envs[slot] = self._env_fn()
            start = time.perf_counter()
        result = env_call(self._envs[slot], method, args)
        return result, time.perf_counter() - start, self.incarnation

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        for env in self._envs.values():
            _close_quietly(env)
        self._envs.clear()


class RayEnvPool:
    """Envs in Ray actors, on this machine or across a Ray cluster.

    Slot ``i`` lives in actor ``i % actors``; each actor hosts the envs of its slots and runs their calls one
    at a time (like a :class:`ProcessEnvPool` worker). Actors are placed with the ``"SPREAD"`` scheduling
    strategy, so on a cluster they go to different nodes where they can. ``env_fn`` must be picklable by
    Ray (cloudpickle); the workers must be able to import turngym.

    Faults: an actor that dies (killed, out of memory, its node lost) is restarted by Ray (``max_restarts``).
    The calls it was running or had queued fail with :class:`~turngym.errors.EnvFaultError`, and so does any
    later "step"/"query" of an episode that started before the restart, since its env state is gone: the
    runner records those episodes as env errors and rebuilds their slots. The next "reset" or "rebuild" of a
    slot makes a fresh env in the restarted actor.

    Args:
        env_fn: picklable env factory (see the module docstring).
        size: number of env slots.
        workers: actors (default: ``min(size, the cluster's CPUs)``).
        num_cpus: CPUs each actor holds (fractional allowed, e.g. 0.5). Default: Ray's default for actors
            (placed on a node with a free CPU, holds none while it runs, so more actors than CPUs fit).
        ray_address: the cluster to join (``"auto"``, ``"ray://host:10001"``, ...). None: the running Ray of
            this process if there is one, else ``ray.init()`` of a local one with ``ray_cpus`` CPUs (the
            pool then shuts it down on close).
        ray_cpus: CPUs of a local Ray started by the pool (default: all of this machine's).
        max_restarts: restarts Ray may make of each actor (-1: without limit).
    """

    def __init__(self, env_fn: EnvFn, size: int, workers: int | None = None, *, num_cpus: float | None = None,
                 ray_address: str | None = None, ray_cpus: int | None = None, max_restarts: int = -1):
        if size < 1:
            raise ValueError(f"an env pool needs at least one slot, got size={size}")
        try:
            import ray
        except ImportError as exc:
            raise ImportError("the Ray env pool needs ray: pip install 'turngym[ray]'") from exc
        self._ray = ray
        self.size = size
        self._owns_ray = False
        ray_address = ray_address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable names a cluster
        if not ray.is_initialized():
            if ray_address is None:
                ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=ray_address, log_to_driver=False)
            self._owns_ray = True
        n = max(1, min(workers or int(ray.cluster_resources().get("CPU", 1)) or 1, size))
        options: dict[str, Any] = {"max_restarts": max_restarts, "max_task_retries": 0, "scheduling_strategy": "SPREAD"}
        if num_cpus is not None:
            options["num_cpus"] = num_cpus
        remote_cls = ray.remote(_EnvActor).options(**options)
        self.actors = [remote_cls.remote(env_fn) for _ in range(n)]
        self._incarnation: list[str | None] = [None] * size  # the actor incarnation of each slot's episode
        self._closed = False

    def submit(self, slot: int, method: str, *args: Any) -> Future:
        future: Future = Future()
        a = slot % len(self.actors)
        if self._closed:
            future.set_exception(EnvFaultError(f"the Ray env pool is closed (slot {slot}, call {method!r})"))
            return future
        ref = self.actors[a].call.remote(slot, method, args, self._incarnation[slot])
        ref.future().add_done_callback(lambda done: self._settle(future, done, slot, a, method))
        return future

    def _settle(self, future: Future, done: Future, slot: int, a: int, method: str) -> None:
        from ray.exceptions import RayActorError, RayTaskError

        try:
            result, seconds, incarnation = done.result()
        except RayActorError as exc:  # the slot keeps its incarnation: its next step fails too, until a reset
            future.set_exception(EnvFaultError(f"Ray actor {a} (env slot {slot}) died during {method!r}: "
                                               f"{type(exc).__name__}; it is restarted, the episode is lost"))
            return
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            future.set_exception(cause if isinstance(cause, EnvFaultError)
                                 else EnvFaultError(f"env raised in Ray actor {a}: {type(cause).__name__}: {cause}"))
            return
        except BaseException as exc:  # noqa: BLE001 - e.g. the result could not be fetched
            future.set_exception(EnvFaultError(f"Ray call {method!r} on env slot {slot} failed: {exc!r}"))
            return
        if method in ("reset", "rebuild"):
            self._incarnation[slot] = incarnation
        future.set_result((result, seconds))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        with contextlib.suppress(Exception):  # the envs' close is best effort: the actors die next anyway
            ray.get([actor.close.remote() for actor in self.actors], timeout=10)
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._wait_dead(timeout_s=30.0)
        if self._owns_ray:
            ray.shutdown()

    def _wait_dead(self, timeout_s: float) -> None:
        """``ray.kill`` only asks: a call already on its way can still run. Close returns once every actor
        answers calls with ``RayActorError`` (or after ``timeout_s``), so nothing of the pool runs after it."""
        from ray.exceptions import GetTimeoutError, RayActorError

        deadline = time.monotonic() + timeout_s
        for actor in self.actors:
            while time.monotonic() < deadline:
                try:
                    self._ray.get(actor.pid.remote(), timeout=max(0.1, min(5.0, deadline - time.monotonic())))
                except RayActorError:
                    break
                except GetTimeoutError:  # busy or still dying: ask again
                    continue
                except Exception:  # noqa: BLE001 - any other failure to reach it: nothing more to wait for
                    break
                time.sleep(0.1)


def make_pool(kind: str | EnvPool, env_fn: EnvFn, size: int, workers: int | None = None) -> EnvPool:
    """A pool by name ("thread", "process" or "ray"), or the given pool object."""
    if not isinstance(kind, str):
        return kind
    if kind == "thread":
        return ThreadEnvPool(env_fn, size, workers)
    if kind == "process":
        return ProcessEnvPool(env_fn, size, workers)
    if kind == "ray":
        return RayEnvPool(env_fn, size, workers)
    raise ValueError(f"unknown env pool {kind!r}; use 'thread', 'process' or 'ray' (or pass an EnvPool object)")
