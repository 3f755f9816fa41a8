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


class Distributed:
    """torch.distributed when launched by torchrun (WORLD_SIZE > 1), else a no-op.

    Each rank rolls out its share of the tasks (whole groups), computes its
    micro-batches' gradients with the global loss normalizers, and the
    gradients are summed across ranks before clipping and the optimizer step,
    so every rank applies the same update (replicas stay equal) and the result
    is the single-process one up to summation order. Backend: NCCL on GPUs,
    gloo on CPUs.
    """

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

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

    def all_reduce_grads(self, params: list[Any]) -> None:
        if self.world <= 1:
            return
        import torch
        import torch.distributed as dist

        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

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


__all__ = ["SUM_KEYS", "Distributed", "NullLog"]
