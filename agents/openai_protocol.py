"""The OpenAI API's shapes for ``turngym serve``: request parsing, errors, answers and stream chunks.

What a request may ask for and what an answer looks like is documented in
:mod:`turngym.agents.serve`; this module holds the code for it, free of any web framework:
parsing turns a JSON body into a validated :class:`GenerationRequest` (or raises
:class:`APIError`, HTTP 400 naming the field), and shaping turns the scheduler's
:class:`~turngym.agents.scheduler.JobResult` into OpenAI JSON. One choice builder,
:func:`build_choice`, serves a plain answer and the last chunk of a streamed one, so the
two cannot drift apart. Tool calls are read with :func:`turngym.agents.hermes.find_tool_calls`,
the reader of the tool-calling agent.

Depends on :mod:`turngym.agents` (types, hermes, scheduler) and the standard library.
"""

import json
import secrets
from dataclasses import dataclass
from typing import Any

from turngym.agents.engines.base import check_token_ids
from turngym.agents.hermes import find_tool_calls
from turngym.agents.scheduler import ChatTemplateError, JobResult
from turngym.agents.types import Prompt, SamplingParams

#: Completions default to OpenAI's 16 tokens; chat to this (OpenAI: "up to the context").
DEFAULT_CHAT_MAX_TOKENS = 256
_MAX_N = 64
_MAX_PROMPTS_PER_REQUEST = 256

# The server's limits (``turngym serve`` flags of the same names), so that no request can make
# it do unbounded work: an engine reserves KV room for the longest completion in its batch.
#: Most tokens one choice may ask for (``max_tokens``); the engine's context caps it further.
DEFAULT_MAX_TOKENS_LIMIT = 4096
#: Most completions one request may ask for (prompts x ``n``).
DEFAULT_MAX_REQUEST_JOBS = 128
#: Most completions accepted and not finished (queued or running); a request beyond it gets 429.
DEFAULT_MAX_PENDING_JOBS = 1024
#: Largest request body in bytes; a larger one gets 413.
DEFAULT_MAX_BODY_BYTES = 8 * 2**20


# ---- errors in the OpenAI shape --------------------------------------------------------------


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_param(param: str, message: str) -> APIError:
    return APIError(400, f"{param}: {message}", param=param)


def server_busy(live: int, most: int) -> APIError:
    """429 for a request that would take the live completions past ``most`` (clients retry it)."""
    return APIError(429, f"the server is busy: {live} completions are queued or running and it holds at most "
                         f"{most} (--max-pending-jobs); retry in a moment", code="server_busy",
                    type="rate_limit_error", headers={"Retry-After": "1"})


def check_job_count(prompts: int, n: int, most: int) -> None:
    """400 for a request asking for more than ``most`` completions (prompts x n)."""
    if prompts * n > most:
        param = "n" if n > 1 else "prompt"
        raise APIError(400, f"{param}: this request asks for {prompts * n} completions ({prompts} prompt(s) x n={n}); "
                            f"this server completes at most {most} per request (--max-request-jobs): send fewer "
                            "prompts or a smaller n per request", param=param, code="too_many_completions")


def max_tokens_cap(server_most: int, context: int | None) -> tuple[int, str]:
    """The most tokens a choice may ask for, and why: the server's limit or the engine's context."""
    if context is not None and context < server_most:
        return context, f"the model's context is {context} tokens"
    return server_most, "this server's --max-tokens-limit"


def engine_error(exc: Exception) -> APIError:
    """What a failed job answers: a chat template or engine that rejects the request is the
    client's 400, anything else the server's 500."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ChatTemplateError):
        return APIError(400, f"messages: {exc}", param="messages")
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(400, f"the engine rejected the request: {exc}")
    return APIError(500, f"the engine failed: {type(exc).__name__}: {exc}", type="server_error",
                    code="engine_error")


# ---- request parsing -------------------------------------------------------------------------


def get_field(body: dict[str, Any], name: str, kinds: tuple[type, ...], default: Any = None, what: str = "") -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    # bool is an int in Python; a JSON true is never a valid count
    if isinstance(value, bool) and bool not in kinds:
        raise bad_param(name, f"expected {what or _kind_names(kinds)}, got {json.dumps(value)}")
    if not isinstance(value, kinds):
        raise bad_param(name, f"expected {what or _kind_names(kinds)}, got {json.dumps(value)[:80]}")
    return value


def _kind_names(kinds: tuple[type, ...]) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


@dataclass
class GenerationRequest:
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


def parse_request(body: dict[str, Any], chat: bool, default_max_tokens: int,
                  cap: tuple[int, str] | None = None) -> GenerationRequest:
    """``cap``: the most tokens a choice may ask for and why (:func:`max_tokens_cap`); a request asking for
    more is refused, a default above it is lowered to it."""
    model = get_field(body, "model", (str,))
    max_tokens = get_field(body, "max_tokens", (int,))
    if chat and max_tokens is None:
        max_tokens = get_field(body, "max_completion_tokens", (int,))
    name = "max_tokens" if "max_tokens" in body or not chat else "max_completion_tokens"
    if max_tokens is None:
        max_tokens = default_max_tokens if cap is None else min(default_max_tokens, cap[0])
    if max_tokens < 1:
        raise bad_param(name, f"must be >= 1, got {max_tokens}")
    if cap is not None and max_tokens > cap[0]:
        raise bad_param(name, f"must be <= {cap[0]} ({cap[1]}), got {max_tokens}")
    temperature = float(get_field(body, "temperature", (int, float), 1.0))
    if temperature < 0:
        raise bad_param("temperature", f"must be >= 0, got {temperature}")
    top_p = float(get_field(body, "top_p", (int, float), 1.0))
    if not 0 < top_p <= 1:
        raise bad_param("top_p", f"must be in (0, 1], got {top_p}")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    elif not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise bad_param("stop", "expected a string or a list of strings")
    stop = [s for s in stop if s]
    seed = get_field(body, "seed", (int,))
    n = get_field(body, "n", (int,), 1)
    if not 1 <= n <= _MAX_N:
        raise bad_param("n", f"must be between 1 and {_MAX_N}, got {n}")
    best_of = get_field(body, "best_of", (int,))
    if best_of is not None and best_of != n:
        raise bad_param("best_of", "is not supported (it would need to score and rank samples); leave it unset")
    stream = get_field(body, "stream", (bool,), False)
    stream_options = get_field(body, "stream_options", (dict,), {})
    include_usage = bool(stream_options.get("include_usage", False))
    if chat:
        logprobs = get_field(body, "logprobs", (bool,), False)
        get_field(body, "top_logprobs", (int,))
    else:
        lp = get_field(body, "logprobs", (int,))
        if lp is not None and lp < 0:
            raise bad_param("logprobs", f"must be >= 0, got {lp}")
        logprobs = lp is not None
    for name in ("frequency_penalty", "presence_penalty"):
        if get_field(body, name, (int, float), 0) != 0:
            raise bad_param(name, "is not supported by turngym serve; leave it at 0")
    if get_field(body, "logit_bias", (dict,), {}):
        raise bad_param("logit_bias", "is not supported by turngym serve")
    if body.get("prompt_logprobs") is not None:
        raise bad_param("prompt_logprobs", "is not supported: engines score sampled tokens only")
    fmt = get_field(body, "response_format", (dict,), {})
    if fmt and fmt.get("type", "text") != "text":
        raise bad_param("response_format", f"type {fmt.get('type')!r} is not supported; only 'text'")
    return GenerationRequest(
        model=model, max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=stop, seed=seed, n=n,
        stream=stream, include_usage=include_usage, logprobs=logprobs,
        return_token_ids=get_field(body, "return_token_ids", (bool,), False),
        tokens_as_ids=get_field(body, "return_tokens_as_token_ids", (bool,), False),
        include_stop=get_field(body, "include_stop_str_in_output", (bool,), False),
    )


def parse_prompts(body: dict[str, Any], vocab_size: int | None) -> list[Prompt]:
    """OpenAI's ``prompt``: a string, token ids, a list of strings or a list of id lists."""
    if "prompt" not in body or body["prompt"] is None:
        raise bad_param("prompt", "is required (a string or a list of token ids)")
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
        raise bad_param("prompt", "expected a string, a non-empty list of token ids (ints >= 0), "
                             "or a list of either")
    if len(prompts) > _MAX_PROMPTS_PER_REQUEST:
        raise bad_param("prompt", f"at most {_MAX_PROMPTS_PER_REQUEST} prompts per request, got {len(prompts)}")
    if vocab_size is not None:
        for p in prompts:
            if isinstance(p, list):
                try:
                    check_token_ids(p, vocab_size, "the served model")
                except ValueError as exc:
                    raise bad_param("prompt", str(exc)) from None
    return prompts


def _is_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def parse_messages(body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, bool]:
    """Messages as a chat template expects them, the tools, and whether to parse tool calls."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_param("messages", "is required: a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise bad_param(f"messages[{i}]", "expected an object with a string 'role'")
        msg = dict(msg)
        content = msg.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = []
            for part in content:
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise bad_param(f"messages[{i}].content", "only text parts ({\"type\": \"text\", \"text\": ...}) "
                                                         "are supported")
                texts.append(part["text"])
            msg["content"] = "".join(texts)
        elif content is not None and not isinstance(content, str):
            raise bad_param(f"messages[{i}].content", "expected a string, a list of text parts, or null")
        if msg.get("tool_calls"):
            msg["tool_calls"] = [_template_tool_call(c) for c in msg["tool_calls"]]
        out.append(msg)
    tools = body.get("tools")
    if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise bad_param("tools", "expected a list of tool objects ({\"type\": \"function\", \"function\": {...}})")
    tool_choice = body.get("tool_choice")
    if tool_choice not in (None, "auto", "none"):
        raise bad_param("tool_choice", "only 'auto' and 'none' are supported (a template cannot force a call)")
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


# ---- tool calls ------------------------------------------------------------------------------


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """Hermes-format tool calls in ``text`` as OpenAI ``tool_calls`` (malformed ones are skipped)."""
    return [{"id": "call_" + secrets.token_hex(12), "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}
            for call in find_tool_calls(text, bare=False)]


# ---- shaping answers -------------------------------------------------------------------------


def _strip_stop(text: str, stops: list[str], finish_reason: str) -> str:
    if finish_reason != "stop" or not stops:
        return text
    matched = [s for s in stops if text.endswith(s)]
    return text[: len(text) - max(map(len, matched))] if matched else text


class StreamText:
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


def _completion_logprobs(req: GenerationRequest, res: JobResult) -> dict[str, Any] | None:
    c = res.completion
    if not req.logprobs or c.logprobs is None or c.token_ids is None:
        return None
    tokens = _tokens(req, res)
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": list(c.logprobs), "top_logprobs": None, "text_offset": offsets}


def _chat_logprobs(req: GenerationRequest, res: JobResult) -> dict[str, Any] | None:
    c = res.completion
    if not req.logprobs or c.logprobs is None or c.token_ids is None:
        return None
    return {"content": [{"token": t, "logprob": lp, "top_logprobs": [],
                         "bytes": None if t.startswith("token_id:") else list(t.encode("utf-8"))}
                        for t, lp in zip(_tokens(req, res), c.logprobs)]}


def _tokens(req: GenerationRequest, res: JobResult) -> list[str]:
    ids = res.completion.token_ids or []
    if req.tokens_as_ids or res.token_texts is None:
        return [f"token_id:{i}" for i in ids]
    return res.token_texts


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def count_tokens(ids: list[int] | None) -> int:
    return len(ids) if ids else 0


def build_choice(req: GenerationRequest, index: int, res: JobResult, *, chat: bool, parse_tools: bool,
                 stream: StreamText | None = None) -> dict[str, Any]:
    """One finished choice: of a plain answer, or (``stream`` given) the last chunk of a streamed one.

    A plain choice carries the whole text (chat: ``message``); a streamed one the text ``stream``
    has not sent yet (chat: ``delta``), and the log-probs and token ids, which an engine knows
    only when the choice is done.
    """
    c = res.completion
    text = c.text if req.include_stop else _strip_stop(c.text, req.stop, c.finish_reason)
    if stream is not None:
        text = stream.final(text)
    finish = c.finish_reason
    if chat:
        calls = parse_tool_calls(c.text) if parse_tools else []
        if calls:
            finish = "tool_calls" if finish == "stop" else finish
        if stream is None:
            body: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                body["tool_calls"] = calls
            choice = {"index": index, "message": body}
        else:
            body = {"content": text}
            if calls:
                body["tool_calls"] = [{"index": k, **call} for k, call in enumerate(calls)]
            choice = {"index": index, "delta": body}
        choice.update(logprobs=_chat_logprobs(req, res), finish_reason=finish)
    else:
        choice = {"index": index, "text": text, "logprobs": _completion_logprobs(req, res), "finish_reason": finish}
        if req.return_token_ids:
            choice["prompt_token_ids"] = res.prompt_ids
    if req.return_token_ids:
        choice["token_ids"] = c.token_ids
    return choice


def build_answer(req: GenerationRequest, results: list[JobResult], *, chat: bool, parse_tools: bool, rid: str,
                 created: int, model: str) -> dict[str, Any]:
    """The whole answer of a request that did not stream (``results``: one per choice, in order)."""
    choices = [build_choice(req, i, res, chat=chat, parse_tools=parse_tools) for i, res in enumerate(results)]
    prompt_tokens = sum(count_tokens(res.prompt_ids) for i, res in enumerate(results) if i % req.n == 0)
    answer: dict[str, Any] = {"id": rid, "object": "chat.completion" if chat else "text_completion",
                              "created": created, "model": model, "choices": choices,
                              "usage": usage(prompt_tokens, sum(count_tokens(r.completion.token_ids) for r in results))}
    if chat and req.return_token_ids:
        answer["prompt_token_ids"] = results[0].prompt_ids if results else None
    return answer


def role_choice(index: int) -> dict[str, Any]:
    """A chat stream's first delta for a choice: the role, no text yet."""
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}


def text_choice(index: int, delta: str, *, chat: bool) -> dict[str, Any]:
    """A stream chunk's choice with the next piece of text."""
    if chat:
        return {"index": index, "delta": {"content": delta}, "logprobs": None, "finish_reason": None}
    return {"index": index, "text": delta, "logprobs": None, "finish_reason": None}


def stream_event(rid: str, created: int, model: str, choices: list[dict[str, Any]], *, chat: bool,
                 **extra: Any) -> str:
    """One server-sent event of a streamed answer."""
    data = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": choices, **extra}
    return f"data: {json.dumps(data)}\n\n"


def error_event(err: APIError) -> str:
    """A stream's last event when a choice fails after the stream began."""
    return f"data: {json.dumps(err.body())}\n\n"


STREAM_END = "data: [DONE]\n\n"
