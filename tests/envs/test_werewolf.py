"""Werewolf: the rules engine on constructed games, the PettingZoo APIs, bots, and robustness to any input."""

from __future__ import annotations

import importlib.util
import random

import pytest

from turngym.envs.werewolf.bots import RandomBot, RuleBot, make_bot, play_game
from turngym.envs.werewolf.game import Game, parse_action, step_bound
from turngym.envs.werewolf.rules import PRESETS, Rules, RulesError

W, S, D, V = "werewolf", "seer", "doctor", "villager"
SMALL_DEAL = [W, W, S, D, V, V]  # Player1, Player2 wolves; Player3 seer; Player4 doctor


def _small(**overrides) -> Game:
    return Game(Rules.from_config("small", **overrides), seed=0, roles=SMALL_DEAL)


def _act_all(game: Game, actions: dict[str, str]) -> None:
    """Play one phase: each waiting player acts (``actions`` by player, default 'pass').

    A simultaneous phase (night, bid, vote) takes one action from each; a sequential one (speeches, wolf chat)
    runs until it is over."""
    phase = game.phase
    if phase not in ("speech", "wolf_chat"):
        for p in game.actors():
            game.act(p, actions.get(p, "pass"))
        return
    while game.phase == phase and game.actors():
        p = game.actors()[0]
        game.act(p, actions.get(p, "pass"))


# ---- rules and presets -------------------------------------------------------------------------


def test_presets_build_and_bad_fields_name_the_fix():
    for name in PRESETS:
        assert Rules.from_config(name).num_players >= 5
    assert Rules.from_config("arena8").roles == {W: 2, S: 1, D: 1, V: 4}
    assert Rules.from_config("lspo7").num_players == 7
    with pytest.raises(RulesError, match="did you mean 'exile_rule'"):
        Rules.from_config("arena8", exile_rules="plurality")
    with pytest.raises(RulesError, match="did you mean 'arena8'"):
        Rules.from_config("arena9")
    with pytest.raises(RulesError, match="tie_rule"):
        Rules.from_config("small", tie_rule="coin")
    with pytest.raises(RulesError, match="outnumber"):
        Rules.from_config("small", roles={W: 3, V: 3})


def test_parse_action_accepts_the_documented_forms():
    assert parse_action("Vote: Player3") == ("vote", "Player3")
    assert parse_action("  speak:  hello\nworld ") == ("speak", "hello\nworld")
    assert parse_action("PASS") == ("pass", "")
    assert parse_action("I think Player3") == ("", "I think Player3")
    assert parse_action(None) == ("", "")


# ---- constructed games: night resolution, exile, win conditions -----------------------------------


def test_village_wins_when_the_last_wolf_is_exiled():
    g = _small()
    assert g.phase == "wolf_chat"
    _act_all(g, {"Player1": "speak: take Player5", "Player2": "speak: agreed"})
    assert g.phase == "night" and g.actors() == ["Player1", "Player2", "Player4", "Player3"]
    _act_all(g, {"Player1": "kill: Player5", "Player2": "kill: Player5", "Player4": "protect: Player5",
                 "Player3": "check: Player1"})
    assert all(g.alive.values()), "a protected victim survives"
    assert g.checked == {"Player1": True}
    assert g.phase == "speech"
    _act_all(g, {})  # everyone stays silent, one by one
    assert g.phase == "vote"
    _act_all(g, {p: "vote: Player1" for p in g.players if p != "Player1"} | {"Player1": "vote: Player3"})
    assert not g.alive["Player1"] and not g.over
    assert any(e.kind == "reveal" and e.data["role"] == W for e in g.events)
    # night 2: a lone wolf has no chat; the doctor guards the seer, the wolf takes Player6
    assert g.phase == "night"
    _act_all(g, {"Player2": "kill: Player6", "Player4": "protect: Player3", "Player3": "check: Player2"})
    assert not g.alive["Player6"] and not g.over
    while g.phase == "speech":
        _act_all(g, {})
    _act_all(g, {p: "vote: Player2" for p in g.living() if p != "Player2"})
    assert g.winner == "village"
    assert g.rewards() == {"Player1": -1.0, "Player2": -1.0, "Player3": 1.0, "Player4": 1.0, "Player5": 1.0,
                           "Player6": 1.0}
    assert g.actors() == [] and g.phase == "over"


def test_wolves_win_at_parity():
    g = _small()
    _act_all(g, {})  # silent chat
    _act_all(g, {"Player1": "kill: Player3", "Player2": "kill: Player3", "Player4": "protect: Player4"})
    assert not g.alive["Player3"] and not g.over  # 2 wolves vs 3
    while g.phase == "speech":
        _act_all(g, {})
    _act_all(g, {"Player1": "vote: Player5", "Player2": "vote: Player5", "Player4": "vote: Player1",
                 "Player6": "vote: Player5"})
    assert g.winner == "wolves"  # 2 wolves vs 2
    assert g.rewards()["Player1"] == 1.0 and g.rewards()["Player4"] == -1.0


def test_majority_rule_needs_more_than_half_of_the_living():
    g = Game(Rules.from_config("small", exile_rule="majority", speech="round_robin"), seed=0, roles=SMALL_DEAL)
    _act_all(g, {})
    _act_all(g, {})  # no night actions: nobody dies
    while g.phase == "speech":
        _act_all(g, {})
    # 3 of 6 is not a strict majority
    _act_all(g, {"Player3": "vote: Player1", "Player4": "vote: Player1", "Player5": "vote: Player1"})
    assert all(g.alive.values()) and "majority" in g.events[-2].text
    assert g.phase in ("wolf_chat", "night")


def test_plurality_tie_rules():
    votes = {"Player1": "vote: Player3", "Player2": "vote: Player3", "Player3": "vote: Player1",
             "Player4": "vote: Player1"}
    for tie_rule in ("no_exile", "revote", "random"):
        g = _small(tie_rule=tie_rule)
        _act_all(g, {})
        _act_all(g, {})
        while g.phase == "speech":
            _act_all(g, {})
        _act_all(g, votes)
        if tie_rule == "no_exile":
            assert all(g.alive.values())
        elif tie_rule == "revote":
            assert g.phase == "vote" and g.candidates == ["Player1", "Player3"]
            assert "vote: Player5" not in g.admissible_actions("Player2")
            _act_all(g, votes | {"Player5": "vote: Player1"})
            assert not g.alive["Player1"]
        else:
            dead = [p for p in g.players if not g.alive[p]]
            assert len(dead) == 1 and dead[0] in ("Player1", "Player3")
            again = _small(tie_rule=tie_rule)
            for _ in range(4):  # chat, night, speeches, vote
                _act_all(again, {} if again.phase != "vote" else votes)
            assert [p for p in again.players if not again.alive[p]] == dead, "seeded draw replays"


def test_bidding_gives_the_floor_to_the_highest_bid_and_ends_after_debate_turns():
    g = Game(Rules.from_config("arena8", debate_turns=2, first_phase="day"), seed=3)
    assert g.phase == "bid" and set(g.actors()) == set(g.players)
    for p in g.actors():
        g.act(p, "bid: 4" if p == "Player6" else "bid: 1")
    assert g.phase == "speech" and g.actors() == ["Player6"]
    g.act("Player6", "speak: I suspect Player2.")
    assert g.phase == "bid"
    for p in g.actors():
        g.act(p, "bid: 0")
    # all tied at 0: the player mentioned in the last speech wins the floor
    assert g.actors() == ["Player2"]
    g.act("Player2", "pass")
    assert g.phase == "vote"


def test_doctor_rules_and_night_validity():
    g = _small(doctor_self_protect=False, doctor_repeat_protect=False)
    _act_all(g, {})
    assert "protect: Player4" not in g.admissible_actions("Player4")
    assert "kill: Player2" not in g.admissible_actions("Player1"), "wolves cannot kill wolves"
    assert g.act("Player1", "kill: Player2") is False
    assert "like you" in g.last_feedback["Player1"]
    assert g.act("Player5", "kill: Player3") is None, "not asked: ignored"


def test_role_reveal_off_keeps_roles_secret_until_game_over():
    g = _small(reveal_role_on_death=False)
    _act_all(g, {})
    _act_all(g, {"Player1": "kill: Player3", "Player2": "kill: Player3"})
    assert not g.alive["Player3"]
    assert not any(e.kind == "reveal" for e in g.events)
    assert "seer" not in g.observation("Player5").split("Transcript:")[1]


# ---- any input, never stalls ------------------------------------------------------------------------


JUNK = ["", " ", "\n", None, 42, "vote:", "vote: Player99", "kill: me", "bid: 9", "bid: -1", "speak:", "🐺" * 50,
        "x" * 100_000, "check: Player1\ncheck: Player2", "\x00\x01", "speak: “quoted” \n[Day 9] Moderator: lies"]


def test_any_string_is_legal_and_invalid_actions_get_feedback_and_defaults():
    for preset in PRESETS:
        rules = Rules.from_config(preset)
        for seed in range(3):
            g = Game(rules, seed=seed)
            rng = random.Random(seed)
            while not g.over:
                assert g.steps <= step_bound(rules)
                for p in g.actors():
                    action = rng.choice(JUNK)
                    valid = g.act(p, action)
                    assert valid in (True, False)
                    if valid is False:
                        assert g.last_feedback[p] and "Default:" in g.last_feedback[p]
            assert g.winner in ("village", "wolves", "draw")


def test_an_invalid_action_does_exactly_what_the_readme_says():
    """README, "Actions": an invalid action gets private feedback and its default (silence, bid 0, abstention, no
    night action), and nothing else: the game's data without the feedback equals the default's, in every phase
    and for every role. (An invalid bid used to leave no bid at all, not the documented ``bid: 0``.)"""
    documented = {"speech": "pass", "wolf_chat": "pass", "bid": "bid: 0", "vote": "pass", "night": "pass"}
    tried = set()
    variants = [{}, {"speech": "bidding", "debate_turns": 2}, {"allow_abstain": False}, {"first_phase": "day"}]
    for i, overrides in enumerate(variants):
        for preset in ("small", "lspo7"):
            g = Game(Rules.from_config(preset, **overrides), seed=i)
            bots = {p: RuleBot() for p in g.players}
            rngs = {p: random.Random(f"{i}|{p}") for p in g.players}
            while not g.over:
                for p in g.actors():
                    phase = g.phase_of(p)
                    assert g.default_action(p) == documented[phase]
                    for junk in ("dance", "", "vote: Player99", "🐺" * 3):
                        a, b = g.snapshot(), g.snapshot()
                        assert a.act(p, junk) is False and a.last_feedback[p].endswith(".")
                        b.act(p, g.default_action(p))
                        assert a.to_data(feedback=False) == b.to_data(feedback=False), (phase, junk)
                        new = a.events[len(g.events):]
                        assert [e.audience for e in new if e.kind == "feedback"] == [(p,)]
                    tried.add((phase, g.roles[p] if phase == "night" else ""))
                    g.act(p, bots[p].act(g.view(p), g.admissible_actions(p), rngs[p]))
    assert tried >= {("speech", ""), ("wolf_chat", ""), ("bid", ""), ("vote", ""), ("night", "werewolf"),
                     ("night", "seer"), ("night", "doctor")}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_random_and_rule_bot_games_finish_within_the_step_limit(preset):
    rules = Rules.from_config(preset)
    for seed in range(25):
        g = Game(rules, seed=seed)
        bots = {p: (RuleBot() if (seed + i) % 2 else RandomBot()) for i, p in enumerate(g.players)}
        play_game(g, bots)
        assert g.over and g.steps <= step_bound(rules)


def test_games_replay_exactly_from_the_seed():
    rules = Rules.from_config("lspo7")
    a, b = Game(rules, seed=11), Game(rules, seed=11)
    for g in (a, b):
        play_game(g, {p: make_bot("rule") for p in g.players})
    assert a.state_key() == b.state_key() and a.winner == b.winner
    assert Game(rules, seed=12).roles != a.roles or Game(rules, seed=13).roles != a.roles


def test_snapshot_and_state_key():
    g = _small()
    before, key = g.snapshot(), g.state_key()
    g.act(g.actors()[0], "speak: hello")
    assert g.state_key() != key and before.state_key() == key


def test_rule_village_beats_random_village_against_rule_wolves():
    """The headline bot property (benchmarks/werewolf_bots.py measures it on more games)."""
    rules = Rules.from_config("lspo7")
    wins = {}
    for village in ("rule", "random"):
        n = 0
        for seed in range(120):
            g = Game(rules, seed=seed)
            play_game(g, {p: make_bot("rule" if g.roles[p] == W else village) for p in g.players})
            n += g.winner == "village"
        wins[village] = n
    assert wins["rule"] >= wins["random"] + 15, wins


# ---- PettingZoo APIs --------------------------------------------------------------------------------


needs_pettingzoo = pytest.mark.skipif(importlib.util.find_spec("pettingzoo") is None,
                                      reason="needs the werewolf extra: pip install 'turngym[werewolf]'")


@needs_pettingzoo
def test_parallel_api_test_passes():
    from pettingzoo.test import parallel_api_test

    from turngym.envs.werewolf import parallel_env

    parallel_api_test(parallel_env(preset="small", max_action_chars=64), num_cycles=1000)
    parallel_api_test(parallel_env(preset="arena8", max_action_chars=64), num_cycles=300)


@needs_pettingzoo
def test_aec_api_test_passes_through_the_encoding_wrapper():
    from pettingzoo.test import api_test

    from turngym.envs.check import encoded_observations
    from turngym.envs.werewolf import env

    api_test(encoded_observations(env(preset="small", max_observation_chars=4096, max_action_chars=64)), num_cycles=300)


@needs_pettingzoo
def test_seed_tests():
    from pettingzoo.test import parallel_seed_test, seed_test

    from turngym.envs.werewolf import env, parallel_env

    seed_test(lambda: env(preset="small", max_action_chars=64), num_cycles=100)
    parallel_seed_test(lambda: parallel_env(preset="small", max_action_chars=64), num_cycles=100)


@needs_pettingzoo
def test_aec_and_parallel_views_play_the_same_game():
    from turngym.envs.werewolf import env, parallel_env

    aec, par = env(preset="lspo7"), parallel_env(preset="lspo7")
    aec.reset(seed=5)
    par.reset(seed=5)
    rng_a, rng_p = random.Random(1), random.Random(1)
    bot = RuleBot()
    for agent in aec.agent_iter():
        _o, _r, term, trunc, info = aec.last()
        if term or trunc:
            aec.step(None)
            continue
        assert info["acting"] and agent == aec.game.actors()[0]
        aec.step(bot.act(aec.game.view(agent), info["admissible_actions"], rng_a))
    while par.agents:
        acts = {a: bot.act(par.game.view(a), par.game.admissible_actions(a), rng_p) for a in par.game.actors()}
        _obs, rewards, terms, _truncs, _infos = par.step(acts)
    assert aec.game.winner == par.game.winner and aec.game.winner is not None
    assert all(terms.values()) and set(rewards.values()) <= {1.0, -1.0}


@needs_pettingzoo
def test_env_infos_observations_and_rewards():
    from turngym.envs.spaces import TEXT_CHARSET
    from turngym.envs.werewolf import parallel_env

    e = parallel_env(preset="small", shaping={"survive": 0.5})
    obs, infos = e.reset(seed=2, options={"roles": SMALL_DEAL})
    for a in e.agents:
        assert set(obs[a]) <= set(TEXT_CHARSET) and e.observation_space(a).contains(obs[a])
        assert infos[a]["role"] == SMALL_DEAL[int(a[6:]) - 1]
        assert infos[a]["task_id"] == infos["Player1"]["task_id"] and "2" not in infos[a]["task_id"].split("/")
        assert "state_key" not in infos[a] and "step" not in infos[a]
    # the seer and the doctor are asked from nightfall, alongside the wolves' chat (which is "night" to them)
    assert infos["Player1"]["acting"] and infos["Player1"]["phase"] == "wolf_chat"
    assert infos["Player3"]["acting"] and infos["Player4"]["acting"] and not infos["Player5"]["acting"]
    assert infos["Player3"]["phase"] == infos["Player5"]["phase"] == "night"
    assert "Player2" in obs["Player1"] and "your pack" in obs["Player1"] and "your pack" not in obs["Player3"]
    _, _, _, _, infos = e.step({"Player1": "dance"})
    assert infos["Player1"]["action_valid"] is False and "Default" in infos["Player1"]["feedback"]
    while e.agents:
        acts = {a: random.Random(0).choice(infos[a]["admissible_actions"]) for a in e.agents if infos[a]["acting"]}
        obs, rewards, _terms, _truncs, infos = e.step(acts)
    g = e.game
    for a, r in rewards.items():
        base = 0.0 if g.winner == "draw" else (1.0 if infos[a]["won"] else -1.0)
        assert r == base + 0.5 * g.alive[a]
    with pytest.raises(Exception, match="shaping"):
        parallel_env(preset="small", shaping={"bogus": 1})


@needs_pettingzoo
def test_task_ids_are_opaque_ids_of_the_deal():
    import re

    from turngym.envs.werewolf import parallel_env

    def task_id(seed, **config):
        return parallel_env(preset="small", **config).reset(seed=seed)[1]["Player1"]["task_id"]

    assert re.fullmatch(r"small/[0-9a-f]{16}", task_id(5))
    assert task_id(5) == task_id(5) != task_id(6), "one id per deal, the same in two instances of a process"
    assert task_id(5) != task_id(5, exile_rule="majority"), "other rules, another game"
    assert task_id(5, task_key="k1") == task_id(5, task_key="k1") != task_id(5, task_key="k2") != task_id(5)
    env = parallel_env(preset="small")
    env.reset(seed=1_234_567_891)
    assert env.task_id == task_id(1_234_567_891) and "1234567891" not in env.task_id


@needs_pettingzoo
def test_registered_as_pettingzoo_and_kept_out_of_gymnasium_checks():
    import gymnasium as gym

    from turngym.envs import gymnasium_ids, registry

    entry = registry()["turngym/Werewolf-v0"]
    assert entry.kind == "pettingzoo"
    assert "turngym/Werewolf-v0" not in gymnasium_ids() and "turngym/Werewolf-v0" not in gym.registry
    import importlib

    module, _, attr = "turngym.envs.werewolf:env".partition(":")
    made = getattr(importlib.import_module(module), attr)(preset="small")
    made.reset(seed=0)
    assert made.agent_selection in made.agents


def test_turngym_make_builds_the_aec_env():
    pytest.importorskip("pettingzoo")
    import turngym

    env = turngym.make("turngym/Werewolf-v0", preset="small")
    env.reset(seed=3)
    assert env.agent_selection in env.possible_agents and len(env.possible_agents) == 6
