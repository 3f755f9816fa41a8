"""Every recipe in configs/ runs: CPU recipes for one tiny iteration through the real CLI, GPU recipes checked on CPU.

A new ``configs/*.yaml`` is covered by being there. CPU recipes run as
``turngym sft`` (``sft_*``) or ``turngym train`` (the rest) with a tiny
random Llama in place of the embedded SmolLM2 and overrides that shrink the
run to seconds; the recipe's own algorithm settings (estimator and its
hyper-parameters, agent, sample mode, loss) are kept, so a recipe whose
values the trainer rejects fails here. GPU recipes (``*_gpu``) are loaded
and validated, their env is made and its splits listed, and their estimator
runs on a small synthetic :class:`~turngym.credit.StepBatch`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
CPU_RECIPES = [r for r in RECIPES if not r.endswith("_gpu.yaml")]
GPU_RECIPES = [r for r in RECIPES if r.endswith("_gpu.yaml")]

#: Overrides that shrink any CPU recipe to one tiny iteration (the model path and run dir are added per test).
SHRINK_TRAIN = ["run.iterations=1", "run.eval_tasks=0", "run.save_every=1", "run.progress=false",
                "run.tensorboard=false", "run.threads=1", "rollout.tasks_per_iter=2", "rollout.group_size=2",
                "rollout.max_concurrent=4", "agent.max_tokens=4", "env.max_steps=2"]
SHRINK_SFT = ["data.episodes=2", "data.epochs=1", "data.batch_size=2", "run.eval_tasks=0", "run.progress=false",
              "run.tensorboard=false", "run.threads=1", "env.max_steps=2"]
#: Werewolf plays whole games: the 6-seat table, one day, one debate round, no wolf chat, short speeches.
SHRINK_WEREWOLF = ["rollout.tasks_per_iter=1",
                   "env.kwargs={preset: small, lineup: all=llm, max_days: 1, wolf_chat_rounds: 0, max_speech_chars: 40}"]


def _command(recipe: str) -> str:
    return "sft" if recipe.startswith("sft_") else "train"


def _recipe(recipe: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / recipe).read_text())


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, make_tiny_model):
    """A tiny random Llama and its tokenizer saved as an HF folder, for ``model.path=``."""
    model = make_tiny_model(tiny_tokenizer, seed=0)
    model.config.max_position_embeddings = 32768  # the 300-token test vocabulary makes prompts long
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("recipe", CPU_RECIPES)
def test_cpu_recipe_runs_one_tiny_iteration(recipe, tiny_model_dir, tmp_path, capsys):
    from turngym.cli import main

    command = _command(recipe)
    shrink = SHRINK_SFT if command == "sft" else SHRINK_TRAIN
    if "werewolf" in recipe:
        shrink = [*shrink, *SHRINK_WEREWOLF]
    run_dir = tmp_path / "run"
    code = main([command, str(ROOT / "configs" / recipe), *shrink, f"model.path={tiny_model_dir}",
                 f"run.dir={run_dir}"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert train and train[-1]["iteration"] >= 1
    checkpoints = sorted(run_dir.glob("checkpoint-*"))
    assert checkpoints and (checkpoints[-1] / "model.safetensors").is_file()
    written = yaml.safe_load((run_dir / "config.yaml").read_text())  # what the trainer actually ran
    spec = _recipe(recipe)
    if command == "sft":
        assert all(math.isfinite(r["nll"]) for r in train) and train[-1]["tokens"] > 0
        assert written["data"]["source"] == spec["data"]["source"]
        return
    last = train[-1]
    assert last["episodes"] >= (4 if "werewolf" not in recipe else 6) and last["num_loss_tokens"] > 0
    assert math.isfinite(last["loss"]) and math.isfinite(last["grad_norm"])
    algo = spec.get("algo", {})
    assert written["algo"]["estimator"] == algo.get("estimator", "grpo")
    assert written["algo"]["estimator_kwargs"] == algo.get("estimator_kwargs", {})
    assert written["algo"]["sample_mode"] == algo.get("sample_mode", "auto")
    assert written["env"]["id"] == spec["env"]["id"]


def _synthetic_batch():
    """Two tasks x two rollouts x two steps, every optional field filled (each estimator takes what it needs)."""
    from turngym.credit import StepBatch

    rng = np.random.default_rng(0)
    group = np.repeat([0, 0, 1, 1], 2)
    traj = np.repeat(np.arange(4), 2)
    step = np.tile([0, 1], 4)
    reward = np.where(step == 1, rng.integers(0, 2, 8), 0).astype(float)
    return StepBatch(group_id=group, traj_id=traj, step=step, reward=reward,
                     state_key=[f"s{g}-{t}" for g, t in zip(group, step)],
                     observation=[f"obs {g} {t}" for g, t in zip(group, step)],
                     values=rng.normal(size=8), progress=np.tile([0.5, 1.0], 4), gold_logprob=-rng.random(8),
                     num_tool_calls=np.repeat([1, 2, 1, 1], 2), entropy=rng.random(8), action_valid=np.ones(8))


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_gpu_recipe_is_valid_on_cpu(recipe):
    import turngym
    from turngym.credit import compute_advantages
    from turngym.trainers.config import RLConfig, load_config

    cfg = load_config(RLConfig, ROOT / "configs" / recipe)  # every key, choice, the agent and the estimator
    assert cfg.rollout.engine == "vllm" and cfg.model.device.startswith("cuda")
    env = turngym.make(cfg.env.id, **cfg.env.kwargs)
    try:
        for split in (cfg.env.split, cfg.env.eval_split):
            assert list(env.unwrapped.task_ids(split)), f"{cfg.env.id} has no tasks in split {split!r}"
        env.reset(seed=0)
    finally:
        env.close()
    kwargs = dict(cfg.algo.estimator_kwargs)
    if cfg.algo.estimator == "spa":  # what the trainer adds (Step.progress is cumulative)
        kwargs.setdefault("progress_is_cumulative", True)
    batch = _synthetic_batch()
    adv = compute_advantages(cfg.algo.estimator, batch, **kwargs)
    assert adv.shape == (len(batch),) and np.all(np.isfinite(adv))


def test_help_config_lists_every_key(capsys):
    import dataclasses

    from turngym.cli import main
    from turngym.trainers.config import RLConfig, SFTConfig

    for command, cls in (("train", RLConfig), ("sft", SFTConfig)):
        assert main([command, "--help-config"]) == 0
        text = capsys.readouterr().out
        for section in dataclasses.fields(cls):
            for f in dataclasses.fields(getattr(cls(), section.name)):
                assert f"{section.name}.{f.name} =" in text, f"{command} --help-config lacks {section.name}.{f.name}"


def test_a_recipe_trains_the_same_with_its_envs_in_ray_actors(tiny_model_dir, tmp_path):
    """rollout.env_pool=ray (issue 21): the envs step in Ray actors; with the same seeds the run's records equal
    the thread pool's (rollouts depend on the seeds alone)."""
    pytest.importorskip("ray")
    from turngym.cli import main

    records = {}
    for pool in ("thread", "ray"):
        run = tmp_path / pool
        assert main(["train", str(ROOT / "configs" / "grpo_blocksworld.yaml"), f"model.path={tiny_model_dir}",
                     f"run.dir={run}", f"rollout.env_pool={pool}", "rollout.env_workers=2", *SHRINK_TRAIN]) == 0
        lines = (run / "metrics.jsonl").read_text().splitlines()
        records[pool] = [{k: v for k, v in json.loads(line).items() if not k.startswith(("time", "tokens_per_s",
                                                                                         "env_steps_per_s"))}
                         for line in lines]
    assert records["ray"] == records["thread"] and records["ray"]
