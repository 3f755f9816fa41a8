"""The batched episode runner: batching, groups, files, env errors, Ctrl-C, P-ReAct dispatch, tokens."""

from __future__ import annotations

import json
import re
import threading
import time
from functools import partial

import gymnasium as gym
import pytest

import turngym
from turngym.agents.engines import ScriptedEngine
from turngym.agents.engines.base import per_prompt_sampling
from turngym.agents.factory import make_agent
from turngym.agents.pool import ProcessEnvPool, ThreadEnvPool, make_env
from turngym.agents.runner import EpisodeRunner, EpisodeSpec, derive_seed, plan_episodes, run_episodes
from turngym.agents.types import Completion, load_trajectories, save_trajectories
from turngym.envs.game24.solver import solve

G24 = "turngym/Game24-v0"
BW = "turngym/BlocksWorld-v0"


def _numbers(prompt) -> list[int] | None:
    """The remaining numbers of a Game24 prompt (the last 'Remaining numbers:' line of the chat)."""
    text = "\n".join(m["content"] for m in prompt if m["role"] != "system")
    found = re.findall(r"Remaining numbers: ([-\d/ ]+)", text)
    return [x for x in found[-1].split()] if found else None


def solver_reply(prompt) -> str:
    """Solves the puzzle in one full expression when it can, else plays an invalid move."""
    numbers = _numbers(prompt)
    solution = solve(numbers) if numbers and all(x.isdigit() for x in numbers) else None
    if solution is None:
        return "Thought: no idea\nAction: 99 + 99"
    return f"Thought: solved\nAction: {solution.expression}"


# ---- batching and scheduling -------------------------------------------------------------------------


def test_one_generate_call_per_turn_with_every_live_episode():
    engine = ScriptedEngine(respond=lambda p: "Thought: hm\nAction: 1 + 1")
    specs = plan_episodes(G24, num_tasks=5, seed=0)
    result = EpisodeRunner(G24, make_agent("react", G24), engine, max_concurrent=5).run(specs)
    assert [len(batch) for batch in engine.calls] == [5] * 10  # Game24: 10 steps max, all invalid
    assert result.stats.generate_calls == 10 and result.stats.llm_turns == 50
    assert all(t.truncated and not t.won and t.num_turns == 10 for t in result.trajectories)
    assert all(not s.action_valid and s.info["format_ok"] for t in result.trajectories for s in t.steps)


def test_episodes_finish_independently_and_the_batch_refills():
    engine = ScriptedEngine(respond=solver_reply)
    specs = plan_episodes(G24, num_tasks=12, seed=1)
    result = EpisodeRunner(G24, make_agent("react", G24), engine, max_concurrent=4).run(specs)
    solvable = [t for t in result.trajectories if t.won]
    assert solvable and all(t.num_turns == 1 for t in solvable)
    assert all(t.num_turns == 10 for t in result.trajectories if not t.won)
    sizes = [len(batch) for batch in engine.calls]
    assert max(sizes) == 4 and sizes[0] == 4 and sum(sizes) == sum(t.num_turns for t in result.trajectories)
    assert [t.meta["index"] for t in result.trajectories] == list(range(12))  # results in plan order


def test_groups_share_group_id_and_task_with_distinct_seeds():
    specs = plan_episodes(G24, num_tasks=3, group_size=4, seed=7)
    result = run_episodes(G24, make_agent("random"), episodes=specs)
    groups = {}
    for t in result.trajectories:
        groups.setdefault(t.group_id, []).append(t)
    assert len(groups) == 3 and all(len(v) == 4 for v in groups.values())
    for group_id, trajs in groups.items():
        assert {t.task_id for t in trajs} == {group_id.split("@")[0]}
        assert len({t.seed for t in trajs}) == 4


def test_plan_is_a_seed_shuffled_prefix_of_the_split():
    a, b, c = (plan_episodes(G24, num_tasks=5, seed=s) for s in (0, 0, 1))
    assert [s.task_id for s in a] == [s.task_id for s in b] != [s.task_id for s in c]
    env = turngym.make(G24).unwrapped
    every = plan_episodes(G24, seed=3)
    assert sorted(s.task_id for s in every) == sorted(env.task_ids("test"))
    assert [s.task_id for s in a] == [s.task_id for s in plan_episodes(G24, num_tasks=8, seed=0)][:5]
    assert all(s.tags == {"plan_seed": 0} for s in a)
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)


def test_random_agent_runs_are_reproducible_whatever_the_batch():
    specs = plan_episodes(BW, num_tasks=6, seed=2)
    one = run_episodes(BW, make_agent("random"), episodes=specs, max_concurrent=1)
    many = run_episodes(BW, make_agent("random"), episodes=specs, max_concurrent=6)
    assert [[s.action for s in t.steps] for t in one.trajectories] == \
           [[s.action for s in t.steps] for t in many.trajectories]


@pytest.mark.parametrize("env_id", [G24, BW])
def test_oracle_wins_every_task(env_id):
    result = run_episodes(env_id, make_agent("oracle"), num_tasks=8, seed=0)
    assert len(result.trajectories) == 8
    assert all(t.won and t.error is None and t.total_reward == 1.0 for t in result.trajectories)
    assert all(s.action_valid for t in result.trajectories for s in t.steps)


def test_process_pool_gives_the_same_episodes():
    specs = plan_episodes(G24, num_tasks=4, seed=0)
    threads = run_episodes(G24, make_agent("oracle"), episodes=specs)
    procs = run_episodes(G24, make_agent("oracle"), episodes=specs, pool="process", workers=2)
    assert [[s.action for s in t.steps] for t in procs.trajectories] == \
           [[s.action for s in t.steps] for t in threads.trajectories]
    assert all(t.won for t in procs.trajectories)


# ---- records and files ------------------------------------------------------------------------------


def test_steps_record_states_progress_and_timings():
    result = run_episodes(BW, make_agent("oracle"), num_tasks=2, seed=0)
    traj = result.trajectories[0]
    env = turngym.make(BW)
    _, info = env.reset(options={"task_id": traj.task_id})
    assert traj.steps[0].state_key == info["state_key"]  # the state the step acted in
    for prev, step in zip(traj.steps, traj.steps[1:]):
        assert step.state_key == prev.info["state_key"]  # info holds the state after the step
    assert traj.steps[-1].progress == 1.0 and traj.steps[-1].terminated
    assert "admissible_actions" not in traj.steps[0].info and "instruction" not in traj.steps[0].info
    assert traj.timings["env_s"] > 0 and traj.timings["wall_s"] >= traj.timings["env_s"]
    assert result.stats.env_steps == sum(t.num_turns for t in result.trajectories)


def test_trajectories_round_trip_through_jsonl(tmp_path):
    engine = ScriptedEngine(respond=solver_reply)
    out = tmp_path / "run" / "trajs.jsonl"
    result = run_episodes(G24, make_agent("react", G24), engine, num_tasks=4, seed=0, out=out)
    assert out.exists() and not out.with_name("trajs.jsonl.partial").exists()
    loaded = load_trajectories(out)
    assert sorted(t.to_dict()["task_id"] for t in loaded) == sorted(t.task_id for t in result.trajectories)
    by_index = {t.meta["index"]: t for t in loaded}
    for t in result.trajectories:
        assert by_index[t.meta["index"]].to_dict() == json.loads(json.dumps(t.to_dict()))
    again = tmp_path / "again.jsonl"
    save_trajectories(loaded, again)
    assert [t.to_dict() for t in load_trajectories(again)] == [t.to_dict() for t in loaded]


class FlakyEnv(gym.Wrapper):
    """Raises on its second step for one task (a crashed sandbox, say)."""

    def __init__(self, env, bad_task):
        super().__init__(env)
        self.bad_task, self.steps = bad_task, 0

    def reset(self, **kwargs):
        self.steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        self.steps += 1
        if self.env.unwrapped.task_id == self.bad_task and self.steps == 2:
            raise RuntimeError("sandbox died")
        return self.env.step(action)


def flaky_env(bad_task):
    return FlakyEnv(make_env(G24), bad_task)


def test_an_env_that_raises_is_an_env_error_and_the_others_go_on():
    specs = plan_episodes(G24, num_tasks=6, seed=0)
    bad = specs[2].task_id
    runner = EpisodeRunner(G24, make_agent("oracle"), env_fn=partial(flaky_env, bad), max_concurrent=3)
    result = runner.run(specs)
    errored = [t for t in result.trajectories if t.error]
    assert [t.task_id for t in errored] == [bad]
    assert "sandbox died" in errored[0].error and not errored[0].won
    assert all(t.won for t in result.trajectories if not t.error)
    assert result.stats.errors == 1 and len(result.trajectories) == 6


def test_a_reset_error_is_an_env_error_too():
    specs = [EpisodeSpec(task_id="test/99999", seed=0, group_id="g"), *plan_episodes(G24, num_tasks=2)]
    result = run_episodes(G24, make_agent("oracle"), episodes=specs)
    assert "reset" in result.trajectories[0].error
    assert all(t.won for t in result.trajectories[1:])


class InterruptingEngine(ScriptedEngine):
    """Raises KeyboardInterrupt in its call number ``after`` (0-based), as Ctrl-C would."""

    def __init__(self, after):
        super().__init__(respond=lambda prompt: "Thought: hm\nAction: 99 + 99")
        self.after = after

    def generate(self, prompts, sampling, on_text=None):
        if len(self.calls) == self.after:
            raise KeyboardInterrupt
        return super().generate(prompts, sampling, on_text)


def test_ctrl_c_leaves_a_valid_partial_file(tmp_path):
    out = tmp_path / "partial.jsonl"
    specs = plan_episodes(G24, num_tasks=10, seed=0)
    runner = EpisodeRunner(G24, make_agent("react", G24), InterruptingEngine(after=3), max_concurrent=4,
                           max_steps=2)
    result = runner.run(specs, out=out)  # calls 0-1: episodes 0-3 end; call 2 starts 4-7; call 3 is Ctrl-C
    assert result.stats.interrupted
    finished = load_trajectories(out)  # valid JSONL
    assert len(finished) == len(result.trajectories) == 4
    assert all(t.num_turns == 2 and t.truncated for t in finished)
    assert not (tmp_path / "partial.jsonl.partial").exists()


# ---- P-ReAct -------------------------------------------------------------------------------------------


class StreamingEngine:
    """Streams a fixed reply a few characters at a time, sleeping between chunks (a slow model)."""

    name = "streaming"

    def __init__(self, reply, chunk=4, delay=0.01):
        self.reply, self.chunk, self.delay = reply, chunk, delay
        self.calls, self.finished_at = [], []

    def render(self, messages, tools=None):
        return messages

    def generate(self, prompts, sampling, on_text=None):
        params = per_prompt_sampling(sampling, len(prompts))
        self.calls.append(list(prompts))
        for end in range(self.chunk, len(self.reply) + self.chunk, self.chunk):
            time.sleep(self.delay)
            if on_text is not None:
                for i in range(len(prompts)):
                    on_text(i, self.reply[:end])
        self.finished_at.append(time.perf_counter())
        ids = list(self.reply.encode())
        return [Completion(self.reply, ids, [0.0] * len(ids) if sp.logprobs else None) for sp in params]


class SlowEnv(gym.Wrapper):
    """Sleeps in every step and notes when each step started."""

    started: list[float] = []

    def __init__(self, env, delay):
        super().__init__(env)
        self.delay = delay

    def step(self, action):
        SlowEnv.started.append(time.perf_counter())
        time.sleep(self.delay)
        return self.env.step(action)


def slow_bw(delay):
    return SlowEnv(make_env(BW), delay)


def test_preact_dispatches_the_action_before_generation_ends():
    reply = "<action>pick up the red block</action>\nThought: " + "the red block must move. " * 6
    engine = StreamingEngine(reply, chunk=4, delay=0.01)  # ~0.4 s of "generation" after the action
    SlowEnv.started = []
    specs = plan_episodes(BW, num_tasks=2, seed=0)
    runner = EpisodeRunner(BW, make_agent("p-react", BW), engine, env_fn=partial(slow_bw, 0.3), max_steps=2)
    result = runner.run(specs)
    first_call_end = engine.finished_at[0]
    assert len(SlowEnv.started) == 4 and SlowEnv.started[0] < first_call_end - 0.2
    steps = [s for t in result.trajectories for s in t.steps]
    assert all(s.info["dispatched_early"] and s.info["dispatch_lead_s"] > 0.2 for s in steps)
    assert all(s.action == "pick up the red block" for s in steps)
    assert result.stats.dispatched_early == 4
    # The env's 0.3 s per step was mostly hidden behind generation: far less than 2 x 0.3 s waited.
    assert result.stats.env_wait_s < 0.35


def test_react_waits_for_the_whole_reply_before_stepping():
    reply = "Thought: " + "the red block must move. " * 6 + "\nAction: pick up the red block"
    engine = StreamingEngine(reply, chunk=4, delay=0.005)
    SlowEnv.started = []
    runner = EpisodeRunner(BW, make_agent("react", BW), engine, env_fn=partial(slow_bw, 0.0), max_steps=1)
    result = runner.run(plan_episodes(BW, num_tasks=1, seed=0))
    assert SlowEnv.started[0] >= engine.finished_at[0]
    assert "dispatched_early" not in result.trajectories[0].steps[0].info


# ---- tokens with a real (tiny) HF model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def long_tiny_engine(tiny_tokenizer, make_tiny_model):
    """The tiny model with room for Game24's instruction in its tiny-vocabulary tokens."""
    from turngym.agents.engines.hf import HFEngine

    model = make_tiny_model(tiny_tokenizer)
    model.config.max_position_embeddings = 4096
    return HFEngine((model, tiny_tokenizer), name="hf:tiny", max_batch_size=8, eos_token_ids=[])


def test_token_ids_logprobs_and_continued_prompts_with_a_tiny_model(long_tiny_engine):
    tiny_engine = long_tiny_engine
    agent = make_agent("react", G24, context="full", max_tokens=12, num_exemplars=1)
    result = EpisodeRunner(G24, agent, tiny_engine, max_concurrent=3, max_steps=3).run(
        plan_episodes(G24, num_tasks=3, seed=0))
    for traj in result.trajectories:
        assert traj.model == "hf:tiny" and traj.num_turns == 3
        for step in traj.steps:
            assert step.prompt_ids and len(step.response_ids) == len(step.response_logprobs) <= 12
            assert step.context_mode == "full"
            assert all(lp <= 0 for lp in step.response_logprobs)
        first = agent.prompt(agent.start(traj.meta["instruction"], traj.steps[0].observation, {}, None))
        prefix_ids = tiny_engine.tokenizer("Thought:", add_special_tokens=False)["input_ids"]
        assert traj.steps[0].prompt_ids == tiny_engine.render(first.messages) + prefix_ids
        assert all(s.info["response_prefix"] == "Thought:" for s in traj.steps)
        for prev, step in zip(traj.steps, traj.steps[1:]):
            # "full" mode: one token stream; the model's sampled ids are never re-tokenized.
            assert step.info["continued_prompt"]
            head = prev.prompt_ids + prev.response_ids
            assert step.prompt_ids[:len(head)] == head
    assert result.stats.generated_tokens == sum(len(s.response_ids) for t in result.trajectories for s in t.steps)


def test_summary_turns_are_memory_only_steps(long_tiny_engine):
    agent = make_agent("react", G24, context="summary", summary_trigger_tokens=1, max_summaries=1, max_tokens=8,
                       num_exemplars=0)
    result = EpisodeRunner(G24, agent, long_tiny_engine, max_steps=3).run(plan_episodes(G24, num_tasks=1, seed=0))
    kinds = [s.info["kind"] for s in result.trajectories[0].steps]
    assert kinds == ["act", "summarize", "act", "act"]
    summary = result.trajectories[0].steps[1]
    assert summary.action == "" and summary.context_mode == "summary" and summary.response_ids
    assert result.stats.env_steps == 3 and result.stats.llm_turns == 4


def test_an_episode_that_outgrows_the_context_ends_truncated(tiny_engine):
    agent = make_agent("react", G24, max_tokens=4)  # Game24's instruction alone passes the tiny 512-token context
    result = EpisodeRunner(G24, agent, tiny_engine).run(plan_episodes(G24, num_tasks=2, seed=0))
    assert all(t.truncated and t.num_turns == 0 and t.meta["context_overflow"] > 512 for t in result.trajectories)


def test_llm_agent_needs_an_engine():
    with pytest.raises(ValueError, match="needs an engine"):
        EpisodeRunner(G24, make_agent("react", G24))


def test_pools_report_env_time_and_errors():
    for pool in (ThreadEnvPool(partial(make_env, G24), 2), ProcessEnvPool(partial(make_env, G24), 2, workers=1)):
        try:
            (obs, _), seconds = pool.submit(0, "reset", 0, {"task_id": "test/0"}).result(timeout=60)
            assert "Remaining numbers" in obs and seconds >= 0
            assert pool.submit(0, "query", "oracle_action").result(timeout=60)[0]
            with pytest.raises(Exception, match="(?i)before (calling env.)?reset"):
                pool.submit(1, "step", "1 + 1").result(timeout=60)
            assert pool.submit(1, "rebuild").result(timeout=60)[0] is None
        finally:
            pool.close()


def test_progress_callback_sees_every_episode():
    seen = []
    lock = threading.Lock()

    def note(traj):
        with lock:
            seen.append(traj.task_id)

    result = run_episodes(G24, make_agent("random"), num_tasks=5, on_trajectory=note)
    assert sorted(seen) == sorted(t.task_id for t in result.trajectories)
