"""WebShop's search engine: BM25 over the product text, top 50, 10 results a page.

WebShop indexes each product's Title, Description, first bullet point and
option text (lowercased; :func:`~turngym.envs.webshop.catalog.index_text`)
with Lucene (pyserini's default English analyzer) and returns the 50 best.
Here the same text is indexed with the ``bm25s`` package (Lucene's BM25
variant, k1=0.9, b=0.4 as pyserini's searcher defaults): word tokens,
English stopwords dropped, and a plural-stripping stemmer (Harman's S
stemmer) where Lucene uses Porter's. As with Lucene only products sharing a
term with the query are hits; ties are broken by catalog order, so the ranking
is deterministic.

This module depends on bm25s (the ``webshop`` extra) and :mod:`turngym.errors`.
"""

from __future__ import annotations

import threading

import numpy as np

from turngym.errors import require

SEARCH_RETURN_N = 50
PRODUCT_WINDOW = 10


def s_stem(word: str) -> str:
    """Harman's S stemmer: "ies" -> "y", "es" -> "e" (not after a/e/o), "s" -> "" (not after u/s)."""
    if len(word) > 3 and word.endswith("ies") and not word.endswith(("eies", "aies")):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("es") and not word.endswith(("aes", "ees", "oes")):
        return word[:-1]
    if len(word) > 2 and word.endswith("s") and not word.endswith(("us", "ss")):
        return word[:-1]
    return word


class ProductSearch:
    """BM25 over a list of product texts; ``search(query)`` gives the indices of the best (at most 50)."""

    def __init__(self, texts: list[str], k1: float = 0.9, b: float = 0.4):
        bm25s = require("bm25s", "webshop", "WebShop's search engine")
        from bm25s.tokenization import Tokenizer

        self._n = len(texts)
        self._tokenizer = Tokenizer(stopwords="en", stemmer=s_stem)
        tokens = self._tokenizer.tokenize(texts, show_progress=False, return_as="ids")
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._bm25.index(tokens, show_progress=False)
        self._lock = threading.Lock()  # the tokenizer's query path mutates internal state
        self._cache: dict[str, list[int]] = {}

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[int]:
        """Indices of the ``k`` best products for ``query`` (lowercased), best first; ties by index."""
        query = " ".join(query.lower().split())
        with self._lock:
            if query not in self._cache:
                ids = self._tokenizer.tokenize([query], update_vocab=False, show_progress=False, return_as="ids")[0]
                ids = [int(i) for i in ids]
                scores = self._bm25.get_scores(ids) if ids else np.zeros(self._n)
                order = np.lexsort((np.arange(self._n), -scores))[:SEARCH_RETURN_N]
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache[query] = [int(i) for i in order if scores[i] > 0]
            return self._cache[query][:k]
