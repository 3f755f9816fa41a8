"""Worker of test_kill_resume.py: one corridor run that SIGKILLs itself at a chosen point, or is killed from outside.

    python kill_worker.py RUN_DIR POINT [--resume]

POINT is ``none`` (run to the end), ``after:KIND:N`` (right after the KIND record of iteration N is
logged), ``torn:KIND:N`` (half of that record's line written, then killed), ``in_checkpoint:N`` (the
model files of checkpoint-N written into its temporary folder, the trainer state not yet),
``before_rename:N`` (checkpoint-N complete and fsynced in its temporary folder, not yet renamed) or
``before_latest:N`` (checkpoint-N renamed, ``latest`` not yet updated). The worker prints READY once
the trainer is built, so a parent can kill it at a random moment of the run itself.
"""

import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
spec = importlib.util.spec_from_file_location("corridor", Path(__file__).with_name("corridor.py"))
corridor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(corridor)

import turngym.trainers.model as model_module
from turngym.trainers.config import RLConfig, load_config
from turngym.trainers.rl import RLTrainer
from turngym.trainers.runlog import MetricsLog

OVERRIDES = ["agent.options={system_prompt: go right, num_exemplars: 0, format_reminder: false, prefill: false}",
             "agent.max_tokens=1", "rollout.tasks_per_iter=4", "rollout.group_size=4", "optim.lr=0.003",
             "optim.schedule=cosine", "algo.ppo_epochs=2", "algo.mini_batches=2", "algo.estimator=spa",
             "algo.entropy_coef=0.01", "algo.epo_smooth_coef=0.1", "run.iterations=6", "run.save_every=2",
             "run.eval_every=3", "run.eval_tasks=4", "run.keep_checkpoints=2", "run.progress=false",
             "run.tensorboard=false"]


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    what, _, arg = point.partition(":")
    if what in ("after", "torn"):
        kind, n = arg.split(":")
        write = MetricsLog.write

        def hooked_write(self, record):
            if record.get("kind") != kind or record.get("iteration") != int(n):
                return write(self, record)
            if what == "after":
                write(self, record)
            else:
                line = json.dumps(record)
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line[:len(line) // 2])
            die()

        MetricsLog.write = hooked_write
    elif what == "in_checkpoint":
        save_model = model_module.save_model

        def hooked_save(model, tokenizer, folder):
            save_model(model, tokenizer, folder)
            if Path(folder).name.startswith(f"checkpoint-{arg}."):
                die()

        model_module.save_model = hooked_save
    elif what in ("before_rename", "before_latest"):
        replace = os.replace

        def hooked_replace(src, dst, *args, **kwargs):
            src, dst = Path(src), Path(dst)
            if what == "before_rename" and src.is_dir() and src.name.startswith(f"checkpoint-{arg}."):
                die()
            if what == "before_latest" and dst.name == "latest" and src.read_text().strip() == f"checkpoint-{arg}":
                die()
            return replace(src, dst, *args, **kwargs)

        os.replace = hooked_replace
    elif what != "none":
        raise SystemExit(f"unknown kill point {point!r}")


def main() -> None:
    run_dir, point = sys.argv[1], sys.argv[2]
    env_id = corridor.register()
    tok = corridor.word_tokenizer()
    cfg = load_config(RLConfig, None, [f"env.id={env_id}", f"run.dir={run_dir}", *OVERRIDES])
    install(point)
    trainer = RLTrainer(cfg, model=corridor.tiny_policy(tok, seed=0), tokenizer=tok, resume="--resume" in sys.argv)
    trainer.engine.eos_token_ids = frozenset()  # a random model would stop at random lengths
    print("READY", flush=True)
    trainer.train()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
