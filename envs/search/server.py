"""``turngym serve-retriever``: a Search-R1-compatible retrieval server over any of our retrievers.

    turngym serve-retriever [--retriever bm25|dense] [--corpus synthetic|wiki | --corpus-file PASSAGES]
                            [--host 127.0.0.1] [--port 8000] [--api-key KEY]

One server, many env workers: start it once, then make every env with
``gym.make("turngym/Search-v0", retriever="http://127.0.0.1:8000")``; the
index (and, for ``dense``, the model) lives in one process instead of one
per worker.

The API is Search-R1's ``retrieval_server.py``:

* ``POST /retrieve`` with ``{"queries": ["..."], "topk": 3, "return_scores":
  true}`` answers ``{"result": [[{"document": {"id", "contents", "title",
  "text"}, "score": 12.3}, ...], ...]}`` (one list per query, best first;
  without ``return_scores`` each list holds the documents themselves).
  ``contents`` is ``"title\\ntext"`` as in wiki-18; ``topk`` defaults to the
  server's ``--topk`` when absent (or null); any other value must be an
  integer in 1..100 (else 422, as for every malformed body).
* ``GET /health`` answers ``{"status": "ok", "retriever", "corpus", "passages"}``.

With ``--api-key KEY`` every route but ``/health`` needs ``Authorization: Bearer
KEY`` (compared in constant time; else 401); clients pass it as
``retriever_options={"api_key_env": "NAME"}`` (or ``"api_key"``).

It listens on 127.0.0.1 unless told otherwise. fastapi and uvicorn (the
``serve`` extra) are imported when the server starts, so the CLI can import
this module cheaply.

This module depends on nothing of ours but this package and :mod:`turngym.errors`.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request) at runtime.
import argparse
import hmac
import socket
import sys
from typing import Any

from turngym.envs.search.corpus import Corpus
from turngym.envs.search.retrievers import RETRIEVERS, Retriever, make_retriever
from turngym.errors import TurngymError, require
from turngym.http_server import ServerThread

#: Most queries one request may carry, and the largest topk (bounds the work of one request).
MAX_QUERIES = 1024
MAX_TOPK = 100


def _error(status: int, message: str) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": {"message": message}}, status_code=status)


class _KeyCheck:
    """``Authorization: Bearer KEY`` on every route but ``/health``, compared in constant time (plain ASGI)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            sent = dict(scope.get("headers") or []).get(b"authorization", b"")
            # hmac.compare_digest: the time taken tells nothing of how much of the key was right
            if not hmac.compare_digest(sent, self.expected):
                await _error(401, "invalid API key: send 'Authorization: Bearer KEY' with the server's --api-key "
                                  "(the Search env: retriever_options={'api_key_env': NAME})")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(retriever: Retriever, corpus: Corpus | None = None, default_topk: int = 3,
               api_key: str | None = None) -> Any:
    """A FastAPI app serving ``retriever`` under Search-R1's ``/retrieve`` API; with ``api_key``, requests must
    send ``Authorization: Bearer <api_key>`` (``/health`` aside)."""
    require("fastapi", "serve", "turngym serve-retriever")
    from fastapi import FastAPI, Request
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="turngym retriever", docs_url=None, redoc_url=None)
    app.state.retriever = retriever
    if api_key:
        app.add_middleware(_KeyCheck, api_key=api_key)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "retriever": retriever.name, "corpus": corpus.name if corpus else None,
                "passages": len(corpus) if corpus else None}

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:  # not JSON, or not UTF-8
            return _error(400, "the body must be JSON: {\"queries\": [\"...\"], \"topk\": 3, \"return_scores\": true}")
        if not isinstance(body, dict):
            return _error(422, "the body must be a JSON object with 'queries'")
        queries = body.get("queries")
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            return _error(422, "'queries' must be a list of strings")
        if len(queries) > MAX_QUERIES:
            return _error(422, f"'queries' holds {len(queries)} queries; send at most {MAX_QUERIES} per request")
        topk = body.get("topk")
        if topk is None:  # absent: the server's default; 0 or -1 are errors, not a request for the default
            topk = default_topk
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
            return _error(422, f"'topk' must be an integer in 1..{MAX_TOPK}, got {body.get('topk')!r}")
        with_scores = bool(body.get("return_scores", False))
        hits = await run_in_threadpool(retriever.search, queries, topk)
        if with_scores:
            result = [[{"document": h.passage.to_json(), "score": h.score} for h in row] for row in hits]
        else:
            result = [[h.passage.to_json() for h in row] for row in hits]
        return {"result": result}

    return app


class RetrieverServer(ServerThread):
    """Runs the app under uvicorn in a background thread (tests, notebooks, benchmarks).

    ``with RetrieverServer(create_app(retriever)) as server: make(..., retriever=server.url)``;
    port 0 picks a free port. See :class:`turngym.http_server.ServerThread`.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
        super().__init__(app, host, port, log_level, lifespan="off", purpose="turngym serve-retriever",
                         name="turngym-retriever-http")


def load_corpus(name: str, corpus_file: str | None = None, corpus_limit: int | None = None) -> Corpus:
    """The corpus a server serves: ``synthetic``, ``wiki`` or a passages file."""
    if corpus_file:
        from turngym.envs.search.data import load_wiki18_passages

        return load_wiki18_passages(corpus_file, limit=corpus_limit, name="file")
    if name == "synthetic":
        from turngym.envs.search import synthetic

        return synthetic.corpus()
    if name == "wiki":
        from turngym.envs.search import wiki

        return wiki.corpus()
    raise TurngymError(f"unknown corpus {name!r}; use --corpus synthetic, --corpus wiki or --corpus-file PASSAGES")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--retriever", default="bm25", choices=list(RETRIEVERS), help="bm25 (default) or dense")
    parser.add_argument("--corpus", default="synthetic", choices=["synthetic", "wiki"],
                        help="the built-in corpus to serve (the Search env's train/test or wiki split)")
    parser.add_argument("--corpus-file", default=None,
                        help="serve a passages file instead: wiki-18 .jsonl (id, contents) or DPR .tsv")
    parser.add_argument("--corpus-limit", type=int, default=None, help="read only the first N passages of --corpus-file")
    parser.add_argument("--topk", type=int, default=3, help="passages per query when a request gives no topk")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=None,
                        help="require 'Authorization: Bearer KEY' on every request but /health (clients: the Search "
                             "env's retriever_options={'api_key_env': NAME})")
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    uvicorn = require("uvicorn", "serve", "turngym serve-retriever")
    require("fastapi", "serve", "turngym serve-retriever")
    if not 1 <= args.topk <= MAX_TOPK:
        raise TurngymError(f"--topk must be in 1..{MAX_TOPK}, got {args.topk}")
    try:  # fail before building the index if the port is taken
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((args.host, args.port))
    except OSError as exc:
        raise TurngymError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); "
                           "is another server running there? Pick another --port") from None
    corpus = load_corpus(args.corpus, args.corpus_file, args.corpus_limit)
    print(f"turngym serve-retriever: indexing {len(corpus)} passages of {corpus.name!r} with {args.retriever} ...",
          file=sys.stderr, flush=True)
    retriever = make_retriever(args.retriever, corpus)
    app = create_app(retriever, corpus, default_topk=args.topk, api_key=args.api_key)
    url = f"http://{args.host}:{args.port}"
    print(f"turngym serve-retriever: {args.retriever} over {corpus.name!r} at {url}/retrieve; e.g. "
          f"gym.make('turngym/Search-v0', retriever='{url}')", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
