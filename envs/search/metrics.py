"""Answer scoring of the Search env: exact match, substring match and token F1.

The normalization is SQuAD's (and Search-R1's ``normalize_answer``):
lowercase, drop ASCII punctuation, drop the articles "a", "an", "the" as
whole words, collapse whitespace. Every score is against the *best* of the
gold answers.

This module depends on nothing.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold_answers: str | Iterable[str]) -> list[str]:
    return [gold_answers] if isinstance(gold_answers, str) else list(gold_answers)


def exact_match(prediction: str, gold_answers: str | Iterable[str]) -> float:
    """1.0 if the normalized prediction equals a normalized gold answer, else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) == pred for g in _golds(gold_answers)))


def substring_match(prediction: str, gold_answers: str | Iterable[str]) -> float:
    """Sub-EM: 1.0 if a normalized gold answer occurs inside the normalized prediction.

    As in Search-R1's ``subem_check`` this is a substring test on the
    normalized strings (so gold "1873" matches "in 1873" but also "18734").
    """
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) in pred for g in _golds(gold_answers)))


def token_f1(prediction: str, gold_answers: str | Iterable[str]) -> float:
    """SQuAD token F1 of the normalized answers, the best over the gold answers."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in _golds(gold_answers):
        gold_tokens = normalize_answer(gold).split()
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred_tokens), common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best
