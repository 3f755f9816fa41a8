"""An engine that talks to any OpenAI-compatible server: `turngym serve`, vLLM, SGLang, OpenAI.

    engine = OpenAIEngine("http://127.0.0.1:8000/v1")          # model: the server's first
    engine = make_engine("openai:http://127.0.0.1:8000/v1#my-model")

A batch is sent as concurrent requests (at most ``max_concurrency`` in flight, results in
prompt order); a batching server (``turngym serve``, vLLM) batches them again on its side.

What goes where:

- chat messages (``mode="chat"``, the default): ``/v1/chat/completions``; ``render(messages,
  tools)`` returns the messages themselves (a :class:`ChatMessages` list that carries the
  tools along to ``generate``).
- chat messages with ``mode="completions"``: ``render`` asks the server's ``/tokenize``
  endpoint (vLLM and ``turngym serve`` have it) to apply the model's chat template and
  returns token ids; ``generate`` sends ids to ``/v1/completions``. Token in, token out, end
  to end, which is what a trainer on a remote server wants.
- a string or a token-id prompt: ``/v1/completions`` in either mode.

Token ids and log-probs: with ``extensions=True`` (the default for every server but
api.openai.com) requests carry vLLM's ``return_token_ids`` and
``include_stop_str_in_output``, so ``Completion.token_ids``/``prompt_ids`` are the server's
sampled ids and the text keeps a matched stop string, as local engines do. Servers that
ignore the fields give ``token_ids=None`` (log-probs still come back where the server
returns them; log-prob tokens written as ``token_id:N`` are read as ids).

API keys: ``$OPENAI_API_KEY`` goes to the official API alone (``https://api.openai.com``).
Any other server gets a key only when the caller names it, ``api_key=...`` or
``api_key_env=NAME`` (the variable to read, e.g. ``--engine-kwarg api_key_env=MY_SERVER_KEY``),
so a recipe or script that points ``openai:URL`` at someone's host cannot collect the key.

Retries are the openai SDK's own (``OpenAI(max_retries=..., timeout=...)``): a request that
fails to connect, times out, or gets 408/409/429/5xx is sent again up to ``max_retries`` times,
with the SDK's exponential backoff (0.5 s doubling, at most 8 s, with jitter) or the server's
``Retry-After``/``retry-after-ms``. A stream is retried until its response starts, not after.
What remains is a :class:`turngym.errors.EngineError` that names the URL and the fix.

Depends on ``turngym.agents`` and ``turngym.errors``; ``openai`` (the ``openai`` extra) is
imported when an engine is built.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from turngym.agents.engines.base import OnText, per_prompt_sampling
from turngym.agents.types import Completion, Prompt, SamplingParams
from turngym.errors import EngineError, require


class ChatMessages(list):
    """Chat messages as ``OpenAIEngine.render`` returns them: a plain list of message
    dicts that also remembers the ``tools`` to send with them."""

    def __init__(self, messages: Sequence[dict[str, Any]] = (), tools: list[dict[str, Any]] | None = None):
        super().__init__(messages)
        self.tools = tools


class OpenAIEngine:
    """The ``Engine`` protocol over an OpenAI-compatible HTTP API.

    Args:
        base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
        model: the model id to request (default: the first of the server's ``/v1/models``).
        api_key: the key to send, to whatever host ``base_url`` names.
        api_key_env: the environment variable holding the key to send (to any host), e.g.
            ``"OPENAI_API_KEY"`` for a server that takes that key. Without either,
            ``$OPENAI_API_KEY`` is sent to ``https://api.openai.com`` only and every other
            server gets ``"EMPTY"`` (local servers take any key).
        mode: ``"chat"`` or ``"completions"``: how chat messages are sent (module docstring).
        timeout: seconds per request (each attempt), the SDK's ``timeout``.
        max_retries: retries of a failed request (connection errors, timeouts, 408/409/429, 5xx),
            done by the SDK (its ``max_retries``) with its backoff or the server's ``Retry-After``.
        max_concurrency: most requests in flight at once.
        extensions: send vLLM's token-id fields (default: yes unless the host is api.openai.com).
        extra_body: more fields for every request (e.g. ``{"top_k": 20}`` for vLLM).
        name: the name in reports (default ``openai:<model>``).
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, mode: str = "chat",
                 timeout: float = 60.0, max_retries: int = 3, max_concurrency: int = 8,
                 extensions: bool | None = None, extra_body: dict[str, Any] | None = None,
                 name: str | None = None, api_key_env: str | None = None) -> None:
        if mode not in ("chat", "completions"):
            raise ValueError(f"OpenAIEngine mode must be 'chat' or 'completions', got {mode!r}")
        if max_concurrency < 1:
            raise ValueError(f"OpenAIEngine max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise ValueError(f"OpenAIEngine max_retries must be >= 0, got {max_retries}")
        if not base_url.startswith(("http://", "https://")):
            raise EngineError(f"OpenAI-compatible server URL {base_url!r} must start with http:// or https://, "
                              "e.g. http://127.0.0.1:8000/v1")
        self._openai = require("openai", "openai", "the openai engine")
        self.base_url = base_url.rstrip("/")
        self.mode = mode
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_concurrency = max_concurrency
        host = urlsplit(self.base_url).hostname or ""
        self.extensions = (host != "api.openai.com") if extensions is None else extensions
        self.extra_body = dict(extra_body or {})
        key = api_key_for(self.base_url, api_key, api_key_env)
        self.client = self._openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout,
                                          max_retries=max_retries)
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="turngym-openai")
        self._on_text_lock = threading.Lock()
        self.model = model or self._first_model()
        self.name = name or f"openai:{self.model}"

    # ---- the Engine protocol -----------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> Prompt:
        if self.mode == "chat":
            return ChatMessages(messages, tools)
        return self.tokenize(messages, tools)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | Sequence[SamplingParams],
                 on_text: OnText | None = None) -> list[Completion]:
        params = per_prompt_sampling(sampling, len(prompts))
        if not prompts:
            return []
        locked = None
        if on_text is not None:
            def locked(i: int, text: str) -> None:  # callers' hooks need not be thread-safe
                with self._on_text_lock:
                    on_text(i, text)
        futures = [self._pool.submit(self._complete, i, prompt, sp, locked)
                   for i, (prompt, sp) in enumerate(zip(prompts, params))]
        try:
            return [f.result() for f in futures]
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    # ---- helpers -----------------------------------------------------------------------------

    def tokenize(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Token ids of ``messages`` under the served model's chat template (the server's ``/tokenize``)."""
        root = self.base_url.removesuffix("/v1")  # vLLM serves /tokenize beside /v1, not under it
        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "add_generation_prompt": True}
        if tools:
            body["tools"] = tools
        try:
            data = self._call("/tokenize", lambda: self.client.post(root + "/tokenize", body=body, cast_to=object))
        except EngineError as exc:
            if isinstance(exc.__cause__, self._openai.NotFoundError):
                raise EngineError(f"mode='completions' renders chat messages with the server's /tokenize endpoint, "
                                  f"and {root} has none (vLLM and `turngym serve` do); use mode='chat'") from exc
            raise
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise EngineError(f"{root}/tokenize answered without a 'tokens' list: {str(data)[:200]}")
        return tokens

    def _first_model(self) -> str:
        served = self.served_models()
        if not served:
            raise EngineError(f"the server at {self.base_url} serves no models (GET /models returned none)")
        return served[0]

    def served_models(self) -> list[str]:
        """Ids from the server's ``/v1/models``."""
        page = self._call("/models", lambda: self.client.models.list())
        return [m.id for m in page.data]

    def _complete(self, index: int, prompt: Prompt, sp: SamplingParams, on_text: OnText | None) -> Completion:
        is_messages = isinstance(prompt, list) and bool(prompt) and all(isinstance(m, dict) for m in prompt)
        if is_messages and self.mode == "completions":
            prompt = self.tokenize(prompt, getattr(prompt, "tools", None))
            is_messages = False
        if not is_messages and not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt))):
            raise ValueError(f"prompt {index} must be a string, token ids, or chat messages; got {str(prompt)[:80]}")
        body = self._body(sp, chat=is_messages)
        if is_messages:
            tools = getattr(prompt, "tools", None)
            if tools:
                body["tools"] = tools
            kwargs = {"messages": list(prompt)}
            endpoint, create = "/chat/completions", self.client.chat.completions.create
        else:
            kwargs = {"prompt": prompt}
            endpoint, create = "/completions", self.client.completions.create
        standard = {k: body.pop(k) for k in list(body) if k in _STANDARD}
        request = dict(model=self.model, **kwargs, **standard, extra_body=body or None)
        if on_text is None:
            response = self._call(endpoint, lambda: create(**request))
            data = response.model_dump()
            return _read_chat(data) if is_messages else _read_completion(data)
        return self._call(endpoint, lambda: self._stream(create, request, is_messages, index, on_text))

    def _body(self, sp: SamplingParams, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"max_tokens": sp.max_tokens, "temperature": sp.temperature}
        if sp.top_p < 1:
            body["top_p"] = sp.top_p
        if sp.stop:
            body["stop"] = list(sp.stop)
        if sp.seed is not None:
            body["seed"] = sp.seed
        if sp.logprobs:
            body["logprobs"] = True if chat else 1
        if self.extensions:
            body["return_token_ids"] = True
            body["include_stop_str_in_output"] = True
        body.update(self.extra_body)
        return body

    def _stream(self, create: Any, request: dict[str, Any], chat: bool, index: int, on_text: OnText) -> Completion:
        text, ids, logprobs = "", [], []
        prompt_ids = None
        saw_ids = saw_logprobs = False
        finish = None
        calls: list[dict[str, Any]] = []
        stream = create(**request, stream=True)
        try:
            for chunk in stream:
                data = chunk.model_dump()
                if data.get("prompt_token_ids") is not None:
                    prompt_ids = data["prompt_token_ids"]
                for choice in data.get("choices") or []:
                    if choice.get("prompt_token_ids") is not None:
                        prompt_ids = choice["prompt_token_ids"]
                    if choice.get("token_ids") is not None:
                        saw_ids = True
                        ids.extend(choice["token_ids"])
                    lp = _logprob_list(choice.get("logprobs"), chat)
                    if lp is not None:
                        saw_logprobs = True
                        logprobs.extend(lp[0])
                    delta = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                    for call in (choice.get("delta") or {}).get("tool_calls") or [] if chat else []:
                        _merge_tool_call(calls, call)
                    if delta:
                        text += delta
                        on_text(index, text)
                    if choice.get("finish_reason"):
                        finish = choice["finish_reason"]
        finally:
            stream.close()
        if not text and calls:
            text = _tool_calls_text(calls)
        on_text(index, text)
        return _make(text, ids if saw_ids else None, logprobs if saw_logprobs else None, finish, prompt_ids)

    def _call(self, endpoint: str, fn: Any) -> Any:
        """``fn()`` (the SDK retries inside it); a failure that remains becomes an EngineError."""
        openai = self._openai
        try:
            return fn()
        except openai.APIError as exc:  # also an error event inside a stream
            raise self._explain(endpoint, exc, self._attempts(exc)) from exc

    def _attempts(self, exc: Exception) -> int:
        """How many times the SDK sent the request that failed with ``exc``: 1 + max_retries for the
        failures it retries (connection errors, timeouts, 408/409/429, 5xx), else 1."""
        openai = self._openai
        if isinstance(exc, openai.APIConnectionError):
            return 1 + self.max_retries
        status = getattr(exc, "status_code", None)
        if isinstance(exc, openai.APIStatusError) and status is not None and (status in (408, 409, 429) or status >= 500):
            return 1 + self.max_retries
        return 1

    def _explain(self, endpoint: str, exc: Exception, attempts: int) -> EngineError:
        openai = self._openai
        url = self.base_url + endpoint
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(exc, openai.APITimeoutError):
            return EngineError(f"{url} did not answer within {self.timeout:g}s{tries}; "
                               "raise the timeout (OpenAIEngine(timeout=...)) or lower the load")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return EngineError(f"cannot reach an OpenAI-compatible server at {self.base_url}{tries} "
                               f"({type(cause).__name__}: {cause}); start one with `turngym serve --port 8000` and "
                               "use --model openai:http://127.0.0.1:8000/v1, or check the URL")
        message = _server_message(exc)
        status = getattr(exc, "status_code", None)
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return EngineError(f"{self.base_url} rejected the API key (HTTP {status}: {message}); pass "
                               "OpenAIEngine(api_key=...) or api_key_env=NAME, the variable that holds it (e.g. "
                               "--engine-kwarg api_key_env=OPENAI_API_KEY: $OPENAI_API_KEY alone goes only to "
                               f"https://{OFFICIAL_API_HOST})")
        if isinstance(exc, openai.NotFoundError):
            model = getattr(self, "model", None)
            if model is not None and endpoint != "/models":
                try:
                    served = self.served_models()
                except EngineError:
                    served = None
                if served is not None and model not in served:
                    return EngineError(f"model {model!r} is not served by {self.base_url}; it serves: "
                                       f"{', '.join(served) or 'nothing'}")
            return EngineError(f"{url} was not found (HTTP 404: {message}); is the base URL right? "
                               "It usually ends in /v1")
        if isinstance(exc, openai.RateLimitError):
            return EngineError(f"{url} kept rate-limiting{tries} (HTTP 429: {message}); lower max_concurrency")
        if status is None:
            return EngineError(f"{url} failed: {message}")
        if status >= 500:
            return EngineError(f"{url} failed with HTTP {status}{tries}: {message}")
        return EngineError(f"{url} rejected the request (HTTP {status}): {message}")


#: The one host that gets ``$OPENAI_API_KEY`` without being told to (over https).
OFFICIAL_API_HOST = "api.openai.com"


def api_key_for(base_url: str, api_key: str | None = None, api_key_env: str | None = None) -> str:
    """The key to send to ``base_url``: ``api_key``; else the variable ``api_key_env`` names; else
    ``$OPENAI_API_KEY`` for ``https://api.openai.com`` alone; else ``"EMPTY"``."""
    if api_key and api_key_env:
        raise ValueError("OpenAIEngine takes api_key or api_key_env, not both")
    if api_key:
        return api_key
    if api_key_env:
        value = os.environ.get(api_key_env)
        if not value:
            raise EngineError(f"api_key_env={api_key_env!r} names an environment variable that is not set or empty; "
                              "set it, or pass api_key=...")
        return value
    url = urlsplit(base_url)
    if url.scheme == "https" and url.hostname == OFFICIAL_API_HOST and url.port in (None, 443):
        return os.environ.get("OPENAI_API_KEY") or "EMPTY"
    return "EMPTY"


#: Request fields the openai client takes as keyword arguments (the rest go in extra_body).
_STANDARD = {"max_tokens", "temperature", "top_p", "stop", "seed", "logprobs", "tools"}


def _server_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return getattr(exc, "message", None) or str(exc)


def _logprob_list(logprobs: Any, chat: bool) -> tuple[list[float], list[str]] | None:
    """(log-probs, token strings) from a choice's ``logprobs`` in either OpenAI shape."""
    if not isinstance(logprobs, dict):
        return None
    if chat:
        content = logprobs.get("content")
        if content is None:
            return None
        return [e["logprob"] for e in content], [e.get("token", "") for e in content]
    values = logprobs.get("token_logprobs")
    if values is None:
        return None
    return list(values), list(logprobs.get("tokens") or [])


def _ids_from_tokens(tokens: list[str]) -> list[int] | None:
    """vLLM's ``return_tokens_as_token_ids`` writes tokens as ``token_id:123``."""
    if not tokens or not all(t.startswith("token_id:") and t[9:].isdigit() for t in tokens):
        return None
    return [int(t[9:]) for t in tokens]


def _read_completion(data: dict[str, Any]) -> Completion:
    choice = data["choices"][0]
    lp = _logprob_list(choice.get("logprobs"), chat=False)
    ids = choice.get("token_ids")
    if ids is None and lp is not None:
        ids = _ids_from_tokens(lp[1])
    return _make(choice.get("text") or "", ids, lp[0] if lp else None, choice.get("finish_reason"),
                 choice.get("prompt_token_ids"))


def _read_chat(data: dict[str, Any]) -> Completion:
    choice = data["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content")
    if not text and message.get("tool_calls"):
        text = _tool_calls_text(message["tool_calls"])
    lp = _logprob_list(choice.get("logprobs"), chat=True)
    ids = choice.get("token_ids")
    if ids is None and lp is not None:
        ids = _ids_from_tokens(lp[1])
    return _make(text or "", ids, lp[0] if lp else None, choice.get("finish_reason"),
                 data.get("prompt_token_ids"))


def _make(text: str, ids: list[int] | None, logprobs: list[float] | None, finish: str | None,
          prompt_ids: list[int] | None) -> Completion:
    # "tool_calls" is how a chat server says "stopped to call a tool": a stop, for the runner
    finish = {"tool_calls": "stop", "function_call": "stop", None: "stop"}.get(finish, finish)
    return Completion(text=text, token_ids=ids, logprobs=logprobs, finish_reason=finish, prompt_ids=prompt_ids)


def _tool_calls_text(calls: list[dict[str, Any]]) -> str:
    """Structured tool calls (a server that parsed them away) back as Hermes-format text,
    the format turngym's tool-calling agent parses."""
    parts = []
    for call in calls:
        fn = call.get("function") or {}
        args = fn.get("arguments")
        try:
            args = json.loads(args) if isinstance(args, str) else args
        except json.JSONDecodeError:
            pass
        parts.append("<tool_call>\n" + json.dumps({"name": fn.get("name"), "arguments": args}) + "\n</tool_call>")
    return "\n".join(parts)


def _merge_tool_call(calls: list[dict[str, Any]], delta: dict[str, Any]) -> None:
    """Streamed tool calls arrive in pieces keyed by ``index``; glue the argument strings."""
    index = delta.get("index", len(calls))
    while len(calls) <= index:
        calls.append({"function": {"name": None, "arguments": ""}})
    fn = delta.get("function") or {}
    if fn.get("name"):
        calls[index]["function"]["name"] = fn["name"]
    args = fn.get("arguments")
    if isinstance(args, str):
        calls[index]["function"]["arguments"] += args
