"""Passages and corpora: what a retriever searches.

A :class:`Passage` has an id, a title and a text; its ``contents`` is
``"title\\ntext"``, the shape of Search-R1's wiki-18 rows (``{"id", "contents"}``)
and what retrievers index. A :class:`Corpus` is a named, ordered tuple of
passages with a content digest (the key of on-disk caches such as the dense
retriever's faiss index).

This module depends on nothing of ours but :mod:`turngym.errors`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

from turngym.errors import TaskError


@dataclass(frozen=True)
class Passage:
    """One retrievable document."""

    id: str
    title: str
    text: str

    @property
    def contents(self) -> str:
        return f"{self.title}\n{self.text}"

    def to_json(self) -> dict[str, str]:
        """The document as a retrieval server returns it (Search-R1's ``contents`` plus ours)."""
        return {"id": self.id, "title": self.title, "text": self.text, "contents": self.contents}


@dataclass(frozen=True, eq=False)
class Corpus:
    """A named, ordered collection of passages with unique ids."""

    name: str
    passages: tuple[Passage, ...]
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.passages:
            raise TaskError(f"corpus {self.name!r} has no passages")
        for i, passage in enumerate(self.passages):
            if passage.id in self._index:
                raise TaskError(f"corpus {self.name!r} has two passages with id {passage.id!r}")
            self._index[passage.id] = i

    def __len__(self) -> int:
        return len(self.passages)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._index

    def get(self, doc_id: str) -> Passage:
        try:
            return self.passages[self._index[doc_id]]
        except KeyError:
            raise TaskError(f"corpus {self.name!r} has no passage with id {doc_id!r}") from None

    def position(self, doc_id: str) -> int:
        return self._index[doc_id]

    @cached_property
    def digest(self) -> str:
        """sha1 over every passage's id, title and text (stable across processes)."""
        h = hashlib.sha1()
        for p in self.passages:
            for part in (p.id, p.title, p.text):
                h.update(part.encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
        return h.hexdigest()[:16]
