"""`turngym bench --format parquet`: the same trajectories as the default JSONL, one Parquet row each.

Needs the ``parquet`` extra (pyarrow).
"""

from __future__ import annotations

import json
import sys

import pytest

from turngym.agents.types import load_trajectories
from turngym.cli import main

pytest.importorskip("pyarrow")

G24 = "turngym/Game24-v0"
BW = "turngym/BlocksWorld-v0"


def _bench(out, *extra):
    argv = ["bench", "--env", G24, "--env", BW, "--agent", "oracle", "--agent", "random", "--episodes", "3",
            "--runs-per-task", "2", "--out", str(out), "--no-progress", *extra]
    assert main(argv) == 0
    return json.loads((out / "summary.json").read_text())


def _comparable(trajs):
    """In plan order (JSONL lines come in the order episodes end), without wall-clock times."""
    from turngym.testing import without_timings

    return [without_timings(t) for t in sorted(trajs, key=lambda t: t.meta["index"])]


def test_parquet_holds_what_jsonl_holds(tmp_path):
    import pyarrow.parquet as pq

    jsonl = _bench(tmp_path / "jsonl")  # the default format stays JSONL
    parquet = _bench(tmp_path / "parquet", "--format", "parquet")
    assert [r["trajectories"] for r in jsonl["rows"]] == [
        "Game24-v0__oracle.jsonl", "Game24-v0__random.jsonl", "BlocksWorld-v0__oracle.jsonl",
        "BlocksWorld-v0__random.jsonl"]
    assert [r["trajectories"] for r in parquet["rows"]] == [
        name.replace(".jsonl", ".parquet") for name in (r["trajectories"] for r in jsonl["rows"])]
    assert not list((tmp_path / "parquet").glob("*.jsonl"))
    for a, b in zip(jsonl["rows"], parquet["rows"]):
        from_jsonl = load_trajectories(tmp_path / "jsonl" / a["trajectories"])
        from_parquet = load_trajectories(tmp_path / "parquet" / b["trajectories"])
        assert len(from_parquet) == b["episodes"] == 6
        assert _comparable(from_parquet) == _comparable(from_jsonl)
        assert (a["success_rate"], a["mean_reward"]) == (b["success_rate"], b["mean_reward"])
        table = pq.read_table(tmp_path / "parquet" / b["trajectories"])
        assert table.num_rows == 6 and table.schema.metadata[b"turngym"] == b"trajectories/1"
        assert table.column("won").to_pylist() == [t.won for t in from_parquet]
        assert [t.meta["index"] for t in from_parquet] == list(range(6))  # Parquet rows come in plan order


def test_parquet_without_pyarrow_names_the_extra_before_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an environment without pyarrow gives: ImportError
    assert main(["bench", "--env", G24, "--agent", "oracle", "--format", "parquet", "--out", str(tmp_path / "x")]) == 2
    assert "turngym bench --format parquet needs the Python package 'pyarrow': pip install 'turngym[parquet]'" in (
        capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_werewolf_with_parquet_is_refused(tmp_path, capsys):
    argv = ["bench", "--env", "turngym/Werewolf-v0", "--agent", "village=rule,wolves=random", "--format", "parquet",
            "--out", str(tmp_path / "w")]
    assert main(argv) == 2
    assert "the Werewolf bench writes JSONL only: drop --format parquet" in capsys.readouterr().err


def test_an_unknown_format_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--env", G24, "--format", "csv"])
    assert "invalid choice: 'csv'" in capsys.readouterr().err
