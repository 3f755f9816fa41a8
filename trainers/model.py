"""The policy model of a run: loading (default model, HF folder, GGUF, a run's checkpoint), LoRA, reference, saving.

* :func:`load_policy` returns ``(model, tokenizer)`` in train mode on the
  configured device/dtype, LoRA-wrapped when ``lora`` is set (peft).
* :class:`Reference` gives reference log-probs for the KL term: with LoRA it
  is the same module with the adapters disabled (no second copy); otherwise
  a frozen deep copy made once at the start.
* :func:`save_model` writes a folder that any turngym engine loads
  (``turngym bench --model RUN_DIR/checkpoint-N``): full weights in
  safetensors plus the tokenizer; a LoRA run also keeps its adapters
  (``adapter/``) for resuming, and the folder's weights are the merged ones.

Depends on torch, transformers (the ``hf`` extra) and peft for LoRA (``train``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from turngym.agents.engines.device import resolve_device, resolve_dtype
from turngym.errors import TurngymError, require

ADAPTER_DIR = "adapter"


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "trainer_state.pt").is_file() or (Path(path) / ADAPTER_DIR).is_dir()


def autocast_enabled(cfg: Any) -> bool:
    """Whether a :class:`~turngym.trainers.config.ModelConfig` asks for bf16 compute (``model.autocast``)."""
    return cfg.autocast in ("bfloat16", "bf16")


def warn_if_slow_autocast(cfg: Any, device: Any) -> None:
    """``model.autocast=bfloat16`` on a CPU without native bf16 matmuls: a :class:`SlowDtypeWarning` (it still runs)."""
    if autocast_enabled(cfg):
        from turngym.agents.engines.device import warn_if_slow_on_cpu

        warn_if_slow_on_cpu("bfloat16", device, setting="model.autocast")


def load_policy(cfg: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for a :class:`~turngym.trainers.config.ModelConfig`, ready to train."""
    transformers = require("transformers", "hf", "training a model")
    from turngym.agents.engines.default_model import _dtype_kwarg, resolve_model

    path = resolve_model(cfg.path, progress=True)
    device = resolve_device(cfg.device, setting="model.device")
    dtype = resolve_dtype(cfg.dtype, device, setting="model.dtype")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                              **_dtype_kwarg(transformers, dtype))
    model.to(device)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if cfg.lora:
        model = wrap_lora(model, cfg)
    model.train()
    return model, tokenizer


def wrap_lora(model: Any, cfg: Any) -> Any:
    peft = require("peft", "train", "LoRA fine-tuning")
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    targets = [t for t in cfg.lora_target_modules if t in names]
    if not targets:
        raise TurngymError(f"model.lora_target_modules={cfg.lora_target_modules} match no module of the model "
                           f"(its linear layers include: {sorted(n for n in names if 'proj' in n)[:10]})")
    config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=targets, task_type="CAUSAL_LM", bias="none")
    return peft.get_peft_model(model, config)


def is_peft(model: Any) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def trainable_parameters(model: Any) -> list[Any]:
    return [p for p in model.parameters() if p.requires_grad]


def adamw(groups: Any, optim: Any) -> Any:
    """torch's AdamW over ``groups`` (parameters or param-group dicts) with ``optim``'s lr, betas and weight decay.

    Its fused kernel (one pass over each tensor instead of a dozen element-wise ops) where it applies: every
    parameter a plain tensor (not FSDP2's DTensor shards) on a CPU or CUDA device. Same update within float
    rounding; on SmolLM2-135M on 2 CPU cores one step takes ~0.3 s with the per-op loop, less fused
    (``benchmarks``: trl_compare's update time).
    """
    import torch

    groups = list(groups)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    plain = all(type(p) is torch.nn.Parameter or type(p) is torch.Tensor for p in params)
    fused = bool(params) and plain and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    kwargs = {"lr": optim.lr, "betas": tuple(optim.betas), "weight_decay": optim.weight_decay}
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # a device/dtype mix the fused kernel refuses
            pass
    return torch.optim.AdamW(groups, **kwargs)


class Reference:
    """Reference-policy log-probs: the base model with LoRA adapters off, or a frozen copy of the start weights."""

    def __init__(self, model: Any):
        self.shared = is_peft(model)
        self.model = model if self.shared else copy.deepcopy(model).eval().requires_grad_(False)

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        if self.shared:
            with self.model.disable_adapter():
                yield self.model
        else:
            yield self.model


def save_model(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write an engine-loadable model folder (merged weights) and, for LoRA, the adapters in ``adapter/``."""
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.save_pretrained(folder / ADAPTER_DIR)
        merged = copy.deepcopy(model).merge_and_unload()
        merged.save_pretrained(folder, safe_serialization=True)
        del merged
    else:
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    # An engine-loadable folder: keep the generation config's EOS ids with it.
    gen = getattr(model, "generation_config", None)
    if gen is not None and not (folder / "generation_config.json").exists():
        gen.save_pretrained(folder)


def load_weights_into(model: Any, folder: Path) -> None:
    """Restore a checkpoint's trained weights into ``model`` exactly (adapters for LoRA, else all weights)."""
    from safetensors.torch import load_file

    if is_peft(model):
        from peft import set_peft_model_state_dict

        adapter = folder / ADAPTER_DIR
        files = sorted(adapter.glob("*.safetensors"))
        if not files:
            raise TurngymError(f"checkpoint {str(folder)!r} has no LoRA adapters in {ADAPTER_DIR}/: it was not saved by "
                               "a LoRA run; resume it with model.lora=false")
        set_peft_model_state_dict(model, load_file(str(files[0])))
        return
    state: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    if not state:
        raise TurngymError(f"checkpoint {str(folder)!r} holds no *.safetensors weights")
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Tied weights are stored once: the missing names must be tied copies of loaded ones.
    missing = [m for m in missing if not _is_tied(model, m)]
    if missing or unexpected:
        raise TurngymError(f"checkpoint {str(folder)!r} does not fit the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")


def _is_tied(model: Any, name: str) -> bool:
    return name.endswith("lm_head.weight") and bool(getattr(model.config, "tie_word_embeddings", False))
