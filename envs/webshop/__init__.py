"""WebShop (Yao et al., 2022): ``turngym/WebShop-v0``.

* :mod:`.env`: :class:`WebShopEnv`, the Gymnasium env (text and browser modes).
* :mod:`.site`: the site's states, pages, clicks and HTML (one model for both modes).
* :mod:`.reward`: WebShop's reward (goal.py), with rapidfuzz and optionally spaCy.
* :mod:`.search`: BM25 (bm25s) over the product text, top 50.
* :mod:`.catalog`: the seeded synthetic catalog and goals, and the loader of WebShop's own files.
* :mod:`.vocab`: the word lists of the synthetic catalog.
* :mod:`.browser`: the HTTP server and the Playwright driver of the browser mode.

bm25s, rapidfuzz (``turngym[webshop]``), Playwright and uvicorn
(``turngym[webshop-browser]``) are imported only where they are used.
"""

from turngym.envs.webshop.env import WebShopEnv

__all__ = ["WebShopEnv"]
