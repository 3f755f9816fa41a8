"""turngym.threads: OpenMP's settings are in the environment before torch loads, from every entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest

from turngym import threads

# Runs an entry point in a fresh interpreter with a probe variable in threads.DEFAULTS, and records the
# environment at the moment torch is first imported (a meta-path finder sees the import before torch loads).
PROBE = r"""
import json, os, sys
import turngym.threads as threads
threads.DEFAULTS = {**threads.DEFAULTS, "TURNGYM_THREADS_PROBE": "set"}
seen = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = {k: os.environ.get(k) for k in threads.DEFAULTS}
        return None

sys.meta_path.insert(0, Watch())
import importlib
entry = importlib.import_module(sys.argv[1])
try:
    entry.main(json.loads(sys.argv[2]))
except BaseException as exc:  # the entry fails on its bad model path after torch is imported
    seen["exit"] = type(exc).__name__
print("PROBE", json.dumps(seen))
"""


def _probe(module: str, argv: list[str], tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in threads.DEFAULTS and k != "TURNGYM_THREADS_PROBE"}
    env.update(PYTHONSAFEPATH="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-P", "-c", PROBE, module, json.dumps(argv)], check=False,
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("PROBE ")), None)
    assert line is not None, out.stdout + out.stderr
    return json.loads(line[len("PROBE "):])


@pytest.mark.parametrize("module, argv", [
    ("turngym.cli", ["train", "grpo_game24", "model.path=/nonexistent/model", "run.dir=run", "run.progress=false",
                     "run.tensorboard=false"]),
    ("turngym.benchmarks.trl_compare", ["--only", "turngym", "--model", "/nonexistent/model", "--out", "out"]),
])
def test_entry_points_set_the_defaults_before_torch_is_imported(module, argv, tmp_path):
    pytest.importorskip("torch")
    seen = _probe(module, argv, tmp_path)
    assert "torch" in seen, f"{module} never imported torch: the probe tests nothing ({seen})"
    assert seen["torch"]["TURNGYM_THREADS_PROBE"] == "set"
    for key, value in threads.DEFAULTS.items():
        assert seen["torch"][key] == value, key


def test_the_users_environment_wins_and_nothing_is_set_after_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    monkeypatch.setattr(threads, "_warned", False)
    monkeypatch.delenv("TURNGYM_THREADS_PROBE", raising=False)
    with pytest.warns(RuntimeWarning, match="before importing torch"):
        assert threads.configure({"TURNGYM_THREADS_PROBE": "late"}) == {}
    assert "TURNGYM_THREADS_PROBE" not in os.environ
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once only
        assert threads.configure({"TURNGYM_THREADS_PROBE": "late"}) == {}
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv("OMP_WAIT_POLICY", "USER")
    assert threads.configure({"OMP_WAIT_POLICY": "PASSIVE", "TURNGYM_THREADS_PROBE": "1"}) == {
        "TURNGYM_THREADS_PROBE": "1"}
    assert os.environ["OMP_WAIT_POLICY"] == "USER" and os.environ["TURNGYM_THREADS_PROBE"] == "1"
    monkeypatch.delenv("TURNGYM_THREADS_PROBE")

