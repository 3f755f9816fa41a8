"""The batched episode runner: many episodes at once, batched generation, env steps in parallel.

:class:`EpisodeRunner` plays a list of :class:`EpisodeSpec` (task, seed,
group) with one agent object and one engine:

1. Up to ``max_concurrent`` episodes are live at once, each in its own env
   slot of an :class:`~turngym.agents.pool.EnvPool` (threads by default,
   processes or a Ray pool as options). As an episode ends, the next spec
   takes its slot (episodes finish independently; the batch stays full).
2. The agent builds each live episode's request; the runner renders it
   (continuing the episode's token stream where it can, see
   :class:`~turngym.agents.context.ChatRenderer`). Two schedules:

   * ``lockstep``: one batched ``engine.generate`` call per turn for every
     live episode, then every env step. Any engine works. A turn lasts as
     long as its longest reply, and the batch thins out as replies finish.
   * ``continuous`` (the default where the engine has ``session()``, as the
     hf engine does): requests go into the engine's running batch
     (:class:`~turngym.agents.engines.hf.HFSession`); a finished reply's
     action goes to the pool at once and the episode's next request joins
     the batch as soon as its env step is back, while the other rows keep
     decoding. With ``deterministic=True`` (the default) the runner waits
     for those env steps before the next decode step, so the schedule (hence
     the batch shapes and every float) depends only on the episodes; with
     False env steps overlap decoding (best for slow envs) and batch shapes
     depend on timing, which changes log-probs in the last bits and, rarely,
     a sampled token whose uniform draw sits within rounding of a boundary.
     Measured on the 2-core CPU with SmolLM2 (24 Game24 episodes x 3 turns,
     16 at once, 5 interleaved runs each; rerun with ``benchmarks/
     rollout_throughput.py --parts batch --episodes 24 --max-steps 3
     --repeats 5``): on par with lockstep (median 82 s vs 85 s; the
     machine's run-to-run spread is +-10%); it saves the
     decode steps a lockstep turn spends on its longest replies but copies
     the running keys/values when requests join.

3. Replies are parsed and the actions stepped in parallel in the pool.
   P-ReAct agents (``early_action``) get their actions dispatched from the
   engine's ``on_text`` hook as soon as the action is decoded, so the env
   works while the model is still generating; the observation joins the
   memory when both are done.
4. Every turn becomes a :class:`~turngym.agents.types.Step` (prompt ids,
   response ids and log-probs, reward, state keys, progress, validity,
   timings); every finished episode a :class:`~turngym.agents.types.Trajectory`,
   appended at once to ``out`` (JSONL) if given.

Robustness: an env that raises (reset, step or query) ends that episode
with ``Trajectory.error`` set (it is missing data, not a loss) and rebuilds
its slot; the other episodes go on. Ctrl-C stops the run and returns the
finished episodes with ``stats.interrupted = True``; the JSONL file holds
every finished episode (it is written to ``<out>.partial`` one line per
episode and renamed to ``<out>`` when the run stops, however it stops).

Reproducibility: each episode's env reset seed and sampling seeds derive
from its spec's seed (request seed = f(episode seed, turn)), so an episode
replays the same whatever else is in its batch, as far as the engine
honours per-request seeds.

Tasks: :func:`plan_episodes` picks, for one seed, the first N tasks of a
split in a seed-shuffled order, each repeated ``group_size`` times with a
shared ``group_id`` (GRPO-style groups for RL).

This module depends on :mod:`turngym.agents` and :mod:`turngym.envs`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from turngym.agents.base import is_llm_agent
from turngym.agents.context import ChatRenderer, PreviousRequest, estimate_tokens
from turngym.agents.engines.base import context_limit, continuous_batching_off_reason, engine_name
from turngym.agents.pool import EnvPool, make_env, make_pool
from turngym.agents.types import Completion, Step, Trajectory, trajectory_to_json

#: info keys not copied onto Steps (large, or the same every step).
_INFO_DROP = ("admissible_actions", "instruction")


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode to play.

    Attributes:
        task_id: a split-qualified task id ("test/17"), or None to let the env sample one with ``seed``.
        seed: the episode's seed (env reset seed; sampling seeds derive from it).
        group_id: rollouts of the same task in the same round share it.
        index: position in the plan (for ordering results).
        options: extra ``reset`` options (e.g. ``{"task": {...}}`` for a custom task).
        tags: copied into ``Trajectory.meta`` (e.g. ``{"plan_seed": 3}``).
    """

    task_id: str | None
    seed: int
    group_id: str
    index: int = 0
    options: dict[str, Any] | None = None
    tags: dict[str, Any] | None = None


def derive_seed(*parts: int) -> int:
    """A well-mixed 31-bit seed from integers (stable across processes and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def plan_episodes(env_id: str, *, split: str = "test", num_tasks: int | None = None, group_size: int = 1,
                  seed: int = 0, shuffle: bool = True, env_kwargs: dict[str, Any] | None = None,
                  start_index: int = 0) -> list[EpisodeSpec]:
    """The first ``num_tasks`` tasks of ``split`` in a seed-shuffled order, ``group_size`` rollouts each.

    ``group_id`` is ``"<task_id>@<seed>"``; episode seeds derive from
    (seed, task position, rollout), so two seeds give different task subsets
    (when N < split size) and different samples.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    env = make_env(env_id, env_kwargs)
    try:
        task_ids = list(env.unwrapped.task_ids(split))
    finally:
        env.close()
    order = np.random.default_rng(seed).permutation(len(task_ids)) if shuffle else np.arange(len(task_ids))
    chosen = [task_ids[i] for i in order[: num_tasks if num_tasks is not None else len(task_ids)]]
    specs = []
    for t, task_id in enumerate(chosen):
        for g in range(group_size):
            specs.append(EpisodeSpec(task_id=task_id, seed=derive_seed(seed, t, g), group_id=f"{task_id}@{seed}",
                                     index=start_index + len(specs), tags={"plan_seed": seed}))
    return specs


@dataclass
class RunStats:
    """Totals of one run (wall-clock split: generate / env / the rest)."""

    episodes: int = 0
    errors: int = 0
    env_steps: int = 0
    llm_turns: int = 0
    generate_calls: int = 0  # engine.generate calls (continuous schedule: admissions into the running batch)
    generated_tokens: int = 0
    prompt_tokens: int = 0
    wall_s: float = 0.0
    generate_s: float = 0.0
    env_wait_s: float = 0.0
    env_busy_s: float = 0.0
    dispatched_early: int = 0
    interrupted: bool = False

    @property
    def other_s(self) -> float:
        return max(0.0, self.wall_s - self.generate_s - self.env_wait_s)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def env_steps_per_s(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out.update(other_s=self.other_s, tokens_per_s=self.tokens_per_s, env_steps_per_s=self.env_steps_per_s)
        return out


@dataclass
class RunResult:
    trajectories: list[Trajectory]
    stats: RunStats


@dataclass
class _Episode:
    spec: EpisodeSpec
    slot: int
    memory: Any
    traj: Trajectory
    observation: str
    info: dict[str, Any]
    started: float
    previous: PreviousRequest | None = None
    early: tuple[str, Future, float] | None = None  # P-ReAct: (action, env future, dispatch time)
    done: bool = False


@dataclass
class _Request:
    """One LLM turn of an episode on its way through the engine."""

    ep: _Episode
    turn: Any  # the agent's TurnRequest
    prompt: Any  # what the engine is given (ids, or messages for remote chat engines)
    continued: bool  # the prompt continues the episode's previous token stream
    prefix: str  # words prefilled into the reply (the agent's response_prefix)
    sampling: Any
    submitted: float


class TrajectoryWriter:
    """Appends trajectories to ``<path>.partial`` (one line each, flushed) and renames it to ``path`` on close."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._file = open(self.partial, "w")
        self.count = 0

    def write(self, traj: Trajectory) -> None:
        self._file.write(trajectory_to_json(traj) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.partial, self.path)

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EpisodeRunner:
    """Plays episodes of one env with one agent, batched (see the module docstring).

    Args:
        env_id: a registered env id.
        agent: an LLM agent (``prompt``/``parse``) or a direct one (``env_query``/``act``).
        engine: the LLM engine (LLM agents only).
        env_kwargs: env constructor arguments.
        env_fn: an env factory replacing ``make_env(env_id, env_kwargs)`` (e.g. a wrapped env;
            picklable for the process pool).
        pool: "thread" (default), "process", or an :class:`~turngym.agents.pool.EnvPool`
            with at least ``max_concurrent`` slots.
        workers: threads/processes of the pool.
        max_concurrent: live episodes at once (the generate batch size).
        max_steps: env steps after which an episode is truncated (default: the env's
            ``max_episode_steps``, else 100).
        keep_prompts: also store each step's chat messages in ``Step.prompt``.
        model_name: recorded on trajectories (default: ``engine.name``).
        on_trajectory: called with each finished trajectory (progress bars).
        on_turn: called with the run's :class:`RunStats` after every batched turn (continuous: after every
            decode step that returned env steps) (progress bars).
        schedule: "auto" (continuous when the engine supports it, else lockstep), "lockstep" or
            "continuous" (see the module docstring); ``self.schedule`` says what it resolved to.
        deterministic: continuous schedule only. True (default): wait for the env steps of the replies
            finished in a decode step before the next one, so the schedule, the batch shapes and every
            number depend on the episodes alone (free with fast envs). False: env steps overlap decoding
            (best with slow envs: search servers, sandboxes), at the price of bitwise reproducibility.
    """

    def __init__(self, env_id: str, agent: Any, engine: Any = None, *, env_kwargs: dict[str, Any] | None = None,
                 env_fn: Callable[[], Any] | None = None, pool: str | EnvPool = "thread", workers: int | None = None,
                 max_concurrent: int = 16, max_steps: int | None = None, keep_prompts: bool = False,
                 model_name: str | None = None, on_trajectory: Callable[[Trajectory], None] | None = None,
                 on_turn: Callable[[RunStats], None] | None = None, schedule: str = "auto",
                 deterministic: bool = True):
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if schedule not in ("auto", "lockstep", "continuous"):
            raise ValueError(f"schedule={schedule!r}: use 'auto', 'lockstep' or 'continuous'")
        self.env_id = env_id
        self.agent = agent
        self.llm = is_llm_agent(agent)
        if self.llm and engine is None:
            raise ValueError(f"agent {getattr(agent, 'name', agent)!r} needs an engine; pass engine=...")
        self.engine = engine
        self.env_kwargs = dict(env_kwargs or {})
        self.env_fn = env_fn or partial(make_env, env_id, self.env_kwargs)
        self.pool_kind = pool
        self.workers = workers
        self.max_concurrent = max_concurrent
        self.max_steps = max_steps or _registered_max_steps(env_id) or 100
        self.keep_prompts = keep_prompts
        self.model_name = model_name if model_name is not None else (engine_name(engine) if self.llm else "")
        self.on_trajectory = on_trajectory
        self.on_turn = on_turn
        self.renderer = ChatRenderer(engine) if self.llm else None
        self.streams_actions = self.llm and callable(getattr(agent, "early_action", None))
        why = continuous_batching_off_reason(engine) if self.llm else "no LLM agent"
        supported = why is None
        if schedule == "continuous" and not supported:
            raise ValueError(f"schedule='continuous' needs an engine that batches continuously; "
                             f"{engine_name(engine)!r} cannot: {why}. Use schedule='lockstep'")
        #: "lockstep" or "continuous": what ``schedule`` resolved to for this engine
        self.schedule = "continuous" if supported and schedule != "lockstep" else "lockstep"
        self.deterministic = bool(deterministic)
        if self.llm and callable(getattr(agent, "bind", None)):
            agent.bind(engine)

    # ---- the run ---------------------------------------------------------------------------------
    def run(self, episodes: Sequence[EpisodeSpec], out: str | os.PathLike | None = None) -> RunResult:
        """Play every spec; return the trajectories in spec order (also appended to ``out`` as they end)."""
        stats = RunStats()
        results: list[Trajectory] = []
        if not episodes:
            return RunResult(results, stats)
        size = min(self.max_concurrent, len(episodes))
        pool = make_pool(self.pool_kind, self.env_fn, size, self.workers)
        owns_pool = isinstance(self.pool_kind, str)
        writer = TrajectoryWriter(out) if out is not None else None
        queue = deque(episodes)
        free = list(range(size - 1, -1, -1))
        live: list[_Episode] = []
        start = time.perf_counter()
        try:
            if self.schedule == "continuous":
                self._run_continuous(queue, free, live, pool, stats, results, writer, start)
            while queue or live:
                self._start_episodes(queue, free, live, pool, stats)
                if live:
                    if self.llm:
                        self._llm_turn(live, pool, stats)
                    else:
                        self._direct_turn(live, pool, stats)
                    if self.on_turn is not None:
                        stats.wall_s = time.perf_counter() - start
                        self.on_turn(stats)
                for ep in [e for e in live if e.done]:
                    live.remove(ep)
                    self._finish(ep, pool, results, writer, stats)
                    free.append(ep.slot)
        except KeyboardInterrupt:
            stats.interrupted = True
        finally:
            stats.wall_s = time.perf_counter() - start
            for ep in live:  # a stopped episode's future must not outlive the pool quietly
                if ep.early is not None:
                    ep.early[1].cancel()
            if owns_pool:
                pool.close()
            if writer is not None:
                writer.close()
        results.sort(key=lambda t: t.meta.get("index", 0))
        return RunResult(results, stats)

    def _start_episodes(self, queue: deque, free: list[int], live: list[_Episode], pool: EnvPool,
                        stats: RunStats) -> None:
        starting = []
        while queue and free:
            spec = queue.popleft()
            slot = free.pop()
            options = dict(spec.options or {})
            if spec.task_id is not None:
                options["task_id"] = spec.task_id
            starting.append((spec, slot, time.perf_counter(), pool.submit(slot, "reset", spec.seed, options or None)))
        if not starting:
            return
        wait = time.perf_counter()
        for spec, slot, submitted, future in starting:
            traj = Trajectory(env_id=self.env_id, task_id=spec.task_id or "", group_id=spec.group_id, seed=spec.seed,
                              agent=getattr(self.agent, "name", type(self.agent).__name__), model=self.model_name,
                              meta={"index": spec.index, **(spec.tags or {})})
            try:
                (obs, info), seconds = future.result()
            except Exception as exc:
                traj.error = _describe(exc, "reset")
                live.append(_Episode(spec, slot, None, traj, "", {}, submitted, done=True))
                continue
            stats.env_busy_s += seconds
            traj.task_id = info.get("task_id", traj.task_id)
            traj.meta["instruction"] = info.get("instruction", "")
            if getattr(self.agent, "context_mode", None):
                traj.meta["context_mode"] = self.agent.context_mode
            memory = self.agent.start(info.get("instruction", ""), obs, info, seed=spec.seed)
            ep = _Episode(spec, slot, memory, traj, obs, dict(info), submitted)
            ep.traj.timings = {"generate_s": 0.0, "env_s": seconds, "wall_s": 0.0}
            live.append(ep)
        stats.env_wait_s += time.perf_counter() - wait

    # ---- LLM turns -------------------------------------------------------------------------------------
    def _request(self, ep: _Episode, max_context: int | None) -> _Request | None:
        """The episode's next LLM request (None: it outgrew the model's context and is now done)."""
        turn = self.agent.prompt(ep.memory)
        prompt, cont, prefix = self.renderer.render(turn.messages, turn.tools, ep.previous, turn.response_prefix)
        if max_context and _is_ids(prompt) and len(prompt) >= max_context:
            # The episode outgrew the model's context: it ends truncated (a smaller window or the
            # summary/workspace modes avoid this); the batch goes on.
            ep.traj.truncated = ep.done = True
            ep.traj.meta["context_overflow"] = len(prompt)
            return None
        ep.early = None
        sampling = replace(turn.sampling, seed=derive_seed(ep.spec.seed, ep.memory.llm_turns))
        return _Request(ep, turn, prompt, cont, prefix, sampling, time.perf_counter())

    def _early_dispatch(self, req: _Request, pool: EnvPool, text: str) -> None:
        """P-ReAct: step the env as soon as the streamed reply holds a complete action."""
        ep = req.ep
        if ep.early is None and req.turn.kind == "act":
            action = self.agent.early_action(ep.memory, req.prefix + text)
            if action is not None:
                ep.early = (action, pool.submit(ep.slot, "step", action), time.perf_counter())

    def _llm_turn(self, live: list[_Episode], pool: EnvPool, stats: RunStats) -> None:
        """Lockstep: one batched ``generate`` for every live episode, then every env step."""
        max_context = context_limit(self.engine)
        requests = [r for r in (self._request(ep, max_context) for ep in live if not ep.done) if r is not None]
        if not requests:
            return
        on_text = None
        if self.streams_actions:
            def on_text(i: int, text: str) -> None:
                self._early_dispatch(requests[i], pool, text)

        t0 = time.perf_counter()
        completions = self.engine.generate([r.prompt for r in requests], [r.sampling for r in requests],
                                           on_text=on_text)
        gen_end = time.perf_counter()
        stats.generate_s += gen_end - t0
        stats.generate_calls += 1
        if len(completions) != len(requests):
            raise RuntimeError(f"engine {engine_name(self.engine)!r} returned {len(completions)} completions "
                               f"for {len(requests)} prompts")
        pending = [self._reply(r, c, gen_end - t0, gen_end, pool, stats) for r, c in zip(requests, completions)]
        wait = time.perf_counter()
        for item in pending:
            if item is not None:
                self._apply_step(*item, stats)
        stats.env_wait_s += time.perf_counter() - wait

    def _reply(self, req: _Request, completion: Completion, gen_s: float, gen_end: float, pool: EnvPool,
               stats: RunStats) -> tuple[_Episode, Step, str, Future] | None:
        """Record a completion as a Step and submit its action; returns what :meth:`_apply_step` needs (None
        for a memory-only turn, which needs no env step)."""
        ep, turn, prompt, prefix = req.ep, req.turn, req.prompt, req.prefix
        stats.llm_turns += 1
        prompt_ids = prompt if _is_ids(prompt) else completion.prompt_ids
        n_prompt = len(prompt_ids) if prompt_ids is not None else sum(
            estimate_tokens(str(m.get("content", ""))) for m in turn.messages)
        n_response = len(completion.token_ids) if completion.token_ids is not None else estimate_tokens(
            completion.text)
        stats.prompt_tokens += n_prompt
        stats.generated_tokens += n_response
        ep.memory.extra["last_prompt_tokens"] = n_prompt
        ep.memory.extra["last_response_tokens"] = n_response
        ep.traj.timings["generate_s"] += gen_s
        # The agent reads (and its history keeps) the prefilled words + the sampled text; the token
        # stream keeps the prefix among the prompt ids and the sampled ids as they came.
        reply = replace(completion, text=prefix + completion.text) if prefix else completion
        ep.previous = PreviousRequest(turn.messages, turn.tools, prompt if _is_ids(prompt) else None,
                                      reply.text, completion.token_ids)
        decision = self.agent.parse(ep.memory, reply)
        step = Step(observation=ep.observation, prompt=turn.messages if self.keep_prompts else None,
                    response=completion.text, prompt_ids=list(prompt_ids) if prompt_ids is not None else None,
                    response_ids=completion.token_ids, response_logprobs=completion.logprobs,
                    finish_reason=completion.finish_reason, context_mode=turn.context_mode, gen_seconds=gen_s,
                    state_key=ep.info.get("state_key"), progress=ep.info.get("progress"))
        step.info = {"kind": turn.kind, "format_ok": decision.format_ok, "continued_prompt": req.continued}
        if prefix:
            step.info["response_prefix"] = prefix
        if decision.note:
            step.info["format_note"] = decision.note
        if decision.action is None:  # a memory-only turn (a summary): no env step
            ep.traj.steps.append(step)
            if ep.memory.llm_turns > 2 * self.max_steps + 16:  # a runaway agent
                step.truncated = True
                ep.traj.truncated = True
                ep.done = True
            return None
        if ep.early is not None:
            action, future, dispatched = ep.early
            step.info["dispatched_early"] = True
            step.info["dispatch_lead_s"] = round(gen_end - dispatched, 6)
            stats.dispatched_early += 1
            if action != decision.action:  # cannot happen with a consistent agent; the env saw `action`
                step.info["parsed_action"] = decision.action
        else:
            action, future = decision.action, pool.submit(ep.slot, "step", decision.action)
        return ep, step, action, future

    def _run_continuous(self, queue: deque, free: list[int], live: list[_Episode], pool: EnvPool,
                        stats: RunStats, results: list[Trajectory], writer: TrajectoryWriter | None,
                        start: float) -> None:
        """Continuous batching: an episode's next request joins the engine's running batch as soon as its env
        step is back, instead of waiting for the slowest reply of a lockstep turn (see the module docstring)."""
        session = self.engine.session()
        max_context = context_limit(self.engine)
        requests: dict[int, _Request] = {}  # request id -> request
        busy: set[int] = set()  # slots with a request in the engine or an env step in flight
        stepping: list[tuple[_Episode, Step, str, Future]] = []
        while queue or live:
            self._start_episodes(queue, free, live, pool, stats)
            for ep in live:
                if ep.done or ep.slot in busy:
                    continue
                req = self._request(ep, max_context)
                if req is None:
                    continue
                on_text = partial(self._early_dispatch, req, pool) if self.streams_actions else None
                requests[session.submit(req.prompt, req.sampling, on_text)] = req
                busy.add(ep.slot)
            for ep in [e for e in live if e.done and e.slot not in busy]:
                live.remove(ep)
                self._finish(ep, pool, results, writer, stats)
                free.append(ep.slot)
            if not live and not queue:
                break
            if session.running or session.waiting:
                t0 = time.perf_counter()
                finished = session.step()
                now = time.perf_counter()
                stats.generate_s += now - t0
                for request_id, completion in finished:
                    req = requests.pop(request_id)
                    item = self._reply(req, completion, now - req.submitted, now, pool, stats)
                    if item is None:
                        busy.discard(req.ep.slot)
                    else:
                        stepping.append(item)
                stats.generate_calls = session.admissions
            if not stepping:
                continue
            wait = time.perf_counter()
            if self.deterministic:
                ready, stepping = stepping, []  # every env step back before the next decode step
            else:
                if not (session.running or session.waiting):  # nothing to decode: wait for the first env step
                    _wait_first([item[3] for item in stepping])
                ready, stepping = _partition(stepping, lambda item: item[3].done())
            if ready:
                for item in ready:
                    self._apply_step(*item, stats)
                    busy.discard(item[0].slot)
                if self.on_turn is not None:
                    stats.wall_s = time.perf_counter() - start
                    self.on_turn(stats)
            stats.env_wait_s += time.perf_counter() - wait

    # ---- one turn of a direct agent (oracle, random) ----------------------------------------------
    def _direct_turn(self, live: list[_Episode], pool: EnvPool, stats: RunStats) -> None:
        active = [ep for ep in live if not ep.done]
        wait = time.perf_counter()
        queries = []
        for ep in active:
            name = self.agent.env_query(ep.memory)
            queries.append(pool.submit(ep.slot, "query", name) if name else None)
        answers = []
        for ep, future in zip(active, queries):
            if future is None:
                answers.append(None)
                continue
            try:
                answer, seconds = future.result()
                stats.env_busy_s += seconds
                ep.traj.timings["env_s"] += seconds
                answers.append(answer)
            except Exception as exc:
                self._env_error(ep, exc, "query")
                answers.append(None)
        pending = []
        for ep, answer in zip(active, answers):
            if ep.done:
                continue
            action = self.agent.act(ep.memory, answer)
            step = Step(observation=ep.observation, state_key=ep.info.get("state_key"),
                        progress=ep.info.get("progress"), context_mode="none", info={"kind": "act"})
            pending.append((ep, step, action, pool.submit(ep.slot, "step", action)))
        for ep, step, action, future in pending:
            self._apply_step(ep, step, action, future, stats)
        stats.env_wait_s += time.perf_counter() - wait

    # ---- bookkeeping ----------------------------------------------------------------------------------
    def _apply_step(self, ep: _Episode, step: Step, action: str, future: Future, stats: RunStats) -> None:
        try:
            (obs, reward, terminated, truncated, info), seconds = future.result()
        except Exception as exc:
            step.action = action
            ep.traj.steps.append(step)
            self._env_error(ep, exc, "step")
            return
        stats.env_steps += 1
        stats.env_busy_s += seconds
        ep.traj.timings["env_s"] += seconds
        step.action = action
        step.reward = float(reward)
        step.terminated = bool(terminated)
        step.truncated = bool(truncated)
        step.action_valid = bool(info.get("action_valid", True))
        step.progress = info.get("progress", step.progress)
        step.env_seconds = seconds
        step.info.update({k: v for k, v in info.items() if k not in _INFO_DROP})
        ep.traj.steps.append(step)
        self.agent.observe(ep.memory, action, obs, reward, info)
        ep.observation, ep.info = obs, dict(info)
        env_steps = sum(1 for s in ep.traj.steps if s.info.get("kind", "act") == "act")
        if not (terminated or truncated) and env_steps >= self.max_steps:
            step.truncated = truncated = True
        if terminated or truncated:
            ep.traj.truncated = bool(truncated and not terminated)
            ep.done = True

    @staticmethod
    def _env_error(ep: _Episode, exc: BaseException, where: str) -> None:
        ep.traj.error = _describe(exc, where)
        ep.done = True

    def _finish(self, ep: _Episode, pool: EnvPool, results: list[Trajectory], writer: TrajectoryWriter | None,
                stats: RunStats) -> None:
        traj = ep.traj
        acted = [s for s in traj.steps if s.info.get("kind", "act") == "act"]
        traj.won = bool(traj.error is None and acted and acted[-1].info.get("won", False))
        traj.total_reward = float(sum(s.reward for s in traj.steps))
        traj.timings["wall_s"] = time.perf_counter() - ep.started
        traj.meta["format_failures"] = sum(1 for s in acted if s.info.get("format_ok") is False)
        traj.meta["env_steps"] = len(acted)
        if traj.error is not None:  # the env's state is unknown: the slot gets a fresh env before reuse
            try:
                pool.submit(ep.slot, "rebuild").result()
            except Exception as exc:
                traj.meta["rebuild_error"] = _describe(exc, "rebuild")
        stats.episodes += 1
        stats.errors += traj.error is not None
        results.append(traj)
        if writer is not None:
            writer.write(traj)
        if self.on_trajectory is not None:
            self.on_trajectory(traj)


def _wait_first(futures: list[Any]) -> None:
    """Block until one of ``futures`` is done (concurrent futures, or anything with ``done()``/``result()``)."""
    if all(isinstance(f, Future) for f in futures):
        wait(futures, return_when=FIRST_COMPLETED)
    elif not any(f.done() for f in futures):
        with contextlib.suppress(Exception):
            futures[0].result()


def _partition(items: list[Any], done: Callable[[Any], bool]) -> tuple[list[Any], list[Any]]:
    yes, no = [], []
    for item in items:
        (yes if done(item) else no).append(item)
    return yes, no


def _registered_max_steps(env_id: str) -> int | None:
    import gymnasium as gym

    try:
        return gym.spec(env_id).max_episode_steps
    except Exception:
        return None


def _is_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int))


def _describe(exc: BaseException, where: str) -> str:
    return f"env error during {where}: {type(exc).__name__}: {exc}"


def run_episodes(env_id: str, agent: Any, engine: Any = None, *, episodes: Sequence[EpisodeSpec] | None = None,
                 split: str = "test", num_tasks: int | None = None, group_size: int = 1, seed: int = 0,
                 out: str | os.PathLike | None = None, **runner_options: Any) -> RunResult:
    """One call: plan ``num_tasks`` x ``group_size`` episodes of ``split`` (or take ``episodes``) and run them."""
    if episodes is None:
        episodes = plan_episodes(env_id, split=split, num_tasks=num_tasks, group_size=group_size, seed=seed,
                                 env_kwargs=runner_options.get("env_kwargs"))
    return EpisodeRunner(env_id, agent, engine, **runner_options).run(episodes, out=out)


__all__ = ["EpisodeRunner", "EpisodeSpec", "RunResult", "RunStats", "TrajectoryWriter", "derive_seed",
           "plan_episodes", "run_episodes"]
