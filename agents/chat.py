"""The plain chat agent: the observation is the user message and the whole reply is the action.

No format, no exemplars, no parsing: the model's chat template (with its
default system prompt unless ``system_prompt`` is given) renders the
episode as user (observation) / assistant (reply) turns, the last
``window`` turns of them (0: all, one growing token stream). It suits
single-turn tasks (a prompt and a graded reply: the setting of GRPO on
math/QA, and the fair comparison with TRL's GRPOTrainer), tiny models
learning an action vocabulary from scratch, and models already fine-tuned
to answer with bare actions.

This module depends on :mod:`turngym.agents.base` and ``types``.
"""

from __future__ import annotations

from typing import Any

from turngym.agents.base import AgentTurn, Decision, Memory, new_memory, record_turn
from turngym.agents.types import Completion, SamplingParams


class ChatAgent:
    """Observation in, reply out (see the module docstring).

    Args:
        env_id: unused (any env); kept for :func:`~turngym.agents.base.make_agent`.
        system_prompt: a system message, or None for the chat template's default.
        window: past turns kept (0: all).
        temperature, top_p, max_tokens: sampling of each reply.
        stop: stop strings (the reply otherwise ends at the model's end-of-turn token).
    """

    name = "chat"
    uses_engine = True

    def __init__(self, env_id: str | None = None, *, system_prompt: str | None = None, window: int = 0,
                 temperature: float = 1.0, top_p: float = 1.0, max_tokens: int = 256, stop: list[str] | None = None):
        if window < 0:
            raise ValueError(f"window must be >= 0, got {window}")
        self.env_id = env_id
        self.system = system_prompt
        self.window = window
        self.sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                       stop=list(stop or []))

    @property
    def context_mode(self) -> str:
        return "full" if self.window == 0 else "window"

    def start(self, instruction: str, observation: str, info: dict[str, Any], seed: int | None = None) -> Memory:
        return new_memory(instruction, observation, info, seed)

    def prompt(self, memory: Memory) -> AgentTurn:
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.system}] if self.system else []
        turns = memory.turns if self.window == 0 else memory.turns[-self.window:]
        if len(turns) < len(memory.turns):  # the window slid: keep the task statement in front
            task = memory.instruction or memory.first_observation
            messages.append({"role": "user", "content": f"{task}\n(Earlier turns omitted.)"})
        else:
            messages.append({"role": "user", "content": memory.first_observation})
        for turn in turns:
            messages.append({"role": "assistant", "content": turn.response})
            messages.append({"role": "user", "content": turn.observation})
        return AgentTurn(messages=messages, sampling=self.sampling, context_mode=self.context_mode)

    def parse(self, memory: Memory, completion: Completion) -> Decision:
        memory.llm_turns += 1
        text = completion.text or ""
        memory.pending_response = text
        return Decision(action=text.strip())

    def observe(self, memory: Memory, action: str, observation: str, reward: float, info: dict[str, Any]) -> None:
        record_turn(memory, action, observation, reward, info)
