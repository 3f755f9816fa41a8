"""Self-play for Werewolf: LLM agents and bots in any seats, many games in lockstep, per-seat trajectories.

    runner = WerewolfRunner(engine, lineup="wolves=llm,rest=rule", preset="lspo7", max_concurrent=32)
    result = runner.run(seeds=range(64))
    result.trajectories   # one Trajectory per (game, LLM seat): the trainer's input
    result.games          # one GameRecord per game: winner, roles, which policy sat where
    result.stats          # a RunStats, as the gym EpisodeRunner returns (episodes = recorded seats)

Every tick, each live game says who must act (``infos[a]["acting"]``); bots act
at once, and the prompts of ALL acting LLM seats of ALL live games go to the
engine in ONE ``generate`` call (the batch is about the number of live games:
speeches are one at a time within a game, votes and night actions are
simultaneous). Then every game steps its parallel env.

Lineups. A lineup is a comma list of ``WHO=POLICY`` (a bare ``POLICY`` means
``all=POLICY``). WHO: ``all``/``rest`` (the default, whatever its position),
a team (``village``, ``wolves``), a role (``werewolf``, ``seer``, ``doctor``,
``villager``) or a seat number (``3``); later items win over earlier ones,
specific ones over ``all``. POLICY: ``llm`` (the engine), ``rule``,
``random``. Roles are dealt by the seed, so ``seer=llm`` puts the model in
whichever seat got the seer.

Trajectories (``turngym.agents.types``). For every LLM seat (and every bot
seat with ``record_bots=True``), the seat's turns in order: ``observation``
is its transcript view when asked, ``prompt_ids``/``response_ids``/
``response_logprobs`` come from the engine (token in, token out), ``action``
is what reached the env, ``state_key`` the hidden-state digest BEFORE the
action (the trainer's anchor, from ``env.state_key()``: no agent's info
carries it), ``action_valid`` the env's verdict. The game
outcome (+1/-1/0, plus any shaped terms) is the reward of the seat's last
step; ``Trajectory.won`` says whether its team won; ``meta`` holds seat,
role, team, policy and the game's seed; ``task_id`` is the env's opaque id of
the deal (equal for equal seeds within a process; the seed stays with the
runner, in ``seed`` and ``GameRecord.seed``), ``group_id`` is
``"<task_id>|<role>"`` so GRPO-style groups compare one role across games of
one deal (self-play: the trainer can learn one role, or all of them, from the
same games).

This module depends on :mod:`turngym.agents.types`, the gym runner's
:class:`~turngym.agents.runner.RunStats` and the Werewolf env (it needs the
``werewolf`` extra: pettingzoo).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from turngym.agents.engines.base import context_limit, engine_name
from turngym.agents.runner import RunStats
from turngym.agents.types import SamplingParams, Step, Trajectory
from turngym.errors import TurngymError

ENV_ID = "turngym/Werewolf-v0"
POLICIES = ("llm", "rule", "random")
_TEAMS = {"village": ("seer", "doctor", "villager"), "wolves": ("werewolf",)}
_ROLES = ("werewolf", "seer", "doctor", "villager")
_ACTION_LINE = re.compile(r"^\W*(?:action\s*:\s*)?((?:speak|bid|vote|kill|protect|check)\s*:.*|pass)\s*$",
                          re.IGNORECASE | re.MULTILINE)

SYSTEM_PROMPT = """You are playing the social-deduction game Werewolf as one of the players.
Each turn you get your view of the game: your role, the transcript of what you have seen and heard, and what to do now.
Reply with exactly ONE action on one line, in one of these forms:
speak: <what you say to the others>
bid: <0-4>
vote: PlayerK
kill: PlayerK
protect: PlayerK
check: PlayerK
pass
Only the actions listed as admissible right now are valid. Keep speeches short and persuasive.
If you are a werewolf, never reveal it; if you are on the village's team, find the werewolves."""


def _is_ids(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], int)


def parse_lineup(spec: str) -> list[tuple[str, str]]:
    """``"wolves=random,seer=llm,rule"`` -> ``[("wolves","random"), ("seer","llm"), ("all","rule")]`` (checked)."""
    items = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        who, _, policy = part.rpartition("=")
        who, policy = (who.strip().lower() or "all"), policy.strip().lower()
        if who in ("rest", "*", "everyone"):
            who = "all"
        if policy not in POLICIES:
            raise TurngymError(f"werewolf lineup {spec!r}: unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
        if not (who == "all" or who in _TEAMS or who in _ROLES or who.isdigit()):
            raise TurngymError(f"werewolf lineup {spec!r}: unknown seat group {who!r}; use all, rest, village, wolves, "
                               "a role (werewolf, seer, doctor, villager) or a seat number")
        items.append((who, policy))
    if not items:
        raise TurngymError("empty werewolf lineup; e.g. 'rule' or 'wolves=rule,village=llm'")
    return items


def seat_policy(lineup: list[tuple[str, str]], seat: int, role: str) -> str:
    """The policy of seat ``seat`` (1-based) holding ``role``; seats no item names play ``rule``."""
    rank = {"all": 0, "village": 1, "wolves": 1, **{r: 2 for r in _ROLES}}
    best, best_rank = "rule", -1
    for who, policy in lineup:
        team = "wolves" if role == "werewolf" else "village"
        hit = who == "all" or who == team or who == role or (who.isdigit() and int(who) == seat)
        r = 3 if who.isdigit() else rank.get(who, 0)
        if hit and r >= best_rank:
            best, best_rank = policy, r
    return best


class WerewolfLLMPolicy:
    """How an LLM seat talks to the game: chat messages from the observation, an action from the reply.

    Any reply is passed on: the last line that looks like an action is taken; with none, the whole reply
    goes to the env (which answers with feedback and its default), and ``format_ok`` is False.
    """

    def __init__(self, temperature: float = 0.7, top_p: float = 1.0, max_tokens: int = 96,
                 system_prompt: str = SYSTEM_PROMPT):
        self.sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p)
        self.system_prompt = system_prompt

    def messages(self, observation: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": observation + "\nYour action:"}]

    def fit(self, observation: str, count: Callable[[list[dict[str, str]]], int], budget: int
            ) -> tuple[list[dict[str, str]], int]:
        """The messages for ``observation`` within ``budget`` tokens (``count`` measures messages): when
        they are too long, the oldest transcript lines give way to one line saying how many were left out
        (the rules, the seat's role and the current question stay). Returns the messages and the number of
        lines left out; raises :class:`TurngymError` when even no transcript does not fit."""
        messages = self.messages(observation)
        if count(messages) <= budget:
            return messages, 0
        head, sep, rest = observation.partition("\n\nTranscript:\n")
        body, gap, tail = rest.rpartition("\n\n") if sep else ("", "", "")
        lines = body.split("\n") if body else []

        def cut(k: int) -> list[dict[str, str]]:
            kept = [f"[... {k} earlier transcript line(s) left out to fit the model's context ...]"] + lines[k:]
            return self.messages(head + sep + "\n".join(kept) + gap + tail)

        if not lines or count(cut(len(lines))) > budget:
            raise TurngymError(f"a werewolf observation does not fit in {budget} prompt tokens even without its "
                               "transcript: use a model with a longer context, fewer max_tokens or a smaller preset")
        lo, hi = 1, len(lines)  # the least k that fits: cut(hi) fits, cut(lo - 1) does not
        while lo < hi:
            mid = (lo + hi) // 2
            if count(cut(mid)) <= budget:
                hi = mid
            else:
                lo = mid + 1
        return cut(lo), lo

    @staticmethod
    def parse(text: str) -> tuple[str, bool]:
        found = _ACTION_LINE.findall(text or "")
        if found:
            return found[-1].strip(), True
        return (text or "").strip(), False


@dataclass
class GameRecord:
    """One finished game: who sat where with which policy, and how it ended."""

    seed: int  # the deal's seed: the runner's to replay the game, never in an agent's view
    task_id: str  # the env's opaque id of the deal, as on the game's trajectories
    winner: str | None
    roles: dict[str, str]
    policies: dict[str, str]
    steps: int
    truncated: bool = False
    error: str | None = None


@dataclass
class WerewolfResult:
    """The games, the recorded seats' trajectories and the run's totals.

    ``stats`` is the gym runner's :class:`~turngym.agents.runner.RunStats`: ``episodes`` counts the
    recorded seats (one trajectory each), ``env_steps`` the seat actions applied (bots' included, one per
    acting seat per tick, as an AEC env steps), ``llm_turns`` the LLM seats' replies, ``prompt_tokens`` their
    prompt ids, ``env_wait_s`` the time in the games' ``step``; ``errors`` is 0 (an env fault raises).
    """

    games: list[GameRecord] = field(default_factory=list)
    trajectories: list[Trajectory] = field(default_factory=list)
    stats: RunStats = field(default_factory=RunStats)


@dataclass
class _Live:
    env: Any
    seed: int
    obs: dict[str, str]
    infos: dict[str, dict[str, Any]]
    policies: dict[str, str]
    trajs: dict[str, Trajectory]
    rngs: dict[str, random.Random]
    turn: int = 0


class WerewolfRunner:
    """Plays many Werewolf games at once with LLM seats and bots (see the module docstring).

    Args:
        engine: an ``Engine`` (batched ``generate``); needed when the lineup has ``llm`` seats.
        lineup: who plays which seat (see :func:`parse_lineup`).
        preset: the rules preset; ``env_config`` adds env / rules fields (``exile_rule=...``, ``shaping=...``).
        llm: the :class:`WerewolfLLMPolicy` (prompting and parsing) of the LLM seats.
        max_concurrent: games in flight at once.
        record_bots: also return trajectories of bot seats (imitation data).
        model_name: recorded on the trajectories.
        on_game: called with each finished :class:`GameRecord`.
    """

    def __init__(self, engine: Any = None, lineup: str = "rule", preset: str = "arena8",
                 env_config: dict[str, Any] | None = None, llm: WerewolfLLMPolicy | None = None,
                 max_concurrent: int = 16, record_bots: bool = False, model_name: str = "",
                 on_game: Callable[[GameRecord], None] | None = None):
        from turngym.envs.werewolf.bots import make_bot

        self.lineup = parse_lineup(lineup)
        self.uses_engine = any(policy == "llm" for _, policy in self.lineup)
        if self.uses_engine and engine is None:
            raise TurngymError(f"werewolf lineup {lineup!r} has llm seats but no engine was given")
        self.engine = engine
        self.preset = preset
        self.env_config = dict(env_config or {})
        self.llm = llm or WerewolfLLMPolicy()
        self.max_concurrent = max(1, int(max_concurrent))
        self.record_bots = record_bots
        self.model_name = model_name or (engine_name(engine) if engine is not None else "")
        self.on_game = on_game
        self.bots = {"rule": make_bot("rule"), "random": make_bot("random")}

    def _start(self, seed: int) -> _Live:
        from turngym.envs.werewolf import parallel_env

        env = parallel_env(preset=self.preset, **self.env_config)
        obs, infos = env.reset(seed=seed)
        g = env.game
        policies = {p: seat_policy(self.lineup, i + 1, g.roles[p]) for i, p in enumerate(g.players)}
        trajs = {}
        for p in g.players:
            if policies[p] == "llm" or self.record_bots:
                role = g.roles[p]
                trajs[p] = Trajectory(env_id=ENV_ID, task_id=infos[p]["task_id"], group_id=f"{infos[p]['task_id']}|{role}",
                                      seed=seed, agent=policies[p] if policies[p] != "llm" else "werewolf-llm",
                                      model=self.model_name if policies[p] == "llm" else "",
                                      meta={"seat": p, "role": role, "team": infos[p]["team"], "policy": policies[p],
                                            "plan_seed": seed})
        rngs = {p: random.Random(f"{seed}|{p}") for p in g.players}
        return _Live(env=env, seed=seed, obs=obs, infos=infos, policies=policies, trajs=trajs, rngs=rngs)

    def run(self, seeds: Iterable[int]) -> WerewolfResult:
        queue = [int(s) for s in seeds]
        result = WerewolfResult()
        stats = result.stats
        live: list[_Live] = []
        t0 = time.perf_counter()
        while queue or live:
            while queue and len(live) < self.max_concurrent:
                live.append(self._start(queue.pop(0)))
            actions: list[dict[str, str]] = [{} for _ in live]
            pending_steps: list[dict[str, Step]] = [{} for _ in live]
            requests: list[tuple[int, str, list[dict[str, str]]]] = []
            for i, game in enumerate(live):
                g = game.env.game
                state_key = game.env.state_key() if g.actors() else None
                for p in g.actors():
                    policy = game.policies[p]
                    step = Step(observation=game.obs[p], state_key=state_key,
                                info={"phase": game.infos[p]["phase"]})
                    if policy == "llm":
                        requests.append((i, p, self.llm.messages(game.obs[p])))
                    else:
                        action = self.bots[policy].act(g.view(p), game.infos[p]["admissible_actions"], game.rngs[p])
                        actions[i][p] = action
                        step.action = step.response = action
                    pending_steps[i][p] = step
            if requests:
                prompts, samplings = [], []
                limit = context_limit(self.engine)
                for r, (i, p, messages) in enumerate(requests):
                    prompt = self.engine.render(messages)
                    if limit and _is_ids(prompt) and len(prompt) + self.llm.sampling.max_tokens > limit:
                        # a long game outgrew the model's context: drop the oldest transcript lines
                        messages, left_out = self.llm.fit(
                            live[i].obs[p], lambda m: len(self.engine.render(m)),
                            limit - self.llm.sampling.max_tokens)
                        prompt = self.engine.render(messages)
                        requests[r] = (i, p, messages)
                        pending_steps[i][p].info["transcript_lines_left_out"] = left_out
                    prompts.append(prompt)
                    game = live[i]
                    samplings.append(SamplingParams(
                        max_tokens=self.llm.sampling.max_tokens, temperature=self.llm.sampling.temperature,
                        top_p=self.llm.sampling.top_p, seed=(game.seed * 1009 + int(p[6:]) * 97 + game.turn) % 2**31))
                start = time.perf_counter()
                completions = self.engine.generate(prompts, samplings)
                stats.generate_s += time.perf_counter() - start
                stats.generate_calls += 1
                for (i, p, messages), prompt, completion in zip(requests, prompts, completions):
                    action, ok = self.llm.parse(completion.text)
                    actions[i][p] = action
                    step = pending_steps[i][p]
                    step.prompt = messages
                    step.response, step.action = completion.text, action
                    step.prompt_ids = completion.prompt_ids if completion.prompt_ids is not None else (
                        prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], int) else None)
                    step.response_ids, step.response_logprobs = completion.token_ids, completion.logprobs
                    step.finish_reason = completion.finish_reason
                    step.info["format_ok"] = ok
                    stats.llm_turns += 1
                    stats.generated_tokens += len(completion.token_ids or [])
                    stats.prompt_tokens += len(step.prompt_ids or [])
            still = []
            for i, game in enumerate(live):
                start = time.perf_counter()
                obs, rewards, terms, truncs, infos = game.env.step(actions[i])
                seconds = time.perf_counter() - start
                stats.env_wait_s += seconds
                stats.env_busy_s += seconds
                stats.env_steps += len(pending_steps[i])
                game.turn += 1
                state_key = game.env.state_key()
                for p, step in pending_steps[i].items():
                    info = infos.get(p, {})
                    step.action_valid = bool(info.get("action_valid", True))
                    step.info.update(kind="act", feedback=info.get("feedback", ""), state_key=state_key)
                    if p in game.trajs:
                        game.trajs[p].steps.append(step)
                over = bool(terms) and (any(terms.values()) or any(truncs.values()))
                if over:
                    self._finish(game, rewards, truncated=any(truncs.values()), result=result)
                else:
                    game.obs, game.infos = obs, infos
                    still.append(game)
            live = still
        stats.wall_s = time.perf_counter() - t0
        return result

    def _finish(self, game: _Live, rewards: dict[str, float], truncated: bool, result: WerewolfResult) -> None:
        g = game.env.game
        for p, traj in game.trajs.items():
            reward = float(rewards.get(p, 0.0))
            team = traj.meta["team"]
            traj.won = g.winner == team
            traj.total_reward = reward
            traj.truncated = truncated
            traj.meta.update(winner=g.winner, env_steps=len(traj.steps), game_steps=g.steps)
            if traj.steps:
                traj.steps[-1].reward = reward
                traj.steps[-1].terminated = not truncated
                traj.steps[-1].truncated = truncated
            result.trajectories.append(traj)
            result.stats.episodes += 1
        record = GameRecord(seed=game.seed, task_id=game.env.task_id, winner=g.winner,
                            roles=dict(g.roles), policies=dict(game.policies), steps=g.steps, truncated=truncated)
        result.games.append(record)
        if self.on_game is not None:
            self.on_game(record)


__all__ = ["GameRecord", "WerewolfLLMPolicy", "WerewolfResult", "WerewolfRunner", "parse_lineup", "seat_policy"]
