"""WebShop's browser mode in a real headless Chromium: the same episode as the text mode for the same actions,
snapshots, the oracle, and nothing left running after close() or a crash.

Needs ``turngym[webshop-browser]`` (playwright, uvicorn) and Debian's ``chromium``: ``make test-webshop-browser``.
"""

from __future__ import annotations

import socket
import threading

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("playwright")
pytest.importorskip("uvicorn")
pytest.importorskip("rapidfuzz")

from turngym.envs.webshop.browser import find_chromium
from turngym.envs.webshop.env import WebShopEnv
from turngym.errors import EnvFaultError, TurngymError


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
