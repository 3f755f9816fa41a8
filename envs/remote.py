"""Envs over HTTP: ``turngym serve-env`` (the server) and ``turngym/Remote-v0`` (a client that is itself a Gymnasium env).

For heavy envs (SWE sandboxes, WebShop's browser) on their own hosts:

    turngym serve-env turngym/SWE-v0 turngym/WebShop-v0 --port 8765 --api-key KEY    # on the env host
    env = gym.make("turngym/Remote-v0", url="http://envhost:8765", env_id="turngym/SWE-v0", api_key="KEY")

The client's ``env.unwrapped`` answers what the checker, the runner and the agents call on a local env
(``oracle_action``, ``admissible_actions``, ``illegal_actions``, ``get_state``/``set_state``, ``state_key``,
``task_ids``, ``splits``, ``get_task``, ``won``, ``progress``, ``instruction``, ``task``, ``task_id``,
``exemplars``, ``tool_specs``) by calling the server.

API (JSON bodies, ``Content-Type: application/json``; with an API key every route but ``/health`` needs
``Authorization: Bearer KEY``, compared in constant time, else 401):

* ``GET /health`` -> ``{"status": "ok", "envs": [...], "sessions": N}``
* ``POST /sessions`` ``{"env_id", "kwargs"}`` (only the ``kwargs`` names in ``--allow-kwarg``, by default
  ``split`` and ``invalid_action_penalty``, else 403) -> ``{"session_id", "env_id", "max_observation_length",
  "max_action_length", "max_episode_steps", "exemplars", "tool_specs"}`` (409 past ``--max-sessions``;
  403 for an id the server was not started with)
* ``POST /sessions/{id}/reset`` ``{"seed", "options"}`` -> ``{"observation", "info"}``
* ``POST /sessions/{id}/step`` ``{"action"}`` -> ``{"observation", "reward", "terminated", "truncated", "info"}``
* ``POST /sessions/{id}/call`` ``{"method", "args"}`` -> ``{"result"}``: one of :data:`CALLS` on ``env.unwrapped``
* ``DELETE /sessions/{id}``

Errors are ``{"error": {"type", "message"}}``; an exception the env raises on purpose (``TaskError``,
``TypeError``, ``TurngymError``, ...) is raised again by the client with its type; any other failure of the
env, a per-call timeout (the session is then dropped: its state is unknown) or a dead server is an
:class:`~turngym.errors.EnvFaultError`, which the runner records as an env error, not a loss.

Session ids are unguessable (``secrets.token_urlsafe``); a session idle for ``--idle-timeout`` seconds is
closed at the next request. The server listens on 127.0.0.1 unless told otherwise and checks the Host
header (DNS rebinding), body sizes and action lengths. States cross the wire as tagged JSON
(:func:`encode_state`): dataclasses, tuples, bytes, sets and non-string dict keys survive; nothing is ever pickled.

This module depends on nothing of ours but this package, :mod:`turngym.errors` and :mod:`turngym.http_server`;
fastapi and uvicorn (the ``serve`` extra) are imported only by the server.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request) at runtime.
import argparse
import asyncio
import base64
import contextlib
import dataclasses
import fractions
import hmac
import http.client
import importlib
import json
import os
import secrets
import sys
import threading
import time
import urllib.parse
from typing import Any, ClassVar

import gymnasium as gym

from turngym.envs.spaces import text_space
from turngym.errors import EnvFaultError, TaskError, TurngymError, require
from turngym.http_server import ServerThread, default_allowed_hosts, host_allowed

#: The environment variable the server and the client read the API key from when none is given.
API_KEY_ENV = "TURNGYM_ENV_SERVER_KEY"
#: Methods (and properties, called with no args) of ``env.unwrapped`` a client may call.
CALLS = ("oracle_action", "admissible_actions", "illegal_actions", "get_state", "set_state", "state_key",
         "task_ids", "splits", "get_task", "won", "progress", "instruction", "task", "task_id")
#: Env constructor arguments a client may pass unless the server is told otherwise (``--allow-kwarg``).
DEFAULT_CLIENT_KWARGS = ("split", "invalid_action_penalty")
#: Exceptions an env raises on purpose, raised again by the client under the same type.
_RAISED = {"TaskError": TaskError, "TurngymError": TurngymError, "TypeError": TypeError, "ValueError": ValueError,
           "KeyError": KeyError, "NotImplementedError": NotImplementedError}


# ---- states as tagged JSON (never pickle over the network) -----------------------------------------


def encode_state(value: Any) -> Any:
    """A JSON-able form of a state snapshot; :func:`decode_state` gives back an equal value (== and types).

    Plain JSON values pass as they are; dataclasses (an env's state class) become ``{"$dataclass": ["module:Name",
    {fields}]}``; fractions ``{"$fraction": [n, d]}``; tuples, bytes, sets, frozensets and dicts with non-string keys (or
    a key starting with ``$``) become one-key objects ``{"$tuple": [...]}``, ``{"$bytes": "base64"}``, ...
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [encode_state(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [encode_state(v) for v in value]}
    if isinstance(value, fractions.Fraction):  # Game24's exact arithmetic
        return {"$fraction": [value.numerator, value.denominator]}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (set, frozenset)):
        tag = "$frozenset" if isinstance(value, frozenset) else "$set"
        return {tag: sorted((encode_state(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"$dataclass": [f"{cls.__module__}:{cls.__qualname__}",
                               {f.name: encode_state(getattr(value, f.name)) for f in dataclasses.fields(value)}]}
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: encode_state(v) for k, v in value.items()}
        return {"$dict": [[encode_state(k), encode_state(v)] for k, v in value.items()]}
    raise TypeError(f"cannot send a {type(value).__name__} over the env server: states must be built from "
                    "None, bool, int, float, str, list, tuple, dict, set and bytes")


def decode_state(value: Any) -> Any:
    """The inverse of :func:`encode_state`."""
    if isinstance(value, list):
        return [decode_state(v) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$tuple":
            return tuple(decode_state(v) for v in inner)
        if tag == "$fraction":
            return fractions.Fraction(int(inner[0]), int(inner[1]))
        if tag == "$bytes":
            return base64.b64decode(inner)
        if tag == "$set":
            return {decode_state(v) for v in inner}
        if tag == "$frozenset":
            return frozenset(decode_state(v) for v in inner)
        if tag == "$dict":
            return {decode_state(k): decode_state(v) for k, v in inner}
        if tag == "$dataclass":
            name, fields = inner
            cls = _state_class(name)
            init = {f.name for f in dataclasses.fields(cls) if f.init}
            obj = cls(**{k: decode_state(v) for k, v in fields.items() if k in init})
            for k, v in fields.items():
                if k not in init:
                    object.__setattr__(obj, k, decode_state(v))
            return obj
    return {k: decode_state(v) for k, v in value.items()}


def _state_class(name: str) -> type:
    """The dataclass ``"module:Qualname"`` names: only from a module already imported (the served env's) or
    under ``turngym.envs.``, and only a dataclass: a name on the wire never imports or builds anything else."""
    module_name, _, qualname = str(name).partition(":")
    module = sys.modules.get(module_name)
    if module is None and module_name.startswith("turngym.envs."):
        module = importlib.import_module(module_name)
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if module is None or not isinstance(found, type) or not dataclasses.is_dataclass(found):
        raise TypeError(f"a state names {name!r}, which is not a dataclass of an env this process knows")
    return found


# ---- the server ------------------------------------------------------------------------------------


class _Session:
    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self.lock = asyncio.Lock()  # one call at a time per env
        self.last_used = time.monotonic()


def _error(status: int, message: str, kind: str = "TurngymError") -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=status)


class _Guard:
    """Host header, API key, Content-Type and body size, before the app sees a request (plain ASGI)."""

    def __init__(self, app: Any, api_key: str | None, allowed_hosts: tuple[str, ...], max_body_bytes: int) -> None:
        self.app, self.allowed_hosts, self.max_body_bytes = app, allowed_hosts, max_body_bytes
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if not host_allowed(host.decode("latin-1") if host is not None else None, self.allowed_hosts):
            return await _error(421, "this server does not answer to that Host name; start it with --host set to "
                                     "the name clients use")(scope, receive, send)
        # hmac.compare_digest: the time taken tells nothing of how much of the key was right
        if self.expected is not None and scope.get("path") != "/health" \
                and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return await _error(401, "invalid API key: send 'Authorization: Bearer KEY' with the server's "
                                     f"--api-key (Remote-v0: api_key=... or ${API_KEY_ENV})")(scope, receive, send)
        if scope.get("method") == "POST":
            if headers.get(b"content-type", b"").split(b";")[0].strip() != b"application/json":
                return await _error(415, "send 'Content-Type: application/json'")(scope, receive, send)
            length = headers.get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                return await _error(413, f"the body is over {self.max_body_bytes} bytes")(scope, receive, send)
            received = 0

            async def bounded() -> dict[str, Any]:  # a chunked body has no Content-Length: count it
                nonlocal received
                message = await receive()
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _TooLarge
                return message

            try:
                return await self.app(scope, bounded, send)
            except _TooLarge:
                return await _error(413, f"the body is over {self.max_body_bytes} bytes")(scope, receive, send)
        await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(env_ids: list[str], *, api_key: str | None = None, max_sessions: int = 16,
               idle_timeout_s: float = 600.0, call_timeout_s: float = 300.0, max_body_bytes: int = 8 << 20,
               max_action_length: int = 262_144, allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost", "::1"),
               allowed_kwargs: tuple[str, ...] = DEFAULT_CLIENT_KWARGS) -> Any:
    """A FastAPI app serving sessions of ``env_ids`` (and no other id); clients may pass only the constructor
    arguments named in ``allowed_kwargs`` (an env's paths, backends or commands stay the server's choice)."""
    require("fastapi", "serve", "turngym serve-env")
    from fastapi import FastAPI, Request
    from starlette.concurrency import run_in_threadpool

    from turngym.envs import check_env_id

    served = {check_env_id(i) for i in env_ids}
    sessions: dict[str, _Session] = {}
    creating = threading.Lock()
    app = FastAPI(title="turngym env server", docs_url=None, redoc_url=None)
    app.state.sessions = sessions
    app.add_middleware(_Guard, api_key=api_key, allowed_hosts=allowed_hosts, max_body_bytes=max_body_bytes)

    def close(session_id: str) -> None:
        session = sessions.pop(session_id, None)
        if session is not None:
            with contextlib.suppress(Exception):  # closing a broken env must not fail the request that reaps it
                session.env.close()

    def reap() -> None:
        now = time.monotonic()
        for sid, session in list(sessions.items()):
            if session is not None and now - session.last_used > idle_timeout_s and not session.lock.locked():
                close(sid)

    async def body_of(request: Request) -> dict[str, Any] | Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "the body must be a JSON object")
        return body if isinstance(body, dict) else _error(422, "the body must be a JSON object")

    async def on_env(session_id: str, fn: Any) -> Any:
        reap()
        session = sessions.get(session_id)
        if session is None:
            return _error(404, f"no session {session_id[:8]}...: it was closed, reaped after {idle_timeout_s:g}s "
                               "idle, or the server restarted; make the env again")
        async with session.lock:
            session.last_used = time.monotonic()
            try:
                result = await asyncio.wait_for(run_in_threadpool(fn, session.env), call_timeout_s)
            except TimeoutError:
                close(session_id)  # the env's state is unknown now
                return _error(504, f"the env call took over {call_timeout_s:g}s; the session was closed",
                              "EnvFaultError")
            except tuple(_RAISED.values()) as exc:
                return _error(422, str(exc), type(exc).__name__ if type(exc).__name__ in _RAISED else "TurngymError")
            except Exception as exc:  # noqa: BLE001  # the env broke: the client raises EnvFaultError
                return _error(500, f"{type(exc).__name__}: {exc}", "EnvFaultError")
            finally:
                session.last_used = time.monotonic()
        return result

    @app.get("/health")
    async def health() -> dict[str, Any]:
        reap()
        return {"status": "ok", "envs": sorted(served), "sessions": len(sessions)}

    @app.post("/sessions")
    async def create(request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            return body
        reap()
        env_id, kwargs = body.get("env_id"), body.get("kwargs") or {}
        try:
            env_id = check_env_id(str(env_id))
        except TurngymError:
            pass
        if env_id not in served:
            return _error(403, f"this server serves {sorted(served)}, not {body.get('env_id')!r}; start it with "
                               f"`turngym serve-env {body.get('env_id')}`")
        if not isinstance(kwargs, dict):
            return _error(422, "'kwargs' must be a JSON object of env constructor arguments")
        refused = sorted(set(kwargs) - set(allowed_kwargs))
        if refused:
            return _error(403, f"this server does not take the env argument(s) {refused} from clients (it takes "
                               f"{sorted(allowed_kwargs)}); start it with --allow-kwarg NAME for each")
        with creating:
            if len(sessions) >= max_sessions:
                return _error(409, f"the server holds its limit of {max_sessions} sessions; close envs you no "
                                   "longer use or start it with a larger --max-sessions")
            session_id = secrets.token_urlsafe(24)
            sessions[session_id] = None  # type: ignore[assignment]  # holds the slot while the env is built
        try:
            env = await asyncio.wait_for(run_in_threadpool(lambda: gym.make(env_id, **kwargs)), call_timeout_s)
        except Exception as exc:  # noqa: BLE001  # a constructor that fails: 422 or EnvFaultError
            sessions.pop(session_id, None)
            status = 422 if isinstance(exc, tuple(_RAISED.values())) else 500
            return _error(status, f"cannot make {env_id}: {type(exc).__name__}: {exc}",
                          type(exc).__name__ if type(exc).__name__ in _RAISED else "EnvFaultError")
        sessions[session_id] = _Session(env)
        base = env.unwrapped
        return {"session_id": session_id, "env_id": env_id,
                "max_observation_length": int(env.observation_space.max_length),
                "max_action_length": int(env.action_space.max_length),
                "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
                "exemplars": base.exemplars() if hasattr(base, "exemplars") else [],
                "tool_specs": base.tool_specs() if hasattr(base, "tool_specs") else []}

    @app.post("/sessions/{session_id}/reset")
    async def reset(session_id: str, request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            return body
        seed, options = body.get("seed"), body.get("options")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            return _error(422, "'seed' must be an integer or null")

        def fn(env: gym.Env) -> Any:
            obs, info = env.unwrapped.reset(seed=seed, options=options)
            return {"observation": obs, "info": encode_state(info)}

        return await on_env(session_id, fn)

    @app.post("/sessions/{session_id}/step")
    async def step(session_id: str, request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            return body
        action = body.get("action")
        if not isinstance(action, str):
            return _error(422, f"action must be a str, got {type(action).__name__}", "TypeError")
        if len(action) > max_action_length:
            return _error(413, f"the action is {len(action)} characters; this server takes at most {max_action_length}")

        def fn(env: gym.Env) -> Any:
            obs, reward, terminated, truncated, info = env.unwrapped.step(action)
            return {"observation": obs, "reward": float(reward), "terminated": bool(terminated),
                    "truncated": bool(truncated), "info": encode_state(info)}

        return await on_env(session_id, fn)

    @app.post("/sessions/{session_id}/call")
    async def call(session_id: str, request: Request) -> Any:
        body = await body_of(request)
        if not isinstance(body, dict):
            return body
        method, args = body.get("method"), body.get("args") or []
        if method not in CALLS:
            return _error(422, f"unknown call {method!r}; the server answers {list(CALLS)}")
        if not isinstance(args, list):
            return _error(422, "'args' must be a list")
        args = [decode_state(a) for a in args]

        def fn(env: gym.Env) -> Any:
            attr = getattr(env.unwrapped, method)
            return {"result": encode_state(attr(*args) if callable(attr) else attr)}

        return await on_env(session_id, fn)

    @app.delete("/sessions/{session_id}")
    async def delete(session_id: str) -> Any:
        if session_id not in sessions:
            return _error(404, f"no session {session_id[:8]}...")
        close(session_id)
        return {"closed": True}

    return app


class EnvServer(ServerThread):
    """``with EnvServer(create_app(["turngym/Game24-v0"])) as server: gym.make("turngym/Remote-v0", url=server.url, ...)``."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        super().__init__(app, host, port, log_level, lifespan="off", purpose="turngym serve-env",
                         name="turngym-env-http")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("env_ids", nargs="+", metavar="ENV_ID", help="the env ids this server serves (and no others)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default=None,
                        help=f"require 'Authorization: Bearer KEY' on every request but /health (default: ${API_KEY_ENV})")
    parser.add_argument("--max-sessions", type=int, default=16, help="most live envs at once (409 past it)")
    parser.add_argument("--idle-timeout", type=float, default=600.0, help="close a session idle this many seconds")
    parser.add_argument("--call-timeout", type=float, default=300.0, help="most seconds one env call may take")
    parser.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body")
    parser.add_argument("--max-action-length", type=int, default=262_144, help="longest action, in characters")
    parser.add_argument("--allowed-host", action="append", default=None,
                        help="a Host header name to answer to (repeatable; default: those of --host)")
    parser.add_argument("--allow-kwarg", action="append", default=None, metavar="NAME",
                        help=f"an env constructor argument clients may pass (repeatable; default: {', '.join(DEFAULT_CLIENT_KWARGS)})")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "serve", "turngym serve-env")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    allowed = tuple(args.allowed_host) if args.allowed_host else default_allowed_hosts(args.host)
    app = create_app(args.env_ids, api_key=api_key, max_sessions=args.max_sessions, idle_timeout_s=args.idle_timeout,
                     call_timeout_s=args.call_timeout, max_body_bytes=args.max_body_bytes,
                     max_action_length=args.max_action_length, allowed_hosts=allowed,
                     allowed_kwargs=tuple(args.allow_kwarg) if args.allow_kwarg else DEFAULT_CLIENT_KWARGS)
    url = f"http://{args.host}:{args.port}"
    print(f"turngym serve-env: {', '.join(args.env_ids)} at {url}; e.g. gym.make('turngym/Remote-v0', url='{url}', "
          f"env_id='{args.env_ids[0]}'){' (API key required)' if api_key else ''}", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


# ---- the client --------------------------------------------------------------------------------------


class RemoteEnv(gym.Env[str, str]):
    """A turngym env served by ``turngym serve-env`` on another host, as a Gymnasium env.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8765"``.
        env_id: the served env, e.g. ``"turngym/SWE-v0"`` (the server must have been started with it).
        env_kwargs: the served env's constructor arguments (JSON values).
        api_key: the server's ``--api-key`` (default: ``$TURNGYM_ENV_SERVER_KEY``).
        timeout_s: seconds to wait for one call before raising :class:`~turngym.errors.EnvFaultError`.

    Observations, actions, rewards, ``info`` keys and the end of an episode are the served env's. The server
    steps the served env's unwrapped env; the client adds the served id's ``TimeLimit`` (see :func:`make_remote`,
    the entry point), so ``env.unwrapped.step`` is uncounted here as it is on a local env. ``close()`` closes the session. A dead
    or hung server raises :class:`~turngym.errors.EnvFaultError`; a rejected key or an id the server does not
    serve, :class:`~turngym.errors.TurngymError` naming the fix.

    Version History:
        * v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, url: str, env_id: str, env_kwargs: dict[str, Any] | None = None, api_key: str | None = None,
                 timeout_s: float = 300.0, render_mode: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise TurngymError(f"Remote-v0 needs url='http://HOST:PORT' of a `turngym serve-env` server, got {url!r}")
        self.url, self.env_id, self.timeout_s = url.rstrip("/"), env_id, float(timeout_s)
        self.render_mode = render_mode
        self._parsed = parsed
        self._api_key = api_key or os.environ.get(API_KEY_ENV) or None
        self._conn: http.client.HTTPConnection | None = None
        self._session: str | None = None
        made = self._request("POST", "/sessions", {"env_id": env_id, "kwargs": env_kwargs or {}})
        self._session = made["session_id"]
        self.served_id = made["env_id"]
        self.max_episode_steps = made["max_episode_steps"]
        self._exemplars, self._tool_specs = made["exemplars"], made["tool_specs"]
        self.observation_space = text_space(made["max_observation_length"])
        self.action_space = text_space(made["max_action_length"])

    # ---- HTTP ----
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        data = json.dumps(body).encode() if body is not None else None
        prefix = self._parsed.path.rstrip("/")
        for attempt in (0, 1):  # a kept-alive connection the server closed: reconnect once
            if self._conn is None:
                cls = http.client.HTTPSConnection if self._parsed.scheme == "https" else http.client.HTTPConnection
                self._conn = cls(self._parsed.hostname, self._parsed.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, prefix + path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                # uvicorn closes a kept-alive connection after a few idle seconds: reconnect once
                self._conn.close()
                self._conn = None
                if attempt:
                    raise EnvFaultError(f"the env server at {self.url} dropped the connection ({exc}); is it still "
                                        f"running? (`turngym serve-env {self.env_id}`)") from None
            except OSError as exc:
                self._conn.close()
                self._conn = None
                raise EnvFaultError(f"cannot reach the env server at {self.url} ({exc}); start it with "
                                    f"`turngym serve-env {self.env_id} --port {self._parsed.port}` or fix url") from None
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            payload = {"error": {"type": "EnvFaultError", "message": raw[:200].decode("utf-8", "replace")}}
        if response.status < 400:
            return payload
        error = payload.get("error") or {}
        kind, message = error.get("type", "TurngymError"), error.get("message", f"HTTP {response.status}")
        if response.status == 401:
            raise TurngymError(f"the env server at {self.url} rejected the API key: {message}")
        if kind == "EnvFaultError" or response.status >= 500:
            raise EnvFaultError(f"the env server at {self.url} ({self.env_id}): {message}")
        raise _RAISED.get(kind, TurngymError)(f"the env server at {self.url} ({self.env_id}): {message}")

    def _call(self, method: str, *args: Any) -> Any:
        self._need_session()
        out = self._request("POST", f"/sessions/{self._session}/call",
                            {"method": method, "args": [encode_state(a) for a in args]})
        return decode_state(out["result"])

    def _need_session(self) -> None:
        if self._session is None:
            raise TurngymError(f"Remote-v0 ({self.env_id} at {self.url}) is closed; make a new env")

    # ---- gymnasium API ----
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        self._need_session()
        out = self._request("POST", f"/sessions/{self._session}/reset", {"seed": seed, "options": options})
        return out["observation"], decode_state(out["info"])

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not isinstance(action, str):
            raise TypeError(f"action must be a str, got {type(action).__name__}")
        self._need_session()
        out = self._request("POST", f"/sessions/{self._session}/step", {"action": action})
        return out["observation"], out["reward"], out["terminated"], out["truncated"], decode_state(out["info"])

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            try:
                self._request("DELETE", f"/sessions/{session}")
            except TurngymError:  # a dead server has no session to close
                pass
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit anything may be gone
            self.close()

    # ---- what the checker, the runner and the agents call on env.unwrapped ----
    def oracle_action(self) -> str:
        return self._call("oracle_action")

    def admissible_actions(self) -> list[str] | None:
        return self._call("admissible_actions")

    def illegal_actions(self) -> list[str]:
        return self._call("illegal_actions")

    def get_state(self) -> Any:
        return self._call("get_state")

    def set_state(self, state: Any) -> None:
        self._call("set_state", state)

    def state_key(self) -> Any:
        return self._call("state_key")

    def task_ids(self, split: str | None = None) -> list[str]:
        return self._call("task_ids", split)

    def splits(self) -> dict[str, int]:
        return self._call("splits")

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._call("get_task", task_id)

    def progress(self) -> float | None:
        return self._call("progress")

    @property
    def won(self) -> bool:
        return self._call("won")

    @property
    def instruction(self) -> str:
        return self._call("instruction")

    @property
    def task(self) -> dict[str, Any] | None:
        return self._call("task")

    @property
    def task_id(self) -> str | None:
        return self._call("task_id")

    def exemplars(self) -> list[dict[str, Any]]:
        """The served env's few-shot exemplars (sent once, when the session is made)."""
        return self._exemplars

    def tool_specs(self) -> list[dict[str, Any]]:
        """The served env's tool schemas (sent once, when the session is made)."""
        return self._tool_specs


def make_remote(**kwargs: Any) -> gym.Env:
    """The entry point of ``turngym/Remote-v0``: a :class:`RemoteEnv` in the served id's ``TimeLimit``
    (which only the server knows, so the registration cannot carry it)."""
    env = RemoteEnv(**kwargs)
    return gym.wrappers.TimeLimit(env, env.max_episode_steps) if env.max_episode_steps else env
