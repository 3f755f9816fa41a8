"""The agent interface: per-episode memory kept apart from the policy.

One agent object serves N live episodes at once. Everything an episode
needs to remember lives in its :class:`Memory`; the agent itself is the
policy (prompt format, parser, context management) and holds no episode
state, so the runner can batch the prompts of every live episode into one
``engine.generate`` call.

Two kinds of agents:

* **LLM agents** (:class:`LLMAgent`: ReAct, P-ReAct, tool-calling) turn a
  memory into a chat request (:meth:`LLMAgent.prompt` -> :class:`AgentTurn`)
  and a completion into a :class:`Decision` (:meth:`LLMAgent.parse`). A
  parse failure is never an exception: the raw text goes to the env, which
  answers with feedback (an invalid action), and ``Decision.format_ok`` is
  False.
* **Direct agents** (:class:`DirectAgent`: oracle, random) act without a
  model. They may ask their episode's env one question per turn by method
  name (:meth:`DirectAgent.env_query`, e.g. ``"oracle_action"``), which the
  runner answers through its env pool, so the env may live in another
  process.

Both kinds get ``start`` (a fresh memory from the first observation) and
``observe`` (append the env's answer to the memory).

:func:`turngym.agents.factory.make_agent` builds any agent by name
(``react``, ``p-react``, ``tool``, ``chat``, ``oracle``, ``random``); it
lives there, not here, because it imports the concrete agents, which import
this module.

This module depends on :mod:`turngym.agents.types` only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from turngym.agents.types import Completion, SamplingParams


@dataclass
class Turn:
    """One finished turn of an episode, as the agent remembers it."""

    response: str
    action: str
    observation: str
    reward: float = 0.0
    action_valid: bool = True


@dataclass
class Memory:
    """Everything one episode's agent remembers; the agent object holds none of it.

    Attributes:
        instruction: the task's instruction (``info["instruction"]``).
        first_observation: the observation ``reset`` returned (instruction + problem).
        observation: the latest observation.
        info: the latest ``info`` dict from the env.
        turns: the finished turns, oldest first.
        seed: the episode's seed (random agents draw from ``rng``, seeded with it).
        report: the evolving report of the Markovian workspace mode.
        summary: the latest summary (summarization mode), or None.
        summary_from: index into ``turns`` of the first turn not covered by ``summary``.
        num_summaries: how many summaries this episode wrote.
        llm_turns: model calls so far, summaries included.
        pending_response: the response of the turn in flight (set by ``parse``).
        extra: room for agent-specific state.
    """

    instruction: str
    first_observation: str
    observation: str
    info: dict[str, Any]
    turns: list[Turn] = field(default_factory=list)
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random)
    report: str = ""
    summary: str | None = None
    summary_from: int = 0
    num_summaries: int = 0
    llm_turns: int = 0
    pending_response: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Env steps taken so far."""
        return len(self.turns)


@dataclass
class AgentTurn:
    """One request an LLM agent makes: chat messages to complete and how to sample.

    Attributes:
        messages: the chat (``{"role": ..., "content": ...}``) the engine renders
            with its model's chat template.
        sampling: sampling parameters for this request (the runner sets the seed).
        tools: JSON tool schemas handed to the chat template (tool-calling agents).
        context_mode: how ``messages`` was built ("full", "window", "workspace",
            "summary"); recorded on the :class:`~turngym.agents.types.Step`.
        kind: "act" (the answer goes to the env) or "summarize" (a memory-only
            turn: the answer becomes the episode's summary; no env step).
        response_prefix: text the reply is started with (e.g. "Thought:"): put
            after the generation prompt as prompt tokens where the engine takes
            token ids; ``parse`` then sees it in front of the sampled text.
    """

    messages: list[dict[str, Any]]
    sampling: SamplingParams
    tools: list[dict[str, Any]] | None = None
    context_mode: str = "window"
    kind: str = "act"
    response_prefix: str = ""


@dataclass
class Decision:
    """What a completion means.

    Attributes:
        action: the text sent to the env, or None for a memory-only turn.
        format_ok: False when the response did not follow the agent's format
            (the raw text is sent instead, and the env answers with feedback).
        note: why the format check failed, for logs.
    """

    action: str | None
    format_ok: bool = True
    note: str = ""


@runtime_checkable
class Agent(Protocol):
    """What every agent has."""

    name: str
    #: True for agents that need an engine (their turns go through ``prompt``/``parse``).
    uses_engine: bool

    def start(self, instruction: str, observation: str, info: dict[str, Any], seed: int | None = None) -> Memory:
        """A fresh memory for an episode that ``reset`` just started."""
        ...

    def observe(self, memory: Memory, action: str, observation: str, reward: float, info: dict[str, Any]) -> None:
        """Record the env's answer to ``action``."""
        ...


@runtime_checkable
class LLMAgent(Agent, Protocol):
    """An agent whose turns are model completions."""

    def prompt(self, memory: Memory) -> AgentTurn:
        """The request for the next turn of this episode."""
        ...

    def parse(self, memory: Memory, completion: Completion) -> Decision:
        """Read a completion; never raises (bad format -> ``Decision(raw_text, format_ok=False)``)."""
        ...


@runtime_checkable
class DirectAgent(Agent, Protocol):
    """An agent that acts without a model (baselines)."""

    def env_query(self, memory: Memory) -> str | None:
        """Name of an env method (on ``env.unwrapped``) whose result ``act`` needs, or None."""
        ...

    def act(self, memory: Memory, answer: Any = None) -> str:
        """The next action; ``answer`` is the result of the ``env_query`` call."""
        ...


def is_llm_agent(agent: Any) -> bool:
    return bool(getattr(agent, "uses_engine", False))


def new_memory(instruction: str, observation: str, info: dict[str, Any], seed: int | None) -> Memory:
    """A memory with its rng seeded from the episode seed (shared by every agent's ``start``)."""
    return Memory(instruction=instruction, first_observation=observation, observation=observation, info=dict(info),
                  seed=seed, rng=random.Random(seed))


def record_turn(memory: Memory, action: str, observation: str, reward: float, info: dict[str, Any]) -> None:
    """Append a finished turn to ``memory`` (shared by every agent's ``observe``)."""
    memory.turns.append(Turn(response=memory.pending_response, action=action, observation=observation,
                             reward=float(reward), action_valid=bool(info.get("action_valid", True))))
    memory.pending_response = ""
    memory.observation = observation
    memory.info = dict(info)
