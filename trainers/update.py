"""The RL trainer's policy update: ``algo.ppo_epochs`` x ``algo.mini_batches`` optimizer steps on one iteration's samples.

:meth:`PolicyUpdate.run` (steps 5 and 6 of :mod:`turngym.trainers.rl`):

* **Old log-probs.** ``recompute``: the trainer's, before any step (with one
  epoch and one mini-batch the first forward pass IS the old policy, so no
  extra pass is made); ``engine``: the engine's, after a spot check of
  their agreement with the trainer's within ``algo.logprob_tolerance``.
  The engine-vs-trainer difference is logged either way.
* **Mini-batches** in an order drawn from ``(run.seed, iteration)``, each
  split into micro-batches under ``optim.micro_batch_tokens`` (trajectory
  balance keeps each trajectory in one micro-batch) whose gradients
  accumulate with the mini-batch's global loss normalizers (summed across
  data-parallel ranks), so the result does not depend on the split.
* **Loss.** Per micro-batch the objective picked by ``algo.objective`` plus
  the opt-in terms, each ``objective(ctx, micro_batch)``
  (:mod:`turngym.trainers.objectives`); AEPO's entropy-aware advantage and
  EPO's per-turn entropy history (its ``Hbar_k``) are kept here.
* **Step.** Gradients reduced across ranks by the data-parallel wrapper
  (DDP or FSDP2) in the last micro-batch's backward, clipped to
  ``optim.max_grad_norm``, one optimizer and scheduler step.

Depends on torch, numpy, ``turngym.agents.runner`` (seeds) and this
package's token layer, objectives and data-parallel handle; not on the trainer.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from turngym.agents.runner import derive_seed
from turngym.errors import TurngymError
from turngym.trainers.config import RLConfig
from turngym.trainers.distributed import Distributed
from turngym.trainers.objectives import LossContext, MicroBatch, Objective, entropy_aware_advantage
from turngym.trainers.tokens import TrainingSample, collate, loss_normalizers, pack_forward


class PolicyUpdate:
    """The gradient steps of the RL trainer (see the module docstring).

    Args:
        config: the run's :class:`~turngym.trainers.config.RLConfig`.
        model: the policy (its parameters say the device).
        optimizer, scheduler: stepped once per mini-batch.
        dist: the data-parallel handle (:class:`~turngym.trainers.distributed.Distributed`).
        pad_id: the padding id of collated batches.
        train_model: the data-parallel wrapper the loss's forward goes through
            (:meth:`~turngym.trainers.distributed.Distributed.wrap`; default ``model``).
        temperature: the sampling temperature (engine log-probs are compared only at 1).
        objective, loss_terms: the loss of a micro-batch (:data:`~turngym.trainers.objectives.OBJECTIVES`,
            :func:`~turngym.trainers.objectives.loss_terms`).
    """

    def __init__(self, config: RLConfig, model: Any, optimizer: Any, scheduler: Any, dist: Distributed, *,
                 pad_id: int, temperature: float, objective: Objective, loss_terms: list[Objective],
                 train_model: Any = None):
        self.cfg = config
        self.model = model
        self.train_model = train_model if train_model is not None else model
        # Parameters whose gradients the wrapper reduces; the others (log Z) are summed here.
        self._wrapped = {id(p) for p in model.parameters()} if train_model is not None else set()
        self.optimizer, self.scheduler, self.dist = optimizer, scheduler, dist
        self.pad_id, self.temperature = pad_id, temperature
        self.objective, self.loss_terms = objective, loss_terms
        self.entropy_history: list[list[float]] = []  # EPO: per iteration, mean entropy per turn index

    @property
    def device(self):
        return next(self.model.parameters()).device

    def run(self, ctx: LossContext, samples: list[TrainingSample], it: int) -> dict[str, float]:
        """The optimizer steps of iteration ``it`` on ``samples``; returns the update's metrics."""
        cfg, a = self.cfg, self.cfg.algo
        t0 = time.perf_counter()
        single_pass = a.ppo_epochs * a.mini_batches == 1
        metrics: dict[str, list[float]] = defaultdict(list)
        turn_entropy: dict[int, list[float]] = defaultdict(list)
        # Old log-probs: the engine's (checked) or the trainer's before any update.
        check = self._old_logprobs(ctx, samples, single_pass)
        t_logprob = time.perf_counter() - t0
        hbar = self.entropy_reference()
        rng = np.random.default_rng(derive_seed(cfg.run.seed, it, 7))
        grad_norms = []
        for epoch in range(a.ppo_epochs):
            order = rng.permutation(len(samples)) if a.ppo_epochs * a.mini_batches > 1 else np.arange(len(samples))
            for mb in np.array_split(order, a.mini_batches):
                mb = [int(i) for i in mb]
                if not mb:
                    continue
                self.optimizer.zero_grad(set_to_none=True)
                norms = self._normalizers([samples[i] for i in mb])
                micros = self.micro_batches(samples, sorted(mb))  # a trajectory's turns together (prefix trees)
                for j, micro in enumerate(micros):
                    # Gradient accumulation: the data-parallel wrapper reduces across ranks in the last backward.
                    with self.dist.grad_sync(self.train_model, j == len(micros) - 1):
                        m = self._micro_step(ctx, samples, micro, norms, hbar, single_pass and epoch == 0,
                                             turn_entropy)
                    for k, v in m.items():
                        metrics[k].append(v)
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                self.dist.all_reduce_([p.grad for p in params if p.grad is not None and id(p) not in self._wrapped])
                # inf: no clip, the norm only (its coefficient clamps to 1); works on FSDP2's DTensor gradients.
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
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
        return out

    def micro_batches(self, samples: list[TrainingSample], indices: list[int]) -> list[list[int]]:
        """``indices`` packed into micro-batches under ``optim.micro_batch_tokens`` (``tb``: whole trajectories).

        :func:`~turngym.trainers.tokens.pack_forward`: under ``optim.share_prefix``, the samples in the order
        given (a trajectory's turns next to each other when the update is one pass) packed as prefix trees when
        that runs fewer tokens, so the transcript a multi-turn episode's prompts repeat runs once per micro-batch.
        """
        budget = self.cfg.optim.micro_batch_tokens
        if self.cfg.algo.objective != "tb":
            from turngym.trainers.logprobs import max_tree_tokens

            local = pack_forward([samples[i] for i in indices], budget, self.cfg.optim.share_prefix,
                                 max_tree_tokens())
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

    def _normalizers(self, mb_samples: list[TrainingSample]) -> dict[str, float]:
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

    def _old_logprobs(self, ctx: LossContext, samples: list[TrainingSample], single_pass: bool) -> dict[str, float]:
        """Fill ``sample.old_logprobs`` as configured; return the engine-vs-trainer agreement metrics."""
        a = self.cfg.algo
        device = self.device
        if single_pass and a.old_logprobs == "recompute":
            return {}  # measured in the first (only) forward pass of the update
        diffs, n = [], 0
        batches = self.micro_batches(samples, list(range(len(samples))))
        if a.old_logprobs == "engine":
            batches = batches[:1]  # a spot check: the engine's values are used
        t0 = time.perf_counter()
        with torch.no_grad():
            for micro in batches:
                batch = collate(samples, self.pad_id, indices=micro, device=device)
                logp = ctx.forward(batch, False)
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

    def entropy_reference(self) -> np.ndarray | None:
        """EPO's Hbar per turn index: mean over past iterations (None before the first)."""
        if not self.cfg.algo.epo_smooth_coef or not self.entropy_history:
            return None
        width = max(len(h) for h in self.entropy_history)
        rows = np.full((len(self.entropy_history), width), np.nan)
        for r, h in enumerate(self.entropy_history):
            rows[r, : len(h)] = h
        with np.errstate(all="ignore"):
            return np.nanmean(rows, axis=0)

    def _micro_step(self, ctx: LossContext, samples: list[TrainingSample], micro: list[int], norms: dict[str, float],
                    hbar: np.ndarray | None, first_pass: bool, turn_entropy: dict[int, list[float]]) -> dict[str, float]:
        """Forward one micro-batch, take its loss (the objective plus the loss terms), backward; its metrics."""
        a = self.cfg.algo
        device = self.device
        batch = collate(samples, self.pad_id, indices=micro, device=device)
        logp, ent = ctx.forward(batch, True)
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
        adv = batch.advantages
        if a.aepo_advantage and a.objective == "ppo":
            adv = entropy_aware_advantage(adv, ent, mask, a.aepo_advantage)
        mb = MicroBatch(batch=batch, rows=[samples[i] for i in micro], logprobs=logp, mask=mask, norms=norms,
                        entropy=ent, old_logprobs=old, advantages=adv, turn=turn, entropy_reference=hbar,
                        seq_ids=batch.segment_ids.clamp(min=0) if a.seq_unit == "step" else None)
        loss, metrics = self.objective(ctx, mb)
        for term in self.loss_terms:
            value, m = term(ctx, mb)
            loss = loss + value
            out.update(m)
        out.update(metrics)
        loss.backward()
        out["_w"] = float(mask.sum())
        return out


__all__ = ["PolicyUpdate"]
