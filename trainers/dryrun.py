"""``turngym train CONFIG --dry-run``: check a multi-node RL config on a CPU, without GPUs or weights.

:func:`dry_run` validates every key (:func:`~turngym.trainers.config.validate_config`), lays out the world
(nodes x GPUs per node ranks; which ranks roll out, evaluate, save) and estimates the memory of each rank:
parameters, gradients, AdamW state (sharded by ``fsdp2``, replicated by ``ddp``), activations of one
micro-batch (rough) and vLLM's KV-cache share. The model's sizes come from ``model.path``'s ``config.json``
when it is a local folder, else from a table of known models matched by name; the result says which.
:func:`render` is its text.

Depends on this package's config only (json, math); never on torch or the weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from turngym.errors import TurngymError
from turngym.trainers.config import RLConfig, validate_config

GIB = 1024 ** 3
#: assumed when rollout.engine_kwargs.gpu_memory_utilization says a share of a GPU of unknown size.
ASSUMED_GPU_GIB = 80.0
#: (hidden, layers, vocab, intermediate, heads, kv_heads, tied embeddings) of known models, by name fragment.
KNOWN_MODELS: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "qwen2.5-coder-7b": (3584, 28, 152064, 18944, 28, 4, False),
    "qwen2.5-0.5b": (896, 24, 151936, 4864, 14, 2, True),
    "qwen2.5-1.5b": (1536, 28, 151936, 8960, 12, 2, True),
    "qwen2.5-3b": (2048, 36, 151936, 11008, 16, 2, True),
    "qwen2.5-7b": (3584, 28, 152064, 18944, 28, 4, False),
    "llama-3.1-8b": (4096, 32, 128256, 14336, 32, 8, False),
    "smollm2-135m": (576, 30, 49152, 1536, 9, 3, True),
    "default": (576, 30, 49152, 1536, 9, 3, True),  # the embedded SmolLM2-135M-Instruct
}
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}


def model_shape(path: str) -> tuple[dict[str, Any], str]:
    """The sizes of ``path``'s model and where they came from (its config.json, or the table)."""
    cfg_file = Path(path) / "config.json"
    if cfg_file.is_file():
        c = json.loads(cfg_file.read_text())
        heads = c.get("num_attention_heads", 1)
        shape = {"hidden": c["hidden_size"], "layers": c["num_hidden_layers"], "vocab": c["vocab_size"],
                 "intermediate": c.get("intermediate_size", 4 * c["hidden_size"]), "heads": heads,
                 "kv_heads": c.get("num_key_value_heads", heads), "tied": bool(c.get("tie_word_embeddings", False))}
        return shape, f"sizes read from {cfg_file}"
    name = Path(str(path)).name.lower()
    for key, (h, n, v, i, heads, kv, tied) in KNOWN_MODELS.items():
        if key in name or key == str(path).lower():
            shape = {"hidden": h, "layers": n, "vocab": v, "intermediate": i, "heads": heads, "kv_heads": kv,
                     "tied": tied}
            return shape, f"{path} not found here: sizes assumed from the known model '{key}'"
    raise TurngymError(f"dry run: model.path={path!r} is neither a local folder with config.json nor a known model "
                       f"({', '.join(k for k in KNOWN_MODELS if k != 'default')}); point it at a folder holding "
                       "the model's config.json (no weights needed)")


def count_parameters(s: dict[str, Any]) -> int:
    """Parameters of a Llama/Qwen-style decoder (biases ignored)."""
    h, i, kv = s["hidden"], s["intermediate"], s["hidden"] // s["heads"] * s["kv_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return s["vocab"] * h * (1 if s["tied"] else 2) + s["layers"] * per_layer + h


def lora_parameters(s: dict[str, Any], r: int, targets: list[str]) -> int:
    """Adapter parameters: r x (in + out) per targeted projection and layer."""
    h, i, kv = s["hidden"], s["intermediate"], s["hidden"] // s["heads"] * s["kv_heads"]
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, i),
            "up_proj": (h, i), "down_proj": (i, h)}
    return s["layers"] * sum(r * sum(dims[t]) for t in targets if t in dims)


def dry_run(cfg: RLConfig, nodes: int = 1, gpus_per_node: int = 1) -> dict[str, Any]:
    """Validate ``cfg`` and describe its run on ``nodes`` x ``gpus_per_node`` ranks (see the module docstring)."""
    if nodes < 1 or gpus_per_node < 1:
        raise TurngymError(f"dry run: nodes={nodes}, gpus_per_node={gpus_per_node}: both must be >= 1")
    validate_config(cfg)
    world = nodes * gpus_per_node
    mode = cfg.run.data_parallel if world > 1 else "none"
    r, m = cfg.rollout, cfg.model
    warnings = []
    tasks_per_rank = [len(range(k, r.tasks_per_iter, world)) for k in range(world)]
    if min(tasks_per_rank) == 0:
        warnings.append(f"rollout.tasks_per_iter={r.tasks_per_iter} < {world} ranks: some ranks roll out nothing "
                        "and only wait; raise tasks_per_iter to a multiple of the world size")
    elif len(set(tasks_per_rank)) > 1:
        warnings.append(f"rollout.tasks_per_iter={r.tasks_per_iter} is not a multiple of {world} ranks: "
                        "uneven rollout shares")
    if m.device == "cpu" and world > 1:
        warnings.append("model.device=cpu on GPU nodes: the ranks would train on CPUs (gloo)")

    shape, source = model_shape(str(m.path))
    nbytes = DTYPE_BYTES.get(m.dtype, 4)
    n_params = count_parameters(shape)
    trainable = lora_parameters(shape, m.lora_r, list(m.lora_target_modules)) if m.lora else n_params
    shard = world if mode == "fsdp2" else 1
    h, layers = shape["hidden"], shape["layers"]
    tokens = cfg.optim.micro_batch_tokens
    # Rough: checkpointing keeps one hidden state per layer plus one layer's internals; without it every layer's
    # internals (~ attention + MLP intermediates) stay for the backward. Plus fp32 logits of the micro-batch.
    per_layer_full = tokens * (10 * h + 3 * shape["intermediate"]) * nbytes
    act = (tokens * h * layers * nbytes + per_layer_full) if m.gradient_checkpointing else layers * per_layer_full
    act += tokens * shape["vocab"] * 4
    mem = {"parameters": n_params * nbytes / shard, "gradients": trainable * nbytes / shard,
           "optimizer": 2 * trainable * nbytes / shard, "activations": act}
    if m.lora:  # the frozen base is never sharded by the optimizer; adapters are small
        mem["parameters"] = n_params * nbytes / shard + trainable * nbytes
    kv_note = "rollout.engine=hf: generation shares the policy's weights; its KV cache grows with max_concurrent"
    if r.engine == "vllm":
        util = float(r.engine_kwargs.get("gpu_memory_utilization", 0.9))
        mem["vllm (weights + KV cache)"] = util * ASSUMED_GPU_GIB * GIB
        kv_note = (f"vLLM takes gpu_memory_utilization={util} of each rank's GPU (assumed {ASSUMED_GPU_GIB:g} GiB): "
                   "weights copy + KV cache")
    total = sum(mem.values())
    ranks = [{"rank": k, "node": k // gpus_per_node, "local_rank": k % gpus_per_node, "tasks": tasks_per_rank[k],
              "engine": r.engine, "roles": ["rollout", "update"] + (["eval", "log", "checkpoint"] if k == 0 else [])}
             for k in range(world)]
    return {"config": "valid", "nodes": nodes, "gpus_per_node": gpus_per_node, "world": world,
            "data_parallel": mode, "backend": "nccl" if m.device != "cpu" else "gloo", "ranks": ranks,
            "model": str(m.path), "model_source": source, "shape": shape, "parameters": n_params,
            "trainable_parameters": trainable, "dtype": m.dtype, "memory_per_rank_gib": {
                k: round(v / GIB, 3) for k, v in mem.items()}, "total_per_rank_gib": round(total / GIB, 3),
            "notes": [kv_note, "AdamW keeps two moments per trainable parameter, in the parameter dtype",
                      (f"activations: rough, one micro-batch of optim.micro_batch_tokens={tokens} "
                      f"({'with' if m.gradient_checkpointing else 'without'} gradient checkpointing) + fp32 logits")],
            "warnings": warnings,
            "launch": (f"torchrun --nnodes {nodes} --nproc_per_node {gpus_per_node} --rdzv_backend c10d "
                       "--rdzv_endpoint HOST:29500 -m turngym train CONFIG") if world > 1 else "turngym train CONFIG"}


def render(report: dict[str, Any]) -> str:
    """The dry run's report as text."""
    lines = [f"config: {report['config']} (every key checked)",
             (f"world: {report['nodes']} node(s) x {report['gpus_per_node']} GPU(s) = {report['world']} rank(s); "
             f"data_parallel={report['data_parallel']}, backend={report['backend']}")]
    for rk in report["ranks"]:
        lines.append(f"  rank {rk['rank']:>3}: node {rk['node']}, local_rank {rk['local_rank']}, "
                     f"{rk['tasks']} task(s)/iter on its own {rk['engine']} engine; {', '.join(rk['roles'])}")
    s = report["shape"]
    lines.append(f"model: {report['model']} ({report['model_source']})")
    lines.append(f"  hidden {s['hidden']}, layers {s['layers']}, vocab {s['vocab']}, intermediate "
                 f"{s['intermediate']}: {report['parameters'] / 1e9:.3g}B parameters, "
                 f"{report['trainable_parameters'] / 1e6:.4g}M trainable, {report['dtype']}")
    lines.append("memory per rank (GiB):")
    for k, v in report["memory_per_rank_gib"].items():
        lines.append(f"  {k:<28} {v:>9.2f}")
    lines.append(f"  {'total':<28} {report['total_per_rank_gib']:>9.2f}")
    lines += [f"note: {n}" for n in report["notes"]]
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    lines.append(f"launch: {report['launch']}")
    return "\n".join(lines)


__all__ = ["KNOWN_MODELS", "count_parameters", "dry_run", "model_shape", "render"]
