"""A seeded knowledge base of fictional entities, its passages, and questions that need search.

The world: fictional countries, cities, people and companies with attributes
(birth year, founding year, occupation, river, industry, ...) and relations
(born in, works for, founded by, headquartered in, located in, capital of).
Every name is built from syllables, so no model can know an answer without
reading the passages: a question is answered by searching.

Each entity is rendered into one passage (title = its name). Questions:

* ``1-hop``: one fact of one entity ("In which city was Orvel Kastamir born?");
* ``bridge`` (2-hop): a fact of an entity reached through another ("In which
  country is the city where Orvel Kastamir was born?");
* ``comparison``: two entities compared on a fact ("Who was born first, A or
  B?", "Were A and B born in the same city?").

Every task carries its gold answers, the ids of its supporting passages
(one per hop or compared entity) and the oracle's queries (the name of the
entity each supporting passage is about).

Splits: ``train`` is as large as you like (:data:`TRAIN_SIZE` tasks, each drawn
on demand from its index) and ``test`` is :data:`TEST_SIZE` tasks. They are
held apart twice: every fifth entity of each kind is a *test entity*, and
test questions are about test entities only (train questions about train
entities only); and each question form has phrasings (templates) that only
the test split uses. The passages are one corpus shared by both splits, as a
search engine would be.

This module depends on nothing of ours but :mod:`.corpus` and
:mod:`turngym.errors`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cache
from typing import Any

from turngym.envs.search.corpus import Corpus, Passage
from turngym.errors import TaskError

#: The world's seed: the corpus and every question derive from it.
KB_SEED = 20240917
CORPUS_NAME = "synthetic"
TRAIN_SIZE = 1_000_000
TEST_SIZE = 500
#: Every TEST_EVERY-th entity of each kind is held out for the test split.
TEST_EVERY = 5

NUM_COUNTRIES, NUM_CITIES, NUM_PEOPLE, NUM_COMPANIES = 15, 60, 300, 60

_ONSETS = ["b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "qu", "r", "s", "st",
           "t", "th", "tr", "v", "w", "z", "zh"]
_VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou", "y"]
_CODAS = ["", "", "", "l", "n", "r", "s", "th", "x", "nd", "rk", "m", "v"]

OCCUPATIONS = ["cartographer", "glassblower", "astronomer", "violinist", "shipwright", "botanist", "architect",
               "chemist", "novelist", "sculptor", "linguist", "engineer", "beekeeper", "clockmaker", "painter"]
INDUSTRIES = ["shipping", "textile", "mining", "publishing", "brewing", "railway", "insurance", "software",
              "pharmaceutical", "aviation", "perfume", "steel"]
COMPANY_SUFFIXES = ["Company", "Works", "Holdings", "Guild", "Trading House", "Manufactory"]


@dataclass
class World:
    """The generated knowledge base (entity index -> attribute dict per kind)."""

    countries: list[dict[str, Any]]
    cities: list[dict[str, Any]]
    people: list[dict[str, Any]]
    companies: list[dict[str, Any]]

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return {"country": self.countries, "city": self.cities, "person": self.people,
                "company": self.companies}[kind]


def _word(rng: random.Random, syllables: int) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return "".join(parts).capitalize()


def _unique_names(rng: random.Random, count: int, make, taken: set[str], words: int = 2) -> list[str]:
    """``count`` new names; their first ``words`` words are used by no other name (so they point at one entity)."""
    out = []
    while len(out) < count:
        name = make()
        own = name.lower().split()[:words]
        if any(w in taken for w in own) or len(name) < 4:
            continue
        taken.update(own)
        out.append(name)
    return out


@cache
def world() -> World:
    """The knowledge base, built once per process from :data:`KB_SEED`."""
    rng = random.Random(KB_SEED)
    taken: set[str] = set()
    country_names = _unique_names(rng, NUM_COUNTRIES, lambda: _word(rng, 2) + rng.choice(["ia", "land", "ar", "istan", "ora"]), taken)
    language_names = _unique_names(rng, NUM_COUNTRIES, lambda: _word(rng, 2) + "ic", taken)
    city_names = _unique_names(rng, NUM_CITIES, lambda: _word(rng, rng.choice([2, 3])), taken)
    river_names = _unique_names(rng, NUM_CITIES, lambda: _word(rng, 2), taken)
    first = lambda: _word(rng, rng.choice([2, 2, 3]))
    people_names = _unique_names(rng, NUM_PEOPLE, lambda: f"{first()} {_word(rng, rng.choice([2, 3]))}", taken)
    company_names = _unique_names(rng, NUM_COMPANIES,
                                  lambda: f"{_word(rng, 2)} {rng.choice(COMPANY_SUFFIXES)}", taken, words=1)

    cities = [{"name": n, "country": i % NUM_COUNTRIES, "founded": rng.randint(850, 1890), "river": river_names[i]}
              for i, n in enumerate(city_names)]
    countries = []
    for i, n in enumerate(country_names):
        own = [c for c, city in enumerate(cities) if city["country"] == i]
        countries.append({"name": n, "capital": own[0], "language": language_names[i]})
    people = [{"name": n, "born": rng.randint(1720, 1995), "birthplace": rng.randrange(NUM_CITIES),
               "occupation": rng.choice(OCCUPATIONS), "employer": rng.randrange(NUM_COMPANIES)}
              for n in people_names]
    companies = [{"name": n, "founded": rng.randint(1700, 1990), "founder": rng.randrange(NUM_PEOPLE),
                  "hq": rng.randrange(NUM_CITIES), "industry": rng.choice(INDUSTRIES)}
                 for n in company_names]
    return World(countries=countries, cities=cities, people=people, companies=companies)


# ---- passages ------------------------------------------------------------------------------

def doc_id(kind: str, index: int) -> str:
    return f"{kind}-{index}"


def _a(word: str) -> str:
    """'a glassblower', 'an astronomer'."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _surname(name: str) -> str:
    return name.split()[-1]


def _render(kind: str, index: int, w: World, rng: random.Random) -> str:
    e = w.kind(kind)[index]
    if kind == "country":
        capital = w.cities[e["capital"]]["name"]
        return rng.choice([
            f"{e['name']} is a country whose capital is {capital}. Most of its people speak {e['language']}.",
            f"The country of {e['name']} has {capital} as its capital city, and its official language is {e['language']}.",
        ])
    if kind == "city":
        country = w.countries[e["country"]]["name"]
        return rng.choice([
            f"{e['name']} is a city in {country}. It was founded in {e['founded']} on the banks of the {e['river']} River.",
            f"Founded in {e['founded']}, {e['name']} lies on the {e['river']} River in {country}.",
            f"The city of {e['name']}, in {country}, grew up along the {e['river']} River after its founding in {e['founded']}.",
        ])
    if kind == "person":
        city = w.cities[e["birthplace"]]["name"]
        employer = w.companies[e["employer"]]["name"]
        sur = _surname(e["name"])
        return rng.choice([
            (f"{e['name']} was {_a(e['occupation'])} born in {e['born']} in the city of {city}. "
             f"For most of a long career, {sur} worked for the {employer}."),
            f"{e['name']} (born {e['born']}) is {_a(e['occupation'])}. Born in {city}, {sur} later joined the {employer}.",
            (f"Born in {city} in {e['born']}, {e['name']} became a well-known {e['occupation']} "
             f"and spent many years at the {employer}."),
        ])
    founder = w.people[e["founder"]]["name"]
    hq = w.cities[e["hq"]]["name"]
    return rng.choice([
        (f"The {e['name']} is {_a(e['industry'])} firm founded in {e['founded']} by {founder}. "
         f"Its headquarters are in {hq}."),
        f"{founder} founded the {e['name']} in {e['founded']}. The {e['industry']} company is headquartered in {hq}.",
    ])


@cache
def corpus() -> Corpus:
    """Every entity as one passage: countries, cities, people, companies (in that order)."""
    w = world()
    rng = random.Random(KB_SEED + 1)
    passages = []
    for kind in ("country", "city", "person", "company"):
        for i, e in enumerate(w.kind(kind)):
            passages.append(Passage(doc_id(kind, i), e["name"], _render(kind, i, w, rng)))
    return Corpus(CORPUS_NAME, tuple(passages))


# ---- questions ---------------------------------------------------------------------------
# Each entry: (templates shared by both splits, templates only the test split uses).
# {a}/{b} are entity names.

_ONE_HOP: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    ("person", "birthplace"): (["In which city was {a} born?", "What is the birthplace of {a}?"],
                               ["Name the city {a} was born in."]),
    ("person", "born"): (["In what year was {a} born?", "When was {a} born?"],
                         ["Which year saw the birth of {a}?"]),
    ("person", "occupation"): (["What was the occupation of {a}?", "What did {a} do for a living?"],
                               ["By profession, what was {a}?"]),
    ("person", "employer"): (["Which company did {a} work for?", "Who employed {a}?"],
                             ["At which firm did {a} spend a career?"]),
    ("city", "country"): (["In which country is {a}?", "{a} is a city in which country?"],
                          ["Which country contains the city of {a}?"]),
    ("city", "founded"): (["In what year was {a} founded?", "When was the city of {a} founded?"],
                          ["What is the founding year of {a}?"]),
    ("city", "river"): (["On which river does {a} lie?", "Which river flows through {a}?"],
                        ["Name the river the city of {a} grew up along."]),
    ("country", "capital"): (["What is the capital of {a}?", "Which city is the capital of {a}?"],
                             ["Name the capital city of {a}."]),
    ("country", "language"): (["What language do people speak in {a}?", "What is the official language of {a}?"],
                              ["Which language is spoken in {a}?"]),
    ("company", "founder"): (["Who founded the {a}?", "Who is the founder of the {a}?"],
                             ["Which person started the {a}?"]),
    ("company", "founded"): (["In what year was the {a} founded?", "When was the {a} founded?"],
                             ["What is the founding year of the {a}?"]),
    ("company", "hq"): (["Where is the {a} headquartered?", "In which city are the headquarters of the {a}?"],
                        ["Which city hosts the head office of the {a}?"]),
    ("company", "industry"): (["In which industry is the {a}?", "What kind of business is the {a}?"],
                              ["What industry does the {a} work in?"]),
}

#: (kind, relation to the bridge entity, bridge kind, relation of the bridge entity) -> templates.
_BRIDGE: dict[tuple[str, str, str, str], tuple[list[str], list[str]]] = {
    ("person", "birthplace", "city", "country"): (["In which country is the city where {a} was born?"],
                                                  ["{a} was born in a city of which country?"]),
    ("person", "birthplace", "city", "founded"): (["In what year was the birthplace of {a} founded?"],
                                                  ["When was the city {a} was born in founded?"]),
    ("person", "birthplace", "city", "river"): (["On which river lies the city where {a} was born?"],
                                                ["Which river flows through the birthplace of {a}?"]),
    ("person", "employer", "company", "hq"): (["In which city is the company {a} worked for headquartered?"],
                                              ["Where is the head office of the employer of {a}?"]),
    ("person", "employer", "company", "founder"): (["Who founded the company that employed {a}?"],
                                                   ["Which person started the firm {a} worked for?"]),
    ("person", "employer", "company", "founded"): (["In what year was the employer of {a} founded?"],
                                                   ["When was the company {a} worked for founded?"]),
    ("company", "founder", "person", "birthplace"): (["In which city was the founder of the {a} born?"],
                                                     ["Where was the person who founded the {a} born?"]),
    ("company", "founder", "person", "born"): (["In what year was the founder of the {a} born?"],
                                               ["When was the person who started the {a} born?"]),
    ("company", "hq", "city", "country"): (["In which country is the {a} headquartered?"],
                                           ["The head office of the {a} is in which country?"]),
    ("city", "country", "country", "capital"): (["What is the capital of the country where {a} lies?"],
                                                ["Name the capital of the country that contains {a}."]),
}

#: (kind, attribute, ask for the smaller value?) -> templates.
_COMPARE: dict[tuple[str, str, bool], tuple[list[str], list[str]]] = {
    ("person", "born", True): (["Who was born first, {a} or {b}?", "Who is older, {a} or {b}?"],
                               ["Of {a} and {b}, whose birth came earlier?"]),
    ("person", "born", False): (["Who was born later, {a} or {b}?"], ["Who is younger, {a} or {b}?"]),
    ("city", "founded", True): (["Which city was founded earlier, {a} or {b}?"],
                                ["Which is the older city, {a} or {b}?"]),
    ("company", "founded", True): (["Which company was founded first, the {a} or the {b}?"],
                                   ["Which is older, the {a} or the {b}?"]),
}
#: (kind, attribute) -> templates of yes/no questions "do a and b share it?".
_SAME: dict[tuple[str, str], tuple[list[str], list[str]]] = {
    ("person", "birthplace"): (["Were {a} and {b} born in the same city?"],
                               ["Do {a} and {b} share a birthplace?"]),
    ("city", "country"): (["Are {a} and {b} in the same country?"], ["Do {a} and {b} lie in one country?"]),
    ("person", "employer"): (["Did {a} and {b} work for the same company?"],
                             ["Were {a} and {b} employed by the same firm?"]),
}

_REF_KIND = {"birthplace": "city", "employer": "company", "country": "country", "capital": "city",
             "founder": "person", "hq": "city"}
#: How often each question type is drawn.
_TYPE_WEIGHTS = {"1-hop": 0.4, "bridge": 0.4, "comparison": 0.2}


def _value(w: World, kind: str, index: int, attr: str) -> tuple[str, int | None]:
    """(the answer text, the index of the entity it names or None)."""
    e = w.kind(kind)[index]
    value = e[attr]
    if attr in _REF_KIND:
        return w.kind(_REF_KIND[attr])[value]["name"], value
    return str(value), None


def _aliases(kind: str, attr: str, answer: str) -> list[str]:
    # "the Foo Company" needs no alias: SQuAD normalization drops articles.
    if attr == "river":
        return [f"{answer} River", answer]
    return [answer]


def _pool(split: str, size: int) -> list[int]:
    test = [i for i in range(size) if i % TEST_EVERY == 0]
    return test if split == "test" else [i for i in range(size) if i % TEST_EVERY != 0]


def _templates(pair: tuple[list[str], list[str]], split: str) -> list[str]:
    shared, held_out = pair
    return held_out if split == "test" else shared


def _question_rng(split: str, index: int) -> random.Random:
    return random.Random(f"{KB_SEED}/{split}/{index}")


def make_question(split: str, index: int) -> dict[str, Any]:
    """The ``index``-th question of ``split`` ("train" or "test"): a task dict."""
    if split not in ("train", "test"):
        raise TaskError(f"unknown synthetic split {split!r}; known: 'train', 'test'")
    rng = _question_rng(split, index)
    w = world()
    qtype = rng.choices(list(_TYPE_WEIGHTS), weights=list(_TYPE_WEIGHTS.values()))[0]
    for _ in range(100):  # resample the rare degenerate draw (equal years, self-reference)
        task = {"1-hop": _one_hop, "bridge": _bridge, "comparison": _comparison}[qtype](w, split, rng)
        if task is not None:
            task.update(corpus=CORPUS_NAME, type=qtype)
            return task
    raise AssertionError(f"could not draw a {qtype} question for {split}/{index}")  # pragma: no cover


def _entity_count(w: World, kind: str) -> int:
    return len(w.kind(kind))


def _one_hop(w: World, split: str, rng: random.Random) -> dict[str, Any] | None:
    (kind, attr), pair = rng.choice(list(_ONE_HOP.items()))
    a = rng.choice(_pool(split, _entity_count(w, kind)))
    name = w.kind(kind)[a]["name"]
    answer, _ = _value(w, kind, a, attr)
    return {"question": rng.choice(_templates(pair, split)).format(a=name),
            "answers": _aliases(kind, attr, answer),
            "supporting": [doc_id(kind, a)], "oracle_queries": [name]}


def _bridge(w: World, split: str, rng: random.Random) -> dict[str, Any] | None:
    (kind, rel, bkind, battr), pair = rng.choice(list(_BRIDGE.items()))
    a = rng.choice(_pool(split, _entity_count(w, kind)))
    name = w.kind(kind)[a]["name"]
    bridge_name, b = _value(w, kind, a, rel)
    answer, answer_ref = _value(w, bkind, b, battr)
    if answer_ref is not None and _REF_KIND[battr] == kind and answer_ref == a:
        return None  # "who founded the company that employed X?" -> X: not a two-hop question
    return {"question": rng.choice(_templates(pair, split)).format(a=name),
            "answers": _aliases(bkind, battr, answer),
            "supporting": [doc_id(kind, a), doc_id(bkind, b)], "oracle_queries": [name, bridge_name]}


def _comparison(w: World, split: str, rng: random.Random) -> dict[str, Any] | None:
    if rng.random() < 0.6:
        (kind, attr, smaller), pair = rng.choice(list(_COMPARE.items()))
        a, b = rng.sample(_pool(split, _entity_count(w, kind)), 2)
        ea, eb = w.kind(kind)[a], w.kind(kind)[b]
        if ea[attr] == eb[attr]:
            return None
        winner = ea if (ea[attr] < eb[attr]) == smaller else eb
        answers = [winner["name"]]
    else:
        (kind, attr), pair = rng.choice(list(_SAME.items()))
        pool = _pool(split, _entity_count(w, kind))
        a = rng.choice(pool)
        ea = w.kind(kind)[a]
        same = [x for x in pool if x != a and w.kind(kind)[x][attr] == ea[attr]]
        # Half the pairs share the value (when any entity does), so "yes" is as common as "no".
        b = rng.choice(same) if same and rng.random() < 0.5 else rng.choice([x for x in pool if x != a])
        eb = w.kind(kind)[b]
        answers = ["yes" if ea[attr] == eb[attr] else "no"]
    return {"question": rng.choice(_templates(pair, split)).format(a=ea["name"], b=eb["name"]),
            "answers": answers, "supporting": [doc_id(kind, a), doc_id(kind, b)],
            "oracle_queries": [ea["name"], eb["name"]]}


def split_sizes() -> dict[str, int]:
    return {"train": TRAIN_SIZE, "test": TEST_SIZE}
