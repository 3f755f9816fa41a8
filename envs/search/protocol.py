"""The Search-R1 text protocol: the prompt, how a response is read, what the env answers.

A response may reason inside ``<think>...</think>`` and must then either
search with ``<search> query </search>`` or answer with
``<answer> text </answer>``. As in Search-R1 (``_postprocess_responses`` and
``postprocess_predictions``):

1. the response is cut after the first ``</search>`` if it has one, else
   after the first ``</answer>``;
2. the first ``<search>...</search>`` or ``<answer>...</answer>`` pair in
   what is left (``<(search|answer)>(.*?)</\\1>``, across lines) is the
   action, its content stripped of surrounding whitespace.

A search is answered with ``\\n\\n<information>Doc 1(Title: T) text\\nDoc 2(...)
...</information>\\n\\n``; an unreadable response with Search-R1's fixed
"My previous action is invalid..." message.

This module depends on nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Search-R1's prompt ("base" template), without its final "Question: ..." part.
INSTRUCTION = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by <search> query </search> "
    "and it will return the top searched results between <information> and </information>. "
    "You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>."
)

#: Search-R1's answer to a response with neither a search nor an answer (word for word).
INVALID_MESSAGE = (
    "\nMy previous action is invalid. "
    "If I want to search, I should put the query between <search> and </search>. "
    "If I want to give the final answer, I should put the answer between <answer> and </answer>. "
    "Let me try again.\n"
)

_ACTION = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)


@dataclass(frozen=True)
class Action:
    """What a response asks for: ``kind`` is "search", "answer" or None (unreadable)."""

    kind: str | None
    content: str = ""


def cut_response(response: str) -> str:
    """Search-R1's cut: keep the response up to the first ``</search>``, else the first ``</answer>``."""
    if "</search>" in response:
        return response.split("</search>")[0] + "</search>"
    if "</answer>" in response:
        return response.split("</answer>")[0] + "</answer>"
    return response


def parse_response(response: str) -> Action:
    """The action of one model response (see the module docstring for the rules)."""
    match = _ACTION.search(cut_response(response))
    if match is None:
        return Action(None)
    return Action(match.group(1), match.group(2).strip())


def format_documents(docs: list[tuple[str, str]]) -> str:
    """``[(title, text), ...]`` -> ``"Doc 1(Title: T) text\\nDoc 2(Title: ...) ...\\n"`` (Search-R1's ``_passages2string``)."""
    return "".join(f"Doc {i}(Title: {title}) {text}\n" for i, (title, text) in enumerate(docs, 1))


def information_block(docs: list[tuple[str, str]], max_chars: int | None = None) -> str:
    """The observation after a search: the documents inside ``<information>`` tags.

    Search-R1 cuts an observation longer than ``max_obs_length`` *tokens*,
    closing tag included. Here ``max_chars`` bounds the characters of the
    documents' text and the tags are always kept, so the block stays
    well-formed; ``None`` means no bound.
    """
    body = format_documents(docs).strip()
    if max_chars is not None and len(body) > max_chars:
        body = body[:max_chars].rstrip()
    return f"\n\n<information>{body}</information>\n\n"


def split_contents(contents: str) -> tuple[str, str]:
    """A wiki-18 / Search-R1 ``contents`` string (``'"Title"\\ntext'``) -> (title, text)."""
    title, _, text = contents.partition("\n")
    return title.strip().strip('"'), text.strip()
