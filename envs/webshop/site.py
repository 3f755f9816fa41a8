"""The WebShop site: its state, its pages, what each click does, and the same pages as HTML.

One model serves both modes. A :class:`ShopState` is where a shopper is
(page, query, results page, product, chosen options). :meth:`Shop.page`
lays a state out as a list of :class:`Segment` (the visible texts in
document order, each marked as plain text, a button, a product link or an
option radio); the text observation joins their texts with " [SEP] " as
WebShop's ``observation_mode="text"`` does, and :meth:`Shop.html` renders the
same segments as a server-rendered page whose visible text nodes are exactly
those texts (the browser mode reads them back from Chromium).
:meth:`Shop.transition` is WebShop's ``SimServer.receive`` for one action.

Pages and their texts, as WebShop's templates show them:

* search: ``WebShop``, ``Instruction:``, the instruction, ``Search`` (the search box);
* results: ``Instruction:``, the instruction, ``Back to Search``,
  ``Page N (Total results: T)``, ``< Prev`` (from page 2), ``Next >``, then
  per product its ASIN (a link), Title and Price;
* item: ``Instruction:``, the instruction, ``Back to Search``, ``< Prev``,
  per option group its name and values (radios), the Title,
  ``Price: $...``, ``Rating: ...``, ``Description``, ``Features``,
  ``Reviews``, ``Buy Now``;
* description / features / reviews: the instruction, ``Back to Search``,
  ``< Prev``, then the description, the bullet points, or per review its
  quoted title, score and body;
* done: ``Thank you for shopping with us!``, ``Your score (min 0.0, max 1.0)``
  and the score (WebShop's hidden purchase/goal dump is left out).

This module depends on nothing of ours but this package and :mod:`turngym.errors`.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from turngym.envs.webshop.catalog import index_text
from turngym.envs.webshop.search import PRODUCT_WINDOW, ProductSearch

SEP = " [SEP] "
END_BUTTON, NEXT_PAGE, PREV_PAGE, BACK_TO_SEARCH = "Buy Now", "Next >", "< Prev", "Back to Search"
SUB_PAGES = {"description": "Description", "features": "Features", "reviews": "Reviews"}
PAGES = ("search", "results", "item", *SUB_PAGES, "done")
_ACTION = re.compile(r"\s*(\w+)\s*\[(.*)\]\s*", re.DOTALL)


@dataclass(frozen=True)
class ShopState:
    """Where the shopper is. ``options`` are (name, value) pairs sorted by name."""

    page: str = "search"
    query: str | None = None
    page_num: int | None = None
    asin: str | None = None
    options: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> list[Any]:
        return [self.page, self.query, self.page_num, self.asin, [list(o) for o in self.options]]

    @classmethod
    def from_json(cls, data: Any) -> ShopState:
        page, query, page_num, asin, options = data
        return cls(str(page), None if query is None else str(query), None if page_num is None else int(page_num),
                   None if asin is None else str(asin), tuple((str(k), str(v)) for k, v in options))

    def with_option(self, name: str, value: str) -> ShopState:
        chosen = dict(self.options)
        chosen[name] = value
        return replace(self, options=tuple(sorted(chosen.items())))


@dataclass(frozen=True)
class Segment:
    """One visible text of a page. ``kind``: "text", "button", "product" (an ASIN link) or "option" (a radio
    whose ``target`` is its option name); ``role`` tags texts for the HTML ("heading", "instruction", ...)."""

    text: str
    kind: str = "text"
    target: str | None = None
    role: str = ""


@dataclass
class Shop:
    """A catalog with its search engine: WebShop's server, without HTTP."""

    products: list[dict[str, Any]]
    prices: dict[str, float]
    by_asin: dict[str, dict[str, Any]] = field(init=False)
    search_engine: ProductSearch = field(init=False)

    def __post_init__(self) -> None:
        self.by_asin = {p["asin"]: p for p in self.products}
        self.search_engine = ProductSearch([index_text(p) for p in self.products])

    # ---- search ------------------------------------------------------------------------------
    def results(self, query: str) -> list[dict[str, Any]]:
        """The top 50 products for ``query``."""
        return [self.products[i] for i in self.search_engine.search(query)]

    def page_products(self, query: str, page_num: int) -> list[dict[str, Any]]:
        return self.results(query)[(page_num - 1) * PRODUCT_WINDOW: page_num * PRODUCT_WINDOW]

    # ---- pages -------------------------------------------------------------------------------
    def page(self, state: ShopState, instruction: str, reward: float | None = None) -> list[Segment]:
        """The visible texts of ``state``'s page, in document order."""
        if state.page == "done":
            return [Segment("Thank you for shopping with us!", role="heading"),
                    Segment("Your score (min 0.0, max 1.0)", role="heading"), Segment(f"{reward}", role="score")]
        if state.page == "search":
            return [Segment("WebShop", role="logo"), Segment("Instruction:", role="instruction"),
                    Segment(instruction, role="instruction"), Segment("Search", "button", role="submit")]
        segs = [Segment("Instruction:", role="instruction"), Segment(instruction, role="instruction"),
                Segment(BACK_TO_SEARCH, "button")]
        if state.page == "results":
            results = self.results(state.query or "")
            segs.append(Segment(f"Page {state.page_num} (Total results: {len(results)})", role="heading"))
            if state.page_num > 1:
                segs.append(Segment(PREV_PAGE, "button"))
            segs.append(Segment(NEXT_PAGE, "button"))
            start = (state.page_num - 1) * PRODUCT_WINDOW
            for p in results[start: start + PRODUCT_WINDOW]:
                segs += [Segment(p["asin"], "product"), Segment(p["Title"], role="title"),
                         Segment(p["Price"], role="price")]
            return segs
        product = self.by_asin[state.asin]
        segs.append(Segment(PREV_PAGE, "button"))
        if state.page == "item":
            for name, values in product["options"].items():
                segs.append(Segment(name, role="option-name"))
                segs += [Segment(v, "option", target=name) for v in values]
            segs += [Segment(product["Title"], role="title"), Segment(f"Price: {product['Price']}", role="price"),
                     Segment(f"Rating: {product['Rating']}", role="rating")]
            segs += [Segment(label, "button", role="tab") for label in SUB_PAGES.values()]
            segs.append(Segment(END_BUTTON, "button", role="buy"))
        elif state.page == "description":
            segs.append(Segment(product["Description"], role="body"))
        elif state.page == "features":
            segs += [Segment(b, role="bullet") for b in product["BulletPoints"]]
        elif state.page == "reviews":
            for r in product["Reviews"]:
                segs += [Segment(f'"{r["title"]}"', role="review-title"), Segment(f"{r['score']}", role="score"),
                         Segment(r["body"], role="body")]
        return segs

    @staticmethod
    def observation(segments: list[Segment]) -> str:
        """WebShop's simple text mode: the stripped visible texts joined with " [SEP] "."""
        return SEP.join(t for t in (s.text.strip() for s in segments) if t)

    @staticmethod
    def clickables(segments: list[Segment]) -> dict[str, Segment]:
        """Lowercased clickable text -> its segment (buttons, product links, option values), as WebShop's
        ``get_available_actions`` maps them (a later option value with the same text wins)."""
        return {s.text.lower(): s for s in segments if s.kind in ("button", "product", "option")}

    # ---- transitions ---------------------------------------------------------------------------
    @staticmethod
    def parse_action(action: str) -> tuple[str, str] | None:
        """``"click[Buy Now]"`` -> ("click", "buy now"): the name lowercased, the argument stripped and lowercased."""
        m = _ACTION.fullmatch(action)
        if m is None:
            return None
        return m.group(1).lower(), " ".join(m.group(2).split()).lower()

    def transition(self, state: ShopState, action: str, instruction: str) -> ShopState | None:
        """The state ``action`` leads to from ``state``, or None if it is invalid there (nothing happens)."""
        parsed = self.parse_action(action)
        if parsed is None:
            return None
        name, arg = parsed
        if name == "search":
            if state.page != "search" or not arg:  # only the start page has a search box
                return None
            return ShopState("results", arg, 1)
        if name != "click" or state.page in ("search", "done"):
            return None
        segment = self.clickables(self.page(state, instruction)).get(arg)
        if segment is None:
            return None
        if segment.kind == "product":
            return ShopState("item", state.query, state.page_num, segment.text)
        if segment.kind == "option":
            return state.with_option(segment.target, segment.text)
        if arg == BACK_TO_SEARCH.lower():
            return ShopState()
        if arg == END_BUTTON.lower():
            return replace(state, page="done")
        if arg == NEXT_PAGE.lower():
            return replace(state, page_num=state.page_num + 1)
        if arg == PREV_PAGE.lower():
            if state.page == "results":
                return replace(state, page_num=state.page_num - 1)
            if state.page == "item":
                return ShopState("results", state.query, state.page_num)
            return replace(state, page="item")
        if arg in SUB_PAGES:
            return replace(state, page=arg)
        return None

    def admissible_actions(self, state: ShopState, instruction: str) -> list[str]:
        """The actions the page offers: ``search[<your query>]`` on the start page, else one click per clickable."""
        if state.page == "search":
            return ["search[<your query>]"]
        if state.page == "done":
            return []
        return [f"click[{s.text}]" for s in self.page(state, instruction) if s.kind in ("button", "product", "option")]

    # ---- URLs and HTML (the browser mode) --------------------------------------------------------
    @staticmethod
    def path(session: str, state: ShopState) -> str:
        """The URL path (with query string) that shows ``state`` in ``session``."""
        base = f"/{quote(session)}"
        if state.page == "search":
            return f"{base}/"
        params: dict[str, Any] = {"q": state.query or "", "page": state.page_num or 1}
        if state.page == "results":
            return f"{base}/results?{urlencode(params)}"
        params["options"] = json.dumps(dict(state.options), sort_keys=True)
        if state.page == "item":
            return f"{base}/item/{quote(state.asin)}?{urlencode(params)}"
        if state.page == "done":
            return f"{base}/done/{quote(state.asin)}?{urlencode(params)}"
        return f"{base}/item/{quote(state.asin)}/{state.page}?{urlencode(params)}"

    def state_from_path(self, url: str) -> tuple[str, ShopState] | None:
        """(session, state) of a URL made by :meth:`path` (or a search form's ``/search?q=``), None if not one."""
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        params = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if not segments:
            return None
        session, rest = segments[0], segments[1:]
        try:
            page_num = int(params.get("page", "1"))
            options = json.loads(params.get("options", "{}"))
        except ValueError:
            return None
        if not isinstance(options, dict) or page_num < 1:
            return None
        opts = tuple(sorted((str(k), str(v)) for k, v in options.items()))
        query = " ".join(params.get("q", "").split()).lower()
        if not rest:
            return session, ShopState()
        if rest == ["search"] or rest == ["results"]:
            return (session, ShopState("results", query, 1 if rest == ["search"] else page_num)) if query else None
        if len(rest) >= 2 and rest[0] in ("item", "done") and rest[1] in self.by_asin:
            if rest[0] == "done" and len(rest) == 2:
                return session, ShopState("done", query, page_num, rest[1], opts)
            if rest[0] == "item" and len(rest) == 2:
                return session, ShopState("item", query, page_num, rest[1], opts)
            if rest[0] == "item" and len(rest) == 3 and rest[2] in SUB_PAGES:
                return session, ShopState(rest[2], query, page_num, rest[1], opts)
        return None

    def html(self, session: str, state: ShopState, instruction: str, reward: float | None = None) -> str:
        """The page of ``state`` as HTML: each segment's text is one text node (no other text in the body)."""
        segs = self.page(state, instruction, reward)
        out: list[str] = []
        i = 0
        while i < len(segs):
            seg = segs[i]
            text = html.escape(seg.text)
            if seg.kind == "button" and seg.role == "submit":  # the start page's search form
                out.append(f'<form method="get" action="/{quote(session)}/search" role="search">'
                           '<input id="search_input" type="text" name="q" placeholder="Search..." required>'
                           f'<button id="search_button" class="btn btn-success" type="submit">{text}</button></form>')
            elif seg.kind == "button":
                target = self.transition(state, f"click[{seg.text}]", instruction)
                cls = "btn purchase" if seg.role == "buy" else "btn btn-tab" if seg.role == "tab" else "btn"
                out.append(f'<a class="{cls}" href="{html.escape(self.path(session, target))}">{text}</a>')
            elif seg.kind == "product":
                target = ShopState("item", state.query, state.page_num, seg.text)
                out.append(f'<div class="result"><a class="product-link" '
                           f'href="{html.escape(self.path(session, target))}">{text}</a>')
                title, price = segs[i + 1], segs[i + 2]
                out.append(f'<h4 class="product-title">{html.escape(title.text)}</h4>'
                           f'<h5 class="product-price">{html.escape(price.text)}</h5></div>')
                i += 2
            elif seg.kind == "option":
                target = state.with_option(seg.target, seg.text)
                checked = " checked" if dict(state.options).get(seg.target) == seg.text else ""
                ident = f"radio_{i}"
                href = html.escape(self.path(session, target))
                out.append(f'<input type="radio" id="{ident}" name="{html.escape(seg.target)}" '
                           f'value="{text}" data-url="{href}"{checked} onclick="location.href=this.dataset.url">'
                           f'<label for="{ident}">{text}</label>')
            elif seg.role in ("heading", "logo", "option-name", "title"):
                tag = {"logo": "h2", "title": "h2", "option-name": "h4"}.get(seg.role, "h3")
                out.append(f'<{tag} class="{seg.role}">{text}</{tag}>')
            elif seg.role == "instruction" and seg.text == "Instruction:":
                out.append(f'<div id="instruction-text"><h4>{text}<br>')
            elif seg.role == "instruction":
                out.append(f"{text}</h4></div>")
            else:
                out.append(f'<p class="{seg.role or "text"}">{text}</p>')
            i += 1
        body = "\n".join(out)
        return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\"><title>WebShop</title>"
                f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


_CSS = ("body{font-family:sans-serif;max-width:900px;margin:2em auto}.btn{display:inline-block;margin:4px;"
        "padding:6px 12px;border:1px solid #357;border-radius:4px;text-decoration:none;color:#135}"
        ".purchase{background:#f90;color:#000}.result{border-top:1px solid #ccc;padding:6px}"
        "#instruction-text{background:#eef;padding:6px}label{margin-right:12px}")
