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

The server is three modules: :mod:`turngym.agents.openai_protocol` (parsing requests,
shaping answers and stream chunks, errors), :mod:`turngym.agents.scheduler` (batching
requests onto the engine's one thread) and this one (the app, its routes, the CLI).

This module is imported by the CLI to build its parser: fastapi and uvicorn (the
``serve`` extra) and the engines are imported inside the functions that need them.
"""

import argparse
import json
import secrets
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from turngym.agents.engines.base import Engine, LocalEngine, engine_name
from turngym.agents.openai_protocol import (
    DEFAULT_CHAT_MAX_TOKENS,
    STREAM_END,
    APIError,
    GenerationRequest,
    StreamText,
    bad_param,
    build_answer,
    build_choice,
    count_tokens,
    engine_error,
    error_event,
    get_field,
    parse_messages,
    parse_prompts,
    parse_request,
    role_choice,
    stream_event,
    text_choice,
    usage,
)
from turngym.agents.scheduler import BatchScheduler, Deliver, Job, JobResult
from turngym.errors import TurngymError, require
from turngym.http_server import ServerThread as _ServerThread

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

    served = model_name or (engine_name(engine) if isinstance(engine, Engine) else "turngym")
    scheduler = BatchScheduler(engine, max_batch_size=max_batch_size, batch_wait_s=batch_wait_ms / 1000,
                               continuous=continuous)
    created = int(time.time())
    vocab_size = engine.vocab_size if isinstance(engine, LocalEngine) else None

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

    async def _collect(events: asyncio.Queue, count: int) -> list[JobResult]:
        results: list[JobResult | None] = [None] * count
        pending = count
        while pending:
            index, kind, payload = await events.get()
            if kind == "error":
                raise engine_error(payload)
            if kind == "done":
                results[index] = payload
                pending -= 1
        return results  # type: ignore[return-value]

    async def _generate(req: GenerationRequest, units: list[dict[str, Any]], chat: bool, parse_tools: bool) -> Any:
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
            return JSONResponse(build_answer(req, results, chat=chat, parse_tools=parse_tools, rid=rid,
                                             created=now, model=served))
        # Wait for the first event so that a request that fails at once (a chat template
        # error, an engine that rejects the prompt) gets a plain HTTP error, not a 200 stream.
        first = await events.get()
        if first[1] == "error":
            raise engine_error(first[2])
        return StreamingResponse(_sse(req, first, events, len(jobs), chat, parse_tools, rid, now),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _sse(req: GenerationRequest, first: tuple[int, str, Any], events: asyncio.Queue, count: int,
                   chat: bool, parse_tools: bool, rid: str, now: int) -> Any:
        streams = [StreamText(req.stop, req.include_stop) for _ in range(count)]

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return stream_event(rid, now, served, choices, chat=chat, **extra)

        if chat:
            yield chunk([role_choice(i) for i in range(count)])
        pending, prompt_tokens, completion_tokens = count, 0, 0
        event: tuple[int, str, Any] | None = first
        while pending:
            index, kind, payload = event if event is not None else await events.get()
            event = None
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
        req = parse_request(body, chat=False, default_max_tokens=16)
        _check_model(req.model)
        if body.get("echo"):
            raise bad_param("echo", "is not supported by turngym serve")
        if body.get("suffix"):
            raise bad_param("suffix", "is not supported by turngym serve")
        prompts = parse_prompts(body, vocab_size)
        units = [{"prompt": p} for p in prompts for _ in range(req.n)]
        return await _generate(req, units, chat=False, parse_tools=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await _json(request)
        req = parse_request(body, chat=True, default_max_tokens=default_chat_max_tokens)
        _check_model(req.model)
        messages, tools, parse_tools = parse_messages(body)
        units = [{"messages": messages, "tools": tools} for _ in range(req.n)]
        return await _generate(req, units, chat=True, parse_tools=parse_tools)

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
        scheduler.call(fn, _deliverer(loop, events, 0))
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
