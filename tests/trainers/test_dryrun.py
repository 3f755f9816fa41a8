"""The dry run validates a multi-node config and estimates per-rank memory on a CPU, without weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from turngym.errors import TurngymError
from turngym.trainers.config import ConfigError, RLConfig, load_config
from turngym.trainers.dryrun import count_parameters, dry_run, model_shape, render

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
GPU_RECIPES = sorted(CONFIGS.glob("*_gpu.yaml"))


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.stem)
def test_gpu_recipes_dry_run_on_two_nodes(recipe):
    cfg = load_config(RLConfig, str(recipe), [])
    cfg.run.data_parallel = "ddp"  # the baseline: replicated (a recipe may ask for fsdp2 itself)
    ddp = dry_run(cfg, nodes=2, gpus_per_node=4)
    assert ddp["world"] == 8 and [r["node"] for r in ddp["ranks"]] == [0] * 4 + [1] * 4
    assert "not found here" in ddp["model_source"]  # /models/... is absent: the known-model table
    assert ddp["parameters"] > 1e9
    cfg.run.data_parallel = "fsdp2"
    fsdp = dry_run(cfg, nodes=2, gpus_per_node=4)
    mem, rep = fsdp["memory_per_rank_gib"], ddp["memory_per_rank_gib"]
    assert mem["optimizer"] == pytest.approx(rep["optimizer"] / 8, rel=1e-2)
    text = render(fsdp)
    assert "data_parallel=fsdp2" in text and "rank   7: node 1" in text and "total" in text


def test_tiny_local_folder_counts_the_real_parameters(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    config.save_pretrained(tmp_path)
    shape, source = model_shape(str(tmp_path))
    assert "config.json" in source
    model = transformers.LlamaForCausalLM(config)
    assert count_parameters(shape) == sum(p.numel() for p in model.parameters())
    cfg = load_config(RLConfig, None, [f"model.path={tmp_path}", "rollout.tasks_per_iter=2"])
    one, two = dry_run(cfg, 1, 1), dry_run(cfg, 1, 4)
    assert one["data_parallel"] == "none" and two["data_parallel"] == "ddp"
    assert any("tasks_per_iter=2 < 4" in w for w in two["warnings"])
    assert one["memory_per_rank_gib"]["parameters"] == two["memory_per_rank_gib"]["parameters"]


def test_dry_run_rejects_bad_keys_and_unknown_models(tmp_path):
    cfg = load_config(RLConfig, None, [f"model.path={tmp_path / 'nowhere'}"])
    with pytest.raises(TurngymError, match="neither a local folder"):
        dry_run(cfg, 1, 2)
    cfg = load_config(RLConfig, None, [])
    cfg.run.data_parallel = "fsdp"
    with pytest.raises(ConfigError, match="run.data_parallel"):
        dry_run(cfg, 2, 8)


def test_the_cli_dry_run_prints_the_layout_and_builds_nothing(tmp_path, capsys):
    from turngym.cli import main

    recipe = Path(__file__).resolve().parents[2] / "configs" / "gigpo_webshop_gpu.yaml"
    assert main(["train", str(recipe), f"run.dir={tmp_path / 'run'}", "run.data_parallel=fsdp2", "--dry-run",
                 "--nodes", "2", "--gpus-per-node", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 node(s) x 4 GPU(s) = 8 rank(s)" in out and "torchrun --nnodes 2 --nproc_per_node 4" in out
    assert not (tmp_path / "run").exists()  # nothing built, nothing written
