"""The multi-turn RL trainer: rollouts -> credit -> token advantages -> policy update -> weight sync, resumable.

One iteration (:meth:`RLTrainer.iteration`):

1. **Rollout.** ``rollout.tasks_per_iter`` tasks of ``env.split``, chosen by
   ``(run.seed, iteration)``, ``rollout.group_size`` episodes each, played by
   the batched :class:`~turngym.agents.runner.EpisodeRunner` with the agent
   and the engine (``hf``: the trained module itself, so no weight copy;
   ``vllm``: weights pushed after every update). Every episode's sampling
   seeds derive from its spec, so an iteration replays identically.
   Multi-agent envs (Werewolf) play self-play games instead
   (:mod:`turngym.trainers.selfplay`).
2. **Rewards.** Failed episodes (env errors) are dropped; the optional
   ``algo.invalid_action_penalty`` is subtracted from steps with invalid
   actions; ``algo.dynamic_filter`` drops groups whose returns are all equal
   (DAPO).
3. **Credit.** ``turngym.credit.compute_advantages(algo.estimator,
   step_batch(trajectories))``: one advantage per step.
4. **Tokens.** :func:`~turngym.trainers.tokens.build_samples` broadcasts
   each step's advantage to the ids the engine sampled for it (mask 1 only
   there; prompts, observations and template tokens get 0), step-wise or
   one sequence per episode (``algo.sample_mode``), checked by
   :func:`~turngym.trainers.tokens.verify_samples`.
5. **Old log-probs.** Recomputed by the trainer (``recompute``; with one
   epoch and one mini-batch the first forward pass IS the old policy, so
   no extra pass is made) or the engine's (``engine``) after checking that
   they agree with the trainer's within ``algo.logprob_tolerance``. The
   engine-vs-trainer difference is logged every iteration either way.
6. **Update** (:class:`~turngym.trainers.update.PolicyUpdate`, steps 5
   and 6). ``algo.ppo_epochs`` x ``algo.mini_batches`` optimizer
   steps; each mini-batch is split into micro-batches under
   ``optim.micro_batch_tokens`` (gradient accumulation with global loss
   normalizers, so the result does not depend on the split). Log-probs and
   entropies come from :func:`~turngym.trainers.logprobs.sequence_logprobs`
   (the ``kernels`` fused op: no [tokens x vocab] logits); the loss of each
   micro-batch is the objective picked once by ``algo.objective`` plus the
   opt-in terms (:mod:`turngym.trainers.objectives`: PPO-clip with KL and
   entropy, FoR trajectory balance, EPO's entropy smoothing and AEPO's
   clipping and advantage, each with its paper's formula), all called as
   ``objective(ctx, micro_batch)``. ``algo.objective=step_dpo`` replaces the
   rollout and update with Agent Q's search and offline DPO
   (:mod:`turngym.trainers.step_dpo`). The solution-diversity metric
   (distinct successful action sequences per task) is logged for every
   objective.
7. **Sync and log.** The engine sees the new weights; metrics go to
   ``metrics.jsonl`` and TensorBoard; checkpoints every ``run.save_every``.

Resume (``resume=True``): the newest checkpoint that loads (a corrupt one
is skipped with a warning) gives back the weights, optimizer, scheduler,
RNG states, log Z, EPO history, SPA's progress replay and iteration, after
its config is compared with the resumed run's (changes reported, changes
to the keys of :data:`~turngym.trainers.runlog.RESUME_FIXED` refused);
``metrics.jsonl`` is cut back to that iteration (to nothing when no
checkpoint exists: the run starts afresh), and an evaluation already logged
for it is not repeated. Since tasks, sampling seeds and mini-batch order
derive from ``(run.seed, iteration)``, a run killed at any point (``kill
-9`` included) and resumed logs the same metrics and ends with the same
weights as an uninterrupted one on CPU (tests/trainers/test_kill_resume.py).
Data parallel (torchrun): :mod:`turngym.trainers.distributed`.

Depends on ``turngym.agents``, ``turngym.credit``, ``turngym.kernels`` and
this package's token layer; torch and transformers (``train`` extra).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from turngym.agents.engines.base import InProcessEngine, WeightSyncEngine
from turngym.agents.evaluation import eval_record
from turngym.agents.runner import EpisodeRunner, RunStats, derive_seed, plan_episodes
from turngym.agents.types import Trajectory
from turngym.errors import TurngymError
from turngym.trainers.config import RLConfig, dump_yaml, to_dict, validate_config
from turngym.trainers.credit_inputs import SPAProgressState
from turngym.trainers.distributed import Distributed, NullLog
from turngym.trainers.runlog import (
    MetricsLog,
    check_resume_config,
    load_newest,
    load_state,
    open_trackers,
    progress_bar,
    prune_checkpoints,
    prune_trajectory_files,
    rng_state,
    save_checkpoint,
    save_trajectory_file,
    set_rng_state,
)
from turngym.trainers.selfplay import is_multi_agent, selfplay_evaluate, selfplay_rollout


def distinct_successful_plans(trajectories: list[Trajectory]) -> float:
    """FoR's diversity metric: mean number of distinct winning action sequences per task that was won at least once."""
    plans: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for t in trajectories:
        if t.won:
            plans[t.task_id].add(tuple(s.action.strip() for s in t.steps))
    return float(np.mean([len(p) for p in plans.values()])) if plans else 0.0


class RLTrainer:
    """Trains ``config.model`` on ``config.env`` (see the module docstring).

    Args:
        config: an :class:`~turngym.trainers.config.RLConfig`.
        model, tokenizer: an already loaded policy (tests, notebooks); default:
            loaded from ``config.model``.
        resume: continue from the newest checkpoint in ``config.run.dir``
            (a run dir without checkpoints starts fresh).
        engine: an engine to roll out with (default: built from ``config.rollout``).
    """

    def __init__(self, config: RLConfig, *, model: Any = None, tokenizer: Any = None, resume: bool = False,
                 engine: Any = None):
        import torch

        from turngym.trainers.objectives import OBJECTIVES, loss_terms

        self.cfg = cfg = config
        self._validate()
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.torch = torch
        self.dist = Distributed.from_env()
        if model is None:
            from turngym.trainers.model import load_policy

            model, tokenizer = load_policy(cfg.model)
        elif tokenizer is None:
            raise TurngymError("RLTrainer got a model without its tokenizer: pass tokenizer=...")
        elif cfg.model.lora:
            from turngym.trainers.model import wrap_lora

            model = wrap_lora(model, cfg.model)
        self.model, self.tokenizer = model, tokenizer
        from turngym.trainers.model import autocast_enabled, warn_if_slow_autocast

        self.autocast = autocast_enabled(cfg.model)  # model.autocast: bf16 compute in forward()
        warn_if_slow_autocast(cfg.model, self.device)
        self.model.train()
        self.dist.broadcast_parameters(self.model)  # replicas start equal (LoRA init is random)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.temperature = cfg.agent.temperature if cfg.agent.temperature > 0 else 1.0
        # The loss of a micro-batch: the objective and the terms added to it, picked once.
        self.objective = OBJECTIVES[cfg.algo.objective]

        from turngym.trainers.model import Reference, adamw, trainable_parameters

        self.reference = Reference(self.model) if cfg.algo.kl_coef > 0 or cfg.algo.objective == "step_dpo" else None
        # Data parallel (before the optimizer: FSDP2 turns the parameters into shards); the loss's forward goes
        # through train_model, the engine and checkpoints use self.model.
        self.train_model = self.dist.wrap(self.model, cfg.run.data_parallel)
        params = trainable_parameters(self.model)
        if not params:
            raise TurngymError("the model has no trainable parameters")
        groups = [{"params": params, "lr": cfg.optim.lr}]
        self.log_z = None
        if cfg.algo.objective == "tb":
            self.log_z = torch.nn.Parameter(torch.zeros((), dtype=torch.float32, device=self.device))
            groups.append({"params": [self.log_z], "lr": cfg.algo.tb_logz_lr, "weight_decay": 0.0})
        self.optimizer = adamw(groups, cfg.optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        from turngym.trainers.update import PolicyUpdate

        self.policy_update = PolicyUpdate(cfg, self.model, self.optimizer, self.scheduler, self.dist,
                                          pad_id=self.pad_id, temperature=self.temperature,
                                          objective=self.objective, loss_terms=loss_terms(cfg.algo),
                                          train_model=self.train_model if self.dist.world > 1 else None)
        self.spa_state = SPAProgressState()  # SPA's learned progress estimator: its replay of recent steps
        self.credit_metrics: dict[str, float] = {}
        self.iteration_done = 0
        self.weights_version = 0
        self.resumed_from: Path | None = None
        self._evaluated_at = -1  # an iteration whose eval record metrics.jsonl holds already (resume)

        if resume:
            self._resume()
        self.engine = engine if engine is not None else self._make_engine()
        # Multi-agent envs (Werewolf) prompt through their own runner's policy (agent.options go to it).
        self.agent = None if is_multi_agent(cfg.env.id) else self._make_agent(cfg.agent.temperature)
        if cfg.run.save_rollouts:  # fail now, not after the first rollout
            from turngym.errors import require

            require("pyarrow", "parquet", "run.save_rollouts=true (rollouts saved as Parquet; "
                    "run.save_rollouts=false turns it off)")
        self.log = (MetricsLog(self.run_dir, cfg.run.tensorboard, open_trackers(self.run_dir, cfg.run, to_dict(cfg),
                                                                               resume=resume))
                    if self.dist.main else NullLog())
        from turngym.trainers.runlog import write_atomic

        if self.dist.main:
            write_atomic(self.run_dir / "config.yaml", dump_yaml(cfg))
            if resume:  # without a checkpoint the run starts afresh: none of the old records stay
                kept = self.log.truncate_after(self.iteration_done if self.resumed_from is not None else -1)
                prune_trajectory_files(self.run_dir, self.iteration_done if self.resumed_from is not None else -1)
                if any(r.get("kind") == "eval" and r.get("iteration") == self.iteration_done for r in kept):
                    self._evaluated_at = self.iteration_done
        if resume and self.dist.world > 1:
            self._evaluated_at = self.dist.broadcast_object(self._evaluated_at)
        self.dist.barrier()

    # ---- setup ------------------------------------------------------------------------------------------

    def _validate(self) -> None:
        # The same checks as load_config's, for configs built in code (tests, notebooks).
        validate_config(self.cfg)

    @property
    def device(self):
        """Where the policy's parameters live."""
        return next(self.model.parameters()).device

    @property
    def entropy_history(self) -> list[list[float]]:
        """EPO: per past iteration, the mean entropy per turn index (checkpointed)."""
        return self.policy_update.entropy_history

    @entropy_history.setter
    def entropy_history(self, value: list[list[float]]) -> None:
        self.policy_update.entropy_history = value

    def _lr_factor(self, step: int) -> float:
        o = self.cfg.optim
        total = max(1, self.cfg.run.iterations * self.cfg.algo.ppo_epochs * self.cfg.algo.mini_batches)
        warm = o.warmup_iters * self.cfg.algo.ppo_epochs * self.cfg.algo.mini_batches
        if warm and step < warm:
            return (step + 1) / warm
        if o.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warm) / max(1, total - warm))
        if o.schedule == "linear":
            return 1.0 - frac
        if o.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * frac))
        raise TurngymError(f"optim.schedule={o.schedule!r}: use constant, linear or cosine")

    def _make_engine(self):
        r = self.cfg.rollout
        if r.engine == "hf":
            from turngym.agents.engines.hf import HFEngine

            kwargs = {"max_batch_size": r.max_concurrent, **r.engine_kwargs}
            name = f"hf:{Path(str(self.cfg.model.path)).name}"
            if r.dtype == "model":
                return HFEngine((self.model, self.tokenizer), name=name, **kwargs)
            # A copy in another dtype (bf16 sampling on an AMX CPU); _sync_engine pushes every update into it.
            return HFEngine((self._merged_model(), self.tokenizer), name=name, dtype=r.dtype,
                            dtype_setting="rollout.dtype", **kwargs)
        from turngym.agents.engines.vllm_engine import VLLMEngine
        from turngym.trainers.model import save_model

        folder = self.run_dir / "engine-init"
        save_model(self.model, self.tokenizer, folder)
        engine = VLLMEngine(str(folder), **r.engine_kwargs)
        return engine

    def _make_agent(self, temperature: float):
        from turngym.agents.factory import make_agent

        a = self.cfg.agent
        return make_agent(a.name, self.cfg.env.id, temperature=temperature, top_p=a.top_p, max_tokens=a.max_tokens,
                          **a.options)

    def _sync_engine(self) -> None:
        """Make the engine sample from the current weights."""
        self.weights_version += 1
        engine = self.engine
        if isinstance(engine, InProcessEngine) and engine.model is self.model:
            engine.clear_prefix_cache()  # drop KV computed with the old weights
            return
        if isinstance(engine, WeightSyncEngine):
            model = self._merged_model(copy_always=False)
            engine.update_weights({k: v.detach() for k, v in model.state_dict().items()})

    def _merged_model(self, copy_always: bool = True):
        """The trained model as a plain one (a peft model's adapters merged into a copy); a copy when asked."""
        import copy

        from turngym.trainers.model import is_peft

        if is_peft(self.model):
            return copy.deepcopy(self.model).merge_and_unload()
        return copy.deepcopy(self.model) if copy_always else self.model

    # ---- checkpoints ------------------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"iteration": self.iteration_done, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                "log_z": None if self.log_z is None else self.log_z.detach().cpu(),
                "entropy_history": self.entropy_history, "weights_version": self.weights_version,
                "spa_progress": self.spa_state.state_dict(),
                "config": to_dict(self.cfg)}

    def save(self) -> Path:
        path = self.run_dir / f"checkpoint-{self.iteration_done}"
        model = self.dist.checkpoint_model(self.model)  # FSDP2: every rank gathers, rank 0 saves the full weights
        if self.dist.main:
            path = save_checkpoint(self.run_dir, self.iteration_done, model, self.tokenizer, self._state(),
                                   keep=self.cfg.run.keep_checkpoints)
        self.dist.barrier()
        return path

    def _resume(self) -> None:
        found = load_newest(self.run_dir, self._load_checkpoint)
        if found is None:
            print(f"turngym train: no checkpoint in {self.run_dir}: starting afresh", flush=True)
            return
        self.resumed_from = found[0]
        if self.dist.main:  # finish the pruning a kill right after the last save left undone
            prune_checkpoints(self.run_dir, self.iteration_done, self.cfg.run.keep_checkpoints)
        print(f"turngym train: resumed from {found[0]} (iteration {self.iteration_done})", flush=True)

    def _load_checkpoint(self, ckpt: Path) -> dict[str, Any]:
        """Restore everything from ``ckpt`` (after the config check); raises before or while restoring
        when a file is corrupt, and the next older checkpoint then overwrites all of it."""
        from turngym.trainers.model import load_weights_into

        state = load_state(ckpt)
        check_resume_config(state.get("config") or self._saved_config(), to_dict(self.cfg), ckpt)
        load_weights_into(self.model, ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        if self.log_z is not None and state.get("log_z") is not None:
            with self.torch.no_grad():
                self.log_z.copy_(state["log_z"].to(self.log_z.device))
        self.entropy_history = [list(x) for x in state.get("entropy_history", [])]
        self.spa_state.load_state_dict(state.get("spa_progress"))
        self.iteration_done = int(state["iteration"])
        self.weights_version = int(state.get("weights_version", 0))
        return state

    def _saved_config(self) -> dict[str, Any] | None:
        """RUN_DIR/config.yaml as written by the run (for a checkpoint without its own copy)."""
        path = self.run_dir / "config.yaml"
        if not path.is_file():
            return None
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None

    # ---- the loop -----------------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Run the remaining iterations; return the last train and eval records."""
        cfg = self.cfg
        bar = None
        if cfg.run.progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=cfg.run.iterations, initial=self.iteration_done, desc="train", unit="it")
            except ImportError:
                bar = None
        last: dict[str, Any] = {}
        evaluated_at = self._evaluated_at
        if self.iteration_done == 0 and cfg.run.eval_tasks > 0 and evaluated_at != 0:
            last["eval"] = self.evaluate()
            evaluated_at = 0
        try:
            while self.iteration_done < cfg.run.iterations:
                record = self.iteration()
                last["train"] = record
                it = self.iteration_done
                if cfg.run.eval_tasks > 0 and cfg.run.eval_every and it % cfg.run.eval_every == 0:
                    last["eval"] = self.evaluate()
                    evaluated_at = it
                if it % max(1, cfg.run.save_every) == 0 or it == cfg.run.iterations:
                    self.save()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(success=f"{record['success_rate']:.2f}", reward=f"{record['reward_mean']:.2f}")
            if cfg.run.eval_tasks > 0 and evaluated_at != self.iteration_done:
                last["eval"] = self.evaluate()
            self.dist.barrier()  # every rank done before any tears the process group down (at exit)
        finally:
            if bar is not None:
                bar.close()
            self.log.close()
        return last

    def rollout(self, iteration: int) -> tuple[list[Trajectory], RunStats]:
        cfg = self.cfg
        if is_multi_agent(cfg.env.id):
            return selfplay_rollout(cfg, self.engine, iteration)
        specs = plan_episodes(cfg.env.id, split=cfg.env.split, num_tasks=cfg.rollout.tasks_per_iter,
                              group_size=cfg.rollout.group_size, seed=derive_seed(cfg.run.seed, iteration),
                              env_kwargs=cfg.env.kwargs)
        if self.dist.world > 1:  # whole groups per rank: task t goes to rank t % world
            g = cfg.rollout.group_size
            specs = [sp for i, sp in enumerate(specs) if (i // g) % self.dist.world == self.dist.rank]
        runner = EpisodeRunner(cfg.env.id, self.agent, self.engine, env_kwargs=cfg.env.kwargs,
                               max_concurrent=cfg.rollout.max_concurrent, max_steps=cfg.env.max_steps or None,
                               schedule=cfg.rollout.schedule, deterministic=cfg.rollout.deterministic,
                               pool=cfg.rollout.env_pool, workers=cfg.rollout.env_workers or None)
        with self.dist.full_weights(self.model):  # FSDP2: the engine generates from gathered weights
            result = runner.run(specs)
        return result.trajectories, result.stats

    def iteration(self) -> dict[str, Any]:
        """One rollout + update; returns (and logs) its metrics."""
        a = self.cfg.algo
        it = self.iteration_done + 1
        if a.objective == "step_dpo":
            from turngym.trainers.step_dpo import step_dpo_iteration

            record = step_dpo_iteration(self, it)
            self._sync_engine()
            self.iteration_done = it
            record.update({"lr": self.scheduler.get_last_lr()[0], "weights_version": self.weights_version})
            self.log.write(record)
            return record
        t_start = time.perf_counter()
        trajs, stats = self.rollout(it)
        t_rollout = time.perf_counter() - t_start
        if self.cfg.run.save_rollouts:  # as the runner made them: env errors in, no penalty applied
            save_trajectory_file(self.run_dir, "rollouts", it, trajs, rank=self.dist.rank or None)
        errors = sum(t.error is not None for t in trajs)
        trajs = [t for t in trajs if t.error is None]
        if a.invalid_action_penalty:
            trajs = [_penalize_invalid(t, a.invalid_action_penalty) for t in trajs]
        record: dict[str, Any] = {"kind": "train", "iteration": it, **_rollout_metrics(trajs)}
        record["env_errors"] = errors
        train_trajs = trajs
        if a.dynamic_filter and trajs:
            from turngym.trainers.objectives import dynamic_filter_groups

            keep = dynamic_filter_groups([t.group_id for t in trajs], [t.total_reward for t in trajs])
            train_trajs = [t for t, k in zip(trajs, keep) if k]
        record["trained_episodes"] = len(train_trajs)

        t0 = time.perf_counter()
        update: dict[str, float] = {}
        if train_trajs:
            samples, adv = self._samples(train_trajs)
            record.update(_advantage_metrics(adv))
            record.update(self.credit_metrics)
            update = self.policy_update.run(self.loss_context(train_trajs), samples, it)
            update["distinct_plans"] = distinct_successful_plans(train_trajs)
        record["time_credit_update"] = time.perf_counter() - t0
        record.update(update)
        self._sync_engine()
        self.iteration_done = it
        wall = time.perf_counter() - t_start
        record.update({
            "lr": self.scheduler.get_last_lr()[0],
            "time_generate": stats.generate_s, "time_env": stats.env_wait_s, "time_rollout": t_rollout,
            "time_total": wall, "generated_tokens": stats.generated_tokens, "prompt_tokens": stats.prompt_tokens,
            "tokens_per_s": stats.generated_tokens / wall if wall > 0 else 0.0,
            "env_steps_per_s": stats.env_steps / wall if wall > 0 else 0.0,
            "weights_version": self.weights_version,
        })
        if self.log_z is not None:
            record["log_z"] = float(self.log_z.detach())
        record = self.dist.merge_records(record)
        self.log.write(record)
        return record

    # ---- credit and samples -------------------------------------------------------------------------------

    def _samples(self, trajs: list[Trajectory]):
        from turngym.credit import compute_advantages
        from turngym.trainers.tokens import build_samples, step_batch, verify_samples

        a = self.cfg.algo
        self.credit_metrics = {}
        if a.objective == "tb":
            adv = np.zeros(sum(t.num_turns for t in trajs))
        else:
            inputs = self._credit_inputs(trajs)
            batch = step_batch(trajs, **inputs.fields)
            adv = compute_advantages(a.estimator, batch, **{**dict(a.estimator_kwargs), **inputs.hparams})
            self.credit_metrics = inputs.metrics
        samples = build_samples(trajs, adv, mode=a.sample_mode, tokenizer=self.tokenizer)
        verify_samples(samples, trajs)
        return samples, np.asarray(adv, dtype=np.float64)

    def _credit_inputs(self, trajs: list[Trajectory]):
        """The StepBatch fields the estimator declares, each from its provider (trainers/credit_inputs.py)."""
        from turngym.trainers.credit_inputs import CreditSettings, credit_inputs

        a = self.cfg.algo
        settings = CreditSettings(igpo_answer_template=a.igpo_answer_template, progress_source=a.progress_source,
                                  progress_l2=a.progress_l2, progress_hidden=a.progress_hidden,
                                  progress_buffer=a.progress_buffer, seed=self.cfg.run.seed)
        return credit_inputs(a.estimator, dict(a.estimator_kwargs), trajs, self, settings, self.spa_state)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens (the ``StepScorer`` protocol)."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def score_steps(self, pairs: list[tuple[list[int], list[int]]], what: str) -> list[Any]:
        """Per-pair statistics of the current policy, no gradients (the ``StepScorer`` protocol).

        Each pair is (context ids, target ids), scored as one sequence ``context + target``.
        ``what``: ``"logprob"`` / ``"entropy"``: mean over the target ids of their log-prob / of the
        entropy of the distribution that predicts them (at the sampling temperature); ``"hidden"``:
        the final hidden state (float32 numpy vector) at the last target id (last context id if none).
        """
        if what not in ("logprob", "entropy", "hidden"):
            raise ValueError(f"score_steps: what={what!r}; use 'logprob', 'entropy' or 'hidden'")
        torch = self.torch
        from turngym.trainers.logprobs import final_hidden_states
        from turngym.trainers.tokens import TrainingSample, collate, pack_microbatches

        samples = []
        for context, target in pairs:
            mask = [0] * len(context) + [1] * len(target)
            samples.append(TrainingSample(input_ids=list(context) + list(target), loss_mask=mask, advantages=None,
                                          old_logprobs=None, segment_ids=[0 if m else -1 for m in mask],
                                          traj_index=0, steps=(0,), group_id=""))
        out: list[Any] = [None] * len(samples)
        device = self.device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for micro in pack_microbatches([len(s) for s in samples], self.cfg.optim.micro_batch_tokens):
                    batch = collate(samples, self.pad_id, indices=micro, device=device)
                    if what == "hidden":
                        hidden = final_hidden_states(self.model, batch.input_ids, batch.attention_mask,
                                                     position_ids=batch.position_ids)
                        last = batch.attention_mask.long().sum(-1) - 1
                        rows = hidden[torch.arange(len(micro), device=hidden.device), last].float().cpu().numpy()
                        for row, i in enumerate(micro):
                            out[i] = rows[row]
                        continue
                    logp, ent = self.forward(batch, True)
                    values = logp if what == "logprob" else ent
                    mask = batch.loss_mask > 0
                    means = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
                    for row, i in enumerate(micro):
                        out[i] = float(means[row])
        finally:
            self.model.train(was_training)
        return out

    # ---- the policy's forward, as the objectives see it -------------------------------------------------

    def loss_context(self, trajs: list[Trajectory] = ()) -> Any:
        """What the objectives read (:class:`~turngym.trainers.objectives.LossContext`): the algo config, the
        policy's forward, the reference, log Z, and the returns of ``trajs`` (this update's trajectories)."""
        from turngym.trainers.objectives import LossContext

        return LossContext(algo=self.cfg.algo, forward=self.forward, reference=self.reference, log_z=self.log_z,
                           returns=[t.total_reward for t in trajs])

    def forward(self, batch: Any, with_entropy: bool = False, model: Any = None):
        """Per-token log-probs (and entropies) of a collated batch under the policy (or ``model``), at the
        sampling temperature: :func:`~turngym.trainers.logprobs.sequence_logprobs`."""
        from turngym.trainers.logprobs import sequence_logprobs

        model = model if model is not None else self.train_model
        # model.autocast: the forward (and so the backward) in bf16, the weights and their gradients as they are.
        with self.torch.autocast(self.device.type, dtype=self.torch.bfloat16,
                                 enabled=self.autocast):
            return sequence_logprobs(model, batch.input_ids, batch.attention_mask, temperature=self.temperature,
                                     with_entropy=with_entropy, loss_mask=batch.loss_mask,
                                     position_ids=batch.position_ids, share_prefix=self.cfg.optim.share_prefix)

    # ---- evaluation ---------------------------------------------------------------------------------------

    def evaluate(self, split: str | None = None, num_tasks: int | None = None) -> dict[str, Any]:
        """Success on held-out tasks (one rollout per task at ``run.eval_temperature``); logged as kind=eval.

        Multi-agent envs: the policy's seats' win rate over fixed deals (``env.kwargs.eval_lineup``, default
        the LLM village against rule-based wolves). Data parallel: rank 0 evaluates; the others wait and get
        its record.
        """
        if self.dist.world > 1:
            with self.dist.full_weights(self.model):
                record = self._evaluate(split, num_tasks) if self.dist.main else None
            return self.dist.broadcast_object(record)
        return self._evaluate(split, num_tasks)

    def _evaluate(self, split: str | None = None, num_tasks: int | None = None) -> dict[str, Any]:
        cfg = self.cfg
        split = split or cfg.env.eval_split
        n = num_tasks or cfg.run.eval_tasks
        if is_multi_agent(cfg.env.id):
            t0 = time.perf_counter()
            lineup, seats, games = selfplay_evaluate(cfg, self.engine, n)
            rec = eval_record(seats, split=lineup, seconds=time.perf_counter() - t0)
            if cfg.run.save_rollouts:
                save_trajectory_file(self.run_dir, "eval", self.iteration_done, seats)
            record = {"kind": "eval", "iteration": self.iteration_done, **rec.to_dict(), "games": games}
            self.log.write(record)
            return record
        specs = plan_episodes(cfg.env.id, split=split, num_tasks=n, group_size=1, seed=derive_seed(cfg.run.seed, 99991),
                              env_kwargs=cfg.env.kwargs)
        agent = self._make_agent(cfg.run.eval_temperature)
        bar = progress_bar(len(specs), f"eval {self.iteration_done}", cfg.run.progress, unit="ep")
        runner = EpisodeRunner(cfg.env.id, agent, self.engine, env_kwargs=cfg.env.kwargs,
                               max_concurrent=cfg.rollout.max_concurrent, max_steps=cfg.env.max_steps or None,
                               schedule=cfg.rollout.schedule, deterministic=cfg.rollout.deterministic,
                               pool=cfg.rollout.env_pool, workers=cfg.rollout.env_workers or None,
                               on_trajectory=(lambda _: bar.update(1)) if bar is not None else None)
        t0 = time.perf_counter()
        try:
            trajs = runner.run(specs).trajectories
        finally:
            if bar is not None:
                bar.close()
        rec = eval_record(trajs, split=split, seconds=time.perf_counter() - t0)
        if cfg.run.save_rollouts:
            save_trajectory_file(self.run_dir, "eval", self.iteration_done, trajs)
        record = {"kind": "eval", "iteration": self.iteration_done, **rec.to_dict()}
        self.log.write(record)
        return record


# ---- helpers ------------------------------------------------------------------------------------------------


def _penalize_invalid(traj: Trajectory, penalty: float) -> Trajectory:
    steps = [replace(s, reward=s.reward - penalty) if not s.action_valid else s for s in traj.steps]
    return replace(traj, steps=steps, total_reward=float(sum(s.reward for s in steps)))


def _rollout_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    if not trajs:
        return {"episodes": 0, "success_rate": 0.0, "reward_mean": 0.0}
    steps = [s for t in trajs for s in t.steps]
    resp = [len(s.response_ids or []) for s in steps]
    rewards = [t.total_reward for t in trajs]
    return {
        "episodes": len(trajs),
        "success_rate": float(np.mean([t.won for t in trajs])),
        "reward_mean": float(np.mean(rewards)),
        "reward_std": float(np.std(rewards)),
        "turns_mean": float(np.mean([t.num_turns for t in trajs])),
        "response_tokens_mean": float(np.mean(resp)) if resp else 0.0,
        "invalid_action_rate": float(np.mean([not s.action_valid for s in steps])) if steps else 0.0,
        "format_ok_rate": float(np.mean([bool(s.info.get("format_ok", True)) for s in steps])) if steps else 0.0,
        "truncated_rate": float(np.mean([t.truncated for t in trajs])),
    }


def _advantage_metrics(adv: np.ndarray) -> dict[str, float]:
    if adv.size == 0:
        return {}
    return {"adv_mean": float(adv.mean()), "adv_std": float(adv.std()), "adv_min": float(adv.min()),
            "adv_max": float(adv.max()), "adv_zero_frac": float(np.mean(np.abs(adv) < 1e-12))}


def train(config: RLConfig, *, resume: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Build an :class:`RLTrainer` and run it to ``config.run.iterations``."""
    return RLTrainer(config, resume=resume, **kwargs).train()
