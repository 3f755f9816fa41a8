"""`turngym serve` against the official openai client, over a real uvicorn server on 127.0.0.1.

Fast tests use an echo engine (token ids = UTF-8 bytes); the teacher-forced check of token
ids and log-probs through the server runs over the hf engine with a tiny random Llama.
"""

import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from turngym.agents.engines.base import find_stop, per_prompt_sampling  # noqa: E402
from turngym.agents.openai_protocol import StreamText as _StreamText  # noqa: E402
from turngym.agents.openai_protocol import parse_tool_calls  # noqa: E402
from turngym.agents.serve import ServerThread, create_app  # noqa: E402


class EchoEngine:
    """Answers ``echo:<prompt>.`` then ``tail``, streaming a few characters at a time.

    Prompts and rendered chat messages are token ids = UTF-8 bytes; log-probs are a fixed
    function of the position. Records every batch, sampling and render for assertions.
    """

    name = "echo"

    def __init__(self, tail: str = " The end.", delay: float = 0.0, step: int = 3):
        self.tail = tail
        self.delay = delay
        self.step = step
        self.batches: list[int] = []
        self.samplings: list = []
        self.rendered: list = []
        self.lock = threading.Lock()

    def render(self, messages, tools=None):
        self.rendered.append((messages, tools))
        if any(m.get("content") == "BAD TEMPLATE" for m in messages):
            raise ValueError("template error")
        return list("|".join(f"{m['role']}:{m.get('content') or ''}" for m in messages).encode())

    def generate(self, prompts, sampling, on_text=None):
        params = per_prompt_sampling(sampling, len(prompts))
        with self.lock:
            self.batches.append(len(prompts))
            self.samplings.extend(params)
        if self.delay:
            time.sleep(self.delay)
        out = []
        from turngym.agents.types import Completion

        for i, (prompt, sp) in enumerate(zip(prompts, params)):
            source = prompt if isinstance(prompt, str) else bytes(prompt).decode()
            if "BOOM" in source:
                raise ValueError("the prompt says BOOM")
            text = f"echo:{source}.{self.tail}"
            finish = "stop"
            end = find_stop(text, sp.stop)
            if end is not None:
                text = text[:end]
            ids = list(text.encode())
            if len(ids) > sp.max_tokens:
                ids = ids[: sp.max_tokens]
                text = bytes(ids).decode(errors="ignore")
                finish = "length"
            if on_text is not None:
                for k in range(self.step, len(text), self.step):
                    on_text(i, text[:k])
                on_text(i, text)
            out.append(Completion(text=text, token_ids=ids, logprobs=[-0.1 * (k % 5) for k in range(len(ids))],
                                  finish_reason=finish, prompt_ids=list(source.encode())))
        return out


def run_while_held(server, fns, expect_pending: int) -> None:
    """Run ``fns`` in threads while the server's engine thread is held, so that their
    requests queue up and form one batch however slow this machine is."""
    gate = threading.Event()
    scheduler = server.app.state.scheduler
    scheduler.call(lambda: gate.wait(30), lambda kind, payload: None)
    threads = [threading.Thread(target=fn) for fn in fns]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while scheduler.pending() < expect_pending and time.monotonic() < deadline:
        time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join()


@pytest.fixture(scope="module")
def echo():
    engine = EchoEngine()
    with ServerThread(create_app(engine, batch_wait_ms=2)) as server:
        yield engine, server, openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def http():
    with httpx.Client() as client:  # one client: building one per request costs ~80 ms (TLS setup)
        yield client


def test_models(http, echo):
    _, server, client = echo
    assert [m.id for m in client.models.list().data] == ["echo"]
    assert client.models.retrieve("echo").id == "echo"
    assert http.get(server.url[:-3] + "/health").status_code == 200


def test_completion_text_usage_token_ids_and_logprobs(echo):
    _, _, client = echo
    r = client.completions.create(model="echo", prompt="hi", max_tokens=100, logprobs=1,
                                  extra_body={"return_token_ids": True})
    choice = r.choices[0]
    assert choice.text == "echo:hi. The end."
    assert choice.finish_reason == "stop"
    assert choice.token_ids == list(b"echo:hi. The end.")
    assert choice.prompt_token_ids == list(b"hi")
    assert choice.logprobs.token_logprobs == pytest.approx([-0.1 * (k % 5) for k in range(len(choice.token_ids))])
    assert len(choice.logprobs.tokens) == len(choice.token_ids)
    assert r.usage.prompt_tokens == 2 and r.usage.completion_tokens == len(choice.token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # vLLM's shape: no ids unless asked; log-prob tokens named by id when asked
    plain = client.completions.create(model="echo", prompt="hi", max_tokens=100)
    assert plain.choices[0].logprobs is None and getattr(plain.choices[0], "token_ids", None) is None
    named = client.completions.create(model="echo", prompt="hi", max_tokens=5, logprobs=0,
                                      extra_body={"return_tokens_as_token_ids": True})
    assert named.choices[0].logprobs.tokens == [f"token_id:{i}" for i in b"echo:"]


def test_token_id_prompts_and_prompt_lists_keep_their_order(echo):
    _, _, client = echo
    r = client.completions.create(model="echo", prompt=list(b"abc"), max_tokens=100,
                                  extra_body={"return_token_ids": True})
    assert r.choices[0].text.startswith("echo:abc.") and r.choices[0].prompt_token_ids == list(b"abc")
    r = client.completions.create(model="echo", prompt=["one", "two", "three"], max_tokens=100)
    assert [c.text for c in r.choices] == [f"echo:{p}. The end." for p in ("one", "two", "three")]
    assert [c.index for c in r.choices] == [0, 1, 2]
    r = client.completions.create(model="echo", prompt=[list(b"x"), list(b"yz")], max_tokens=100)
    assert [c.text for c in r.choices] == ["echo:x. The end.", "echo:yz. The end."]


def test_stop_is_dropped_from_text_but_not_from_token_ids(echo):
    _, _, client = echo
    r = client.completions.create(model="echo", prompt="hi", max_tokens=100, stop=[". T"],
                                  extra_body={"return_token_ids": True})
    assert r.choices[0].text == "echo:hi"
    assert r.choices[0].token_ids == list(b"echo:hi. T")  # what was sampled
    kept = client.completions.create(model="echo", prompt="hi", max_tokens=100, stop=[". T"],
                                     extra_body={"include_stop_str_in_output": True})
    assert kept.choices[0].text == "echo:hi. T"


def test_max_tokens_gives_length(echo):
    _, _, client = echo
    r = client.completions.create(model="echo", prompt="hi", max_tokens=4)
    assert r.choices[0].text == "echo" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 4


def test_sampling_fields_reach_the_engine_and_n_copies_get_their_own_seed(echo):
    engine, _, client = echo
    before = len(engine.samplings)
    r = client.completions.create(model="echo", prompt="hi", max_tokens=7, temperature=0.5, top_p=0.9, seed=11,
                                  n=3, stop=["zz"])
    assert len(r.choices) == 3
    seen = engine.samplings[before:]
    assert [sp.seed for sp in seen] == [11, 12, 13]
    assert {(sp.max_tokens, sp.temperature, sp.top_p, tuple(sp.stop)) for sp in seen} == {(7, 0.5, 0.9, ("zz",))}
    assert r.usage.prompt_tokens == 2  # the prompt counts once, as in OpenAI's usage


def test_chat_completion_shape_and_extensions(echo):
    engine, _, client = echo
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hey"}],
                                       max_tokens=100, logprobs=True, extra_body={"return_token_ids": True})
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "echo:user:hey. The end."
    assert choice.token_ids == list(choice.message.content.encode())
    assert r.prompt_token_ids == list(b"user:hey")
    entries = choice.logprobs.content
    assert [e.logprob for e in entries] == pytest.approx([-0.1 * (k % 5) for k in range(len(entries))])
    assert all(e.top_logprobs == [] for e in entries)
    assert r.usage.prompt_tokens == len(b"user:hey")
    # content parts are joined; max_completion_tokens counts as max_tokens
    r = client.chat.completions.create(model="echo", max_completion_tokens=6,
                                       messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                              {"type": "text", "text": "b"}]}])
    assert r.choices[0].message.content == "echo:u" and r.choices[0].finish_reason == "length"
    assert engine.rendered[-1][0] == [{"role": "user", "content": "ab"}]


def test_chat_tools_reach_the_template_and_tool_calls_are_parsed(echo):
    engine, _, client = echo
    tools = [{"type": "function", "function": {"name": "move", "parameters": {"type": "object", "properties": {}}}}]
    call = '<tool_call>{"name": "move", "arguments": {"to": "b"}}</tool_call>'
    r = client.chat.completions.create(model="echo", tools=tools, max_tokens=200,
                                       messages=[{"role": "user", "content": call}])
    assert engine.rendered[-1][1] == tools
    message = r.choices[0].message
    assert message.content == f"echo:user:{call}. The end."  # the raw text stays
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [("move", {"to": "b"})]
    assert r.choices[0].finish_reason == "tool_calls"
    # tool_choice "none" leaves the text alone; a forced choice is refused
    r = client.chat.completions.create(model="echo", tools=tools, tool_choice="none", max_tokens=200,
                                       messages=[{"role": "user", "content": call}])
    assert r.choices[0].message.tool_calls is None
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        client.chat.completions.create(model="echo", tools=tools, tool_choice="required",
                                       messages=[{"role": "user", "content": "x"}])
    # an assistant message's JSON-string arguments reach the template as a dict
    client.chat.completions.create(model="echo", max_tokens=3, messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "move", "arguments": '{"to": "a"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}])
    assert engine.rendered[-1][0][1]["tool_calls"][0]["function"]["arguments"] == {"to": "a"}


def test_parse_tool_calls_skips_malformed_ones():
    text = '<tool_call>{"name": "a", "arguments": {"x": 1}}</tool_call> <tool_call>{oops}</tool_call>'
    calls = parse_tool_calls(text)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("a", '{"x": 1}')]


def test_the_server_reads_tool_calls_as_the_tool_calling_agent_does_but_only_inside_tags():
    from turngym.agents.tool_calling import find_tool_calls

    text = 'ok <tool_call>{"function": {"name": "a", "arguments": "{\\"x\\": 1}"}}'  # OpenAI shape, unclosed
    names = [c["function"]["name"] for c in parse_tool_calls(text)]
    assert names == [c["name"] for c in find_tool_calls(text)] == ["a"]
    assert json.loads(parse_tool_calls(text)[0]["function"]["arguments"]) == {"x": 1}
    bare = '{"name": "a", "arguments": {}}'  # a plain answer that holds JSON stays text
    assert parse_tool_calls(bare) == [] and find_tool_calls(bare) == [{"name": "a", "arguments": {}}]


def test_streaming_completion_matches_the_plain_answer(echo):
    _, _, client = echo
    plain = client.completions.create(model="echo", prompt="stream me", max_tokens=100)
    chunks = list(client.completions.create(model="echo", prompt="stream me", max_tokens=100, stream=True,
                                            logprobs=1, stream_options={"include_usage": True},
                                            extra_body={"return_token_ids": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == plain.choices[0].text
    assert len([t for t in texts if t]) > 2  # it really arrived in pieces
    ids = [i for c in chunks if c.choices for i in (getattr(c.choices[0], "token_ids", None) or [])]
    assert ids == list(plain.choices[0].text.encode())
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == "stop" and last.prompt_token_ids == list(b"stream me")
    assert len(last.logprobs.token_logprobs) == len(ids)
    assert chunks[-1].usage.completion_tokens == len(ids) and chunks[-1].usage.prompt_tokens == 9


def test_streaming_chat_and_stop_strings_never_leak(echo):
    _, _, client = echo
    chunks = list(client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "abc"}],
                                                 max_tokens=100, stop=["The end"], stream=True, logprobs=True,
                                                 extra_body={"return_token_ids": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == "echo:user:abc. "
    assert not any("The" in p for p in pieces)
    assert chunks[-1].prompt_token_ids == list(b"user:abc")
    assert chunks[-1].choices[0].token_ids == list(b"echo:user:abc. The end")
    assert len(chunks[-1].choices[0].logprobs.content) == len(chunks[-1].choices[0].token_ids)


def test_stream_text_holds_back_a_possible_stop():
    s = _StreamText(["STOP"], include_stop=False)
    assert s.partial("abcST") == "ab"  # "cST" could begin "STOP"
    assert s.partial("abcSTO") == "c"
    assert s.partial("abcSTOP and more") == ""
    assert s.final("abc") == ""
    kept = _StreamText(["STOP"], include_stop=True)
    assert kept.partial("abSTOP more") == "abSTOP"
    assert _StreamText([], False).partial("caf\ufffd") == "caf"  # half a character waits


def test_concurrent_requests_are_batched_and_each_gets_its_answer():
    engine = EchoEngine(delay=0.05)
    with ServerThread(create_app(engine, batch_wait_ms=50, max_batch_size=16)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        answers: dict[int, str] = {}

        def ask(k: int) -> None:
            r = client.completions.create(model="echo", prompt=f"request {k}", max_tokens=100)
            answers[k] = r.choices[0].text

        run_while_held(server, [lambda k=k: ask(k) for k in range(12)], expect_pending=12)
        stats = server.app.state.scheduler.stats
    assert answers == {k: f"echo:request {k}. The end." for k in range(12)}
    assert engine.batches == [12] and stats.max_batch == 12 and stats.generate_calls == 1


def test_requests_arriving_while_idle_are_batched_too():
    engine = EchoEngine(delay=0.05)
    with ServerThread(create_app(engine, batch_wait_ms=50, max_batch_size=16)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        threads = [threading.Thread(target=client.completions.create, kwargs={"model": "echo", "prompt": f"r{k}"})
                   for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sum(engine.batches) == 8 and max(engine.batches) > 1


def test_max_batch_size_caps_the_batch():
    engine = EchoEngine()
    with ServerThread(create_app(engine, batch_wait_ms=50, max_batch_size=2)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        r = client.completions.create(model="echo", prompt=["a", "b", "c", "d", "e"], max_tokens=50)
    assert [c.text for c in r.choices] == [f"echo:{p}. The end." for p in "abcde"]
    assert max(engine.batches) == 2


def test_a_bad_request_fails_alone_in_its_batch():
    engine = EchoEngine(delay=0.02)
    with ServerThread(create_app(engine, batch_wait_ms=100)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        results: dict[str, object] = {}

        def ask(prompt: str) -> None:
            try:
                results[prompt] = client.completions.create(model="echo", prompt=prompt, max_tokens=50).choices[0].text
            except openai.APIStatusError as exc:
                results[prompt] = exc

        run_while_held(server, [lambda p=p: ask(p) for p in ("good 1", "BOOM", "good 2")], expect_pending=3)
    assert results["good 1"] == "echo:good 1. The end." and results["good 2"] == "echo:good 2. The end."
    assert isinstance(results["BOOM"], openai.BadRequestError) and "BOOM" in str(results["BOOM"])
    assert engine.batches[0] == 3  # they were batched, then retried one by one


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"prompt": "x", "temperature": -1}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "stop": [1]}, "stop"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, -2]}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
])
def test_bad_completion_requests_get_400_naming_the_field(http, echo, body, param):
    _, server, _ = echo
    response = http.post(server.url + "/completions", json={"model": "echo", **body})
    assert response.status_code == 400
    error = _error(response)
    assert error["param"] == param and param in error["message"] and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"content": "no role"}]}, "messages[0]"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": 1}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": "nope"}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 0}, "max_completion_tokens"),
])
def test_bad_chat_requests_get_400_naming_the_field(http, echo, body, param):
    _, server, _ = echo
    response = http.post(server.url + "/chat/completions", json={"model": "echo", **body})
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == param


def test_other_errors_are_openai_shaped(http, echo):
    _, server, client = echo
    response = http.post(server.url + "/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in _error(response)["message"]
    response = http.post(server.url + "/completions", json=[1, 2])
    assert response.status_code == 400
    response = http.get(server.url + "/nowhere")
    assert response.status_code == 404 and "/v1/completions" in _error(response)["message"]
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="gpt-9", prompt="x")
    assert info.value.code == "model_not_found" and "echo" in str(info.value)
    with pytest.raises(openai.BadRequestError, match="chat template failed"):
        client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "BAD TEMPLATE"}])
    with pytest.raises(openai.BadRequestError, match="chat template failed"):  # before the stream starts
        client.chat.completions.create(model="echo", stream=True,
                                       messages=[{"role": "user", "content": "BAD TEMPLATE"}])


def test_engine_crash_is_a_500():
    class Broken(EchoEngine):
        def generate(self, prompts, sampling, on_text=None):
            raise RuntimeError("CUDA fell over")

    with ServerThread(create_app(Broken())) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="CUDA fell over"):
            client.completions.create(model="echo", prompt="x")


def test_api_key_is_enforced():
    with ServerThread(create_app(EchoEngine(), api_key="s3cret")) as server:
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=server.url, api_key="s3cret", max_retries=0)
        assert good.completions.create(model="echo", prompt="x", max_tokens=3).choices[0].text == "ech"
        assert httpx.get(server.url[:-3] + "/health").status_code == 200


# ---- limits and who may call (issue 17): each refusal is a clear 4xx ----------------------------


class ContextEcho(EchoEngine):
    """An echo engine that knows its context length (``ContextLimited``)."""

    def __init__(self, max_context: int, **kwargs):
        super().__init__(**kwargs)
        self.max_context = max_context


def test_max_tokens_is_capped_by_the_context_and_the_server_limit(http):
    engine = ContextEcho(max_context=300)
    with ServerThread(create_app(engine, max_tokens_limit=1000, default_chat_max_tokens=500)) as server:
        url = server.url
        response = http.post(url + "/completions", json={"prompt": "x", "max_tokens": 301})
        assert response.status_code == 400
        error = _error(response)
        assert error["param"] == "max_tokens" and "<= 300" in error["message"] and "context" in error["message"]
        assert http.post(url + "/completions", json={"prompt": "x", "max_tokens": 300}).status_code == 200
        chat = {"messages": [{"role": "user", "content": "hi"}]}
        response = http.post(url + "/chat/completions", json={**chat, "max_completion_tokens": 10**9})
        assert response.status_code == 400 and _error(response)["param"] == "max_completion_tokens"
        assert http.post(url + "/chat/completions", json=chat).status_code == 200
        assert engine.samplings[-1].max_tokens == 300  # the default (500) is lowered to the cap, not refused
    with ServerThread(create_app(EchoEngine(), max_tokens_limit=64)) as server:  # no context known: the flag
        response = http.post(server.url + "/completions", json={"prompt": "x", "max_tokens": 65})
        assert response.status_code == 400 and "--max-tokens-limit" in _error(response)["message"]


def test_a_request_for_too_many_completions_gets_400():
    engine = EchoEngine()
    with ServerThread(create_app(engine, max_request_jobs=8)) as server, httpx.Client() as http:
        url = server.url + "/completions"
        response = http.post(url, json={"prompt": ["a", "b", "c"], "n": 3})
        assert response.status_code == 400
        error = _error(response)
        assert error["param"] == "n" and error["code"] == "too_many_completions" and "9 completions" in error["message"]
        response = http.post(url, json={"prompt": [str(k) for k in range(9)]})
        assert response.status_code == 400 and _error(response)["param"] == "prompt"
        response = http.post(server.url + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                                     "n": 9})
        assert response.status_code == 400 and _error(response)["param"] == "n"
        assert http.post(url, json={"prompt": ["a", "b"], "n": 4}).status_code == 200
    assert sum(engine.batches) == 8  # only the request within the limit reached the engine


def test_a_full_queue_answers_429_with_retry_after():
    engine = EchoEngine()
    with ServerThread(create_app(engine, max_request_jobs=3, max_pending_jobs=4)) as server, \
            httpx.Client() as http:
        scheduler = server.app.state.scheduler
        gate = threading.Event()
        assert scheduler.call(lambda: gate.wait(30), lambda kind, payload: None) is not None  # holds 1 of 4
        answers: list = []
        first = threading.Thread(target=lambda: answers.append(
            http.post(server.url + "/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 50})))
        first.start()
        deadline = time.monotonic() + 30
        while scheduler.live() < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        busy = http.post(server.url + "/completions", json={"prompt": "d"})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        error = _error(busy)
        assert error["code"] == "server_busy" and "--max-pending-jobs" in error["message"]
        busy = http.post(server.url[:-3] + "/tokenize", json={"messages": [{"role": "user", "content": "d"}]})
        assert busy.status_code == 429
        gate.set()
        first.join(30)
        assert answers[0].status_code == 200 and len(answers[0].json()["choices"]) == 3
        assert http.post(server.url + "/completions", json={"prompt": "d"}).status_code == 200  # room again
        assert scheduler.stats.refused == 2 and scheduler.live() == 0
    assert sorted(engine.batches) == [1, 3]


def test_a_body_over_the_limit_gets_413_declared_or_chunked(http):
    with ServerThread(create_app(EchoEngine(), max_body_bytes=2000)) as server:
        url = server.url + "/completions"
        response = http.post(url, json={"prompt": "x" * 3000})
        assert response.status_code == 413 and _error(response)["code"] == "body_too_large"
        assert "2000 bytes" in _error(response)["message"]
        body = json.dumps({"prompt": "x" * 3000}).encode()
        chunked = (body[i:i + 500] for i in range(0, len(body), 500))  # no Content-Length: counted as it comes
        response = http.post(url, content=chunked, headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert http.post(url, json={"prompt": "x" * 1000, "max_tokens": 5}).status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_a_body_not_sent_as_json_gets_415(http, echo, content_type):
    """A web page can POST text/plain or a form to any server without asking first; it cannot send JSON."""
    _, server, _ = echo
    headers = {"content-type": content_type} if content_type else {}
    response = http.post(server.url + "/completions", content=json.dumps({"prompt": "x"}), headers=headers)
    assert response.status_code == 415 and _error(response)["code"] == "unsupported_media_type"
    response = http.post(server.url + "/completions", content=json.dumps({"prompt": "x", "max_tokens": 3}),
                         headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200


def test_the_host_header_must_name_the_bound_address(http):
    """DNS rebinding: a page from evil.example whose name now resolves to 127.0.0.1 sends Host: evil.example."""
    from turngym.http_server import default_allowed_hosts

    with ServerThread(create_app(EchoEngine())) as server:
        port = server.port
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}"):
            response = http.get(server.url + "/models", headers={"host": host})
            assert response.status_code == 400 and _error(response)["code"] == "host_not_allowed", host
            assert "--allowed-hosts" in _error(response)["message"]
        response = http.post(server.url + "/completions", json={"prompt": "x"}, headers={"host": "evil.example"})
        assert response.status_code == 400
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert http.get(server.url + "/models", headers={"host": host}).status_code == 200, host
    with ServerThread(create_app(EchoEngine(), allowed_hosts=("box.lan",))) as server:
        assert http.get(server.url + "/models", headers={"host": f"box.lan:{server.port}"}).status_code == 200
        assert http.get(server.url + "/models").status_code == 400  # 127.0.0.1 was not named
    with ServerThread(create_app(EchoEngine(), allowed_hosts=("*",))) as server:  # the opt-out
        assert http.get(server.url + "/models", headers={"host": "evil.example"}).status_code == 200
    assert default_allowed_hosts("127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("localhost") == ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("::1") == ("localhost", "127.0.0.1", "::1")
    assert default_allowed_hosts("127.0.0.2") == ("localhost", "127.0.0.1", "::1", "127.0.0.2")
    assert default_allowed_hosts("10.1.2.3") == ("10.1.2.3",)
    assert default_allowed_hosts("0.0.0.0") == ("*",) and default_allowed_hosts("::") == ("*",)


def test_the_api_key_is_compared_in_constant_time(monkeypatch):
    import hmac

    from turngym.agents import serve

    compared = []
    real = hmac.compare_digest

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(serve.hmac, "compare_digest", spy)
    with ServerThread(create_app(EchoEngine(), api_key="s3cret")) as server:
        for sent in ("s3creX", "s3cret-and-more"):
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(base_url=server.url, api_key=sent, max_retries=0).models.list()
        assert httpx.get(server.url + "/models").status_code == 401  # no header at all
        assert openai.OpenAI(base_url=server.url, api_key="s3cret", max_retries=0).models.list().data
    assert len(compared) == 4 and all(b == b"Bearer s3cret" for _, b in compared)
    assert compared[2][0] == b""


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_disconnects_has_its_queued_jobs_cancelled(stream):
    """The client gives up while its request waits behind the engine: the job never runs."""
    engine = EchoEngine()
    with ServerThread(create_app(engine, batch_wait_ms=1)) as server:
        scheduler = server.app.state.scheduler
        gate = threading.Event()
        scheduler.call(lambda: gate.wait(30), lambda kind, payload: None)
        with httpx.Client(timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post(server.url + "/completions", json={"prompt": ["a", "b"], "max_tokens": 9, "stream": stream})
        deadline = time.monotonic() + 30
        while scheduler.live() > 1 and time.monotonic() < deadline:  # the two jobs are released at once
            time.sleep(0.01)
        assert scheduler.live() == 1
        gate.set()
        with httpx.Client() as http:  # the next request is answered, and runs alone
            assert http.post(server.url + "/completions", json={"prompt": "c", "max_tokens": 5}).status_code == 200
        assert scheduler.stats.cancelled == 2 and engine.batches == [1]


def test_tokenize_endpoint_renders_with_the_engine(http, echo):
    _, server, _ = echo
    response = http.post(server.url[:-3] + "/tokenize",
                          json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    assert response.status_code == 200 and response.json()["tokens"] == list(b"user:hi")
    assert response.json()["count"] == len(b"user:hi")


def test_cli_serve_fails_fast_on_a_taken_port(capsys):
    import socket

    from turngym.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "no-such-model", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_cli_has_serve():
    from turngym.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "8123", "--max-batch-size", "4"])
    assert args.port == 8123 and args.max_batch_size == 4 and args.model == "default"
    assert args.host == "127.0.0.1"


def test_cli_serve_has_the_limit_flags_with_defaults(capsys):
    from turngym.agents import openai_protocol as limits
    from turngym.cli import build_parser, main

    args = build_parser().parse_args(["serve"])
    assert (args.max_tokens_limit, args.max_request_jobs, args.max_pending_jobs, args.max_body_bytes) == (
        limits.DEFAULT_MAX_TOKENS_LIMIT, limits.DEFAULT_MAX_REQUEST_JOBS, limits.DEFAULT_MAX_PENDING_JOBS,
        limits.DEFAULT_MAX_BODY_BYTES)
    assert args.allowed_hosts is None
    args = build_parser().parse_args(["serve", "--max-tokens-limit", "512", "--max-request-jobs", "4",
                                      "--max-pending-jobs", "16", "--max-body-bytes", "1000", "--allowed-hosts", "*"])
    assert (args.max_tokens_limit, args.max_request_jobs, args.max_pending_jobs, args.max_body_bytes) == (
        512, 4, 16, 1000)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--max-tokens-limit", "--max-request-jobs", "--max-pending-jobs", "--max-body-bytes",
                 "--allowed-hosts", "--api-key"):
        assert flag in text
    assert "429" in text and "413" in text and "DNS rebinding" in text
    assert main(["serve", "--model", "no-such-model", "--max-request-jobs", "10", "--max-pending-jobs", "5"]) == 2
    assert "--max-request-jobs (10) must not exceed --max-pending-jobs (5)" in capsys.readouterr().err


# ---- through the hf engine: token ids and log-probs equal a teacher-forced pass ---------------


@pytest.fixture(scope="module")
def hf_server(tiny_engine):
    with ServerThread(create_app(tiny_engine, batch_wait_ms=30)) as server:
        yield tiny_engine, server, openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)


def _max_diff(a, b) -> float:
    assert len(a) == len(b) and len(a) > 0
    return max(abs(x - y) for x, y in zip(a, b))


def test_hf_completion_ids_and_logprobs_match_a_teacher_forced_pass(hf_server, tiny_model):
    from turngym.testing import teacher_forced_logprobs

    engine, _, client = hf_server
    prompt = "Thought: I should combine 4 and 6"
    r = client.completions.create(model="hf:tiny", prompt=prompt, max_tokens=12, temperature=1.0, seed=3,
                                  logprobs=1, extra_body={"return_token_ids": True})
    choice = r.choices[0]
    assert choice.prompt_token_ids == engine.encode_text(prompt)
    reference = teacher_forced_logprobs(tiny_model, choice.prompt_token_ids, choice.token_ids)
    assert _max_diff(choice.logprobs.token_logprobs, reference) < 1e-4
    assert choice.logprobs.tokens == [engine.tokenizer.decode([i]) for i in choice.token_ids]
    assert r.usage.prompt_tokens == len(choice.prompt_token_ids)
    assert r.usage.completion_tokens == len(choice.token_ids)
    # the same request straight to the engine samples the same tokens
    from turngym.agents.types import SamplingParams

    direct = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=1.0, seed=3))[0]
    assert choice.token_ids == direct.token_ids
    # token ids in, and the same answer out
    again = client.completions.create(model="hf:tiny", prompt=choice.prompt_token_ids, max_tokens=12, seed=3,
                                      temperature=1.0, extra_body={"return_token_ids": True})
    assert again.choices[0].token_ids == choice.token_ids


def test_hf_chat_ids_and_logprobs_match_a_teacher_forced_pass(hf_server, tiny_model):
    from turngym.testing import teacher_forced_logprobs

    engine, _, client = hf_server
    messages = [{"role": "system", "content": "You solve puzzles."}, {"role": "user", "content": "Observation: b1"}]
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    r = client.chat.completions.create(model="hf:tiny", messages=messages, tools=tools, max_tokens=10, seed=5,
                                       logprobs=True, extra_body={"return_token_ids": True})
    assert r.prompt_token_ids == engine.render(messages, tools)
    choice = r.choices[0]
    reference = teacher_forced_logprobs(tiny_model, r.prompt_token_ids, choice.token_ids)
    assert _max_diff([e.logprob for e in choice.logprobs.content], reference) < 1e-4


def test_hf_streaming_gives_the_same_tokens_as_a_plain_request(hf_server):
    _, _, client = hf_server
    args = {"model": "hf:tiny", "prompt": "Déjà vu: naïve", "max_tokens": 16, "seed": 9, "temperature": 1.0,
            "extra_body": {"return_token_ids": True}}
    plain = client.completions.create(**args).choices[0]
    chunks = [c for c in client.completions.create(**args, stream=True) if c.choices]
    assert "".join(c.choices[0].text for c in chunks) == plain.text
    assert [i for c in chunks for i in (getattr(c.choices[0], "token_ids", None) or [])] == plain.token_ids


def test_hf_concurrent_requests_share_one_batch_and_keep_their_answers(hf_server, tiny_model):
    from turngym.testing import teacher_forced_logprobs
    from turngym.agents.types import SamplingParams

    engine, server, client = hf_server
    stats = server.app.state.scheduler.stats
    calls_before = stats.generate_calls
    prompts = [f"Observation: block b{k} is on the table" for k in range(8)]
    answers: dict[int, object] = {}

    def ask(k: int) -> None:
        answers[k] = client.completions.create(model="hf:tiny", prompt=prompts[k], max_tokens=4 + k, seed=k,
                                               temperature=1.0, logprobs=1,
                                               extra_body={"return_token_ids": True}).choices[0]

    run_while_held(server, [lambda k=k: ask(k) for k in range(8)], expect_pending=8)
    assert stats.generate_calls - calls_before == 1 and stats.batch_sizes[-1] == 8
    for k, choice in answers.items():
        direct = engine.generate([prompts[k]], SamplingParams(max_tokens=4 + k, temperature=1.0, seed=k))[0]
        assert choice.token_ids == direct.token_ids  # seeded sampling does not depend on the batch
        reference = teacher_forced_logprobs(tiny_model, choice.prompt_token_ids, choice.token_ids)
        assert _max_diff(choice.logprobs.token_logprobs, reference) < 1e-4


def test_hf_bad_token_ids_get_400(hf_server):
    _, _, client = hf_server
    with pytest.raises(openai.BadRequestError, match="out of range"):
        client.completions.create(model="hf:tiny", prompt=[1, 2, 100000])


@pytest.mark.slow
def test_smollm2_through_the_server_matches_a_teacher_forced_pass():
    from turngym.agents.engines.hf import HFEngine
    from turngym.testing import teacher_forced_logprobs

    engine = HFEngine("default")
    with ServerThread(create_app(engine)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        r = client.chat.completions.create(model=engine.name, max_tokens=24, seed=0, logprobs=True,
                                           messages=[{"role": "user", "content": "Name three colors."}],
                                           extra_body={"return_token_ids": True})
    choice = r.choices[0]
    reference = teacher_forced_logprobs(engine.model, r.prompt_token_ids, choice.token_ids)
    assert _max_diff([e.logprob for e in choice.logprobs.content], reference) < 1e-3
    assert choice.message.content and engine.tokenizer.decode(choice.token_ids).startswith(choice.message.content)


@pytest.mark.parametrize("continuous", [True, False])
def test_hf_a_request_arriving_mid_decode_joins_the_running_batch(tiny_engine, continuous):
    """Continuous batching: a short request sent while a long one decodes finishes first; one generate per
    batch (lockstep) makes it wait for the long one."""
    with ServerThread(create_app(tiny_engine, batch_wait_ms=1, continuous=continuous)) as server:
        assert server.app.state.scheduler.continuous is continuous
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        done: list[str] = []

        def long() -> None:
            stream = client.completions.create(model="hf:tiny", prompt="Thought: I", max_tokens=400, seed=1,
                                               temperature=1.0, stream=True)
            for k, _ in enumerate(stream):
                if k == 2:
                    started.set()
            done.append("long")

        started = threading.Event()
        thread = threading.Thread(target=long)
        thread.start()
        assert started.wait(60)
        short = client.completions.create(model="hf:tiny", prompt="x", max_tokens=3, seed=2, temperature=1.0,
                                          extra_body={"return_token_ids": True}).choices[0]
        done.append("short")
        thread.join(60)
        assert done == (["short", "long"] if continuous else ["long", "short"])
        from turngym.agents.types import SamplingParams

        direct = tiny_engine.generate(["x"], SamplingParams(max_tokens=3, temperature=1.0, seed=2))[0]
        assert short.token_ids == direct.token_ids


def test_hf_a_stream_whose_client_disconnects_leaves_the_running_batch(tiny_engine):
    """Continuous batching: the row of a client that went away is dropped at the next decode step."""
    with ServerThread(create_app(tiny_engine, batch_wait_ms=1, continuous=True)) as server:
        scheduler = server.app.state.scheduler
        with httpx.Client() as http, http.stream("POST", server.url + "/completions", json={
                "model": "hf:tiny", "prompt": "Thought: I", "max_tokens": 400, "seed": 1, "stream": True}) as r:
            for k, _ in enumerate(r.iter_lines()):
                if k == 4:
                    break  # a few chunks in, the client leaves
        deadline = time.monotonic() + 30
        while (scheduler.stats.cancelled < 1 or scheduler.live()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert scheduler.stats.cancelled == 1 and scheduler.live() == 0
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        assert client.completions.create(model="hf:tiny", prompt="x", max_tokens=3).choices[0].text is not None


def test_hf_a_failing_row_fails_only_its_own_request(tiny_engine, monkeypatch):
    """Continuous batching: a request whose prefill fails gets its error; the one decoding beside it goes on
    to the tokens generate gives it."""
    from turngym.agents.types import SamplingParams

    poison = tiny_engine.encode_text("POISON")
    real_open = tiny_engine._open

    def open_rows(rows):
        if any(r.prompt_ids == poison for r in rows):
            raise RuntimeError("CUDA out of memory (injected)")
        return real_open(rows)

    monkeypatch.setattr(tiny_engine, "_open", open_rows)
    with ServerThread(create_app(tiny_engine, batch_wait_ms=1, continuous=True)) as server:
        client = openai.OpenAI(base_url=server.url, api_key="none", max_retries=0)
        started = threading.Event()
        ids: list[int] = []

        def long() -> None:
            stream = client.completions.create(model="hf:tiny", prompt="Thought: I", max_tokens=120, seed=1,
                                               temperature=1.0, stream=True, extra_body={"return_token_ids": True})
            for k, chunk in enumerate(stream):
                if k == 2:
                    started.set()
                ids.extend(getattr(chunk.choices[0], "token_ids", None) or [])

        thread = threading.Thread(target=long)
        thread.start()
        assert started.wait(60)
        with pytest.raises(openai.InternalServerError, match="out of memory"):
            client.completions.create(model="hf:tiny", prompt=poison, max_tokens=3)
        thread.join(60)
    direct = tiny_engine.generate(["Thought: I"], SamplingParams(max_tokens=120, temperature=1.0, seed=1))[0]
    assert ids == direct.token_ids
