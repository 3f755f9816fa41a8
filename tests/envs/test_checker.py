"""The checker is proven to catch faults: each broken toy env fails the check that targets it.

Gymnasium toy envs first, then a PettingZoo (AEC) toy env for :func:`check_aec_env` and Werewolf with faults
put in by monkeypatching. Some faults only the seeded random junk finds (an action past the action space's
``max_length``, a long number): those envs pass with ``junk=0`` and fail with the default ``junk=100``.
"""

from __future__ import annotations

import importlib.util
import random
from typing import ClassVar

import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.wrappers import TimeLimit

from turngym.envs.check import JUNK_ACTIONS, EnvCheckError, check_aec_env, check_env, random_junk
from turngym.envs.core import TextEnv, Transition, stable_digest
from turngym.envs.spaces import text_space


class NumberLineEnv(TextEnv):
    """Walk from a start number to a target on 0..20 with 'add 1' / 'sub 1' (a correct toy env)."""

    default_split = "train"

    def splits(self):
        return {"train": 30}

    def load_task(self, split, index):
        return {"start": index % 21, "target": (index * 7 + 3) % 21}

    def _start(self, task):
        self.value, self.target = task["start"], task["target"]
        return self._describe()

    def _describe(self):
        return f"You are at {self.value}. The target is {self.target}."

    @property
    def instruction(self):
        return "Reach the target number. Actions: 'add 1' or 'sub 1'."

    @property
    def won(self):
        return self.value == self.target

    def _apply(self, action):
        move = action.strip().lower()
        if move == "add 1" and self.value < 20:
            self.value += 1
        elif move == "sub 1" and self.value > 0:
            self.value -= 1
        else:
            return Transition(f"Invalid action {action[:40]!r}. {self._describe()}", valid=False)
        return Transition(self._describe(), valid=True, reward=1.0 if self.won else 0.0, terminated=self.won)

    def state_key(self):
        return stable_digest([self.value, self.target])

    def _get_state(self):
        return (self.value, self.target)

    def _set_state(self, state):
        self.value, self.target = state

    def admissible_actions(self):
        return [a for a, ok in (("add 1", self.value < 20), ("sub 1", self.value > 0)) if ok]

    def progress(self):
        d0 = abs(self.task["start"] - self.target)
        return 1.0 if d0 == 0 else max(0.0, 1.0 - abs(self.value - self.target) / d0)

    def oracle_action(self):
        return "add 1" if self.value < self.target else "sub 1"

    def illegal_actions(self):
        return ["sub 1"] if self.value == 0 else (["add 1"] if self.value == 20 else ["add 2"])


def factory(cls):
    def make():
        return TimeLimit(cls(), max_episode_steps=40)

    make.__name__ = cls.__name__
    return make


def test_correct_toy_env_passes():
    report = check_env(factory(NumberLineEnv))
    assert set(report.checks) >= {"spaces", "gymnasium", "info_keys", "determinism", "invalid_actions",
                                  "state_restore", "state_key", "oracle"}


class RaisesOnJunk(NumberLineEnv):
    def _apply(self, action):
        if action.strip().lower() not in ("add 1", "sub 1"):
            raise ValueError("cannot parse")
        return super()._apply(action)


class Nondeterministic(NumberLineEnv):
    def _start(self, task):
        return super()._start(task) + f" Weather: {random.random():.3f}"


class MissingWon(NumberLineEnv):
    def _info(self, action_valid):
        info = super()._info(action_valid)
        del info["won"]
        return info


class JunkMarkedValid(NumberLineEnv):
    def _apply(self, action):
        result = super()._apply(action)
        return Transition(result.observation, True, result.reward, result.terminated)


class MutatesOnInvalid(NumberLineEnv):
    def _apply(self, action):
        result = super()._apply(action)
        if not result.valid:
            self.value = (self.value + 5) % 21
        return result


class CoarseStateKey(NumberLineEnv):
    def state_key(self):
        return stable_digest(self.target)  # ignores where we are


class StepCounterInKey(NumberLineEnv):
    def _start(self, task):
        self.t = 0
        return super()._start(task)

    def _apply(self, action):
        result = super()._apply(action)
        self.t += result.valid
        return result

    def state_key(self):
        return stable_digest([self.value, self.target, self.t])


class SaltedStateKey(NumberLineEnv):
    def state_key(self):
        return stable_digest([self.value, self.target, id(self)])  # differs per instance


class ProgressOutOfRange(NumberLineEnv):
    def progress(self):
        return 1.5


class OracleLoses(NumberLineEnv):
    def oracle_action(self):
        return "sub 1" if self.value > 0 else "add 1"


class IncompleteRestore(NumberLineEnv):
    def _get_state(self):
        return self.value

    def _set_state(self, state):
        self.value = state
        self.target = 0


class DefaultGymTextSpace(NumberLineEnv):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.action_space = spaces.Text(max_length=100)


class PaysForClaimingAWin(NumberLineEnv):
    """Pays 1 for the text "you won" and calls it invalid: the state is unchanged, so the old checker passed it."""

    def _apply(self, action):
        result = super()._apply(action)
        if not result.valid and "won" in action.lower():
            return Transition(result.observation, False, reward=1.0)
        return result


class WinsOnClaim(NumberLineEnv):
    """Believes a claim of victory: ``won`` turns True with no change to the state it snapshots."""

    def _start(self, task):
        self.claimed = False
        return super()._start(task)

    def _apply(self, action):
        self.claimed = self.claimed or "you won" in action.lower()
        return super()._apply(action)

    @property
    def won(self):
        return self.value == self.target or getattr(self, "claimed", False)


class TruncatesOnJunk(NumberLineEnv):
    def step(self, action):
        obs, reward, term, trunc, info = super().step(action)
        return obs, reward, term, trunc or not info["action_valid"], info


class CrashesPastMaxLength(NumberLineEnv):
    """A fixed-size buffer: fine up to the action space's max_length (the fixed list's longest is 10,000)."""

    def _apply(self, action):
        if len(action) > self.action_space.max_length:
            raise OverflowError("action buffer overflow")
        return super()._apply(action)


class CrashesOnLongNumbers(NumberLineEnv):
    """Reads a bare number with int(): Python refuses more than 4,300 digits."""

    def _apply(self, action):
        if action.strip().lstrip("-").isdigit():
            self.last_number = int(action)  # kept for the feedback; the move itself is still invalid
        return super()._apply(action)


@pytest.mark.parametrize(
    "cls, check",
    [
        (RaisesOnJunk, "invalid_actions"),
        (Nondeterministic, "determinism"),
        (MissingWon, "info_keys"),
        (JunkMarkedValid, "invalid_actions"),
        (MutatesOnInvalid, "invalid_actions"),
        (CoarseStateKey, "state_key"),
        (StepCounterInKey, "state_restore"),  # the counter is state the snapshot forgot
        (SaltedStateKey, "determinism"),  # the same seed gives other keys in another instance
        (ProgressOutOfRange, "info_keys"),
        (OracleLoses, "oracle"),
        (IncompleteRestore, "state_restore"),
        (DefaultGymTextSpace, "spaces"),
        (PaysForClaimingAWin, "invalid_actions"),
        (WinsOnClaim, "invalid_actions"),
        (TruncatesOnJunk, "invalid_actions"),
    ],
)
def test_broken_env_fails_its_check(cls, check):
    with pytest.raises(EnvCheckError, match=rf"^\[{check}\]"):
        check_env(factory(cls), skip_gymnasium=True)


@pytest.mark.parametrize("cls, message", [(PaysForClaimingAWin, "paid reward 1.0"), (WinsOnClaim, "won=True"),
                                          (TruncatesOnJunk, "truncated=True")])
def test_junk_may_not_pay_win_or_end(cls, message):
    with pytest.raises(EnvCheckError, match=message):
        check_env(factory(cls), skip_gymnasium=True)


@pytest.mark.parametrize("cls", [CrashesPastMaxLength, CrashesOnLongNumbers])
def test_only_the_random_junk_finds_these_crashes(cls):
    report = check_env(factory(cls), skip_gymnasium=True, junk=0)
    assert report.random_junk_actions == 0 and report.junk_actions > 0
    with pytest.raises(EnvCheckError, match=r"^\[invalid_actions\] step\(.*raised (OverflowError|ValueError)"):
        check_env(factory(cls), skip_gymnasium=True)


def test_random_junk_is_seeded_and_covers_bytes_unicode_controls_and_lengths():
    max_length = 200
    junk = random_junk(np.random.default_rng(0), 140, max_length)
    assert junk == random_junk(np.random.default_rng(0), 140, max_length)
    assert junk != random_junk(np.random.default_rng(1), 140, max_length)
    lengths = [len(j) for j in junk]
    assert min(lengths) == 0 or min(lengths) <= 2
    assert any(n > max_length for n in lengths) and any(16 < n <= max_length for n in lengths)
    text = "".join(junk)
    assert any(0xD800 <= ord(c) <= 0xDFFF for c in text), "lone surrogates"
    assert any(ord(c) < 32 and c not in "\t\n\r" for c in text) and any(ord(c) > 0xFFFF for c in text)
    assert any(j.isdigit() and len(j) > 4300 for j in random_junk(np.random.default_rng(0), 1000, 16_384))


def test_the_report_counts_junk_actions():
    report = check_env(factory(NumberLineEnv), skip_gymnasium=True, junk=250)
    assert report.random_junk_actions == 250 and report.junk_actions >= 250 + len(JUNK_ACTIONS)


# ---- PettingZoo (AEC) ----------------------------------------------------------------------------

needs_pettingzoo = pytest.mark.skipif(importlib.util.find_spec("pettingzoo") is None,
                                      reason="needs the werewolf extra: pip install 'turngym[werewolf]'")


def _count_to_six():
    """Two players take turns saying 'add 1' to a shared counter; whoever reaches 6 wins. An invalid action
    changes nothing: the same player is asked again (no default documented)."""
    from pettingzoo import AECEnv

    class CountToSix(AECEnv):
        metadata: ClassVar[dict] = {"name": "count_to_six_v0", "render_modes": []}

        def __init__(self):
            super().__init__()
            self.possible_agents = ["p1", "p2"]
            self._spaces = {a: text_space(256) for a in self.possible_agents}
            self.board: list[str] = []  # what everyone sees
            self.heard: dict[str, str] = {}  # per agent: what only it sees (nothing, unless a subclass breaks it)

        def observation_space(self, agent):
            return self._spaces[agent]

        def action_space(self, agent):
            return self._spaces[agent]

        def reset(self, seed=None, options=None):
            self.seed_used = 0 if seed is None else int(seed)
            self.count, self.board, self.last_valid = self.seed_used % 3, [], {a: True for a in self.possible_agents}
            self.heard = {}
            self.agents = list(self.possible_agents)
            self.agent_selection = self.agents[self.seed_used % 2]
            self.rewards = {a: 0.0 for a in self.agents}
            self._cumulative_rewards = {a: 0.0 for a in self.agents}
            self.terminations = {a: False for a in self.agents}
            self.truncations = {a: False for a in self.agents}
            self.infos = {a: self._info(a) for a in self.agents}

        def task_id(self):
            return "count/six"

        def _info(self, agent):
            return {"task_id": self.task_id(), "action_valid": self.last_valid[agent],
                    "won": self.count >= 6 and self.rewards.get(agent, 0) > 0, "admissible_actions": ["add 1"]}

        def observe(self, agent):
            return f"Count: {self.count}. " + " ".join(self.board) + self.heard.get(agent, "")

        def state_key(self):
            return stable_digest([self.count, self.agent_selection, self.board, self.agents])

        def apply_invalid(self, agent, action):
            """What an invalid action does: nothing (subclasses break this)."""

        def step(self, action):
            agent = self.agent_selection
            if self.terminations[agent] or self.truncations[agent]:
                self._was_dead_step(action)
                return
            self._cumulative_rewards[agent] = 0.0
            self.rewards = {a: 0.0 for a in self.agents}
            self.last_valid[agent] = isinstance(action, str) and action.strip() == "add 1"
            if self.last_valid[agent]:
                self.count += 1
                self.board.append(f"{agent}+1")
                if self.count >= 6:
                    self.rewards = {a: (1.0 if a == agent else -1.0) for a in self.agents}
                    self.terminations = {a: True for a in self.agents}
                else:
                    self.agent_selection = "p2" if agent == "p1" else "p1"
            else:
                self.apply_invalid(agent, action)
            self.infos = {a: self._info(a) for a in self.agents}
            self._accumulate_rewards()

    return CountToSix


def _aec_factory(make_class, **methods):
    cls = type("Broken", (make_class(),), methods) if methods else make_class()

    def make():
        return cls()

    make.__name__ = cls.__name__
    return make


@needs_pettingzoo
def test_correct_toy_aec_env_passes_and_counts_its_junk():
    report = check_aec_env(_aec_factory(_count_to_six), junk=300)
    assert set(report.checks) == {"spaces", "pettingzoo", "info_keys", "determinism", "leaks", "invalid_actions"}
    assert report.random_junk_actions == 300 and report.junk_actions >= 300 + len(JUNK_ACTIONS)


def _mutates(self, agent, action):
    self.count += 1


def _pays(self, agent, action):
    if "won" in str(action).lower():
        self.rewards[agent] = 1.0


def _shouts(self, agent, action):
    other = "p2" if agent == "p1" else "p1"
    self.heard[other] = f" {agent} typed {str(action)[:10]!r}"  # the junk reaches the other player


def _passes_the_turn(self, agent, action):
    self.agent_selection = "p2" if agent == "p1" else "p1"


@needs_pettingzoo
@pytest.mark.parametrize("methods, check, message", [
    ({"apply_invalid": _mutates}, "invalid_actions", "state_key"),
    ({"apply_invalid": _pays}, "invalid_actions", "rewards"),
    ({"apply_invalid": _shouts}, "invalid_actions", "changed what 'p"),
    ({"apply_invalid": _passes_the_turn}, "invalid_actions", "agent_selection"),
    ({"task_id": lambda self: f"count/{self.seed_used}"}, "leaks", "reset seed"),
    ({"task_id": lambda self: f"count/{self.seed_used:x}"}, "leaks", "reset seed"),
    ({"observe": lambda self, agent: f"Count: {self.count} ({self.state_key()})"}, "leaks", "hidden-state digest"),
])
def test_broken_aec_env_fails_its_check(methods, check, message):
    with pytest.raises(EnvCheckError, match=rf"^\[{check}\].*{message}"):
        check_aec_env(_aec_factory(_count_to_six, **methods), skip_pettingzoo=True)


@needs_pettingzoo
def test_check_env_sends_aec_factories_to_the_aec_checker():
    report = check_env(_aec_factory(_count_to_six), junk=10)
    assert "leaks" in report.checks and "gymnasium" not in report.checks


@needs_pettingzoo
@pytest.mark.parametrize("fault", ["public_echo", "pays_a_claim", "raises_past_max_length", "keeps_the_invalid_bid"])
def test_werewolf_with_a_fault_fails_the_aec_checker(monkeypatch, fault):
    """Against the documented default: junk must do exactly what ``invalid_action_default`` does, no more."""
    from turngym.envs.werewolf import werewolf_env
    from turngym.envs.werewolf.game import Game

    act = Game.act

    def faulty(self, player, action):
        text = action if isinstance(action, str) else ""
        if fault == "raises_past_max_length" and len(text) > 16_384:
            raise MemoryError("speech buffer")
        valid = act(self, player, action)
        if valid is False and fault == "public_echo":
            self._emit("silence", f"{player} mumbles {text[:20]!r}.", data={"player": player})
        if valid is False and fault == "keeps_the_invalid_bid" and self.phase == "bid":
            self.submitted[player] = ("bid", "1")
        return valid

    monkeypatch.setattr(Game, "act", faulty)
    if fault == "pays_a_claim":
        step = werewolf_env.WerewolfEnv.step

        def paying(self, action):
            agent = self.agent_selection
            step(self, action)
            if isinstance(action, str) and "won" in action.lower() and agent in self.rewards:
                self.rewards[agent] = 1.0

        monkeypatch.setattr(werewolf_env.WerewolfEnv, "step", paying)
    config = {"speech": "bidding", "debate_turns": 2} if fault == "keeps_the_invalid_bid" else {}
    with pytest.raises(EnvCheckError, match=r"^\[invalid_actions\]"):
        check_aec_env(lambda: werewolf_env.env(preset="small", **config), skip_pettingzoo=True, episodes=2)
