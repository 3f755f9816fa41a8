"""benchmarks/rollout_throughput.py's batch part, a seconds-long version on the tiny model: ``--dtype`` reaches
the engine of every run (the sequential baseline and the batched runs alike) and the table is written. The
speed numbers are the benchmark's, not asserted here."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_part_runs_every_mode_with_the_asked_dtype(tiny_tokenizer, tmp_path, capsys, dtype):
    from turngym.benchmarks import rollout_throughput
    from turngym.testing import tiny_llama

    # ReAct's Game24 prompt is a few thousand byte-level tokens: a context long enough for it
    model = tiny_llama(tiny_tokenizer, hidden=64, intermediate=128, layers=2, max_positions=8192, seed=0)
    model.save_pretrained(tmp_path / "tiny")
    tiny_tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "rollout.json"
    assert rollout_throughput.main(["--parts", "batch", "--model", str(tmp_path / "tiny"), "--dtype", dtype,
                                    "--episodes", "2", "--batch", "2", "--max-steps", "1", "--max-tokens", "3",
                                    "--schedule", "compare", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["engine"]["dtype"] == f"torch.{dtype}"
    batch = report["batch"]
    for mode in ("sequential", "lockstep", "continuous"):
        assert batch[mode]["episodes"] == 2 and batch[mode]["generated_tokens"] > 0
    assert batch["ratio_wall"] > 0 and batch["engine_only"]["prompts"] == 2
    assert "lockstep x2 vs sequential" in capsys.readouterr().out


def test_the_vllm_part_names_the_engine_it_needs(tiny_engine, tmp_path):
    from turngym.benchmarks import rollout_throughput

    args = rollout_throughput.argparse.Namespace(env="turngym/Game24-v0", split="test", episodes=1, seed=0)
    with pytest.raises(SystemExit, match="needs the vLLM engine"):
        rollout_throughput.measure_vllm(tiny_engine, args)


@pytest.mark.parametrize(("caps", "auto"), [
    ({"avx512_bf16": False, "amx_bf16": False}, "auto"),  # AVX2 only: bf16 is a slow fallback, the engine's fp32
    ({"avx512_bf16": True, "amx_bf16": False}, "bfloat16"),  # an AVX512-BF16 AMD EPYC: 16.6 s vs 37.5 s batched
    ({"avx512_bf16": True, "amx_bf16": True}, "bfloat16"),  # AMX
    (None, "auto"),  # not x86: cannot tell, so no half precision
])
def test_dtype_auto_is_bfloat16_only_for_the_hf_engine_on_a_native_bf16_cpu(monkeypatch, caps, auto):
    import torch

    from turngym.benchmarks.rollout_throughput import _bench_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = {"architecture": "x86_64", "avx2": True, **caps} if caps else {"architecture": "aarch64"}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(cpu))
    assert _bench_dtype("float32", "default") == "float32"
    assert _bench_dtype("auto", "vllm:default") == "auto"  # vLLM picks bfloat16 itself
    assert _bench_dtype("auto", "default") == auto
