"""TRL's ``GRPOTrainer`` on turngym envs: whole multi-turn episodes as TRL's ``rollout_func``.

    from trl import GRPOConfig, GRPOTrainer
    from turngym.integrations.trl import TurngymRollout, env_reward, task_dataset

    trainer = GRPOTrainer(model=model, processing_class=tokenizer, args=GRPOConfig(...),
                          train_dataset=task_dataset("turngym/BlocksWorld-v0", split="train"),
                          reward_funcs=env_reward,
                          rollout_func=TurngymRollout("react", agent_options={"context": "full"}))
    trainer.train()

Prompts are tasks: each ``prompt`` of the dataset is :func:`task_prompt`'s JSON
text (env id, task id and/or reset seed); :func:`task_dataset` lists a split's
tasks. TRL repeats each prompt ``num_generations`` times; the rollout plays
one episode per prompt with the trainer's current model, through turngym's
agent and runner (:class:`~turngym.agents.runner.EpisodeRunner` on an
:class:`~turngym.agents.engines.hf.HFEngine` that wraps the trainer's model in
place), so the episode is what ``turngym train`` would play: same agent
format, same env steps, same token ids.

What TRL gets back (the ``rollout_func`` contract of trl 1.16's
``GRPOTrainer._generate``): per episode ``prompt_ids`` (the first turn's
prompt), ``completion_ids`` (everything after it: every reply's sampled ids
and, between them, the template and observation ids the next prompt added),
``env_mask`` (1 on sampled ids, 0 on env and template ids: TRL then leaves
them out of the loss), ``logprobs`` (the engine's log-prob of each sampled id,
0 elsewhere) and the extra fields ``env_reward`` (the episode's return),
``env_won`` and ``env_turns``, which TRL passes to reward functions:
:func:`env_reward` returns ``env_reward``. An episode is one sequence, so the
agent's context must only grow (``turngym.trainers.tokens``' ``in_context``
mode: the ``chat`` agent, ReAct with ``agent_options={"context": "full"}``);
a window that slides or a summary raises an error that says so.
An episode whose env failed gets a one-token masked completion and reward
None (TRL scores it as unscorable: advantage 0).

Sampling: the agent's temperature and top-p default to the trainer's
``temperature``/``top_p``, and its per-reply ``max_tokens`` to
``max_completion_length`` (per turn: a whole episode may be longer);
``agent_options`` overrides them. Episode seeds derive from (``seed``, process,
call, position), so the rollouts of one group differ.

Depends on ``turngym.agents``, ``turngym.envs`` and ``turngym.trainers.tokens``;
TRL and ``datasets`` are imported lazily (``pip install 'turngym[trl]'``).
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from turngym.agents.types import Trajectory
from turngym.errors import TurngymError, require


def task_prompt(env_id: str, task_id: str | None = None, seed: int | None = None) -> str:
    """The prompt text that names one task: JSON with the env id and a task id and/or a reset seed."""
    if task_id is None and seed is None:
        raise TurngymError(f"task_prompt({env_id!r}): give a task_id (e.g. 'train/3') or a seed")
    task: dict[str, Any] = {"env_id": env_id}
    if task_id is not None:
        task["task_id"] = str(task_id)
    if seed is not None:
        task["seed"] = int(seed)
    return json.dumps(task)


def parse_task_prompt(prompt: Any) -> dict[str, Any]:
    """The task of a :func:`task_prompt` prompt (plain text, or chat messages whose last content is that text)."""
    text = prompt[-1].get("content") if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict) \
        else prompt
    try:
        task = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        task = None
    if not isinstance(task, dict) or "env_id" not in task or not ({"task_id", "seed"} & set(task)):
        raise TurngymError(f"prompt {str(text)[:80]!r} does not name a turngym task: build the dataset's prompts "
                           "with turngym.integrations.trl.task_prompt(env_id, task_id=...) or task_dataset(env_id)")
    return task


def task_dataset(env_id: str, *, split: str = "train", num_tasks: int | None = None, seed: int = 0,
                 env_kwargs: dict[str, Any] | None = None):
    """A ``datasets.Dataset`` of the first ``num_tasks`` tasks of ``split`` in a seed-shuffled order (the order of
    ``turngym train``'s plan): columns ``prompt`` (:func:`task_prompt`), ``env_id`` and ``task_id``."""
    datasets = require("datasets", "trl", "turngym.integrations.trl.task_dataset")
    from turngym.agents.runner import plan_episodes

    specs = plan_episodes(env_id, split=split, num_tasks=num_tasks, seed=seed, env_kwargs=env_kwargs)
    task_ids = [s.task_id for s in specs]
    return datasets.Dataset.from_dict({"prompt": [task_prompt(env_id, t) for t in task_ids],
                                       "env_id": [env_id] * len(task_ids), "task_id": task_ids})


def env_reward(completions: list[Any], env_reward: list[float | None] | None = None, **_: Any) -> list[float | None]:
    """TRL reward function: each episode's return from the env (the ``env_reward`` field of the rollout)."""
    if env_reward is None:
        raise TurngymError("env_reward got no env_reward field: pass rollout_func=TurngymRollout(...) to GRPOTrainer")
    return list(env_reward)


class TurngymRollout:
    """TRL ``rollout_func``: plays one turngym episode per prompt (see the module docstring).

    Args:
        agent: an agent name of :func:`~turngym.agents.factory.make_agent` ("chat", "react", ...).
        agent_options: agent constructor options (override the sampling taken from the trainer's args).
        env_kwargs: env constructor arguments.
        max_steps: env steps after which an episode is truncated (default: the env's own limit).
        max_concurrent: episodes played at once (the generation batch).
        seed: base of the episode seeds.
        eos_token_ids: ids that end a reply (default: the tokenizer's and generation config's EOS).
        engine_kwargs: more :class:`~turngym.agents.engines.hf.HFEngine` arguments.

    Attributes:
        trajectories: the episodes of the last call, in prompt order.
        reward_history: per call, the returned ``env_reward`` list.
    """

    def __init__(self, agent: str = "chat", *, agent_options: dict[str, Any] | None = None,
                 env_kwargs: dict[str, Any] | None = None, max_steps: int | None = None, max_concurrent: int = 16,
                 seed: int = 0, eos_token_ids: list[int] | None = None, engine_kwargs: dict[str, Any] | None = None):
        self.agent = agent
        self.agent_options = dict(agent_options or {})
        self.env_kwargs = dict(env_kwargs or {})
        self.max_steps = max_steps
        self.max_concurrent = max_concurrent
        self.seed = seed
        self.eos_token_ids = eos_token_ids
        self.engine_kwargs = dict(engine_kwargs or {})
        self.calls = 0
        self.trajectories: list[Trajectory] = []
        self.reward_history: list[list[float | None]] = []
        self._task_of_seed: dict[tuple[str, int], str] = {}

    # -- the rollout -------------------------------------------------------------------------------------------

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, list[Any]]:
        from turngym.agents.engines.hf import HFEngine
        from turngym.agents.factory import make_agent
        from turngym.agents.runner import EpisodeRunner, EpisodeSpec, derive_seed

        tasks = [parse_task_prompt(p) for p in prompts]
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor: its tokenizer
        engine = HFEngine((model, tokenizer), max_batch_size=self.max_concurrent, name="hf:trl-policy",
                          eos_token_ids=self.eos_token_ids, **self.engine_kwargs)
        args = trainer.args
        options = {"temperature": args.temperature, "top_p": args.top_p, "max_tokens": args.max_completion_length,
                   **self.agent_options}
        process = int(getattr(trainer.accelerator, "process_index", 0))
        by_env: dict[str, list[int]] = defaultdict(list)
        for i, task in enumerate(tasks):
            by_env[task["env_id"]].append(i)
        episodes: list[Trajectory | None] = [None] * len(tasks)
        for env_id, positions in by_env.items():
            specs = []
            for i in positions:
                task_id = tasks[i].get("task_id") or self._task_id(env_id, int(tasks[i]["seed"]))
                specs.append(EpisodeSpec(task_id=task_id, seed=derive_seed(self.seed, process, self.calls, i),
                                         group_id=f"{task_id}@trl{self.calls}", index=i))
            runner = EpisodeRunner(env_id, make_agent(self.agent, env_id, **options), engine,
                                   env_kwargs=self.env_kwargs, max_concurrent=self.max_concurrent,
                                   max_steps=self.max_steps)
            for traj in runner.run(specs).trajectories:
                episodes[traj.meta["index"]] = traj
        self.calls += 1
        missing = [i for i, t in enumerate(episodes) if t is None]
        if missing:
            raise TurngymError(f"the rollout was interrupted: no episode for prompts {missing[:5]}")
        self.trajectories = [t for t in episodes if t is not None]
        out = self.to_trl(self.trajectories, tokenizer)
        self.reward_history.append(list(out["env_reward"]))
        return out

    def _task_id(self, env_id: str, seed: int) -> str:
        """The task a reset with ``seed`` picks (so every rollout of a group plays it with its own seed)."""
        key = (env_id, seed)
        if key not in self._task_of_seed:
            from turngym.agents.pool import make_env

            env = make_env(env_id, self.env_kwargs)
            try:
                _, info = env.reset(seed=seed)
            finally:
                env.close()
            self._task_of_seed[key] = str(info["task_id"])
        return self._task_of_seed[key]

    @staticmethod
    def to_trl(trajectories: list[Trajectory], tokenizer: Any = None) -> dict[str, list[Any]]:
        """Episodes -> TRL's rollout dict: one token sequence per episode (see the module docstring)."""
        from turngym.trainers.tokens import PrefixBreakError, build_samples

        filler = next((i for i in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None))
                       if i is not None), 0)
        out: dict[str, list[Any]] = {k: [] for k in ("prompt_ids", "completion_ids", "logprobs", "env_mask",
                                                     "env_reward", "env_won", "env_turns")}
        for traj in trajectories:
            if traj.error is not None or not traj.steps:  # missing data: masked out, unscorable
                prompt = list(traj.steps[0].prompt_ids or [filler]) if traj.steps else [filler]
                completion, mask, logprobs, reward = [filler], [0], [0.0], None
            else:
                try:
                    (sample,) = build_samples([traj], mode="in_context", on_break="raise", tokenizer=tokenizer)
                except PrefixBreakError as exc:
                    raise TurngymError(
                        f"{exc}. TRL trains one token sequence per episode: use an agent whose context only grows "
                        "(TurngymRollout('chat'), or agent_options={'context': 'full'} for react)") from exc
                n = len(traj.steps[0].prompt_ids)
                prompt, completion, mask = sample.input_ids[:n], sample.input_ids[n:], sample.loss_mask[n:]
                logprobs = sample.old_logprobs[n:] if sample.old_logprobs is not None else [0.0] * len(completion)
                reward = float(traj.total_reward)
            out["prompt_ids"].append(list(prompt))
            out["completion_ids"].append(list(completion))
            out["env_mask"].append(list(mask))
            out["logprobs"].append([float(x) for x in logprobs])
            out["env_reward"].append(reward)
            out["env_won"].append(bool(traj.won))
            out["env_turns"].append(traj.num_turns)
        return out


__all__ = ["TurngymRollout", "env_reward", "parse_task_prompt", "task_dataset", "task_prompt"]
