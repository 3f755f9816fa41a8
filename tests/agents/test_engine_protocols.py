"""Engine capabilities are types: each engine is exactly the Protocols it implements, and callers
(runner, server, scheduler, trainer, Werewolf runner) decide through them, never by probing."""

from __future__ import annotations

import pytest

from turngym.agents.engines.base import (
    ContextLimited,
    Engine,
    InProcessEngine,
    LocalEngine,
    SessionEngine,
    WeightSyncEngine,
    check_token_ids,
    context_limit,
    continuous_batching_off_reason,
    engine_name,
)
from turngym.agents.engines.scripted import ScriptedEngine

pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_the_hf_engine_has_every_capability(tiny_engine):
    for protocol in (Engine, SessionEngine, WeightSyncEngine, InProcessEngine, LocalEngine, ContextLimited):
        assert isinstance(tiny_engine, protocol), protocol.__name__
    assert continuous_batching_off_reason(tiny_engine) is None
    assert context_limit(tiny_engine) == tiny_engine.max_context and tiny_engine.vocab_size > 0
    assert engine_name(tiny_engine) == tiny_engine.name


def test_a_scripted_engine_is_a_plain_engine():
    engine = ScriptedEngine(["a"])
    assert isinstance(engine, Engine)
    for protocol in (SessionEngine, WeightSyncEngine, InProcessEngine, LocalEngine):
        assert not isinstance(engine, protocol), protocol.__name__
    assert continuous_batching_off_reason(engine) == "it has no session() (continuous batching)"
    assert context_limit(engine) is None


def test_one_token_id_check():
    assert check_token_ids([1, 2, True - 1], 5, "m") == [1, 2, 0]
    with pytest.raises(ValueError, match="token id 5 is outside the vocabulary of m .*out of range"):
        check_token_ids([1, 5], 5, "m")
    with pytest.raises(ValueError, match="got an item 'x'"):
        check_token_ids([1, "x"], 5, "m")
