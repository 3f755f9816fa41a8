"""agents/engines/device.py: dtype names, and half precision on a CPU that lacks native instructions for it.

On such a CPU torch runs bf16/fp16 matmuls in a slow fallback (benchmarks/cpu_dtypes.py): the setting is
honoured, with one SlowDtypeWarning naming the setting and the fix. The CPU is simulated by patching
``torch.cpu.get_capabilities``, so every case runs on any machine.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from turngym.agents.engines import device
from turngym.agents.engines.device import (
    DeviceError,
    SlowDtypeWarning,
    cpu_has_native,
    resolve_dtype,
    warn_if_slow_on_cpu,
)

AVX2_ONLY = {"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False,
             "avx512_fp16": False, "amx_fp16": False}
AMX = {**AVX2_ONLY, "amx_bf16": True, "amx_fp16": True}
AVX512_BF16 = {**AVX2_ONLY, "avx512_bf16": True}
ARM = {"architecture": "aarch64", "sve": True}


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(caps)``: make torch report these capabilities; the once-per-setting memory starts empty."""
    monkeypatch.setattr(device, "_warned", set())

    def use(caps):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(caps))

    return use


def _slow_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SlowDtypeWarning)]


@pytest.mark.parametrize(("caps", "dtype", "native"), [
    (AVX2_ONLY, "bfloat16", False), (AVX2_ONLY, "float16", False), (AVX2_ONLY, "float32", True),
    (AMX, "bfloat16", True), (AMX, "float16", True), (AVX512_BF16, "bfloat16", True),
    (AVX512_BF16, "float16", False), (ARM, "bfloat16", None), (ARM, "float32", True),
])
def test_cpu_has_native_reads_the_x86_flags(cpu, caps, dtype, native):
    cpu(caps)
    assert cpu_has_native(dtype) is native
    assert cpu_has_native(getattr(torch, dtype)) is native  # a torch.dtype too


def test_half_precision_on_a_cpu_without_it_warns_once_naming_the_setting_and_the_fix(cpu):
    cpu(AVX2_ONLY)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert resolve_dtype("bf16", "cpu", setting="model.dtype") is torch.bfloat16  # still honoured
        assert resolve_dtype("bfloat16", "cpu", setting="model.dtype") is torch.bfloat16
        assert resolve_dtype(torch.bfloat16, "cpu", setting="rollout.dtype") is torch.bfloat16
    messages = _slow_warnings(record)
    assert len(messages) == 2, messages  # once per (setting, dtype)
    assert "model.dtype=bfloat16" in messages[0] and "AVX512-BF16 or AMX-BF16" in messages[0]
    assert "use model.dtype=float32" in messages[0] and "turngym.benchmarks.cpu_dtypes" in messages[0]
    assert "rollout.dtype=bfloat16" in messages[1]


@pytest.mark.parametrize(("caps", "dtype", "dev"), [
    (AMX, "bfloat16", "cpu"), (AVX512_BF16, "bfloat16", "cpu"), (ARM, "bfloat16", "cpu"),
    (AVX2_ONLY, "float32", "cpu"), (AVX2_ONLY, "auto", "cpu"), (AVX2_ONLY, "bfloat16", "cuda:0"),
])
def test_no_warning_where_the_dtype_is_native_unknown_or_not_on_a_cpu(cpu, caps, dtype, dev):
    cpu(caps)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert warn_if_slow_on_cpu(dtype, dev, setting="dtype") is False
        if dev == "cpu":
            resolve_dtype(dtype, dev)
    assert not _slow_warnings(record)


def test_auto_is_float32_on_a_cpu_and_bad_names_name_the_setting(cpu):
    cpu(AMX)
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype(None, "cpu") is torch.float32
    with pytest.raises(DeviceError, match=r"unknown dtype 'bf61' for rollout\.dtype: use 'float32'"):
        resolve_dtype("bf61", "cpu", setting="rollout.dtype")


def test_the_engine_and_the_trainers_warn_under_their_own_setting_names(cpu, tmp_path):
    """The seams: HFEngine's dtype (as rollout.dtype from the trainer) and model.autocast of the RL and SFT
    trainers reach the warning with the name the user wrote."""
    from turngym.agents.engines.hf import HFEngine
    from turngym.testing import tiny_bpe_tokenizer, tiny_llama
    from turngym.trainers.config import RLConfig, SFTConfig, load_config
    from turngym.trainers.rl import RLTrainer
    from turngym.trainers.sft import SFTTrainer

    cpu(AVX2_ONLY)
    tok = tiny_bpe_tokenizer(["move the block onto the table", "stack a on b"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        engine = HFEngine((tiny_llama(tok), tok), dtype="bfloat16", dtype_setting="rollout.dtype")
        assert next(engine.model.parameters()).dtype is torch.bfloat16
        common = ["env.id=turngym/BlocksWorld-v0", "model.autocast=bfloat16", "run.eval_tasks=0",
                  "run.tensorboard=false"]
        SFTTrainer(load_config(SFTConfig, None, [*common, f"run.dir={tmp_path / 'sft'}"]),
                   model=tiny_llama(tok), tokenizer=tok)
        device._warned.clear()  # the RL trainer's own warning, not deduplicated against the SFT's
        RLTrainer(load_config(RLConfig, None, [*common, f"run.dir={tmp_path / 'rl'}", "rollout.dtype=bfloat16"]),
                  model=tiny_llama(tok), tokenizer=tok)
    messages = _slow_warnings(record)
    assert any(m.startswith("rollout.dtype=bfloat16") for m in messages[:1]), messages
    assert sum(m.startswith("model.autocast=bfloat16") for m in messages) == 2, messages
    assert sum(m.startswith("rollout.dtype=bfloat16") for m in messages) == 2, messages  # engine + RL copy
