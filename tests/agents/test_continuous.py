"""Continuous batching: HFSession (requests join and leave a running batch) and the runner's continuous schedule.

The promise: a request decoded in a session, whatever runs beside it and
whenever it was admitted, gets the same tokens and log-probs (to fp32
rounding) as from ``generate``; a runner on the continuous schedule plays
the same episodes as on the lockstep one.
"""

from __future__ import annotations

import random
import time
from functools import partial

import gymnasium as gym
import pytest

from turngym.agents.engines import ScriptedEngine
from turngym.agents.engines.hf import HFEngine
from turngym.agents.factory import make_agent
from turngym.agents.pool import make_env
from turngym.agents.runner import EpisodeRunner, plan_episodes
from turngym.agents.types import SamplingParams
from turngym.errors import TurngymError
from turngym.testing import teacher_forced_logprobs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

G24 = "turngym/Game24-v0"
BW = "turngym/BlocksWorld-v0"
TEXTS = ["Observation: block b1 is on the table; the hand is empty. " * 3, "Thought: I", "x",
         "Action: pick up the red block. Observation: you hold the red block.", "Déjà vu: naïve café",
         "Thought: I should combine 4 and 6 first.", "You are in the middle of a room.", "Action: answer"]


@pytest.fixture()
def engine(tiny_tokenizer, make_tiny_model):
    return HFEngine((make_tiny_model(tiny_tokenizer, seed=5), tiny_tokenizer), max_batch_size=4, eos_token_ids=[])


def params(n, temperature=1.0):
    return [SamplingParams(max_tokens=3 + 3 * i, temperature=temperature, top_p=0.9 if i % 3 == 1 else 1.0, seed=i)
            for i in range(n)]


def drain(session, submit_more=None):
    """Step until empty; ``submit_more(id, completion)`` may submit follow-ups. Returns {id: completion}."""
    got = {}
    while session.running or session.waiting:
        for request, completion in session.step():
            got[request] = completion
            if submit_more is not None:
                submit_more(request, completion)
    return got


@pytest.mark.parametrize("admit_fraction", [0.0, 0.25, 1.0])
def test_a_session_decodes_every_request_as_generate_does(engine, admit_fraction):
    ps = params(len(TEXTS))
    want = engine.generate(TEXTS, ps)
    session = engine.session(admit_fraction=admit_fraction)
    ids = {session.submit(TEXTS[i], ps[i]): i for i in range(3)}
    queue = list(range(3, len(TEXTS)))

    def more(request, completion):  # a finished request makes room for the next one, mid-flight
        if queue:
            i = queue.pop(0)
            ids[session.submit(TEXTS[i], ps[i])] = i

    got = {ids[r]: c for r, c in drain(session, more).items()}
    assert sorted(got) == list(range(len(TEXTS)))
    for i, w in enumerate(want):
        assert got[i].token_ids == w.token_ids and got[i].text == w.text and got[i].prompt_ids == w.prompt_ids
        assert max(abs(a - b) for a, b in zip(got[i].logprobs, w.logprobs, strict=True)) < 1e-5
        ref = teacher_forced_logprobs(engine.model, got[i].prompt_ids, got[i].token_ids)
        assert max(abs(a - b) for a, b in zip(got[i].logprobs, ref, strict=True)) < 1e-4
    assert session.admitted == len(TEXTS) and session.running == session.waiting == 0
    # requests joined a running batch: fewer prefill passes than requests
    assert session.admissions < len(TEXTS)


def test_admissions_wait_for_a_share_of_the_batch_and_never_exceed_its_size(engine):
    session = engine.session(admit_fraction=0.5, max_wait_steps=100)
    ps = [SamplingParams(max_tokens=30, temperature=0.0)] * 4
    for t in TEXTS[:4]:
        session.submit(t, ps[0])
    session.step()
    assert session.running == 4 and session.admissions == 1
    session.submit(TEXTS[4], SamplingParams(max_tokens=2, temperature=0.0))
    session.step()
    assert session.waiting == 1  # the batch is full (max_batch_size=4)
    drain(session)
    assert session.admitted == 5


def test_a_waiting_request_is_admitted_after_max_wait_steps(engine):
    session = engine.session(admit_fraction=1.0, max_wait_steps=3)
    session.submit(TEXTS[0], SamplingParams(max_tokens=40, temperature=0.0))
    session.submit(TEXTS[1], SamplingParams(max_tokens=40, temperature=0.0))
    session.step()
    session.submit(TEXTS[2], SamplingParams(max_tokens=2, temperature=0.0))
    steps = 0
    while session.waiting:
        session.step()
        steps += 1
    assert steps == 4 and session.running == 3  # 3 decode steps without it, admitted before the 4th


def test_session_streams_text_per_request(engine):
    seen: dict[int, list[str]] = {}
    session = engine.session()
    for i, t in enumerate(TEXTS[:3]):
        session.submit(t, SamplingParams(max_tokens=6, temperature=1.0, seed=i), on_text=seen.setdefault(i, []).append)
    got = drain(session)
    for i in range(3):
        assert seen[i][-1] == got[i].text
        assert all(b.startswith(a) for a, b in zip(seen[i], seen[i][1:]))


def test_changing_weights_under_running_rows_is_refused(engine):
    session = engine.session()
    session.submit(TEXTS[0], SamplingParams(max_tokens=20, temperature=0.0))
    session.step()
    with torch.no_grad():
        next(engine.model.parameters()).add_(0.01)
    with pytest.raises(RuntimeError, match="weights changed"):
        session.step()
    fresh = engine.session()  # a new session after the update is fine
    fresh.submit(TEXTS[0], SamplingParams(max_tokens=3, temperature=0.0))
    assert len(drain(fresh)) == 1


def test_a_cancelled_request_leaves_and_the_others_decode_as_generate_does(engine):
    """A client that goes away: its request leaves the queue or the running batch (its row freed at once), and
    the requests beside it get exactly the tokens generate gives them."""
    ps = params(6)
    want = engine.generate(TEXTS[:6], ps)
    session = engine.session(admit_fraction=1.0)
    ids = [session.submit(TEXTS[i], ps[i]) for i in range(6)]  # 4 run (max_batch_size=4), 2 wait
    session.step()
    assert session.running == 4 and session.waiting == 2
    assert session.cancel(ids[1]) and session.cancel(ids[5])  # one running, one waiting
    assert session.running == 3 and session.waiting == 1
    assert not session.cancel(ids[1])  # gone already
    got = drain(session)
    assert sorted(got) == [ids[i] for i in (0, 2, 3, 4)]
    for i in (0, 2, 3, 4):
        assert got[ids[i]].token_ids == want[i].token_ids and got[ids[i]].text == want[i].text
    last = session.submit(TEXTS[0], ps[0])  # the only running row, cancelled: the batch empties
    session.step()
    assert session.cancel(last) and session.running == 0 and session.step() == []


def test_a_request_whose_prefill_fails_fails_alone(engine, monkeypatch):
    """Admission faults are the admitted request's own: the group is retried row by row, the row at fault is
    named in RequestsFailed, and every other request runs on to generate's tokens."""
    from turngym.agents.engines.base import RequestsFailed

    poison = engine.encode_text("POISON")
    real_open = engine._open

    def open_rows(rows):
        if any(r.prompt_ids == poison for r in rows):
            raise RuntimeError("CUDA out of memory (injected)")
        return real_open(rows)

    monkeypatch.setattr(engine, "_open", open_rows)
    ps = params(3)
    want = engine.generate(TEXTS[:3], ps)
    session = engine.session(admit_fraction=0.0)
    ids = [session.submit(TEXTS[0], ps[0])]
    session.step()  # running
    bad = session.submit(poison, SamplingParams(max_tokens=5, temperature=0.0))
    ids += [session.submit(TEXTS[i], ps[i]) for i in (1, 2)]  # admitted in one group with the poison
    with pytest.raises(RequestsFailed, match="out of memory") as info:
        session.step()
    assert list(info.value.failures) == [bad] and session.running == 3
    got = {r: c for r, c in info.value.finished}
    got.update(drain(session))
    assert sorted(got) == ids
    for i, request in enumerate(ids):
        assert got[request].token_ids == want[i].token_ids


def test_engines_without_sessions_run_lockstep_and_say_so():
    engine = ScriptedEngine(["Thought: x\nAction: 1 + 1"])
    assert EpisodeRunner(G24, make_agent("react", G24), engine).schedule == "lockstep"
    with pytest.raises(ValueError, match="schedule='lockstep'"):
        EpisodeRunner(G24, make_agent("react", G24), engine, schedule="continuous")
    with pytest.raises(ValueError, match="schedule="):
        EpisodeRunner(G24, make_agent("react", G24), engine, schedule="eager")


def test_a_session_needs_full_attention_layers(engine):
    engine.session_off_reason = "sliding-window layers"
    with pytest.raises(TurngymError, match="sliding-window layers"):
        engine.session()


# ---- the runner's continuous schedule --------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_engine(tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(tiny_tokenizer, seed=2)
    model.config.max_position_embeddings = 4096
    return HFEngine((model, tiny_tokenizer), name="hf:tiny", max_batch_size=8, eos_token_ids=[])


class JitterEnv(gym.Wrapper):
    """Steps take a random 0-6 ms, so episodes come back from the env out of order."""

    def __init__(self, env):
        super().__init__(env)
        self.rng = random.Random()

    def step(self, action):
        time.sleep(0.006 * self.rng.random())
        return self.env.step(action)


def jitter_env(env_id):
    return JitterEnv(make_env(env_id))


def _play(engine, env_id, schedule, deterministic=False, env_fn=None, **agent_kwargs):
    agent = make_agent("react", env_id, max_tokens=10, num_exemplars=0, **agent_kwargs)
    runner = EpisodeRunner(env_id, agent, engine, max_concurrent=5, max_steps=3, schedule=schedule,
                           deterministic=deterministic, env_fn=env_fn)
    assert runner.schedule == schedule
    return runner.run(plan_episodes(env_id, num_tasks=4, group_size=2, seed=1))


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("context", ["full", "window"])
def test_continuous_plays_the_episodes_lockstep_plays(long_engine, deterministic, context):
    lock = _play(long_engine, BW, "lockstep", context=context)
    cont = _play(long_engine, BW, "continuous", deterministic, env_fn=partial(jitter_env, BW), context=context)
    assert len(cont.trajectories) == len(lock.trajectories) == 8
    for a, b in zip(cont.trajectories, lock.trajectories, strict=True):
        assert (a.task_id, a.seed, a.won, a.num_turns, a.error) == (b.task_id, b.seed, b.won, b.num_turns, b.error)
        for x, y in zip(a.steps, b.steps, strict=True):
            assert x.prompt_ids == y.prompt_ids and x.response_ids == y.response_ids and x.action == y.action
            assert x.reward == y.reward and x.info["continued_prompt"] == y.info["continued_prompt"]
            assert max(abs(p - q) for p, q in zip(x.response_logprobs, y.response_logprobs, strict=True)) < 1e-4
    s = cont.stats
    assert s.llm_turns == lock.stats.llm_turns and s.generated_tokens == lock.stats.generated_tokens
    assert s.env_steps == lock.stats.env_steps and s.episodes == 8
    assert 1 <= s.generate_calls <= s.llm_turns


def test_continuous_is_deterministic_when_asked(long_engine):
    runs = []
    for _ in range(2):
        long_engine.clear_prefix_cache()  # a prefix from the tree is rounded differently than a fresh prefill
        runs.append(_play(long_engine, G24, "continuous", True, env_fn=partial(jitter_env, G24)))
    for a, b in zip(*(r.trajectories for r in runs), strict=True):
        for x, y in zip(a.steps, b.steps, strict=True):
            assert x.response_ids == y.response_ids and x.response_logprobs == y.response_logprobs


def test_continuous_keeps_context_overflow_and_files(tiny_engine, tmp_path):
    agent = make_agent("react", G24, max_tokens=4)  # Game24's instruction alone overflows the 512-token context
    runner = EpisodeRunner(G24, agent, tiny_engine, schedule="continuous")
    result = runner.run(plan_episodes(G24, num_tasks=2, seed=0), out=tmp_path / "t.jsonl")
    assert all(t.truncated and t.num_turns == 0 for t in result.trajectories)
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 2
