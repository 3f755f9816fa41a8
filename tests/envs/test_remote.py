"""``turngym serve-env`` and ``turngym/Remote-v0`` against a live server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from fractions import Fraction

import gymnasium as gym
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import turngym
from turngym.envs.check import check_env
from turngym.envs.game24.env import Game24Env
from turngym.envs.remote import EnvServer, create_app, decode_state, encode_state
from turngym.errors import EnvFaultError, TaskError, TurngymError

IDS = ["turngym/BlocksWorld-v0", "turngym/Game24-v0"]


@pytest.fixture(scope="module")
def server():
    with EnvServer(create_app(IDS, max_sessions=64)) as s:
        yield s


def _remote(url, env_id, **kw):
    return gym.make("turngym/Remote-v0", url=url, env_id=env_id, **kw)


def _post(url, path, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_state_encoding_round_trips_without_pickle():
    state = {"task": {"a": (1, 2)}, "game": ((("r", "g"),), b"\x00\xff", frozenset({1, 2}), {3, "x"}, {(1, 2): [1.5]},
                                           {"$tuple": 1}, Fraction(2, 3)), "done": False}
    wire = json.loads(json.dumps(encode_state(state)))
    assert decode_state(wire) == state
    assert type(decode_state(wire)["game"][0]) is tuple
    with pytest.raises(TypeError, match="cannot send"):
        encode_state(object())


@pytest.mark.parametrize("env_id", IDS)
def test_remote_env_passes_the_checker_like_the_local_env(server, env_id):
    remote = check_env(lambda: _remote(server.url, env_id), junk=20, episodes=2)
    local = check_env(env_id, junk=20, episodes=2)
    assert set(remote.checks) == set(local.checks)
    assert remote.junk_actions == local.junk_actions and remote.notes == local.notes
    assert server.app.state.sessions == {}  # every checker env closed its session


def test_same_seeded_episode_remote_and_local(server):
    local, remote = turngym.make(IDS[0]), _remote(server.url, IDS[0])
    assert remote.unwrapped.exemplars() == type(local.unwrapped).exemplars()
    assert remote.unwrapped.splits() == local.unwrapped.splits()
    assert remote.unwrapped.task_ids("test")[:3] == local.unwrapped.task_ids("test")[:3]
    assert local.reset(seed=5) == remote.reset(seed=5)
    assert remote.unwrapped.instruction == local.unwrapped.instruction
    for _ in range(30):
        action = local.unwrapped.oracle_action()
        assert remote.unwrapped.oracle_action() == action
        a, b = local.step(action), remote.step(action)
        assert a == b
        if a[2] or a[3]:
            break
    assert remote.unwrapped.won and a[4]["won"]
    with pytest.raises(TaskError, match="out of range"):
        remote.reset(options={"task_id": "test/100000"})
    remote.close()
    remote.close()  # idempotent


def test_api_key(server):
    with EnvServer(create_app(IDS, api_key="sekret")) as s:
        status, body = _post(s.url, "/sessions", {"env_id": IDS[1]})
        assert status == 401 and "API key" in body["error"]["message"]
        assert _post(s.url, "/sessions", {"env_id": IDS[1]}, {"Authorization": "Bearer nope"})[0] == 401
        with pytest.raises(TurngymError, match="rejected the API key"):
            _remote(s.url, IDS[1], api_key="wrong")
        env = _remote(s.url, IDS[1], api_key="sekret")
        env.reset(seed=0)
        env.close()
        with urllib.request.urlopen(s.url + "/health", timeout=5) as r:  # /health needs no key
            assert json.loads(r.read())["status"] == "ok"


def test_limits_host_body_and_allow_list():
    with EnvServer(create_app(IDS, max_sessions=2, max_body_bytes=2000, max_action_length=100)) as s:
        a, b = _remote(s.url, IDS[1]), _remote(s.url, IDS[1])
        with pytest.raises(TurngymError, match="limit of 2 sessions"):
            _remote(s.url, IDS[1])
        a.close()
        c = _remote(s.url, IDS[1])  # a closed session frees its slot
        b.reset(seed=0)
        with pytest.raises(TurngymError, match="at most 100"):
            b.step("x" * 101)
        assert _post(s.url, "/sessions", b"{" + b" " * 3000 + b"}")[0] == 413
        assert _post(s.url, "/sessions", {"env_id": IDS[1]}, {"Host": "evil.example"})[0] == 421
        req = urllib.request.Request(s.url + "/sessions", data=b"{}", method="POST", headers={"Content-Type": "text/plain"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 415
        with pytest.raises(TurngymError, match="serves .* not 'turngym/SWE-v0'"):
            _remote(s.url, "turngym/SWE-v0")
        with pytest.raises(TurngymError, match="--allow-kwarg"):
            _remote(s.url, IDS[1], env_kwargs={"render_mode": "human"})
        b.close()
        c.close()
    with EnvServer(create_app(IDS)) as s:
        env = _remote(s.url, IDS[1], env_kwargs={"split": "test"})
        assert env.reset(seed=0)[1]["task_id"].startswith("test/")
        env.close()


class _SlowGame24(Game24Env):
    def _apply(self, action):
        time.sleep(0.5)
        return super()._apply(action)


def test_a_call_past_the_timeout_drops_the_session_and_raises_env_fault():
    gym.register("turngym/SlowGame24-v0", entry_point=_SlowGame24)
    try:
        with EnvServer(create_app(["turngym/SlowGame24-v0"], call_timeout_s=0.2)) as s:
            env = _remote(s.url, "turngym/SlowGame24-v0")
            env.reset(seed=0)
            with pytest.raises(EnvFaultError, match="took over 0.2s"):
                env.step("1 + 1")
            assert s.app.state.sessions == {}
    finally:
        del gym.registry["turngym/SlowGame24-v0"]


def test_idle_sessions_are_reaped():
    with EnvServer(create_app(IDS, idle_timeout_s=0.3)) as s:
        env = _remote(s.url, IDS[1])
        env.reset(seed=0)
        time.sleep(0.6)
        with pytest.raises(TurngymError, match="reaped"):
            env.step("1 + 2")
        assert s.app.state.sessions == {}


def test_unreachable_server_names_the_url_and_the_fix():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(EnvFaultError, match=rf"127.0.0.1:{port}.*turngym serve-env"):
        _remote(f"http://127.0.0.1:{port}", IDS[0])


def test_server_killed_mid_episode_raises_env_fault():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-P", "-m", "turngym.cli", "serve-env", IDS[1], "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.1)
        env = _remote(url, IDS[1])
        env.reset(seed=0)
        env.step(env.unwrapped.oracle_action())
        proc.kill()
        proc.wait(10)
        with pytest.raises(EnvFaultError, match=url):
            env.step("1 + 1")
        env.close()  # closing against a dead server does not raise
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", IDS)
def test_remote_env_passes_the_full_checker(server, env_id):
    report = check_env(lambda: _remote(server.url, env_id))
    assert report.random_junk_actions == 100 and set(report.checks) == set(check_env(env_id, junk=0).checks)
