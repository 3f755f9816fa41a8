"""Supervised fine-tuning (a warm start for RL) on oracle or recorded trajectories, with the RL masking rules.

Data (``data.source``):

``oracle``
    Plays ``data.episodes`` episodes of ``env.split`` with the env's oracle
    and writes each turn in the AGENT's own format: the prompt is what the
    agent would see (its system prompt, exemplars, context window, prefilled
    words, rendered by the same :class:`~turngym.agents.context.ChatRenderer`
    the runner uses, so full-context prompts continue one token stream), the
    response is ``agent.render_reply(thought, action)`` (a short plan-style
    thought; minus the prefilled words) followed by the end-of-turn token,
    so the model learns to stop.
a ``.jsonl`` path
    Trajectories recorded by ``turngym bench --out`` (or the runner) with
    engine token ids: the sampled ids are the targets, exactly as recorded
    (``data.only_won`` keeps winning episodes only: rejection-sampling SFT).

Both become :func:`~turngym.trainers.tokens.build_samples` samples (loss
mask 1 on response ids only), and the loss is the token-mean negative
log-likelihood through :func:`~turngym.trainers.logprobs.sequence_logprobs`
(``model.autocast=bfloat16``: the forward and backward in bf16, the weights,
gradients and AdamW in ``model.dtype``, as in the RL trainer).
Steps (:func:`step_plan`): ``data.batch_size`` shuffled samples
(``data.batch_by=sample``) or whole shuffled trajectories
(``data.batch_by=trajectory``). Under ``optim.share_prefix`` (default on)
micro-batches are packed by their prefix tree's size and what their rows
share runs once: a system prompt, and with whole trajectories the transcript
each turn's prompt repeats (``benchmarks/sft_sharing.py``).
The result is a checkpoint folder that ``turngym bench --model`` and the RL
recipes (``model.path=RUN_DIR/checkpoint-N``) load. The evaluations before and
after training are logged as the RL trainer's (``metrics.jsonl``, TensorBoard,
W&B / MLflow with ``run.wandb`` / ``run.mlflow``) and their trajectories saved
to ``RUN_DIR/eval/iter-N.parquet`` (``run.save_rollouts``); a progress bar
(``run.progress``, on a terminal) follows the optimizer steps and the evaluations.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from turngym.agents.runner import derive_seed, plan_episodes
from turngym.agents.types import Completion, Step, Trajectory, load_trajectories
from turngym.errors import TurngymError
from turngym.trainers.config import SFTConfig, dump_yaml, to_dict
from turngym.trainers.runlog import (
    MetricsLog,
    open_trackers,
    progress_bar,
    save_checkpoint,
    save_trajectory_file,
    write_atomic,
)


def oracle_thought(action: str) -> str:
    return f"The plan's next step is {action}."


def oracle_trajectories(engine: Any, agent: Any, env_id: str, *, split: str, episodes: int, seed: int,
                        env_kwargs: dict[str, Any] | None = None, max_steps: int | None = None) -> list[Trajectory]:
    """Oracle play rendered in ``agent``'s format with ``engine``'s tokenizer (see the module docstring)."""
    from turngym.agents.context import ChatRenderer, PreviousRequest
    from turngym.agents.pool import make_env

    tok = engine.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    renderer = ChatRenderer(engine)
    env = make_env(env_id, env_kwargs)
    limit = max_steps or getattr(env.spec, "max_episode_steps", None) or 50
    specs = plan_episodes(env_id, split=split, num_tasks=episodes, group_size=1, seed=seed, env_kwargs=env_kwargs)
    out: list[Trajectory] = []
    try:
        for spec in specs:
            obs, info = env.reset(seed=spec.seed, options={"task_id": spec.task_id})
            memory = agent.start(info.get("instruction", ""), obs, info, seed=spec.seed)
            traj = Trajectory(env_id=env_id, task_id=info.get("task_id", spec.task_id), group_id=spec.group_id,
                              seed=spec.seed, agent=f"oracle-as-{getattr(agent, 'name', 'agent')}")
            previous = None
            for _ in range(limit):
                turn = agent.prompt(memory)
                prompt, _, prefix = renderer.render(turn.messages, turn.tools, previous, turn.response_prefix)
                if not isinstance(prompt, list):
                    raise TurngymError("SFT needs an engine that renders prompts to token ids (hf)")
                action = env.unwrapped.oracle_action()
                reply = agent.render_reply(oracle_thought(action), action)
                body = reply[len(prefix):] if prefix and reply.startswith(prefix) else reply
                ids = [int(i) for i in tok(body, add_special_tokens=False)["input_ids"]]
                if eos is not None:
                    ids.append(int(eos))
                text = body
                previous = PreviousRequest(turn.messages, turn.tools, list(prompt), prefix + text, ids)
                decision = agent.parse(memory, Completion(text=prefix + text, token_ids=ids))
                step = Step(observation=obs, response=text, action=action, prompt_ids=list(prompt), response_ids=ids,
                            state_key=info.get("state_key"), context_mode=turn.context_mode)
                obs, reward, term, trunc, info = env.step(decision.action or action)
                step.reward, step.terminated, step.truncated = float(reward), bool(term), bool(trunc)
                step.action_valid = bool(info.get("action_valid", True))
                traj.steps.append(step)
                agent.observe(memory, action, obs, reward, info)
                if term or trunc:
                    break
            traj.won = bool(info.get("won", False))
            traj.total_reward = float(sum(s.reward for s in traj.steps))
            out.append(traj)
    finally:
        env.close()
    return out


def step_plan(samples: list[Any], epochs: int, batch_size: int, batch_by: str,
              rng: np.random.Generator) -> list[tuple[int, list[int]]]:
    """The optimizer steps of an SFT run: ``(epoch, sample indices)`` each, drawn with ``rng``.

    ``batch_by="sample"``: each epoch a permutation of the samples cut into ``batch_size`` pieces.
    ``batch_by="trajectory"``: each epoch a permutation of the trajectories (``traj_index``); a step takes
    them in that order while its samples stay within ``batch_size`` (at least one trajectory), so a
    trajectory's samples always train together. Within a step, samples are in trajectory then step order
    (what :func:`~turngym.trainers.tokens.pack_prefix_trees` needs to share a trajectory's transcript).
    """
    plan: list[tuple[int, list[int]]] = []
    if batch_by == "sample":
        for epoch in range(epochs):
            order = rng.permutation(len(samples))
            for start in range(0, len(order), batch_size):
                plan.append((epoch, sorted(int(i) for i in order[start:start + batch_size])))
        return plan
    if batch_by != "trajectory":
        raise ValueError(f"batch_by must be 'sample' or 'trajectory', got {batch_by!r}")
    by_traj: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_traj.setdefault(s.traj_index, []).append(i)
    groups = list(by_traj.values())
    for epoch in range(epochs):
        step: list[int] = []
        for g in rng.permutation(len(groups)):
            members = groups[int(g)]
            if step and len(step) + len(members) > batch_size:
                plan.append((epoch, sorted(step)))
                step = []
            step += members
        if step:
            plan.append((epoch, sorted(step)))
    return plan


def step_microbatches(samples: list[Any], idx: list[int], share_prefix: bool,
                      micro_batch_tokens: int) -> list[list[int]]:
    """A step's micro-batches (positions in ``idx``): :func:`~turngym.trainers.tokens.pack_forward`. Under
    ``share_prefix`` packed by prefix-tree size in the given order when that runs fewer tokens (what rows
    share, a system prompt or a trajectory's repeated transcript, runs once), else by padded size within
    ``micro_batch_tokens``."""
    from turngym.trainers.logprobs import max_tree_tokens
    from turngym.trainers.tokens import pack_forward

    return pack_forward([samples[i] for i in idx], micro_batch_tokens, share_prefix, max_tree_tokens())


class SFTTrainer:
    """Fine-tunes ``config.model`` on oracle or recorded trajectories (see the module docstring)."""

    def __init__(self, config: SFTConfig, *, model: Any = None, tokenizer: Any = None):
        import torch

        from turngym.agents.engines.hf import HFEngine
        from turngym.agents.factory import make_agent

        self.cfg = cfg = config
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.torch = torch
        if model is None:
            from turngym.trainers.model import load_policy

            model, tokenizer = load_policy(cfg.model)
        elif cfg.model.lora:
            from turngym.trainers.model import wrap_lora

            model = wrap_lora(model, cfg.model)
        self.model, self.tokenizer = model, tokenizer
        from turngym.trainers.model import warn_if_slow_autocast

        warn_if_slow_autocast(cfg.model, next(model.parameters()).device)
        self.engine = HFEngine((model, tokenizer), name=f"hf:{Path(str(cfg.model.path)).name}")
        a = cfg.agent
        self.agent_factory = lambda temperature: make_agent(a.name, cfg.env.id, temperature=temperature,
                                                            top_p=a.top_p, max_tokens=a.max_tokens, **a.options)
        self.run_dir = Path(cfg.run.dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_dir / "config.yaml", dump_yaml(cfg))
        if cfg.run.save_rollouts and cfg.run.eval_tasks:  # fail now, not after training
            from turngym.errors import require

            require("pyarrow", "parquet", "run.save_rollouts=true (evaluation trajectories saved as Parquet; "
                    "run.save_rollouts=false turns it off)")
        self.log = MetricsLog(self.run_dir, cfg.run.tensorboard, open_trackers(self.run_dir, cfg.run, to_dict(cfg)))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)

    def data(self) -> list[Trajectory]:
        d, cfg = self.cfg.data, self.cfg
        if d.source == "oracle":
            return oracle_trajectories(self.engine, self.agent_factory(1.0), cfg.env.id, split=cfg.env.split,
                                       episodes=d.episodes, seed=derive_seed(cfg.run.seed, 5),
                                       env_kwargs=cfg.env.kwargs, max_steps=cfg.env.max_steps or None)
        path = Path(d.source)
        if not path.is_file():
            raise TurngymError(f"data.source={d.source!r} is neither 'oracle' nor a trajectories .jsonl file")
        trajs = [t for t in load_trajectories(path) if t.error is None and (t.won or not d.only_won)]
        if not trajs:
            raise TurngymError(f"{str(path)!r} holds no usable trajectories (only_won={d.only_won})")
        return trajs

    def train(self) -> dict[str, Any]:
        from turngym.trainers.logprobs import sequence_logprobs
        from turngym.trainers.model import adamw, autocast_enabled, trainable_parameters
        from turngym.trainers.tokens import build_samples, collate, verify_samples

        torch, cfg = self.torch, self.cfg
        result: dict[str, Any] = {"before": self.evaluate(0)} if cfg.run.eval_tasks else {}
        t0 = time.perf_counter()
        trajs = self.data()
        samples = build_samples(trajs, None, mode="auto", tokenizer=self.tokenizer)
        verify_samples(samples, trajs)
        opt = adamw(trainable_parameters(self.model), cfg.optim)
        rng = np.random.default_rng(derive_seed(cfg.run.seed, 11))
        step = 0
        device = next(self.model.parameters()).device
        autocast = autocast_enabled(cfg.model)
        self.model.train()
        plan = step_plan(samples, cfg.data.epochs, cfg.data.batch_size, cfg.data.batch_by, rng)
        bar = progress_bar(len(plan), "sft", cfg.run.progress, unit="step")
        share = cfg.optim.share_prefix
        for epoch, idx in plan:
            n_tok = sum(samples[i].num_loss_tokens for i in idx)
            opt.zero_grad(set_to_none=True)
            total, correct = 0.0, 0
            for local in step_microbatches(samples, idx, share, cfg.optim.micro_batch_tokens):
                batch = collate(samples, self.pad_id, indices=[idx[j] for j in local], device=device)
                # model.autocast: the forward (and so the backward) in bf16; weights, gradients and AdamW
                # stay in model.dtype (the RL trainer's rule)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    logp = sequence_logprobs(self.model, batch.input_ids, batch.attention_mask,
                                             loss_mask=batch.loss_mask, position_ids=batch.position_ids,
                                             share_prefix=share)
                mask = batch.loss_mask > 0
                loss = -torch.where(mask, logp, torch.zeros_like(logp)).sum() / max(1, n_tok)
                loss.backward()
                total += float(loss.detach())
                correct += int((logp.detach()[mask] > np.log(0.5)).sum())
            if cfg.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trainable_parameters(self.model), cfg.optim.max_grad_norm)
            opt.step()
            step += 1
            self.log.write({"kind": "train", "iteration": step, "epoch": epoch, "nll": total,
                            "confident_token_frac": correct / max(1, n_tok), "tokens": n_tok,
                            "time_total": time.perf_counter() - t0})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, nll=f"{total:.3f}")
        if bar is not None:
            bar.close()
        opt.zero_grad(set_to_none=True)
        self.iteration_done = step
        ckpt = save_checkpoint(self.run_dir, step, self.model, self.tokenizer,
                               {"iteration": step, "kind": "sft", "episodes": len(trajs), "samples": len(samples)},
                               keep=self.cfg.run.keep_checkpoints)
        result["checkpoint"] = str(ckpt)
        result["episodes"] = len(trajs)
        result["samples"] = len(samples)
        if cfg.run.eval_tasks:
            result["after"] = self.evaluate(step)
        self.log.close()
        return result

    def evaluate(self, iteration: int) -> dict[str, Any]:
        """Success on ``env.eval_split`` (one rollout per task at ``run.eval_temperature``): the RL trainer's
        eval record (:class:`~turngym.agents.evaluation.EvalRecord`), logged as kind=eval."""
        from turngym.agents.evaluation import eval_record
        from turngym.agents.runner import EpisodeRunner

        cfg = self.cfg
        specs = plan_episodes(cfg.env.id, split=cfg.env.eval_split, num_tasks=cfg.run.eval_tasks, group_size=1,
                              seed=derive_seed(cfg.run.seed, 99991), env_kwargs=cfg.env.kwargs)
        bar = progress_bar(len(specs), f"eval {iteration}", cfg.run.progress, unit="ep")
        runner = EpisodeRunner(cfg.env.id, self.agent_factory(cfg.run.eval_temperature), self.engine,
                               env_kwargs=cfg.env.kwargs, max_steps=cfg.env.max_steps or None,
                               on_trajectory=(lambda _: bar.update(1)) if bar is not None else None)
        t0 = time.perf_counter()
        try:
            trajs = runner.run(specs).trajectories
        finally:
            if bar is not None:
                bar.close()
        rec = eval_record(trajs, split=cfg.env.eval_split, seconds=time.perf_counter() - t0)
        if cfg.run.save_rollouts:
            save_trajectory_file(self.run_dir, "eval", iteration, trajs)
        record = {"kind": "eval", "iteration": iteration, **rec.to_dict()}
        self.log.write(record)
        return record
