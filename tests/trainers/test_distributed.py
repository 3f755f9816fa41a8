"""Data-parallel training under torchrun (gloo on CPU) gives the single-process run.

Two processes each roll out half of the tasks (whole groups), compute
gradients with the global loss normalizers and sum them before the
optimizer step: with one mini-batch per epoch, the logged metrics and the
final weights equal the single-process ones up to float summation order.
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


def _run(cmd, cwd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)
    assert out.returncode == 0, out.stderr[-3000:]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_process_data_parallel_equals_one_process(tmp_path):
    from safetensors.torch import load_file

    worker = str(HERE / "dp_worker.py")
    _run([sys.executable, worker, str(tmp_path / "one")], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", worker,
          str(tmp_path / "two")], tmp_path)
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
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
