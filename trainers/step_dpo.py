"""Agent Q style step-level DPO (Putta et al., arXiv 2408.07199): preferences from search over env states.

Each iteration (a round of Agent Q's iterative offline training):

1. **Search.** For ``rollout.tasks_per_iter`` tasks in lockstep, at every
   state on the path the policy proposes ``K = rollout.group_size`` replies
   (one batched ``generate`` for all tasks x K). Each reply's action is tried
   from the same env snapshot (``get_state`` / ``set_state``: the env is the
   simulator Agent Q's MCTS expands) and scored

       Q(a) = r + won + progress_after - invalid_penalty,

   the step reward, a bonus for winning, the env's progress after the step
   (our envs compute it from a shortest-plan distance: the "critic" Agent Q
   gets from an AI judge), minus ``algo.invalid_action_penalty`` for an
   invalid action. The path follows the best reply (greedy expansion; ties
   go to the first sampled).
2. **Pairs.** At each node, the best and the worst reply form a preference
   pair when ``Q_best - Q_worst > algo.dpo_margin``. Both are the engine's
   token ids for the same prompt ids (no re-tokenization).
3. **Update (offline DPO).** ``algo.ppo_epochs`` passes over the pairs with

       L = -log sigmoid( beta [ (log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x)) ] ),

   ``log pi(y|x)`` the sum over the reply's sampled tokens, ``pi_ref`` the
   frozen reference (the LoRA base, or a copy of the starting weights),
   ``beta = algo.dpo_beta``.

Agent Q combines the MCTS Q-values with the AI critic and uses full MCTS
(UCB selection, backed-up values); this offline mode keeps the part that
needs no judge model: one-step lookahead from exact env snapshots with the
env's own progress signal. Logged: pairs, preference accuracy, reward margin,
DPO loss, the search's success rate.

The loss is :func:`turngym.trainers.objectives.step_dpo_objective`, called as
every objective is (``objective(ctx, micro_batch)``). Runs inside an
:class:`~turngym.trainers.rl.RLTrainer` and reads only its public surface
(``cfg``, ``engine``, ``agent``, ``model``, ``optimizer``, ``scheduler``,
``reference``, ``pad_id``, ``device``, ``objective``, ``loss_context()``).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from turngym.agents.runner import derive_seed, plan_episodes
from turngym.agents.types import Completion


@dataclass
class StepPair:
    """One preference: two replies to the same prompt, the better one first."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_value: float
    rejected_value: float
    task_id: str
    depth: int


def candidate_value(reward: float, info: dict[str, Any], invalid_penalty: float) -> float:
    """Q of one tried action: reward + won bonus + progress after the step - invalid penalty."""
    value = float(reward) + (1.0 if info.get("won") else 0.0)
    progress = info.get("progress")
    if progress is not None:
        value += float(progress)
    if not info.get("action_valid", True):
        value -= invalid_penalty
    return value


def collect_step_pairs(trainer: Any, iteration: int) -> tuple[list[StepPair], dict[str, float]]:
    """Search the tasks of this iteration (module docstring, steps 1-2)."""
    from turngym.agents.context import ChatRenderer
    from turngym.agents.pool import make_env

    cfg, a = trainer.cfg, trainer.cfg.algo
    k = cfg.rollout.group_size
    specs = plan_episodes(cfg.env.id, split=cfg.env.split, num_tasks=cfg.rollout.tasks_per_iter, group_size=1,
                          seed=derive_seed(cfg.run.seed, iteration), env_kwargs=cfg.env.kwargs)
    renderer = ChatRenderer(trainer.engine)
    live = []
    for spec in specs:
        env = make_env(cfg.env.id, cfg.env.kwargs)
        obs, info = env.reset(seed=spec.seed, options={"task_id": spec.task_id})
        memory = trainer.agent.start(info.get("instruction", ""), obs, info, seed=spec.seed)
        live.append({"env": env, "memory": memory, "spec": spec, "done": False, "won": False, "steps": 0})
    limit = cfg.env.max_steps or getattr(live[0]["env"].spec, "max_episode_steps", None) or 30
    pairs: list[StepPair] = []
    t0 = time.perf_counter()
    gen_s, tokens, spreads = 0.0, 0, []
    try:
        for depth in range(limit):
            active = [ep for ep in live if not ep["done"]]
            if not active:
                break
            prompts, samplings, turns, prefixes = [], [], [], []
            for ep in active:
                turn = trainer.agent.prompt(ep["memory"])
                prompt, _, prefix = renderer.render(turn.messages, turn.tools, None, turn.response_prefix)
                for j in range(k):
                    prompts.append(prompt)
                    samplings.append(replace(turn.sampling, seed=derive_seed(ep["spec"].seed, depth, j)))
                turns.append(turn)
                prefixes.append(prefix)
            g0 = time.perf_counter()
            completions = trainer.engine.generate(prompts, samplings)
            gen_s += time.perf_counter() - g0
            tokens += sum(len(c.token_ids or []) for c in completions)
            for n, ep in enumerate(active):
                env, prompt = ep["env"].unwrapped, prompts[n * k]
                cands = completions[n * k:(n + 1) * k]
                snapshot = env.get_state()
                scored = []
                for c in cands:
                    reply = replace(c, text=prefixes[n] + c.text) if prefixes[n] else c
                    decision = trainer.agent.parse(copy.deepcopy(ep["memory"]), reply)
                    env.set_state(snapshot)
                    _, r, term, trunc, inf = env.step(decision.action or "")
                    scored.append((candidate_value(r, inf, a.invalid_action_penalty), c, reply, decision))
                env.set_state(snapshot)
                values = [s[0] for s in scored]
                spreads.append(max(values) - min(values))
                best = max(range(len(scored)), key=lambda i: (values[i], -i))
                worst = min(range(len(scored)), key=lambda i: (values[i], i))
                if values[best] - values[worst] > a.dpo_margin and list(prompt) and scored[best][1].token_ids \
                        and scored[worst][1].token_ids:
                    pairs.append(StepPair(list(prompt), list(scored[best][1].token_ids),
                                          list(scored[worst][1].token_ids), values[best], values[worst],
                                          ep["spec"].task_id or "", depth))
                # Follow the best reply.
                _, c, reply, decision = scored[best]
                trainer.agent.parse(ep["memory"], reply)
                obs, r, term, trunc, inf = env.step(decision.action or "")
                trainer.agent.observe(ep["memory"], decision.action or "", obs, r, inf)
                ep["steps"] += 1
                if term or trunc or ep["steps"] >= limit:
                    ep["done"], ep["won"] = True, bool(inf.get("won", False))
    finally:
        for ep in live:
            ep["env"].close()
    wall = time.perf_counter() - t0
    stats = {"episodes": len(live), "success_rate": float(np.mean([ep["won"] for ep in live])) if live else 0.0,
             "pairs": len(pairs), "value_spread_mean": float(np.mean(spreads)) if spreads else 0.0,
             "time_generate": gen_s, "time_rollout": wall, "generated_tokens": tokens,
             "turns_mean": float(np.mean([ep["steps"] for ep in live])) if live else 0.0}
    return pairs, stats


def dpo_update(trainer: Any, pairs: list[StepPair], iteration: int) -> dict[str, float]:
    """Offline DPO epochs over ``pairs`` (module docstring, step 3)."""
    import torch

    from turngym.trainers.objectives import MicroBatch
    from turngym.trainers.tokens import TrainingSample, collate

    cfg, a = trainer.cfg, trainer.cfg.algo
    device = trainer.device
    ctx = trainer.loss_context()

    def sample(prompt: list[int], reply: list[int]) -> TrainingSample:
        ids = prompt + reply
        mask = [0] * len(prompt) + [1] * len(reply)
        return TrainingSample(input_ids=ids, loss_mask=mask, advantages=None, old_logprobs=None,
                              segment_ids=[0 if m else -1 for m in mask], traj_index=0, steps=(0,), group_id="")

    samples = []
    for p in pairs:
        samples += [sample(p.prompt_ids, p.chosen_ids), sample(p.prompt_ids, p.rejected_ids)]

    def pairs_batch(g: list[int]) -> Any:  # the rows of pairs g: chosen, rejected, chosen, ...
        return collate(samples, trainer.pad_id, indices=[j for i in g for j in (2 * i, 2 * i + 1)], device=device)

    # Micro-batches of whole pairs under the token budget.
    per_pair = [len(samples[2 * i]) + len(samples[2 * i + 1]) for i in range(len(pairs))]
    groups, cur, used = [], [], 0
    for i, n in enumerate(per_pair):
        if cur and used + n > cfg.optim.micro_batch_tokens:
            groups.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += n
    if cur:
        groups.append(cur)
    ref_margin: dict[int, float] = {}
    with torch.no_grad(), trainer.reference.active() as ref_model:
        for g in groups:
            batch = pairs_batch(g)
            lp = (ctx.forward(batch, False, model=ref_model) * (batch.loss_mask > 0)).sum(-1)
            for n, i in enumerate(g):
                ref_margin[i] = float(lp[2 * n] - lp[2 * n + 1])
    rng = np.random.default_rng(derive_seed(cfg.run.seed, iteration, 13))
    losses, accs, margins, norms = [], [], [], []
    params = [p for grp in trainer.optimizer.param_groups for p in grp["params"]]
    for _ in range(a.ppo_epochs):
        order = [groups[i] for i in rng.permutation(len(groups))]
        for mb in np.array_split(np.arange(len(order)), a.mini_batches):
            chunk = [order[i] for i in mb]
            if not chunk:
                continue
            n_pairs = sum(len(g) for g in chunk)
            trainer.optimizer.zero_grad(set_to_none=True)
            for g in chunk:
                batch = pairs_batch(g)
                mask = batch.loss_mask > 0
                micro = MicroBatch(batch=batch, rows=[samples[j] for i in g for j in (2 * i, 2 * i + 1)],
                                   logprobs=ctx.forward(batch, False), mask=mask, norms={"num_pairs": n_pairs},
                                   ref_margin=torch.tensor([ref_margin[i] for i in g], device=device))
                loss, m = trainer.objective(ctx, micro)
                loss.backward()
                losses += m["dpo_loss"]
                accs += m["pref_accuracy"]
                margins += m["reward_margin"]
            if cfg.optim.max_grad_norm > 0:
                norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.max_grad_norm)))
            trainer.optimizer.step()
            trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return {"dpo_loss": float(np.mean(losses)) if losses else 0.0,
            "pref_accuracy": float(np.mean(accs)) if accs else 0.0,
            "reward_margin": float(np.mean(margins)) if margins else 0.0,
            "grad_norm": float(np.mean(norms)) if norms else 0.0,
            "num_loss_tokens": int(sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs))}


def step_dpo_iteration(trainer: Any, iteration: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    pairs, stats = collect_step_pairs(trainer, iteration)
    record: dict[str, Any] = {"kind": "train", "iteration": iteration, **stats}
    u0 = time.perf_counter()
    if pairs:
        record.update(dpo_update(trainer, pairs, iteration))
    record["time_update"] = time.perf_counter() - u0
    wall = time.perf_counter() - t0
    record.update({"time_total": wall, "tokens_per_s": stats["generated_tokens"] / wall if wall > 0 else 0.0,
                   "reward_mean": stats["success_rate"]})
    return record


__all__ = ["Completion", "StepPair", "candidate_value", "collect_step_pairs", "dpo_update", "step_dpo_iteration"]
