"""Agents: formats, parsing (never raising), prompts and context modes, exemplars, baselines."""

from __future__ import annotations

import json

import pytest

import turngym
from turngym.agents.base import AgentTurn, Decision, Memory, new_memory
from turngym.agents.context import SUMMARY_REQUEST, ChatRenderer, ContextConfig, PreviousRequest, build_messages
from turngym.agents.engines import ScriptedEngine
from turngym.agents.exemplars import exemplars_for
from turngym.agents.factory import make_agent
from turngym.agents.preact import PReActAgent
from turngym.agents.react import ReActAgent
from turngym.agents.tool_calling import ToolCallingAgent, action_to_call, find_tool_calls, toolset_for
from turngym.agents.types import Completion
from turngym.envs import env_class, env_exemplars
from turngym.errors import TurngymError

G24 = "turngym/Game24-v0"
BW = "turngym/BlocksWorld-v0"


def _memory(env_id=G24, task_id="test/0") -> tuple[Memory, object]:
    env = turngym.make(env_id)
    obs, info = env.reset(options={"task_id": task_id})
    return new_memory(info["instruction"], obs, info, seed=0), env


def _fill(agent, memory, n):
    """n fake turns through the agent's own observe()."""
    for i in range(n):
        memory.pending_response = f"Thought: t{i}\nAction: a{i}"
        agent.observe(memory, f"a{i}", f"obs{i}", 0.0, {"action_valid": False})


# ---- ReAct ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, action", [
    ("Thought: 4 * 6 makes 24.\nAction: 4 * 6 = 24 (left: 24)", "4 * 6 = 24 (left: 24)"),
    ("Thought: x\n**Action:** `13 - 9`", "13 - 9"),
    ("thought: x\naction: \"pick up the red block\"\nObservation:", "pick up the red block"),
    ("Thought: two lines\nAction:\nstack red on blue", "stack red on blue"),
    ("Thought: first\nAction: 1 + 2\nThought: second\nAction: 3 + 4", "1 + 2"),
    ("Thought: 6 * 8 = 48 and action: 4 * 8 = 32\nObservation:", "4 * 8 = 32"),
    ("Thought: 24\nActions: 1 + 11 = 12", "1 + 11 = 12"),
])
def test_react_parses_the_action_line(text, action):
    agent = ReActAgent(G24)
    memory, _ = _memory()
    agent.prompt(memory)
    decision = agent.parse(memory, Completion(text=text))
    assert decision == Decision(action=action, format_ok=True)
    assert memory.pending_response == text


@pytest.mark.parametrize("text", ["I think the answer is 24", "", "Action:", "   \n\n", "Thought: only thinking"])
def test_react_parse_failures_send_the_raw_text(text):
    agent = ReActAgent(G24)
    memory, env = _memory()
    agent.prompt(memory)
    decision = agent.parse(memory, Completion(text=text))
    assert decision.format_ok is False and decision.note
    assert decision.action == text.strip()
    obs, _, _, _, info = env.step(decision.action)  # the env answers with feedback, nothing raises
    assert info["action_valid"] is False and obs


def test_react_parser_bug_is_a_format_failure_not_a_crash(monkeypatch):
    agent = ReActAgent(G24)
    memory, _ = _memory()
    agent.prompt(memory)
    monkeypatch.setattr(agent, "parse_action", lambda text: 1 / 0)
    decision = agent.parse(memory, Completion(text="Action: 4 * 6"))
    assert decision.format_ok is False and "ZeroDivisionError" in decision.note
    assert decision.action == "Action: 4 * 6"


def test_react_prompt_is_a_chat_with_format_exemplars_and_the_first_observation():
    agent = ReActAgent(G24)
    memory, _ = _memory()
    turn = agent.prompt(memory)
    assert isinstance(turn, AgentTurn) and turn.kind == "act" and turn.context_mode == "window"
    assert [m["role"] for m in turn.messages] == ["system", "user"]
    system = turn.messages[0]["content"]
    assert "Thought:" in system and "Action:" in system and "Example 1:" in system
    assert "Input: 4 5 11 12" in system  # the train-split exemplar, replayed in the env
    assert turn.messages[1]["content"] == memory.first_observation + "\n\n" + agent.reminder()
    assert memory.instruction in turn.messages[1]["content"]
    assert turn.sampling.stop == ["\nObservation:"] and turn.response_prefix == "Thought:"
    bare = ReActAgent(G24, format_reminder=False, prefill=False).prompt(memory)
    assert bare.messages[1]["content"] == memory.first_observation and bare.response_prefix == ""


def test_window_keeps_the_instruction_and_the_last_k_turns():
    agent = ReActAgent(G24, window=3)
    memory, _ = _memory()
    _fill(agent, memory, 7)
    messages = agent.prompt(memory).messages
    assert [m["role"] for m in messages] == ["system", "user"] + ["assistant", "user"] * 3
    assert messages[1]["content"].startswith(memory.first_observation)
    assert "4 earlier turns not shown" in messages[1]["content"]
    assert [m["content"] for m in messages[2::2]] == [f"Thought: t{i}\nAction: a{i}" for i in (4, 5, 6)]
    tail = "\n\n" + agent.reminder()
    assert [m["content"] for m in messages[3::2]] == [f"Observation: obs{i}{tail}" for i in (4, 5, 6)]


def test_window_before_it_fills_and_full_mode_show_everything():
    for agent in (ReActAgent(G24, window=4), ReActAgent(G24, context="full")):
        memory, _ = _memory()
        _fill(agent, memory, 3)
        messages = agent.prompt(memory).messages
        assert len(messages) == 2 + 2 * 3
        assert messages[1]["content"] == memory.first_observation + "\n\n" + agent.reminder()
    agent = ReActAgent(G24, context="full")
    memory, _ = _memory()
    _fill(agent, memory, 12)
    assert len(agent.prompt(memory).messages) == 2 + 2 * 12


def test_workspace_mode_shows_task_report_and_last_observation_only():
    agent = ReActAgent(G24, context="workspace")
    memory, _ = _memory()
    turn = agent.prompt(memory)
    assert turn.context_mode == "workspace" and [m["role"] for m in turn.messages] == ["system", "user"]
    assert "<report>" in turn.messages[0]["content"]
    assert "(empty" in turn.messages[1]["content"]
    reply = "Thought: try\nAction: 4 * 6\n<report>Tried 4 * 6 first; keep 5 for later.</report>"
    decision = agent.parse(memory, Completion(text=reply))
    assert decision.action == "4 * 6"
    agent.observe(memory, decision.action, "Invalid move '4 * 6': no.", 0.0, {"action_valid": False})
    for i in range(5):
        memory.pending_response = "x"
        agent.observe(memory, f"a{i}", f"obs{i}", 0.0, {"action_valid": False})
    user = agent.prompt(memory).messages[1]["content"]
    assert "Tried 4 * 6 first; keep 5 for later." in user
    assert "Your last action: a4" in user and "obs4" in user and "obs3" not in user
    assert user.startswith(memory.first_observation)


def test_summary_mode_summarizes_when_the_context_nears_the_limit():
    agent = ReActAgent(G24, context="summary", summary_trigger_tokens=600, max_summaries=1)
    memory, _ = _memory()
    assert agent.prompt(memory).kind == "act"
    for i in range(30):
        turn = agent.prompt(memory)
        if turn.kind == "summarize":
            break
        agent.parse(memory, Completion(text=f"Thought: step {i}\nAction: 1 + 1"))
        agent.observe(memory, "1 + 1", f"Invalid move number {i}.", 0.0, {"action_valid": False})
    assert turn.kind == "summarize" and turn.context_mode == "summary"
    assert SUMMARY_REQUEST in turn.messages[-1]["content"]
    assert turn.sampling.stop == [] and turn.sampling.max_tokens == agent.context.summary_max_tokens
    n_turns = len(memory.turns)
    decision = agent.parse(memory, Completion(text="<summary>Goal: 24. Tried 1 + 1, invalid.</summary>"))
    assert decision.action is None  # a memory-only turn
    assert memory.summary == "Goal: 24. Tried 1 + 1, invalid." and memory.summary_from == n_turns
    after = agent.prompt(memory)
    assert after.kind == "act" and len(after.messages) == 2
    assert "Goal: 24. Tried 1 + 1, invalid." in after.messages[1]["content"]
    assert f"Invalid move number {i - 1}." in after.messages[1]["content"]  # the latest observation
    for _ in range(40):  # max_summaries=1: no second summary however long it grows
        agent.parse(memory, Completion(text="Thought: a\nAction: 1 + 1"))
        agent.observe(memory, "1 + 1", "Invalid.", 0.0, {"action_valid": False})
        assert agent.prompt(memory).kind == "act"


def test_summary_trigger_uses_the_exact_prompt_length_when_known():
    config = ContextConfig(mode="summary", summary_trigger_tokens=1000)
    agent = ReActAgent(G24, context="summary", summary_trigger_tokens=1000)
    memory, _ = _memory()
    _fill(agent, memory, 1)
    memory.extra.update(last_prompt_tokens=990, last_response_tokens=20)
    assert agent.prompt(memory).kind == "summarize"
    memory.extra.update(last_prompt_tokens=100, last_response_tokens=20)
    assert agent.prompt(memory).kind == "act"
    assert build_messages("S", memory, config)[0] == {"role": "system", "content": "S"}


def test_context_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown context mode"):
        ContextConfig(mode="everything")
    with pytest.raises(ValueError):
        ContextConfig(window=0)


# ---- P-ReAct -------------------------------------------------------------------------------------------


def test_preact_parses_the_action_block_and_dispatches_early_only_when_closed():
    agent = PReActAgent(BW)
    memory, _ = _memory(BW, "test/0")
    turn = agent.prompt(memory)
    assert "<action>" in turn.messages[0]["content"]
    full = "<action>pick up the red block</action>\nThought: the red block must move first."
    for cut in range(len(full) + 1):
        early = agent.early_action(memory, full[:cut])
        closed = "</action>" in full[:cut]
        assert (early == "pick up the red block") if closed else early is None
    assert agent.parse(memory, Completion(text=full)) == Decision("pick up the red block", True)


def test_preact_without_a_block_is_a_format_failure():
    agent = PReActAgent(G24)
    memory, _ = _memory()
    agent.prompt(memory)
    assert agent.early_action(memory, "<action>4 * 6") is None
    decision = agent.parse(memory, Completion(text="<action>4 * 6"))
    assert not decision.format_ok and decision.action == "<action>4 * 6"


def test_preact_never_dispatches_a_summary():
    agent = PReActAgent(G24, context="summary", summary_trigger_tokens=1)
    memory, _ = _memory()
    _fill(agent, memory, 1)
    assert agent.prompt(memory).kind == "summarize"
    assert agent.early_action(memory, "<action>4 * 6</action>") is None


# ---- tool calling --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, action", [
    ('Combine 4 and 6.\n<tool_call>\n{"name": "combine", "arguments": {"a": "4", "op": "*", "b": "6"}}\n</tool_call>',
     "4 * 6"),
    ('<tool_call>[{"name": "combine", "arguments": {"a": 13, "op": "-", "b": 9}}]</tool_call>', "13 - 9"),
    ('{"name": "answer", "arguments": {"expression": "(4 + 8) * (6 - 4)"}}', "(4 + 8) * (6 - 4)"),
    ('{"function": {"name": "combine", "arguments": "{\\"a\\": \\"2\\", \\"op\\": \\"+\\", \\"b\\": \\"3\\"}"}}',
     "2 + 3"),
    ('<tool_call>{"name": "combine", "parameters": {"a": "1", "op": "/", "b": "2"}}', "1 / 2"),
])
def test_tool_calls_in_every_shape_become_env_actions(text, action):
    agent = ToolCallingAgent(G24)
    memory, _ = _memory()
    agent.prompt(memory)
    assert agent.parse(memory, Completion(text=text)) == Decision(action, True)


@pytest.mark.parametrize("text, note", [
    ("I would combine 4 and 6", "no tool call"),
    ('<tool_call>{"name": "fly", "arguments": {}}</tool_call>', "unknown tool"),
    ('<tool_call>{"name": "combine", "arguments": {"a": "4"}}</tool_call>', "missing"),
    ("<tool_call>{not json</tool_call>", "no tool call"),
])
def test_unreadable_tool_calls_are_format_failures(text, note):
    agent = ToolCallingAgent(G24)
    memory, _ = _memory()
    agent.prompt(memory)
    decision = agent.parse(memory, Completion(text=text))
    assert not decision.format_ok and note in decision.note and decision.action == text.strip()


def test_blocksworld_tools_map_to_env_actions():
    agent = ToolCallingAgent(BW)
    memory, _ = _memory(BW)
    agent.prompt(memory)
    text = '<tool_call>{"name": "unstack", "arguments": {"block": "the Red block", "from_block": "blue"}}</tool_call>'
    assert agent.parse(memory, Completion(text=text)).action == "unstack the red block from on top of the blue block"
    assert find_tool_calls("no calls here") == []


def test_tool_schemas_go_in_the_system_message_when_the_template_ignores_tools():
    agent = ToolCallingAgent(G24)
    agent.bind(ScriptedEngine(["x"]))  # renders messages: a remote-style engine
    assert agent.tools is None and not agent.tools_in_template
    memory, _ = _memory()
    turn = agent.prompt(memory)
    assert turn.tools is None and "<tools>" in turn.messages[0]["content"]
    assert '"name": "combine"' in turn.messages[0]["content"]
    _fill(agent, memory, 2)
    roles = [m["role"] for m in agent.prompt(memory).messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]


def test_tool_schemas_go_through_the_template_when_it_renders_them(tiny_engine):
    agent = ToolCallingAgent(G24)
    agent.bind(tiny_engine)  # the tiny ChatML template renders tools
    assert agent.tools_in_template and agent.tools == [t.schema() for t in toolset_for(G24)]
    memory, _ = _memory()
    turn = agent.prompt(memory)
    assert turn.tools == agent.tools and "<tools>" not in turn.messages[0]["content"]
    ids = tiny_engine.render(turn.messages, tools=turn.tools)
    assert '"combine"' in tiny_engine.tokenizer.decode(ids)


# ---- exemplars -----------------------------------------------------------------------------------------


def _with_exemplars() -> list[str]:
    from turngym.envs import gymnasium_ids

    return [e for e in gymnasium_ids() if env_exemplars(e)]


def test_exemplar_sources_are_registered_envs():
    """Every exemplars.json in an env folder is found through a registered env."""
    import inspect
    from pathlib import Path

    folders = {p.parent for p in (Path(turngym.__file__).parent / "envs").glob("*/exemplars.json")}
    assert {Path(inspect.getfile(env_class(e))).parent for e in _with_exemplars()} == folders


@pytest.mark.parametrize("env_id", _with_exemplars())
def test_exemplars_replay_and_win_in_the_real_env(env_id):
    shots = exemplars_for(env_id)  # raises if an exemplar action is invalid or does not win
    assert shots
    for shot in shots:
        # Every step but the winning one has feedback (an env may end the episode with an empty observation).
        assert shot.problem and all(step.observation for step in shot.steps[:-1])
        assert turngym.make(env_id).unwrapped.instruction not in shot.problem


@pytest.mark.parametrize("env_id", [G24, BW])
def test_tool_exemplars_are_the_same_moves(env_id):
    toolset = toolset_for(env_id)
    tools = {t.name: t for t in toolset}
    for shot in exemplars_for(env_id):
        env = turngym.make(env_id)
        env.reset(options={"task": _exemplar_task(env_id, shot)})
        for step in shot.steps:
            call = action_to_call(toolset, step.action)
            obs, _, _, _, info = env.step(tools[call["name"]].to_action(call["arguments"]))
            assert info["action_valid"], obs
        assert info["won"]


def _exemplar_task(env_id, shot):
    return next(s["task"] for s in env_exemplars(env_id) if shot.steps[0].action == s["steps"][0]["action"])


def test_exemplars_are_not_test_tasks():
    env = turngym.make(G24).unwrapped
    test_puzzles = {tuple(env.get_task(t)["numbers"]) for t in env.task_ids("test")}
    for shot in exemplars_for(G24):
        numbers = tuple(int(x) for x in shot.problem.splitlines()[0].split(":")[1].split())
        assert numbers not in test_puzzles


def test_unknown_env_gets_no_exemplars_and_a_generic_tool():
    assert exemplars_for("turngym/Nope-v0") == () and exemplars_for(None) == ()
    agent = ToolCallingAgent("turngym/Nope-v0")
    assert [t.name for t in agent.toolset] == ["act"]
    react = ReActAgent(None)
    assert "Example" not in react.system


def test_num_exemplars_and_system_prompt_override():
    assert "Example 2:" not in ReActAgent(G24, num_exemplars=1).system
    assert "Example" not in ReActAgent(G24, num_exemplars=0).system
    assert ReActAgent(G24, system_prompt="Be brief.").system == "Be brief."


# ---- baselines and the factory ----------------------------------------------------------------------


def test_make_agent_builds_every_agent_and_names_unknown_ones():
    for name, cls in [("react", ReActAgent), ("p-react", PReActAgent), ("preact", PReActAgent),
                      ("tool", ToolCallingAgent)]:
        assert isinstance(make_agent(name, G24), cls)
    assert make_agent("oracle").env_query(None) == "oracle_action"
    with pytest.raises(TurngymError, match="did you mean 'react'"):
        make_agent("reactt", G24)


def test_every_listed_agent_builds_and_every_spelling_resolves():
    from turngym.agents.factory import AGENTS, agent_key

    for name in AGENTS:
        assert agent_key(name) == name and make_agent(name, G24) is not None
    for spelling, key in [("P_ReAct", "p-react"), ("preact", "p-react"), ("tool_calling", "tool"), ("tools", "tool"),
                          ("plain", "chat"), (" Oracle ", "oracle"), ("reactt", "reactt")]:
        assert agent_key(spelling) == key


def test_the_protocol_module_imports_no_agent():
    """base.py defines the protocols; the factory (which imports every agent) lives apart: no import cycle."""
    import ast
    from pathlib import Path

    from turngym.agents import base

    tree = ast.parse(Path(base.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("turngym.")} == {"turngym.agents.types"}
    assert not hasattr(base, "make_agent")


def test_random_agent_is_seeded_per_episode():
    agent = make_agent("random")
    memory, _ = _memory(BW)
    picks = []
    for seed in (1, 1, 2):
        m = new_memory(memory.instruction, memory.observation, memory.info, seed)
        picks.append([agent.act(m) for _ in range(5)])
        assert all(p in memory.info["admissible_actions"] for p in picks[-1])
    assert picks[0] == picks[1] and picks[0] != picks[2]
    bare = new_memory("i", "o", {}, 0)
    assert agent.env_query(bare) == "admissible_actions" and agent.act(bare, None) == "noop"


def test_renderer_continues_token_streams(tiny_engine, tiny_tokenizer):
    """Next prompt ids = previous prompt ids + sampled ids + the template's ids for the new messages."""
    renderer = ChatRenderer(tiny_engine)
    first = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Input: 4 5 11 12"}]
    ids, cont, _ = renderer.render(first, None, None)
    assert not cont and ids == tiny_engine.render(first)
    reply = "Thought: ok\nAction: 4 + 5"
    for sampled in (tiny_tokenizer(reply, add_special_tokens=False)["input_ids"],
                    tiny_tokenizer(reply, add_special_tokens=False)["input_ids"] + [tiny_tokenizer.eos_token_id]):
        previous = PreviousRequest(first, None, ids, reply, sampled)
        second = first + [{"role": "assistant", "content": reply}, {"role": "user", "content": "Observation: 9"}]
        ids2, cont, _ = renderer.render(second, None, previous)
        assert cont and ids2[:len(ids) + len(sampled)] == ids + sampled
        # Here the sampled ids are the template's own tokenization, so the stream equals a fresh render.
        assert ids2 == tiny_engine.render(second)
    # A history that was rewritten (a sliding window) is rendered afresh.
    rewritten = [first[0], {"role": "user", "content": "changed"}, {"role": "assistant", "content": reply},
                 {"role": "user", "content": "x"}]
    assert renderer.render(rewritten, None, previous)[1] is False


def test_renderer_never_retokenizes_what_the_model_sampled(tiny_engine, tiny_tokenizer):
    renderer = ChatRenderer(tiny_engine)
    first = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    ids, _, _ = renderer.render(first, None, None)
    odd = [tiny_tokenizer.convert_tokens_to_ids(c) for c in "Act"]  # a non-canonical split of "Act"
    assert None not in odd
    text = tiny_tokenizer.decode(odd)
    previous = PreviousRequest(first, None, ids, text, odd)
    ids2, cont, _ = renderer.render(first + [{"role": "assistant", "content": text},
                                          {"role": "user", "content": "V"}], None, previous)
    assert cont and ids2[len(ids):len(ids) + len(odd)] == odd


def test_scripted_messages_engines_get_messages():
    renderer = ChatRenderer(ScriptedEngine(["x"]))
    msgs = [{"role": "user", "content": "hi"}]
    assert renderer.render(msgs, None, None) == (msgs, False, "")
    assert renderer.render(msgs, None, None, "Thought:") == (msgs, False, "")  # chat engines cannot prefill


def test_renderer_prefills_the_reply_as_prompt_tokens(tiny_engine, tiny_tokenizer):
    renderer = ChatRenderer(tiny_engine)
    msgs = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    ids, _, prefix = renderer.render(msgs, None, None, "Thought:")
    assert prefix == "Thought:"
    assert ids == tiny_engine.render(msgs) + tiny_tokenizer("Thought:", add_special_tokens=False)["input_ids"]
    assert json.dumps(msgs)


def test_react_reads_a_multi_line_function_call_whole():
    """SWE's actions are R2E-Gym function calls over several lines: the block up to </function> is the action."""
    agent = ReActAgent(G24)
    call = ("<function=str_replace>\n<parameter=path>a.py</parameter>\n<parameter=old_str>    x = 1\n    y = 2"
            "</parameter>\n<parameter=new_str>    x = 2</parameter>\n</function>")
    assert agent.parse_action(f"Thought: fix it.\nAction: {call}\nI hope this works.") == (call, True, "")
    assert agent.parse_action(f"Thought: fix it.\nAction:\n```\n{call}\n```") == (call, True, "")
    assert agent.parse_action("Thought: t\nAction: 4 * 6 (left: 24)")[0] == "4 * 6 (left: 24)"  # one-line actions as before
