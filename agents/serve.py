"""`turngym serve`: an OpenAI-compatible HTTP server over any turngym engine.

    turngym serve [--model default|PATH|vllm:PATH] [--host 127.0.0.1] [--port 8000]
                  [--max-batch-size 32] [--batch-wait-ms 10] [--api-key KEY] [--allowed-hosts NAMES]
                  [--max-tokens-limit 4096] [--max-request-jobs 128] [--max-pending-jobs 1024]
                  [--max-body-bytes 8388608]

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
``message.tool_calls`` by the reader the tool-calling agent uses (:mod:`turngym.agents.hermes`);
``message.content`` keeps the raw text, so text and token ids agree.

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

Limits (each a flag; no request makes the server do unbounded work): ``max_tokens`` above
``--max-tokens-limit`` or the engine's context gets 400 naming the field (a chat request's
default is lowered to it); a request asking for more than ``--max-request-jobs`` completions
(prompts x ``n``) gets 400; one that would take the completions queued or running past
``--max-pending-jobs`` gets 429 with ``Retry-After`` (clients retry it); a body over
``--max-body-bytes`` gets 413, one that is not ``Content-Type: application/json`` 415. A
client that disconnects (a plain request or a stream) has its jobs cancelled: queued ones
never run, running ones leave the continuous batch at the next decode step (a lockstep
``generate`` already under way finishes, unread).

Who may call it: ``--api-key`` (compared in constant time) guards every route but
``/health``. The Host header must name the address the server is bound to (``localhost``,
``127.0.0.1`` or ``::1`` on a loopback address; any on ``0.0.0.0``), else 400: a web page
cannot reach a local server through a name of its own that resolves to it (DNS rebinding),
and the JSON content type keeps a page's plain form posts out (a browser asks first, and no
CORS answer comes). ``--allowed-hosts a.example,b.example`` names others, ``'*'`` any.

The server is three modules: :mod:`turngym.agents.openai_protocol` (parsing requests,
shaping answers and stream chunks, errors), :mod:`turngym.agents.scheduler` (batching
requests onto the engine's one thread) and this one (the app, its routes, the CLI).

This module is imported by the CLI to build its parser: fastapi and uvicorn (the
``serve`` extra) and the engines are imported inside the functions that need them.
"""

import argparse
import hmac
import json
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from turngym.agents.engines.base import Engine, LocalEngine, context_limit, engine_name
from turngym.agents.openai_protocol import (
    DEFAULT_CHAT_MAX_TOKENS,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PENDING_JOBS,
    DEFAULT_MAX_REQUEST_JOBS,
    DEFAULT_MAX_TOKENS_LIMIT,
    STREAM_END,
    APIError,
    GenerationRequest,
    StreamText,
    bad_param,
    build_answer,
    build_choice,
    check_job_count,
    count_tokens,
    engine_error,
    error_event,
    get_field,
    max_tokens_cap,
    parse_messages,
    parse_prompts,
    parse_request,
    role_choice,
    server_busy,
    stream_event,
    text_choice,
    usage,
)
from turngym.agents.scheduler import BatchScheduler, Deliver, Job, JobResult
from turngym.errors import TurngymError, require
from turngym.http_server import LOOPBACK_HOSTS, default_allowed_hosts, host_allowed, host_name
from turngym.http_server import ServerThread as _ServerThread

#: What a request's event queue gets when its client disconnects.
_GONE = (-1, "gone", None)

# ---- the app ---------------------------------------------------------------------------------


class _Guard:
    """Who may call: the Host header names an allowed host, the API key matches (constant time).

    Plain ASGI rather than ``@app.middleware("http")``, whose wrapper would stand between the
    routes and the client's disconnect (the routes watch for it to cancel their jobs).
    """

    def __init__(self, app: Any, allowed_hosts: Sequence[str], api_key: str | None) -> None:
        self.app = app
        self.allowed = frozenset(host_name(h) if h != "*" else h for h in allowed_hosts)
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            error = self.check(scope)
            if error is not None:
                body = json.dumps(error.body()).encode()
                await send({"type": "http.response.start", "status": error.status,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def check(self, scope: dict[str, Any]) -> APIError | None:
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        host = host.decode("latin-1") if host is not None else None
        if not host_allowed(host, self.allowed):
            return APIError(400, f"Host {host!r} is not a name this server answers to (it accepts "
                                 f"{', '.join(sorted(self.allowed))}); a web page or a DNS-rebinding name reaching a "
                                 "local server is refused. Start it with --allowed-hosts NAME,... to add names",
                            code="host_not_allowed")
        # hmac.compare_digest: the time taken tells nothing of how much of the key was right
        if (self.expected is not None and scope.get("path") != "/health"
                and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected)):
            return APIError(401, "invalid API key: send 'Authorization: Bearer <key>' with the key this "
                                 "server was started with (--api-key)", code="invalid_api_key",
                            type="authentication_error")
        return None


def create_app(engine: Any, model_name: str | None = None, *, max_batch_size: int = 32,
               batch_wait_ms: float = 10.0, api_key: str | None = None,
               default_chat_max_tokens: int = DEFAULT_CHAT_MAX_TOKENS, continuous: bool | None = None,
               max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT, max_request_jobs: int = DEFAULT_MAX_REQUEST_JOBS,
               max_pending_jobs: int = DEFAULT_MAX_PENDING_JOBS, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               allowed_hosts: Sequence[str] = LOOPBACK_HOSTS) -> Any:
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
        max_tokens_limit: most tokens one choice may ask for (the engine's context caps it too).
        max_request_jobs: most completions one request may ask for (prompts x n).
        max_pending_jobs: most completions queued or running; a request beyond it gets 429.
        max_body_bytes: largest request body; a larger one gets 413.
        allowed_hosts: the Host-header names served (default: the loopback names, for a server
            bound to 127.0.0.1; ``("*",)``: any). See :func:`turngym.http_server.default_allowed_hosts`.

    The scheduler is ``app.state.scheduler`` (its ``stats`` count batches).
    """
    require("fastapi", "serve", "turngym serve")
    import asyncio
    import contextlib

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    for name, value in (("max_tokens_limit", max_tokens_limit), ("max_request_jobs", max_request_jobs),
                        ("max_pending_jobs", max_pending_jobs), ("max_body_bytes", max_body_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if max_request_jobs > max_pending_jobs:
        raise ValueError(f"max_request_jobs ({max_request_jobs}) must not exceed max_pending_jobs "
                         f"({max_pending_jobs}): such a request could never be accepted")
    served = model_name or (engine_name(engine) if isinstance(engine, Engine) else "turngym")
    scheduler = BatchScheduler(engine, max_batch_size=max_batch_size, batch_wait_s=batch_wait_ms / 1000,
                               continuous=continuous, max_pending=max_pending_jobs)
    created = int(time.time())
    vocab_size = engine.vocab_size if isinstance(engine, LocalEngine) else None
    cap = max_tokens_cap(max_tokens_limit, context_limit(engine))

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
    app.add_middleware(_Guard, allowed_hosts=tuple(allowed_hosts), api_key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Any:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: Any) -> Any:
        message = {404: f"no route {request.method} {request.url.path}; this server has /v1/models, "
                        "/v1/completions, /v1/chat/completions, /tokenize",
                   405: f"method {request.method} not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                         str(exc.detail))
        return JSONResponse(APIError(exc.status_code, message, code=str(exc.status_code)).body(),
                            status_code=exc.status_code)

    async def _json(request: Request) -> dict[str, Any]:
        content_type = request.headers.get("content-type", "")
        if content_type.partition(";")[0].strip().lower() != "application/json":
            raise APIError(415, f"send the request body as JSON with 'Content-Type: application/json' (got "
                                f"{content_type or 'none'!r})", code="unsupported_media_type")
        declared = request.headers.get("content-length", "")
        too_large = APIError(413, f"the request body is larger than this server's {max_body_bytes} bytes "
                                  "(--max-body-bytes)", code="body_too_large")
        if declared.isdigit() and int(declared) > max_body_bytes:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():  # a body without Content-Length (chunked) is counted as it comes
            size += len(chunk)
            if size > max_body_bytes:
                raise too_large
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
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

    async def _on_disconnect(request: Request, gone: Callable[[], None]) -> None:
        """Call ``gone`` when the client disconnects (the body is read by then: what comes next is the
        disconnect, or the end of the response)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone()

    async def _next_event(events: asyncio.Queue) -> tuple[int, str, Any]:
        event = await events.get()
        if event[1] == "error":
            raise engine_error(event[2])
        if event[1] == "gone":
            raise APIError(499, "the client closed the connection", code="client_closed")
        return event

    async def _collect(events: asyncio.Queue, count: int) -> list[JobResult]:
        results: list[JobResult | None] = [None] * count
        pending = count
        while pending:
            index, kind, payload = await _next_event(events)
            if kind == "done":
                results[index] = payload
                pending -= 1
        return results  # type: ignore[return-value]

    async def _generate(request: Request, req: GenerationRequest, units: list[dict[str, Any]], chat: bool,
                        parse_tools: bool) -> Any:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        jobs = []
        for i, unit in enumerate(units):
            copy = i % req.n
            jobs.append(Job(sampling=req.sampling(copy), deliver=_deliverer(loop, events, i), stream=req.stream,
                            token_texts=req.logprobs and not req.tokens_as_ids, **unit))
        if not scheduler.submit_many(jobs):
            raise server_busy(scheduler.live(), max_pending_jobs)

        def gone() -> None:
            scheduler.cancel(jobs)
            events.put_nowait(_GONE)

        watcher = asyncio.create_task(_on_disconnect(request, gone))
        rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
        now = int(time.time())
        streaming = False
        try:
            if not req.stream:
                results = await _collect(events, len(jobs))
                return JSONResponse(build_answer(req, results, chat=chat, parse_tools=parse_tools, rid=rid,
                                                 created=now, model=served))
            # Wait for the first event so that a request that fails at once (a chat template
            # error, an engine that rejects the prompt) gets a plain HTTP error, not a 200 stream.
            first = await _next_event(events)
            streaming = True
            return StreamingResponse(_sse(req, first, events, jobs, watcher, chat, parse_tools, rid, now),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        finally:
            if not streaming:  # answered, failed or gone: what still runs of it is wasted work
                watcher.cancel()
                scheduler.cancel(jobs)

    async def _sse(req: GenerationRequest, first: tuple[int, str, Any], events: asyncio.Queue, jobs: list[Job],
                   watcher: Any, chat: bool, parse_tools: bool, rid: str, now: int) -> Any:
        count = len(jobs)
        streams = [StreamText(req.stop, req.include_stop) for _ in range(count)]

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return stream_event(rid, now, served, choices, chat=chat, **extra)

        try:
            if chat:
                yield chunk([role_choice(i) for i in range(count)])
            pending, prompt_tokens, completion_tokens = count, 0, 0
            event: tuple[int, str, Any] | None = first
            while pending:
                index, kind, payload = event if event is not None else await events.get()
                event = None
                if kind == "gone":
                    return
                if kind == "text":
                    delta = streams[index].partial(payload)
                    if delta:
                        yield chunk([text_choice(index, delta, chat=chat)])
                    continue
                if kind == "error":
                    yield error_event(engine_error(payload))
                    return
                res: JobResult = payload
                pending -= 1
                if index % req.n == 0:
                    prompt_tokens += count_tokens(res.prompt_ids)
                completion_tokens += count_tokens(res.completion.token_ids)
                extra = {"prompt_token_ids": res.prompt_ids} if chat and req.return_token_ids else {}
                yield chunk([build_choice(req, index, res, chat=chat, parse_tools=parse_tools, stream=streams[index])],
                            **extra)
            if req.include_usage:
                yield chunk([], usage=usage(prompt_tokens, completion_tokens))
            yield STREAM_END
        finally:  # ended, failed, or the client went away (the server cancels this generator)
            watcher.cancel()
            scheduler.cancel(jobs)

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
        req = parse_request(body, chat=False, default_max_tokens=16, cap=cap)
        _check_model(req.model)
        if body.get("echo"):
            raise bad_param("echo", "is not supported by turngym serve")
        if body.get("suffix"):
            raise bad_param("suffix", "is not supported by turngym serve")
        prompts = parse_prompts(body, vocab_size)
        check_job_count(len(prompts), req.n, max_request_jobs)
        units = [{"prompt": p} for p in prompts for _ in range(req.n)]
        return await _generate(request, req, units, chat=False, parse_tools=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await _json(request)
        req = parse_request(body, chat=True, default_max_tokens=default_chat_max_tokens, cap=cap)
        _check_model(req.model)
        messages, tools, parse_tools = parse_messages(body)
        check_job_count(1, req.n, max_request_jobs)
        units = [{"messages": messages, "tools": tools} for _ in range(req.n)]
        return await _generate(request, req, units, chat=True, parse_tools=parse_tools)

    async def _tokenize(request: Request) -> Any:
        body = await _json(request)
        _check_model(get_field(body, "model", (str,)))
        if body.get("messages") is not None:
            messages, tools, _ = parse_messages(body)
            if not get_field(body, "add_generation_prompt", (bool,), True):
                raise bad_param("add_generation_prompt", "only true is supported (the engine renders prompts to "
                                                    "generate from)")
            fn: Callable[[], Any] = lambda: engine.render(messages, tools)
        elif isinstance(body.get("prompt"), str):
            prompt = body["prompt"]
            # the engine's own rule for text prompts (HFEngine.encode_text adds its BOS) beats the bare tokenizer
            if isinstance(engine, LocalEngine):
                fn = lambda: engine.encode_text(prompt)
            else:
                raise APIError(400, f"the engine {served!r} has no tokenizer", param="prompt")
        else:
            raise bad_param("messages", "send 'messages' (chat) or 'prompt' (a string)")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        if scheduler.call(fn, _deliverer(loop, events, 0)) is None:
            raise server_busy(scheduler.live(), max_pending_jobs)
        _, kind, result = await events.get()
        if kind == "error":
            raise engine_error(result)
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
                             "a Hub id ORG/NAME[@REV] (from the HF cache), or any engine spec such as vllm:PATH")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-batch-size", type=int, default=32, help="most prompts per batched generate call")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0,
                        help="how long an idle server waits to batch a request with others")
    parser.add_argument("--schedule", default="auto", choices=("auto", "lockstep", "continuous"),
                        help="continuous batching (requests join the running batch; auto: where the engine has "
                             "it, the hf engine) or one generate call per batch of requests (lockstep)")
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: the engine's)")
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every request but /health")
    parser.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                        help="comma-separated Host-header names to answer to, or '*' for any (default: localhost, "
                             "127.0.0.1 and ::1 when --host is a loopback address, the --host address otherwise, "
                             "any on 0.0.0.0); other names get 400, so a web page cannot reach a local server "
                             "through DNS rebinding")
    parser.add_argument("--default-max-tokens", type=int, default=DEFAULT_CHAT_MAX_TOKENS,
                        help="max_tokens of chat requests that give none (lowered to the limits below)")
    parser.add_argument("--max-tokens-limit", type=int, default=DEFAULT_MAX_TOKENS_LIMIT,
                        help="most tokens one choice may ask for (max_tokens; default %(default)s); the model's "
                             "context caps it too; more gets 400")
    parser.add_argument("--max-request-jobs", type=int, default=DEFAULT_MAX_REQUEST_JOBS,
                        help="most completions one request may ask for (prompts x n; default %(default)s); more "
                             "gets 400")
    parser.add_argument("--max-pending-jobs", type=int, default=DEFAULT_MAX_PENDING_JOBS,
                        help="most completions queued or running (default %(default)s); a request beyond it gets "
                             "429 (retry later)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest request body in bytes (default %(default)s); a larger one gets 413")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "serve", "turngym serve")
    require("fastapi", "serve", "turngym serve")
    from turngym.agents.engines import make_engine

    for flag in ("max_batch_size", "max_tokens_limit", "max_request_jobs", "max_pending_jobs", "max_body_bytes"):
        if getattr(args, flag) < 1:
            raise TurngymError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_request_jobs > args.max_pending_jobs:
        raise TurngymError(f"--max-request-jobs ({args.max_request_jobs}) must not exceed --max-pending-jobs "
                           f"({args.max_pending_jobs}): such a request could never be accepted")
    allowed = (tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip()) if args.allowed_hosts
               else default_allowed_hosts(args.host))
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
                     continuous={"auto": None, "lockstep": False, "continuous": True}[args.schedule],
                     max_tokens_limit=args.max_tokens_limit, max_request_jobs=args.max_request_jobs,
                     max_pending_jobs=args.max_pending_jobs, max_body_bytes=args.max_body_bytes,
                     allowed_hosts=allowed)
    url = f"http://{args.host}:{args.port}/v1"
    print(f"turngym serve: {app.state.model_name} at {url} (OpenAI-compatible); "
          f"e.g. turngym bench --model openai:{url}", file=sys.stderr, flush=True)
    if "*" in allowed and not args.api_key:
        print("turngym serve: warning: any Host name is accepted and no --api-key is set: anyone who can reach "
              f"{args.host}:{args.port} can use the model", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
