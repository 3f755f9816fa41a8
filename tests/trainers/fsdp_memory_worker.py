"""Worker of test_distributed.py: per-rank parameter and AdamW-state bytes under run.data_parallel=fsdp2.

Launched alone (one process: nothing sharded) or by torchrun; rank 0 writes
``{"params": bytes, "optimizer": bytes}`` (local shards only) to argv[1].
"""

import json
import sys

import torch

torch.set_num_threads(1)
from turngym.testing import tiny_llama
from turngym.trainers.distributed import Distributed


class _Tok:
    vocab_size, pad_token_id, eos_token_id, bos_token_id = 64, 0, 1, 2

    def __len__(self):
        return self.vocab_size


def local_bytes(t):
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


dist = Distributed.from_env()
model = tiny_llama(_Tok(), hidden=64, intermediate=128, max_positions=64, init=0.02, seed=0, eval_mode=False)
train_model = dist.wrap(model, "fsdp2")
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
ids = torch.randint(3, 64, (2, 16), generator=torch.Generator().manual_seed(dist.rank))
train_model(input_ids=ids, labels=ids).loss.backward()
optimizer.step()
params = sum(local_bytes(p) for p in model.parameters())
state = sum(local_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
if dist.main:
    with open(sys.argv[1], "w") as f:
        json.dump({"params": params, "optimizer": state, "world": dist.world}, f)
