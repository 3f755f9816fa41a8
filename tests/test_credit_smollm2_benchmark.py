"""benchmarks/credit_smollm2.py's --quick version (a tiny random model, about 10 s of work): the study's
results.json has every run with its held-out results and the paired summary; a second invocation skips the
finished SFT and runs (same results); raising --iterations resumes a finished run from its checkpoint instead
of restarting it. Learning outcomes are the study's, not asserted here."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("scipy")
pytest.importorskip("pyarrow")

from turngym.benchmarks import credit_smollm2


def _load(out):
    return json.loads((out / "results.json").read_text())


def _without_times(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("session_seconds",)}


def test_quick_study_resumes_and_skips(tmp_path, capsys):
    out = tmp_path / "study"
    assert credit_smollm2.main(["--quick", "--out", str(out)]) == 0
    first = _load(out)
    assert first["estimators"] == ["grpo", "gigpo"] and first["seeds"] == [0] and first["iterations"] == 1
    assert first["eval_counts"] == {"planbench_step2": 2, "planbench_step4": 2}
    assert set(first["train_heldout_overlap"]) <= credit_smollm2.overlapping_tasks()
    assert first["sft"]["episodes"] == 2 and (out / "sft" / "sft.json").is_file()
    runs = {(r["estimator"], r["seed"]): r for r in first["runs"]}
    assert set(runs) == {("grpo", 0), ("gigpo", 0)}
    for heldout in [first["sft_heldout"], *(r["heldout"] for r in runs.values())]:
        for split, n in first["eval_counts"].items():
            rec = heldout["splits"][split]
            assert rec["episodes"] == n == len(rec["won"]) and rec["successes"] == sum(rec["won"].values())
            assert rec["ci_low"] <= rec["success_rate"] <= rec["ci_high"]
        assert heldout["pooled"]["episodes"] == sum(first["eval_counts"].values())
        assert heldout["clean"]["pooled"]["episodes"] <= heldout["pooled"]["episodes"]
    # every model is evaluated on the same tasks
    tasks = {json.dumps({s: sorted(h["splits"][s]["won"]) for s in h["splits"]})
             for h in [first["sft_heldout"], *(r["heldout"] for r in runs.values())]}
    assert len(tasks) == 1
    for (est, _), r in runs.items():
        assert r["iterations_done"] == 1 and len(r["train"]["success"]) == 1 and r["resumed_at"] is None
        assert r["train"]["oracle_signal"] == 0.0 and r["wall_seconds"] > 0
        assert f"runs/{est}-s0/train/checkpoint-1" in r["final_checkpoint"]
    diff = first["summary"]["gigpo_minus_grpo"]
    for key in credit_smollm2.SUMMARY_KEYS:
        expected = credit_smollm2._outcome(runs["gigpo", 0]["heldout"], key)["success_rate"] - \
            credit_smollm2._outcome(runs["grpo", 0]["heldout"], key)["success_rate"]
        assert diff[key]["per_seed"] == pytest.approx([expected]) and diff[key]["mean"] == pytest.approx(expected)
    printed = capsys.readouterr().out
    assert "SFT (before)" in printed and "grpo-s0" in printed and "gigpo-s0" in printed and "GiGPO - GRPO" in printed

    # a second invocation: nothing is trained again, the results are the same
    assert credit_smollm2.main(["--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SFT warm start: done" in printed and printed.count("skipped") == 2
    second = _load(out)
    assert [_without_times(r) for r in second["runs"]] == [_without_times(r) for r in first["runs"]]
    assert second["sft_heldout"] == first["sft_heldout"] and second["summary"] == first["summary"]

    # more iterations: the finished run continues from its checkpoint, it does not restart
    with pytest.warns(Warning, match=r"run.iterations: 1 -> 2"):  # the trainer's note on the resumed config
        assert credit_smollm2.main(["--quick", "--out", str(out), "--iterations", "2", "--estimators", "grpo"]) == 0
    printed = capsys.readouterr().out
    assert "grpo-s0: resuming at iteration 1" in printed
    (grpo,) = _load(out)["runs"]
    assert grpo["resumed_at"] == 1 and grpo["iterations_done"] == 2
    assert grpo["train"]["success"][0] == runs["grpo", 0]["train"]["success"][0]
    assert grpo["final_checkpoint"].endswith("checkpoint-2")
    assert not (out / "runs" / "grpo-s0" / "train" / "checkpoint-1").exists()  # one checkpoint kept
