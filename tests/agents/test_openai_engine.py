"""OpenAIEngine against a real `turngym serve` (uvicorn on 127.0.0.1) over a scripted echo engine."""

import socket
import sys
import threading
import time

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from turngym.agents.engines import make_engine  # noqa: E402
from turngym.agents.engines.base import Engine, find_stop, per_prompt_sampling  # noqa: E402
from turngym.agents.engines.openai_compat import ChatMessages, OpenAIEngine  # noqa: E402
from turngym.agents.serve import ServerThread, create_app  # noqa: E402
from turngym.agents.types import Completion, SamplingParams  # noqa: E402
from turngym.errors import EngineError  # noqa: E402


class EchoEngine:
    """Answers ``echo:<prompt>. The end.``, streaming 3 characters at a time; ids are UTF-8
    bytes; chat messages render to the bytes of ``role:content`` joined by ``|``."""

    name = "echo"

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.batches: list[int] = []
        self.rendered: list = []

    def render(self, messages, tools=None):
        self.rendered.append((messages, tools))
        return list("|".join(f"{m['role']}:{m.get('content') or ''}" for m in messages).encode())

    def generate(self, prompts, sampling, on_text=None):
        params = per_prompt_sampling(sampling, len(prompts))
        self.batches.append(len(prompts))
        if self.delay:
            time.sleep(self.delay)
        out = []
        for i, (prompt, sp) in enumerate(zip(prompts, params)):
            source = prompt if isinstance(prompt, str) else bytes(prompt).decode()
            text = f"echo:{source}. The end."
            end = find_stop(text, sp.stop)
            text = text if end is None else text[:end]
            ids = list(text.encode())[: sp.max_tokens]
            finish = "length" if len(ids) < len(text.encode()) else "stop"
            text = bytes(ids).decode(errors="ignore")
            if on_text is not None:
                for k in range(3, len(text), 3):
                    on_text(i, text[:k])
                on_text(i, text)
            out.append(Completion(text=text, token_ids=ids, logprobs=[-0.5] * len(ids), finish_reason=finish,
                                  prompt_ids=list(source.encode())))
        return out


@pytest.fixture(scope="module")
def server():
    engine = EchoEngine()
    with ServerThread(create_app(engine, batch_wait_ms=2)) as srv:
        srv.engine = engine
        yield srv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_is_an_engine_and_finds_the_model(server):
    engine = OpenAIEngine(server.url)
    assert isinstance(engine, Engine)
    assert engine.model == "echo" and engine.name == "openai:echo"
    built = make_engine(f"openai:{server.url}#echo")
    assert isinstance(built, OpenAIEngine) and built.model == "echo"


def test_a_batch_of_mixed_prompts_comes_back_in_order_with_ids_and_logprobs(server):
    engine = OpenAIEngine(server.url)
    chat = engine.render([{"role": "user", "content": "c"}])
    assert isinstance(chat, ChatMessages) and chat == [{"role": "user", "content": "c"}]
    prompts = ["text", list(b"ids"), chat] + [f"p{k}" for k in range(10)]
    out = engine.generate(prompts, SamplingParams(max_tokens=100, temperature=0))
    assert [c.text for c in out] == ([f"echo:{s}. The end." for s in ("text", "ids", "user:c")]
                                     + [f"echo:p{k}. The end." for k in range(10)])
    assert out[0].token_ids == list(b"echo:text. The end.") and out[0].prompt_ids == list(b"text")
    assert out[1].prompt_ids == list(b"ids")
    assert out[2].prompt_ids == list(b"user:c")  # chat: the server's rendered prompt
    assert all(c.logprobs == [-0.5] * len(c.token_ids) for c in out)
    assert all(c.finish_reason == "stop" for c in out)


def test_stop_strings_stay_in_the_text_like_local_engines(server):
    engine = OpenAIEngine(server.url)
    sp = [SamplingParams(max_tokens=100, stop=[". T"]), SamplingParams(max_tokens=3)]
    stopped, cut = engine.generate(["a", "b"], sp)
    assert stopped.text == "echo:a. T" and stopped.token_ids == list(b"echo:a. T")
    assert cut.text == "ech" and cut.finish_reason == "length"
    # a server without the extensions drops the stop string, as OpenAI does
    plain = OpenAIEngine(server.url, extensions=False).generate(["a"], sp[0])[0]
    assert plain.text == "echo:a"


def test_logprobs_false_asks_for_none(server):
    out = OpenAIEngine(server.url).generate(["a"], SamplingParams(max_tokens=5, logprobs=False))[0]
    assert out.logprobs is None and out.token_ids == list(b"echo:")


def test_on_text_streams_growing_text_and_ends_with_the_completion(server):
    engine = OpenAIEngine(server.url)
    seen: dict[int, list[str]] = {0: [], 1: []}
    prompts = ["streamed prompt", engine.render([{"role": "user", "content": "chat stream"}])]
    out = engine.generate(prompts, SamplingParams(max_tokens=100), on_text=lambda i, t: seen[i].append(t))
    for i, completion in enumerate(out):
        texts = seen[i]
        assert len(texts) > 3 and texts[-1] == completion.text
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))
        assert completion.token_ids == list(completion.text.encode())
        assert completion.logprobs == [-0.5] * len(completion.token_ids)
    assert out[0].prompt_ids == list(b"streamed prompt") and out[1].prompt_ids == list(b"user:chat stream")


def test_completions_mode_renders_through_tokenize_token_in_token_out(server):
    engine = OpenAIEngine(server.url, mode="completions")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    prompt = engine.render([{"role": "user", "content": "hi"}], tools=tools)
    assert prompt == list(b"user:hi") and server.engine.rendered[-1][1] == tools
    out = engine.generate([prompt], SamplingParams(max_tokens=100))[0]
    assert out.prompt_ids == prompt and out.text == "echo:user:hi. The end."
    # messages handed straight to generate are rendered the same way
    again = engine.generate([[{"role": "user", "content": "hi"}]], SamplingParams(max_tokens=100))[0]
    assert again.prompt_ids == prompt


def test_tools_travel_with_chat_messages(server):
    engine = OpenAIEngine(server.url)
    tools = [{"type": "function", "function": {"name": "go", "parameters": {"type": "object", "properties": {}}}}]
    prompt = engine.render([{"role": "user", "content": '<tool_call>{"name": "go", "arguments": {}}</tool_call>'}],
                           tools=tools)
    out = engine.generate([prompt], SamplingParams(max_tokens=200))[0]
    assert server.engine.rendered[-1][1] == tools
    assert "<tool_call>" in out.text and out.finish_reason == "stop"  # "tool_calls" reads as a stop


def test_max_concurrency_bounds_requests_in_flight():
    engine = EchoEngine(delay=0.05)
    with ServerThread(create_app(engine, batch_wait_ms=30)) as srv:
        client = OpenAIEngine(srv.url, max_concurrency=2)
        out = client.generate([f"p{k}" for k in range(6)], SamplingParams(max_tokens=100))
        assert [c.text for c in out] == [f"echo:p{k}. The end." for k in range(6)]
        assert max(engine.batches) == 2  # the server never saw more than two at once
        wide = OpenAIEngine(srv.url, max_concurrency=8)
        engine.batches.clear()
        wide.generate([f"p{k}" for k in range(6)], SamplingParams(max_tokens=100))
        assert max(engine.batches) > 2


def flaky_app(fail_first: int, status: int = 503, headers: dict | None = None):
    """A turngym server whose first ``fail_first`` generation requests answer ``status``."""
    from fastapi.responses import JSONResponse

    app = create_app(EchoEngine())
    app.state.failures = 0

    @app.middleware("http")
    async def fail(request, call_next):
        if request.url.path.endswith("/completions") and app.state.failures < fail_first:
            app.state.failures += 1
            return JSONResponse({"error": {"message": "overloaded", "type": "server_error", "param": None,
                                           "code": None}}, status_code=status, headers=headers)
        return await call_next(request)

    return app


@pytest.mark.parametrize("status, headers", [(503, None), (429, {"retry-after-ms": "10"}), (500, None)])
def test_retries_with_backoff_then_succeeds(status, headers):
    app = flaky_app(2, status, headers)
    with ServerThread(app) as srv:
        engine = OpenAIEngine(srv.url, max_retries=3)
        assert engine.client.max_retries == 3  # the SDK retries, with its backoff or the server's delay
        start = time.monotonic()
        out = engine.generate([[{"role": "user", "content": "x"}]], SamplingParams(max_tokens=50))
        waited = time.monotonic() - start
    assert out[0].text == "echo:user:x. The end." and app.state.failures == 2
    if headers:  # the server's retry-after-ms (10 ms) instead of the SDK's 0.5 s, 1 s backoff
        assert waited < 0.75
    else:
        assert waited >= 0.5 * 0.75 + 1.0 * 0.75  # two backoffs, each at least 75% of 0.5 s doubling


def test_gives_up_after_max_retries_with_a_clear_error():
    app = flaky_app(10)
    with ServerThread(app) as srv:
        engine = OpenAIEngine(srv.url, max_retries=1)
        with pytest.raises(EngineError, match=r"HTTP 503 after 2 attempts: overloaded"):
            engine.generate(["x"], SamplingParams(max_tokens=5))
    assert app.state.failures == 2  # one try and one retry, no more


def test_a_rejected_request_is_not_retried():
    app = flaky_app(10, status=400)
    with ServerThread(app) as srv:
        engine = OpenAIEngine(srv.url, max_retries=3)
        with pytest.raises(EngineError, match=r"rejected the request \(HTTP 400\): overloaded"):
            engine.generate(["x"], SamplingParams(max_tokens=5))
    assert app.state.failures == 1


def test_without_openai_the_error_names_the_openai_extra(monkeypatch):
    from turngym.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "openai", None)  # what an environment without the package sees
    with pytest.raises(MissingDependencyError, match=r"pip install 'turngym\[openai\]'"):
        OpenAIEngine("http://127.0.0.1:9/v1", model="m")


def test_unreachable_server_names_the_url_and_turngym_serve():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EngineError, match="turngym serve") as info:
        OpenAIEngine(url, max_retries=1)
    assert url in str(info.value) and "after 2 attempts" in str(info.value)
    assert not OpenAIEngine.__module__.startswith("openai")
    with pytest.raises(EngineError, match="http:// or https://"):
        OpenAIEngine("127.0.0.1:8000/v1")


def test_unknown_model_lists_the_served_ones(server):
    engine = OpenAIEngine(server.url, model="gpt-9")
    with pytest.raises(EngineError, match=r"model 'gpt-9' is not served by .*; it serves: echo"):
        engine.generate(["x"], SamplingParams(max_tokens=5))


def test_wrong_url_path_is_explained(server):
    engine = OpenAIEngine(server.url[:-3] + "/api", model="echo", max_retries=0)
    with pytest.raises(EngineError, match="usually ends in /v1"):
        engine.generate(["x"], SamplingParams(max_tokens=5))


def test_auth_errors_say_which_key():
    with ServerThread(create_app(EchoEngine(), api_key="right")) as srv:
        with pytest.raises(EngineError, match="rejected the API key .*OPENAI_API_KEY"):
            OpenAIEngine(srv.url, api_key="wrong")
        assert OpenAIEngine(srv.url, api_key="right").model == "echo"


def test_env_api_key_is_used(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    with ServerThread(create_app(EchoEngine(), api_key="from-env")) as srv:
        # a server other than api.openai.com gets the environment's key when the user names it (issue 17)
        assert OpenAIEngine(srv.url, api_key_env="OPENAI_API_KEY").model == "echo"


@pytest.fixture()
def key_recorder():
    """A stand-in OpenAI-compatible server on 127.0.0.1 that records each request's Authorization header."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                           "owned_by": "someone"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", seen
    server.shutdown()
    server.server_close()


def test_the_environment_key_is_sent_to_another_host_only_when_named(monkeypatch, key_recorder):
    """A recipe that points openai:URL at someone's host must not collect $OPENAI_API_KEY."""
    url, seen = key_recorder
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("MY_SERVER_KEY", "local-key")
    assert OpenAIEngine(url).model == "m"
    make_engine(f"openai:{url}")
    OpenAIEngine(url, api_key_env="OPENAI_API_KEY")
    make_engine(f"openai:{url}", api_key_env="MY_SERVER_KEY")
    OpenAIEngine(url, api_key="explicit")
    assert seen == ["Bearer EMPTY", "Bearer EMPTY", "Bearer sk-secret", "Bearer local-key", "Bearer explicit"]
    with pytest.raises(EngineError, match="api_key_env='NOT_SET_ANYWHERE'.*not set"):
        OpenAIEngine(url, api_key_env="NOT_SET_ANYWHERE")
    with pytest.raises(ValueError, match="not both"):
        OpenAIEngine(url, api_key="a", api_key_env="MY_SERVER_KEY")


def test_the_official_api_gets_the_environment_key_over_https_only(monkeypatch):
    from turngym.agents.engines.openai_compat import api_key_for

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    assert api_key_for("https://api.openai.com/v1") == "sk-secret"
    assert api_key_for("https://API.openai.com:443/v1") == "sk-secret"
    for url in ("http://api.openai.com/v1", "https://api.openai.com.evil.example/v1",
                "https://api.openai.com@evil.example/v1", "https://evil.example/api.openai.com/v1",
                "https://api.openai.com:8443/v1", "http://127.0.0.1:8000/v1"):
        assert api_key_for(url) == "EMPTY", url
    # built without a request (the model is given): the client holds the key it will send
    assert OpenAIEngine("https://api.openai.com/v1", model="gpt-4o-mini").client.api_key == "sk-secret"
    assert OpenAIEngine("https://proxy.example/v1", model="gpt-4o-mini").client.api_key == "EMPTY"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert api_key_for("https://api.openai.com/v1") == "EMPTY"


def test_timeouts_are_explained():
    with ServerThread(create_app(EchoEngine(delay=0.3))) as srv:
        engine = OpenAIEngine(srv.url, timeout=0.1, max_retries=0)
        with pytest.raises(EngineError, match=r"did not answer within 0.1s"):
            engine.generate(["x"], SamplingParams(max_tokens=5))


def test_bad_requests_carry_the_servers_message(server):
    engine = OpenAIEngine(server.url, extra_body={"presence_penalty": 1.0})
    with pytest.raises(EngineError, match="HTTP 400.*presence_penalty"):
        engine.generate(["x"], SamplingParams(max_tokens=5))


def test_completions_mode_without_tokenize_says_so():
    from fastapi import FastAPI

    app = FastAPI()
    app.get("/v1/models")(lambda: {"object": "list", "data": [{"id": "m", "object": "model", "created": 0,
                                                                "owned_by": "x"}]})
    with ServerThread(app) as srv:
        engine = OpenAIEngine(srv.url, mode="completions", max_retries=0)
        with pytest.raises(EngineError, match="/tokenize.*mode='chat'"):
            engine.render([{"role": "user", "content": "x"}])


def test_concurrent_generate_calls_from_threads(server):
    engine = OpenAIEngine(server.url, max_concurrency=4)
    results: dict[int, list[str]] = {}

    def run(k: int) -> None:
        results[k] = [c.text for c in engine.generate([f"t{k}a", f"t{k}b"], SamplingParams(max_tokens=100))]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {k: [f"echo:t{k}a. The end.", f"echo:t{k}b. The end."] for k in range(4)}


# ---- over the hf engine: token in, token out through HTTP ----------------------------------------


@pytest.fixture(scope="module")
def hf_url(tiny_engine):
    with ServerThread(create_app(tiny_engine, batch_wait_ms=20)) as srv:
        yield srv.url


@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_hf_through_the_server_equals_the_engine_and_a_teacher_forced_pass(hf_url, tiny_engine, tiny_model, mode):
    from turngym.testing import teacher_forced_logprobs

    remote = OpenAIEngine(hf_url, mode=mode)
    histories = [[{"role": "user", "content": f"Observation: block b{k} is on the table."}] for k in range(4)]
    prompts = [remote.render(h) for h in histories]
    if mode == "completions":
        assert prompts == [tiny_engine.render(h) for h in histories]
    sampling = [SamplingParams(max_tokens=6 + k, temperature=1.0, seed=100 + k) for k in range(4)]
    out = remote.generate(prompts, sampling)
    direct = tiny_engine.generate([tiny_engine.render(h) for h in histories], sampling)
    for got, want in zip(out, direct):
        assert got.token_ids == want.token_ids and got.prompt_ids == want.prompt_ids
        assert got.text == want.text and got.finish_reason == want.finish_reason
        reference = teacher_forced_logprobs(tiny_model, got.prompt_ids, got.token_ids)
        assert max(abs(a - b) for a, b in zip(got.logprobs, reference)) < 1e-4


def test_hf_streaming_through_the_client(hf_url, tiny_engine):
    remote = OpenAIEngine(hf_url)
    seen: list[str] = []
    sp = SamplingParams(max_tokens=20, temperature=1.0, seed=4, stop=["."])
    prompt = remote.render([{"role": "user", "content": "Déjà vu: naïve café"}])
    got = remote.generate([prompt], sp, on_text=lambda i, t: seen.append(t))[0]
    want = tiny_engine.generate([tiny_engine.render(list(prompt))], sp)[0]
    assert got.token_ids == want.token_ids and got.text == want.text and seen[-1] == want.text
    assert len(seen) > 1 and all(b.startswith(a) for a, b in zip(seen, seen[1:]))
