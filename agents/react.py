"""ReAct (Yao et al., 2023, arXiv 2210.03629): a thought, then an action, every turn.

Each reply is::

    Thought: <a sentence or two of reasoning>
    Action: <exactly one env action>

The prompt is a chat rendered with the model's own chat template: a system
message (the format, then few-shot exemplars from the env's folder, replayed
by :mod:`turngym.agents.exemplars`), the env's first observation (instruction +
problem) as the user message, then past turns as assistant / user
("Observation: ...") messages, bounded by the context mode of
:mod:`turngym.agents.context` (default: the last 4 turns, as verl-agent's
memory does).

Parsing: the first ``Action:`` line is the action (markdown emphasis and
surrounding quotes/backticks are dropped), or, when it opens a
``<function=NAME>`` block (SWE's tool calls), the lines up to its
``</function>``; failing that, the text after the
first ``action:`` / ``actions:`` label inside a line, to the end of that line. A reply without one is a format
failure: the whole reply goes to the env, which answers with feedback, and
the step is flagged (``Step.info["format_ok"] = False``); nothing raises.

:class:`ReActAgent` also carries the machinery P-ReAct and the tool-calling
agent share (memory, context modes, summaries, the workspace report); they
override the format: ``format_rules``, ``render_reply``, ``parse_action``.

This module depends on :mod:`turngym.agents` (base, context, exemplars, types).
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from turngym.agents.base import AgentTurn, Decision, Memory, new_memory, record_turn
from turngym.agents.context import (
    WORKSPACE_RULES,
    ContextConfig,
    build_messages,
    clean_summary,
    extract_report,
    needs_summary,
)
from turngym.agents.exemplars import Exemplar, exemplars_for
from turngym.agents.types import Completion, SamplingParams

_ACTION_LINE = re.compile(r"^[\s*_#>-]*action\s*(?:\d+\s*)?[*_]*\s*:[*_]*[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
# Small models often put the label inside a sentence ("... and action: 4 * 8") or write "Actions:".
_ACTION_INLINE = re.compile(r"\bactions?\s*[*_]*\s*:[*_]*[ \t]*(.*)$", re.IGNORECASE | re.MULTILINE)
_REPORT_START = re.compile(r"<report>", re.IGNORECASE)
#: Longest text sent to an env as one action (longer replies are cut: envs cap actions anyway).
MAX_ACTION_CHARS = 2000
#: An action that opens a ``<function=NAME>`` block (R2E-Gym's text form of a tool call, which SWE uses) runs to
#: its ``</function>``, across lines, up to this many characters.
_FUNCTION_BLOCK = re.compile(r"[\s`]*(<function\s*=.*?</function>)", re.S)
MAX_BLOCK_CHARS = 8000


def strip_decoration(text: str) -> str:
    """Drop markdown emphasis, surrounding quotes/backticks and whitespace from an action."""
    text = _REPORT_START.split(text, maxsplit=1)[0].strip()
    for _ in range(3):
        before = text
        text = text.strip().strip("*_").strip()
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "`'\"":
            text = text[1:-1]
        if text.startswith("```") or text.endswith("```"):
            text = text.strip("`")
        if text == before:
            break
    return text.strip()


def raw_action(text: str) -> str:
    """What the env gets when a reply does not follow the format: the reply itself, trimmed."""
    return text.strip()[:MAX_ACTION_CHARS]


class ReActAgent:
    """Thought/Action agent.

    Args:
        env_id: the env it plays (picks the few-shot exemplars); None for none.
        context: context mode, "window" (default), "full", "workspace" or "summary".
        window: turns kept in "window" mode.
        temperature, top_p, max_tokens: sampling of each reply.
        num_exemplars: how many exemplars to show (None: all the env has; 0: none).
        summary_trigger_tokens, max_summaries: "summary" mode settings (see ContextConfig).
        system_prompt: replace the whole system message.
        format_reminder: end every user/observation message with a one-line reminder of the format.
        prefill: start each reply with the format's first words (ReAct: "Thought:"; P-ReAct:
            "<action>") as prompt tokens, where the engine takes token ids.

    Small models need the last two: SmolLM2-135M, given the format and two
    exemplars in the system message, followed it in 0 of 8 first replies on
    Game24 (it answered in prose); with the reminder and "Thought:" prefilled,
    in 7 of 8.
    """

    name = "react"
    uses_engine = True
    observation_role = "user"
    stop: tuple[str, ...] = ("\nObservation:",)

    def __init__(self, env_id: str | None = None, *, context: str = "window", window: int = 4,
                 temperature: float = 0.7, top_p: float = 1.0, max_tokens: int = 160,
                 num_exemplars: int | None = None, summary_trigger_tokens: int = 1536, max_summaries: int = 8,
                 system_prompt: str | None = None, format_reminder: bool = True, prefill: bool = True):
        self.env_id = env_id
        self.context = ContextConfig(mode=context, window=window, summary_trigger_tokens=summary_trigger_tokens,
                                     max_summaries=max_summaries)
        extra = 128 if context == "workspace" else 0  # the report is written every turn
        self.sampling = SamplingParams(max_tokens=max_tokens + extra, temperature=temperature, top_p=top_p,
                                       stop=list(self.stop))
        shots = exemplars_for(env_id)
        self.exemplars: tuple[Exemplar, ...] = shots if num_exemplars is None else shots[:num_exemplars]
        self._system_override = system_prompt
        self.format_reminder = format_reminder
        self.prefill = prefill
        self.system = system_prompt or self.system_prompt()
        self.tools: list[dict[str, Any]] | None = None

    # ---- format (what subclasses override) -------------------------------------------------------
    def format_rules(self) -> str:
        return ("You are an agent acting in a text environment. Each turn, think briefly, then act. "
                "Reply in exactly this format:\n"
                "Thought: <one or two sentences of reasoning>\n"
                "Action: <exactly one action>")

    def render_reply(self, thought: str, action: str) -> str:
        """An exemplar reply in this agent's format."""
        return f"Thought: {thought}\nAction: {action}"

    def reminder(self) -> str:
        """The one-line format reminder that ends every user/observation message."""
        return "Reply with one line 'Thought: ...' and then one line 'Action: ...'."

    def reply_prefix(self) -> str:
        """The words every reply starts with (prefilled when ``prefill``)."""
        return "Thought:"

    def format_observation(self, observation: str) -> str:
        return f"Observation: {observation}"

    def parse_action(self, text: str) -> tuple[str, bool, str]:
        """(action, format_ok, note) for a reply."""
        match = _ACTION_LINE.search(text) or _ACTION_INLINE.search(text)
        if match is None:
            return raw_action(text), False, "no 'Action:' line"
        block = _FUNCTION_BLOCK.match(text, match.start(1)) or _FUNCTION_BLOCK.match(text, match.end())
        if block is not None:  # a multi-line function call (SWE's tools): the whole block is the action
            return block.group(1)[:MAX_BLOCK_CHARS], True, ""
        action = strip_decoration(match.group(1))
        if not action:  # "Action:" with the action on the next line
            rest = text[match.end():].strip().splitlines()
            action = strip_decoration(rest[0]) if rest else ""
        if not action:
            return raw_action(text), False, "empty action"
        return action[:MAX_ACTION_CHARS], True, ""

    # ---- system prompt ---------------------------------------------------------------------------
    def system_prompt(self) -> str:
        parts = [self.format_rules()]
        if self.context.mode == "workspace":
            parts.append(WORKSPACE_RULES)
        if self.exemplars:
            parts.append("Examples of solved tasks (the rules of your task are in the user message):")
            for i, shot in enumerate(self.exemplars, 1):
                lines = [f"Example {i}:", shot.problem]
                for step in shot.steps:
                    lines.append(self.render_reply(step.thought, step.action))
                    lines.append(self.format_observation(step.observation))
                parts.append("\n".join(lines))
        return "\n\n".join(parts)

    # ---- the agent interface ---------------------------------------------------------------------
    @property
    def context_mode(self) -> str:
        return self.context.mode

    def bind(self, engine: Any) -> None:
        """Called by the runner with its engine before the first episode (a hook for subclasses)."""

    def start(self, instruction: str, observation: str, info: dict[str, Any], seed: int | None = None) -> Memory:
        return new_memory(instruction, observation, info, seed)

    def prompt(self, memory: Memory) -> AgentTurn:
        summarize = needs_summary(memory, self.context)
        messages = build_messages(self.system, memory, self.context, format_observation=self.format_observation,
                                  observation_role=self.observation_role, summarize=summarize,
                                  reminder=self.reminder() if self.format_reminder else "")
        sampling = self.sampling
        prefix = self.reply_prefix() if self.prefill else ""
        if summarize:
            sampling = replace(sampling, max_tokens=self.context.summary_max_tokens, stop=[])
            prefix = ""
        kind = "summarize" if summarize else "act"
        memory.extra["pending_kind"] = kind
        return AgentTurn(messages=messages, sampling=sampling, tools=self.tools, context_mode=self.context.mode,
                         kind=kind, response_prefix=prefix)

    def parse(self, memory: Memory, completion: Completion) -> Decision:
        text = completion.text or ""
        memory.llm_turns += 1
        if memory.extra.pop("pending_kind", "act") == "summarize":
            memory.summary = clean_summary(text)
            memory.summary_from = len(memory.turns)
            memory.num_summaries += 1
            return Decision(action=None)
        memory.pending_response = text
        if self.context.mode == "workspace":
            report = extract_report(text)
            if report is not None:
                memory.report = report
        try:
            action, ok, note = self.parse_action(text)
        except Exception as exc:  # a parser bug must not end the episode: the env judges the raw text
            action, ok, note = raw_action(text), False, f"parser error: {exc!r}"
        return Decision(action=action, format_ok=ok, note=note)

    def observe(self, memory: Memory, action: str, observation: str, reward: float, info: dict[str, Any]) -> None:
        record_turn(memory, action, observation, reward, info)
