"""Continuous batching over one :class:`~turngym.agents.engines.hf.HFEngine` (:class:`HFSession`).

Requests join and leave one running batch between decode steps, instead of
``generate``'s fixed batch that decodes until its last row finishes. The
session drives the engine's own batch operations (prefill a batch of rows,
merge it into the running one, one decode step), so every request is decoded
exactly as ``generate`` would decode it.

Depends on ``turngym.agents`` and ``turngym.errors``; torch is imported
lazily through the engine (the ``hf`` extra).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from turngym.agents.engines.base import RequestsFailed
from turngym.agents.engines.hf import eval_mode
from turngym.agents.engines.prefix_cache import weights_fingerprint
from turngym.agents.engines.sampling import Row
from turngym.agents.types import Completion, Prompt, SamplingParams
from turngym.errors import TurngymError

if TYPE_CHECKING:
    from turngym.agents.engines.hf import HFEngine, _Batch


class HFSession:
    """Continuous batching over one ``HFEngine``: requests join and leave a running batch between steps.

    ``generate`` decodes a fixed batch until its LAST row finishes, so a turn
    of a multi-turn rollout costs as many decode steps as its longest reply
    while most rows sit finished, and no episode starts its next turn before
    all have ended theirs. A session instead keeps one batch running:
    :meth:`submit` queues a request, :meth:`step` runs ONE decode step over
    every running row and returns the requests that finished in it; queued
    requests are prefilled (from the prefix cache, shared prefixes once) and
    merged into the running batch before a step when enough of them wait
    (``admit_fraction`` of the running rows, at least one), when nothing
    runs, or when the oldest has waited ``max_wait_steps`` steps, up to the
    engine's ``max_batch_size`` rows. Merging copies the running keys/values
    once; batching admissions keeps that rare.

    Every request is decoded exactly as ``generate`` would (same sampling,
    stop strings, log-probs, per-request seeded generator), so a request's
    completion does not depend on what else runs beside it, up to float
    rounding of differently shaped batches. ``on_text`` streams like
    ``generate``'s, per request. :meth:`cancel` drops a request, queued or
    running, between steps (a client that went away).

    A request whose prefill fails (a group that fails is retried one row at
    a time) fails alone: :meth:`step` raises
    :class:`~turngym.agents.engines.base.RequestsFailed` naming it, with the
    step's finished requests, and the other rows run on. A fault of the
    shared decode step (a forward pass over every row) raises as it is: no
    row is to blame. The engine's weights must not change while rows run (a
    step raises if they did); between rollout phases, let the session drain
    or open a new one. Used by
    :class:`~turngym.agents.runner.EpisodeRunner` (``schedule="continuous"``).
    Single-threaded: call it from one thread.
    """

    def __init__(self, engine: HFEngine, *, admit_fraction: float = 0.25, max_wait_steps: int = 16):
        if engine.session_off_reason is not None:
            raise TurngymError(f"{engine.name} cannot run a continuous-batching session: "
                               f"{engine.session_off_reason}; use generate() (the runner's schedule='lockstep')")
        if not 0 <= admit_fraction <= 1:
            raise ValueError(f"admit_fraction must be in [0, 1], got {admit_fraction}")
        self.engine = engine
        self.admit_fraction = float(admit_fraction)
        self.max_wait_steps = int(max_wait_steps)
        self._waiting: deque[tuple[Row, int]] = deque()
        self._callbacks: dict[int, Callable[[str], None]] = {}
        self._failed: dict[int, Exception] = {}  # requests whose admission failed in this step
        self._batch: _Batch | None = None
        self._fingerprint: Any = None
        self._modules = list(engine.model.modules())
        self._tensors = list(itertools.chain(engine.model.parameters(), engine.model.buffers()))
        self._versions: tuple[int, ...] = ()
        self._next_id = 0
        #: decode steps run, prefill passes that admitted requests, requests admitted
        self.steps = self.admissions = self.admitted = 0

    @property
    def running(self) -> int:
        """Rows in the running batch."""
        return len(self._batch.rows) if self._batch is not None else 0

    @property
    def waiting(self) -> int:
        """Submitted requests not admitted yet."""
        return len(self._waiting)

    def submit(self, prompt: Prompt, sampling: SamplingParams, on_text: Callable[[str], None] | None = None) -> int:
        """Queue a request; returns its id (the first element of its pair in :meth:`step`'s result).
        ``on_text(text_so_far)`` streams its text as ``generate``'s ``on_text`` does."""
        request = self._next_id
        self._next_id += 1
        row = self.engine._new_row(request, self.engine.prompt_ids(prompt), sampling)
        self._waiting.append((row, self.steps))
        if on_text is not None:
            self._callbacks[request] = on_text
        return request

    def step(self) -> list[tuple[int, Completion]]:
        """Admit queued requests when due, run one decode step; returns ``(id, completion)`` of every request
        that finished (in the running batch's order). Nothing to do returns ``[]``. Raises
        :class:`~turngym.agents.engines.base.RequestsFailed` when requests failed to be admitted (the
        finished ones ride on it; the session goes on)."""
        engine = self.engine
        torch = engine._torch
        done = []
        with engine._lock, torch.no_grad(), eval_mode(engine.model, self._modules):
            if self._batch is not None and self._batch.rows and self._changed():
                raise RuntimeError(f"{engine.name}'s weights changed while a session had rows running; let a "
                                   "session drain (or open a new one) before updating the weights")
            self._admit()
            if self._batch is not None and self._batch.rows:
                done = engine._decode_step(self._batch, self._stream if self._callbacks else None)
                self.steps += 1
        for row in done:
            self._callbacks.pop(row.index, None)
        finished = [(row.index, engine._completion(row)) for row in done]
        if self._failed:
            failed, self._failed = self._failed, {}
            raise RequestsFailed(failed, finished)
        return finished

    def cancel(self, request: int) -> bool:
        """Drop a queued or running request between steps (its client went away): it never finishes, and a
        running one frees its row at once. False when the session does not hold it (finished, unknown)."""
        self._callbacks.pop(request, None)
        for k, (row, _) in enumerate(self._waiting):
            if row.index == request:
                del self._waiting[k]
                return True
        batch = self._batch
        rows = batch.rows if batch is not None else []
        keep = [b for b, row in enumerate(rows) if row.index != request]
        if len(keep) == len(rows):
            return False
        if not keep:
            batch.rows, batch.logits = [], None
            return True
        with self.engine._lock, self.engine._torch.no_grad():
            self.engine._keep_rows(batch, keep)
        return True

    def _changed(self) -> bool:
        """Whether the weights changed since the running rows started: version counters of the tensors
        listed then (cheap enough for every step), and the full fingerprint every 16 steps (a tensor
        replaced by another)."""
        if not isinstance(self._fingerprint, tuple):  # inference tensors: nothing to compare
            return False
        if tuple(t._version for t in self._tensors) != self._versions:
            return True
        return self.steps % 16 == 0 and weights_fingerprint(self.engine.model) != self._fingerprint

    def _stream(self, index: int, text: str) -> None:
        callback = self._callbacks.get(index)
        if callback is not None:
            callback(text)

    def _admit(self) -> None:
        engine, waiting = self.engine, self._waiting
        running = self.running
        room = engine.max_batch_size - running
        if not waiting or room <= 0:
            return
        due = (running == 0 or len(waiting) >= max(1, math.ceil(running * self.admit_fraction))
               or self.steps - waiting[0][1] >= self.max_wait_steps)
        if not due:
            return
        rows = [waiting.popleft()[0] for _ in range(min(room, len(waiting)))]
        if running == 0:
            self._fingerprint = weights_fingerprint(engine.model)
            try:
                self._versions = tuple(t._version for t in self._tensors)
            except RuntimeError:  # inference tensors keep no version counter
                self._tensors, self._versions = [], ()
        if engine.prefix_cache is not None:
            engine.prefix_cache.check_weights(self._fingerprint)
        try:
            opened = [engine._open(rows)]
        except Exception as exc:  # noqa: BLE001 - find the rows at fault: each alone, the others go on
            opened = []
            if len(rows) == 1:
                self._fail(rows[0].index, exc)
            else:
                for row in rows:
                    try:
                        opened.append(engine._open([row]))
                    except Exception as row_exc:  # noqa: BLE001 - this request's own fault
                        self._fail(row.index, row_exc)
        for new in opened:
            if self._batch is None or not self._batch.rows:
                self._batch = new
            else:
                engine._merge(self._batch, new)
        if opened:
            self.admissions += 1
            self.admitted += sum(len(new.rows) for new in opened)

    def _fail(self, request: int, exc: Exception) -> None:
        self._failed[request] = exc
        self._callbacks.pop(request, None)
