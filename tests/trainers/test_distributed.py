"""Data-parallel training under torchrun (gloo on CPU) gives the single-process run.

Two processes each roll out half of the tasks (whole groups), compute
gradients with the global loss normalizers over several micro-batches
(``optim.micro_batch_tokens=16``: DDP's ``no_sync`` / FSDP2's
``set_requires_gradient_sync`` on all but the last), and the wrapper sums
them in the last backward: with one mini-batch per epoch, the logged
metrics and the final weights equal the single-process ones up to float
summation order. FSDP2 holds half of the parameters and of the AdamW state
on each of two ranks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
MICRO = "optim.micro_batch_tokens=16"  # several micro-batches per step: gradient accumulation across ranks


def _run(cmd, cwd):
    out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["ddp", pytest.param("fsdp2", marks=pytest.mark.slow)])
def test_two_process_data_parallel_equals_one_process(tmp_path, mode):
    from safetensors.torch import load_file

    worker = str(HERE / "dp_worker.py")
    _run([sys.executable, worker, str(tmp_path / "one"), MICRO], tmp_path)
    _run([*TORCHRUN, worker, str(tmp_path / "two"), MICRO, f"run.data_parallel={mode}"], tmp_path)
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["iteration"] for r in one] == [r["iteration"] for r in two]
    for a, b in zip(one, two):
        assert a["kind"] == b["kind"] and a["episodes"] == b["episodes"]
        assert a["success_rate"] == pytest.approx(b["success_rate"], abs=1e-9)
        if a["kind"] == "train":
            assert b["world_size"] == 2
            assert a["num_loss_tokens"] == b["num_loss_tokens"]
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    wa = load_file(str(tmp_path / "one" / "checkpoint-3" / "model.safetensors"))
    wb = load_file(str(tmp_path / "two" / "checkpoint-3" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_fsdp2_halves_parameter_and_optimizer_memory_per_rank(tmp_path):
    worker = str(HERE / "fsdp_memory_worker.py")
    _run([sys.executable, worker, str(tmp_path / "one.json")], tmp_path)
    _run([*TORCHRUN, worker, str(tmp_path / "two.json")], tmp_path)
    one = json.loads((tmp_path / "one.json").read_text())
    two = json.loads((tmp_path / "two.json").read_text())
    assert (one["world"], two["world"]) == (1, 2)
    assert one["optimizer"] == 2 * one["params"]  # AdamW: exp_avg and exp_avg_sq, fp32
    assert two["params"] == one["params"] // 2
    assert two["optimizer"] == one["optimizer"] // 2
