"""The native ALFWorld engine against the real one (TextWorld PddlEnv + alfworld's wrappers), step by step.

Both engines play the same shipped games with the same commands: the oracle's
shortest plan from reset, and a seeded random walk (admissible commands mixed
with rejected and junk ones) finished by the oracle. Observations, rewards,
terminations, wins, action validity and admissible-command lists must be equal
at every step. Needs `pip install 'turngym[alfworld]'` (alfworld, textworld,
fast-downward-textworld); skipped without it.
"""

from __future__ import annotations

import pytest

from turngym.envs.alfworld.env import ALFWorldEnv
from turngym.envs.alfworld.fidelity import FidelityReport, compare_task
from turngym.envs.alfworld.tasks import load_split
from turngym.envs.alfworld.textworld_engine import textworld_available

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _real_stack():
    # checked when a test runs, not at collection: importing textworld + spaCy takes seconds
    if not textworld_available():
        pytest.skip("needs the real ALFWorld stack: pip install 'turngym[alfworld]'")


# The two sweeps at the end take ~10 s a game in the real engine (its text generator parses every sentence with
# tatsu), ~30 min in all on one core: each is cut into SHARDS interleaved parts, so `make test-alfworld`
# (pytest -n 2) spreads them over the cores. Game i keeps seed i, whatever the shard count: the same walks
# as one serial sweep.
SHARDS = 4


def _run(tasks, walk_steps: int, shard: int | None = None) -> FidelityReport:
    """Game i of ``tasks`` played with seed i; with ``shard``, only games shard, shard + SHARDS, ..."""
    games = list(enumerate(tasks))
    if shard is not None:
        games = games[shard::SHARDS]
    envs = (ALFWorldEnv(), ALFWorldEnv(engine="textworld"))
    report = FidelityReport()
    for i, task in games:
        compare_task(task, walk_steps=walk_steps, seed=i, report=report, envs=envs)
    return report


def test_fidelity_sample_one_game_per_task_type():
    tasks, seen = [], set()
    for task in load_split("valid_seen"):
        if task["task_type"] not in seen:
            seen.add(task["task_type"])
            tasks.append(task)
    report = _run(tasks, walk_steps=25)
    assert report.games == 6 and report.steps >= 150
    assert report.mismatches == []


def test_textworld_engine_plays_through_the_env_api():
    env = ALFWorldEnv(engine="textworld")
    obs, info = env.reset(options={"task_id": "valid_seen/0"})
    assert "Your task is to:" in obs
    snap = env.get_state()
    env.step(env.oracle_action())
    env.set_state(snap)  # replays the command history in a fresh real game
    assert env.get_state() == snap
    for _ in range(50):
        *_, term, _, info = env.step(env.oracle_action())
        if term:
            break
    assert info["won"]


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_fidelity_on_every_valid_seen_game(shard):
    tasks = load_split("valid_seen")
    assert len(tasks) == 140  # every shard's slice together: all of them
    report = _run(tasks, walk_steps=30, shard=shard)
    print(f"shard {shard}: games={report.games} steps={report.steps} mismatches={len(report.mismatches)}")
    assert report.games == 35
    assert report.mismatches == [], report.mismatches[:5]


@pytest.mark.slow
@pytest.mark.parametrize("shard", range(SHARDS))
def test_fidelity_on_train_sample_games(shard):
    tasks = load_split("train_sample")[::4]
    assert len(tasks) == 50
    report = _run(tasks, walk_steps=30, shard=shard)
    assert report.games == (13 if shard < 2 else 12)
    assert report.mismatches == [], report.mismatches[:5]


def test_fidelity_on_generated_games():
    from turngym.envs.alfworld.tasks import generate_task

    report = _run([generate_task(0, synthetic=True), generate_task(2, synthetic=False)], walk_steps=20)
    assert report.games == 2 and report.mismatches == []
