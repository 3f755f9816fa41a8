"""The one resolver of device and dtype names, for the engines and the trainer.

``resolve_device("auto")`` is the GPU of this process's local rank under torchrun (``LOCAL_RANK``),
else ``cuda`` when torch sees one, else ``cpu``. ``resolve_dtype("auto", device)`` is bfloat16 on a
GPU that supports it (float16 otherwise) and float32 on a CPU. Bad names are a ``DeviceError``
(a ``ValueError``) naming the setting and the accepted values.

A half-precision dtype asked for on a CPU that has no native instructions for it is allowed but
warned about (:class:`SlowDtypeWarning`, once per setting and dtype): torch then runs bf16/fp16
matmuls in a slow fallback, many times slower than float32 (``python -m
turngym.benchmarks.cpu_dtypes`` measures it: on a 2-core AMD EPYC with AVX2 only, the matmuls
of a SmolLM2 forward+backward took 25x float32's time in bf16, 28x in fp16).
:func:`cpu_has_native` says which x86 CPUs have them (AVX512-BF16 or AMX-BF16 for bf16,
AVX512-FP16 or AMX-FP16 for fp16); on other architectures it cannot tell and nothing is warned.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from turngym.errors import TurngymError, require

#: accepted dtype spellings -> torch dtype attribute name
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16", "half": "float16", "float64": "float64"}


class DeviceError(TurngymError, ValueError):
    """A device or dtype setting that names nothing torch has here."""


class SlowDtypeWarning(UserWarning):
    """A half-precision dtype on a CPU without native instructions for it: it runs, many times slower than fp32."""


#: x86 capability flags (``torch.cpu.get_capabilities()``) any one of which makes a dtype's matmuls native
NATIVE_CPU_FLAGS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}
_warned: set[tuple[str, str]] = set()


def _dtype_name(dtype: Any) -> str:
    """The canonical name of a dtype spelling or ``torch.dtype`` ('bf16' -> 'bfloat16'); unknown names as given."""
    name = str(dtype).removeprefix("torch.")
    return DTYPE_NAMES.get(name, name)


def cpu_has_native(dtype: Any) -> bool | None:
    """True/False: whether this x86 CPU has native matmul instructions for ``dtype`` (bf16 or fp16).

    None where it cannot tell (not x86, or a torch without ``torch.cpu.get_capabilities``). float32
    and float64 are always native.
    """
    name = _dtype_name(dtype)
    if name not in NATIVE_CPU_FLAGS:
        return True
    torch = _torch()
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is None:
        return None
    try:
        caps = dict(capabilities())
    except Exception:  # noqa: BLE001 -- a capability probe must never break model loading
        return None
    if caps.get("architecture") not in ("x86_64", "x86", "i386", "AMD64"):
        return None
    return any(bool(caps.get(flag)) for flag in NATIVE_CPU_FLAGS[name])


def warn_if_slow_on_cpu(dtype: Any, device: Any, *, setting: str = "dtype") -> bool:
    """Warn (once per setting and dtype) when ``dtype`` will run on a CPU without native support; True if warned."""
    name = _dtype_name(dtype)
    if not str(device).startswith("cpu") or cpu_has_native(name) is not False:
        return False
    key = (setting, name)
    if key not in _warned:
        _warned.add(key)
        flags = " or ".join(flag.upper().replace("_", "-") for flag in NATIVE_CPU_FLAGS[name])
        warnings.warn(
            f"{setting}={name} on a CPU without {flags}: torch runs {name} matmuls in a slow fallback here, "
            f"many times slower than float32 (python -m turngym.benchmarks.cpu_dtypes measures it); "
            f"use {setting}=float32 on this CPU ({name} pays on a CPU with {flags}, or on a GPU)",
            SlowDtypeWarning, stacklevel=3)
    return True


def _torch():
    return require("torch", "hf", "placing a model on a device")


def resolve_device(device: str | None, *, setting: str = "device") -> str:
    """A torch device string for ``device`` ('auto', None, 'cpu', 'cuda', 'cuda:N', 'mps')."""
    torch = _torch()
    if device in (None, "", "auto"):
        if not torch.cuda.is_available():
            return "cpu"
        rank = os.environ.get("LOCAL_RANK")
        return f"cuda:{int(rank)}" if rank is not None else "cuda"
    device = str(device)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"{setting} '{device}' asked for, but torch sees no CUDA GPU: use {setting}='cpu' or 'auto'")
    return device


def resolve_dtype(dtype: Any, device: str = "cpu", *, setting: str = "dtype"):
    """A torch dtype for ``dtype`` (a name of :data:`DTYPE_NAMES`, 'auto', None or a torch.dtype)."""
    torch = _torch()
    if dtype in (None, "auto"):
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        warn_if_slow_on_cpu(dtype, device, setting=setting)
        return dtype
    name = DTYPE_NAMES.get(str(dtype).removeprefix("torch."))  # torch.dtype objects returned above
    if name is None:
        raise DeviceError(f"unknown dtype '{dtype}' for {setting}: use 'float32', 'bfloat16', 'float16' or 'auto'")
    warn_if_slow_on_cpu(name, device, setting=setting)
    return getattr(torch, name)
