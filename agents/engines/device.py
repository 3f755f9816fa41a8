"""The one resolver of device and dtype names, for the engines and the trainer.

``resolve_device("auto")`` is the GPU of this process's local rank under torchrun (``LOCAL_RANK``),
else ``cuda`` when torch sees one, else ``cpu``. ``resolve_dtype("auto", device)`` is bfloat16 on a
GPU that supports it (float16 otherwise) and float32 on a CPU. Bad names are a ``DeviceError``
(a ``ValueError``) naming the setting and the accepted values.
"""

from __future__ import annotations

import os
from typing import Any

from turngym.errors import TurngymError, require

#: accepted dtype spellings -> torch dtype attribute name
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
               "float16": "float16", "fp16": "float16", "half": "float16", "float64": "float64"}


class DeviceError(TurngymError, ValueError):
    """A device or dtype setting that names nothing torch has here."""


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
        return dtype
    name = DTYPE_NAMES.get(str(dtype).removeprefix("torch."))
    if name is None:
        raise DeviceError(f"unknown dtype '{dtype}' for {setting}: use 'float32', 'bfloat16', 'float16' or 'auto'")
    return getattr(torch, name)
