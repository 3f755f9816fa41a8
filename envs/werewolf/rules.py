"""Werewolf's rules as data: one frozen config, three presets.

Everything a table of players would agree on before the first night lives in
:class:`Rules`; the game engine (:mod:`turngym.envs.werewolf.game`) reads
nothing else. Presets are named configs; any field can be overridden by
keyword (``Rules.from_config(preset="arena8", exile_rule="plurality")``).

This module depends on nothing of ours but :mod:`turngym.errors`.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from turngym.errors import TurngymError

WEREWOLF, SEER, DOCTOR, VILLAGER = "werewolf", "seer", "doctor", "villager"
ROLES = (WEREWOLF, SEER, DOCTOR, VILLAGER)
#: Roles with a night power, and the action word each one types.
NIGHT_ACTIONS = {WEREWOLF: "kill", SEER: "check", DOCTOR: "protect"}
VILLAGE, WOLVES = "village", "wolves"
SPEECH_PROTOCOLS = ("round_robin", "bidding")
EXILE_RULES = ("plurality", "majority")
TIE_RULES = ("no_exile", "revote", "random")


def team_of(role: str) -> str:
    return WOLVES if role == WEREWOLF else VILLAGE


class RulesError(TurngymError, ValueError):
    """A bad Werewolf rules field (the message names it and the accepted values)."""


@dataclass(frozen=True)
class Rules:
    """The table's rules (every field has a one-line help text).

    Attributes:
        roles: role -> count; players are named Player1..PlayerN in seat order and roles are dealt by the seed.
        night_order: the roles that act at night, in the order the AEC env asks them (all choices are resolved
            together at dawn, so the order changes who is asked first, not the outcome); leave a role out to
            take its power away.
        wolf_chat_rounds: rounds of private werewolf discussion each night before they vote on a victim (0 = none).
        speech: "round_robin" (every living player speaks in seat order, starting one seat later each day) or
            "bidding" (before each speech every living player bids 0..max_bid; the highest bid speaks).
        debate_rounds: round_robin only: how many times each living player speaks per day.
        debate_turns: bidding only: speeches per day.
        max_bid: bidding only: the highest bid.
        exile_rule: "plurality" (most votes) or "majority" (more than half of the LIVING players, so abstentions
            count against an exile).
        tie_rule: what a plurality tie does: "no_exile", "revote" (one runoff among the tied players, then no
            exile if still tied), or "random" (a seeded draw among the tied players).
        allow_abstain: players may answer a vote with ``pass`` (and invalid votes abstain); if False an invalid
            vote still abstains (the game must not stall) but ``pass`` is not listed as admissible.
        reveal_role_on_death: announce the role of every player killed or exiled.
        doctor_self_protect: the doctor may protect themself.
        doctor_repeat_protect: the doctor may protect the same player two nights in a row.
        first_phase: "night" (the wolves strike before anyone speaks) or "day".
        max_days: the game ends in a draw (no winner, every reward 0) after this many days.
        max_speech_chars: a speech longer than this is cut (marked with "...").
    """

    roles: dict[str, int] = field(default_factory=lambda: {WEREWOLF: 2, SEER: 1, DOCTOR: 1, VILLAGER: 4})
    night_order: tuple[str, ...] = (WEREWOLF, DOCTOR, SEER)
    wolf_chat_rounds: int = 0
    speech: str = "bidding"
    debate_rounds: int = 1
    debate_turns: int = 8
    max_bid: int = 4
    exile_rule: str = "majority"
    tie_rule: str = "no_exile"
    allow_abstain: bool = True
    reveal_role_on_death: bool = False
    doctor_self_protect: bool = True
    doctor_repeat_protect: bool = True
    first_phase: str = "night"
    max_days: int = 10
    max_speech_chars: int = 400

    def __post_init__(self) -> None:
        roles = dict(self.roles)
        for role, count in roles.items():
            if role not in ROLES:
                raise RulesError(f"rules.roles: unknown role {role!r}; known roles: {', '.join(ROLES)}")
            if not isinstance(count, int) or count < 0:
                raise RulesError(f"rules.roles[{role!r}] must be a non-negative int, got {count!r}")
        if roles.get(WEREWOLF, 0) < 1:
            raise RulesError("rules.roles needs at least one werewolf")
        if sum(roles.values()) - roles[WEREWOLF] <= roles[WEREWOLF]:
            raise RulesError(f"rules.roles {roles}: the wolves would win before the game starts; "
                             "the village must outnumber the werewolves")
        if roles.get(SEER, 0) > 1 or roles.get(DOCTOR, 0) > 1:
            raise RulesError("rules.roles: at most one seer and one doctor")
        object.__setattr__(self, "roles", {r: roles.get(r, 0) for r in ROLES if roles.get(r, 0)})
        order = tuple(self.night_order)
        for role in order:
            if role not in NIGHT_ACTIONS:
                raise RulesError(f"rules.night_order: {role!r} has no night action; use roles from "
                                 f"{', '.join(NIGHT_ACTIONS)}")
        if len(set(order)) != len(order):
            raise RulesError(f"rules.night_order {order} lists a role twice")
        object.__setattr__(self, "night_order", order)
        for name, value, allowed in (("speech", self.speech, SPEECH_PROTOCOLS), ("exile_rule", self.exile_rule, EXILE_RULES),
                                     ("tie_rule", self.tie_rule, TIE_RULES), ("first_phase", self.first_phase, ("night", "day"))):
            if value not in allowed:
                raise RulesError(f"rules.{name}={value!r}; use one of {', '.join(allowed)}")
        for name, low in (("wolf_chat_rounds", 0), ("debate_rounds", 1), ("debate_turns", 1), ("max_bid", 1),
                          ("max_days", 1), ("max_speech_chars", 20)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise RulesError(f"rules.{name} must be an int >= {low}, got {value!r}")

    @property
    def num_players(self) -> int:
        return sum(self.roles.values())

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, preset: str | None = "arena8", **overrides: Any) -> Rules:
        """A preset with field overrides; an unknown field or preset names the closest known one."""
        base: dict[str, Any] = {}
        if preset is not None:
            if preset not in PRESETS:
                close = difflib.get_close_matches(str(preset), list(PRESETS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RulesError(f"unknown werewolf preset {preset!r}{hint} (known: {', '.join(PRESETS)})")
            base = dict(PRESETS[preset])
        names = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in names:
                close = difflib.get_close_matches(key, sorted(names), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise RulesError(f"unknown werewolf rules field {key!r}{hint} (known: {', '.join(sorted(names))})")
        base.update(overrides)
        if isinstance(base.get("night_order"), list):
            base["night_order"] = tuple(base["night_order"])
        return cls(**base)


#: Named configs. See the README for what each follows and what was guessed.
PRESETS: dict[str, dict[str, Any]] = {
    # Werewolf Arena (Bailis et al. 2024, google/werewolf_arena): 8 players, bidding for the floor (0-4),
    # up to 8 debate turns, exile only on a strict majority. No wolf chat: in Arena the wolves' choice is a
    # single night action. Role reveal on death is off (our reading; not verified in their code).
    "arena8": {"roles": {WEREWOLF: 2, SEER: 1, DOCTOR: 1, VILLAGER: 4}, "night_order": (WEREWOLF, DOCTOR, SEER),
                   "wolf_chat_rounds": 0, "speech": "bidding", "debate_turns": 8, "max_bid": 4, "exile_rule": "majority",
                   "tie_rule": "no_exile", "reveal_role_on_death": False, "first_phase": "night", "max_days": 10},
    # LSPO (Xu et al. 2025, arXiv 2502.04686) and its predecessor: 7 players, one round of speeches in
    # seat order, then a vote. Plurality exile with no exile on a tie, one private wolf-chat round and no
    # role reveal are our choices where the papers leave it open.
    "lspo7": {"roles": {WEREWOLF: 2, SEER: 1, DOCTOR: 1, VILLAGER: 3}, "night_order": (WEREWOLF, DOCTOR, SEER),
                  "wolf_chat_rounds": 1, "speech": "round_robin", "debate_rounds": 1, "exile_rule": "plurality",
                  "tie_rule": "no_exile", "reveal_role_on_death": False, "first_phase": "night", "max_days": 10},
    # A small, fast table for tests: every mechanism on (wolf chat, revote, reveals), 6 seats.
    "small": {"roles": {WEREWOLF: 2, SEER: 1, DOCTOR: 1, VILLAGER: 2}, "night_order": (WEREWOLF, DOCTOR, SEER),
                  "wolf_chat_rounds": 1, "speech": "round_robin", "debate_rounds": 1, "exile_rule": "plurality",
                  "tie_rule": "revote", "reveal_role_on_death": True, "first_phase": "night", "max_days": 6,
                  "max_speech_chars": 200},
}
