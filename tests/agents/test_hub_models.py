"""Hugging Face Hub ids as models: ``org/name[@revision]`` resolved from an HF cache, offline.

The cache is built here, laid out as huggingface_hub lays it out (``models--org--name/snapshots/<commit>/``
and ``refs/<branch or tag>`` holding the commit), with tiny random Llamas in it: ``main`` and the tag ``v1``
point at two commits whose weights differ. Every test runs with ``HF_HUB_OFFLINE=1`` and the cache in
``HF_HUB_CACHE``: nothing here reaches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from turngym.agents.engines import hub
from turngym.agents.engines.default_model import ModelNotFoundError, read_model_info, resolve_model

REPO = "tiny-org/tiny-llama"
MAIN = "0123456789abcdef0123456789abcdef01234567"
V1 = "fedcba9876543210fedcba9876543210fedcba98"
_CORPUS = ["Thought: move the red block. Action: unstack b1 from b2", "Observation: the hand is empty."]


def _tiny_pair(seed: int):
    from turngym.testing import tiny_bpe_tokenizer, tiny_llama

    tokenizer = tiny_bpe_tokenizer(_CORPUS, vocab_size=300)
    return tiny_llama(tokenizer, hidden=32, intermediate=64, layers=1, max_positions=512, seed=seed), tokenizer


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory) -> Path:
    """An HF cache holding REPO at two commits: MAIN (refs/main, seed 0) and V1 (refs/v1, seed 1)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("huggingface_hub")
    cache = tmp_path_factory.mktemp("hf-hub-cache")
    repo = hub.repo_cache_folder(REPO, cache)
    for ref, commit, seed in (("main", MAIN, 0), ("v1", V1, 1)):
        model, tokenizer = _tiny_pair(seed)
        snapshot = repo / "snapshots" / commit
        model.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)  # no newline, as huggingface_hub writes it
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def _snapshot(cache: Path, commit: str) -> Path:
    return cache / f"models--{REPO.replace('/', '--')}" / "snapshots" / commit


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("spec, parsed", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", ("HuggingFaceTB/SmolLM2-135M-Instruct", None)),
    ("Qwen/Qwen2.5-1.5B-Instruct@main", ("Qwen/Qwen2.5-1.5B-Instruct", "main")),
    (f"{REPO}@{V1}", (REPO, V1)),
    ("runs/x/checkpoint-3", None),  # a path: two slashes
    ("./org/name", None), ("/abs/name", None), ("org/", None), ("org/name@", None),
    ("org--x/name", None), ("org/name.git", None), ("default", None), ("gpt2", None),
])
def test_what_reads_as_a_hub_id(spec, parsed):
    assert hub.parse_hub_id(spec) == parsed


def test_the_cache_folder_follows_huggingface_hub(monkeypatch, tmp_path):
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert hub.hub_cache_dir() == Path.home() / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hub.hub_cache_dir() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub.hub_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert hub.hub_cache_dir() == tmp_path / "hubcache"
    assert hub.repo_cache_folder("a/b") == tmp_path / "hubcache" / "models--a--b"


def test_offline_is_read_from_the_environment_when_resolving(monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as huggingface_hub read it at import
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not hub.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_offline()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert hub.hub_offline()


def test_a_cached_id_resolves_to_its_snapshot(offline_cache):
    path = resolve_model(REPO)
    assert path == _snapshot(offline_cache, MAIN)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    # Reports name the Hub id and the commit, not the snapshot folder's hash.
    assert read_model_info(path) == {"name": REPO, "source": {"hub": REPO, "commit": MAIN}}


def test_hf_home_is_honoured(hub_cache, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(hub_cache, tmp_path / "hub")
    assert resolve_model(REPO) == _snapshot(tmp_path / "hub", MAIN)


def test_a_revision_pins_a_commit_by_tag_or_hash(offline_cache):
    assert resolve_model(f"{REPO}@v1") == _snapshot(offline_cache, V1)
    assert resolve_model(f"{REPO}@{V1}") == _snapshot(offline_cache, V1)
    assert resolve_model(f"{REPO}@main") == _snapshot(offline_cache, MAIN)
    assert read_model_info(resolve_model(f"{REPO}@v1"))["source"]["commit"] == V1


def test_an_uncached_id_names_the_id_the_folder_searched_and_the_fix(offline_cache):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("tiny-org/not-downloaded")
    text = str(info.value)
    assert "tiny-org/not-downloaded" in text and str(offline_cache / "models--tiny-org--not-downloaded") in text
    assert "`hf download tiny-org/not-downloaded`" in text and "unset HF_HUB_OFFLINE" in text
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(ModelNotFoundError, match=rf"{REPO} at revision 'v9'.*hf download {REPO} --revision v9"):
        resolve_model(f"{REPO}@v9")


def test_online_with_the_hub_unreachable_a_cached_id_still_loads(hub_cache, monkeypatch, capfd):
    # "Online" against a closed local port: huggingface_hub's look-up fails at once, nothing leaves the machine.
    constants = pytest.importorskip("huggingface_hub.constants")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    assert resolve_model(f"{REPO}@v1") == _snapshot(hub_cache, V1)
    assert f"resolving {REPO} at revision 'v1' on the Hugging Face Hub" in capfd.readouterr().err
    with pytest.raises(ModelNotFoundError, match=r"'tiny-org/elsewhere': the Hugging Face Hub could not be reached "
                                                 r"and tiny-org/elsewhere is not in the HF cache \(searched "):
        resolve_model("tiny-org/elsewhere")


def test_a_local_folder_wins_over_a_hub_id_of_the_same_spelling(offline_cache, tmp_path, monkeypatch):
    local = tmp_path / REPO
    local.mkdir(parents=True)
    (local / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    assert resolve_model(REPO) == Path(REPO)


def test_neither_a_folder_nor_a_hub_id_is_named_in_the_error(offline_cache):
    with pytest.raises(ModelNotFoundError, match=r"model 'runs/x/checkpoint-3' not found: .*Hub id ORG/NAME"):
        resolve_model("runs/x/checkpoint-3")
    with pytest.raises(ModelNotFoundError, match=r"'org/name@' is not a Hugging Face Hub id"):
        hub.resolve_hub_model("org/name@")


def test_a_snapshot_without_config_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    snap = hub.repo_cache_folder("org/onnx-only", tmp_path) / "snapshots" / MAIN
    snap.mkdir(parents=True)
    (snap / "model.onnx").write_bytes(b"x")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text(MAIN)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"org/onnx-only \(.*\) has no config.json.*hf download org/onnx-only"):
        resolve_model("org/onnx-only")


def test_the_hf_engine_loads_a_cached_id(offline_cache):
    from turngym.agents.engines import make_engine
    from turngym.agents.types import SamplingParams

    engine = make_engine(REPO, device="cpu", max_batch_size=2, eos_token_ids=[])
    assert engine.name == f"hf:{REPO}"
    assert make_engine(f"hf:{REPO}@v1", device="cpu").name == f"hf:{REPO}"
    out = engine.generate([[{"role": "user", "content": "Observation: the hand is empty."}]],
                          SamplingParams(max_tokens=3, temperature=0.0))
    assert len(out) == 1 and len(out[0].token_ids) == 3


def test_the_trainer_loads_a_cached_id_at_its_revision(offline_cache):
    import torch

    from turngym.trainers.config import ModelConfig
    from turngym.trainers.model import load_policy

    for spec, commit in ((REPO, MAIN), (f"{REPO}@v1", V1)):
        model, tokenizer = load_policy(ModelConfig(path=spec, device="cpu", dtype="float32"))
        saved = _weights(_snapshot(offline_cache, commit))
        loaded = model.state_dict()
        assert model.training and tokenizer.chat_template
        assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    main, v1 = _weights(_snapshot(offline_cache, MAIN)), _weights(_snapshot(offline_cache, V1))
    assert not torch.equal(main["model.embed_tokens.weight"], v1["model.embed_tokens.weight"])  # the pin matters


def test_the_vllm_engine_resolves_a_cached_id(offline_cache):
    # The vLLM engine hands vllm.LLM the folder this returns (vllm itself is tested in test_vllm_engine.py).
    from turngym.agents.engines.vllm_engine import _resolve_model

    assert _resolve_model(f"{REPO}@v1", progress=False) == _snapshot(offline_cache, V1)


def test_bench_runs_a_cached_hub_id_offline(offline_cache, tmp_path):
    out = tmp_path / "bench"
    env = {**os.environ, "HF_HUB_CACHE": str(offline_cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "turngym.cli", "bench", "--env", "turngym/BlocksWorld-v0", "--agent", "react",
         "--model", REPO, "--episodes", "2", "--max-steps", "2", "--max-tokens", "4", "--out", str(out),
         "--no-progress"],
        check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    [row] = summary["rows"]
    assert row["model"] == f"hf:{REPO}" and row["episodes"] == 2 and row["errors"] == 0
    assert (out / row["trajectories"]).stat().st_size > 0
