"""Run an ASGI app under uvicorn in a background thread on a pre-bound socket (tests, notebooks, benchmarks),
and the Host-header policy of a server bound to an address.

Shared by ``turngym serve`` (:mod:`turngym.agents.serve`) and ``turngym
serve-retriever`` (:mod:`turngym.envs.search.server`). A leaf module: it
imports only :mod:`turngym.errors` (and uvicorn lazily), so any layer may use it.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Collection
from typing import Any, Self

from turngym.errors import TurngymError, require

#: The names a server bound to a loopback address answers to.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def default_allowed_hosts(bind: str) -> tuple[str, ...]:
    """The Host-header names a server bound to ``bind`` accepts unless told otherwise.

    On a loopback address, the loopback names; on another address, that address; on a wildcard
    (``0.0.0.0``, ``::``: every interface, names unknown) any, written ``("*",)``. A web page a
    browser loaded from elsewhere sends its own site's name as Host, so it cannot reach a local
    server through a name that resolves to it (DNS rebinding).
    """
    name = host_name(bind)
    if name in ("", "0.0.0.0", "::", "*"):
        return ("*",)
    if name == "localhost":
        return LOOPBACK_HOSTS
    try:
        loopback = ipaddress.ip_address(name).is_loopback
    except ValueError:
        return (name,)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, name))) if loopback else (name,)


def host_name(host: str) -> str:
    """The name in a Host header (or a bind address): the port, IPv6 brackets and a final dot dropped,
    lower case."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(header: str | None, allowed: Collection[str]) -> bool:
    """Whether a request's Host header names one of ``allowed`` (names as :func:`host_name` gives them;
    ``"*"`` allows any, a missing header included)."""
    if "*" in allowed:
        return True
    return header is not None and host_name(header) in allowed


class ServerThread:
    """``with ServerThread(app) as server: ... server.url ...``.

    Port 0 picks a free port: the socket is bound before uvicorn starts, so
    there is no race. ``path`` is appended to ``url`` (e.g. "/v1");
    ``lifespan`` is uvicorn's ("on" runs the app's startup/shutdown hooks).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning", *,
                 path: str = "", lifespan: str = "on", purpose: str = "serving over HTTP", name: str = "turngym-http"):
        uvicorn = require("uvicorn", "serve", purpose)
        self.app = app
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that say they are TCP;
        # without it every response waits ~40 ms for a delayed ACK (Nagle).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self.host, self.port = self._sock.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}{path}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan=lifespan))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, name=name,
                                        daemon=True)

    def start(self, timeout: float = 30.0) -> Self:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TurngymError(f"the server at {self.url} did not start within {timeout}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
