"""Loaders for the files Search-R1 and FlashRAG users already have.

* :func:`load_flashrag_qa`: a FlashRAG-style QA file (``.jsonl``, one object a
  line with ``question`` and ``golden_answers``; ``id`` and ``metadata`` are
  kept; Search-R1's ``nq_search`` parquet rows hold the same fields). Gives task
  dicts for ``reset(options={"task": ...})`` or the env's ``qa_file`` split.
* :func:`load_wiki18_passages`: a passages file: wiki-18 ``.jsonl``
  (``{"id": "0", "contents": "\\"Title\\"\\ntext"}``, Search-R1's
  ``wiki-18.jsonl``), a ``.jsonl`` with ``title`` and ``text``, or DPR's
  ``psgs_w100.tsv`` (``id<TAB>text<TAB>title`` with a header row). Gives a
  :class:`~turngym.envs.search.corpus.Corpus` for the BM25 or dense
  retriever (or ``turngym serve-retriever --corpus-file``). wiki-18 has 21M
  passages: index it with Search-R1's own server, or load a slice with
  ``limit``.

This module depends on nothing of ours but :mod:`.corpus`, :mod:`.protocol`
and :mod:`turngym.errors`.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from turngym.envs.search.corpus import Corpus, Passage
from turngym.envs.search.protocol import split_contents
from turngym.errors import TaskError


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return path.open(encoding="utf-8")


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}:{line_no} is not valid JSON ({exc.msg}); expected one JSON object a line") from None
            if not isinstance(row, dict):
                raise TaskError(f"{path}:{line_no} holds a {type(row).__name__}; expected a JSON object")
            yield line_no, row


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise TaskError(f"{what} {str(path)!r} does not exist or is not a file")
    return p


def load_flashrag_qa(path: str | Path, limit: int | None = None, corpus: str | None = None) -> list[dict[str, Any]]:
    """Task dicts from a FlashRAG-style QA ``.jsonl`` (``question`` + ``golden_answers``).

    ``golden_answers`` may also be named ``answers`` / ``answer`` (a string or a
    list). ``corpus`` names the corpus the tasks search (stored as ``task["corpus"]``).
    """
    p = _existing(path, "QA file")
    tasks = []
    for line_no, row in _jsonl(p):
        question = row.get("question")
        answers = row.get("golden_answers", row.get("answers", row.get("answer")))
        if not isinstance(question, str) or not question.strip():
            raise TaskError(f"{p}:{line_no} has no 'question' string; FlashRAG rows look like "
                            '{"id": "...", "question": "...", "golden_answers": ["..."]}')
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list) or not answers or not all(isinstance(a, (str, int, float)) for a in answers):
            raise TaskError(f"{p}:{line_no} has no 'golden_answers' list of strings")
        task: dict[str, Any] = {"question": question.strip(), "answers": [str(a) for a in answers], "type": "qa-file"}
        if "id" in row:
            task["source_id"] = str(row["id"])
        if corpus:
            task["corpus"] = corpus
        tasks.append(task)
        if limit is not None and len(tasks) >= limit:
            break
    if not tasks:
        raise TaskError(f"QA file {str(path)!r} holds no questions")
    return tasks


def load_wiki18_passages(path: str | Path, limit: int | None = None, name: str | None = None) -> Corpus:
    """A corpus from a wiki-18 ``.jsonl`` (``contents``), a title/text ``.jsonl`` or DPR's ``.tsv``."""
    p = _existing(path, "passages file")
    passages: list[Passage] = []
    suffixes = [s for s in p.suffixes if s != ".gz"]
    if suffixes and suffixes[-1] == ".tsv":
        with _open_text(p) as f:
            reader = csv.reader(f, delimiter="\t")
            for line_no, row in enumerate(reader, 1):
                if line_no == 1 and row and row[0] == "id":
                    continue
                if len(row) < 3:
                    raise TaskError(f"{p}:{line_no} has {len(row)} columns; DPR passages are id<TAB>text<TAB>title")
                passages.append(Passage(str(row[0]), row[2].strip().strip('"'), row[1].strip()))
                if limit is not None and len(passages) >= limit:
                    break
    else:
        for line_no, row in _jsonl(p):
            doc_id = str(row.get("id", row.get("_id", len(passages))))
            if "contents" in row:
                title, text = split_contents(str(row["contents"]))
            elif "text" in row:
                title, text = str(row.get("title", "")).strip(), str(row["text"]).strip()
            else:
                raise TaskError(f"{p}:{line_no} has neither 'contents' nor 'text'; wiki-18 rows look like "
                                '{"id": "0", "contents": "\\"Title\\"\\ntext"}')
            passages.append(Passage(doc_id, title, text))
            if limit is not None and len(passages) >= limit:
                break
    if not passages:
        raise TaskError(f"passages file {str(path)!r} holds no passages")
    return Corpus(name or p.name.split(".")[0], tuple(passages))
