"""WebShop's products and goals: a seeded synthetic catalog, or the real WebShop JSON files.

A product is a dict in the schema WebShop's ``engine.load_products`` builds
(what its pages and its reward read): ``asin``, ``category``, ``query``,
``product_category`` (levels joined by " › "), ``name`` and ``Title``,
``Description``, ``BulletPoints``, ``Attributes``, ``options`` (lowercase
name -> lowercase values), ``pricing`` (one price or a [low, high] range),
``Price`` (the tag shown, "$12.99" or "$10.0 to $15.0"), ``Reviews``
(``{"title", "score", "body"}``) and ``Rating``.

A goal is a dict as WebShop's ``get_human_goals`` builds it: ``asin`` (the
product it was written for), ``category``, ``query``, ``name``,
``product_category``, ``instruction_text`` (ending in ", and price lower than
X.00 dollars" when a bound applies), ``attributes``, ``goal_options`` (a list
of option values), ``price_upper``, ``weight``.

**Synthetic** (:func:`synthetic_catalog`): 42 shopping queries over WebShop's
five categories (:mod:`.vocab`), 140 products each (5,880), built as
families of near-duplicates (one brand line and title, siblings that differ
in one attribute, their option values or their price), so that the
instruction's attributes, options and price bound all matter; one goal per
product, its instruction from templates in the style of WebShop's human
instructions. Prices and bounds follow WebShop: a range price is drawn
uniformly once, the bound is the larger of two of the four multiples of 10
above the price. Everything comes from ``random.Random(seed)``.

**Real files** (:func:`load_webshop_files`): ``items_shuffle_1000.json`` (or
the full ``items_shuffle.json``), ``items_ins_v2_1000.json`` (attributes) and
``items_human_ins.json`` (human instructions), read as WebShop's
``load_products`` and ``get_human_goals`` read them, with the range prices and
price bounds drawn from a seeded generator instead of the unseeded global one.

Goals are shuffled as WebShop shuffles them (``random.seed(233)``), and split
as the papers that train on WebShop split them: ``test`` = goals 0..499,
``valid`` = the next 1,000, ``train`` = the rest.

This module depends on nothing of ours but :mod:`.vocab` and :mod:`turngym.errors`.
"""

from __future__ import annotations

import json
import random
import re
import string
from decimal import Decimal
from pathlib import Path
from typing import Any

from turngym.envs.webshop import vocab
from turngym.errors import TaskError

#: goal.py's candidate price bounds.
PRICE_RANGE = [10.0 * i for i in range(1, 100)]
#: Goals shuffle with WebShop's seed, then split like the papers: test [0, 500), valid [500, 1500), train the rest.
GOAL_SHUFFLE_SEED = 233
SPLIT_BOUNDS = {"test": (0, 500), "valid": (500, 1500)}
PRODUCTS_PER_TYPE = 140


# ---- prices and goals as WebShop draws them ----------------------------------------------------


def draw_price(pricing: list[float], rng: random.Random) -> float:
    """WebShop's ``generate_product_prices`` for one product: 100 without a price, the price, or uniform in a range."""
    if not pricing:
        return 100.0
    if len(pricing) == 1:
        return pricing[0]
    return rng.uniform(*pricing[:2])


def draw_price_upper(price: float, rng: random.Random) -> tuple[float, str]:
    """goal.py's bound: the larger of two of the four multiples of 10 above ``price`` (none above 980)."""
    candidates = [p for p in PRICE_RANGE if p > price][:4]
    if len(candidates) >= 2:
        _, upper = sorted(rng.sample(candidates, 2))
        return upper, f", and price lower than {upper:.2f} dollars"
    return 1000000, ""


def shuffle_goals(goals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """WebShop's ``random.seed(233); random.shuffle(goals)``, without touching the global generator."""
    goals = list(goals)
    random.Random(GOAL_SHUFFLE_SEED).shuffle(goals)
    return goals


def split_goals(n: int) -> dict[str, tuple[int, int]]:
    """Split name -> [start, end) over ``n`` shuffled goals."""
    out = {name: (min(lo, n), min(hi, n)) for name, (lo, hi) in SPLIT_BOUNDS.items()}
    out["train"] = (min(SPLIT_BOUNDS["valid"][1], n), n)
    return out


def index_text(product: dict[str, Any]) -> str:
    """The text WebShop's Lucene index holds for a product (search_engine/convert_product_file_format.py):
    Title, Description, the first bullet point and "name: v1, v2, and name: ..." of the options, lowercased."""
    option_text = ", and ".join(f"{name}: {', '.join(values)}" for name, values in product.get("options", {}).items())
    bullets = product.get("BulletPoints") or [""]
    return " ".join([product["Title"], product["Description"], bullets[0], option_text]).lower()


# ---- the synthetic catalog -----------------------------------------------------------------------


def _brand_names(rng: random.Random, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = (rng.choice(vocab.BRAND_PARTS_A) + rng.choice(vocab.BRAND_PARTS_B)).capitalize()
        if name not in names:
            names.append(name)
    return names


def _asin(rng: random.Random, used: set[str]) -> str:
    alphabet = string.ascii_uppercase + string.digits
    while True:
        asin = "B0" + "".join(rng.choice(alphabet) for _ in range(8))
        if asin not in used:
            used.add(asin)
            return asin


def _title_case(phrase: str) -> str:
    return " ".join(w if any(c.isdigit() for c in w) else w[:1].upper() + w[1:] for w in phrase.split())


def _reviews(rng: random.Random) -> list[dict[str, Any]]:
    reviews = []
    for _ in range(rng.choice([0, 1, 2, 2, 3, 3, 4])):
        score = rng.choice([5, 5, 5, 4, 4, 3, 2, 1])
        reviews.append({"title": rng.choice(vocab.REVIEW_TITLES[score]), "score": score,
                        "body": rng.choice(vocab.REVIEW_BODIES[score])})
    return reviews


_DESCRIPTION_ENDINGS = ["Backed by a 30 day return policy.", "Ships in recyclable packaging.",
                        "A customer favorite since 2019.", "Designed and tested in California."]


def _product(rng: random.Random, kind: dict[str, Any], brand: str, line: str, noun: str, attrs: list[str],
             listed: list[str], options: dict[str, list[str]], pricing: list[float], asin: str) -> dict[str, Any]:
    """One product: the title names the brand, the noun and one or two attributes; every attribute is in the
    text (title, bullets or description); ``listed`` are the ones in its Attributes list (WebShop's mined ones)."""
    shown = attrs[: rng.choice([1, 2])]
    title = f"{brand} {line} {' '.join(_title_case(a) for a in shown)} {noun}"
    extra = rng.sample(attrs[len(shown):], min(len(attrs) - len(shown), rng.choice([0, 1])))
    if extra:
        title += f", {_title_case(extra[0])}"
    if "size" in options and len(options["size"]) == 1:
        title += f", {options['size'][0]}"
    use = rng.choice(kind["uses"])
    bullets = [f"{_title_case(a)}: made to be {a} for {use}." if rng.random() < 0.5 else
               f"{a.upper()} - our {noun.lower()} is {a}, great for {use}." for a in attrs]
    rng.shuffle(bullets)
    description = (f"The {brand} {line} {noun.lower()} is designed for {use}. "
                   f"It is {', '.join(attrs[:-1]) + ' and ' + attrs[-1] if len(attrs) > 1 else attrs[0]}. "
                   f"{rng.choice(_DESCRIPTION_ENDINGS)}")
    reviews = _reviews(rng)
    rating = round(sum(r["score"] for r in reviews) / len(reviews), 1) if reviews else "N.A."
    price_tag = f"${pricing[0]}" if len(pricing) == 1 else f"${pricing[0]} to ${pricing[1]}"
    return {"asin": asin, "category": kind["category"], "query": kind["query"],
            "product_category": kind["path"], "name": title, "Title": title, "Description": description,
            "BulletPoints": bullets, "Attributes": listed, "options": options, "pricing": pricing,
            "Price": price_tag, "Reviews": reviews, "Rating": rating}


def _option_phrase(name: str, value: str, rng: random.Random) -> str:
    if name == "color":
        return rng.choice([f"in {value} color", f"in {value}", f"{value} colored", f"color {value}"])
    if name == "size":
        return rng.choice([f"in size {value}", f"{value} size", f"size {value}", f"in {value}"])
    return rng.choice([f"with {value} {name}", f"in {value} {name}", f"{name} {value}"])


_OPENERS = ["i am looking for", "i need", "i want", "i would like", "find me", "i'm looking for", "i want to buy",
            "get me", "i am shopping for", "search for"]


def _instruction(rng: random.Random, noun: str, attrs: list[str], options: list[tuple[str, str]]) -> str:
    """A WebShop-style human instruction (lowercase, no final period; the price part is added by the caller)."""
    noun = noun.lower()
    first, rest = attrs[0], attrs[1:]
    article = "" if noun.endswith("s") else "an " if first[0] in "aeiou" else "a "
    text = f"{rng.choice(_OPENERS)} {article}{first} {noun}"
    if rest:
        joined = rest[0] if len(rest) == 1 else ", ".join(rest[:-1]) + " and " + rest[-1]
        text += rng.choice([f" that is {joined}", f" with {joined}", f", {joined}"])
    if options:
        phrases = [_option_phrase(n, v, rng) for n, v in options]
        text += (" " if rng.random() < 0.5 else ", ") + " and ".join(phrases)
    return text


def synthetic_catalog(seed: int = 0, per_type: int = PRODUCTS_PER_TYPE) -> tuple[list[dict], list[dict], dict]:
    """(products, shuffled goals, asin -> price) of the synthetic catalog for ``seed``."""
    rng = random.Random(seed)
    used: set[str] = set()
    products: list[dict[str, Any]] = []
    targets: list[tuple[dict[str, Any], str, list[str]]] = []  # (product, its noun, every attribute it has)
    for kind in vocab.PRODUCT_TYPES:
        brands = _brand_names(rng, 10)
        made = 0
        while made < per_type:
            brand, line = rng.choice(brands), rng.choice(vocab.LINES)
            noun = rng.choice(kind["nouns"])
            base_attrs = rng.sample(kind["attrs"], rng.choice([3, 3, 4]))
            base_opts = {name: sorted(rng.sample(pool, min(len(pool), rng.choice([2, 3, 4, 5]))), key=pool.index)
                         for name, pool in kind["options"].items()}
            low, high = kind["price"]
            base_price = round(rng.uniform(low, high), 2)
            for sibling in range(rng.choice([3, 4, 5])):
                attrs, opts, price = list(base_attrs), {k: list(v) for k, v in base_opts.items()}, base_price
                change = "none" if sibling == 0 else rng.choice(["attr", "options", "price", "noun"])
                if change == "attr":  # one attribute swapped for another of the pool
                    spare = [a for a in kind["attrs"] if a not in attrs]
                    attrs[rng.randrange(len(attrs))] = rng.choice(spare)
                elif change == "options":  # another set of option values
                    opts = {name: sorted(rng.sample(pool, min(len(pool), rng.choice([2, 3]))), key=pool.index)
                            for name, pool in kind["options"].items()}
                elif change == "price":
                    price = round(base_price * rng.uniform(1.4, 2.2), 2)
                item_noun = rng.choice(kind["nouns"]) if change == "noun" else noun
                listed = [a for a in attrs if rng.random() < 0.8]  # some attributes only in the text
                listed = [a.replace(" ", "-") if rng.random() < 0.15 else a for a in listed]  # fuzzy-equal spelling
                pricing = [price] if rng.random() < 0.85 else [price, round(price * rng.uniform(1.05, 1.3), 2)]
                product = _product(rng, kind, brand, line, item_noun, attrs, listed or ["DUMMY_ATTR"], opts,
                                   pricing, _asin(rng, used))
                products.append(product)
                targets.append((product, item_noun, attrs))
                made += 1
                if made >= per_type:
                    break
    rng.shuffle(products)
    prices = {p["asin"]: draw_price(p["pricing"], rng) for p in products}
    goals = []
    for product, noun, true_attrs in targets:
        wanted = rng.sample(true_attrs, min(len(true_attrs), rng.choice([1, 2, 2, 3])))
        options = [(name, rng.choice(values)) for name, values in product["options"].items()]
        upper, price_text = draw_price_upper(prices[product["asin"]], rng)
        goals.append({"asin": product["asin"], "category": product["category"], "query": product["query"],
                      "name": product["name"], "product_category": product["product_category"],
                      "instruction_text": _instruction(rng, noun, wanted, options) + price_text,
                      "attributes": wanted, "price_upper": upper, "goal_options": [v for _, v in options],
                      "weight": 1})
    return products, shuffle_goals(goals), prices


# ---- the real WebShop files ----------------------------------------------------------------------


def _read_json(path: str | Path, what: str) -> Any:
    path = Path(path).expanduser()
    if not path.is_file():
        raise TaskError(f"WebShop {what} file {str(path)!r} does not exist (WebShop's data/ folder has it)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TaskError(f"WebShop {what} file {str(path)!r} is not valid JSON: {exc}") from None


def parse_pricing(pricing: Any) -> tuple[list[float], str]:
    """WebShop's price parsing: "$12.99" -> ([12.99], "$12.99"); "$10.00$15.00" -> a range; none -> $100.0."""
    if not pricing:
        return [100.0], "$100.0"
    values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in str(pricing).split("$")[1:]]
    if not values:
        return [100.0], "$100.0"
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def load_webshop_files(items_file: str | Path, attributes_file: str | Path, human_goals_file: str | Path | None,
                       num_products: int | None = None, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    """(products, shuffled goals, asin -> price) from WebShop's data files, as its ``load_products`` reads them.

    ``human_goals_file`` None uses the synthetic instructions of the attributes
    file (WebShop's ``human_goals=False``, one goal per product without its
    option combinations).
    """
    raw = _read_json(items_file, "items")
    if not isinstance(raw, list):
        raise TaskError(f"WebShop items file {str(items_file)!r} must hold a JSON list of products")
    attributes = _read_json(attributes_file, "attributes")
    human = _read_json(human_goals_file, "human instructions") if human_goals_file else None
    if num_products is not None:
        raw = raw[:num_products]
    products, seen = [], set()
    for p in raw:
        asin = p.get("asin")
        if not isinstance(asin, str) or asin == "nan" or len(asin) > 10 or asin in seen:
            continue
        seen.add(asin)
        pricing, price_tag = parse_pricing(p.get("pricing"))
        options: dict[str, list[str]] = {}
        for name, contents in (p.get("customization_options") or {}).items():
            if contents is None:
                continue
            options[name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
        small = p.get("small_description")
        product = {"asin": asin, "category": p["category"], "query": p["query"].lower().strip(),
                   "product_category": p["product_category"], "name": p["name"], "Title": p["name"],
                   "Description": p.get("full_description") or "",
                   "BulletPoints": small if isinstance(small, list) else [small or ""],
                   "Attributes": attributes.get(asin, {}).get("attributes") or ["DUMMY_ATTR"],
                   "options": options, "pricing": pricing, "Price": price_tag, "Reviews": [], "Rating": "N.A."}
        if human is not None and asin in human:
            product["instructions"] = human[asin]
        elif human is None:
            product["instruction_text"] = attributes.get(asin, {}).get("instruction")
            product["instruction_attributes"] = attributes.get(asin, {}).get("instruction_attributes")
        products.append(product)
    rng = random.Random(seed)
    prices = {p["asin"]: draw_price(p["pricing"], rng) for p in products}
    goals = []
    for p in products:
        base = {"asin": p["asin"], "category": p["category"], "query": p["query"], "name": p["name"],
                "product_category": p["product_category"], "weight": 1}
        entries = p.pop("instructions", None)
        if entries is None:
            text, attrs = p.pop("instruction_text", None), p.pop("instruction_attributes", None)
            entries = [] if not text or not attrs else [{"instruction": text, "instruction_attributes": attrs,
                                                         "instruction_options": []}]
        for entry in entries:
            attrs = entry.get("instruction_attributes") or []
            if not attrs:
                continue  # WebShop skips goals without attributes
            upper, price_text = draw_price_upper(prices[p["asin"]], rng)
            goals.append({**base, "instruction_text": entry["instruction"].strip(".") + price_text,
                          "attributes": list(attrs), "price_upper": upper,
                          "goal_options": list(entry.get("instruction_options") or [])})
    if not goals:
        raise TaskError(f"no goals with attributes in {str(human_goals_file or attributes_file)!r} for the products "
                        f"of {str(items_file)!r}")
    return products, shuffle_goals(goals), prices
