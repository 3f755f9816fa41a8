"""benchmarks/cpu_dtypes.py: its quick run measures every product in every dtype and records the CPU's verdict."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")


def test_quick_run_times_every_matmul_in_each_dtype(tmp_path, capsys):
    from turngym.agents.engines.device import cpu_has_native
    from turngym.benchmarks.cpu_dtypes import SMOLLM2, main, matmul_shapes

    out = tmp_path / "cpu_dtypes.json"
    assert main(["--quick", "--dtypes", "float32,bfloat16", "--threads", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    shapes = matmul_shapes(SMOLLM2)
    # every distinct Linear of the decoder, weighted by how often a step runs it: 7 per layer + the lm_head
    assert sum(count for *_, count in shapes) == 7 * SMOLLM2["layers"] + 1
    assert [r["dtype"] for r in record["results"]] == ["float32", "bfloat16"]
    for result in record["results"]:
        assert [row["matmul"] for row in result["rows"]] == [name for name, *_ in shapes]
        for row in result["rows"]:
            for op in ("forward", "grad_input", "grad_weight"):
                assert row[f"{op}_s"] > 0 and row[f"{op}_gflops"] > 0
        assert result["step_matmul_s"] == pytest.approx(
            sum(row["count"] * (row["forward_s"] + row["grad_input_s"] + row["grad_weight_s"])
                for row in result["rows"]))
        assert result["native"] == cpu_has_native(result["dtype"])
    assert record["results"][0]["vs_float32"] == 1.0
    assert record["tokens"] == 8 and record["threads"] == 1
    assert set(record["flags"]) >= {"avx512_bf16", "amx_bf16"}
    printed = capsys.readouterr().out
    assert "bfloat16  matmuls of one forward+backward over 8 tokens" in printed
    assert "float32's time; native on this CPU: " in printed


def test_bad_dtypes_are_refused_with_the_accepted_names(capsys):
    from turngym.benchmarks.cpu_dtypes import main

    with pytest.raises(SystemExit) as exc:
        main(["--dtypes", "float32,int8"])
    assert exc.value.code == 2
    assert "use a comma list of float32, bfloat16, float16" in capsys.readouterr().err
