"""The plain chat agent: observation in as the user message, reply out as the action, history as chat turns."""

from __future__ import annotations

from turngym.agents.factory import make_agent
from turngym.agents.types import Completion


def test_chat_agent_builds_the_transcript_and_acts_with_the_reply():
    agent = make_agent("chat", max_tokens=8)
    mem = agent.start("go right", "you are at 0 of 2 .", {})
    turn = agent.prompt(mem)
    assert turn.messages == [{"role": "user", "content": "you are at 0 of 2 ."}]
    assert turn.response_prefix == "" and turn.sampling.max_tokens == 8
    decision = agent.parse(mem, Completion(text=" right \n"))
    assert decision.action == "right"
    agent.observe(mem, "right", "you are at 1 of 2 .", 0.0, {"action_valid": True})
    assert agent.prompt(mem).messages == [
        {"role": "user", "content": "you are at 0 of 2 ."},
        {"role": "assistant", "content": " right \n"},
        {"role": "user", "content": "you are at 1 of 2 ."},
    ]


def test_chat_agent_window_keeps_the_task_and_the_last_turns():
    agent = make_agent("plain", system_prompt="Be brief.", window=1)
    mem = agent.start("go right", "start", {})
    for k in range(3):
        agent.parse(mem, Completion(text=f"a{k}"))
        agent.observe(mem, f"a{k}", f"o{k}", 0.0, {})
    msgs = agent.prompt(mem).messages
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1]["content"].startswith("go right") and "omitted" in msgs[1]["content"]
    assert msgs[2:] == [{"role": "assistant", "content": "a2"}, {"role": "user", "content": "o2"}]
    assert agent.context_mode == "window"
