"""Scripted Werewolf players: a random bot and rule-based roles (tests, baselines, opponents).

A bot sees exactly what its seat may know: ``Game.view(player)``, built from the
events that player may see (the same audience filter as its observation), and
the admissible actions. It never reads the hidden state.

Rule-based play:

* seer: checks the most-suspected unchecked player; once it has found a werewolf it
  claims the seer role in public ("I am the Seer. Player5 is a werewolf.") and
  votes for it;
* doctor: protects the earliest living player who claimed to be the seer, else
  itself (when the rules allow);
* villager: trusts the earliest seer claim that was not exposed, repeats its
  accusation and votes for the accused; without one, votes with the day's
  suspicions;
* werewolves: coordinate without talking (every wolf computes the same target
  from the same shared knowledge): they kill the claimed seer first, else a
  player who accused a wolf; by day they deflect: when a wolf is accused, a
  wolf counter-claims the seer role and accuses the accuser, and the pack
  votes together.

``make_bot(name)``: "random" or "rule".

This module depends only on :mod:`turngym.envs.werewolf.game` and ``.rules``.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any, Protocol

from turngym.envs.werewolf.game import draw
from turngym.envs.werewolf.rules import DOCTOR, SEER, WEREWOLF

CLAIM_RE = re.compile(r"\bI am the seer\b", re.IGNORECASE)
ACCUSE_RE = re.compile(r"\b(Player\d+) is a werewolf\b", re.IGNORECASE)
CLEAR_RE = re.compile(r"\b(Player\d+) is not a werewolf\b", re.IGNORECASE)
SUSPECT_RE = re.compile(r"\b(?:suspect|vote|accuse)\s+(Player\d+)\b", re.IGNORECASE)


class Bot(Protocol):
    name: str

    def act(self, view: dict[str, Any], admissible: list[str], rng: random.Random) -> str:
        """The seat's action now, from its view and the admissible actions."""
        ...


class RandomBot:
    """A uniformly random admissible action (``pass`` when none is listed)."""

    name = "random"

    def act(self, view: dict[str, Any], admissible: list[str], rng: random.Random) -> str:
        return rng.choice(admissible) if admissible else "pass"


def _norm(name: str) -> str:
    return "Player" + re.sub(r"\D", "", name)


def seer_claims(view: dict[str, Any]) -> list[tuple[str, list[str], list[str]]]:
    """Public seer claims in speaking order: (claimant, accused, cleared), merged per claimant."""
    out: dict[str, tuple[list[str], list[str]]] = {}
    for _, speaker, body in view["speeches"]:
        if CLAIM_RE.search(body) or speaker in out:
            accused, cleared = out.setdefault(speaker, ([], []))
            accused += [_norm(p) for p in ACCUSE_RE.findall(body) if _norm(p) not in accused]
            cleared += [_norm(p) for p in CLEAR_RE.findall(body) if _norm(p) not in cleared]
    return [(c, a, cl) for c, (a, cl) in out.items()]


def trusted_claim(view: dict[str, Any]) -> tuple[str, list[str], list[str]] | None:
    """The earliest seer claim not exposed (its claimant not revealed as a non-seer, not claiming the viewer)."""
    me = view["me"]
    for claimant, accused, cleared in seer_claims(view):
        if claimant == me or view["revealed"].get(claimant, SEER) != SEER:
            continue
        if me in accused and view["role"] != WEREWOLF:  # it lies about me: a wolf
            continue
        if view["role"] == SEER:
            continue
        return claimant, accused, cleared
    return None


def suspicion(view: dict[str, Any], cycle_only: bool = True) -> Counter[str]:
    """How often each player was named as suspect or werewolf in (today's) speeches."""
    counts: Counter[str] = Counter()
    for cycle, _, body in view["speeches"]:
        if cycle_only and cycle != view["cycle"]:
            continue
        for name in SUSPECT_RE.findall(body) + ACCUSE_RE.findall(body):
            counts[_norm(name)] += 1
    return counts


def _pick(options: list[str], tag: str) -> str:
    """A deterministic pick every teammate computes the same way (no RNG, no talking)."""
    return options[draw(0, tag + "|" + ",".join(options), len(options))]


def _target_of(action: str) -> str:
    return action.split(":", 1)[1].strip() if ":" in action else ""


class RuleBot:
    """Rule-based play for every role (see the module docstring)."""

    name = "rule"

    def act(self, view: dict[str, Any], admissible: list[str], rng: random.Random) -> str:
        if not admissible:
            return "pass"
        kind = admissible[0].split(":", 1)[0].strip()
        phase = view["phase"]
        role = view["role"]
        if phase == "wolf_chat":
            target = self._wolf_target(view)
            return f"speak: Let us attack {target}." if target else "pass"
        if phase == "night":
            if kind == "kill" or role == WEREWOLF:
                return self._choose(admissible, "kill", self._wolf_target(view), rng)
            if role == SEER:
                return self._choose(admissible, "check", self._seer_check(view, rng), rng)
            if role == DOCTOR:
                return self._choose(admissible, "protect", self._doctor_protect(view), rng)
        if phase == "bid":
            return f"bid: {min(self._urgency(view), len(admissible) - 1)}"
        if phase == "speech":
            return "speak: " + self._speech(view)
        if phase == "vote":
            return self._choose(admissible, "vote", self._vote(view, admissible, rng), rng)
        return rng.choice(admissible)

    @staticmethod
    def _choose(admissible: list[str], verb: str, target: str | None, rng: random.Random) -> str:
        wanted = f"{verb}: {target}"
        if target and wanted in admissible:
            return wanted
        real = [a for a in admissible if a != "pass"]
        return rng.choice(real) if real else "pass"

    # ---- werewolves ----------------------------------------------------------------------------
    def _wolf_target(self, view: dict[str, Any]) -> str | None:
        pack = set(view["pack"])
        prey = [p for p in view["alive"] if p not in pack]
        if not prey:
            return None
        failed = view["pack_target"] if view["pack_target"] in prey else None  # last attack was blocked
        for claimant, _, _ in seer_claims(view):
            if claimant in prey and claimant != failed:
                return claimant
        accusers = [s for _, s, body in view["speeches"] if s in prey and s != failed
                    and any(_norm(p) in pack for p in ACCUSE_RE.findall(body) + SUSPECT_RE.findall(body))]
        if accusers:
            return Counter(accusers).most_common(1)[0][0]
        pool = [p for p in prey if p != failed] or prey
        return _pick(pool, f"kill|{view['cycle']}")

    def _accused_wolves(self, view: dict[str, Any]) -> list[tuple[str, str]]:
        pack = set(view["pack"])
        return [(claimant, w) for claimant, accused, _ in seer_claims(view) if claimant not in pack
                and claimant in view["alive"] for w in accused if w in pack and w in view["alive"]]

    def _scapegoat(self, view: dict[str, Any]) -> str | None:
        pack = set(view["pack"])
        accused = self._accused_wolves(view)
        if accused:
            return accused[0][0]  # the accuser
        prey = [p for p in view["alive"] if p not in pack]
        if not prey:
            return None
        sus = suspicion(view)
        ranked = sorted(prey, key=lambda p: -sus[p])
        if sus[ranked[0]] > 0:
            return ranked[0]
        return _pick(prey, f"goat|{view['cycle']}")

    # ---- village --------------------------------------------------------------------------------
    def _seer_check(self, view: dict[str, Any], rng: random.Random) -> str | None:
        unchecked = [p for p in view["alive"] if p != view["me"] and p not in view["visions"]]
        if not unchecked:
            return None
        sus = suspicion(view, cycle_only=False)
        top = max(sus[p] for p in unchecked)
        return rng.choice([p for p in unchecked if sus[p] == top])

    def _doctor_protect(self, view: dict[str, Any]) -> str | None:
        for claimant, _, _ in seer_claims(view):
            if claimant in view["alive"] and claimant != view["me"] and view["revealed"].get(claimant, SEER) == SEER:
                return claimant
        return view["me"]

    def _known_wolves(self, view: dict[str, Any]) -> list[str]:
        if view["role"] == SEER:
            return [p for p, w in view["visions"].items() if w and p in view["alive"]]
        claim = trusted_claim(view)
        return [p for p in claim[1] if p in view["alive"]] if claim else []

    def _urgency(self, view: dict[str, Any]) -> int:
        if view["role"] == WEREWOLF:
            return 3 if self._accused_wolves(view) else 1
        if view["role"] == SEER and self._known_wolves(view):
            return 4
        return 2 if self._known_wolves(view) else 0

    def _speech(self, view: dict[str, Any]) -> str:
        role = view["role"]
        if role == WEREWOLF:
            accused = self._accused_wolves(view)
            if accused:
                accuser = accused[0][0]
                return f"I am the Seer. {accuser} is a werewolf. They are lying about my friends; vote {accuser}."
            goat = self._scapegoat(view)
            return f"I suspect {goat}." if goat else "I have nothing to add."
        wolves = self._known_wolves(view)
        if role == SEER:
            if wolves:
                cleared = [p for p, w in view["visions"].items() if not w and p in view["alive"]]
                extra = "".join(f" {p} is not a werewolf." for p in cleared)
                return f"I am the Seer. {wolves[0]} is a werewolf.{extra} Vote {wolves[0]}."
            return "I have no information yet."
        claim = trusted_claim(view)
        if claim and wolves:
            return f"I believe {claim[0]}: {wolves[0]} is a werewolf. Vote {wolves[0]}."
        return "I have nothing to add yet."

    def _vote(self, view: dict[str, Any], admissible: list[str], rng: random.Random) -> str | None:
        targets = [_target_of(a) for a in admissible if a.startswith("vote:")]
        if not targets:
            return None
        if view["role"] == WEREWOLF:
            goat = self._scapegoat(view)
            if goat in targets:
                return goat
            prey = [t for t in targets if t not in view["pack"]]
            return _pick(prey, f"vote|{view['cycle']}") if prey else None
        for wolf in self._known_wolves(view):
            if wolf in targets:
                return wolf
        cleared = set(view["visions"]) if view["role"] == SEER else set()
        claim = trusted_claim(view)
        if claim:
            cleared |= set(claim[2]) | {claim[0]}
        pool = [t for t in targets if t not in cleared] or targets
        sus = suspicion(view)
        top = max(sus[t] for t in pool)
        if top > 0:
            return rng.choice([t for t in pool if sus[t] == top])
        return rng.choice(pool)


BOTS = {"random": RandomBot, "rule": RuleBot}


def play_game(game: Any, seats: dict[str, Bot], max_steps: int | None = None) -> Any:
    """Play ``game`` (a :class:`~turngym.envs.werewolf.game.Game`) to the end with a bot in every seat.

    Each seat draws from its own generator seeded with (game seed, seat), so a game replays exactly."""
    from turngym.envs.werewolf.game import step_bound

    limit = max_steps or step_bound(game.rules)
    rngs = {p: random.Random(f"{game.seed}|{p}") for p in game.players}
    while not game.over and game.steps < limit:
        for player in game.actors():
            game.act(player, seats[player].act(game.view(player), game.admissible_actions(player), rngs[player]))
    return game


def make_bot(name: str) -> Bot:
    """A bot by name: "random" or "rule"."""
    key = name.strip().lower()
    if key not in BOTS:
        from turngym.errors import TurngymError

        raise TurngymError(f"unknown werewolf bot {name!r}; known: {', '.join(BOTS)}")
    return BOTS[key]()


__all__ = ["BOTS", "Bot", "RandomBot", "RuleBot", "make_bot", "play_game", "seer_claims", "trusted_claim"]
