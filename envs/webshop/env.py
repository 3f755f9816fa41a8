"""WebShop (Yao et al., 2022) as a turngym text env: find and buy the product an instruction asks for.

This module depends on nothing of ours but :mod:`turngym.envs.core`,
:mod:`turngym.errors` and this package; the browser mode's Playwright and
uvicorn are imported only when that mode starts.
"""

from __future__ import annotations

import threading
from typing import Any

from turngym.envs.core import TextEnv, Transition, stable_digest
from turngym.envs.webshop import reward as reward_lib
from turngym.envs.webshop.catalog import load_webshop_files, split_goals, synthetic_catalog
from turngym.envs.webshop.site import SUB_PAGES, Shop, ShopState
from turngym.errors import TaskError

#: Fields of a goal (WebShop's ``get_human_goals`` dict) a custom task may give.
TASK_FIELDS = ("asin", "category", "query", "name", "product_category", "instruction_text", "attributes",
               "price_upper", "goal_options", "weight", "task_id")
MODES = ("text", "browser")

_CATALOGS: dict[tuple, tuple[Shop, list[dict[str, Any]]]] = {}
_CATALOGS_LOCK = threading.Lock()


def load_catalog(source: tuple) -> tuple[Shop, list[dict[str, Any]]]:
    """The shop (products, prices, search index) and shuffled goals of a catalog source, built once per process.

    ``source`` is ``("synthetic", seed)`` or ``("files", items, attributes, human_goals, num_products, seed)``.
    """
    with _CATALOGS_LOCK:
        if source not in _CATALOGS:
            if source[0] == "synthetic":
                products, goals, prices = synthetic_catalog(seed=source[1])
            else:
                products, goals, prices = load_webshop_files(*source[1:])
            _CATALOGS[source] = (Shop(products, prices), goals)
        return _CATALOGS[source]


class WebShopEnv(TextEnv):
    """WebShop: search a shop, open products, pick options and buy what the instruction asks for (WebShop / GiGPO).

    **Observations.** WebShop's text mode (``observation_mode="text"``): the
    visible texts of the current page joined with ``" [SEP] "``. At reset,
    ``"WebShop [SEP] Instruction: [SEP] <instruction> [SEP] Search"``;
    results pages ``"Instruction: [SEP] <instruction> [SEP] Back to Search
    [SEP] Page 1 (Total results: 50) [SEP] Next > [SEP] <ASIN> [SEP] <Title>
    [SEP] <Price> [SEP] ..."`` (10 products a page of the top 50); product
    pages list the option groups and values, Title, ``Price:``, ``Rating:``
    and the buttons Description, Features, Reviews, Buy Now; sub-pages show
    the description, the bullet points or the reviews; after Buy Now, ``"Thank
    you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP]
    <reward>"``. An invalid action changes nothing and shows the same page
    again (WebShop: "If action not valid, perform nothing").

    **Actions.** ``search[<keywords>]`` on the start page (the only page with
    a search box) and ``click[<text>]`` of a clickable on the page: a
    product's ASIN, an option value, ``Description``, ``Features``,
    ``Reviews``, ``Buy Now``, ``< Prev``, ``Next >``, ``Back to Search``.
    Names and arguments are case-insensitive (WebShop lowercases them).

    **Rewards.** Only on Buy Now: WebShop's score of the purchase against the
    goal (:mod:`turngym.envs.webshop.reward`: attributes, options and price
    matched over their count plus one, times the type factor r_type in {1,
    0.5, 0.1, 0}); 0 for every other step (plus ``invalid_action_penalty`` on
    an invalid action).

    **Termination.** On Buy Now. Truncation after ``max_episode_steps``
    actions (15, verl-agent's WebShop budget) from Gymnasium's ``TimeLimit``.

    **Info.** ``task_id``, ``instruction``, ``action_valid``, ``won`` (bought
    with reward 1.0, WebShop's success), ``state_key`` (digest of page, query,
    results page, product and chosen options), ``admissible_actions``
    (``search[<your query>]`` on the start page, else ``click[...]`` of every
    clickable), ``progress`` (0.2 when the goal's product is among the
    current query's results, 0.3 when on the page shown, 0.5 + 0.4 x the
    share of goal options chosen when its page is open, the reward once
    bought; never shown to agents), ``page``, ``reward_info`` (the reward's
    parts, after Buy Now).

    **Tasks.** ``catalog="synthetic"`` (default): a seeded catalog of 5,880
    products over 42 shopping queries (:mod:`.catalog`), one goal each:
    ``test`` (500), ``valid`` (1,000), ``train`` (4,380). The real WebShop
    files (``items_file``, ``attributes_file``, ``human_goals_file``) give
    WebShop's own products and human goals with the same split rule. A custom
    task: ``reset(options={"task": {"asin": ..., "instruction_text": ...,
    "attributes": [...], "goal_options": [...], "price_upper": ...}})``.

    Args:
        split: ``"train"`` (default), ``"valid"`` or ``"test"``.
        mode: ``"text"`` (default) or ``"browser"``: the same site served as
            HTML on 127.0.0.1 and driven in headless Chromium with Playwright
            (the ``webshop-browser`` extra and Debian's ``chromium``);
            observations are read from the rendered page.
        catalog_seed: seed of the synthetic catalog.
        items_file, attributes_file, human_goals_file: WebShop's
            ``items_shuffle_1000.json``, ``items_ins_v2_1000.json`` and
            ``items_human_ins.json`` (None: the attributes file's synthetic
            instructions); given ``items_file``, the catalog is those files.
        num_products: read only the first products of ``items_file``.
        nouns: title noun tagger of r_type: ``"auto"`` (spaCy if its small
            English model is installed, else the heuristic), ``"spacy"``, ``"heuristic"``.
        browser_options: keyword arguments of the browser mode
            (:class:`~turngym.envs.webshop.browser.BrowserSite`: ``executable_path``, ``headless``, ``timeout_s``).
        invalid_action_penalty: reward added on an invalid action (default 0).
        render_mode: ``None``, ``"ansi"`` or ``"human"``.

    Version History:
        * v0: initial version.
    """

    default_split = "train"

    def __init__(self, split: str | None = None, mode: str = "text", catalog_seed: int = 0,
                 items_file: str | None = None, attributes_file: str | None = None,
                 human_goals_file: str | None = None, num_products: int | None = None, nouns: str = "auto",
                 browser_options: dict[str, Any] | None = None, invalid_action_penalty: float = 0.0,
                 render_mode: str | None = None):
        if mode not in MODES:
            raise TaskError(f"unknown WebShop mode {mode!r}; use one of {MODES}")
        if nouns not in reward_lib.NOUN_TAGGERS:  # resolved (and spaCy loaded) at the first purchase
            raise TaskError(f"unknown noun tagger {nouns!r}; use one of {reward_lib.NOUN_TAGGERS}")
        if items_file is not None:
            if attributes_file is None:
                raise TaskError("WebShop's items_file needs its attributes_file (items_ins_v2_1000.json)")
            self.source: tuple = ("files", str(items_file), str(attributes_file),
                                  None if human_goals_file is None else str(human_goals_file), num_products,
                                  int(catalog_seed))
        else:
            self.source = ("synthetic", int(catalog_seed))
        self.shop, self.goals = load_catalog(self.source)
        self._splits = split_goals(len(self.goals))
        self.mode, self.nouns = mode, nouns
        self.browser_options = dict(browser_options or {})
        self._browser: Any = None
        self._state = ShopState()
        self._reward_cache: tuple[Any, tuple[float, dict[str, Any]]] | None = None
        super().__init__(split=split, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)

    # ---- tasks --------------------------------------------------------------------------
    def splits(self) -> dict[str, int]:
        return {name: hi - lo for name, (lo, hi) in self._splits.items()}

    def load_task(self, split: str, index: int) -> dict[str, Any]:
        lo, _ = self._splits[split]
        goal = self.goals[lo + index]
        return {**goal, "attributes": list(goal["attributes"]), "goal_options": list(goal["goal_options"])}

    def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(task, dict):
            raise TaskError(f"a WebShop task must be a goal dict, got {type(task).__name__}")
        unknown = sorted(set(task) - set(TASK_FIELDS))
        if unknown:
            raise TaskError(f"unknown WebShop task field(s) {unknown}; known: {', '.join(TASK_FIELDS)}")
        out = dict(task)
        asin = out.get("asin")
        if asin is not None:
            if asin not in self.shop.by_asin:
                raise TaskError(f"WebShop task field 'asin' names {asin!r}, which is not in this catalog")
            product = self.shop.by_asin[asin]
            for key in ("category", "query", "name", "product_category"):
                out.setdefault(key, product[key])
        for key in ("query", "name", "product_category", "instruction_text"):
            if not isinstance(out.get(key), str) or (key == "instruction_text" and not out[key].strip()):
                raise TaskError(f"WebShop task field {key!r} must be a string (give 'asin' to take it from the product)")
        attrs = out.get("attributes")
        if not isinstance(attrs, list) or not attrs or not all(isinstance(a, str) for a in attrs):
            raise TaskError("WebShop task field 'attributes' must be a non-empty list of strings")
        options = out.get("goal_options", [])
        if isinstance(options, dict):
            options = list(options.values())
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise TaskError("WebShop task field 'goal_options' must be a list of option values (strings)")
        out["goal_options"] = options
        price_upper = out.get("price_upper", 1000000)
        if isinstance(price_upper, bool) or not isinstance(price_upper, (int, float)) or price_upper <= 0:
            raise TaskError("WebShop task field 'price_upper' must be a positive number")
        out["price_upper"] = float(price_upper)
        out.setdefault("category", "")
        out.setdefault("weight", 1)
        return out

    # ---- game ---------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        # The goal text of the current task; before the first reset, what every WebShop task asks.
        if self.task is None:
            return "Find and buy the product that matches the instruction, with its options, under the price."
        return self.task["instruction_text"]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
        _obs, info = super().reset(seed=seed, options=options)
        # WebShop's first page already shows the instruction: the observation is the page alone.
        return self._finish_observation(self._page_text()), info

    def _start(self, task: dict[str, Any]) -> str:
        self._state = ShopState()
        self._reward_cache = None
        if self.mode == "browser":
            self._browser_site().start_episode(task, self._state, self.nouns)
        return ""

    def _apply(self, action: str) -> Transition:
        new = self.shop.transition(self._state, action, self.instruction)
        if new is None:
            return Transition(self._page_text(), valid=False)
        self._state = new
        if self.mode == "browser":
            self._browser_site().perform(action, new)
        if new.page == "done":
            return Transition(self._page_text(), valid=True, reward=self.purchase_reward()[0], terminated=True)
        return Transition(self._page_text(), valid=True)

    def _page_text(self) -> str:
        if self.mode == "browser":
            return self._browser_site().observation()
        reward = self.purchase_reward()[0] if self._state.page == "done" else None
        return self.shop.observation(self.shop.page(self._state, self.instruction, reward))

    def purchase_reward(self) -> tuple[float, dict[str, Any]]:
        """WebShop's reward (and its parts) for buying the current product with the chosen options."""
        key = (self.task_id, self._state)
        if self._reward_cache is None or self._reward_cache[0] != key:
            product = self.shop.by_asin[self._state.asin]
            value = reward_lib.get_reward(product, self.task, self.shop.prices[product["asin"]],
                                          dict(self._state.options), nouns=self.nouns)
            self._reward_cache = (key, value)
        return self._reward_cache[1]

    @property
    def won(self) -> bool:
        return self._state.page == "done" and self.purchase_reward()[0] >= 1.0

    def state_key(self) -> str:
        return stable_digest(self._state.to_json())

    def _get_state(self) -> tuple:
        return tuple(self._state.to_json()[:4]) + (tuple(self._state.options),)

    def _set_state(self, state: Any) -> None:
        page, query, page_num, asin, options = state
        self._state = ShopState.from_json([page, query, page_num, asin, [list(o) for o in options]])
        if self.mode == "browser":
            self._browser_site().goto(self._state)

    def admissible_actions(self) -> list[str]:
        return self.shop.admissible_actions(self._state, self.instruction)

    # ---- ground truth, oracle ------------------------------------------------------------------
    def _option_plan(self) -> list[tuple[str, str]]:
        """(group, value) of the target product to choose for each goal option (best fuzzy match; one per group)."""
        product = self.shop.by_asin[self.task["asin"]]
        plan: dict[str, str] = {}
        for wanted in reward_lib.goal_option_values(self.task):
            best: tuple[int, str, str] | None = None
            for name, values in product["options"].items():
                for value in values:
                    score = 101 if value == wanted else reward_lib.token_set_ratio(
                        reward_lib.normalize_color(value), reward_lib.normalize_color(wanted))
                    if score > reward_lib.FUZZY_THRESHOLD and (best is None or score > best[0]):
                        best = (score, name, value)
            if best is not None and best[1] not in plan:
                plan[best[1]] = best[2]
        return list(plan.items())

    def _oracle_query(self) -> str:
        """The goal's query when its product is in that query's top 50, else the product's title."""
        target = self.task["asin"]
        if any(p["asin"] == target for p in self.shop.results(self.task["query"])):
            return self.task["query"]
        return " ".join(self.shop.by_asin[target]["Title"].lower().split())

    def progress(self) -> float:
        state, target = self._state, self.task.get("asin")
        if state.page == "done":
            return 1.0 if self.won else float(self.purchase_reward()[0])
        if target is None:
            return 0.0
        if state.asin == target and state.page != "results":
            plan = self._option_plan()
            chosen = dict(state.options)
            done = sum(1 for name, value in plan if chosen.get(name) == value)
            return 0.5 + 0.4 * (done / len(plan) if plan else 1.0)
        if state.page == "results":
            asins = [p["asin"] for p in self.shop.results(state.query)]
            if target in asins:
                on_page = (asins.index(target) // 10) + 1 == state.page_num
                return 0.3 if on_page else 0.2
        return 0.0

    def oracle_action(self) -> str:
        """Search the goal's query (or the product's title), page to the product, open it, choose the goal's
        options, buy. Without a target product (a custom task), search the instruction and buy the first hit."""
        state, target = self._state, self.task.get("asin")
        if state.page == "search":
            return f"search[{self._oracle_query() if target else self.instruction}]"
        if state.page == "done":
            return "click[Buy Now]"
        if target is None:
            if state.page == "results":
                shown = self.shop.page_products(state.query, state.page_num)
                return f"click[{shown[0]['asin']}]" if shown else "click[Back to Search]"
            return "click[Buy Now]" if state.page == "item" else "click[< Prev]"
        if state.page == "results":
            asins = [p["asin"] for p in self.shop.results(state.query)]
            if target not in asins:
                return "click[Back to Search]"
            page = asins.index(target) // 10 + 1
            if page == state.page_num:
                return f"click[{target}]"
            return "click[Next >]" if page > state.page_num else "click[< Prev]"
        if state.asin != target:
            return "click[< Prev]" if state.page == "item" else "click[Back to Search]"
        if state.page in SUB_PAGES:
            return "click[< Prev]"
        chosen = dict(state.options)
        for name, value in self._option_plan():
            if chosen.get(name) != value:
                return f"click[{value}]"
        return "click[Buy Now]"

    def illegal_actions(self) -> list[str]:
        page = self._state.page
        out = ["search[]", "search[   ]", "click[]", "click[search]", "click[Attributes]", "click[B000000000]",
               "buy[now]", "click Buy Now", "click[[Buy Now]"]
        if page != "search":
            out.append("search[wireless earbuds]")
        if page != "item":
            out += ["click[Buy Now]", "click[Description]"]
        if page != "results":
            out.append("click[Next >]")
        if page == "search" or (page == "results" and self._state.page_num == 1):
            out.append("click[< Prev]")
        return out

    def _info(self, action_valid: bool) -> dict[str, Any]:
        info = super()._info(action_valid)
        info["page"] = self._state.page
        if self._state.page == "done":
            info["reward_info"] = dict(self.purchase_reward()[1])
        return info

    # ---- browser mode ----------------------------------------------------------------------------
    def _browser_site(self) -> Any:
        if self._browser is None:
            from turngym.envs.webshop.browser import BrowserSite

            self._browser = BrowserSite(self.shop, **self.browser_options)
        return self._browser

    @property
    def url(self) -> str | None:
        """The page's URL in browser mode (open it in your own browser to watch), else None."""
        return self._browser.current_url() if self._browser is not None else None

    def close(self) -> None:
        if self._browser is not None:
            self._browser.close()
            self._browser = None
        super().close()
