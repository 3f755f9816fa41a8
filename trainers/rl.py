"""The multi-turn RL trainer: rollouts -> credit -> token advantages -> policy update -> weight sync, resumable.

One iteration (:meth:`RLTrainer.iteration`):

1. **Rollout.** ``rollout.tasks_per_iter`` tasks of ``env.split``, chosen by
   ``(run.seed, iteration)``, ``rollout.group_size`` episodes each, played by
   the batched :class:`~turngym.agents.runner.EpisodeRunner` with the agent
   and the engine (``hf``: the trained module itself, so no weight copy;
   ``vllm``: weights pushed after every update). Every episode's sampling
   seeds derive from its spec, so an iteration replays identically.
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
6. **Update.** ``algo.ppo_epochs`` x ``algo.mini_batches`` optimizer
   steps; each mini-batch is split into micro-batches under
   ``optim.micro_batch_tokens`` (gradient accumulation with global loss
   normalizers, so the result does not depend on the split). Log-probs and
   entropies come from :func:`~turngym.trainers.logprobs.sequence_logprobs`
   (the ``kernels`` fused op: no [tokens x vocab] logits), the loss from
   :func:`turngym.kernels.policy_loss.policy_loss_from_logprobs`
   (PPO-clip, clip-higher, dual-clip, KL to the reference with k1/k2/k3,
   entropy bonus, every aggregation mode), plus the opt-in objectives below.
7. **Sync and log.** The engine sees the new weights; metrics go to
   ``metrics.jsonl`` and TensorBoard; checkpoints every ``run.save_every``.

Opt-in objectives (formulas from ``shared/research/credit-spec.md``):

* **EPO** (Xu et al., arXiv 2509.22576): ``L = L_pg - c_H [agg(H) - c_s agg(P)]``
  with ``P_t = relu(H_t - r_hi * Hbar_k) + relu(r_lo * Hbar_k - H_t)`` where
  ``Hbar_k`` is the historical mean entropy of turn index k (mean over past
  iterations). The released code's penalty is a constant mask with no
  gradient; this hinge is the differentiable form of the paper's intent.
* **AEPO** (Dong et al., arXiv 2510.14545): entropy-balanced clipping keeps
  the gradient of tokens with ``A > 0`` and ``r > 1 + eps_high`` bounded
  at ``-A (1 + eps_high)`` instead of dropping it (forward loss unchanged):
  added here as ``-A (1 + eps_high) (log pi - sg(log pi))`` on exactly those
  tokens; entropy-aware advantage ``A' = A (1 + alpha sg(H_norm))`` with H
  normalized over the valid tokens of the micro-batch.
* **FoR trajectory balance** (Yu et al., arXiv 2406.05673):
  ``L_TB(tau) = (log Z + sum_t log pi(a_t | s_t) - log R(tau) / T)^2``,
  ``log R = log max(R, floor)``, with ``log Z`` one learned scalar (its own
  learning rate ``algo.tb_logz_lr``; FoR learns it per problem family);
  ``sum_t`` runs over every sampled token of every turn. No advantages are
  used. The solution-diversity metric (distinct successful action
  sequences per task) is logged for every objective.

Resume (``resume=True``): the newest complete checkpoint's weights,
optimizer, scheduler, RNG states, log Z, EPO history and iteration are
restored and ``metrics.jsonl`` is cut back to that iteration; since tasks,
sampling seeds and mini-batch order derive from ``(run.seed, iteration)``,
a resumed run logs the same metrics as an uninterrupted one on CPU.

Depends on ``turngym.agents``, ``turngym.credit``, ``turngym.kernels`` and
this package's token layer; torch and transformers (``train`` extra).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from turngym.agents.runner import EpisodeRunner, derive_seed, plan_episodes
from turngym.agents.types import Trajectory
from turngym.errors import TurngymError
from turngym.trainers.config import RLConfig, dump_yaml, to_dict, validate_config
from turngym.trainers.credit_inputs import SPAProgressState
from turngym.trainers.runlog import (
    MetricsLog,
    latest_checkpoint,
    load_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


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

        self.cfg = cfg = config
        self._validate()
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.torch = torch
        self.dist = _Distributed.from_env()
        if model is None:
            from turngym.trainers.model import load_policy

            model, tokenizer = load_policy(cfg.model)
        elif tokenizer is None:
            raise TurngymError("RLTrainer got a model without its tokenizer: pass tokenizer=...")
        elif cfg.model.lora:
            from turngym.trainers.model import wrap_lora

            model = wrap_lora(model, cfg.model)
        self.model, self.tokenizer = model, tokenizer
        self.model.train()
        self.dist.broadcast_parameters(self.model)  # replicas start equal (LoRA init is random)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.temperature = cfg.agent.temperature if cfg.agent.temperature > 0 else 1.0

        from turngym.trainers.model import Reference, trainable_parameters

        self.reference = Reference(self.model) if cfg.algo.kl_coef > 0 or cfg.algo.objective == "step_dpo" else None
        params = trainable_parameters(self.model)
        if not params:
            raise TurngymError("the model has no trainable parameters")
        groups = [{"params": params, "lr": cfg.optim.lr}]
        self.log_z = None
        if cfg.algo.objective == "tb":
            self.log_z = torch.nn.Parameter(torch.zeros((), dtype=torch.float32, device=self._device()))
            groups.append({"params": [self.log_z], "lr": cfg.algo.tb_logz_lr, "weight_decay": 0.0})
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas),
                                           weight_decay=cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.entropy_history: list[list[float]] = []  # EPO: per iteration, mean entropy per turn index
        self.spa_state = SPAProgressState()  # SPA's learned progress estimator: its replay of recent steps
        self.credit_metrics: dict[str, float] = {}
        self.iteration_done = 0
        self.weights_version = 0
        self._current_trajs: list[Trajectory] = []

        if resume:
            self._resume()
        self.engine = engine if engine is not None else self._make_engine()
        # Multi-agent envs (Werewolf) prompt through their own runner's policy (agent.options go to it).
        self.agent = None if _is_multi_agent(cfg.env.id) else self._make_agent(cfg.agent.temperature)
        self.log = MetricsLog(self.run_dir, cfg.run.tensorboard) if self.dist.main else _NullLog()
        from turngym.trainers.runlog import write_atomic

        if self.dist.main:
            write_atomic(self.run_dir / "config.yaml", dump_yaml(cfg))
            if resume:
                self.log.truncate_after(self.iteration_done)
        self.dist.barrier()

    # ---- setup ------------------------------------------------------------------------------------------

    def _validate(self) -> None:
        # The same checks as load_config's, for configs built in code (tests, notebooks).
        validate_config(self.cfg)

    def _device(self):
        return next(self.model.parameters()).device

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
            return HFEngine((self.model, self.tokenizer), name=f"hf:{Path(str(self.cfg.model.path)).name}", **kwargs)
        from turngym.agents.engines.vllm_engine import VLLMEngine
        from turngym.trainers.model import save_model

        folder = self.run_dir / "engine-init"
        save_model(self.model, self.tokenizer, folder)
        engine = VLLMEngine(str(folder), **r.engine_kwargs)
        return engine

    def _make_agent(self, temperature: float):
        from turngym.agents.base import make_agent

        a = self.cfg.agent
        return make_agent(a.name, self.cfg.env.id, temperature=temperature, top_p=a.top_p, max_tokens=a.max_tokens,
                          **a.options)

    def _sync_engine(self) -> None:
        """Make the engine sample from the current weights."""
        self.weights_version += 1
        engine = self.engine
        if getattr(engine, "model", None) is self.model:
            hook = getattr(engine, "clear_prefix_cache", None)  # drop KV computed with the old weights
            if callable(hook):
                hook()
            return
        if hasattr(engine, "update_weights"):
            from turngym.trainers.model import is_peft

            model = self.model
            if is_peft(model):
                import copy

                model = copy.deepcopy(model).merge_and_unload()
            engine.update_weights({k: v.detach() for k, v in model.state_dict().items()})

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
        if self.dist.main:
            path = save_checkpoint(self.run_dir, self.iteration_done, self.model, self.tokenizer, self._state(),
                                   keep=self.cfg.run.keep_checkpoints)
        self.dist.barrier()
        return path

    def _resume(self) -> None:
        from turngym.trainers.model import load_weights_into

        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return
        state = load_state(ckpt)
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
        print(f"turngym train: resumed from {ckpt} (iteration {self.iteration_done})", flush=True)

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
        evaluated_at = -1
        if self.iteration_done == 0 and cfg.run.eval_tasks > 0:
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
        finally:
            if bar is not None:
                bar.close()
            self.log.close()
        return last

    def rollout(self, iteration: int) -> tuple[list[Trajectory], Any]:
        cfg = self.cfg
        if _is_multi_agent(cfg.env.id):
            return self._selfplay_rollout(iteration)
        specs = plan_episodes(cfg.env.id, split=cfg.env.split, num_tasks=cfg.rollout.tasks_per_iter,
                              group_size=cfg.rollout.group_size, seed=derive_seed(cfg.run.seed, iteration),
                              env_kwargs=cfg.env.kwargs)
        if self.dist.world > 1:  # whole groups per rank: task t goes to rank t % world
            g = cfg.rollout.group_size
            specs = [sp for i, sp in enumerate(specs) if (i // g) % self.dist.world == self.dist.rank]
        runner = EpisodeRunner(cfg.env.id, self.agent, self.engine, env_kwargs=cfg.env.kwargs,
                               max_concurrent=cfg.rollout.max_concurrent, max_steps=cfg.env.max_steps or None,
                               schedule=cfg.rollout.schedule, deterministic=cfg.rollout.deterministic)
        result = runner.run(specs)
        return result.trajectories, result.stats

    def _selfplay_rollout(self, iteration: int) -> tuple[list[Trajectory], Any]:
        """Werewolf self-play: ``tasks_per_iter x group_size`` games; the LLM seats' trajectories, grouped by role.

        ``env.kwargs``: ``lineup`` (default ``all=llm``: every seat is the policy), ``preset`` (default
        ``lspo7``) and any rules field. Each game is a different deal, so a group is one role across this
        iteration's games (the role's mean outcome is the baseline).
        """
        from types import SimpleNamespace

        from turngym.agents.werewolf_runner import WerewolfLLMPolicy, WerewolfRunner

        cfg = self.cfg
        kwargs = dict(cfg.env.kwargs)
        lineup, preset = kwargs.pop("lineup", "all=llm"), kwargs.pop("preset", "lspo7")
        kwargs.pop("eval_lineup", None)
        a = cfg.agent
        llm = WerewolfLLMPolicy(temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_tokens, **a.options)
        runner = WerewolfRunner(self.engine, lineup=lineup, preset=preset, env_config=kwargs, llm=llm,
                                max_concurrent=cfg.rollout.max_concurrent)
        n = cfg.rollout.tasks_per_iter * cfg.rollout.group_size
        result = runner.run([derive_seed(cfg.run.seed, iteration, k) for k in range(n)])
        trajs = [t for t in result.trajectories if t.steps]
        for t in trajs:
            t.group_id = f"{iteration}|{t.meta.get('role', '')}"
        st = result.stats
        prompt_tokens = sum(len(s.prompt_ids or []) for t in trajs for s in t.steps)
        stats = SimpleNamespace(generate_s=st.get("generate_s", 0.0), env_wait_s=0.0,
                                generated_tokens=st.get("generated_tokens", 0), prompt_tokens=prompt_tokens,
                                env_steps=sum(t.num_turns for t in trajs))
        return trajs, stats

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
            update = self._update(samples, train_trajs, it)
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
        device = self._device()
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
                    logp, ent = self._forward(batch, True)
                    values = logp if what == "logprob" else ent
                    mask = batch.loss_mask > 0
                    means = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
                    for row, i in enumerate(micro):
                        out[i] = float(means[row])
        finally:
            self.model.train(was_training)
        return out

    # ---- the update ---------------------------------------------------------------------------------------

    def _update(self, samples: list[Any], trajs: list[Trajectory], it: int) -> dict[str, float]:
        torch = self.torch
        cfg, a = self.cfg, self.cfg.algo
        self._current_trajs = trajs  # the TB loss reads rewards per trajectory
        t0 = time.perf_counter()
        single_pass = a.ppo_epochs * a.mini_batches == 1
        metrics: dict[str, list[float]] = defaultdict(list)
        turn_entropy: dict[int, list[float]] = defaultdict(list)
        # Old log-probs: the engine's (checked) or the trainer's before any update.
        check = self._old_logprobs(samples, single_pass, metrics)
        t_logprob = time.perf_counter() - t0
        hbar = self._entropy_reference()
        rng = np.random.default_rng(derive_seed(cfg.run.seed, it, 7))
        grad_norms = []
        for epoch in range(a.ppo_epochs):
            order = rng.permutation(len(samples)) if a.ppo_epochs * a.mini_batches > 1 else np.arange(len(samples))
            for mb in np.array_split(order, a.mini_batches):
                mb = [int(i) for i in mb]
                if not mb:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                norms = self._normalizers([samples[i] for i in mb], trajs)
                for micro in self._micro_batches(samples, mb):
                    m = self._micro_step(samples, micro, norms, hbar, single_pass and epoch == 0, turn_entropy)
                    for k, v in m.items():
                        metrics[k].append(v)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                self.dist.all_reduce_grads(params)
                if cfg.optim.max_grad_norm > 0:
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                else:
                    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
                grad_norms.append(float(norm))
                self.optimizer.step()
                self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if turn_entropy:
            width = max(turn_entropy) + 1
            self.entropy_history.append([float(np.mean(turn_entropy[k])) if k in turn_entropy else float("nan")
                                         for k in range(width)])
        out = {k: float(np.average(v, weights=metrics["_w"])) if k != "_w" and len(v) == len(metrics["_w"])
               else float(np.mean(v)) for k, v in metrics.items() if not k.startswith("_")}
        out.update(check)
        out["grad_norm"] = float(np.mean(grad_norms)) if grad_norms else 0.0
        out["time_logprob"] = t_logprob + out.pop("time_logprob_pass", 0.0)
        out["time_update"] = time.perf_counter() - t0 - t_logprob
        out["num_samples"] = len(samples)
        out["num_loss_tokens"] = int(sum(s.num_loss_tokens for s in samples))
        out["distinct_plans"] = distinct_successful_plans(trajs)
        return out

    def _micro_batches(self, samples: list[Any], indices: list[int]) -> list[list[int]]:
        from turngym.trainers.tokens import pack_microbatches

        budget = self.cfg.optim.micro_batch_tokens
        if self.cfg.algo.objective != "tb":
            local = pack_microbatches([len(samples[i]) for i in indices], budget)
            return [[indices[j] for j in mb] for mb in local]
        # Trajectory balance squares a sum over a whole trajectory: keep each trajectory's samples together.
        by_traj: dict[int, list[int]] = defaultdict(list)
        for i in indices:
            by_traj[samples[i].traj_index].append(i)
        out, cur, width = [], [], 0
        for _, members in sorted(by_traj.items()):
            w = max(width, *(len(samples[i]) for i in members))
            if cur and (len(cur) + len(members)) * w > budget:
                out.append(cur)
                cur, w = [], max(len(samples[i]) for i in members)
            cur += members
            width = w
        if cur:
            out.append(cur)
        return out

    def _normalizers(self, mb_samples: list[Any], trajs: list[Trajectory]) -> dict[str, float]:
        from turngym.trainers.tokens import loss_normalizers

        n = loss_normalizers(mb_samples)
        unit = self.cfg.algo.seq_unit
        # Data parallel: the normalizers count the whole (all ranks') mini-batch, so summed gradients are the
        # single-process gradient.
        tok, seqs, trajs_n = self.dist.sum([n["num_tokens"], n["num_steps"] if unit == "step" else n["num_samples"],
                                            len({s.traj_index for s in mb_samples})])
        longest = self.dist.max(max((len(s) for s in mb_samples), default=1))
        return {"num_tokens": float(max(1, tok)), "num_seqs": float(max(1, seqs)),
                "norm_constant": float(self.cfg.algo.norm_constant or longest),
                "num_trajs": float(max(1, trajs_n))}

    def _forward(self, batch, with_entropy: bool, model: Any = None):
        from turngym.trainers.logprobs import sequence_logprobs

        return sequence_logprobs(model if model is not None else self.model, batch.input_ids, batch.attention_mask,
                                 temperature=self.temperature, with_entropy=with_entropy, loss_mask=batch.loss_mask,
                                 position_ids=batch.position_ids)

    def _old_logprobs(self, samples: list[Any], single_pass: bool, metrics: dict) -> dict[str, float]:
        """Fill ``sample.old_logprobs`` as configured; return the engine-vs-trainer agreement metrics."""
        torch = self.torch
        from turngym.trainers.tokens import collate

        a = self.cfg.algo
        device = self._device()
        if single_pass and a.old_logprobs == "recompute":
            return {}  # measured in the first (only) forward pass of the update
        diffs, n = [], 0
        batches = self._micro_batches(samples, list(range(len(samples))))
        if a.old_logprobs == "engine":
            batches = batches[:1]  # a spot check: the engine's values are used
        t0 = time.perf_counter()
        with torch.no_grad():
            for micro in batches:
                batch = collate(samples, self.pad_id, indices=micro, device=device)
                logp = self._forward(batch, False)
                mask = batch.loss_mask > 0
                if batch.old_logprobs is not None and self.temperature == 1.0:
                    d = (logp - batch.old_logprobs).abs()[mask]
                    diffs.append(d)
                    n += int(mask.sum())
                if a.old_logprobs == "recompute":
                    for row, i in enumerate(micro):
                        s = samples[i]
                        s.old_logprobs = logp[row, : len(s)].cpu().tolist()
        out = {"time_logprob_pass": time.perf_counter() - t0}
        if diffs:
            d = torch.cat(diffs)
            out.update({"logprob_diff_max": float(d.max()) if d.numel() else 0.0,
                        "logprob_diff_mean": float(d.mean()) if d.numel() else 0.0})
            if a.old_logprobs == "engine" and out["logprob_diff_max"] > a.logprob_tolerance:
                raise TurngymError(
                    f"engine and trainer log-probs differ by up to {out['logprob_diff_max']:.3g} "
                    f"(> algo.logprob_tolerance={a.logprob_tolerance}): the ratio would be wrong. Use "
                    "algo.old_logprobs=recompute, or check dtype/temperature agreement between engine and trainer")
        return out

    def _entropy_reference(self):
        """EPO's Hbar per turn index: mean over past iterations (None before the first)."""
        if not self.cfg.algo.epo_smooth_coef or not self.entropy_history:
            return None
        width = max(len(h) for h in self.entropy_history)
        rows = np.full((len(self.entropy_history), width), np.nan)
        for r, h in enumerate(self.entropy_history):
            rows[r, : len(h)] = h
        with np.errstate(all="ignore"):
            return np.nanmean(rows, axis=0)

    def _micro_step(self, samples, micro, norms, hbar, first_pass, turn_entropy) -> dict[str, float]:
        torch = self.torch
        from turngym.kernels.policy_loss import aggregate_loss, policy_loss_from_logprobs
        from turngym.trainers.objectives import aepo_clip_correction, entropy_aware_advantage, epo_entropy_penalty
        from turngym.trainers.tokens import collate

        a = self.cfg.algo
        device = self._device()
        batch = collate(samples, self.pad_id, indices=micro, device=device)
        need_entropy = True
        logp, ent = self._forward(batch, need_entropy)
        mask = batch.loss_mask > 0
        out: dict[str, float] = {}
        engine_old = batch.old_logprobs
        if first_pass and a.old_logprobs == "recompute":
            if engine_old is not None and self.temperature == 1.0 and bool(mask.any()):
                d = (logp.detach() - engine_old).abs()[mask]
                out["logprob_diff_max"] = float(d.max())
                out["logprob_diff_mean"] = float(d.mean())
            old = logp.detach()
        else:
            old = engine_old if engine_old is not None else logp.detach()
        turn = None
        if a.epo_smooth_coef:  # EPO: per-token turn index (the samples' own step numbers) and per-turn entropy
            turn = torch.full_like(batch.segment_ids, -1)
            for row, i in enumerate(micro):
                s = samples[i]
                turn[row, : len(s)] = torch.tensor(s.segment_ids, dtype=torch.long, device=device)
            with torch.no_grad():
                k = turn[mask]
                sums = torch.bincount(k, weights=ent.detach()[mask].double())
                counts = torch.bincount(k)
                for t in torch.nonzero(counts).flatten().tolist():
                    turn_entropy[t].append(float(sums[t] / counts[t]))
        seq_ids = batch.segment_ids.clamp(min=0) if a.seq_unit == "step" else None

        if a.objective == "tb":
            loss, m = self._tb_loss(samples, micro, logp, mask, norms)
            out.update(m)
        else:
            adv = batch.advantages
            if a.aepo_advantage:
                adv = entropy_aware_advantage(adv, ent, mask, a.aepo_advantage)
            ref = None
            if self.reference is not None:
                with torch.no_grad(), self.reference.active() as ref_model:
                    ref = self._forward(batch, False, model=ref_model)
            scale = norms["norm_constant"] if a.loss_agg_mode == "seq-mean-token-sum-norm" else None
            loss, m = policy_loss_from_logprobs(
                logp, old, adv, batch.loss_mask, entropy=ent, ref_logprobs=ref, kl_coef=a.kl_coef,
                kl_estimator=a.kl_estimator, clip_low=a.clip_low, clip_high=a.clip_high,
                dual_clip=a.dual_clip or None, entropy_coef=a.entropy_coef if not a.epo_smooth_coef else 0.0,
                loss_agg_mode=a.loss_agg_mode, seq_ids=seq_ids, num_tokens=norms["num_tokens"],
                num_seqs=norms["num_seqs"], loss_scale_factor=scale)

            def agg(values):
                return aggregate_loss(values, batch.loss_mask, a.loss_agg_mode, seq_ids, norms["num_tokens"],
                                      norms["num_seqs"], scale)

            if a.aepo_clipping:
                term, kept = aepo_clip_correction(logp, old, adv, mask, a.clip_high)
                loss = loss + agg(term)
                out["aepo_kept_frac"] = float(kept.sum()) / max(1, int(mask.sum()))
            if a.epo_smooth_coef:
                penalty = (epo_entropy_penalty(ent, turn, hbar, min_ratio=a.epo_min_ratio, max_ratio=a.epo_max_ratio)
                           if hbar is not None else torch.zeros_like(ent))
                loss = loss - a.entropy_coef * (agg(ent) - a.epo_smooth_coef * agg(penalty))
                out["epo_penalty"] = float(penalty.detach()[mask].mean()) if bool(mask.any()) else 0.0
            out.update({k: v for k, v in m.items() if k != "num_tokens"})
        loss.backward()
        out["_w"] = float(mask.sum())
        return out

    def _tb_loss(self, samples, micro, logp, mask, norms):
        """FoR's trajectory balance over the trajectories of this micro-batch (they are whole here)."""
        torch = self.torch
        a = self.cfg.algo
        per_traj: dict[int, Any] = {}
        for row, i in enumerate(micro):
            s = samples[i]
            lp = torch.where(mask[row], logp[row], torch.zeros_like(logp[row])).sum()
            per_traj[s.traj_index] = per_traj.get(s.traj_index, 0.0) + lp
        from turngym.trainers.objectives import trajectory_balance_loss

        order = list(per_traj)
        rewards = [self._current_trajs[ti].total_reward for ti in order]
        per = trajectory_balance_loss(self.log_z, torch.stack([per_traj[ti] for ti in order]), rewards,
                                      reward_floor=a.tb_reward_floor, reward_temp=a.tb_reward_temp)
        loss = per.sum() / norms["num_trajs"]
        return loss, {"tb_loss": float(per.detach().mean()), "tb_residual_abs": float(per.detach().sqrt().mean())}

    def _selfplay_evaluate(self, games: int) -> dict[str, Any]:
        """Werewolf: the policy's seats' win rate over ``games`` fixed deals (``env.kwargs.eval_lineup``, default
        the LLM village against rule-based wolves)."""
        from turngym.agents.werewolf_runner import WerewolfLLMPolicy, WerewolfRunner

        cfg = self.cfg
        kwargs = dict(cfg.env.kwargs)
        kwargs.pop("lineup", None)
        lineup = kwargs.pop("eval_lineup", "village=llm,wolves=rule")
        preset = kwargs.pop("preset", "lspo7")
        a = cfg.agent
        llm = WerewolfLLMPolicy(temperature=cfg.run.eval_temperature, top_p=1.0, max_tokens=a.max_tokens, **a.options)
        t0 = time.perf_counter()
        result = WerewolfRunner(self.engine, lineup=lineup, preset=preset, env_config=kwargs, llm=llm,
                                max_concurrent=cfg.rollout.max_concurrent).run(
            [derive_seed(cfg.run.seed, 99991, k) for k in range(games)])
        seats = [t for t in result.trajectories if t.meta.get("policy") == "llm"]
        wins = sum(t.won for t in seats)
        lo, hi = wilson_interval(wins, len(seats))
        record = {"kind": "eval", "iteration": self.iteration_done, "split": lineup, "episodes": len(seats),
                  "games": len(result.games), "success_rate": wins / len(seats) if seats else 0.0, "ci_low": lo,
                  "ci_high": hi, "time_eval": time.perf_counter() - t0}
        self.log.write(record)
        return record

    # ---- evaluation ---------------------------------------------------------------------------------------

    def evaluate(self, split: str | None = None, num_tasks: int | None = None) -> dict[str, Any]:
        """Success on held-out tasks (one rollout per task at ``run.eval_temperature``); logged as kind=eval.

        Data parallel: rank 0 evaluates; the others wait and get its record.
        """
        if self.dist.world > 1:
            record = self._evaluate(split, num_tasks) if self.dist.main else None
            return self.dist.broadcast_object(record)
        return self._evaluate(split, num_tasks)

    def _evaluate(self, split: str | None = None, num_tasks: int | None = None) -> dict[str, Any]:
        cfg = self.cfg
        split = split or cfg.env.eval_split
        n = num_tasks or cfg.run.eval_tasks
        if _is_multi_agent(cfg.env.id):
            return self._selfplay_evaluate(n)
        specs = plan_episodes(cfg.env.id, split=split, num_tasks=n, group_size=1, seed=derive_seed(cfg.run.seed, 99991),
                              env_kwargs=cfg.env.kwargs)
        agent = self._make_agent(cfg.run.eval_temperature)
        runner = EpisodeRunner(cfg.env.id, agent, self.engine, env_kwargs=cfg.env.kwargs,
                               max_concurrent=cfg.rollout.max_concurrent, max_steps=cfg.env.max_steps or None,
                               schedule=cfg.rollout.schedule, deterministic=cfg.rollout.deterministic)
        t0 = time.perf_counter()
        trajs = [t for t in runner.run(specs).trajectories if t.error is None]
        wins = sum(t.won for t in trajs)
        lo, hi = wilson_interval(wins, len(trajs))
        record = {"kind": "eval", "iteration": self.iteration_done, "split": split, "episodes": len(trajs),
                  "success_rate": wins / len(trajs) if trajs else 0.0, "ci_low": lo, "ci_high": hi,
                  "reward_mean": float(np.mean([t.total_reward for t in trajs])) if trajs else 0.0,
                  "turns_mean": float(np.mean([t.num_turns for t in trajs])) if trajs else 0.0,
                  "time_eval": time.perf_counter() - t0}
        self.log.write(record)
        return record



# ---- data parallel ------------------------------------------------------------------------------------------


class _NullLog:
    def write(self, record: dict[str, Any]) -> None:
        pass

    def truncate_after(self, iteration: int) -> None:
        pass

    def close(self) -> None:
        pass


#: record keys that add up across ranks (the others are averaged, weighted by each rank's episodes; times: max).
_SUM_KEYS = ("episodes", "env_errors", "trained_episodes", "generated_tokens", "prompt_tokens", "num_samples",
             "num_loss_tokens", "pairs", "tokens_per_s", "env_steps_per_s")


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class _Distributed:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a no-op.

    Each rank rolls out its share of the tasks (whole groups), computes its
    micro-batches' gradients with the global loss normalizers, and the
    gradients are summed across ranks before clipping and the optimizer step,
    so every rank applies the same update (replicas stay equal) and the result
    is the single-process one up to summation order. Backend: NCCL on GPUs,
    gloo on CPUs.
    """

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @classmethod
    def from_env(cls) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            # Torn down before the interpreter's own exit: gloo's threads alive when C++ statics are
            # destroyed abort the process ("terminate called without an active exception"), now and then.
            atexit.register(_destroy_process_group)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _reduce(self, values: list[float], op: str) -> list[float]:
        if self.world <= 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, "sum")

    def max(self, value: float) -> float:
        return self._reduce([value], "max")[0]

    def all_reduce_grads(self, params: list[Any]) -> None:
        if self.world <= 1:
            return
        import torch
        import torch.distributed as dist

        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def broadcast_parameters(self, model: Any) -> None:
        if self.world <= 1:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in model.parameters():
                dist.broadcast(p.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def merge_records(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.world <= 1:
            return record
        import torch.distributed as dist

        records: list[Any] = [None] * self.world
        dist.all_gather_object(records, record)
        weights = [max(1, int(r.get("episodes", 0))) for r in records]
        merged: dict[str, Any] = {}
        for key, own in record.items():
            vals = [r.get(key) for r in records]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                merged[key] = own
            elif key in _SUM_KEYS:
                merged[key] = sum(vals)
            elif key.startswith("time") or key.endswith("_max") or key == "iteration":
                merged[key] = max(vals)
            else:
                merged[key] = float(np.average(vals, weights=weights))
        merged["world_size"] = self.world
        return merged


# ---- helpers ------------------------------------------------------------------------------------------------


def _penalize_invalid(traj: Trajectory, penalty: float) -> Trajectory:
    steps = [replace(s, reward=s.reward - penalty) if not s.action_valid else s for s in traj.steps]
    return replace(traj, steps=steps, total_reward=float(sum(s.reward for s in steps)))


def _is_multi_agent(env_id: str) -> bool:
    from turngym.envs import registry

    entry = registry().get(env_id)
    return entry is not None and entry.kind == "pettingzoo"


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
