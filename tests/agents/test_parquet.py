"""Trajectories to Parquet and back: the same records as a JSONL round trip, token ids and log-probs exact."""

from __future__ import annotations

import json
import math
import sys

import pytest

from turngym.agents.types import (
    Step,
    Trajectory,
    load_trajectories,
    load_trajectories_parquet,
    save_trajectories,
    save_trajectories_parquet,
)
from turngym.errors import MissingDependencyError


def sample_trajectories() -> list[Trajectory]:
    chat = [{"role": "system", "content": "Play Game24."}, {"role": "user", "content": "4 6 3 1 — déjà vu ✓"}]
    first = Step(observation="Numbers: 4 6 3 1", prompt=chat, response=" I add 4 and 6.\nAction: 4 + 6",
                 action="4 + 6", reward=0.0, action_valid=True, state_key=("4 6 3 1", 2), progress=0.25,
                 info={"kind": "act", "format_ok": True, "state_key": ["10 3 1"], "nested": {"a": [1, None]}},
                 prompt_ids=[1, 2, 3, 40000], response_ids=[7, 8, 2],
                 response_logprobs=[-0.123456789012345, -1e-12, -17.5], finish_reason="stop",
                 context_mode="window", gen_seconds=0.25, env_seconds=1e-5)
    second = Step(observation="Numbers: 10 3 1", prompt=[1, 2, 3, 40000, 7, 8, 2, 9], response="bad",
                  action="bad", reward=-0.1, terminated=True, action_valid=False, prompt_ids=None,
                  response_ids=None, response_logprobs=None, finish_reason=None, context_mode="full")
    return [
        Trajectory(env_id="turngym/Game24-v0", task_id="t1", group_id="g0", seed=2**40, steps=[first, second],
                   won=False, total_reward=-0.1, agent="react", model="hf:tiny",
                   timings={"generate_s": 0.5, "env_s": 0.01}, meta={"split": "test", "tags": ["a", "b"]}),
        Trajectory(env_id="turngym/BlocksWorld-v0", task_id="t2", group_id="g1", seed=None, steps=[],
                   error="ValueError: the env failed at reset", truncated=True),
        Trajectory(env_id="turngym/Game24-v0", task_id="t3", group_id="g0", steps=[Step(observation="")],
                   won=True, total_reward=math.inf, meta={}),
    ]


def test_round_trip_equals_the_jsonl_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    trajectories = sample_trajectories()
    jsonl = load_trajectories(save_trajectories(trajectories, tmp_path / "t.jsonl"))
    parquet = load_trajectories_parquet(save_trajectories_parquet(trajectories, tmp_path / "t.parquet"))
    assert [t.to_dict() for t in parquet] == [t.to_dict() for t in jsonl]
    got = parquet[0].steps[0]
    assert got.response_logprobs == [-0.123456789012345, -1e-12, -17.5]  # float64, not rounded
    assert got.prompt_ids == [1, 2, 3, 40000] and got.prompt[1]["content"] == "4 6 3 1 — déjà vu ✓"
    assert got.state_key == ["4 6 3 1", 2]  # a tuple comes back as a list, as from JSONL
    assert parquet[0].steps[1].response_ids is None and parquet[1].steps == [] and parquet[1].seed is None
    assert parquet[2].total_reward == math.inf and parquet[0].seed == 2**40
    # a .parquet path through the plain functions writes and reads Parquet
    path = save_trajectories(trajectories, tmp_path / "again.parquet")
    assert path.read_bytes()[:4] == b"PAR1"
    assert [t.to_dict() for t in load_trajectories(path)] == [t.to_dict() for t in jsonl]


def test_columns_are_typed_for_arrow_tools(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = save_trajectories_parquet(sample_trajectories(), tmp_path / "t.parquet")
    table = pq.read_table(path)
    assert table.num_rows == 3
    step = table.schema.field("steps").type.value_type
    assert step.field("response_ids").type == pa.list_(pa.int64())
    assert step.field("response_logprobs").type == pa.list_(pa.float64())
    assert table.schema.field("timings").type == pa.map_(pa.string(), pa.float64())
    info = table.column("steps").to_pylist()[0][0]["info"]
    assert json.loads(info)["nested"] == {"a": [1, None]}


def test_runner_trajectories_round_trip(tmp_path):
    pytest.importorskip("pyarrow")
    from turngym.agents.factory import make_agent
    from turngym.agents.runner import plan_episodes, run_episodes

    env_id = "turngym/Game24-v0"
    trajectories = run_episodes(env_id, make_agent("oracle"), episodes=plan_episodes(env_id, num_tasks=3)).trajectories
    assert trajectories and all(t.steps for t in trajectories)
    back = load_trajectories_parquet(save_trajectories_parquet(trajectories, tmp_path / "oracle.parquet"))
    jsonl = load_trajectories(save_trajectories(trajectories, tmp_path / "oracle.jsonl"))
    assert [t.to_dict() for t in back] == [t.to_dict() for t in jsonl]


def test_clear_errors(tmp_path, monkeypatch):
    pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), other)
    with pytest.raises(ValueError, match="not a turngym trajectory file"):
        load_trajectories_parquet(other)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")
    with pytest.raises(ValueError, match="not a Parquet file"):
        load_trajectories_parquet(garbage)
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if pyarrow were not installed
    with pytest.raises(MissingDependencyError, match=r"pyarrow.*turngym\[parquet\]"):
        save_trajectories_parquet(sample_trajectories(), tmp_path / "t.parquet")
    assert not list(tmp_path.glob("t.parquet*"))
