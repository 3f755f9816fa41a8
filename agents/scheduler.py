"""The batching scheduler behind ``turngym serve``: requests in, one engine thread, completions out.

The engine is driven by ONE worker thread (engines need not be thread-safe). When it is
idle, the first job opens a window of ``batch_wait_s`` that each new arrival extends by as
much (up to ``BURST_FACTOR`` windows in all, so a burst from a client's thread pool lands
in one batch); everything that arrives in it, up to ``max_batch_size`` prompts, goes into
one ``engine.generate`` call; while a batch runs, new jobs queue and form the next batch
at once. Jobs may differ in sampling parameters (``generate`` takes one
``SamplingParams`` per prompt). If a batch fails, its jobs are retried one by one so that
one bad request fails alone. With an engine that batches continuously (the hf engine's
``session()``), jobs instead join the running batch between decode steps; a job whose
admission fails fails alone there too (the session's ``RequestsFailed``).

Bounded work: :meth:`BatchScheduler.submit_many` takes a request's jobs all or none, and
refuses them (False) when more than ``max_pending`` jobs would be live (accepted, not
finished); :meth:`BatchScheduler.cancel` drops the jobs of a client that went away: a
queued job never runs, a running one leaves the continuous batch at the next step (in a
lockstep ``generate`` already under way it finishes, unread). Either way its room is
free at once.

Each job hands its results to a ``deliver(kind, payload)`` callback, called from the
worker thread; the caller (the app in :mod:`turngym.agents.serve`) moves them onto its
event loop. This module knows nothing of HTTP or of the OpenAI shapes: a chat template
that fails is a :class:`ChatTemplateError`, which the protocol turns into an HTTP 400.

Depends on :mod:`turngym.agents.types` and the standard library.
"""

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turngym.agents.engines.base import LocalEngine, RequestsFailed, continuous_batching_off_reason, engine_name
from turngym.agents.types import Completion, Prompt, SamplingParams


class ChatTemplateError(ValueError):
    """The engine could not render a job's chat messages to a prompt."""


Deliver = Callable[[str, Any], None]


@dataclass
class Job:
    """One prompt to complete. ``deliver(kind, payload)`` is called from the worker thread
    with ("text", text_so_far) while streaming, then ("done", JobResult) or ("error", exc)."""

    sampling: SamplingParams
    deliver: Deliver
    prompt: Prompt | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    stream: bool = False
    token_texts: bool = False
    #: set (from any thread) by :meth:`BatchScheduler.cancel`: the worker drops the job
    cancelled: bool = field(default=False, repr=False)
    #: its room in the live count is given back (finished, failed or cancelled); under the scheduler's lock
    released: bool = field(default=False, repr=False)


@dataclass
class JobResult:
    """A finished job: its completion, the prompt's token ids (the engine's, else the prompt's own
    ids; None for a text prompt the engine did not report), each sampled token's text if asked."""

    completion: Completion
    prompt_ids: list[int] | None
    token_texts: list[str] | None


@dataclass
class _Call:
    fn: Callable[[], Any]
    deliver: Deliver
    cancelled: bool = False
    released: bool = False


@dataclass
class SchedulerStats:
    generate_calls: int = 0
    prompts: int = 0
    max_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # the last 1000
    cancelled: int = 0  # jobs the worker dropped because their client went away (queued or running)
    refused: int = 0  # jobs refused because ``max_pending`` were live


class BatchScheduler:
    """Collects jobs into batches and runs them through ONE worker thread that owns the engine.

    Args:
        engine: any turngym engine.
        max_batch_size: most prompts per ``generate`` call.
        batch_wait_s: how long an idle worker waits for company after the first job; each
            job that arrives in the window extends it by as much, up to ``BURST_FACTOR``
            windows in all.
        continuous: continuous batching (None: where the engine supports it).
        max_pending: most live jobs (accepted, not finished: queued or running); None: no bound.
    """

    BURST_FACTOR = 8

    def __init__(self, engine: Any, max_batch_size: int = 32, batch_wait_s: float = 0.005,
                 continuous: bool | None = None, max_pending: int | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_pending is not None and max_pending < 1:
            raise ValueError(f"max_pending must be >= 1 (or None), got {max_pending}")
        off_reason = continuous_batching_off_reason(engine)
        can = off_reason is None
        if continuous and not can:
            raise ValueError(f"continuous batching needs an engine with session() (the hf engine); "
                             f"{engine_name(engine)!r} cannot: {off_reason}")
        #: requests join the engine's running batch between decode steps (else: one generate per batch)
        self.continuous = can if continuous is None else bool(continuous)
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_pending = max_pending
        self.stats = SchedulerStats()
        self._live = 0  # accepted jobs and calls not yet released
        self._queue: queue.Queue[Job | _Call | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="turngym-serve-engine", daemon=True)
                self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def submit(self, job: Job) -> bool:
        """Queue one job; False (nothing queued) when ``max_pending`` jobs are live."""
        return self.submit_many([job])

    def submit_many(self, jobs: list[Job]) -> bool:
        """Queue all of ``jobs`` (one request's) or, when they would take the live count past
        ``max_pending``, none: False."""
        if not self._reserve(len(jobs)):
            return False
        self.start()
        for job in jobs:
            self._queue.put(job)
        return True

    def cancel(self, jobs: list[Job] | list[_Call]) -> None:
        """Drop these jobs (their client went away), from any thread: their room is free at once, the worker
        skips them or takes them out of the running batch, and they deliver nothing more."""
        for job in jobs:
            job.cancelled = True
            self._release(job)

    def pending(self) -> int:
        """Jobs and calls waiting for the worker."""
        return self._queue.qsize()

    def live(self) -> int:
        """Accepted jobs and calls not finished, failed or cancelled yet (what ``max_pending`` bounds)."""
        return self._live

    def call(self, fn: Callable[[], Any], deliver: Deliver) -> _Call | None:
        """Run ``fn`` on the engine's thread (e.g. tokenizing), between batches; None (not queued) when
        ``max_pending`` jobs are live. The call counts as one job."""
        if not self._reserve(1):
            return None
        self.start()
        item = _Call(fn, deliver)
        self._queue.put(item)
        return item

    def _reserve(self, count: int) -> bool:
        with self._lock:
            if self.max_pending is not None and self._live + count > self.max_pending:
                self.stats.refused += count
                return False
            self._live += count
            return True

    def _release(self, job: Job | _Call) -> bool:
        """Give back a job's room, once; False when it was given back already (finished or cancelled)."""
        with self._lock:
            if job.released:
                return False
            job.released = True
            self._live -= 1
            return True

    def _end(self, job: Job | _Call, kind: str, payload: Any) -> None:
        """A job's last delivery ("done" or "error"), unless it was cancelled."""
        if self._release(job):
            job.deliver(kind, payload)

    def _dropped(self, job: Job) -> bool:
        """True (and counted) when ``job`` was cancelled: the worker must not run it."""
        if job.cancelled:
            self.stats.cancelled += 1
        return job.cancelled

    def _loop(self) -> None:
        if self.continuous:
            self._loop_continuous()
            return
        while True:
            batch, stop = self._wait_batch()
            if batch:
                self._run_batch(batch)
            if stop:
                return

    def _wait_batch(self) -> tuple[list[Job], bool]:
        """Block for the next job (running calls that come first) and collect its window; True when told
        to stop."""
        while True:
            item = self._queue.get()
            if item is None:
                return [], True
            if isinstance(item, _Call):
                self._run_call(item)
                continue
            if self._dropped(item):
                continue
            return self._collect(item, self.max_batch_size)

    def _collect(self, first: Job, most: int) -> tuple[list[Job], bool]:
        """``first`` and the jobs that arrive in its window (up to ``most``); True when told to stop.
        The window stays open while requests keep arriving (a burst from a client's thread pool
        trickles in), up to BURST_FACTOR windows in all."""
        batch = [first]
        start = time.monotonic()
        deadline = start + self.batch_wait_s
        while len(batch) < most:
            try:
                remaining = deadline - time.monotonic()
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                return batch, True
            if isinstance(nxt, _Call):
                self._run_call(nxt)
            elif not self._dropped(nxt):
                batch.append(nxt)
                deadline = min(time.monotonic() + self.batch_wait_s, start + self.BURST_FACTOR * self.batch_wait_s)
        return batch, False

    def _loop_continuous(self) -> None:
        """Continuous batching (:class:`~turngym.agents.engines.hf.HFSession`): between decode steps the
        worker takes every queued request into the engine's running batch, so a request that arrives while
        others decode starts at the next step instead of after the whole batch."""
        session = self.engine.session()
        jobs: dict[int, tuple[Job, Prompt]] = {}
        stop = False
        while True:
            busy = bool(session.running or session.waiting)
            if stop and not busy:
                return
            arrived: list[Job] = []
            if not busy and not stop:  # idle: wait for a request, then for its company
                arrived, stop = self._wait_batch()
            while not stop:  # and whatever else is queued, without waiting
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                elif isinstance(item, _Call):
                    self._run_call(item)
                else:
                    arrived.append(item)
            if arrived:
                self._admit(session, jobs, arrived)
            for request in [r for r, (job, _) in jobs.items() if job.cancelled]:  # their clients went away
                del jobs[request]
                if session.cancel(request):
                    self.stats.cancelled += 1
            if not (session.running or session.waiting):
                continue
            try:
                finished = session.step()
            except RequestsFailed as failed:  # those requests' own fault: the others run on
                for request, exc in failed.failures.items():
                    if request in jobs:
                        self._end(jobs.pop(request)[0], "error", exc)
                finished = failed.finished
            except Exception as exc:  # noqa: BLE001 - a fault of the shared decode step: no row to blame
                for job, _ in jobs.values():
                    self._end(job, "error", exc)
                jobs.clear()
                session = self.engine.session()
                continue
            self.stats.max_batch = max(self.stats.max_batch, session.running + len(finished))
            for request, completion in finished:
                job, prompt = jobs.pop(request)
                self._deliver(job, prompt, completion)

    def _admit(self, session: Any, jobs: dict[int, tuple[Job, Prompt]], arrived: list[Job]) -> None:
        submitted = 0
        for job in arrived:
            if self._dropped(job):
                continue
            try:
                prompt = job.prompt if job.messages is None else self.engine.render(job.messages, job.tools)
            except Exception as exc:  # noqa: BLE001 - whatever the template raises is the request's fault
                self._end(job, "error", ChatTemplateError(f"the chat template failed: {exc}"))
                continue
            on_text = (lambda text, job=job: job.cancelled or job.deliver("text", text)) if job.stream else None
            try:
                request = session.submit(prompt, job.sampling, on_text)
            except Exception as exc:  # noqa: BLE001 - a bad prompt (too long, unknown ids) fails alone
                self._end(job, "error", exc)
                continue
            jobs[request] = (job, prompt)
            submitted += 1
        if submitted:
            self.stats.generate_calls += 1
            self.stats.prompts += submitted
            self.stats.batch_sizes = self.stats.batch_sizes[-999:] + [submitted]

    def _run_call(self, call: _Call) -> None:
        if call.cancelled:
            return
        try:
            result = call.fn()
        except Exception as exc:  # noqa: BLE001 - handed to the request, which answers with an error
            self._end(call, "error", exc)
        else:
            self._end(call, "done", result)

    def _run_batch(self, batch: list[Job]) -> None:
        jobs, prompts = [], []
        for job in batch:
            if self._dropped(job):  # cancelled while its window was open
                continue
            if job.messages is None:
                jobs.append(job)
                prompts.append(job.prompt)
                continue
            try:
                prompts.append(self.engine.render(job.messages, job.tools))
            except Exception as exc:  # noqa: BLE001 - whatever the template raises is the request's fault
                self._end(job, "error", ChatTemplateError(f"the chat template failed: {exc}"))
                continue
            jobs.append(job)
        if jobs:
            self._generate(jobs, prompts)

    def _generate(self, jobs: list[Job], prompts: list[Prompt]) -> None:
        on_text = None
        if any(job.stream for job in jobs):
            def on_text(i: int, text: str) -> None:
                if jobs[i].stream and not jobs[i].cancelled:
                    jobs[i].deliver("text", text)
        try:
            completions = self.engine.generate(prompts, [job.sampling for job in jobs], on_text=on_text)
            if len(completions) != len(prompts):
                raise RuntimeError(f"engine returned {len(completions)} completions for {len(prompts)} prompts")
        except Exception as exc:  # noqa: BLE001 - the worker never dies; the jobs get the error
            if len(jobs) > 1:  # find the culprit: one bad request must not fail its neighbours
                for job, prompt in zip(jobs, prompts):
                    if not self._dropped(job):
                        self._generate([job], [prompt])
                return
            self._end(jobs[0], "error", exc)
            return
        self.stats.generate_calls += 1
        self.stats.prompts += len(jobs)
        self.stats.max_batch = max(self.stats.max_batch, len(jobs))
        self.stats.batch_sizes = self.stats.batch_sizes[-999:] + [len(jobs)]
        for job, prompt, completion in zip(jobs, prompts, completions):
            self._deliver(job, prompt, completion)

    def _deliver(self, job: Job, prompt: Prompt, completion: Completion) -> None:
        try:
            prompt_ids = completion.prompt_ids
            if prompt_ids is None and isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
                prompt_ids = list(prompt)
            texts = None
            if job.token_texts and completion.token_ids is not None:
                texts = token_texts(self.engine, completion.token_ids)
            result = JobResult(completion, prompt_ids, texts)
        except Exception as exc:  # noqa: BLE001 - e.g. a tokenizer that cannot decode: this job fails alone
            self._end(job, "error", exc)
        else:
            self._end(job, "done", result)


def token_texts(engine: Any, ids: list[int]) -> list[str]:
    """Each token's text for OpenAI log-prob entries: the engine's tokenizer, else ``token_id:N``."""
    if isinstance(engine, LocalEngine):
        return [engine.tokenizer.decode([i]) for i in ids]
    return [f"token_id:{i}" for i in ids]
