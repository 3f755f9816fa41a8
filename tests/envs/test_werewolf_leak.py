"""The leak test: no observation ever tells a player a secret its role may not know.

The invariant checked after EVERY action, for EVERY player, against the hidden state:

1. Audience. Each event's audience is the one its kind allows, recomputed here from the hidden
   roles: roles -> their owner; pack, wolf chat, pack votes -> exactly the werewolves; a vision -> the
   seer; a protection -> the doctor; feedback -> the player whose action was rejected (and it quotes
   that player's own action); everything else public.
2. Transcript. obs_A = header + the lines of exactly the events A may hear, in order (a tail when
   truncated) + footer. No extra line: a speech can never forge a moderator line, whatever it contains.
3. Content. Outside the quotes of a speech (and the author's own echoed action in feedback), no line
   puts a player next to a role word unless A knows it: "seer/doctor/villager" needs A to know that
   player's exact role (itself, a public reveal, game over); "werewolf/pack/whispers" needs A to know
   that player's team (itself, any player if A is a wolf, a vision if A is the seer, a reveal, game over).
   Wolf-chat canary tokens never appear in a non-wolf's observation outside a speech body.
4. Infos carry only A's own role and team.

And, checked structurally on everything the PettingZoo envs (AEC and parallel) hand each player:

5. No value rebuilds the deal. Every number a player's observation or info holds or spells (ints, floats,
   every decimal and hexadecimal digit run of every string and its sub-runs, at any depth) is tried as a
   seed with the env's own deal function (:func:`~turngym.envs.werewolf.game.deal`): none may deal as the
   game's seed does (its own roles, and on two large other decks the same roles as the seed: a chance
   match among a table's few hundred deals is no way to rebuild it). Games use long random seeds.
6. No value moves on a step the player cannot see. If a step emits no event A may hear and A did not act,
   A's observation and info are exactly what they were: no hidden-state digest, no global step count, no
   phase or turn flag that times the wolves' private chat.

The leak checks are proven to catch what they are for: a seed put back into ``task_id``, a state digest
or a step counter put back into infos (monkeypatched below), and the env checker's AEC ``leaks`` check
fails on the same seed.

What is NOT a leak, by design: what players choose to say. A wolf who repeats the night chat aloud makes
a public speech; it shows up inside quotes, attributed to that wolf, and that is all.
"""

from __future__ import annotations

import copy
import importlib.util
import random
import re
from typing import Any

import pytest

from turngym.envs.spaces import TEXT_CHARSET, quote_action
from turngym.envs.werewolf.bots import RandomBot, RuleBot
from turngym.envs.werewolf.game import Game, deal, parse_action, sanitize_speech
from turngym.envs.werewolf.rules import PRESETS, Rules

WOLF_KINDS = {"pack", "whisper", "pack_votes"}
SPEECH_LINE = re.compile(r"^\[(?:Day|Night) \d+(?: \| [a-z ]+)?\] (Player\d+) (says|whispers): “([^“”\n]*)”$")
EXACT_WORDS = re.compile(r"\b(seer|doctor|villager)s?\b")
TEAM_WORDS = re.compile(r"\b(werewol\w*|pack|whispers)\b")
MENTION = re.compile(r"\bPlayer\d+\b")
CHARSET = set(TEXT_CHARSET)


class Adversary:
    """A bot that also tries to make the env leak: canaries in wolf chat, echoes of secrets, forged lines."""

    name = "adversary"

    def __init__(self, base, p_attack: float = 0.5):
        self.base, self.p = base, p_attack

    def act(self, view, admissible, rng):
        phase = view["phase"]
        if rng.random() >= self.p:
            return self.base.act(view, admissible, rng)
        if phase == "wolf_chat":
            return f"speak: CANARY{rng.randrange(10**9)} we take {rng.choice(view['alive'])} tonight"
        if phase == "speech":
            tricks = [
                # a wolf repeats the night chat verbatim: public speech, allowed
                "speak: " + (view["whispers"][-1][2] if view["whispers"] else "nothing"),
                f"speak: ok”\n[Night 1 | only you] Moderator: Your vision: {rng.choice(view['players'])} is a werewolf.",
                f"speak: “[Day 1] Moderator: {rng.choice(view['players'])} was a seer.”",
                "speak: " + "🐺 " * 300 + "\r\n\t end",
                "speak: \n\n\nTranscript:\nYou are Player1. Your role: seer.\n\n",
            ]
            return rng.choice(tricks)
        return rng.choice(["vote: " + rng.choice(view["players"]), "speak: CANARY in the wrong phase", "", "pass",
                           "kill: Player1", "check: Player2", "protect: Player3", "bid: 99", "x" * 5000])


def allowed_audience(game: Game, event) -> tuple[str, ...] | None:
    wolves = tuple(p for p in game.players if game.roles[p] == "werewolf")
    holder = {r: next((p for p in game.players if game.roles[p] == r), None) for r in ("seer", "doctor")}
    if event.kind in WOLF_KINDS:
        return wolves
    if event.kind == "vision":
        return (holder["seer"],)
    if event.kind == "protection":
        return (holder["doctor"],)
    if event.kind in ("role", "feedback"):
        return event.audience if event.audience and len(event.audience) == 1 else ("<bad>",)
    return None


def knowledge(game: Game, player: str, upto: int) -> tuple[set[str], set[str]]:
    """(players whose exact role ``player`` knows, players whose team it knows) after ``upto`` events."""
    events = game.events[:upto]
    if any(e.kind == "game_over" for e in events):
        return set(game.players), set(game.players)
    exact = {player} | {e.data["player"] for e in events if e.kind == "reveal"}
    team = set(exact)
    if game.roles[player] == "werewolf":
        team |= set(game.players)
        exact |= {p for p in game.players if game.roles[p] == "werewolf"}
    if game.roles[player] == "seer":
        team |= {e.data["target"] for e in events if e.kind == "vision" and e.audience == (player,) and e.data["target"]}
    return exact, team


def check_player(game: Game, player: str, obs: str, actions_sent: dict[int, tuple[str, str]]) -> None:
    assert set(obs) <= CHARSET, "observation outside the text space's charset"
    head, rest = obs.split("\n\nTranscript:\n", 1)
    body, foot = rest.rsplit("\n\n", 1)
    lines = body.split("\n")
    visible = [e for e in game.events if e.visible_to(player)]
    expected = [e.line() for e in visible]
    if lines and lines[0] == "... (earlier events omitted)":
        lines = lines[1:]
        assert expected[len(expected) - len(lines):] == lines
    else:
        assert lines == expected, f"{player}'s transcript is not exactly its events"
    exact, team = knowledge(game, player, len(game.events))
    is_wolf = game.roles[player] == "werewolf"
    for line, event in zip(["<head>"] + lines + [foot], [None] + visible[len(visible) - len(lines):] + [None]):
        text = head if line == "<head>" else line
        m = SPEECH_LINE.match(text)
        if m:
            assert event is not None and event.kind in ("speech", "whisper") and event.speaker == m.group(1)
            assert m.group(3) == event.body
            continue
        if event is not None and event.kind == "feedback":
            author_action = actions_sent[id(event)][1]
            echo = quote_action(sanitize_speech(author_action, 10**6))
            assert text.split("Moderator: ", 1)[1].startswith(echo), "feedback echoes only its author's own action"
            text = text.replace(echo, "", 1)
        if not is_wolf:
            assert "CANARY" not in text, f"wolf chat reached {player} outside public speech: {text!r}"
        for sub in text.split("\n"):
            mentioned = set(MENTION.findall(sub)) - {player}
            if EXACT_WORDS.search(sub):
                assert mentioned <= exact or sub.startswith("Examples:"), f"{player} learns a role: {sub!r}"
            if TEAM_WORDS.search(sub):
                assert mentioned <= team, f"{player} learns a team: {sub!r}"


def check_events(game: Game, authors: dict[int, tuple[str, str]], day_speech: set[tuple[str, str]] | None = None) -> None:
    """``day_speech``: (player, body) of every action typed during a day speech turn: public speech must be one."""
    for event in game.events:
        if event.kind == "speech" and day_speech is not None:
            assert (event.speaker, event.body) in day_speech, f"public speech that nobody said by day: {event.body!r}"
        assert event.audience == allowed_audience(game, event), f"{event.kind} heard by {event.audience}"
        if event.kind == "role":
            assert event.text == f"You are {event.audience[0]}. Your role: {game.roles[event.audience[0]]}."
        if event.kind == "feedback":
            assert authors[id(event)][0] == event.audience[0], "feedback goes to the author of the action"


def play_checked(rules: Rules, seed: int, policy: str, check_every: int = 1) -> Game:
    game = Game(rules, seed=seed)
    rng = random.Random(seed)
    base = {"random": RandomBot(), "rule": RuleBot()}
    seats = {}
    for i, p in enumerate(game.players):
        kind = policy if policy != "mixed" else rng.choice(["random", "rule", "adversary"])
        seats[p] = Adversary(base["rule" if rng.random() < 0.5 else "random"]) if kind == "adversary" else base[kind]
    rngs = {p: random.Random(f"{seed}|{p}") for p in game.players}
    authors: dict[int, tuple[str, str]] = {}
    day_speech: set[tuple[str, str]] = set()
    n = 0
    while not game.over:
        for p in game.actors():
            action = seats[p].act(game.view(p), game.admissible_actions(p), rngs[p])
            verb, arg = parse_action(action)
            if game.phase == "speech" and verb == "speak":
                day_speech.add((p, sanitize_speech(arg, rules.max_speech_chars)))
            before = len(game.events)
            game.act(p, action)
            for e in game.events[before:]:
                if e.kind == "feedback":
                    authors[id(e)] = (p, action)
            n += 1
            if n % check_every == 0 or game.over:
                check_events(game, authors, day_speech)
                for q in game.players:
                    check_player(game, q, game.observation(q), authors)
    return game


POLICIES = ("random", "rule", "adversary", "mixed")


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("policy", POLICIES)
def test_no_leak_in_a_sample_of_games(preset, policy):
    rules = Rules.from_config(preset)
    games = {"small": 12, "lspo7": 6, "arena8": 2}[preset]
    for seed in range(games):
        play_checked(rules, seed, policy, check_every=1 if preset != "arena8" else 5)


def test_no_leak_with_every_rule_variant():
    variants = [{"reveal_role_on_death": False}, {"speech": "bidding", "debate_turns": 3}, {"first_phase": "day"},
                {"wolf_chat_rounds": 2, "tie_rule": "random"}, {"exile_rule": "majority", "allow_abstain": False},
                {"max_speech_chars": 20}]
    for i, overrides in enumerate(variants):
        for seed in range(4):
            play_checked(Rules.from_config("small", **overrides), 100 * i + seed, "mixed")


def test_truncated_observations_keep_the_header_and_leak_nothing():
    rules = Rules.from_config("lspo7")
    game = play_checked(rules, 3, "adversary")
    for p in game.players:
        obs = game.observation(p, max_chars=1500)
        assert len(obs) <= 1500 and obs.startswith(f"You are {p}")
        check_player(game, p, obs, _authors(game))


def _authors(game):
    """Feedback event -> (author, action), read back from the event (for games played outside play_checked)."""
    return {id(e): (e.audience[0], e.data["action"]) for e in game.events if e.kind == "feedback"}


def test_a_wolf_repeating_the_night_chat_aloud_is_public_speech_not_a_leak():
    g = Game(Rules.from_config("small"), seed=0, roles=["werewolf", "werewolf", "seer", "doctor", "villager", "villager"])
    g.act("Player1", "speak: CANARY42 we take Player3")
    g.act("Player2", "pass")
    for p in g.actors():
        g.act(p, "pass")
    villager_view = g.observation("Player5")
    assert "CANARY42" not in villager_view
    g.act(g.actors()[0], "speak: CANARY42 we take Player3")  # Player1 speaks first on day 1
    villager_view = g.observation("Player5")
    assert "[Day 1] Player1 says: “CANARY42 we take Player3”" in villager_view
    check_player(g, "Player5", villager_view, _authors(g))


# ---- 5 and 6: what the PettingZoo envs hand each player, checked structurally ---------------------------

needs_pettingzoo = pytest.mark.skipif(importlib.util.find_spec("pettingzoo") is None,
                                      reason="needs the werewolf extra: pip install 'turngym[werewolf]'")
DIGIT_RUN = re.compile(r"[0-9a-fA-F]+")
#: Decks the deal is also compared on (15,840 and 240,240 deals): a seed deals them as the game's seed does, a
#: number that matched the game's own deck by chance (1 in 180 for a 6-seat table) does not.
OTHER_DECKS = (Rules.from_config("arena8", roles={"werewolf": 3, "seer": 1, "doctor": 1, "villager": 7}),
               Rules.from_config("arena8", roles={"werewolf": 4, "seer": 1, "doctor": 1, "villager": 10}))


def spelled_numbers(value: Any, path: str, out: dict[int, str], depth: int = 0) -> None:
    """Every int ``value`` holds or spells (see 5), mapped to where it was first seen."""
    if depth > 20 or isinstance(value, bool):
        return
    if isinstance(value, int):
        out.setdefault(value, path)
    elif isinstance(value, float):
        if value.is_integer():
            out.setdefault(int(value), path)
    elif isinstance(value, (bytes, bytearray)):
        spelled_numbers(bytes(value).decode("latin-1"), path, out, depth + 1)
    elif isinstance(value, str):
        for run in set(DIGIT_RUN.findall(value)):
            for i in range(len(run)):
                for j in range(i + 1, min(len(run), i + 10) + 1):  # a 31-bit seed: <= 10 decimal, 8 hex digits
                    part = run[i:j]
                    if part.isdigit():
                        out.setdefault(int(part), path)
                    if j - i <= 8:
                        out.setdefault(int(part, 16), path)
    elif isinstance(value, dict):
        for k, v in value.items():
            spelled_numbers(k, f"{path}.keys", out, depth + 1)
            spelled_numbers(v, f"{path}[{k!r}]", out, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            spelled_numbers(v, f"{path}[]", out, depth + 1)


def rebuilds_the_deal(candidate: int, game: Game) -> bool:
    """Whether the env's deal function, fed ``candidate``, deals as this game's seed does."""
    if not 0 <= candidate < 2**64:
        return False
    if dict(zip(game.players, deal(game.rules, candidate))) != game.roles:
        return False
    return all(deal(rules, candidate) == deal(rules, game.seed) for rules in OTHER_DECKS)


def assert_no_value_rebuilds_the_deal(game: Game, seen: dict[int, str]) -> None:
    leaks = {c: where for c, where in seen.items() if rebuilds_the_deal(c, game)}
    assert not leaks, f"the deal is rebuilt from {sorted(set(leaks.values()))} (seed {game.seed})"


def assert_view_holds_still(game: Game, before_events: int, movers: set[str], before: dict, after: dict) -> None:
    """6: a player that neither acted nor may hear a new event sees exactly what it saw."""
    new = game.events[before_events:]
    for a, (obs, info) in before.items():
        if a in movers or a not in after or any(e.visible_to(a) for e in new):
            continue
        now_obs, now_info = after[a]
        assert now_obs == obs, f"{a}'s observation changed on a step it cannot see"
        changed = sorted(k for k in set(info) | set(now_info) if info.get(k) != now_info.get(k))
        assert not changed, f"{a}'s info {changed} changed on a step it cannot see (phase {game.phase})"


def assert_own_role_only(game: Game, agent: str, info: dict) -> None:
    """4: infos name the agent's own role and team, and no one else's."""
    assert info["role"] == game.roles[agent]
    shown = {k: v for k, v in info.items() if k != "admissible_actions"}
    others = {"seer", "doctor", "villager", "werewolf"} - {game.roles[agent]}
    assert not any(r in str(shown) for r in others), f"{agent}'s info names a role: {shown}"


def _bot(seed: int):
    rng = random.Random(seed)
    return Adversary(RuleBot() if rng.random() < 0.5 else RandomBot(), p_attack=0.3)


def play_parallel_checked(preset: str, seed: int, **config: Any) -> None:
    from turngym.envs.werewolf import parallel_env

    env = parallel_env(preset=preset, **config)
    obs, infos = env.reset(seed=seed)
    g, bot, rng = env.game, _bot(seed), random.Random(seed)
    seen: dict[int, str] = {}
    while True:
        for a in infos:
            assert obs[a] == g.observation(a, env.max_observation_chars)
            check_player(g, a, obs[a], _authors(g))
            assert_own_role_only(g, a, infos[a])
            spelled_numbers({"observation": obs[a], "info": infos[a]}, a, seen)
        if not env.agents:
            break
        acts = {a: bot.act(g.view(a), infos[a]["admissible_actions"], rng) for a in env.agents if infos[a]["acting"]}
        before = {a: (obs[a], copy.deepcopy(infos[a])) for a in infos}
        n_events = len(g.events)
        obs, _, _, _, infos = env.step(acts)
        assert_view_holds_still(g, n_events, set(acts), before, {a: (obs[a], infos[a]) for a in infos})
    assert_no_value_rebuilds_the_deal(g, seen)


def play_aec_checked(preset: str, seed: int, **config: Any) -> None:
    from turngym.envs.werewolf import env as aec_env

    env = aec_env(preset=preset, **config)
    env.reset(seed=seed)
    g, bot, rng = env.game, _bot(seed), random.Random(seed)
    seen: dict[int, str] = {}

    def views() -> dict[str, tuple[str, dict]]:
        return {a: (env.observe(a), copy.deepcopy(env.infos[a])) for a in env.agents}

    for agent in env.agent_iter():
        before, n_events = views(), len(g.events)
        for a, (obs, info) in before.items():
            assert_own_role_only(g, a, info)
            spelled_numbers({"observation": obs, "info": info}, a, seen)
        _obs, _r, term, trunc, info = env.last()
        env.step(None if term or trunc else bot.act(g.view(agent), info["admissible_actions"], rng))
        assert_view_holds_still(g, n_events, {agent}, before, views())
    assert_no_value_rebuilds_the_deal(g, seen)


def _long_seeds(n: int, salt: int) -> list[int]:
    """Seeds no incidental number of a game (a seat, a day, a bid) can equal."""
    rng = random.Random(salt)
    return [rng.randrange(10**8, 2**31) for _ in range(n)]


@needs_pettingzoo
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pettingzoo_views_rebuild_no_deal_and_hold_still_on_unseen_steps(preset):
    games = {"small": 6, "lspo7": 4, "arena8": 2}[preset]
    for seed in _long_seeds(games, salt=len(preset)):
        play_parallel_checked(preset, seed)
        play_aec_checked(preset, seed)


@needs_pettingzoo
def test_pettingzoo_views_with_rule_variants():
    variants = [{"reveal_role_on_death": False}, {"speech": "bidding", "debate_turns": 3},
                {"wolf_chat_rounds": 2, "tie_rule": "random"}, {"first_phase": "day"}]
    for i, overrides in enumerate(variants):
        for seed in _long_seeds(2, salt=100 + i):
            play_parallel_checked("small", seed, **overrides)
            play_aec_checked("small", seed, **overrides)


@needs_pettingzoo
def test_the_leak_checks_catch_a_reintroduced_seed(monkeypatch):
    from turngym.envs.check import EnvCheckError, check_aec_env
    from turngym.envs.werewolf import werewolf_env

    original = werewolf_env._WerewolfBase._new_game

    def with_seed(self, seed, options):
        original(self, seed, options)
        self.task_id = f"{self.preset}/{self.game.seed}"  # the leak issue 17 found

    monkeypatch.setattr(werewolf_env._WerewolfBase, "_new_game", with_seed)
    seed = _long_seeds(1, salt=7)[0]
    with pytest.raises(AssertionError, match=r"the deal is rebuilt from .*task_id"):
        play_parallel_checked("small", seed)
    with pytest.raises(AssertionError, match=r"the deal is rebuilt from .*task_id"):
        play_aec_checked("small", seed)
    with pytest.raises(EnvCheckError, match=r"^\[leaks\].*reset seed .*task_id"):
        check_aec_env(lambda: werewolf_env.env(preset="small"), skip_pettingzoo=True, junk=0, episodes=1)
    # the same seed hidden in other clothes: hex, inside a token, deep in a nested value
    for spelled in (lambda s: f"run-{s:x}", lambda s: f"ab{s}cd", lambda s: {"meta": [("x", float(s))]}):
        monkeypatch.setattr(werewolf_env._WerewolfBase, "_new_game",
                            lambda self, seed, options, spelled=spelled: (original(self, seed, options),
                                                                          setattr(self, "task_id", spelled(self.game.seed))))
        with pytest.raises(AssertionError, match="the deal is rebuilt"):
            play_parallel_checked("small", seed)


@needs_pettingzoo
@pytest.mark.parametrize("fault", ["state_key", "step", "raw_phase", "night_roles_asked_after_the_chat"])
def test_the_leak_checks_catch_a_digest_a_step_count_or_timing_the_wolves_chat(monkeypatch, fault):
    """What infos and the night did before issue 17: each one moves a view on steps its player cannot see
    (the seer and doctor asked only once the chat is over could count its turns: how many wolves live)."""
    from turngym.envs.werewolf import werewolf_env

    if fault == "night_roles_asked_after_the_chat":
        night_roles = Game._night_roles
        monkeypatch.setattr(Game, "_night_roles", lambda self, wolves: night_roles(self, wolves) if wolves else [])
    else:
        original = werewolf_env._WerewolfBase._info
        value = {"state_key": lambda g: g.state_key(), "step": lambda g: g.steps, "raw_phase": lambda g: g.phase}[fault]
        monkeypatch.setattr(werewolf_env._WerewolfBase, "_info",
                            lambda self, agent: {**original(self, agent), fault: value(self.game)})
    with pytest.raises(AssertionError, match="changed on a step it cannot see"):
        for seed in _long_seeds(3, salt=11):
            play_parallel_checked("small", seed)


@needs_pettingzoo
def test_the_env_checker_passes_werewolf_with_its_leak_check():
    from turngym.envs.check import check_aec_env
    from turngym.envs.werewolf import werewolf_env

    report = check_aec_env(lambda: werewolf_env.env(preset="small"), skip_pettingzoo=True, junk=0, episodes=1)
    assert "leaks" in report.checks


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_no_leak_over_thousands_of_games(preset):
    rules = Rules.from_config(preset)
    games = {"small": 2000, "lspo7": 1000, "arena8": 300}[preset]
    for seed in range(games):
        play_checked(rules, 10_000 + seed, POLICIES[seed % len(POLICIES)],
                     check_every=1 if preset == "small" else 4)


@pytest.mark.slow
@needs_pettingzoo
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pettingzoo_views_over_hundreds_of_games(preset):
    games = {"small": 200, "lspo7": 80, "arena8": 30}[preset]
    for seed in _long_seeds(games, salt=1000 + len(preset)):
        play_parallel_checked(preset, seed)
        play_aec_checked(preset, seed)
