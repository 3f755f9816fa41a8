"""Tool-calling agent: env actions as JSON tool schemas, env answers as tool messages.

Each env family has a small toolset (:data:`TOOLSETS`; any other env gets
one generic ``act(action)`` tool). A tool call is turned back into the env's
action text, e.g. ``{"name": "stack", "arguments": {"block": "red",
"on_block": "blue"}}`` -> ``stack the red block on top of the blue block``.

The schemas reach the model through the chat template's ``tools=`` argument
when the engine's template uses it (checked once in :meth:`bind`: the
rendering with tools must differ from the one without). Templates that
ignore tools (SmolLM2's, for one) and remote chat engines get the schemas
in the system message instead, in the Hermes convention that SmolLM2 and
Qwen were trained on::

    <tools> [...schemas...] </tools>
    <tool_call>{"name": ..., "arguments": {...}}</tool_call>

Env observations come back as ``{"role": "tool", "content": ...}`` messages.

Parsing is :func:`turngym.agents.hermes.find_tool_calls`, the reader ``turngym
serve`` uses too: ``<tool_call>{...}</tool_call>`` (also a JSON list inside,
or an unclosed tag), a bare JSON object with a ``name``, the OpenAI shape
``{"function": {"name", "arguments": "<json string>"}}``, and ``parameters``
for ``arguments``. No readable call, an unknown tool or missing arguments is
a format failure: the raw reply goes to the env, which answers with feedback.

This module depends on :mod:`turngym.agents` (react, exemplars, hermes, types).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turngym.agents.exemplars import env_family
from turngym.agents.hermes import find_tool_calls, format_call
from turngym.agents.react import MAX_ACTION_CHARS, ReActAgent, raw_action


@dataclass(frozen=True)
class Tool:
    """One tool: its JSON schema and how a call becomes env action text."""

    name: str
    description: str
    parameters: dict[str, dict[str, Any]]  # argument -> JSON schema
    to_action: Callable[[dict[str, Any]], str]

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": self.parameters, "required": list(self.parameters)}}}


def _block(value: Any) -> str:
    """'the red block' / 'Red' / 'red block' -> 'red'."""
    text = str(value).strip().lower()
    text = re.sub(r"^the\s+", "", text)
    return re.sub(r"\s+block$", "", text).strip()


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


_GENERIC = [Tool("act", "Take one action in the environment.", {"action": _string("the action, as plain text")},
                 lambda a: str(a["action"]))]

TOOLSETS: dict[str, list[Tool]] = {
    "Game24": [
        Tool("combine", "Combine two of the remaining numbers with one operation; the result replaces them.",
             {"a": _string("a remaining number, e.g. 4 or 8/3"),
              "op": {"type": "string", "enum": ["+", "-", "*", "/"], "description": "the operation"},
              "b": _string("another remaining number")},
             lambda a: f"{a['a']} {a['op']} {a['b']}"),
        Tool("answer", "Finish with one expression that uses every remaining number exactly once.",
             {"expression": _string("e.g. (4 + 8) * (6 - 4)")}, lambda a: str(a["expression"])),
    ],
    "BlocksWorld": [
        Tool("pick_up", "Pick up a clear block from the table (your hand must be empty).",
             {"block": _string("the block's colour, e.g. red")}, lambda a: f"pick up the {_block(a['block'])} block"),
        Tool("unstack", "Take a clear block off the block it is on (your hand must be empty).",
             {"block": _string("the block to take"), "from_block": _string("the block it is on")},
             lambda a: f"unstack the {_block(a['block'])} block from on top of the {_block(a['from_block'])} block"),
        Tool("put_down", "Put the block you hold down on the table.", {"block": _string("the block you hold")},
             lambda a: f"put down the {_block(a['block'])} block"),
        Tool("stack", "Put the block you hold on top of a clear block.",
             {"block": _string("the block you hold"), "on_block": _string("the clear block to put it on")},
             lambda a: f"stack the {_block(a['block'])} block on top of the {_block(a['on_block'])} block"),
    ],
    "Search": [  # the env's own protocol tags are the actions
        Tool("search", "Search the corpus; the top passages come back.", {"query": _string("the search query")},
             lambda a: f"<search> {a['query']} </search>"),
        Tool("answer", "Give the final answer (a few words, no explanation).", {"answer": _string("the answer")},
             lambda a: f"<answer> {a['answer']} </answer>"),
    ],
}

# Exemplar actions -> tool calls (the exemplars are stored as action text).
_G24_MOVE = re.compile(r"^\s*(\S+)\s*([-+*/])\s*(\S+)")
_BW = [
    (re.compile(r"^pick up the (\w+) block$"), "pick_up", ("block",)),
    (re.compile(r"^unstack the (\w+) block from on top of the (\w+) block$"), "unstack", ("block", "from_block")),
    (re.compile(r"^put down the (\w+) block$"), "put_down", ("block",)),
    (re.compile(r"^stack the (\w+) block on top of the (\w+) block$"), "stack", ("block", "on_block")),
]


_SEARCH_ACTION = re.compile(r"^\s*<(search|answer)>(.*?)</\1>\s*$", re.DOTALL)


def action_to_call(family: str, action: str) -> dict[str, Any]:
    """The tool call that stands for an exemplar action."""
    if family == "Game24":
        m = _G24_MOVE.match(action)
        if m:
            return {"name": "combine", "arguments": {"a": m.group(1), "op": m.group(2), "b": m.group(3)}}
        return {"name": "answer", "arguments": {"expression": action}}
    if family == "Search":
        m = _SEARCH_ACTION.match(action)
        if m:
            return {"name": m.group(1), "arguments": {"query" if m.group(1) == "search" else "answer": m.group(2).strip()}}
    if family == "BlocksWorld":
        for pattern, name, keys in _BW:
            m = pattern.match(action)
            if m:
                return {"name": name, "arguments": dict(zip(keys, m.groups()))}
    return {"name": "act", "arguments": {"action": action}}


class ToolCallingAgent(ReActAgent):
    """Calls env actions as tools. Takes the arguments of :class:`~turngym.agents.react.ReActAgent`."""

    name = "tool"
    observation_role = "tool"
    stop: tuple[str, ...] = ()

    def __init__(self, env_id: str | None = None, **options: Any):
        self.family = env_family(env_id)
        self.toolset = TOOLSETS.get(self.family, _GENERIC)
        self._by_name = {tool.name: tool for tool in self.toolset}
        self.schemas = [tool.schema() for tool in self.toolset]
        self.tools_in_template = False
        super().__init__(env_id, **options)
        self.tools = None  # set by bind() when the template takes tools=
        if self.context.mode != "workspace":  # the call is the end of the reply (a workspace report follows it)
            self.sampling.stop = ["</tool_call>"]

    def bind(self, engine: Any) -> None:
        """Use the template's ``tools=`` if it renders them; else keep the schemas in the system message."""
        probe = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        try:
            with_tools, without = engine.render(probe, tools=self.schemas), engine.render(probe, tools=None)
            uses = isinstance(with_tools, (list, str)) and not _is_messages(with_tools) and with_tools != without
        except Exception:
            uses = False
        if uses != self.tools_in_template:
            self.tools_in_template = uses
            self.tools = self.schemas if uses else None
            self.system = self._system_override or self.system_prompt()

    def format_rules(self) -> str:
        rules = ("You are an agent acting in a text environment through tools. Each turn, think in one sentence, "
                 "then call exactly one tool. The environment answers with the tool's result.")
        if not getattr(self, "tools_in_template", False):
            rules += ("\n\nYou have access to the following tools:\n<tools>\n"
                      + "\n".join(json.dumps(s) for s in self.schemas) + "\n</tools>\n\n"
                      "Call a tool with a JSON object inside <tool_call></tool_call> tags, for example:\n"
                      + format_call({"name": self.toolset[0].name,
                                     "arguments": {k: "..." for k in self.toolset[0].parameters}}))
        return rules

    def render_reply(self, thought: str, action: str) -> str:
        return f"{thought}\n{format_call(action_to_call(self.family, action))}"

    def format_observation(self, observation: str) -> str:
        return observation

    def reminder(self) -> str:
        return "Think in one sentence, then call exactly one tool: <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>"

    def reply_prefix(self) -> str:
        return ""  # the thought comes first, in free words

    def parse_action(self, text: str) -> tuple[str, bool, str]:
        calls = find_tool_calls(text)
        if not calls:
            return raw_action(text), False, "no tool call"
        call = calls[0]
        tool = self._by_name.get(call["name"])
        if tool is None:
            return raw_action(text), False, f"unknown tool {call['name']!r}"
        missing = [k for k in tool.parameters if k not in call["arguments"]]
        if missing:
            return raw_action(text), False, f"tool {tool.name!r} is missing {missing}"
        try:
            action = tool.to_action(call["arguments"]).strip()
        except Exception as exc:  # odd argument types
            return raw_action(text), False, f"bad arguments for {tool.name!r}: {exc!r}"
        return action[:MAX_ACTION_CHARS], True, ""


def _is_messages(prompt: Any) -> bool:
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict)
