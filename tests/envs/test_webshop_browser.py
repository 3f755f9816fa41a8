"""WebShop's browser mode in a real headless Chromium: the same episode as the text mode for the same actions,
snapshots, the oracle, turngym's env checker, and nothing left running (processes, threads, listening ports)
after close(), a crash or many episodes.

Needs ``turngym[webshop-browser]`` (playwright, uvicorn) and Debian's ``chromium``: ``make test-webshop-browser``.
"""

from __future__ import annotations

import gc
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings

import gymnasium as gym
import numpy as np
import psutil
import pytest

pytestmark = pytest.mark.integration

import turngym.envs  # noqa: F401 - registers turngym/WebShop-v0 with Gymnasium
from turngym.envs.check import check_env
from turngym.envs.webshop.browser import find_chromium
from turngym.envs.webshop.env import WebShopEnv
from turngym.errors import EnvFaultError, TurngymError


@pytest.fixture(autouse=True, scope="module")
def _browser_stack():
    """The stack is checked when a test here runs (make test-webshop-browser installs it), not at collection:
    the default tier collects this file and deselects it by its integration mark."""
    for module in ("playwright", "uvicorn", "rapidfuzz"):
        pytest.importorskip(module)


@pytest.fixture(scope="module")
def chromium():
    try:
        return find_chromium()
    except TurngymError as exc:  # the message names the package to install
        pytest.skip(f"no Chromium: {exc}")


@pytest.fixture(scope="module")
def envs(chromium):
    browser = WebShopEnv(mode="browser", nouns="heuristic", browser_options={"executable_path": chromium})
    text = WebShopEnv(nouns="heuristic")
    yield browser, text
    browser.close()


def _same_step(browser, text, action):
    b, t = browser.step(action), text.step(action)
    assert b[0] == t[0], (action, b[0][:400], t[0][:400])
    assert b[1:4] == t[1:4] and b[4] == t[4], action
    return t


def test_text_and_browser_play_the_same_episode(envs):
    browser, text = envs
    for task_id in ("test/0", "test/1", "test/2"):
        assert browser.reset(options={"task_id": task_id}) == text.reset(options={"task_id": task_id})
        script = ["click[Buy Now]", "search[Wireless  EARBUDS]", "click[Next >]", "click[next >]", "click[< Prev]",
                  "search[again]", "not an action"]
        shown = text.shop.page_products("wireless earbuds", 2)
        script += [f"click[{shown[0]['asin']}]", "click[Features]", "click[< Prev]", "click[Reviews]",
                   "click[< Prev]", "click[Description]", "click[< Prev]"]
        script += [f"click[{values[-1]}]" for values in shown[0]["options"].values()]
        script += ["click[< Prev]", "click[Back to Search]"]
        for action in script:
            _same_step(browser, text, action)
        while True:
            obs, reward, term, _, info = _same_step(browser, text, text.oracle_action())
            if term:
                break
        assert info["won"] and reward == 1.0
        assert obs == "Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] 1.0"


def test_a_wrong_purchase_scores_the_same(envs):
    browser, text = envs
    for env in envs:
        env.reset(options={"task_id": "test/5"})
    _same_step(browser, text, "search[bookshelf]")
    _same_step(browser, text, f"click[{text.shop.page_products('bookshelf', 1)[3]['asin']}]")
    _, reward, term, _, info = _same_step(browser, text, "click[Buy Now]")
    assert term and reward < 1.0 and not info["won"]


def test_snapshots_restore_in_the_browser(envs):
    browser, _ = envs
    browser.reset(options={"task_id": "test/9"})
    browser.step(f"search[{browser._oracle_query()}]")
    snapshot, obs = browser.get_state(), browser.step(browser.oracle_action())[0]
    browser.step("click[Back to Search]")
    browser.set_state(snapshot)
    assert browser.step(browser.oracle_action())[0] == obs
    assert browser.url.startswith("http://127.0.0.1:") and "/item/" in browser.url


def test_oracle_wins_a_browser_sample(envs):
    browser, _ = envs
    for task_id in ("test/10", "valid/0", "train/0"):
        browser.reset(options={"task_id": task_id})
        for _ in range(15):
            *_, term, _, info = browser.step(browser.oracle_action())
            if term:
                break
        assert info["won"], task_id


def _port_open(url: str) -> bool:
    host, port = url.split("//", 1)[1].split("/", 1)[0].split(":")
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) == 0


def _browser_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("turngym-webshop")]


def test_close_and_crash_leave_nothing_running(chromium):
    before = _browser_threads()
    env = WebShopEnv(mode="browser", nouns="heuristic", browser_options={"executable_path": chromium})
    env.reset(seed=0)
    site = env._browser
    base = site.base_url
    assert _port_open(base) and len(_browser_threads()) > len(before)
    env.close()
    env.close()  # idempotent
    assert not _port_open(base) and _browser_threads() == before
    # A crash (the browser thread gone) is an env fault: reported, never scored, and everything is closed.
    env = WebShopEnv(mode="browser", nouns="heuristic", browser_options={"executable_path": chromium})
    env.reset(seed=1)
    base = env._browser.base_url
    env._browser._worker.close()
    with pytest.raises(EnvFaultError):
        env.step("search[shoes]")
    assert not _port_open(base) and _browser_threads() == before
    env.close()


def test_play_prints_the_page_address(chromium):
    out = subprocess.run([sys.executable, "-P", "-m", "turngym.cli", "play", "turngym/WebShop-v0", "--task-id", "test/4",
                          "--kwarg", "mode=browser", "--kwarg", "nouns=heuristic", "--oracle"],
                         capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "TURNGYM_CHROMIUM": chromium})
    assert out.returncode == 0, out.stderr
    assert re.search(r"Open http://127\.0\.0\.1:\d+/\S+ in your browser", out.stdout), out.stdout[:500]
    assert re.search(r"page: http://127\.0\.0\.1:\d+/\S+/item/", out.stdout) and "episode over: WON" in out.stdout


def _leftovers() -> tuple[set[int], list[str], set[int]]:
    """What this process has running besides its own code: child processes (Playwright's driver, Chromium and
    its helpers), the env's threads, and listening TCP ports (the shop's server)."""
    gc.collect()  # envs dropped without close() are closed by their finalizers
    me = psutil.Process()
    children = {p.pid for p in me.children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
    ports = {c.laddr.port for c in me.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    return children, sorted(_browser_threads()), ports


def _assert_nothing_left(before: tuple, wait_s: float = 20.0) -> None:
    """Nothing of ``_leftovers()`` stays beyond ``before``. Chromium's helper processes exit on their own a moment
    after the browser closed (CI saw one still exiting on a loaded machine), so a leftover gets ``wait_s`` to go.
    A process started meanwhile by a browser that was already running (the module's ``envs`` fixture: Chromium
    starts utility services when it likes) belongs to that browser, not to the code under test."""
    expected = (set(), before[1], before[2])
    deadline = time.monotonic() + wait_s
    while (now := _new_since(before)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    extra = []
    for pid in sorted(now[0]):
        try:
            proc = psutil.Process(pid)
            extra.append(f"{pid} {proc.name()} {' '.join(proc.cmdline())[:160]} (parent {proc.ppid()})")
        except psutil.Error:
            extra.append(f"{pid} (gone)")
    assert now == expected, extra


def _new_since(before: tuple) -> tuple[set[int], list[str], set[int]]:
    """``_leftovers()``, its processes only the new ones whose parent chain reaches no process of ``before``."""
    children, threads, ports = _leftovers()
    mine = set()
    for pid in children - before[0]:
        try:
            parents = {p.pid for p in psutil.Process(pid).parents()}
        except psutil.Error:
            continue
        if not parents & before[0]:
            mine.add(pid)
    return mine, threads, ports


def test_the_checker_passes_in_browser_mode(chromium):
    """turngym.envs.check.check_env on gym.make(..., mode="browser"): snapshots restore by loading the state's URL;
    the fresh instances the checker makes through the env's spec are browser envs too, closed at collection."""
    before = _leftovers()

    def browser_env() -> gym.Env:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return gym.make("turngym/WebShop-v0", mode="browser", nouns="heuristic",
                            browser_options={"executable_path": chromium})

    assert browser_env().spec.kwargs["mode"] == "browser"  # what the checker's fresh instances are made from
    report = check_env(browser_env, episodes=2, max_steps=8, junk=20)
    assert {"gymnasium", "determinism", "invalid_actions", "state_restore", "state_key", "oracle"} <= set(report.checks)
    assert report.junk_actions > 100 and report.random_junk_actions == 20
    _assert_nothing_left(before)


def test_a_killed_browser_is_a_fault_and_close_leaves_nothing(chromium):
    before = _leftovers()
    env = WebShopEnv(mode="browser", nouns="heuristic", browser_options={"executable_path": chromium})
    env.reset(options={"task_id": "test/3"})
    env.step(env.oracle_action())
    started = [p for p in psutil.Process().children(recursive=True) if p.pid not in before[0]]  # this env's
    browsers = [p for p in started if "chrom" in p.name().lower()]
    assert browsers, [p.name() for p in started]
    for proc in browsers:  # the whole browser dies mid-episode
        proc.kill()
    psutil.wait_procs(browsers, timeout=10)
    with pytest.raises(EnvFaultError):
        env.step(env.oracle_action())
    env.close()
    _assert_nothing_left(before)


@pytest.mark.slow
def test_many_browser_episodes_leak_nothing(chromium):
    """EPISODES short random episodes (ACTIONS actions each, the oracle or a random admissible one), in envs
    replaced every 50 episodes: afterwards no process, thread or listening port is left, and the last env
    still plays like the text mode."""
    before = _leftovers()
    rng = np.random.default_rng(0)
    env = None
    for episode in range(EPISODES):
        if episode % 50 == 0:
            if env is not None:
                env.close()
            env = WebShopEnv(mode="browser", nouns="heuristic", browser_options={"executable_path": chromium})
        env.reset(seed=episode)
        for _ in range(ACTIONS):
            actions = env.admissible_actions()
            action = env.oracle_action() if rng.random() < 0.5 else actions[int(rng.integers(len(actions)))]
            if env.step(action)[2]:
                break
    env.close()
    _assert_nothing_left(before)


#: Episodes of the slow leak test (the issue's 1,000) and actions in each (a reset and two page loads): 7 min 45 s
#: with the 20 env starts on this project's busy 2-core machine.
EPISODES, ACTIONS = 1000, 2
