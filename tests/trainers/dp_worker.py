"""Worker of test_distributed.py: one corridor GRPO run (launched alone or by torchrun); argv: run dir, overrides."""

import importlib.util
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("corridor", Path(__file__).with_name("corridor.py"))
corridor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(corridor)

from turngym.trainers.config import RLConfig, load_config
from turngym.trainers.rl import RLTrainer

env_id = corridor.register()
tok = corridor.word_tokenizer()
cfg = load_config(RLConfig, None, [
    f"env.id={env_id}", "agent.options={system_prompt: go right, num_exemplars: 0, format_reminder: false, prefill: false}",
    "agent.max_tokens=1", "rollout.tasks_per_iter=4", "rollout.group_size=4", "optim.lr=0.003", "run.iterations=3",
    f"run.dir={sys.argv[1]}", "run.eval_tasks=4", "run.progress=false", "run.save_every=3", "run.tensorboard=false",
    "algo.ppo_epochs=2", *sys.argv[2:]])
trainer = RLTrainer(cfg, model=corridor.tiny_policy(tok, seed=0), tokenizer=tok)
trainer.engine.eos_token_ids = frozenset()
trainer.train()

from turngym.trainers.distributed import end_rank  # noqa: E402

end_rank(0)  # as `turngym train` ends a torchrun rank
