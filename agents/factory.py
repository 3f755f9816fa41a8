"""Build any agent by name: :func:`make_agent` and the table of names it knows (:data:`AGENTS`).

Kept apart from :mod:`turngym.agents.base`, which defines the protocols the
concrete agents implement: this module imports those agents, so base never
has to (no import cycle between the interface and its implementations).

Depends on the concrete agents (:mod:`~turngym.agents.react`,
:mod:`~turngym.agents.preact`, :mod:`~turngym.agents.tool_calling`,
:mod:`~turngym.agents.chat`, :mod:`~turngym.agents.baselines`).
"""

from __future__ import annotations

import difflib
from typing import Any

from turngym.agents.baselines import OracleAgent, RandomAgent
from turngym.agents.chat import ChatAgent
from turngym.agents.preact import PReActAgent
from turngym.agents.react import ReActAgent
from turngym.agents.tool_calling import ToolCallingAgent
from turngym.errors import TurngymError

#: Every agent :func:`make_agent` knows, with a one-line description.
AGENTS: dict[str, str] = {
    "react": "ReAct: 'Thought:' then 'Action:' each turn, few-shot exemplars, last-k-turns window",
    "p-react": "P-ReAct: <action>...</action> first, reasoning after; the env runs while the model reasons",
    "tool": "tool-calling: env actions as JSON tool schemas (chat template tools=), results as tool messages",
    "oracle": "the env's oracle_action() (an expert; wins every solvable task)",
    "random": "a uniformly random admissible action each turn (seeded per episode)",
    "chat": "plain chat: the observation is the user message, the whole reply is the action (no format)",
}

#: Other spellings of the names in :data:`AGENTS` (after lower-casing and ``_`` -> ``-``).
_ALIASES = {"preact": "p-react", "tool-calling": "tool", "tools": "tool", "plain": "chat"}


def agent_key(name: str) -> str:
    """The canonical spelling of an agent name (``"P_ReAct"`` -> ``"p-react"``); unknown names come back normalized."""
    key = name.strip().lower().replace("_", "-")
    return _ALIASES.get(key, key)


def make_agent(name: str, env_id: str | None = None, **options: Any) -> Any:
    """Build an agent by name for an env (the env picks the few-shot exemplars and tool schemas).

    Options go to the agent's constructor (e.g. ``context="workspace"``,
    ``window=4``, ``temperature=0.7``, ``max_tokens=160``).
    """
    key = agent_key(name)
    if key == "react":
        return ReActAgent(env_id=env_id, **options)
    if key == "p-react":
        return PReActAgent(env_id=env_id, **options)
    if key == "tool":
        return ToolCallingAgent(env_id=env_id, **options)
    if key == "chat":
        return ChatAgent(env_id=env_id, **options)
    if key == "oracle":
        return OracleAgent(**options)
    if key == "random":
        return RandomAgent(**options)
    close = difflib.get_close_matches(key, list(AGENTS), n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TurngymError(f"unknown agent {name!r}{hint} (known: {', '.join(AGENTS)})")


__all__ = ["AGENTS", "agent_key", "make_agent"]
