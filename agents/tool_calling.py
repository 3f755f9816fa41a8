"""Tool-calling agent: env actions as JSON tool schemas, env answers as tool messages.

An env's toolset lives with the env, as data: ``tools.json`` in its folder
(format: :meth:`turngym.envs.core.TextEnv.tool_specs`), found through the env
id (:func:`toolset_for`; an env without one gets one generic ``act(action)``
tool). A tool call is turned back into the env's action text, e.g.
``{"name": "stack", "arguments": {"block": "red", "on_block": "blue"}}`` ->
``stack the red block on top of the blue block``.

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

This module depends on :mod:`turngym.agents` (react, hermes, types) and :mod:`turngym.envs`.
"""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from typing import Any

from turngym.agents.hermes import find_tool_calls, format_call
from turngym.agents.react import MAX_ACTION_CHARS, ReActAgent, raw_action
from turngym.envs import env_tool_specs
from turngym.errors import TurngymError


@dataclass(frozen=True)
class Tool:
    """One tool, as an env's ``tools.json`` describes it: its JSON schema and how a call becomes env action text."""

    name: str
    description: str
    parameters: dict[str, dict[str, Any]]  # argument -> JSON schema
    action: str  # the env action: a str.format template over the arguments
    clean: dict[str, list[Any]] = field(default_factory=dict)  # argument -> text steps ("strip", "lower", [re, sub])
    action_pattern: str = ""  # a regex whose named groups read an action back into arguments

    @classmethod
    def from_spec(cls, spec: dict[str, Any], source: str = "a tool spec") -> Tool:
        """A tool from one entry of an env's ``tools.json``; raises naming ``source`` and the bad field."""
        known = {"name", "description", "parameters", "action", "clean", "action_pattern"}
        name = spec.get("name", "?") if isinstance(spec, dict) else "?"
        where = f"tool {name!r} of {source}"
        if not isinstance(spec, dict) or not {"name", "description", "parameters", "action"} <= set(spec):
            raise TurngymError(f"{where} needs the keys 'name', 'description', 'parameters' and 'action'")
        if set(spec) - known:
            raise TurngymError(f"{where} has unknown keys {sorted(set(spec) - known)}; known: {sorted(known)}")
        tool = cls(spec["name"], spec["description"], dict(spec["parameters"]), spec["action"],
                   dict(spec.get("clean", {})), spec.get("action_pattern", ""))
        fields = {f for _, f, _, _ in string.Formatter().parse(tool.action) if f is not None}
        groups = set(re.compile(tool.action_pattern).groupindex) if tool.action_pattern else set()
        for what, names in (("action template", fields), ("action_pattern", groups), ("clean", set(tool.clean))):
            if not names <= set(tool.parameters):
                raise TurngymError(f"{where}: its {what} names {sorted(names - set(tool.parameters))}, "
                                   f"which are not among its parameters {sorted(tool.parameters)}")
        for steps in tool.clean.values():
            for step in steps:
                if step not in ("strip", "lower") and not (isinstance(step, list) and len(step) == 2):
                    raise TurngymError(f"{where}: clean step {step!r} is not 'strip', 'lower' or [regex, replacement]")
        return tool

    def schema(self) -> dict[str, Any]:
        return {"type": "function", "function": {
            "name": self.name, "description": self.description,
            "parameters": {"type": "object", "properties": self.parameters, "required": list(self.parameters)}}}

    def to_action(self, arguments: dict[str, Any]) -> str:
        """The env action text of a call with these arguments."""
        values = {key: _clean(arguments[key], self.clean[key]) if key in self.clean else arguments[key]
                  for key in self.parameters}
        return self.action.format(**values)

    def call_for(self, action: str) -> dict[str, Any] | None:
        """The call of this tool that stands for an action text, if its ``action_pattern`` reads it."""
        match = re.match(self.action_pattern, action) if self.action_pattern else None
        return {"name": self.name, "arguments": match.groupdict()} if match else None


def _clean(value: Any, steps: list[Any]) -> str:
    text = str(value)
    for step in steps:
        if step == "strip":
            text = text.strip()
        elif step == "lower":
            text = text.lower()
        else:
            text = re.sub(step[0], step[1], text)
    return text


_GENERIC = [Tool("act", "Take one action in the environment.",
                 {"action": {"type": "string", "description": "the action, as plain text"}}, "{action}")]


def toolset_for(env_id: str | None) -> list[Tool]:
    """The tools of ``env_id``, from its folder's ``tools.json``; the generic ``act`` tool if it has none."""
    specs = env_tool_specs(env_id)
    return [Tool.from_spec(spec, f"{env_id}'s tools.json") for spec in specs] or list(_GENERIC)


def action_to_call(toolset: list[Tool], action: str) -> dict[str, Any]:
    """The tool call that stands for an exemplar action (exemplars are stored as action text)."""
    for tool in toolset:
        call = tool.call_for(action)
        if call is not None:
            return call
    return {"name": "act", "arguments": {"action": action}}


class ToolCallingAgent(ReActAgent):
    """Calls env actions as tools. Takes the arguments of :class:`~turngym.agents.react.ReActAgent`."""

    name = "tool"
    observation_role = "tool"
    stop: tuple[str, ...] = ()

    def __init__(self, env_id: str | None = None, **options: Any):
        self.toolset = toolset_for(env_id)
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
        return f"{thought}\n{format_call(action_to_call(self.toolset, action))}"

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
