"""WebShop's browser mode: the site served as HTML on 127.0.0.1, driven in headless Chromium with Playwright.

:class:`BrowserSite` owns three things and closes them together: an HTTP
server (a small ASGI app under uvicorn, in :class:`turngym.http_server.ServerThread`)
that renders :meth:`Shop.html <turngym.envs.webshop.site.Shop.html>` pages for
URLs that encode the whole page state (so the server keeps no per-click
state, only each session's goal); a Chromium (Debian's ``chromium``
package, found on PATH; Playwright downloads nothing) and a worker thread
that alone touches Playwright (its sync API is bound to one thread, while
turngym steps envs from a pool).

An action string becomes what a person does: ``search[q]`` types ``q`` into
the search box and presses the Search button; ``click[x]`` clicks the link,
button or option radio whose text (or value) is ``x``. After each action the
page's URL is read back into a state and checked against the state the site
model predicts (a mismatch is an :class:`~turngym.errors.EnvFaultError`), and
the observation is read from the rendered page: its visible text nodes,
stripped, joined with " [SEP] ".

This module depends on :mod:`turngym.http_server`, :mod:`turngym.errors`
and this package; playwright and uvicorn (``turngym[webshop-browser]``) are
imported when a :class:`BrowserSite` starts.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import parse_qs, urlencode

from turngym.envs.core import stable_digest
from turngym.envs.webshop import reward as reward_lib
from turngym.envs.webshop.site import SEP, Shop, ShopState
from turngym.errors import EnvFaultError, MissingDependencyError, TurngymError
from turngym.http_server import ServerThread, default_allowed_hosts, host_allowed

#: The page's visible texts in document order (what WebShop's text mode reads from the HTML).
_TEXTS_JS = """() => {
  const out = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  let node;
  while ((node = walker.nextNode())) {
    const parent = node.parentElement;
    if (!parent || ['SCRIPT', 'STYLE', 'NOSCRIPT', 'TEMPLATE'].includes(parent.tagName)) continue;
    const text = node.data.trim();
    if (text) out.push(text);
  }
  return out;
}"""
#: Mark the clickable whose text (links, buttons) or value (radios) is the argument, lowercased; true if found.
_MARK_JS = """(target) => {
  for (const el of document.querySelectorAll('[data-turngym-target]')) el.removeAttribute('data-turngym-target');
  const norm = (s) => s.trim().split(/\\s+/).join(' ').toLowerCase();
  for (const el of document.querySelectorAll('a.btn, a.product-link, button.btn, input[type=radio]')) {
    const text = el.tagName === 'INPUT' ? el.value : el.textContent;
    if (norm(text) === target) { el.setAttribute('data-turngym-target', '1'); return true; }
  }
  return false;
}"""
_SESSION_IDS = itertools.count()


def find_chromium(executable_path: str | None = None) -> str:
    """The Chromium to drive: ``executable_path``, ``$TURNGYM_CHROMIUM``, or ``chromium`` / ``chromium-browser`` on PATH."""
    for candidate in (executable_path, os.environ.get("TURNGYM_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    raise TurngymError("WebShop's browser mode needs a Chromium: install Debian's package (`apt-get install -y "
                       "chromium`) or pass browser_options={'executable_path': ...} (or set $TURNGYM_CHROMIUM)")


class ShopApp:
    """The site as a plain ASGI app: ``GET /<session>/...`` renders the page its URL encodes."""

    def __init__(self, shop: Shop, host: str = "127.0.0.1"):
        self.shop = shop
        self.sessions: dict[str, tuple[dict[str, Any], str]] = {}  # session -> (goal, noun tagger)
        self.allowed_hosts = default_allowed_hosts(host)

    def render(self, path: str, query: str) -> tuple[int, str, dict[str, str]]:
        """(status, body, extra headers) for a GET of ``path?query``."""
        url = f"{path}?{query}" if query else path
        found = self.shop.state_from_path(url)
        if found is None or found[0] not in self.sessions:
            return 404, "<!DOCTYPE html><html><body><h1>Not found</h1></body></html>", {}
        session, state = found
        if path.rstrip("/").endswith("/search"):  # the search form: redirect to the results URL (the state)
            q = " ".join(parse_qs(query).get("q", [""])[-1].split()).lower()
            return 303, "", {"location": f"/{session}/results?{urlencode({'q': q, 'page': 1})}"}
        goal, nouns = self.sessions[session]
        reward = None
        if state.page == "done":
            product = self.shop.by_asin[state.asin]
            reward = reward_lib.get_reward(product, goal, self.shop.prices[state.asin], dict(state.options),
                                           nouns=nouns)[0]
        return 200, self.shop.html(session, state, goal["instruction_text"], reward), {}

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not host_allowed(headers.get("host"), self.allowed_hosts):
            status, body, extra = 421, "misdirected request", {}
        elif scope["method"] not in ("GET", "HEAD"):
            status, body, extra = 405, "method not allowed", {}
        else:
            status, body, extra = self.render(scope["path"], scope.get("query_string", b"").decode("latin-1"))
        data = body.encode("utf-8")
        out = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(data)).encode()),
               (b"cache-control", b"no-store")] + [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else data})


class _PlaywrightThread:
    """One thread that owns Playwright, its Chromium and the page; ``call(fn)`` runs ``fn(page)`` there."""

    def __init__(self, executable_path: str, headless: bool, timeout_s: float):
        self.timeout_s = timeout_s
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(executable_path, headless), daemon=True,
                                        name="turngym-webshop-browser")
        self._ready: Future = Future()
        self._thread.start()
        self._ready.result(timeout=timeout_s + 30)

    def _run(self, executable_path: str, headless: bool) -> None:
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            self._ready.set_exception(MissingDependencyError("playwright", "webshop-browser", "WebShop's browser mode"))
            return
        try:
            pw = sync_playwright().start()
        except Exception as exc:  # noqa: BLE001 - whatever stops it, the caller gets an env fault
            self._ready.set_exception(EnvFaultError(f"Playwright did not start: {exc}"))
            return
        browser = None
        try:
            browser = pw.chromium.launch(executable_path=executable_path, headless=headless,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_page()
            page.set_default_timeout(self.timeout_s * 1000)
            self._ready.set_result(True)
            while True:
                job = self._jobs.get()
                if job is None:
                    break
                fn, future = job
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn(page))
                    except BaseException as exc:  # noqa: BLE001 - handed to the caller, who closes everything
                        future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - a launch failure is reported to the caller as an env fault
            if not self._ready.done():
                self._ready.set_exception(EnvFaultError(f"Chromium ({executable_path}) did not start: {exc}"))
        finally:
            try:
                if browser is not None:
                    browser.close()
            finally:
                pw.stop()

    def call(self, fn: Callable[[Any], Any]) -> Any:
        if not self._thread.is_alive():
            raise EnvFaultError("WebShop's browser thread is not running (closed or crashed)")
        future: Future = Future()
        self._jobs.put((fn, future))
        return future.result(timeout=self.timeout_s * 2 + 10)

    def close(self) -> None:
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(self.timeout_s + 10)


def _close_all(worker: _PlaywrightThread | None, server: ServerThread | None) -> None:
    try:
        if worker is not None:
            worker.close()
    finally:
        if server is not None:
            server.stop()


class BrowserSite:
    """The shop served on 127.0.0.1 and a headless Chromium on it (see the module docstring).

    Args:
        shop: the site model (catalog, search, pages).
        executable_path: Chromium's path (default: :func:`find_chromium`).
        headless: run Chromium without a window.
        timeout_s: bound on one page load or click.
        host: the server's bind address (a loopback one).
    """

    def __init__(self, shop: Shop, executable_path: str | None = None, headless: bool = True,
                 timeout_s: float = 30.0, host: str = "127.0.0.1"):
        self.shop = shop
        chromium = find_chromium(executable_path)
        self.app = ShopApp(shop, host)
        self._server: ServerThread | None = ServerThread(self.app, host=host, purpose="WebShop's browser mode",
                                                         name="turngym-webshop-http").start()
        self.base_url = self._server.url
        try:
            self._worker: _PlaywrightThread | None = _PlaywrightThread(chromium, headless, timeout_s)
        except BaseException:
            self._server.stop()
            self._server = None
            raise
        self._session: str | None = None
        self._finalizer = weakref.finalize(self, _close_all, self._worker, self._server)

    # ---- episodes ------------------------------------------------------------------------------
    def start_episode(self, goal: dict[str, Any], state: ShopState, nouns: str = "auto") -> None:
        """A new session for ``goal`` (the server forgets the previous one), its page loaded at ``state``."""
        if self._session is not None:
            self.app.sessions.pop(self._session, None)
        self._session = f"s{next(_SESSION_IDS)}-{stable_digest(goal.get('instruction_text', ''))[:8]}"
        self.app.sessions[self._session] = (goal, nouns)
        self.goto(state)

    def goto(self, state: ShopState) -> None:
        """Load the page of ``state`` (restoring a snapshot)."""
        url = self.base_url + self.shop.path(self._require_session(), state)
        self._run(lambda page: page.goto(url, wait_until="domcontentloaded"), f"loading {url}")
        self._check(state)

    def perform(self, action: str, expected: ShopState) -> None:
        """Do ``action`` in the page (typing and clicking), then check the page reached is ``expected``."""
        name, arg = Shop.parse_action(action)

        def act(page: Any) -> None:
            if name == "search":
                page.fill("#search_input", arg)
                with page.expect_navigation(wait_until="domcontentloaded"):
                    page.click("#search_button")
                return
            if not page.evaluate(_MARK_JS, arg):
                raise EnvFaultError(f"the page has no clickable {arg!r} although the site offers it")
            with page.expect_navigation(wait_until="domcontentloaded"):
                page.click("[data-turngym-target='1']")

        self._run(act, f"doing {action!r}")
        self._check(expected)

    def observation(self) -> str:
        """The rendered page's visible texts, stripped, joined with " [SEP] "."""
        return SEP.join(self._run(lambda page: page.evaluate(_TEXTS_JS), "reading the page"))

    def current_url(self) -> str:
        return self._run(lambda page: page.url, "reading the URL")

    def screenshot(self, path: str) -> None:
        """Save a PNG of the page (what a person would see)."""
        self._run(lambda page: page.screenshot(path=path, full_page=True), "taking a screenshot")

    def _check(self, expected: ShopState) -> None:
        url = self.current_url()
        found = self.shop.state_from_path(url[len(self.base_url):])
        if found != (self._session, expected):
            got = json.dumps(found[1].to_json()) if found else url
            raise EnvFaultError(f"the browser shows {got}, but the site model expects {json.dumps(expected.to_json())}")

    def _require_session(self) -> str:
        if self._session is None:
            raise TurngymError("BrowserSite: start_episode() first")
        return self._session

    def _run(self, fn: Callable[[Any], Any], what: str) -> Any:
        if self._worker is None:
            raise EnvFaultError("WebShop's browser was closed")
        try:
            return self._worker.call(fn)
        except EnvFaultError:
            self.close()
            raise
        except Exception as exc:  # a dead browser, a timeout: close everything, never score it as a loss
            self.close()
            raise EnvFaultError(f"WebShop's browser failed while {what}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close Chromium, Playwright, the worker thread and the server (idempotent)."""
        self._finalizer()
        self._worker = None
        self._server = None
