"""benchmarks/sft_sharing --quick: the four SFT settings on recorded Werewolf turns, and what the tree saves."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pettingzoo")
pytest.importorskip("transformers")


def test_quick_run_times_the_four_settings(tmp_path, capsys):
    from turngym.benchmarks import sft_sharing

    out = tmp_path / "r.json"
    assert sft_sharing.main(["--quick", "--data", str(tmp_path / "data"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["batch_by"], r["share_prefix"]): r for r in result["rows"]}
    assert set(rows) == {(b, s) for b in ("sample", "trajectory") for s in (False, True)}
    for r in rows.values():
        assert r["steps"] == 1 and r["sample_tokens"] > 0 and r["seconds"] > 0 and r["tokens_per_s"] > 0
    assert rows["sample", False]["vs_sample_unshared"] == 1.0
    # Whole trajectories per step, shared: each turn's repeated transcript runs once, so far fewer tokens run
    # than the step holds; without sharing every padded position runs.
    shared = rows["trajectory", True]
    assert shared["run_tokens"] < 0.7 * shared["sample_tokens"]
    for key in (("sample", False), ("trajectory", False)):
        assert rows[key]["run_tokens"] >= rows[key]["sample_tokens"]
    assert "sample tokens/s vs the old SFT path" in capsys.readouterr().out


def test_bad_arguments_are_usage_errors(capsys):
    from turngym.benchmarks import sft_sharing

    with pytest.raises(SystemExit):
        sft_sharing.main(["--steps", "0"])
    assert "--steps and --games must be >= 1" in capsys.readouterr().err
