"""Werewolf as PettingZoo environments: ``env(**config)`` (AEC) and ``parallel_env(**config)``.

Both views drive the same :class:`~turngym.envs.werewolf.game.Game`. Needs the
``werewolf`` extra (``pip install 'turngym[werewolf]'``: pettingzoo).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
from typing import Any, ClassVar

from turngym.envs.spaces import MAX_ACTION_LENGTH, MAX_OBSERVATION_LENGTH, text_space
from turngym.envs.werewolf.game import Game, step_bound
from turngym.envs.werewolf.rules import Rules, team_of
from turngym.errors import MissingDependencyError, TurngymError

try:
    from pettingzoo import AECEnv, ParallelEnv
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError("pettingzoo", "werewolf", "the Werewolf env") from exc

_OPTIONS = ("roles",)
#: Keys task ids when no ``task_key`` is given: random per process, so an id names one deal within a run
#: and nobody can map it back to a seed (a key fixed in code could be brute-forced over small seeds).
_PROCESS_TASK_KEY = secrets.token_bytes(32)


class _WerewolfBase:
    """What the AEC and parallel views share: config, spaces, reset, infos."""

    metadata: ClassVar[dict[str, Any]] = {"name": "werewolf_v0", "render_modes": ["ansi", "human"],
                                          "is_parallelizable": True}

    def __init__(self, preset: str | None = "arena8", render_mode: str | None = None,
                 shaping: dict[str, float] | None = None, max_observation_chars: int = MAX_OBSERVATION_LENGTH,
                 max_action_chars: int = MAX_ACTION_LENGTH, max_steps: int | None = None,
                 task_key: bytes | str | None = None, **rules: Any):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise TurngymError(f"render_mode {render_mode!r} is not supported; use one of {self.metadata['render_modes']}")
        self.rules = Rules.from_config(preset, **rules)
        self.preset = preset or "custom"
        self.render_mode = render_mode
        unknown = set(shaping or {}) - {"vote_enemy", "survive"}
        if unknown:
            raise TurngymError(f"unknown shaping term(s) {sorted(unknown)}; known: vote_enemy, survive")
        self.shaping = dict(shaping or {})
        self.max_observation_chars = int(max_observation_chars)
        self.max_steps = int(max_steps) if max_steps else step_bound(self.rules)
        self.possible_agents = [f"Player{i}" for i in range(1, self.rules.num_players + 1)]
        self.observation_spaces = {a: text_space(self.max_observation_chars) for a in self.possible_agents}
        self.action_spaces = {a: text_space(int(max_action_chars)) for a in self.possible_agents}
        self.game: Game | None = None
        self._seeder = random.Random()
        self._task_key = task_key.encode() if isinstance(task_key, str) else (task_key or _PROCESS_TASK_KEY)

    def observation_space(self, agent: str):
        return self.observation_spaces[agent]

    def action_space(self, agent: str):
        return self.action_spaces[agent]

    def _new_game(self, seed: int | None, options: dict[str, Any] | None) -> None:
        if seed is not None:
            self._seeder = random.Random(seed)
            game_seed = int(seed)
        else:
            game_seed = self._seeder.randrange(2**31)
        options = options or {}
        self.game = Game(self.rules, seed=game_seed, roles=options.get("roles"))
        self.agents = list(self.possible_agents)
        # An opaque id of the deal: equal for equal (rules, seed, roles) under one key, and no way back to the
        # seed without the key ("<preset>/<seed>" let anyone rebuild every role with the deal function).
        deal = f"{sorted(self.rules.to_dict().items())}|{self.game.seed}|{options.get('roles')}"
        self.task_id = f"{self.preset}/{hmac.new(self._task_key, deal.encode(), hashlib.sha256).hexdigest()[:16]}"

    def _infos(self) -> dict[str, dict[str, Any]]:
        return {a: self._info(a) for a in self.agents}

    def _info(self, agent: str) -> dict[str, Any]:
        # Only what ``agent`` may know, and nothing that moves on a step it cannot see (no hidden-state digest,
        # no global step count): see the README's "Observations" and tests/envs/test_werewolf_leak.py.
        g = self.game
        team = team_of(g.roles[agent])
        return {
            "task_id": self.task_id,
            "admissible_actions": g.admissible_actions(agent),
            "acting": agent in g.pending,
            "action_valid": g.last_valid[agent],
            "feedback": g.last_feedback[agent],
            "phase": g.phase_of(agent),
            "cycle": g.cycle,
            "role": g.roles[agent],
            "team": team,
            "alive": g.alive[agent],
            "winner": g.winner,
            "won": g.winner == team,
        }

    def observe(self, agent: str) -> str:
        return self.game.observation(agent, self.max_observation_chars)

    def state_key(self, feedback: bool = True) -> str:
        """A digest of the full hidden state, roles included: for trainers (GiGPO-style anchors), never for a policy.

        ``feedback=False`` leaves out the feedback on invalid actions (the env checker compares an invalid
        action with its default this way)."""
        return self.game.state_key(feedback)

    def invalid_action_default(self, agent: str) -> str:
        """The action an invalid one of ``agent`` is replaced by now (besides private feedback): see the README."""
        return self.game.default_action(agent)

    def illegal_actions(self, agent: str) -> list[str]:
        """Valid-looking but wrong actions of ``agent`` now, for the env checker."""
        return self.game.illegal_actions(agent)

    def render(self) -> str | None:
        """The moderator's view: every event with its audience (spoilers: for people, never for agents)."""
        if self.game is None:
            return None
        lines = []
        for e in self.game.events:
            who = "all" if e.audience is None else ",".join(e.audience)
            lines.append(f"({who}) {e.line()}")
        text = "\n".join(lines)
        if self.render_mode == "human":
            print(text)
            return None
        return text

    def close(self) -> None:
        pass


class WerewolfEnv(_WerewolfBase, AECEnv):
    """Werewolf: a social-deduction game for language agents (PettingZoo AEC).

    Players ``Player1..PlayerN`` get hidden roles (werewolf, seer, doctor,
    villager). Nights: the werewolves (after an optional private chat) vote on a
    victim, the doctor protects one player, the seer learns whether one player
    is a werewolf. Days: the death is announced, players speak (round-robin or
    by bidding), then vote to exile. The village wins when no werewolf is left;
    the werewolves when they are at least as many as everyone else.

    Args:
        preset: "arena8", "lspo7" or "small" (see :mod:`turngym.envs.werewolf.rules`); None = the field defaults.
        render_mode: None, "ansi" or "human" (the moderator's full view: for people only).
        shaping: optional shaped reward terms, off by default: ``{"vote_enemy": w}`` (w per day vote cast
            on the other team), ``{"survive": w}`` (w if alive at the end). Paid at the end of the game only,
            so a reward never tells a player a secret mid-game.
        max_observation_chars: observations longer than this drop their oldest transcript lines.
        max_action_chars: the action space's max length (what ``action_space.sample()`` draws; longer
            actions are still accepted: any string is legal input).
        max_steps: truncation guard (default: a bound no game reaches).
        task_key: the secret that keys task ids (default: a random key per process, so ids are stable within a
            run only); pass one to get the same ids across processes, and keep it from agents.
        **rules: any :class:`~turngym.envs.werewolf.rules.Rules` field, e.g. ``exile_rule="plurality"``.

    Observation (``str``): the agent's own transcript view: a header (its name, role, pack or visions, the
    rules), every event it may see, one per line, and a footer saying what to do now. Speech is quoted
    (``Player3 says: “...”``); nothing outside the quotes is another player's text.

    Actions (``str``; any string is legal input): ``speak: <text>``, ``bid: N``, ``vote: PlayerK``,
    ``kill: PlayerK``, ``protect: PlayerK``, ``check: PlayerK``, ``pass``. An action that does not fit the
    moment gets private feedback and is replaced by its default (``invalid_action_default(agent)``): a silent
    speech, ``bid: 0``, an abstention, no night action. Nothing else changes: other players see exactly what the
    default would have shown them (``turngym.envs.check.check_aec_env`` verifies it).

    Rewards: at the end, +1 to each player of the winning team, -1 to the losers, 0 to all in a draw
    (after ``max_days``), plus the shaped terms if asked. Dead players stay in ``agents`` (never asked to
    act) until the end, so they receive their team's outcome.

    Infos (per agent, only what that agent may know): ``admissible_actions`` (every valid action now, [] if not
    asked), ``acting``, ``action_valid`` and ``feedback`` (of the agent's latest action), ``phase`` (as the agent
    knows it: the wolves' chat is "night" to the others), ``cycle``, ``role``, ``team``, ``alive``, ``winner``,
    ``won``, and ``task_id`` ("<preset>/<16 hex digits>", an opaque id of the deal: equal for equal seeds within a
    process, keyed so no one can map it back to the seed). No info moves on a step the agent cannot see.
    Trainers read the hidden-state digest from ``env.state_key()``.

    Reset options: ``{"roles": [role per seat]}`` fixes the deal (constructed positions); other keys are ignored.

    Version History:
        * v0: initial release. Issue 17: ``task_id`` is opaque (it was "<preset>/<seed>", from which the deal
          function rebuilt every role); infos lost ``state_key`` (now ``env.state_key()``) and ``step``, and
          show the agent's own ``phase``; the seer and doctor are asked from nightfall; an invalid bid is
          ``bid: 0``.
    """

    def __init__(self, **config: Any):
        _WerewolfBase.__init__(self, **config)
        AECEnv.__init__(self)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None) -> None:
        self._new_game(seed, options)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = self._infos()
        self.agent_selection = self.game.actors()[0]

    def step(self, action: Any) -> None:
        agent = self.agent_selection
        if self.terminations[agent] or self.truncations[agent]:
            self._was_dead_step(action)
            return
        self._cumulative_rewards[agent] = 0.0
        self.rewards = {a: 0.0 for a in self.agents}
        self.game.act(agent, action)
        if self.game.over:
            self.rewards = self.game.rewards(self.shaping)
            self.terminations = {a: True for a in self.agents}
        elif self.game.steps >= self.max_steps:
            self.truncations = {a: True for a in self.agents}
        self.infos = self._infos()
        actors = self.game.actors()
        self.agent_selection = actors[0] if actors and not any(self.truncations.values()) else self.agents[0]
        self._accumulate_rewards()


class WerewolfParallelEnv(_WerewolfBase, ParallelEnv):
    """Werewolf with simultaneous moves (PettingZoo parallel API); the same game as :class:`WerewolfEnv`.

    Each ``step`` applies the actions of the players the game waits for (``infos[a]["acting"]``): everyone
    alive for a vote or a bid, the night roles at night (the seer and the doctor from nightfall, so during the
    wolves' chat too; the wolves once it is over), one speaker during speeches and wolf chat. Actions of other
    players are ignored; a missing action of an acting player counts as an invalid (empty) action.
    Observations, rewards and infos are as in :class:`WerewolfEnv`; when the game ends every agent is
    terminated (or truncated at ``max_steps``) and ``agents`` empties.
    """

    def __init__(self, **config: Any):
        _WerewolfBase.__init__(self, **config)

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        self._new_game(seed, options)
        return {a: self.observe(a) for a in self.agents}, self._infos()

    def step(self, actions: dict[str, Any]):
        game = self.game
        for agent in game.actors():
            game.act(agent, actions.get(agent, ""))
        rewards = game.rewards(self.shaping) if game.over else {a: 0.0 for a in self.agents}
        truncated = not game.over and game.steps >= self.max_steps
        agents = self.agents
        obs = {a: self.observe(a) for a in agents}
        infos = self._infos()
        terms = {a: game.over for a in agents}
        truncs = {a: truncated for a in agents}
        rewards = {a: rewards[a] for a in agents}
        if game.over or truncated:
            self.agents = []
        return obs, rewards, terms, truncs, infos


def env(**config: Any) -> WerewolfEnv:
    """The AEC Werewolf env (see :class:`WerewolfEnv` for the config)."""
    return WerewolfEnv(**config)


def parallel_env(**config: Any) -> WerewolfParallelEnv:
    """The parallel Werewolf env (see :class:`WerewolfParallelEnv`)."""
    return WerewolfParallelEnv(**config)


raw_env = WerewolfEnv
