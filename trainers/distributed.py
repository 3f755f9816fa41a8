"""Data parallel for the RL trainer: torch.distributed when launched by torchrun, a no-op otherwise.

:class:`Distributed` is the trainer's one handle on the process group: the
rank and world size, the barriers, the sums and maxima of the loss
normalizers, the all-reduce of the gradients, the broadcasts (parameters at
start, rank 0's eval record) and the merge of per-rank metric records.
:class:`NullLog` stands in for the metrics log on ranks other than 0.

Depends on torch (imported lazily: a single-process run never initializes a
process group) and numpy; nothing else of turngym.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import Any

import numpy as np

#: record keys that add up across ranks (the others are averaged, weighted by each rank's episodes; times: max).
SUM_KEYS = ("episodes", "env_errors", "trained_episodes", "generated_tokens", "prompt_tokens", "num_samples",
            "num_loss_tokens", "pairs", "tokens_per_s", "env_steps_per_s")


class NullLog:
    """The metrics log of ranks other than 0: writes nothing."""

    def write(self, record: dict[str, Any]) -> None:
        pass

    def truncate_after(self, iteration: int) -> None:
        pass

    def close(self) -> None:
        pass


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def end_rank(code: int = 0) -> None:
    """End a torchrun rank: wait for every rank, tear the process group down, flush, and leave with ``code``
    without running C++ static destructors. gloo's threads still alive there abort the process now and then
    ("terminate called without an active exception", exit -6), which torchrun reports as a failed run after
    the work was done and saved. A no-op (it returns) when this process is not a rank of a group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    with contextlib.suppress(Exception):
        dist.barrier()
    _destroy_process_group()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _sum_hook(state, bucket):  # unannotated: DDP checks a hook's annotations, and these would be strings
    """DDP comm hook: sum a gradient bucket across ranks (DDP's default averages; the loss normalizers
    already count every rank's tokens, so the sum is the single-process gradient)."""
    import torch.distributed as dist

    return dist.all_reduce(bucket.buffer(), async_op=True).get_future().then(lambda f: f.value()[0])


def _decoder_layers(model: Any) -> list[Any]:
    """The repeated blocks FSDP2 shards one by one: the modules of the longest ``nn.ModuleList``."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return list(max(lists, key=len)) if lists else []


class Distributed:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a no-op.

    Each rank rolls out its share of the tasks (whole groups), computes its
    micro-batches' gradients with the global loss normalizers, and DDP (or
    FSDP2's reduce-scatter) sums the gradients across ranks in the last
    micro-batch's backward, before clipping and the optimizer step, so every
    rank applies the same update and the result is the single-process one up
    to summation order. Backend: NCCL on GPUs, gloo on CPUs.
    """

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.mode = "none"  # set by wrap(): ddp or fsdp2

    @classmethod
    def from_env(cls) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            # Torn down before the interpreter's own exit: gloo's threads alive when C++ statics are
            # destroyed abort the process ("terminate called without an active exception"), now and then.
            atexit.register(_destroy_process_group)
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def _reduce(self, values: list[float], op: str) -> list[float]:
        if self.world <= 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        return self._reduce(values, "sum")

    def max(self, value: float) -> float:
        return self._reduce([value], "max")[0]

    def wrap(self, model: Any, mode: str) -> Any:
        """Make ``model`` data parallel; return the module the loss's forward must go through.

        ``ddp``: a :class:`~torch.nn.parallel.DistributedDataParallel` around ``model`` (its bucketed
        all-reduce hooks sum the gradients in the last micro-batch's backward). ``fsdp2``:
        :func:`~torch.distributed.fsdp.fully_shard` on each decoder layer and on ``model`` (in place: its
        parameters become DTensor shards), and a call-through module so the forward enters ``model`` at its
        root (the fused log-prob path would call the decoder and the head one by one, around the root's hooks).
        ``model`` itself stays what the engine and checkpoints use. One process: ``model``.
        """
        if self.world <= 1:
            return model

        self.mode = mode
        if mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            ddp.register_comm_hook(None, _sum_hook)
            return ddp
        from torch.distributed.fsdp import FSDPModule, fully_shard

        for layer in _decoder_layers(model):
            fully_shard(layer)
        fully_shard(model)
        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.set_gradient_divide_factor(1.0)  # a sum: the loss normalizers already count every rank
                m.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)
        return _CallThrough(model)

    def grad_sync(self, train_model: Any, sync: bool) -> Any:
        """A context for one micro-batch's backward: gradients are reduced across ranks only when ``sync``
        (the last micro-batch of an optimizer step); the others accumulate locally."""
        if self.world <= 1:
            return contextlib.nullcontext()
        if self.mode == "ddp":
            return contextlib.nullcontext() if sync else train_model.no_sync()
        train_model.module.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def all_reduce_(self, tensors: list[Any]) -> None:
        """Sum ``tensors`` across ranks in place (the gradients of parameters outside the wrapped model: log Z)."""
        if self.world <= 1:
            return
        import torch.distributed as dist

        for t in tensors:
            dist.all_reduce(t)

    def checkpoint_model(self, model: Any) -> Any:
        """What a checkpoint saves: ``model``, or (``fsdp2``) a stand-in whose ``save_pretrained`` writes the
        full state dict gathered from every rank's shards (all ranks must call; rank 0 saves)."""
        if self.world <= 1 or self.mode != "fsdp2":
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _FullStateModel(model, full)

    @contextlib.contextmanager
    def full_weights(self, model: Any):
        """``model``'s full parameters in place for generation or a checkpoint (``fsdp2``: every sharded
        module unsharded, kept so through forwards, resharded after; all ranks must enter). Else a no-op."""
        if self.world <= 1 or self.mode != "fsdp2":
            yield model
            return
        from torch.distributed.fsdp import FSDPModule

        mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in mods:
            m.unshard()
            m.set_reshard_after_forward(False, recurse=False)
        try:
            yield model
        finally:
            for m in mods:
                m.reshard()
                m.set_reshard_after_forward(True, recurse=False)

    def broadcast_parameters(self, model: Any) -> None:
        if self.world <= 1:
            return
        import torch
        import torch.distributed as dist

        with torch.no_grad():
            for p in model.parameters():
                dist.broadcast(p.data, src=0)

    def broadcast_object(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def merge_records(self, record: dict[str, Any]) -> dict[str, Any]:
        if self.world <= 1:
            return record
        import torch.distributed as dist

        records: list[Any] = [None] * self.world
        dist.all_gather_object(records, record)
        weights = [max(1, int(r.get("episodes", 0))) for r in records]
        merged: dict[str, Any] = {}
        for key, own in record.items():
            vals = [r.get(key) for r in records]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                merged[key] = own
            elif key in SUM_KEYS:
                merged[key] = sum(vals)
            elif key.startswith("time") or key.endswith("_max") or key == "iteration":
                merged[key] = max(vals)
            else:
                merged[key] = float(np.average(vals, weights=weights))
        merged["world_size"] = self.world
        return merged


class _FullStateModel:
    """``model`` for :func:`~turngym.trainers.model.save_model`, with its gathered full state dict."""

    def __init__(self, model: Any, state_dict: dict[str, Any]):
        self._model, self._state_dict = model, state_dict

    def save_pretrained(self, folder: Any, **kwargs: Any) -> None:
        self._model.save_pretrained(folder, state_dict=self._state_dict, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _call_through_class():
    import torch

    class CallThrough(torch.nn.Module):
        """Calls ``module`` at its root (FSDP2's hooks), with no ``get_output_embeddings``: the log-prob code
        takes its reference path (the full logits) through it."""

        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    return CallThrough


def _CallThrough(module: Any) -> Any:
    return _call_through_class()(module)


__all__ = ["SUM_KEYS", "Distributed", "NullLog"]
