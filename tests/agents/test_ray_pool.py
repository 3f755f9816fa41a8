"""The Ray env pool: same episodes as the thread pool, a killed actor's episodes are env errors, close."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from functools import partial
from pathlib import Path

import gymnasium as gym
import pytest

ray = pytest.importorskip("ray", reason="the Ray env pool needs ray: pip install 'turngym[ray]'")

from turngym.agents.factory import make_agent
from turngym.agents.pool import RayEnvPool, make_env, make_pool
from turngym.agents.runner import EpisodeRunner, plan_episodes
from turngym.errors import EnvFaultError

G24 = "turngym/Game24-v0"
BW = "turngym/BlocksWorld-v0"

# The actors unpickle this module's env factories by value: the workers need not import the tests.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _played(trajectories):
    return [(t.task_id, t.seed, t.error, t.won, [(s.observation, s.action, s.reward, s.terminated, s.truncated)
                                                 for s in t.steps]) for t in trajectories]


@pytest.mark.parametrize("env_id", [BW, G24])
def test_ray_plays_the_same_episodes_as_threads(local_ray, env_id):
    specs = plan_episodes(env_id, num_tasks=6, seed=3)
    played = {}
    for agent in ("oracle", "random"):
        for pool in ("thread", "ray"):
            runner = EpisodeRunner(env_id, make_agent(agent, env_id), pool=pool, workers=2, max_concurrent=4,
                                   max_steps=8)
            played[agent, pool] = _played(runner.run(specs).trajectories)
        assert played[agent, "ray"] == played[agent, "thread"]
        assert all(t[2] is None for t in played[agent, "ray"])
    assert any(t[3] for t in played["oracle", "ray"])


class GateEnv(gym.Wrapper):
    """Its first step of seed ``block_seed`` (once per ``gate`` folder) writes ``gate/blocked`` (this process's
    id) and hangs until killed: a step the test can catch mid-episode."""

    def __init__(self, env, gate: str, block_seed: int):
        super().__init__(env)
        self.gate, self.block_seed, self.seed = Path(gate), block_seed, None

    def reset(self, *, seed=None, options=None):
        self.seed = seed
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        marker = self.gate / "blocked"
        if self.seed == self.block_seed and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(120)
        return self.env.step(action)


def gate_env(gate: str, block_seed: int):
    return GateEnv(make_env(BW), gate, block_seed)


def test_a_killed_actor_gives_env_errors_and_the_pool_goes_on(local_ray, tmp_path):
    specs = plan_episodes(BW, num_tasks=8, seed=0)
    pool = RayEnvPool(partial(gate_env, str(tmp_path), specs[0].seed), size=4, workers=2)
    killed = []

    def kill_when_blocked():
        marker = tmp_path / "blocked"
        for _ in range(600):
            if marker.exists() and marker.read_text():
                pid = int(marker.read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_when_blocked, daemon=True)
    try:
        killer.start()
        runner = EpisodeRunner(BW, make_agent("oracle"), pool=pool, max_concurrent=4)
        result = runner.run(specs)
        killer.join(timeout=5)
        assert killed
        trajectories = result.trajectories
        assert sorted(t.seed for t in trajectories) == sorted(s.seed for s in specs)  # nothing lost
        errored = [t for t in trajectories if t.error]
        assert specs[0].seed in {t.seed for t in errored}
        assert all("died" in t.error or "restarted" in t.error for t in errored), [t.error for t in errored]
        assert 1 <= len(errored) <= 2  # the actor hosts two of the four slots
        assert all(t.won for t in trajectories if not t.error)
        assert result.stats.errors == len(errored)

        again = runner.run(plan_episodes(BW, num_tasks=6, seed=50))
        assert len(again.trajectories) == 6 and all(t.won and not t.error for t in again.trajectories)
    finally:
        pool.close()


def test_a_step_after_a_restart_is_an_env_error_not_a_fresh_env(local_ray):
    pool = RayEnvPool(partial(make_env, BW), size=1)
    try:
        pool.submit(0, "reset", 1, None).result(timeout=60)
        old_pid = ray.get(pool.actors[0].pid.remote(), timeout=60)
        ray.kill(pool.actors[0], no_restart=False)
        for _ in range(300):  # calls wait while Ray restarts the actor
            try:
                if ray.get(pool.actors[0].pid.remote(), timeout=60) != old_pid:
                    break
            except ray.exceptions.RayActorError:
                pass
            time.sleep(0.1)
        with pytest.raises(EnvFaultError, match="restarted"):  # the episode's env is gone, not silently new
            pool.submit(0, "step", "noop").result(timeout=60)
        obs, _info = pool.submit(0, "reset", 1, None).result(timeout=60)[0]
        assert isinstance(obs, str)
    finally:
        pool.close()


def test_close_leaves_no_actor(local_ray):
    pool = make_pool("ray", partial(make_env, G24), 3, 3)
    pool.submit(2, "reset", 0, None).result(timeout=60)
    pids = ray.get([actor.pid.remote() for actor in pool.actors], timeout=60)
    pool.close()
    assert ray.is_initialized()  # the pool did not start Ray, so it leaves it running
    for actor in pool.actors:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.pid.remote(), timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.2)
    assert not any(_running(pid) for pid in pids)
    with pytest.raises(EnvFaultError):
        pool.submit(0, "reset", 0, None).result(timeout=5)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
