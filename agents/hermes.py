"""The Hermes tool-call format: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

The format SmolLM2's and Qwen's chat templates ask for (vLLM calls its parser ``hermes``).
This is the one reader and writer of it: the tool-calling agent
(:mod:`turngym.agents.tool_calling`) reads its action from a reply with
:func:`find_tool_calls`, and ``turngym serve`` (:mod:`turngym.agents.openai_protocol`)
reads a reply's ``message.tool_calls`` with the same function.

Reading accepts ``<tool_call>{...}</tool_call>`` (also a JSON list inside, several objects
in one tag, or an unclosed tag), the OpenAI shape ``{"function": {"name", "arguments":
"<json string>"}}``, and ``parameters`` for ``arguments``. With ``bare=True`` (the
agent's default) a reply with no tag at all is read as bare JSON; the server passes
``bare=False``, as vLLM's Hermes parser does, so a plain answer that happens to hold JSON
stays text. A call whose JSON does not parse, or that has no name or no object of
arguments, is skipped.

Depends on the standard library only: agents import it, so it must not pull in the
server or its fastapi.
"""

from __future__ import annotations

import json
import re
from typing import Any

_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL | re.IGNORECASE)


def find_tool_calls(text: str, *, bare: bool = True) -> list[dict[str, Any]]:
    """Every tool call readable in a reply, in order, as ``{"name": str, "arguments": dict}``.

    Args:
        text: the model's reply.
        bare: read a reply without ``<tool_call>`` tags as bare JSON (else it has no call).
    """
    blobs = [m.group(1) for m in _TOOL_CALL.finditer(text)] or ([text] if bare else [])
    calls: list[dict[str, Any]] = []
    decoder = json.JSONDecoder()
    for blob in blobs:
        i = 0
        while i < len(blob):
            start = min((j for j in (blob.find("{", i), blob.find("[", i)) if j >= 0), default=-1)
            if start < 0:
                break
            try:
                value, end = decoder.raw_decode(blob, start)
            except json.JSONDecodeError:
                i = start + 1
                continue
            for item in value if isinstance(value, list) else [value]:
                call = _normalize_call(item)
                if call is not None:
                    calls.append(call)
            i = end
    return calls


def _normalize_call(item: Any) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name")
    if not isinstance(name, str):
        return None
    args = item.get("arguments", item.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return {"name": name, "arguments": args}


def format_call(call: dict[str, Any]) -> str:
    """``call`` (``{"name", "arguments"}``) as the text a model writes for it."""
    return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
