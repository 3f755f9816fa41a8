"""WebShop: the reward on worked cases (every branch of goal.py), page formats, clicks, the catalog, the oracle,
the loader of WebShop's own files. (The registry-wide checker covers the env contract.)"""

from __future__ import annotations

import json
import re

import pytest

pytest.importorskip("rapidfuzz")
pytest.importorskip("bm25s")

from turngym.envs.webshop import reward as R
from turngym.envs.webshop.catalog import draw_price_upper, parse_pricing, synthetic_catalog
from turngym.envs.webshop.env import WebShopEnv
from turngym.envs.webshop.search import s_stem
from turngym.errors import TaskError

TAGGERS = ["heuristic", pytest.param("spacy", marks=pytest.mark.skipif(
    not R.spacy_available(), reason="not applicable here: spaCy's English model is not installed"))]


@pytest.fixture(scope="module")
def env():
    return WebShopEnv(nouns="heuristic")


def _product(**kw):
    base = {"query": "shampoo", "product_category": "Beauty › Hair Care › Shampoos", "name": "Acme Shampoo",
            "Title": "Acme Shampoo", "Attributes": [], "BulletPoints": [], "Description": ""}
    return {**base, **kw}


def _goal(**kw):
    base = {"query": "shampoo", "product_category": "Beauty › Hair Care › Shampoos", "name": "Acme Shampoo",
            "attributes": ["sulfate free"], "goal_options": [], "price_upper": 40.0}
    return {**base, **kw}


# ---- the reward, branch by branch -------------------------------------------------------------


def test_fuzzy_score_is_thefuzz_token_set_ratio():
    assert R.token_set_ratio("sulfate-free", "Sulfate Free") == 100  # processed: punctuation, case
    assert R.token_set_ratio("free", "sulfate free") == 100  # a token subset scores 100
    assert R.token_set_ratio("essential oil", "essential oils") == 96
    assert R.token_set_ratio("8 fl oz", "12 fl oz") == 83  # under the bar: another size
    assert R.token_set_ratio("pack of 1", "pack of 12") == 95  # over it, as in WebShop
    assert R.token_set_ratio("café", "caf") == 100  # thefuzz's force_ascii drops characters 128-255


def test_attribute_fuzzy_match():
    goal = _goal(attributes=["tea tree", "essential oils", "natural ingredients"])
    purchased = _product(Attributes=["tea tree", "essential oil", "natural ingredients"])
    assert R.get_attribute_reward(purchased, goal) == (1.0, 3)


def test_attribute_text_fallback_title_bullets_description():
    goal = _goal(attributes=["tea tree", "essential oils", "natural ingredients"])
    purchased = _product(Attributes=[], Title="Acme Tea Tree Shampoo",
                         BulletPoints=["This shampoo has essential oils"],
                         Description="Made with natural ingredients")
    assert R.get_attribute_reward(purchased, goal) == (1.0, 3)
    purchased = _product(Attributes=["tea bag"], Title="English tea", BulletPoints=["Soothing aroma"],
                         Description="Best tea for breakfast")
    assert R.get_attribute_reward(purchased, goal) == (0.0, 0)


def test_option_match_after_colour_normalization():
    assert R.normalize_color("navy blue") == "blue" and R.normalize_color("dark brown") == "brown"
    assert R.normalize_color("large") == "large"
    assert R.token_set_ratio("chocolate brown", "dark brown") <= R.FUZZY_THRESHOLD  # only normalization matches it
    assert R.get_option_reward(["chocolate brown", "x-large"], ["dark brown", "x-large"]) == (1.0, 2)
    assert R.get_option_reward(["black", "x-large"], ["navy blue", "x-large"]) == (0.5, 1)
    assert R.get_option_reward(["8 fl oz"], ["12 fl oz"]) == (0.0, 0)
    assert R.get_option_reward(["a", "b"], []) == (None, 0)


def test_price_and_the_whole_formula():
    goal = _goal(attributes=["sulfate free", "tea tree"], goal_options=["lavender", "16 fl oz"], price_upper=30.0)
    bought = _product(Attributes=["sulfate free"])  # tea tree missing
    # attributes 1/2, options 1/2 (lavender chosen, 8 fl oz instead of 16), price ok -> 3/5, r_type 1
    total, info = R.get_reward(bought, goal, 20.0, {"scent": "lavender", "size": "8 fl oz"}, nouns="heuristic")
    assert total == pytest.approx(3 / 5) and info["r_att"] == 0.5 and info["r_option"] == 0.5
    assert info["r_price"] is True and info["w_price"] == pytest.approx(1 / 5)
    total, info = R.get_reward(bought, goal, 30.01, {"scent": "lavender", "size": "8 fl oz"}, nouns="heuristic")
    assert total == pytest.approx(2 / 5) and info["r_price"] is False
    total, _ = R.get_reward(_product(Attributes=["sulfate free", "tea tree"]), goal, 30.0,
                            {"scent": "lavender", "size": "16 fl oz"}, nouns="heuristic")
    assert total == 1.0


@pytest.mark.parametrize("nouns", TAGGERS)
def test_r_type_levels(nouns):
    goal = _goal(query="shampoo", product_category="Beauty › Hair Care › Shampoos",
                 name="Alpha Bravo Charlie Delta Echo Foxtrot Golf Hotel India Juliet")
    other = {"query": "lamp", "product_category": "Home › Lighting › Lamps"}
    # query match -> 1.0 (with some shared title noun)
    r = R.get_type_reward(_product(name="Alpha Lamp"), goal, nouns)
    assert r["query_match"] and r["r_type"] == 1.0
    # category match (two shared levels, in any order) -> 1.0
    r = R.get_type_reward(_product(query="lamp", product_category="Hair Care › Beauty › Oils", name="Alpha Lamp"),
                          goal, nouns)
    assert not r["query_match"] and r["category_match"] and r["r_type"] == 1.0
    # neither, one of 10 goal nouns -> title score 0.1 -> 0.5
    r = R.get_type_reward(_product(**other, name="Alpha Lamp"), goal, nouns)
    assert r["title_score"] == pytest.approx(0.1) and r["r_type"] == 0.5
    # neither, three of 10 -> title score 0.3 > 0.2 -> 1.0
    r = R.get_type_reward(_product(**other, name="Alpha Bravo Charlie Lamp"), goal, nouns)
    assert r["title_score"] == pytest.approx(0.3) and r["r_type"] == 1.0
    # one of 11 -> under 0.1 -> 0.1, even with the query matching
    goal11 = {**goal, "name": goal["name"] + " Kilo"}
    r = R.get_type_reward(_product(name="Alpha Lamp"), goal11, nouns)
    assert r["title_score"] == pytest.approx(1 / 11) and r["r_type"] == 0.1
    # no shared noun -> 0.0
    r = R.get_type_reward(_product(name="Zulu Lamp"), goal, nouns)
    assert r["title_score"] == 0.0 and r["r_type"] == 0.0
    # a goal title without nouns counts as 0.2: 1.0 with a query match, else 0.5
    goal_nn = {**goal, "name": "for the 2 and 12"}
    assert R.get_type_reward(_product(name="Zulu Lamp"), goal_nn, nouns)["r_type"] == 1.0
    assert R.get_type_reward(_product(**other, name="Zulu Lamp"), goal_nn, nouns)["r_type"] == 0.5


def test_heuristic_nouns_drop_function_words_and_numbers():
    assert R.heuristic_nouns("Vellora Botanics Sulfate Free Shampoo for Dry Hair - Tea Tree, 16 fl oz") == [
        "vellora", "botanics", "sulfate", "free", "shampoo", "dry", "hair", "tea", "tree", "fl", "oz"]
    assert R.heuristic_nouns("Mens D.O.N. Issue 2") == ["mens", "d.o.n", "issue"]
    with pytest.raises(TaskError, match="noun tagger"):
        R.resolve_tagger("nltk")


def test_purchase_reward_matches_goal_py(env):
    """Buying a near-duplicate from the env scores what the reward function says (and less than 1)."""
    _, info = env.reset(options={"task_id": "test/0"})
    task = env.task
    env.step(f"search[{env._oracle_query()}]")
    others = [p for p in env.shop.results(env._state.query)[:10] if p["asin"] != task["asin"]]
    env.step(f"click[{others[0]['asin']}]")
    obs, reward, term, _, info = env.step("click[Buy Now]")
    expected, parts = R.get_reward(others[0], task, env.shop.prices[others[0]["asin"]], {}, nouns="heuristic")
    assert term and reward == expected < 1.0 and not info["won"]
    assert obs == f"Thank you for shopping with us! [SEP] Your score (min 0.0, max 1.0) [SEP] {expected}"
    assert info["reward_info"] == parts and info["progress"] == expected


# ---- pages and clicks ----------------------------------------------------------------------------


def test_page_formats(env):
    obs, info = env.reset(options={"task_id": "test/3"})
    instr = info["instruction"]
    assert obs == f"WebShop [SEP] Instruction: [SEP] {instr} [SEP] Search"
    assert info["admissible_actions"] == ["search[<your query>]"] and info["page"] == "search"
    obs, *_, info = env.step("search[Shampoo  Sulfate FREE]")
    product = r"B0[A-Z0-9]{8} \[SEP\] [^[]+ \[SEP\] \$[\d.]+( to \$[\d.]+)?"
    assert re.fullmatch(rf"Instruction: \[SEP\] {re.escape(instr)} \[SEP\] Back to Search \[SEP\] "
                        rf"Page 1 \(Total results: 50\) \[SEP\] Next > \[SEP\] {product}( \[SEP\] {product}){{9}}", obs)
    assert env._state.query == "shampoo sulfate free"
    obs, *_ = env.step("click[next >]")
    assert " [SEP] Page 2 (Total results: 50) [SEP] < Prev [SEP] Next > [SEP] " in obs
    asin = env.shop.page_products("shampoo sulfate free", 2)[0]["asin"]
    obs, *_, info = env.step(f"click[{asin.lower()}]")  # case-insensitive, as WebShop lowercases clicks
    p = env.shop.by_asin[asin]
    groups = " [SEP] ".join(f"{name} [SEP] " + " [SEP] ".join(values) for name, values in p["options"].items())
    assert obs == (f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] < Prev [SEP] {groups} [SEP] {p['Title']} "
                   f"[SEP] Price: {p['Price']} [SEP] Rating: {p['Rating']} [SEP] Description [SEP] Features "
                   "[SEP] Reviews [SEP] Buy Now")
    value = next(iter(p["options"].values()))[0]
    assert env.step(f"click[{value}]")[0] == obs  # text mode does not mark the chosen option
    assert env.step("click[Features]")[0] == (f"Instruction: [SEP] {instr} [SEP] Back to Search [SEP] < Prev [SEP] "
                                             + " [SEP] ".join(b.strip() for b in p["BulletPoints"]))
    env.step("click[< Prev]")
    assert env.step("click[Description]")[0].endswith(f"< Prev [SEP] {p['Description']}")
    env.step("click[< Prev]")
    reviews = env.step("click[Reviews]")[0]
    for r in p["Reviews"]:
        assert f'"{r["title"]}" [SEP] {r["score"]} [SEP] {r["body"]}' in reviews
    env.step("click[< Prev]")
    assert dict(env._state.options) == {next(iter(p["options"])): value}  # options survive the sub-pages
    env.step("click[< Prev]")  # back to results page 2, options dropped
    assert env._state.page == "results" and env._state.page_num == 2 and env._state.options == ()
    env.step("click[Back to Search]")
    assert env._state.page == "search"


def test_invalid_actions_change_nothing(env):
    obs, info = env.reset(options={"task_id": "test/4"})
    obs, *_ = env.step("search[wireless earbuds]")
    key = env.state_key()
    for action in ["search[running shoes]", "click[Buy Now]", "click[< Prev]", "click[B000000000]", "click[]",
                   "click[Description]", "Buy Now", "click[search]"]:
        again, reward, term, _trunc, info = env.step(action)
        assert again == obs and reward == 0 and not term and info["action_valid"] is False
        assert env.state_key() == key


def test_search_results_are_deterministic_bm25(env):
    hits = env.shop.results("noise cancelling wireless earbuds")
    assert len(hits) == 50 and hits == env.shop.results("Noise  Cancelling Wireless Earbuds")
    assert sum(p["query"] == "wireless earbuds" for p in hits[:10]) >= 8
    assert env.shop.results("the of and") == []  # stopwords only: no hits, as with Lucene
    assert s_stem("earbuds") == "earbud" and s_stem("batteries") == "battery" and s_stem("glass") == "glass"


# ---- catalog, oracle, determinism ----------------------------------------------------------------


def test_synthetic_catalog_is_large_hard_and_seeded():
    products, goals, prices = synthetic_catalog(seed=0)
    assert len(products) >= 5000 and len(goals) == len(products)
    assert len({p["query"] for p in products}) >= 40 and {p["category"] for p in products} == {
        "beauty", "electronics", "fashion", "food", "garden"}
    titles = [p["Title"] for p in products]
    assert len(set(titles)) < len(titles)  # near-duplicates share titles
    assert any(len(p["pricing"]) == 2 for p in products) and all(p["asin"] in prices for p in products)
    assert all(g["instruction_text"].endswith(f", and price lower than {g['price_upper']:.2f} dollars")
               for g in goals if g["price_upper"] < 1000000)
    again = synthetic_catalog(seed=0)
    assert again[0][:50] == products[:50] and again[1][:50] == goals[:50]
    assert synthetic_catalog(seed=1, per_type=5)[0][0] != products[0]


def test_price_bound_rule():
    import random

    upper, text = draw_price_upper(23.5, random.Random(0))
    assert upper in (40.0, 50.0, 60.0) and text == f", and price lower than {upper:.2f} dollars"
    assert draw_price_upper(985.0, random.Random(0)) == (1000000, "")
    assert parse_pricing("$12.99") == ([12.99], "$12.99")
    assert parse_pricing("$10.00$15.50") == ([10.0, 15.5], "$10.0 to $15.5")
    assert parse_pricing(None) == ([100.0], "$100.0")


def test_splits_follow_webshop(env):
    assert env.splits() == {"test": 500, "valid": 1000, "train": len(env.goals) - 1500}
    assert env.get_task("test/0")["asin"] == env.goals[0]["asin"]
    assert env.get_task("train/0")["asin"] == env.goals[1500]["asin"]


def test_oracle_wins_every_test_goal(env):
    steps = []
    for task_id in env.task_ids("test"):
        env.reset(options={"task_id": task_id})
        for n in range(1, 16):
            _obs, reward, term, _trunc, info = env.step(env.oracle_action())
            if term:
                break
        assert info["won"] and reward == 1.0, (task_id, info)
        steps.append(n)
    assert max(steps) <= 10


def test_same_seed_same_episode():
    a, b = WebShopEnv(nouns="heuristic"), WebShopEnv(nouns="heuristic")
    oa, ia = a.reset(seed=11)
    ob, ib = b.reset(seed=11)
    assert (oa, ia) == (ob, ib)
    for action in ["search[bar stools swivel]", "click[Next >]"]:
        assert a.step(action) == b.step(action)


def test_custom_task_and_errors(env):
    exemplar = WebShopEnv.exemplars()[0]
    _, info = env.reset(options={"task": exemplar["task"]})
    assert info["task_id"].startswith("custom/") and env.task["query"] == "shampoo"
    for step in exemplar["steps"]:
        _obs, _reward, _term, _trunc, info = env.step(step["action"])
    assert info["won"]
    with pytest.raises(TaskError, match="not in this catalog"):
        env.reset(options={"task": {**exemplar["task"], "asin": "B0NOTHERE1"}})
    with pytest.raises(TaskError, match="attributes"):
        env.reset(options={"task": {**exemplar["task"], "attributes": []}})
    with pytest.raises(TaskError, match="unknown WebShop task field"):
        env.reset(options={"task": {**exemplar["task"], "colour": "red"}})
    with pytest.raises(TaskError, match="mode"):
        WebShopEnv(mode="vr")


# ---- WebShop's own files --------------------------------------------------------------------------


def test_loader_reads_webshop_files(tmp_path):
    items = [
        {"asin": "B000TEST01", "category": "beauty", "query": " Deodorant ", "name": "Earth Mama Bright Citrus Deodorant",
         "product_category": "Beauty & Personal Care › Deodorants › Natural", "full_description": "A gentle deodorant.",
         "small_description": ["Safe for sensitive skin", "3 ounce"], "pricing": "$10.99",
         "customization_options": {"Scent": [{"value": "Bright Citrus"}, {"value": "Ginger/Fresh"}],
                                   "Size": [{"value": "3 Ounce (Pack of 1)"}]}, "images": ["x.jpg"]},
        {"asin": "B000TEST02", "category": "beauty", "query": "deodorant", "name": "Acme Sport Deodorant",
         "product_category": "Beauty & Personal Care › Deodorants › Sport", "full_description": "For the gym.",
         "small_description": "Long lasting", "pricing": "$5.00$9.00", "customization_options": None},
        {"asin": "B000TEST03", "category": "garden", "query": "console tables", "name": "Reclaimed Wood Console Table",
         "product_category": "Home & Kitchen › Furniture › Tables", "full_description": "", "small_description": [],
         "pricing": "", "customization_options": {"Color": None}},
        {"asin": "nan", "category": "x", "query": "x", "name": "skipped", "product_category": "x"},
    ]
    attrs = {"B000TEST01": {"attributes": ["sensitive skin", "natural ingredients"]}}
    human = {"B000TEST01": [
        {"instruction": "i want a bright citrus deodorant for sensitive skin in 3 ounce.",
         "instruction_attributes": ["sensitive skin"], "instruction_options": ["bright citrus", "3 ounce (pack of 1)"]},
        {"instruction": "no attributes, skipped", "instruction_attributes": [], "instruction_options": []}]}
    paths = {}
    for name, data in (("items", items), ("attrs", attrs), ("human", human)):
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps(data))
    env = WebShopEnv(items_file=str(paths["items"]), attributes_file=str(paths["attrs"]),
                     human_goals_file=str(paths["human"]), nouns="heuristic")
    p = env.shop.by_asin["B000TEST01"]
    assert p["Title"] == p["name"] and p["query"] == "deodorant" and p["Price"] == "$10.99"
    assert p["options"] == {"scent": ["bright citrus", "ginger | fresh"], "size": ["3 ounce (pack of 1)"]}
    assert env.shop.by_asin["B000TEST02"]["Attributes"] == ["DUMMY_ATTR"]
    assert env.shop.by_asin["B000TEST02"]["BulletPoints"] == ["Long lasting"]
    assert 5.0 <= env.shop.prices["B000TEST02"] <= 9.0 and "nan" not in env.shop.by_asin
    table = env.shop.by_asin["B000TEST03"]  # no price, an option group without values, no bullets
    assert (table["Price"], table["options"], table["BulletPoints"]) == ("$100.0", {}, [])
    assert env.splits() == {"test": 1, "valid": 0, "train": 0}
    _, info = env.reset(options={"task_id": "test/0"})
    assert info["instruction"].startswith("i want a bright citrus deodorant for sensitive skin in 3 ounce")
    while True:
        _obs, _reward, term, _trunc, info = env.step(env.oracle_action())
        if term:
            break
    assert info["won"]
    with pytest.raises(TaskError, match="does not exist"):
        WebShopEnv(items_file=str(tmp_path / "missing.json"), attributes_file=str(paths["attrs"]))
