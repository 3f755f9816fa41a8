"""`turngym serve` under a flood on 127.0.0.1 (issue 17): a real uvicorn server, concurrent clients.

Most requests are oversized or hostile (max_tokens past the context, too many completions, a body
past the limit, not JSON, a foreign Host); the rest are normal requests (plain, chat, streamed, and
bulk ones that fill the queue). The server must answer every normal request, refuse every other one
with its 4xx, keep its queue bounded (429, which the clients retry), and lose or duplicate nothing:
each request id gets exactly one final answer, and the engine completes each prompt exactly once.
Bounded: 16 clients x 50 requests, well under a minute on a busy 2-core machine.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from turngym.agents.engines.base import per_prompt_sampling
from turngym.agents.serve import ServerThread, create_app
from turngym.agents.types import Completion

CLIENTS, REQUESTS = 16, 50
CONTEXT, BODY_LIMIT, REQUEST_JOBS, PENDING_JOBS = 512, 16_384, 16, 40


class CountingEcho:
    """Answers ``answer:<prompt>``; counts every prompt it completes; knows its context length.
    Each batch costs a little engine time, so requests queue behind it."""

    name = "echo"
    max_context = CONTEXT

    def __init__(self) -> None:
        self.completed: Counter[str] = Counter()
        self.lock = threading.Lock()

    def render(self, messages, tools=None):
        return "|".join(m["content"] for m in messages)

    def generate(self, prompts, sampling, on_text=None):
        params = per_prompt_sampling(sampling, len(prompts))
        time.sleep(0.002)
        out = []
        for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
            with self.lock:
                self.completed[prompt] += 1
            ids = list(f"answer:{prompt}".encode())[: sp.max_tokens]
            text = bytes(ids).decode(errors="ignore")
            if on_text is not None:
                on_text(i, text)
            out.append(Completion(text=text, token_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop"))
        return out


#: kind -> (expected final status, expected error code or None); the first four are normal requests
KINDS = {
    "plain": (200, None), "chat": (200, None), "stream": (200, None), "bulk": (200, None),
    "max_tokens": (400, None), "too_many": (400, "too_many_completions"), "huge_body": (413, "body_too_large"),
    "not_json": (415, "unsupported_media_type"), "foreign_host": (400, "host_not_allowed"),
}
NORMAL = ("plain", "chat", "stream", "bulk")


def _send(http: httpx.Client, url: str, kind: str, rid: str) -> tuple[int, str | None, object]:
    """One attempt: (status, error code, what the answer says)."""
    post = url + "/completions"
    if kind == "plain":
        r = http.post(post, json={"prompt": rid, "max_tokens": 64})
        return r.status_code, _code(r), r.status_code == 200 and [c["text"] for c in r.json()["choices"]]
    if kind == "bulk":  # a full request: REQUEST_JOBS completions, the kind that fills the queue
        r = http.post(post, json={"prompt": [f"{rid}/{j}" for j in range(REQUEST_JOBS)], "max_tokens": 64})
        return r.status_code, _code(r), r.status_code == 200 and [c["text"] for c in r.json()["choices"]]
    if kind == "chat":
        r = http.post(url + "/chat/completions", json={"messages": [{"role": "user", "content": rid}]})
        return r.status_code, _code(r), r.status_code == 200 and [c["message"]["content"] for c in r.json()["choices"]]
    if kind == "stream":
        with http.stream("POST", post, json={"prompt": rid, "max_tokens": 64, "stream": True}) as r:
            if r.status_code != 200:
                r.read()
                return r.status_code, _code(r), None
            text = "".join(json.loads(line[6:])["choices"][0]["text"] for line in r.iter_lines()
                           if line.startswith("data: {"))
            return 200, None, [text]
    if kind == "max_tokens":
        r = http.post(post, json={"prompt": rid, "max_tokens": 10**6})
    elif kind == "too_many":
        r = http.post(post, json={"prompt": [rid] * 8, "n": 4})
    elif kind == "huge_body":
        r = http.post(post, json={"prompt": rid + "x" * 4 * BODY_LIMIT})
    elif kind == "not_json":
        r = http.post(post, content=json.dumps({"prompt": rid}), headers={"content-type": "text/plain"})
    else:
        r = http.post(post, json={"prompt": rid}, headers={"host": "rebound.example"})
    return r.status_code, _code(r), None


def _answers(rid: str, kind: str) -> list[str]:
    """What a normal request's choices must say."""
    return [f"answer:{rid}/{j}" for j in range(REQUEST_JOBS)] if kind == "bulk" else [f"answer:{rid}"]


def _code(r: httpx.Response) -> str | None:
    try:
        return r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def test_a_flood_of_oversized_requests_is_refused_while_normal_ones_are_answered():
    engine = CountingEcho()
    app = create_app(engine, batch_wait_ms=1, max_batch_size=32, max_request_jobs=REQUEST_JOBS,
                     max_pending_jobs=PENDING_JOBS, max_body_bytes=BODY_LIMIT)
    rng = random.Random(17)
    weights = {"plain": 2, "chat": 1, "stream": 1, "bulk": 2, "max_tokens": 2, "too_many": 2, "huge_body": 2,
               "not_json": 1, "foreign_host": 1}
    plan = [[(f"c{c}r{k}", rng.choices(list(weights), list(weights.values()))[0]) for k in range(REQUESTS)]
            for c in range(CLIENTS)]
    finals: dict[str, list[tuple[int, str | None, object]]] = {}
    retries = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client(requests: list[tuple[str, str]], url: str) -> None:
        try:
            with httpx.Client(timeout=30) as http:
                for rid, kind in requests:
                    t0 = time.perf_counter()
                    while True:
                        status, code, said = _send(http, url, kind, rid)
                        if status != 429:
                            break
                        with lock:
                            retries[kind] += 1
                        time.sleep(0.01)  # the server says Retry-After: 1; the test is in a hurry
                    with lock:
                        finals.setdefault(rid, []).append((status, code, said))
                        if kind in NORMAL:
                            latencies.append(time.perf_counter() - t0)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    with ServerThread(app) as server:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(plan[c], server.url)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        wall = time.perf_counter() - t0
        scheduler = server.app.state.scheduler
        live_after = scheduler.live()
        with httpx.Client() as http:
            after = http.post(server.url + "/completions", json={"prompt": "after", "max_tokens": 64})

    assert not failures, failures
    kinds = {rid: kind for requests in plan for rid, kind in requests}
    lost = [rid for rid in kinds if rid not in finals]
    duplicated = [rid for rid, answers in finals.items() if len(answers) != 1]
    wrong = []
    for rid, kind in kinds.items():
        status, code, said = finals[rid][0]
        want_status, want_code = KINDS[kind]
        if status != want_status or (want_code is not None and code != want_code):
            wrong.append((rid, kind, status, code))
        elif kind in NORMAL and said != _answers(rid, kind):
            wrong.append((rid, kind, said))
    want_prompts = Counter()
    for rid, kind in kinds.items():
        if kind == "bulk":
            want_prompts.update(f"{rid}/{j}" for j in range(REQUEST_JOBS))
        elif kind in NORMAL:
            want_prompts[rid] += 1
    statuses = Counter(finals[rid][0][0] for rid in finals)
    latencies.sort()
    print(f"\nflood: {len(kinds)} requests from {CLIENTS} clients in {wall:.1f}s; "
          f"answered {statuses[200]} (normal, {sum(want_prompts.values())} completions), "
          f"refused {len(kinds) - statuses[200]} ({dict(sorted((s, n) for s, n in statuses.items() if s != 200))}), "
          f"429 then retried: {sum(retries.values())} ({dict(retries)}), lost {len(lost)}, duplicated {len(duplicated)}, "
          f"normal latency p50 {latencies[len(latencies) // 2] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms; "
          f"most live jobs bound {PENDING_JOBS}, refused jobs {scheduler.stats.refused}")
    assert not lost and not duplicated and not wrong, (lost[:5], duplicated[:5], wrong[:5])
    assert engine.completed == want_prompts + Counter(["after"])  # each normal prompt once, no refused one
    assert live_after == 0 and after.status_code == 200
    assert statuses[200] == sum(kind in NORMAL for kind in kinds.values()) > 0
    assert wall < 60
