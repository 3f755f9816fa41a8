"""`turngym serve`: an OpenAI-compatible HTTP server over any turngym engine.

    turngym serve [--model default|PATH|vllm:PATH] [--host 127.0.0.1] [--port 8000]
                  [--max-batch-size 32] [--batch-wait-ms 10] [--api-key KEY]

Endpoints (the shapes of the OpenAI API; vLLM's extensions where it has one):

    GET  /v1/models             the one served model
    POST /v1/completions        prompt: a string, token ids, or a list of either
    POST /v1/chat/completions   messages (+ tools, passed to the chat template)
    POST /tokenize              vLLM's tokenizer endpoint: {"messages", "tools"} or {"prompt"} -> {"tokens"}
    GET  /health                200 when up

Both generation endpoints take ``max_tokens`` (chat: also ``max_completion_tokens``),
``temperature``, ``top_p``, ``stop``, ``seed``, ``n`` (n copies of the prompt in the
batch; copy ``i`` gets ``seed + i``), ``logprobs`` (completions: an int; chat:
``logprobs: true``), ``stream`` (server-sent events) and ``stream_options.include_usage``.
Answers carry ``usage`` counts. Requests that ask for what an engine cannot do
(``echo``, ``suffix``, ``logit_bias``, penalties, ``prompt_logprobs``, a forced
``tool_choice``) get HTTP 400 naming the field, not a silently different answer.

Extensions (vLLM's names, opt-in per request):

- ``return_token_ids: true``: completions put ``prompt_token_ids`` and ``token_ids`` on
  each choice; chat puts ``prompt_token_ids`` at the top level and ``token_ids`` on each
  choice. ``token_ids`` are the ids the engine sampled (token in, token out), all of them,
  including those of a stop string that the text leaves out.
- ``return_tokens_as_token_ids: true``: log-prob entries name tokens as ``"token_id:123"``.
- ``include_stop_str_in_output: true``: keep the matched stop string in the text (the
  OpenAI default drops it). turngym's ``OpenAIEngine`` sets all three.

Log-probs are those of the sampled tokens under the model (before temperature and
top-p, see ``turngym.agents.types``); ``top_logprobs`` lists come back empty because an
engine exposes only the sampled token's log-prob.

Streaming: text arrives as the engine decodes it (the ``on_text`` hook). Log-probs,
``token_ids`` and ``prompt_token_ids`` come in the last chunk of each choice, since an
engine knows them only when its batch is done; a client that concatenates the chunks'
``token_ids`` (as vLLM clients do) gets the full list.

Chat with ``tools``: tool calls in the Hermes format that SmolLM2's and Qwen's templates
ask for (``<tool_call>{"name": ..., "arguments": ...}</tool_call>``) are parsed into
``message.tool_calls``; ``message.content`` keeps the raw text, so text and token ids agree.

Batching: the engine is driven by ONE worker thread (engines need not be thread-safe).
When it is idle, the first request opens a window of ``--batch-wait-ms`` that each new
arrival extends by as much (up to 8 windows in all, so a burst from a client's thread pool
lands in one batch); everything that arrives in it, up to ``--max-batch-size`` prompts,
goes into one ``engine.generate`` call; while a batch runs, new requests queue and form
the next batch at once. Requests may differ in sampling parameters (``generate`` takes one
``SamplingParams`` per prompt).
If a batch fails, its requests are retried one by one so that one bad request fails alone.
With an engine that batches continuously (the hf engine's ``session()``; ``--schedule
auto``, the default, picks it), requests instead join the running batch between decode
steps: one that arrives while others decode starts at the next step rather than after
the whole batch, and ``stats.generate_calls`` counts admissions into the running batch.

This module is imported by the CLI to build its parser: fastapi and uvicorn (the
``serve`` extra) and the engines are imported inside the functions that need them.
"""


import argparse
import json
import queue
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from turngym.agents.types import Completion, Prompt, SamplingParams
from turngym.errors import TurngymError, require
from turngym.http_server import ServerThread as _ServerThread

#: Completions default to OpenAI's 16 tokens; chat to this (OpenAI: "up to the context").
DEFAULT_CHAT_MAX_TOKENS = 256
_MAX_N = 64
_MAX_PROMPTS_PER_REQUEST = 256


# ---- errors in the OpenAI shape --------------------------------------------------------------


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param)


# ---- request parsing -------------------------------------------------------------------------


def _get(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = None, what: str = "") -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int in Python; a JSON true is never a valid count
    if isinstance(value, bool) and bool not in kinds:
        raise _bad(name, f"expected {what or _kind_names(kinds)}, got {json.dumps(value)}")
    if not isinstance(value, kinds):
        raise _bad(name, f"expected {what or _kind_names(kinds)}, got {json.dumps(value)[:80]}")
    return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


@dataclass
class _Request:
    """What both generation endpoints share, validated."""

    model: str | None
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None
    n: int
    stream: bool
    include_usage: bool
    logprobs: bool
    return_token_ids: bool
    tokens_as_ids: bool
    include_stop: bool

    def sampling(self, copy: int) -> SamplingParams:
        seed = None if self.seed is None else self.seed + copy
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              stop=list(self.stop), seed=seed, logprobs=True)


def _parse_common(body: dict[str, Any], chat: bool, default_max_tokens: int) -> _Request:
    model = _get(body, "model", (str,))
    max_tokens = _get(body, "max_tokens", (int,))
    if chat and max_tokens is None:
        max_tokens = _get(body, "max_completion_tokens", (int,))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens < 1:
        name = "max_tokens" if "max_tokens" in body or not chat else "max_completion_tokens"
        raise _bad(name, f"must be >= 1, got {max_tokens}")
    temperature = float(_get(body, "temperature", (int, float), 1.0))
    if temperature < 0:
        raise _bad("temperature", f"must be >= 0, got {temperature}")
    top_p = float(_get(body, "top_p", (int, float), 1.0))
    if not 0 < top_p <= 1:
        raise _bad("top_p", f"must be in (0, 1], got {top_p}")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise _bad("stop", "expected a string or a list of strings")
    stop = [s for s in stop if s]
    seed = _get(body, "seed", (int,))
    n = _get(body, "n", (int,), 1)
    if not 1 <= n <= _MAX_N:
        raise _bad("n", f"must be between 1 and {_MAX_N}, got {n}")
    best_of = _get(body, "best_of", (int,))
    if best_of is not None and best_of != n:
        raise _bad("best_of", "is not supported (it would need to score and rank samples); leave it unset")
    stream = _get(body, "stream", (bool,), False)
    stream_options = _get(body, "stream_options", (dict,), {})
    include_usage = bool(stream_options.get("include_usage", False))
    if chat:
        logprobs = _get(body, "logprobs", (bool,), False)
        _get(body, "top_logprobs", (int,))
    else:
        lp = _get(body, "logprobs", (int,))
        if lp is not None and lp < 0:
            raise _bad("logprobs", f"must be >= 0, got {lp}")
        logprobs = lp is not None
    for name in ("frequency_penalty", "presence_penalty"):
        if _get(body, name, (int, float), 0) != 0:
            raise _bad(name, "is not supported by turngym serve; leave it at 0")
    if _get(body, "logit_bias", (dict,), {}):
        raise _bad("logit_bias", "is not supported by turngym serve")
    if body.get("prompt_logprobs") is not None:
        raise _bad("prompt_logprobs", "is not supported: engines score sampled tokens only")
    fmt = _get(body, "response_format", (dict,), {})
    if fmt and fmt.get("type", "text") != "text":
        raise _bad("response_format", f"type {fmt.get('type')!r} is not supported; only 'text'")
    return _Request(
        model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed, n=n,
        stream=stream, include_usage=include_usage, logprobs=logprobs,
        return_token_ids=_get(body, "return_token_ids", (bool,), False),
        tokens_as_ids=_get(body, "return_tokens_as_token_ids", (bool,), False),
        include_stop=_get(body, "include_stop_str_in_output", (bool,), False),
    )


def _parse_prompts(body: dict[str, Any], vocab_size: int | None) -> list[Prompt]:
    """OpenAI's ``prompt``: a string, token ids, a list of strings or a list of id lists."""
    if "prompt" not in body or body["prompt"] is None:
        raise _bad("prompt", "is required (a string or a list of token ids)")
    prompt = body["prompt"]
    if isinstance(prompt, str):
        prompts: list[Prompt] = [prompt]
    elif isinstance(prompt, list) and prompt and all(_is_id(t) for t in prompt):
        prompts = [list(prompt)]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = list(prompt)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, list) and p and all(_is_id(t) for t in p)
                                                     for p in prompt):
        prompts = [list(p) for p in prompt]
    else:
        raise _bad("prompt", "expected a string, a non-empty list of token ids (ints >= 0), "
                             "or a list of either")
    if len(prompts) > _MAX_PROMPTS_PER_REQUEST:
        raise _bad("prompt", f"at most {_MAX_PROMPTS_PER_REQUEST} prompts per request, got {len(prompts)}")
    if vocab_size is not None:
        for p in prompts:
            if isinstance(p, list) and max(p) >= vocab_size:
                raise _bad("prompt", f"token id {max(p)} is out of range for a vocabulary of {vocab_size}")
    return prompts


def _is_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _parse_messages(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool]:
    """Messages as a chat template expects them, the tools, and whether to parse tool calls."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "is required: a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _bad(f"messages[{i}]", "expected an object with a string 'role'")
        msg = dict(msg)
        content = msg.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise _bad(f"messages[{i}].content", "only text parts ({\"type\": \"text\", \"text\": ...}) "
                                                         "are supported")
                texts.append(part["text"])
            msg["content"] = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise _bad(f"messages[{i}].content", "expected a string, a list of text parts, or null")
        if msg.get("tool_calls"):
            msg["tool_calls"] = [_template_tool_call(c) for c in msg["tool_calls"]]
        out.append(msg)
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise _bad("tools", "expected a list of tool objects ({\"type\": \"function\", \"function\": {...}})")
    tool_choice = body.get("tool_choice")
    if tool_choice not in (None, "auto", "none"):
        raise _bad("tool_choice", "only 'auto' and 'none' are supported (a template cannot force a call)")
    return out, tools or None, bool(tools) and tool_choice != "none"


def _template_tool_call(call: Any) -> Any:
    # OpenAI sends arguments as a JSON string; HF chat templates expect a dict.
    if isinstance(call, dict) and isinstance(call.get("function"), dict):
        fn = dict(call["function"])
        if isinstance(fn.get("arguments"), str):
            try:
                fn["arguments"] = json.loads(fn["arguments"])
            except json.JSONDecodeError:
                pass
        return {**call, "function": fn}
    return call


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Hermes-format tool calls in ``text`` as OpenAI ``tool_calls`` (malformed ones are skipped)."""
    calls = []
    for match in _TOOL_CALL.finditer(text):
        try:
            data = json.loads(match.group(1))
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        args = data.get("arguments", data.get("parameters", {}))
        calls.append({"id": "call_" + secrets.token_hex(12), "type": "function",
                      "function": {"name": data["name"],
                                   "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return calls


# ---- the batching scheduler ------------------------------------------------------------------

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


@dataclass
class JobResult:
    completion: Completion
    prompt_ids: list[int] | None
    token_texts: list[str] | None


@dataclass
class _Call:
    fn: Callable[[], Any]
    deliver: Deliver


@dataclass
class SchedulerStats:
    generate_calls: int = 0
    prompts: int = 0
    max_batch: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # the last 1000


class BatchScheduler:
    """Collects jobs into batches and runs them through ONE worker thread that owns the engine.

    Args:
        engine: any turngym engine.
        max_batch_size: most prompts per ``generate`` call.
        batch_wait_s: how long an idle worker waits for company after the first job; each
            job that arrives in the window extends it by as much, up to ``BURST_FACTOR``
            windows in all.
    """

    BURST_FACTOR = 8

    def __init__(self, engine: Any, max_batch_size: int = 32, batch_wait_s: float = 0.005,
                 continuous: bool | None = None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        can = callable(getattr(engine, "session", None)) and getattr(engine, "session_off_reason", None) is None
        if continuous and not can:
            raise ValueError(f"continuous batching needs an engine with session() (the hf engine); "
                             f"{getattr(engine, 'name', engine)!r} has none")
        #: requests join the engine's running batch between decode steps (else: one generate per batch)
        self.continuous = can if continuous is None else bool(continuous)
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.stats = SchedulerStats()
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

    def submit(self, job: Job) -> None:
        self.start()
        self._queue.put(job)

    def pending(self) -> int:
        """Jobs and calls waiting for the worker."""
        return self._queue.qsize()

    def call(self, fn: Callable[[], Any], deliver: Deliver) -> None:
        """Run ``fn`` on the engine's thread (e.g. tokenizing), between batches."""
        self.start()
        self._queue.put(_Call(fn, deliver))

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
            else:
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
            if not (session.running or session.waiting):
                continue
            try:
                finished = session.step()
            except Exception as exc:  # every running request fails with it; a fresh session goes on
                for job, _ in jobs.values():
                    job.deliver("error", exc)
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
            try:
                prompt = job.prompt if job.messages is None else self.engine.render(job.messages, job.tools)
            except Exception as exc:
                job.deliver("error", APIError(400, f"messages: the chat template failed: {exc}", param="messages"))
                continue
            on_text = (lambda text, job=job: job.deliver("text", text)) if job.stream else None
            try:
                request = session.submit(prompt, job.sampling, on_text)
            except Exception as exc:  # a bad prompt (too long, unknown ids) fails alone
                job.deliver("error", exc)
                continue
            jobs[request] = (job, prompt)
            submitted += 1
        if submitted:
            self.stats.generate_calls += 1
            self.stats.prompts += submitted
            self.stats.batch_sizes = self.stats.batch_sizes[-999:] + [submitted]

    @staticmethod
    def _run_call(call: _Call) -> None:
        try:
            result = call.fn()
        except Exception as exc:  # handed to the request, which answers with an error
            call.deliver("error", exc)
        else:
            call.deliver("done", result)

    def _run_batch(self, batch: list[Job]) -> None:
        jobs, prompts = [], []
        for job in batch:
            if job.messages is None:
                jobs.append(job)
                prompts.append(job.prompt)
                continue
            try:
                prompts.append(self.engine.render(job.messages, job.tools))
            except Exception as exc:
                job.deliver("error", APIError(400, f"messages: the chat template failed: {exc}", param="messages"))
                continue
            jobs.append(job)
        if jobs:
            self._generate(jobs, prompts)

    def _generate(self, jobs: list[Job], prompts: list[Prompt]) -> None:
        on_text = None
        if any(job.stream for job in jobs):
            def on_text(i: int, text: str) -> None:
                if jobs[i].stream:
                    jobs[i].deliver("text", text)
        try:
            completions = self.engine.generate(prompts, [job.sampling for job in jobs], on_text=on_text)
            if len(completions) != len(prompts):
                raise RuntimeError(f"engine returned {len(completions)} completions for {len(prompts)} prompts")
        except Exception as exc:
            if len(jobs) > 1:  # find the culprit: one bad request must not fail its neighbours
                for job, prompt in zip(jobs, prompts):
                    self._generate([job], [prompt])
                return
            jobs[0].deliver("error", exc)
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
            job.deliver("done", JobResult(completion, prompt_ids, texts))
        except Exception as exc:
            job.deliver("error", exc)


def token_texts(engine: Any, ids: list[int]) -> list[str]:
    """Each token's text for OpenAI log-prob entries: the engine's tokenizer, else ``token_id:N``."""
    tokenizer = getattr(engine, "tokenizer", None)
    if tokenizer is not None and hasattr(tokenizer, "decode"):
        return [tokenizer.decode([i]) for i in ids]
    return [f"token_id:{i}" for i in ids]


def _vocab_size(engine: Any) -> int | None:
    config = getattr(getattr(engine, "model", None), "config", None)
    size = getattr(config, "vocab_size", None)
    if isinstance(size, int):
        return size
    tokenizer = getattr(engine, "tokenizer", None)
    try:
        return len(tokenizer) if tokenizer is not None else None
    except TypeError:
        return None


# ---- shaping answers -------------------------------------------------------------------------


def _strip_stop(text: str, stops: list[str], finish_reason: str) -> str:
    if finish_reason != "stop" or not stops:
        return text
    matched = [s for s in stops if text.endswith(s)]
    return text[: len(text) - max(map(len, matched))] if matched else text


class _StreamText:
    """Turns the engine's text-so-far into deltas that never have to be taken back: a
    possible beginning of a stop string and a half-decoded character are held back."""

    def __init__(self, stops: list[str], include_stop: bool) -> None:
        self.stops = stops
        self.include_stop = include_stop
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.sent = ""

    def partial(self, text: str) -> str:
        cut = None
        for s in self.stops:
            i = text.find(s)
            if i >= 0:
                end = i + len(s) if self.include_stop else i
                cut = end if cut is None else min(cut, end)
        if cut is not None:
            text = text[:cut]
        elif self.hold and not self.include_stop:
            text = text[: max(0, len(text) - self.hold)]
        text = text.rstrip("\ufffd")
        return self._delta(text)

    def final(self, text: str) -> str:
        return self._delta(text)

    def _delta(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


def _completion_logprobs(req: _Request, res: JobResult) -> dict[str, Any] | None:
    c = res.completion
    if not req.logprobs or c.logprobs is None or c.token_ids is None:
        return None
    tokens = _tokens(req, res)
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": list(c.logprobs), "top_logprobs": None, "text_offset": offsets}


def _chat_logprobs(req: _Request, res: JobResult) -> dict[str, Any] | None:
    c = res.completion
    if not req.logprobs or c.logprobs is None or c.token_ids is None:
        return None
    return {"content": [{"token": t, "logprob": lp, "top_logprobs": [],
                         "bytes": None if t.startswith("token_id:") else list(t.encode("utf-8"))}
                        for t, lp in zip(_tokens(req, res), c.logprobs)]}


def _tokens(req: _Request, res: JobResult) -> list[str]:
    ids = res.completion.token_ids or []
    if req.tokens_as_ids or res.token_texts is None:
        return [f"token_id:{i}" for i in ids]
    return res.token_texts


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _count(ids: list[int] | None) -> int:
    return len(ids) if ids else 0


# ---- the app ---------------------------------------------------------------------------------


def create_app(engine: Any, model_name: str | None = None, *, max_batch_size: int = 32,
               batch_wait_ms: float = 10.0, api_key: str | None = None,
               default_chat_max_tokens: int = DEFAULT_CHAT_MAX_TOKENS, continuous: bool | None = None) -> Any:
    """A FastAPI app serving ``engine`` over the OpenAI API (see the module docstring).

    Args:
        engine: any turngym engine (``generate`` + ``render``).
        model_name: the id clients pass as ``model`` (default: ``engine.name``).
        max_batch_size: most prompts per ``engine.generate`` call.
        batch_wait_ms: how long an idle server waits to batch a request with others.
        api_key: when set, requests must send ``Authorization: Bearer <api_key>``.
        default_chat_max_tokens: ``max_tokens`` of chat requests that give none.
        continuous: continuous batching (None: where the engine supports it; False: one
            ``generate`` per batch).

    The scheduler is ``app.state.scheduler`` (its ``stats`` count batches).
    """
    require("fastapi", "serve", "turngym serve")
    import asyncio
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    served = model_name or getattr(engine, "name", None) or "turngym"
    scheduler = BatchScheduler(engine, max_batch_size=max_batch_size, batch_wait_s=batch_wait_ms / 1000,
                               continuous=continuous)
    created = int(time.time())
    vocab_size = _vocab_size(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="turngym serve", lifespan=lifespan)
    app.state.scheduler = scheduler
    app.state.engine = engine
    app.state.model_name = served

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: Any) -> Any:
        message = {404: f"no route {request.method} {request.url.path}; this server has /v1/models, "
                        "/v1/completions, /v1/chat/completions, /tokenize",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                         str(exc.detail))
        return JSONResponse(APIError(exc.status_code, message, code=str(exc.status_code)).body(),
                            status_code=exc.status_code)

    async def _auth(request: Request, call_next: Any) -> Any:
        if request.url.path != "/health" and request.headers.get("authorization", "") != f"Bearer {api_key}":
            err = APIError(401, "invalid API key: send 'Authorization: Bearer <key>' with the key this "
                                "server was started with (--api-key)", code="invalid_api_key",
                           type="authentication_error")
            return JSONResponse(err.body(), status_code=401)
        return await call_next(request)

    if api_key:
        app.middleware("http")(_auth)

    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object")
        return body

    def _check_model(model: str | None) -> None:
        if model is not None and model != served:
            raise APIError(404, f"the model '{model}' does not exist; this server serves: ['{served}']",
                           param="model", code="model_not_found")

    def _deliverer(loop: asyncio.AbstractEventLoop, events: asyncio.Queue, index: int) -> Deliver:
        def deliver(kind: str, payload: Any) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (index, kind, payload))
            except RuntimeError:  # the loop is gone (server shutting down)
                pass
        return deliver

    def _engine_error(exc: Exception) -> APIError:
        if isinstance(exc, APIError):
            return exc
        if isinstance(exc, (ValueError, TypeError)):
            return APIError(400, f"the engine rejected the request: {exc}")
        return APIError(500, f"the engine failed: {type(exc).__name__}: {exc}", type="server_error",
                        code="engine_error")

    async def _collect(events: asyncio.Queue, count: int) -> list[JobResult]:
        results: list[JobResult | None] = [None] * count
        pending = count
        while pending:
            index, kind, payload = await events.get()
            if kind == "error":
                raise _engine_error(payload)
            if kind == "done":
                results[index] = payload
                pending -= 1
        return results  # type: ignore[return-value]

    async def _generate(req: _Request, units: list[dict[str, Any]], chat: bool, parse_tools: bool) -> Any:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        jobs = []
        for i, unit in enumerate(units):
            copy = i % req.n
            jobs.append(Job(sampling=req.sampling(copy), deliver=_deliverer(loop, events, i), stream=req.stream,
                            token_texts=req.logprobs and not req.tokens_as_ids, **unit))
        for job in jobs:
            scheduler.submit(job)
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        now = int(time.time())
        if not req.stream:
            results = await _collect(events, len(jobs))
            return JSONResponse(_answer(req, results, chat, parse_tools, rid, now))
        # Wait for the first event so that a request that fails at once (a chat template
        # error, an engine that rejects the prompt) gets a plain HTTP error, not a 200 stream.
        first = await events.get()
        if first[1] == "error":
            raise _engine_error(first[2])
        return StreamingResponse(_sse(req, first, events, len(jobs), chat, parse_tools, rid, now),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def _answer(req: _Request, results: list[JobResult], chat: bool, parse_tools: bool, rid: str,
                now: int) -> dict[str, Any]:
        choices = []
        prompt_tokens = 0
        for i, res in enumerate(results):
            c = res.completion
            if i % req.n == 0:
                prompt_tokens += _count(res.prompt_ids)
            text = c.text if req.include_stop else _strip_stop(c.text, req.stop, c.finish_reason)
            if chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                finish = c.finish_reason
                calls = parse_tool_calls(c.text) if parse_tools else []
                if calls:
                    message["tool_calls"] = calls
                    finish = "tool_calls" if finish == "stop" else finish
                choice = {"index": i, "message": message, "logprobs": _chat_logprobs(req, res),
                          "finish_reason": finish}
            else:
                choice = {"index": i, "text": text, "logprobs": _completion_logprobs(req, res),
                          "finish_reason": c.finish_reason}
                if req.return_token_ids:
                    choice["prompt_token_ids"] = res.prompt_ids
            if req.return_token_ids:
                choice["token_ids"] = c.token_ids
            choices.append(choice)
        answer: dict[str, Any] = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                                  "created": now, "model": served, "choices": choices,
                                  "usage": _usage(prompt_tokens, sum(_count(r.completion.token_ids) for r in results))}
        if chat and req.return_token_ids:
            answer["prompt_token_ids"] = results[0].prompt_ids if results else None
        return answer

    async def _sse(req: _Request, first: tuple[int, str, Any], events: asyncio.Queue, count: int, chat: bool,
                   parse_tools: bool, rid: str, now: int) -> Any:
        kind_name = "chat.completion.chunk" if chat else "text_completion"
        streams = [_StreamText(req.stop, req.include_stop) for _ in range(count)]

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            data = {"id": rid, "object": kind_name, "created": now, "model": served, "choices": choices, **extra}
            return f"data: {json.dumps(data)}\n\n"

        def text_choice(i: int, delta: str, **extra: Any) -> dict[str, Any]:
            if chat:
                return {"index": i, "delta": {"content": delta}, "logprobs": None, "finish_reason": None, **extra}
            return {"index": i, "text": delta, "logprobs": None, "finish_reason": None, **extra}

        if chat:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(count)])
        pending, prompt_tokens, completion_tokens = count, 0, 0
        event: tuple[int, str, Any] | None = first
        while pending:
            index, kind, payload = event if event is not None else await events.get()
            event = None
            if kind == "text":
                delta = streams[index].partial(payload)
                if delta:
                    yield chunk([text_choice(index, delta)])
                continue
            if kind == "error":
                err = _engine_error(payload)
                yield f"data: {json.dumps(err.body())}\n\n"
                return
            res: JobResult = payload
            c = res.completion
            pending -= 1
            if index % req.n == 0:
                prompt_tokens += _count(res.prompt_ids)
            completion_tokens += _count(c.token_ids)
            text = c.text if req.include_stop else _strip_stop(c.text, req.stop, c.finish_reason)
            last = text_choice(index, streams[index].final(text))
            last["finish_reason"] = c.finish_reason
            extra: dict[str, Any] = {}
            if chat:
                last["logprobs"] = _chat_logprobs(req, res)
                calls = parse_tool_calls(c.text) if parse_tools else []
                if calls:
                    last["delta"]["tool_calls"] = [{"index": k, **call} for k, call in enumerate(calls)]
                    last["finish_reason"] = "tool_calls" if c.finish_reason == "stop" else c.finish_reason
                if req.return_token_ids:
                    extra["prompt_token_ids"] = res.prompt_ids
            else:
                last["logprobs"] = _completion_logprobs(req, res)
                if req.return_token_ids:
                    last["prompt_token_ids"] = res.prompt_ids
            if req.return_token_ids:
                last["token_ids"] = c.token_ids
            yield chunk([last], **extra)
        if req.include_usage:
            yield chunk([], usage=_usage(prompt_tokens, completion_tokens))
        yield "data: [DONE]\n\n"

    @app.get("/health")
    async def health() -> Any:
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models() -> Any:
        return JSONResponse({"object": "list", "data": [
            {"id": served, "object": "model", "created": created, "owned_by": "turngym"}]})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> Any:
        _check_model(model_id)
        return JSONResponse({"id": served, "object": "model", "created": created, "owned_by": "turngym"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        body = await _json(request)
        req = _parse_common(body, chat=False, default_max_tokens=16)
        _check_model(req.model)
        if body.get("echo"):
            raise _bad("echo", "is not supported by turngym serve")
        if body.get("suffix"):
            raise _bad("suffix", "is not supported by turngym serve")
        prompts = _parse_prompts(body, vocab_size)
        units = [{"prompt": p} for p in prompts for _ in range(req.n)]
        return await _generate(req, units, chat=False, parse_tools=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await _json(request)
        req = _parse_common(body, chat=True, default_max_tokens=default_chat_max_tokens)
        _check_model(req.model)
        messages, tools, parse_tools = _parse_messages(body)
        units = [{"messages": messages, "tools": tools} for _ in range(req.n)]
        return await _generate(req, units, chat=True, parse_tools=parse_tools)

    async def _tokenize(request: Request) -> Any:
        body = await _json(request)
        _check_model(_get(body, "model", (str,)))
        if body.get("messages") is not None:
            messages, tools, _ = _parse_messages(body)
            if not _get(body, "add_generation_prompt", (bool,), True):
                raise _bad("add_generation_prompt", "only true is supported (the engine renders prompts to "
                                                    "generate from)")
            fn: Callable[[], Any] = lambda: engine.render(messages, tools)
        elif isinstance(body.get("prompt"), str):
            prompt = body["prompt"]
            # the engine's own rule for text prompts (HFEngine.encode_text adds its BOS) beats the bare tokenizer
            tokenize = getattr(engine, "encode_text", None) or getattr(engine, "tokenize", None)
            tokenizer = getattr(engine, "tokenizer", None)
            if tokenize is not None:
                fn = lambda: tokenize(prompt)
            elif tokenizer is not None:
                fn = lambda: tokenizer.encode(prompt)
            else:
                raise APIError(400, f"the engine {served!r} has no tokenizer", param="prompt")
        else:
            raise _bad("messages", "send 'messages' (chat) or 'prompt' (a string)")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        scheduler.call(fn, _deliverer(loop, events, 0))
        _, kind, result = await events.get()
        if kind == "error":
            raise _engine_error(result)
        if not (isinstance(result, list) and all(isinstance(t, int) for t in result)):
            raise APIError(400, f"the engine {served!r} renders chat messages to {type(result).__name__}, "
                                "not token ids; it cannot tokenize")
        return JSONResponse({"count": len(result), "max_model_len": None, "tokens": result, "token_strs": None})

    app.post("/tokenize")(_tokenize)
    app.post("/v1/tokenize")(_tokenize)
    return app


# ---- running it ------------------------------------------------------------------------------


class ServerThread(_ServerThread):
    """Runs an app under uvicorn in a background thread on 127.0.0.1 (tests, notebooks, benchmarks).

    ``with ServerThread(create_app(engine)) as server: OpenAI(base_url=server.url)``; ``url`` ends in
    ``/v1``. See :class:`turngym.http_server.ServerThread`.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        super().__init__(app, host, port, log_level, path="/v1", purpose="turngym serve", name="turngym-serve-http")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="default (embedded SmolLM2-135M-Instruct), a local HF folder or .gguf file, "
                             "or any engine spec such as vllm:PATH")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32, help="most prompts per batched generate call")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long an idle server waits to batch a request with others")
    parser.add_argument("--schedule", default="auto", choices=("auto", "lockstep", "continuous"),
                        help="continuous batching (requests join the running batch; auto: where the engine has "
                             "it, the hf engine) or one generate call per batch of requests (lockstep)")
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: the engine's)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every request")
    parser.add_argument("--default-max-tokens", type=int, default=DEFAULT_CHAT_MAX_TOKENS,
                        help="max_tokens of chat requests that give none")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "serve", "turngym serve")
    require("fastapi", "serve", "turngym serve")
    from turngym.agents.engines import make_engine

    if args.max_batch_size < 1:
        raise TurngymError(f"--max-batch-size must be >= 1, got {args.max_batch_size}")
    # Fail before the model loads (which can take a while) if the port is taken.
    try:
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is fine
            probe.bind((args.host, args.port))
    except OSError as exc:
        raise TurngymError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                           "is another server running there? Pick another --port") from None
    print(f"turngym serve: loading {args.model!r} ...", file=sys.stderr, flush=True)
    engine = make_engine(args.model)
    app = create_app(engine, args.served_model_name, max_batch_size=args.max_batch_size,
                     batch_wait_ms=args.batch_wait_ms, api_key=args.api_key,
                     default_chat_max_tokens=args.default_max_tokens,
                     continuous={"auto": None, "lockstep": False, "continuous": True}[args.schedule])
    url = f"http://{args.host}:{args.port}/v1"
    print(f"turngym serve: {app.state.model_name} at {url} (OpenAI-compatible); "
          f"e.g. turngym bench --model openai:{url}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
