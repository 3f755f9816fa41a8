"""TRL's GRPOTrainer trains on a turngym env through turngym.integrations.trl: multi-turn episodes played by the
trainer's own model, one optimizer step on CPU in seconds, and the rewards TRL logs are the env's episode returns.

The env is tests/trainers/corridor.py (walk right 1-2 cells, reward at the end) with its word-level tokenizer and
a tiny random Llama, as in the RL trainer's tests; TRL's settings follow benchmarks/trl_compare.py (CPU, no vLLM,
beta 0), scaled down.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
trl = pytest.importorskip("trl")  # extra: trl
datasets = pytest.importorskip("datasets")

CORRIDOR = Path(__file__).parents[1] / "trainers" / "corridor.py"


@pytest.fixture(scope="module")
def corridor():
    spec = importlib.util.spec_from_file_location("turngym_test_corridor", CORRIDOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register()
    return module


def _replay(env_id: str, traj) -> float:
    """The return a fresh env gives for the trajectory's actions (the env, not the adapter, decides rewards)."""
    import turngym

    env = turngym.make(env_id)
    env.reset(seed=traj.seed, options={"task_id": traj.task_id})
    total = 0.0
    for step in traj.steps:
        _, reward, terminated, truncated, _ = env.step(step.action)
        total += reward
        if terminated or truncated:
            break
    env.close()
    return total


@pytest.mark.parametrize("tasks", ["task_ids", "seeds"])
def test_grpo_trainer_steps_on_a_turngym_env(corridor, tmp_path, monkeypatch, tasks):
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from turngym.integrations.trl import TurngymRollout, env_reward, task_dataset, task_prompt

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in trl 1.16: we know
    torch.set_num_threads(1)
    tok = corridor.word_tokenizer()
    model = corridor.tiny_policy(tok, seed=0)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    if tasks == "task_ids":
        data = task_dataset(corridor.ENV_ID, split="train", num_tasks=4, seed=0)
        assert json.loads(data[0]["prompt"]) == {"env_id": corridor.ENV_ID, "task_id": data[0]["task_id"]}
    else:  # a reset seed names the task; each rollout of the group still gets its own episode seed
        data = datasets.Dataset.from_dict({"prompt": [task_prompt(corridor.ENV_ID, seed=s) for s in range(4)]})
    # the chat agent: the observation is the user message, the one-word reply is the action
    rollout = TurngymRollout("chat", agent_options={"system_prompt": "go right"}, eos_token_ids=[], seed=0)
    optimizer_steps = []

    class CountSteps(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kw):
            optimizer_steps.append(state.global_step)

    config = GRPOConfig(
        output_dir=str(tmp_path / "trl"), num_generations=8, per_device_train_batch_size=8, steps_per_generation=1,
        gradient_accumulation_steps=1, max_completion_length=1, temperature=1.0, top_p=1.0, beta=0.0,
        learning_rate=1e-2, max_steps=1, logging_steps=1, report_to=[], seed=0, use_cpu=True, save_strategy="no",
        disable_tqdm=True, bf16=False, fp16=False, use_vllm=False)
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=env_reward, args=config,
                          train_dataset=data, rollout_func=rollout, callbacks=[CountSteps()])
    trainer.train()

    assert trainer.state.global_step == 1 and optimizer_steps == [0]
    # one generation of 8 rollouts of one task, each a whole episode played by the trainer's model
    episodes = rollout.trajectories
    assert len(episodes) == 8 and len({t.task_id for t in episodes}) == 1 and len({t.seed for t in episodes}) == 8
    assert all(t.error is None and t.num_turns >= 1 for t in episodes)
    assert max(t.num_turns for t in episodes) > 1, "no multi-turn episode in the batch"
    # the rewards TRL logged are the env's episode returns (a fresh env replaying the actions agrees)
    returns = [_replay(corridor.ENV_ID, t) for t in episodes]
    assert rollout.reward_history == [returns] == [[t.total_reward for t in episodes]]
    logged = trainer.state.log_history[0]
    assert math.isclose(logged["rewards/env_reward/mean"], sum(returns) / len(returns), abs_tol=1e-6)
    assert list(trainer._logs["rewards"]["env_reward"]) == returns  # per completion (TRL's completions table)
    # rewards differed within the group (else GRPO's advantages are 0 and nothing moves): the weights moved
    assert len(set(returns)) > 1
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())


def test_one_sequence_per_episode_with_env_tokens_masked(corridor):
    from turngym.agents.engines.hf import HFEngine
    from turngym.agents.factory import make_agent
    from turngym.agents.runner import run_episodes
    from turngym.integrations.trl import TurngymRollout

    torch.set_num_threads(1)
    tok = corridor.word_tokenizer()
    engine = HFEngine((corridor.tiny_policy(tok, seed=1), tok), eos_token_ids=[])
    agent = make_agent("chat", corridor.ENV_ID, system_prompt="go right", max_tokens=1)
    episodes = run_episodes(corridor.ENV_ID, agent, engine, split="train", num_tasks=4, group_size=2).trajectories
    out = TurngymRollout.to_trl(episodes, tok)
    for k, traj in enumerate(episodes):
        prompt, completion, mask = out["prompt_ids"][k], out["completion_ids"][k], out["env_mask"][k]
        assert prompt == traj.steps[0].prompt_ids
        assert len(completion) == len(mask) == len(out["logprobs"][k])
        sampled = [i for i, m in zip(completion, mask) if m]
        assert sampled == [i for s in traj.steps for i in s.response_ids]  # exactly the ids the model sampled
        assert [x for x, m in zip(out["logprobs"][k], mask) if m] == [p for s in traj.steps for p in s.response_logprobs]
        # the last step's prompt is the sequence so far: the env's observation tokens sit under mask 0
        last = traj.steps[-1]
        assert (prompt + completion)[:len(last.prompt_ids)] == last.prompt_ids
        assert out["env_reward"][k] == traj.total_reward and out["env_turns"][k] == traj.num_turns


def test_failed_episode_is_unscorable_and_bad_prompts_are_named(corridor):
    from turngym.agents.types import Step, Trajectory
    from turngym.errors import TurngymError
    from turngym.integrations.trl import TurngymRollout, parse_task_prompt, task_prompt

    out = TurngymRollout.to_trl(
        [Trajectory(env_id=corridor.ENV_ID, task_id="train/0", group_id="g", error="env crashed")],
        corridor.word_tokenizer())
    assert out["env_reward"] == [None] and out["env_mask"] == [[0]]  # TRL: NaN reward, advantage 0, no loss
    slid = Trajectory(env_id=corridor.ENV_ID, task_id="train/0", group_id="g", steps=[
        Step("a", prompt_ids=[1, 2], response_ids=[3], response_logprobs=[-1.0]),
        Step("b", prompt_ids=[1, 9, 3], response_ids=[4], response_logprobs=[-1.0])])  # a window slid: no extension
    with pytest.raises(TurngymError, match=r"step 1's prompt_ids do not extend.*agent_options=\{'context': 'full'\}"):
        TurngymRollout.to_trl([slid])
    assert parse_task_prompt([{"role": "user", "content": task_prompt("x/Y-v0", seed=3)}]) == {"env_id": "x/Y-v0",
                                                                                             "seed": 3}
    with pytest.raises(TurngymError, match="does not name a turngym task.*task_prompt"):
        parse_task_prompt("Solve 24 with 1 2 3 4")
