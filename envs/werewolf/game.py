"""The Werewolf game engine: hidden roles, night actions, speeches, votes, and per-player views.

The engine is pure Python (no PettingZoo) so the rules, the bots and the leak
test run without the optional extra. :mod:`turngym.envs.werewolf.werewolf_env` wraps it
in PettingZoo's AEC and parallel APIs.

How information flows (the leak invariant, stated once here and tested in
tests/envs/test_werewolf_leak.py):

* Everything that happens is an :class:`Event` in ``Game.events`` with an
  audience: ``None`` (public: every player, dead ones included) or a tuple of
  players. The audience is fixed by the event's kind (see ``AUDIENCE`` in the
  README): a player's role -> that player (and the pack, for a werewolf);
  wolf chat and the pack's votes -> the werewolves; a vision -> the seer; a
  protection -> the doctor; feedback on an invalid action -> its author.
* A player's observation is ``header(player) + [line(e) for e in events if
  the player is in e's audience] + footer(player)``. Header and footer read
  only the player's own role, what its role lets it know (pack, visions,
  protections: the same facts as its private events), and public state.
* Text a player typed appears only inside the quotes of a speech line
  (``PlayerK says: “...”``), with line breaks and the closing quote mark
  removed, so it can never pose as a line of the moderator. What a player
  chooses to say is theirs: a werewolf may repeat the night chat aloud, a
  villager may claim to be the seer. That is speech, not a leak.

Any string is a legal action. An action that does not fit the moment gets a
private feedback line and is replaced by the documented default
(:meth:`Game.default_action`: a silent speech, a bid of 0, an abstention, no
night action), so no agent can stall the game.

No timing leaks either: a player's own view (observation, phase, whether it is
asked to act, what it may do) changes only with an event it may hear or with
its own action. So the wolves' private chat is "night" to everyone else, and
the seer and the doctor are asked from nightfall, alongside that chat, rather
than when it ends (its length would tell how many wolves are alive).

This module depends on nothing of ours but :mod:`turngym.envs.spaces`,
:mod:`turngym.envs.core` (``stable_digest``) and the rules module.
"""

from __future__ import annotations

import copy
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from turngym.envs.core import stable_digest
from turngym.envs.spaces import quote_action, to_charset
from turngym.envs.werewolf.rules import (
    DOCTOR,
    NIGHT_ACTIONS,
    ROLES,
    SEER,
    VILLAGE,
    VILLAGER,
    WEREWOLF,
    WOLVES,
    Rules,
    team_of,
)

#: Event kinds and who may hear them. "public": everyone; "self": the player the event is about or addressed to;
#: "wolves": every werewolf; "seer"/"doctor": that role's player.
AUDIENCE = {
    "phase": "public", "death": "public", "exile": "public", "reveal": "public", "speech": "public",
    "silence": "public", "floor": "public", "vote_call": "public", "votes": "public", "verdict": "public",
    "game_over": "public",
    "role": "self", "feedback": "self",
    "pack": "wolves", "whisper": "wolves", "pack_votes": "wolves",
    "vision": "seer", "protection": "doctor",
}
#: Agent-authored text is quoted between these marks; they are removed from the text itself.
OPEN_QUOTE, CLOSE_QUOTE = "“", "”"
ACTION_RE = re.compile(r"^\s*(speak|bid|vote|kill|protect|check|pass)\b\s*:?\s*(.*)$", re.IGNORECASE | re.DOTALL)
TARGET_RE = re.compile(r"^\s*[\"'`*]*\s*(?:player\s*)?(\d+)\b", re.IGNORECASE)
PLAYER_RE = re.compile(r"\bPlayer\s*(\d+)\b", re.IGNORECASE)

ROLE_BLURB = {
    WEREWOLF: "You are on the werewolves' team. Each night the pack picks a victim. You win when the werewolves "
              "are at least as many as everyone else alive.",
    SEER: "You are on the village's team. Each night you may check one player and learn whether they are a werewolf. "
          "The village wins when every werewolf is dead.",
    DOCTOR: "You are on the village's team. Each night you may protect one player from the werewolves. "
            "The village wins when every werewolf is dead.",
    VILLAGER: "You are on the village's team with no night power. The village wins when every werewolf is dead.",
}


@dataclass
class Event:
    """One thing that happened. ``audience`` None = public; ``body`` = agent-authored text (speeches only)."""

    kind: str
    cycle: int
    night: bool
    text: str
    audience: tuple[str, ...] | None = None
    speaker: str | None = None
    body: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    _line: str | None = field(default=None, repr=False, compare=False)

    def line(self) -> str:
        """The event as one transcript line (the same for every player who may see it)."""
        if self._line is None:
            self._line = self._render()
        return self._line

    def _render(self) -> str:
        when = "Start" if self.kind in ("role", "pack") else f"{'Night' if self.night else 'Day'} {self.cycle}"
        if self.audience is not None:
            when += " | werewolves only" if AUDIENCE[self.kind] == "wolves" else " | only you"
        if self.body is not None:
            verb = "whispers" if self.kind == "whisper" else "says"
            return f"[{when}] {self.speaker} {verb}: {OPEN_QUOTE}{self.body}{CLOSE_QUOTE}"
        return f"[{when}] Moderator: {self.text}"

    def visible_to(self, player: str) -> bool:
        return self.audience is None or player in self.audience


def sanitize_speech(text: str, limit: int) -> str:
    """Agent text as a speech body: one line, in the charset, no quote marks of ours, at most ``limit`` chars."""
    text = to_charset(text.replace(OPEN_QUOTE, '"').replace(CLOSE_QUOTE, '"'), max_length=10**9)
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def parse_action(text: Any) -> tuple[str, str]:
    """``"Vote: Player3"`` -> ``("vote", "Player3")``; anything unrecognised -> ``("", text)``."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    m = ACTION_RE.match(text)
    if not m:
        return "", text
    return m.group(1).lower(), m.group(2).strip()


def deal(rules: Rules, seed: int) -> list[str]:
    """The seeded deal: one role per seat, ``Player1`` first (the one place roles are drawn)."""
    deck = [role for role, count in rules.roles.items() for _ in range(count)]
    random.Random(int(seed)).shuffle(deck)
    return deck


def draw(seed: int, tag: str, n: int) -> int:
    """A seeded, stateless draw in ``range(n)`` (ties, dealing): no RNG state to snapshot."""
    h = hashlib.sha256(f"{seed}|{tag}".encode()).hexdigest()
    return int(h[:16], 16) % n


class Game:
    """One game of Werewolf.

    Args:
        rules: the table's :class:`~turngym.envs.werewolf.rules.Rules`.
        seed: deals the roles and breaks random ties; None draws one.
        roles: a fixed role per seat (``["werewolf", "villager", ...]``) instead of a seeded deal, for
            constructed positions and tests; must match ``rules.roles``' counts.
    """

    def __init__(self, rules: Rules, seed: int | None = None, roles: list[str] | None = None):
        self.rules = rules
        self.seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
        n = rules.num_players
        self.players = [f"Player{i}" for i in range(1, n + 1)]
        deck = deal(rules, self.seed)
        if roles is not None:
            if sorted(roles) != sorted(deck):
                raise ValueError(f"roles {roles} do not match the rules' counts {rules.roles}; pass one role per seat")
            deck = list(roles)
        self.roles: dict[str, str] = dict(zip(self.players, deck))
        self.alive: dict[str, bool] = {p: True for p in self.players}
        self.events: list[Event] = []
        self.cycle = 0 if rules.first_phase == "night" else 1
        self.phase = "setup"
        self.pending: list[str] = []  # who must act before the phase moves on (in asking order)
        self.submitted: dict[str, tuple[str, str]] = {}  # simultaneous phases: player -> (verb, arg) accepted
        # (at night every choice is kept, a pass included, so the wolf chat can end without asking again)
        self.queue: list[str] = []  # sequential phases: speakers still to speak
        self.turns_left = 0  # bidding: speeches left today
        self.spoken_today: Counter[str] = Counter()
        self.candidates: list[str] | None = None  # revote: who may be voted for
        self.doctor_last: str | None = None
        self.checked: dict[str, bool] = {}  # seer: player -> is a werewolf
        self.winner: str | None = None  # "village", "wolves", or "draw"
        self.steps = 0
        self.last_valid: dict[str, bool] = {p: True for p in self.players}
        self.last_feedback: dict[str, str] = {p: "" for p in self.players}
        self.enemy_votes: Counter[str] = Counter()  # shaped term: day votes cast on the other team

        for p in self.players:
            self._emit("role", f"You are {p}. Your role: {self.roles[p]}.", audience=(p,), data={"role": self.roles[p]})
        pack = self.wolves()
        if len(pack) > 1:
            self._emit("pack", f"The werewolves are {', '.join(pack)}.", audience=tuple(pack), data={"pack": pack})
        if rules.first_phase == "night":
            self._begin_night()
        else:
            self._begin_day(victim=None, first=True)

    # ---- queries ------------------------------------------------------------------------------
    def wolves(self, alive_only: bool = False) -> list[str]:
        return [p for p in self.players if self.roles[p] == WEREWOLF and (self.alive[p] or not alive_only)]

    def living(self) -> list[str]:
        return [p for p in self.players if self.alive[p]]

    def role_holder(self, role: str) -> str | None:
        return next((p for p in self.players if self.roles[p] == role), None)

    @property
    def over(self) -> bool:
        return self.winner is not None

    @property
    def night(self) -> bool:
        return self.phase in ("wolf_chat", "night")

    def actors(self) -> list[str]:
        """The players whose action the game waits for now, in the order the AEC env asks them."""
        return list(self.pending)

    def phase_of(self, player: str) -> str:
        """The phase as ``player`` knows it: the wolves' chat is "night" to everyone but the wolves."""
        if self.phase == "wolf_chat" and self.roles[player] != WEREWOLF:
            return "night"
        return self.phase

    def default_action(self, player: str) -> str:
        """What an invalid action of ``player`` is replaced by now (README, "Actions"): ``bid: 0`` when bidding,
        else ``pass`` (silence, abstention, no night action). At a vote without abstention ``pass`` is itself
        invalid; the default is still the abstention."""
        return "bid: 0" if self.phase_of(player) == "bid" else "pass"

    def _audience(self, kind: str, player: str | None) -> tuple[str, ...] | None:
        scope = AUDIENCE[kind]
        if scope == "public":
            return None
        if scope == "self":
            assert player is not None
            return (player,)
        if scope == "wolves":
            return tuple(self.wolves())
        holder = self.role_holder(SEER if scope == "seer" else DOCTOR)
        return (holder,) if holder else ()

    def _emit(self, kind: str, text: str = "", audience: tuple[str, ...] | None = None, speaker: str | None = None,
              body: str | None = None, data: dict[str, Any] | None = None) -> Event:
        expected = self._audience(kind, audience[0] if AUDIENCE[kind] == "self" and audience else None)
        assert audience == expected or (AUDIENCE[kind] == "public" and audience is None), (kind, audience, expected)
        event = Event(kind=kind, cycle=self.cycle, night=self.night, text=text, audience=audience, speaker=speaker,
                      body=body, data=dict(data or {}))
        self.events.append(event)
        return event

    # ---- phases --------------------------------------------------------------------------------
    def _begin_night(self) -> None:
        self.cycle += 1
        self.phase = "night"
        self.submitted = {}
        self._emit("phase", f"Night {self.cycle} falls. Everyone closes their eyes.")
        pack = self.wolves(alive_only=True)
        if WEREWOLF in self.rules.night_order and self.rules.wolf_chat_rounds > 0 and len(pack) > 1:
            self.phase = "wolf_chat"
            self.queue = pack * self.rules.wolf_chat_rounds
            self.pending = [self.queue[0]] + self._night_roles(wolves=False)
            return
        self._begin_night_actions()

    def _night_roles(self, wolves: bool) -> list[str]:
        """Living players with a night power who have not chosen yet tonight, in ``night_order``."""
        order = []
        for role in self.rules.night_order:
            if wolves or role != WEREWOLF:
                order += [p for p in self.living() if self.roles[p] == role and p not in self.submitted]
        return order

    def _begin_night_actions(self) -> None:
        self.phase = "night"
        self.pending = self._night_roles(wolves=True)
        if not self.pending:
            self._resolve_night()

    def _resolve_night(self) -> None:
        rules, victim = self.rules, None
        pack = self.wolves(alive_only=True)
        if WEREWOLF in rules.night_order and pack:
            votes = {w: self.submitted[w][1] for w in pack if self.submitted.get(w, ("", ""))[0] == "kill"}
            shown = "; ".join(f"{w} -> {votes.get(w, 'no vote')}" for w in pack)
            if votes:
                tally = Counter(votes.values())
                top = max(tally.values())
                tied = [p for p in self.players if tally.get(p) == top]
                leader_choice = next((votes[w] for w in pack if w in votes), None)
                victim = leader_choice if leader_choice in tied else tied[0]
                self._emit("pack_votes", f"The pack's votes: {shown}. The pack attacks {victim}.",
                           audience=tuple(self.wolves()), data={"votes": votes, "target": victim})
            else:
                self._emit("pack_votes", f"The pack's votes: {shown}. Nobody is attacked tonight.",
                           audience=tuple(self.wolves()), data={"votes": {}, "target": None})
        doctor = self.role_holder(DOCTOR)
        protected = None
        if doctor and self.alive[doctor] and DOCTOR in rules.night_order:
            verb, target = self.submitted.get(doctor, ("", ""))
            protected = target if verb == "protect" else None
            self.doctor_last = protected
            self._emit("protection", f"You protect {protected} tonight." if protected else "You protect nobody tonight.",
                       audience=(doctor,), data={"target": protected})
        seer = self.role_holder(SEER)
        if seer and self.alive[seer] and SEER in rules.night_order:
            verb, target = self.submitted.get(seer, ("", ""))
            if verb == "check":
                is_wolf = self.roles[target] == WEREWOLF
                self.checked[target] = is_wolf
                self._emit("vision", f"Your vision: {target} {'is a werewolf' if is_wolf else 'is not a werewolf'}.",
                           audience=(seer,), data={"target": target, "werewolf": is_wolf})
            else:
                self._emit("vision", "You check nobody tonight.", audience=(seer,), data={"target": None})
        self.submitted = {}
        self.pending = []
        self._begin_day(victim=None if victim == protected else victim)

    def _begin_day(self, victim: str | None, first: bool = False) -> None:
        self.phase = "day"
        self.spoken_today = Counter()
        if first:
            self._emit("phase", f"Day {self.cycle} begins.")
        elif victim is None:
            self._emit("phase", f"Day {self.cycle} begins. Nobody died during the night.")
        else:
            self._emit("phase", f"Day {self.cycle} begins.")
            self._kill(victim, "death", f"{victim} was killed during the night.")
            if self.over:
                return
        if self.rules.speech == "round_robin":
            living = self.living()
            start = (self.cycle - 1) % len(self.players)
            order = sorted(living, key=lambda p: (self.players.index(p) - start) % len(self.players))
            self.queue = order * self.rules.debate_rounds
            self.phase = "speech"
            self.pending = [self.queue[0]]
        else:
            self.turns_left = self.rules.debate_turns
            self._begin_bidding()

    def _begin_bidding(self) -> None:
        self.phase = "bid"
        self.submitted = {}
        self.pending = self.living()

    def _resolve_bids(self) -> None:
        bids = {p: int(self.submitted[p][1]) if self.submitted.get(p, ("", ""))[0] == "bid" else 0 for p in self.living()}
        top = max(bids.values())
        tied = [p for p in self.living() if bids[p] == top]
        last = next((e for e in reversed(self.events) if e.kind in ("speech",) and e.cycle == self.cycle), None)
        mentioned = {f"Player{m}" for m in PLAYER_RE.findall(last.body or "")} if last else set()
        start = (self.cycle - 1) % len(self.players)
        speaker = min(tied, key=lambda p: (p not in mentioned, self.spoken_today[p],
                                           (self.players.index(p) - start) % len(self.players)))
        self._emit("floor", f"{speaker} takes the floor.", data={"speaker": speaker})
        self.submitted = {}
        self.phase = "speech"
        self.queue = [speaker]
        self.pending = [speaker]

    def _after_speech(self) -> None:
        self.queue.pop(0)
        if self.rules.speech == "round_robin":
            self.queue = [p for p in self.queue if self.alive[p]]
            if self.queue:
                self.pending = [self.queue[0]]
                return
        else:
            self.turns_left -= 1
            if self.turns_left > 0:
                self._begin_bidding()
                return
        self._begin_vote(candidates=None)

    def _begin_vote(self, candidates: list[str] | None) -> None:
        self.phase = "vote"
        self.candidates = candidates
        self.submitted = {}
        if candidates is None:
            self._emit("vote_call", "Voting begins: vote for a living player to exile"
                       + (", or pass to abstain." if self.rules.allow_abstain else "."))
        self.pending = self.living()

    def _resolve_vote(self) -> None:
        living = self.living()
        votes = {p: self.submitted[p][1] for p in living if self.submitted.get(p, ("", ""))[0] == "vote"}
        for voter, target in votes.items():
            if team_of(self.roles[voter]) != team_of(self.roles[target]):
                self.enemy_votes[voter] += 1
        shown = "; ".join(f"{p} -> {votes.get(p, 'abstains')}" for p in living)
        self._emit("votes", f"Votes: {shown}.", data={"votes": votes, "revote": self.candidates is not None})
        tally = Counter(votes.values())
        exiled, note = None, ""
        if tally:
            top = max(tally.values())
            tied = [p for p in self.players if tally.get(p) == top]
            if self.rules.exile_rule == "majority":
                if top * 2 > len(living):
                    exiled = tied[0]
                else:
                    note = f"No one has a majority ({len(living) // 2 + 1} of {len(living)} votes needed): nobody is exiled."
            elif len(tied) == 1:
                exiled = tied[0]
            elif self.rules.tie_rule == "revote" and self.candidates is None:
                self._emit("verdict", f"Tie between {', '.join(tied)}: revote between them.", data={"tied": tied})
                self._begin_vote(candidates=tied)
                return
            elif self.rules.tie_rule == "random":
                exiled = tied[draw(self.seed, f"tie|{self.cycle}", len(tied))]
                note = f"Tie between {', '.join(tied)}: a draw picks {exiled}."
            else:
                note = f"Tie between {', '.join(tied)}: nobody is exiled."
        else:
            note = "No votes: nobody is exiled."
        self.candidates = None
        self.pending = []
        if note:
            self._emit("verdict", note, data={"exiled": exiled})
        if exiled:
            self._kill(exiled, "exile", f"{exiled} is exiled by the village.")
            if self.over:
                return
        if self.cycle >= self.rules.max_days:
            self._finish("draw", f"Day {self.cycle} was the last day ({self.rules.max_days} max): the game is a draw.")
            return
        self._begin_night()

    def _kill(self, player: str, kind: str, text: str) -> None:
        self.alive[player] = False
        self._emit(kind, text, data={"player": player})
        if self.rules.reveal_role_on_death:
            self._emit("reveal", f"{player} was a {self.roles[player]}.", data={"player": player, "role": self.roles[player]})
        self.queue = [p for p in self.queue if self.alive[p]]
        wolves = len(self.wolves(alive_only=True))
        others = len(self.living()) - wolves
        if wolves == 0:
            self._finish(VILLAGE, "The village wins: every werewolf is dead.")
        elif wolves >= others:
            self._finish(WOLVES, "The werewolves win: they are as many as the rest of the village.")

    def _finish(self, winner: str, text: str) -> None:
        self.winner = winner
        self.phase = "over"
        self.pending = []
        self.queue = []
        roles = ", ".join(f"{p} {self.roles[p]}" for p in self.players)
        self._emit("game_over", f"Game over. {text} Roles: {roles}.", data={"winner": winner, "roles": dict(self.roles)})

    # ---- actions -------------------------------------------------------------------------------
    def act(self, player: str, action: Any) -> bool | None:
        """Apply ``player``'s action; return whether it was valid, or None if it was not their turn (ignored)."""
        if self.over or player not in self.pending:
            return None
        self.steps += 1
        text = action if isinstance(action, str) else ("" if action is None else str(action))
        verb, arg = parse_action(text)
        phase = self.phase_of(player)
        error, default = self._check(player, phase, verb, arg)
        self.last_valid[player] = error is None
        if error is not None:
            # the echo is the author's own text, on one line and without our speech quote marks
            feedback = f"{quote_action(sanitize_speech(text, 10**6))} is not a valid action now: {error}. Default: {default}."
            self.last_feedback[player] = feedback
            self._emit("feedback", feedback, audience=(player,), data={"action": text[:200], "error": error})
            verb, arg = parse_action(self.default_action(player))
        else:
            self.last_feedback[player] = ""
            if verb not in ("speak", "pass", "bid"):
                arg = self._target(arg) or ""
        if phase in ("speech", "wolf_chat"):
            self._speak(player, phase, verb, arg)
        else:
            if phase == "bid" and verb == "bid":
                arg = re.match(r"\s*(\d+)", arg).group(1)
            if verb != "pass" or phase == "night":
                self.submitted[player] = (verb, arg)
            self.pending.remove(player)
            if not self.pending:
                {"night": self._resolve_night, "bid": self._resolve_bids, "vote": self._resolve_vote}[phase]()
        return error is None

    def _speak(self, player: str, phase: str, verb: str, arg: str) -> None:
        body = sanitize_speech(arg, self.rules.max_speech_chars) if verb == "speak" else ""
        if phase == "wolf_chat":
            if body:
                self._emit("whisper", audience=tuple(self.wolves()), speaker=player, body=body)
            else:
                self._emit("whisper", f"{player} stays silent.", audience=tuple(self.wolves()), speaker=player)
            self.queue.pop(0)
            if self.queue:
                self.pending = [self.queue[0]] + self._night_roles(wolves=False)
            else:
                self._begin_night_actions()
            return
        if body:
            self._emit("speech", speaker=player, body=body)
        else:
            self._emit("silence", f"{player} stays silent.", data={"player": player})
        self.spoken_today[player] += 1
        self.pending = []
        self._after_speech()

    def _target(self, arg: str) -> str | None:
        m = TARGET_RE.match(arg)
        if not m:
            return None
        name = f"Player{int(m.group(1))}"
        return name if name in self.roles else None

    def _check(self, player: str, phase: str, verb: str, arg: str) -> tuple[str | None, str]:
        """(error or None, what the default does) for this action now."""
        role = self.roles[player]
        if phase in ("speech", "wolf_chat"):
            default = "you stay silent"
            if verb == "pass":
                return None, default
            if verb != "speak":
                return "it is your turn to speak; write 'speak: <your message>' or 'pass'", default
            if not sanitize_speech(arg, self.rules.max_speech_chars):
                return "the speech is empty", default
            return None, default
        if phase == "bid":
            default = "you bid 0"
            if verb != "bid":
                return f"write 'bid: N' with N from 0 to {self.rules.max_bid}", default
            m = re.match(r"^\s*(\d+)\s*\.?\s*$", arg)
            if not m or int(m.group(1)) > self.rules.max_bid:
                return f"the bid must be a whole number from 0 to {self.rules.max_bid}", default
            return None, default
        if phase == "vote":
            default = "you abstain"
            if verb == "pass":
                return (None, default) if self.rules.allow_abstain else ("abstaining is not allowed; vote for a player", default)
            if verb != "vote":
                return "it is time to vote; write 'vote: PlayerK'" + (" or 'pass'" if self.rules.allow_abstain else ""), default
            target = self._target(arg)
            if target is None:
                return "name a player as PlayerK", default
            if not self.alive[target]:
                return f"{target} is dead", default
            if target == player:
                return "you cannot vote for yourself", default
            if self.candidates is not None and target not in self.candidates:
                return f"this revote is between {', '.join(self.candidates)}", default
            return None, default
        # night
        wanted = NIGHT_ACTIONS[role]
        default = {"kill": "you cast no kill vote", "check": "you check nobody", "protect": "you protect nobody"}[wanted]
        if verb == "pass":
            return None, default
        if verb != wanted:
            return f"at night you may only write '{wanted}: PlayerK' or 'pass'", default
        target = self._target(arg)
        if target is None:
            return "name a player as PlayerK", default
        if not self.alive[target]:
            return f"{target} is dead", default
        if wanted == "kill" and self.roles[target] == WEREWOLF:
            return f"{target} is a werewolf like you", default
        if wanted == "check" and target == player:
            return "you know your own role", default
        if wanted == "protect":
            if target == player and not self.rules.doctor_self_protect:
                return "you may not protect yourself", default
            if target == self.doctor_last and not self.rules.doctor_repeat_protect:
                return f"you protected {target} last night and may not twice in a row", default
        return None, default

    def admissible_actions(self, player: str) -> list[str]:
        """Every valid action of ``player`` now ([] when the game does not wait for them).

        A speech may be any text; the list offers a few ready-made ones."""
        if player not in self.pending:
            return []
        others = [p for p in self.living() if p != player]
        phase = self.phase_of(player)
        if phase == "speech":
            return ["speak: I have nothing to add."] + [f"speak: I suspect {p}." for p in others] + ["pass"]
        if phase == "wolf_chat":
            return [f"speak: Let us attack {p}." for p in others if self.roles[p] != WEREWOLF] + ["pass"]
        if phase == "bid":
            return [f"bid: {i}" for i in range(self.rules.max_bid + 1)]
        if phase == "vote":
            pool = [p for p in (self.candidates or others) if p != player]
            return [f"vote: {p}" for p in pool] + (["pass"] if self.rules.allow_abstain else [])
        wanted = NIGHT_ACTIONS[self.roles[player]]
        out = []
        for p in self.living():
            if self._check(player, "night", wanted, p)[0] is None:
                out.append(f"{wanted}: {p}")
        return out + ["pass"]

    def illegal_actions(self, player: str) -> list[str]:
        """Valid-looking actions that are wrong for ``player`` now (for the env checker): each one gets private
        feedback and the default. [] when the game does not wait for ``player``."""
        if player not in self.pending:
            return []
        phase = self.phase_of(player)
        dead = [p for p in self.players if not self.alive[p]]
        candidates = [f"vote: {player}", "vote: Player99", "bid: 99", "bid: -1", "speak:", f"speak: {CLOSE_QUOTE}",
                      f"check: {player}", "kill: Player99", "protect: Player99", "pass: now", "Vote Player"]
        candidates += [f"{verb}: {p}" for p in dead[:2] for verb in ("vote", "kill", "check", "protect")]
        return [a for a in candidates if self._check(player, phase, *parse_action(a))[0] is not None]

    # ---- what a player sees ------------------------------------------------------------------------
    def header(self, player: str) -> str:
        """The top of ``player``'s observation: identity, role and what the role knows (no one else's secrets)."""
        rules, role = self.rules, self.roles[player]
        counts = ", ".join(f"{c} {r}{'s' if c > 1 else ''}".replace("werewolfs", "werewolves") for r, c in rules.roles.items())
        lines = [f"You are {player}, playing Werewolf with {len(self.players)} players: {', '.join(self.players)}.",
                 f"Roles in this game: {counts}.",
                 f"Your role: {role}. {ROLE_BLURB[role]}"]
        if role == WEREWOLF:
            lines.append(f"The werewolves (your pack): {', '.join(self.wolves())}.")
        if role == SEER and self.checked:
            lines.append("Your visions so far: " + "; ".join(
                f"{p} {'is a werewolf' if w else 'is not a werewolf'}" for p, w in self.checked.items()) + ".")
        lines.append("Rules: " + rules_text(rules))
        return "\n".join(lines)

    def footer(self, player: str) -> str:
        if self.over:
            result = {"draw": "a draw"}.get(self.winner or "", f"the {self.winner} won")
            mine = team_of(self.roles[player])
            verdict = "draw" if self.winner == "draw" else ("you won" if self.winner == mine else "you lost")
            return f"The game is over: {result} ({verdict})."
        if not self.alive[player]:
            return "You are dead: you watch the rest of the game in silence."
        if player not in self.pending:
            return "Waiting for other players."
        prompt = {
            "speech": "It is your turn to speak. Reply 'speak: <your message>' or 'pass'.",
            "wolf_chat": "Werewolves only: it is your turn to talk with your pack (the village cannot hear). "
                         "Reply 'speak: <your message>' or 'pass'.",
            "bid": f"Bid for the next turn to speak. Reply 'bid: N' with N from 0 (listen) to {self.rules.max_bid} (urgent).",
            "vote": "Vote to exile a player." + (" Revote between the tied players." if self.candidates else ""),
        }.get(self.phase_of(player))
        if prompt is None:
            wanted = NIGHT_ACTIONS[self.roles[player]]
            prompt = {"kill": "Choose the pack's victim.", "check": "Choose a player to check.",
                      "protect": "Choose a player to protect tonight."}[wanted]
        actions = self.admissible_actions(player)
        if self.phase_of(player) in ("speech", "wolf_chat"):
            return prompt + "\nExamples: " + " | ".join(actions)
        return prompt + "\nAdmissible actions: " + " | ".join(actions)

    def observation(self, player: str, max_chars: int = 16_384) -> str:
        """``player``'s transcript view (see the module docstring for the invariant)."""
        head, foot = self.header(player), self.footer(player)
        lines = [e.line() for e in self.events if e.visible_to(player)]
        budget = max_chars - len(head) - len(foot) - 64
        body, used = [], 0
        for line in reversed(lines):
            if used + len(line) + 1 > budget:
                body.append("... (earlier events omitted)")
                break
            body.append(line)
            used += len(line) + 1
        # Every part is already in the charset (speech bodies are sanitized when spoken), so no per-call scan.
        text = f"{head}\n\nTranscript:\n" + "\n".join(reversed(body)) + f"\n\n{foot}"
        return text if len(text) <= max_chars else to_charset(text, max_length=max_chars)

    def view(self, player: str) -> dict[str, Any]:
        """What ``player`` knows, as data (for bots): built only from the events ``player`` may see."""
        out: dict[str, Any] = {"me": player, "role": self.roles[player], "players": list(self.players),
                               "alive": self.living(), "phase": self.phase_of(player), "cycle": self.cycle, "pack": [],
                               "visions": {}, "protected": [], "speeches": [], "whispers": [], "votes": [],
                               "revealed": {}, "dead": [], "pack_target": None, "candidates": self.candidates}
        for e in self.events:
            if not e.visible_to(player):
                continue
            if e.kind == "pack":
                out["pack"] = list(e.data["pack"])
            elif e.kind == "vision" and e.data.get("target"):
                out["visions"][e.data["target"]] = e.data["werewolf"]
            elif e.kind == "protection":
                out["protected"].append(e.data["target"])
            elif e.kind == "speech":
                out["speeches"].append((e.cycle, e.speaker, e.body))
            elif e.kind == "whisper" and e.body is not None:
                out["whispers"].append((e.cycle, e.speaker, e.body))
            elif e.kind == "votes":
                out["votes"].append((e.cycle, dict(e.data["votes"])))
            elif e.kind == "reveal":
                out["revealed"][e.data["player"]] = e.data["role"]
            elif e.kind in ("death", "exile"):
                out["dead"].append((e.cycle, e.data["player"], e.kind))
            elif e.kind == "pack_votes":
                out["pack_target"] = e.data["target"]
        if self.roles[player] == WEREWOLF and not out["pack"]:
            out["pack"] = [player]
        return out

    # ---- outcome, snapshots -------------------------------------------------------------------------
    def rewards(self, shaping: dict[str, float] | None = None) -> dict[str, float]:
        """Final rewards: +1 for the winning team, -1 for the losers, 0 in a draw; plus shaped terms if asked."""
        out = {}
        for p in self.players:
            team = team_of(self.roles[p])
            r = 0.0 if self.winner in (None, "draw") else (1.0 if self.winner == team else -1.0)
            if shaping:
                r += shaping.get("vote_enemy", 0.0) * self.enemy_votes[p]
                r += shaping.get("survive", 0.0) * self.alive[p]
            out[p] = r
        return out

    def to_data(self, feedback: bool = True) -> dict[str, Any]:
        """The full hidden state as JSON-able data (``state_key`` digests it).

        ``feedback=False`` leaves out what only tells players about their invalid actions (feedback events,
        ``last_valid``, ``last_feedback``): an invalid action then leaves the same data as its default."""
        skip = {"rules"} if feedback else {"rules", "last_valid", "last_feedback"}
        data = {k: v for k, v in self.__dict__.items() if k not in skip}
        data["rules"] = self.rules.to_dict()
        data["events"] = [{k: v for k, v in e.__dict__.items() if k != "_line"} for e in self.events
                          if feedback or e.kind != "feedback"]
        return data

    def state_key(self, feedback: bool = True) -> str:
        """A digest of :meth:`to_data` (trainers only: it digests the hidden roles too)."""
        return stable_digest(self.to_data(feedback))

    def snapshot(self) -> Game:
        return copy.deepcopy(self)


def rules_text(rules: Rules) -> str:
    """The rules as the players read them (public, the same for everyone)."""
    night = ", ".join({WEREWOLF: "the werewolves pick a victim", DOCTOR: "the doctor protects one player",
                       SEER: "the seer checks one player"}[r] for r in rules.night_order)
    parts = [f"Each night {night}; a protected victim survives."]
    if rules.wolf_chat_rounds:
        parts.append("Before choosing, the werewolves talk privately.")
    if rules.speech == "round_robin":
        parts.append(f"Each day every living player speaks {rules.debate_rounds} time(s) in seat order.")
    else:
        parts.append(f"Each day has {rules.debate_turns} speeches; before each, players bid 0-{rules.max_bid} "
                     "and the highest bid speaks.")
    if rules.exile_rule == "majority":
        parts.append("Then everyone votes; a player is exiled only with votes from more than half of the living players.")
    else:
        tie = {"no_exile": "a tie exiles nobody", "revote": "a tie leads to one revote between the tied players",
               "random": "a tie is broken by a random draw"}[rules.tie_rule]
        parts.append(f"Then everyone votes; the most votes is exiled ({tie}).")
    parts.append("Roles of the dead are revealed." if rules.reveal_role_on_death else "Roles of the dead stay secret.")
    parts.append(f"The game is a draw after day {rules.max_days}.")
    return " ".join(parts)


def step_bound(rules: Rules) -> int:
    """An upper bound on the actions of one game (the env's truncation guard; games end well before)."""
    n = rules.num_players
    wolves = rules.roles.get(WEREWOLF, 0)
    night = wolves * rules.wolf_chat_rounds + n
    day = (rules.debate_rounds * n) if rules.speech == "round_robin" else rules.debate_turns * (n + 1)
    return (rules.max_days + 1) * (night + day + 2 * n)


__all__ = ["AUDIENCE", "ROLES", "Event", "Game", "Rules", "deal", "parse_action", "rules_text", "sanitize_speech",
           "step_bound"]
