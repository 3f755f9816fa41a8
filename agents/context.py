"""Context management: what an LLM agent's prompt shows of its episode, and its exact token ids.

Four modes (``ContextConfig.mode``), recorded on every
:class:`~turngym.agents.types.Step` as ``context_mode``:

``full``
    The whole episode as a chat: instruction + problem, then every
    (response, observation) pair. Prompt t+1 extends prompt t.
``window`` (default)
    The instruction + problem message and the last ``window`` turns, as
    verl-agent's memory does; older turns are replaced by a one-line note.
    Prompts stay bounded on long episodes.
``workspace``
    A Markovian workspace in the style of IterResearch (Chen et al., 2025,
    arXiv 2511.07327): each turn sees only the task, an evolving report the
    agent rewrites every turn (``<report>...</report>`` in its reply), and
    the last action and observation. The prompt size is constant.
``summary``
    Summarization-based context management in the style of SUPO (Lu et al.,
    2025, arXiv 2510.06727): the full chat grows until its estimated size
    passes ``summary_trigger_tokens``; then the agent's next turn is a
    summarization turn (no env step; ``Step.info["kind"] == "summarize"``)
    and the context restarts as task + summary + latest observation. At most
    ``max_summaries`` per episode, after which the chat grows again.

Token ids (token in, token out). :class:`ChatRenderer` turns a request into
the engine's prompt. When a request's messages extend the previous request
of the same episode by exactly that request's answer (an assistant message
with the response text) plus new messages, and the engine exposes a HF
tokenizer with a chat template, the new prompt ids are the previous prompt
ids + the sampled response ids + the template's ids for the new messages
only: the model's own tokens are never re-tokenized, so "full"-mode steps
(and "window" steps before the window slides) form one token stream that a
trainer can train in a single context. Other prompts are rendered afresh
by ``engine.render``; every Step keeps the exact ``prompt_ids`` the model
saw either way, so step-wise training is always exact.

This module depends on :mod:`turngym.agents.base` and :mod:`turngym.agents.types`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from turngym.agents.base import Memory
from turngym.agents.engines.base import LocalEngine

CONTEXT_MODES = ("full", "window", "workspace", "summary")

SUMMARY_REQUEST = (
    "Your context is nearly full, so the history above will be replaced by your summary. Summarize the episode so "
    "far for yourself: the goal, the moves you made and what the feedback taught you, the current state, and what "
    "to do next. Write only the summary."
)

WORKSPACE_RULES = (
    "You will not see your earlier turns. Each turn you see the task, your report and the last observation. After "
    "your action, rewrite your report between <report> and </report>: the state, what you tried, what you learned, "
    "your plan. Keep it short."
)

_REPORT = re.compile(r"<report>(.*?)(?:</report>|$)", re.DOTALL | re.IGNORECASE)
_SUMMARY_TAG = re.compile(r"</?summary>", re.IGNORECASE)


@dataclass
class ContextConfig:
    """How an LLM agent builds its prompt from its memory.

    Attributes:
        mode: "full", "window", "workspace" or "summary" (see the module docstring).
        window: turns shown in "window" mode (verl-agent's history length).
        summary_trigger_tokens: "summary" mode summarizes when the next prompt
            would pass this many tokens (estimated from the last prompt's length).
        max_summaries: most summaries per episode in "summary" mode.
        summary_max_tokens: token budget of one summary.
    """

    mode: str = "window"
    window: int = 4
    summary_trigger_tokens: int = 1536
    max_summaries: int = 8
    summary_max_tokens: int = 256

    def __post_init__(self) -> None:
        if self.mode not in CONTEXT_MODES:
            raise ValueError(f"unknown context mode {self.mode!r}; use one of {', '.join(CONTEXT_MODES)}")
        if self.window < 1:
            raise ValueError(f"ContextConfig.window must be >= 1, got {self.window}")
        if self.summary_trigger_tokens < 1 or self.max_summaries < 0 or self.summary_max_tokens < 1:
            raise ValueError("ContextConfig: summary_trigger_tokens and summary_max_tokens must be >= 1, "
                             "max_summaries >= 0")


def estimate_tokens(text: str) -> int:
    """A rough token count (about 4 characters per token for English and numbers)."""
    return (len(text) + 3) // 4


def needs_summary(memory: Memory, config: ContextConfig) -> bool:
    """True when "summary" mode should spend this turn summarizing.

    The estimate is the last prompt's exact length + the last response + the
    new observation (the runner stores the exact lengths in ``memory.extra``),
    or a character-based estimate of the whole chat when those are unknown.
    """
    if config.mode != "summary" or memory.num_summaries >= config.max_summaries:
        return False
    shown = memory.turns[memory.summary_from:]
    if not shown:
        return False
    last_prompt = memory.extra.get("last_prompt_tokens")
    if last_prompt is not None:
        size = last_prompt + memory.extra.get("last_response_tokens", 0) + estimate_tokens(memory.observation) + 8
    else:
        size = estimate_tokens(memory.first_observation + (memory.summary or ""))
        size += sum(estimate_tokens(t.response + t.observation) + 8 for t in shown)
    return size > config.summary_trigger_tokens


def build_messages(system: str, memory: Memory, config: ContextConfig, *,
                   format_observation: Callable[[str], str] = lambda obs: obs,
                   observation_role: str = "user",
                   summarize: bool = False, reminder: str = "") -> list[dict[str, Any]]:
    """The chat for the next turn of ``memory`` under ``config``.

    ``format_observation`` wraps each env observation (e.g. "Observation: ...");
    ``observation_role`` is "user", or "tool" for tool-calling agents.
    ``summarize`` appends the summarization request ("summary" mode).
    ``reminder`` (a one-line format reminder) ends the first user message and
    every observation message alike, so earlier messages never change.
    """
    tail = f"\n\n{reminder}" if reminder else ""
    if config.mode == "workspace":
        return [{"role": "system", "content": system}, {"role": "user", "content": workspace_view(memory) + tail}]

    first = memory.first_observation
    turns = memory.turns
    if config.mode == "summary" and memory.summary is not None:
        first = (f"{first}\n\nSummary of your earlier turns (written by you):\n{memory.summary}")
        turns = turns[memory.summary_from:]
        if not turns and memory.turns:
            first += f"\n\nLatest observation:\n{format_observation(memory.observation)}"
    elif config.mode == "window" and len(turns) > config.window:
        hidden = len(turns) - config.window
        turns = turns[hidden:]
        first += (f"\n\n[{hidden} earlier turn{'s' if hidden > 1 else ''} not shown; "
                  f"the last {config.window} follow.]")

    messages: list[dict[str, Any]] = [{"role": "system", "content": system},
                                      {"role": "user", "content": first + tail}]
    for turn in turns:
        messages.append({"role": "assistant", "content": turn.response})
        messages.append({"role": observation_role, "content": format_observation(turn.observation) + tail})
    if summarize:
        if messages[-1]["role"] == "user":
            messages[-1] = {"role": "user", "content": f"{messages[-1]['content']}\n\n{SUMMARY_REQUEST}"}
        else:
            messages.append({"role": "user", "content": SUMMARY_REQUEST})
    return messages


def workspace_view(memory: Memory) -> str:
    """The one user message of the Markovian workspace: task, report, last action and observation."""
    report = memory.report.strip() or "(empty: this is your first turn)"
    text = f"{memory.first_observation}\n\nYour report:\n{report}"
    if memory.turns:
        last = memory.turns[-1]
        text += (f"\n\nTurn {len(memory.turns) + 1}. Your last action: {last.action.strip()}\n"
                 f"Observation:\n{last.observation}")
    return text


def extract_report(text: str) -> str | None:
    """The last ``<report>...</report>`` of a reply (an unclosed one runs to the end), or None."""
    found = _REPORT.findall(text)
    return found[-1].strip() if found else None


def clean_summary(text: str) -> str:
    return _SUMMARY_TAG.sub("", text).strip()


# ---- prompt ids: re-render, or continue the episode's token stream ------------------------------


@dataclass
class PreviousRequest:
    """What the renderer remembers of an episode's last request."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    prompt_ids: list[int]
    response_text: str
    response_ids: list[int]


def _template_ids(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, add_generation_prompt: bool) -> list[int]:
    """Render then tokenize without added special tokens: the way the engines' ``render`` does it."""
    kwargs = {"tools": tools} if tools else {}
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         **kwargs)
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


class ChatRenderer:
    """Turns an agent's chat request into the engine's prompt, continuing token streams where it can.

    Args:
        engine: any engine; its ``render(messages, tools)`` is the fallback.
            If it has a ``tokenizer`` attribute with a chat template and its
            ``render`` returns token ids, continuation is enabled.
    """

    _PROBE_SYSTEM, _PROBE_USER, _PROBE_ANSWER = "S", "U", "A"

    def __init__(self, engine: Any):
        self.engine = engine
        self.tokenizer = engine.tokenizer if isinstance(engine, LocalEngine) else None
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None) is None:
            self.tokenizer = None
        self.continuations = 0
        self.renders = 0

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
               previous: PreviousRequest | None, response_prefix: str = "") -> tuple[Any, bool, str]:
        """The prompt for ``messages``, whether it continues ``previous``'s token stream, and the prefix applied.

        ``response_prefix`` (e.g. "Thought:") is appended after the generation
        prompt so the reply starts in the agent's format; its tokens are
        prompt tokens (the model did not sample them). Engines whose prompts
        are chat messages cannot take it: then the applied prefix is "".
        """
        prompt, continued = None, False
        if previous is not None and self.tokenizer is not None and self._extends(messages, tools, previous):
            suffix = self._suffix(messages[len(previous.messages) + 1:], tools, previous.response_ids)
            if suffix is not None:
                self.continuations += 1
                prompt, continued = previous.prompt_ids + previous.response_ids + suffix, True
        if prompt is None:
            self.renders += 1
            prompt = self.engine.render(messages, tools=tools)
        if not response_prefix:
            return prompt, continued, ""
        if isinstance(prompt, str):
            return prompt + response_prefix, continued, response_prefix
        if isinstance(prompt, list) and (not prompt or isinstance(prompt[0], int)) and self.tokenizer is not None:
            ids = [int(i) for i in self.tokenizer(response_prefix, add_special_tokens=False)["input_ids"]]
            return list(prompt) + ids, continued, response_prefix
        return prompt, continued, ""

    @staticmethod
    def _extends(messages: list[dict[str, Any]], tools: Any, previous: PreviousRequest) -> bool:
        n = len(previous.messages)
        return (tools == previous.tools and len(messages) > n + 1 and messages[:n] == previous.messages
                and messages[n] == {"role": "assistant", "content": previous.response_text}
                and isinstance(previous.prompt_ids, list) and previous.response_ids is not None)

    def _suffix(self, new_messages: list[dict[str, Any]], tools: Any, response_ids: list[int]) -> list[int] | None:
        """Template ids that close the assistant turn and render ``new_messages`` + the generation prompt.

        Found by rendering a probe chat with and without the new messages;
        None if the template is not prefix-stable for it (then the caller
        re-renders).
        """
        tok = self.tokenizer
        base = [{"role": "system", "content": self._PROBE_SYSTEM}, {"role": "user", "content": self._PROBE_USER}]
        answered = base + [{"role": "assistant", "content": self._PROBE_ANSWER}]
        try:
            opened = _template_ids(tok, base, tools, True)
            closed = _template_ids(tok, answered, tools, False)
            full = _template_ids(tok, answered + list(new_messages), tools, True)
            answer_ids = [int(i) for i in tok(self._PROBE_ANSWER, add_special_tokens=False)["input_ids"]]
        except Exception:  # a template that rejects the probe: fall back to re-rendering
            return None
        start = len(opened)
        if (closed[:start] != opened or closed[start:start + len(answer_ids)] != answer_ids
                or full[:len(closed)] != closed):
            return None
        close_ids = closed[start + len(answer_ids):]  # e.g. <|im_end|> "\n"
        # The model may have sampled the start of the closing (its end-of-turn token): don't repeat it.
        overlap = 0
        for k in range(min(len(close_ids), len(response_ids)), 0, -1):
            if response_ids[-k:] == close_ids[:k]:
                overlap = k
                break
        return close_ids[overlap:] + full[len(closed):]
