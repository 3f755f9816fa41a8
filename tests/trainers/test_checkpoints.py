"""Checkpoints safe to load and to resume: plain data under weights_only, fsynced, torn lines and corrupt
checkpoints survived, config drift reported or refused, no line logged twice.

In-process runs of the corridor env (tests/trainers/corridor.py) with a tiny random policy; the kill -9
tests in separate processes are in test_kill_resume.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HERE = Path(__file__).parent
VOLATILE = ("time", "tokens_per_s", "env_steps_per_s")


@pytest.fixture(scope="module")
def corridor():
    spec = importlib.util.spec_from_file_location("turngym_test_corridor", HERE / "corridor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register()
    return module


@pytest.fixture(scope="module")
def word_tok(corridor):
    return corridor.word_tokenizer()


def _trainer(corridor, word_tok, run_dir, *overrides, resume=False):
    from turngym.trainers.config import RLConfig, load_config
    from turngym.trainers.rl import RLTrainer

    torch.set_num_threads(1)
    cfg = load_config(RLConfig, None, [
        f"env.id={corridor.ENV_ID}",
        "agent.options={system_prompt: go right, num_exemplars: 0, format_reminder: false, prefill: false}",
        "agent.max_tokens=1", "rollout.tasks_per_iter=2", "rollout.group_size=4", "optim.lr=0.003",
        f"run.dir={run_dir}", "run.eval_tasks=0", "run.progress=false", "run.save_every=2", "run.iterations=2",
        "run.tensorboard=false", *overrides])
    trainer = RLTrainer(cfg, model=corridor.tiny_policy(word_tok, seed=0), tokenizer=word_tok, resume=resume)
    trainer.engine.eos_token_ids = frozenset()  # a random model would stop at random lengths
    return trainer


def _lines(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(VOLATILE)}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- tensors and plain data only ---------------------------------------------------------------------------


def test_the_trainer_state_loads_with_weights_only_and_round_trips(corridor, word_tok, tmp_path):
    """SPA's numpy replay, EPO's history, optimizer, scheduler, the RNG states and log Z all load under
    torch.load(weights_only=True) and come back as they were saved."""
    from turngym.trainers.runlog import load_state, rng_state

    trainer = _trainer(corridor, word_tok, tmp_path / "spa", "algo.estimator=spa", "algo.entropy_coef=0.01",
                       "algo.epo_smooth_coef=0.1")
    trainer.train()
    state = trainer._state()
    torch.load(tmp_path / "spa" / "checkpoint-2" / "trainer_state.pt", weights_only=True)
    loaded = load_state(tmp_path / "spa" / "checkpoint-2")
    assert loaded["entropy_history"] == state["entropy_history"] and len(state["entropy_history"]) == 2
    assert len(loaded["spa_progress"]) == len(state["spa_progress"]) == 2
    for a, b in zip(loaded["spa_progress"], state["spa_progress"], strict=True):
        assert all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and (a[k] == b[k]).all() for k in b)
    python, numpy_state = state["rng"]["python"], state["rng"]["numpy"]
    assert loaded["rng"]["python"] == python
    assert loaded["rng"]["numpy"][0] == numpy_state[0] and (loaded["rng"]["numpy"][1] == numpy_state[1]).all()
    assert loaded["rng"]["numpy"][1].dtype == np.uint32 and loaded["rng"]["numpy"][2:] == numpy_state[2:]
    assert loaded["scheduler"] == state["scheduler"] and loaded["config"] == state["config"]

    before = rng_state()  # set_rng_state takes the loaded (converted) states back
    from turngym.trainers.runlog import set_rng_state

    set_rng_state(loaded["rng"])
    import random

    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state["rng"])
    assert draws == (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(before)

    tb = _trainer(corridor, word_tok, tmp_path / "tb", "algo.objective=tb", "run.iterations=1", "run.save_every=1")
    tb.train()
    assert torch.equal(load_state(tmp_path / "tb" / "checkpoint-1")["log_z"], tb.log_z.detach())


def test_a_pickled_payload_in_a_checkpoint_runs_no_code(corridor, word_tok, tmp_path):
    """Before: torch.load(weights_only=False) ran whatever a run folder's trainer_state.pt pickled."""
    from turngym.errors import TurngymError
    from turngym.trainers.runlog import load_state

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    _trainer(corridor, word_tok, tmp_path / "run").train()
    state_file = tmp_path / "run" / "checkpoint-2" / "trainer_state.pt"
    torch.save({"iteration": 2, "evil": Payload()}, state_file)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        load_state(state_file.parent)
    with pytest.raises(TurngymError, match="no checkpoint .* can be loaded"), pytest.warns(UserWarning):
        _trainer(corridor, word_tok, tmp_path / "run", resume=True)
    assert not marker.exists()


def test_a_state_that_would_not_load_is_refused_when_saved(tmp_path):
    from turngym.trainers.runlog import plain_state

    assert plain_state({"a": np.float32(1.5), "b": (np.arange(3, dtype=np.uint16),)})["a"] == 1.5
    with pytest.raises(TypeError, match=r"state\.x\.y"):
        plain_state({"x": {"y": object()}})


# ---- torn lines and corrupt checkpoints ---------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_tolerated(corridor, word_tok, tmp_path):
    """Before: read_metrics, `turngym plot` and resume raised JSONDecodeError on a line a kill tore."""
    from turngym.trainers.runlog import MetricsLog, ResumeWarning, plot_run, read_metrics

    _trainer(corridor, word_tok, tmp_path / "full", "run.iterations=3").train()
    whole = _lines(tmp_path / "full")
    killed = _trainer(corridor, word_tok, tmp_path, "run.iterations=3")
    for _ in range(3):  # killed while writing iteration 4's line; checkpoint-2 is the newest
        killed.iteration()
        if killed.iteration_done == 2:
            killed.save()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "iteration": 4, "succ')
    with pytest.warns(ResumeWarning, match="torn"):
        assert len(read_metrics(tmp_path)) == 3
    pytest.importorskip("matplotlib")
    with pytest.warns(ResumeWarning):
        assert plot_run(tmp_path).is_file()
    with pytest.warns(ResumeWarning):
        resumed = _trainer(corridor, word_tok, tmp_path, "run.iterations=3", resume=True)
    assert resumed.iteration_done == 2 and _lines(tmp_path) == whole[:2]
    resumed.train()
    assert _lines(tmp_path) == whole

    with open(tmp_path / "metrics.jsonl", "a") as f:  # a run appending after a torn line does not glue two records
        f.write('{"kind": "tr')
    with pytest.warns(ResumeWarning, match="torn"):
        log = MetricsLog(tmp_path, tensorboard=False)
    log.write({"kind": "train", "iteration": 9})
    assert read_metrics(tmp_path)[-1] == {"kind": "train", "iteration": 9}


@pytest.mark.parametrize("damage", ["state", "weights"])
def test_a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(corridor, word_tok, tmp_path, damage):
    """Before: a truncated trainer_state.pt (or weights file) of the newest checkpoint made resume raise."""
    from turngym.errors import TurngymError
    from turngym.trainers.runlog import ResumeWarning

    _trainer(corridor, word_tok, tmp_path / "full", "run.iterations=4").train()
    _trainer(corridor, word_tok, tmp_path, "run.iterations=4").train()
    name = "trainer_state.pt" if damage == "state" else "model.safetensors"
    for ckpt in ("checkpoint-4", "checkpoint-2"):
        target = tmp_path / ckpt / name
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
        if ckpt == "checkpoint-4":
            with pytest.warns(ResumeWarning, match="checkpoint-4.*cannot be loaded"):
                resumed = _trainer(corridor, word_tok, tmp_path, "run.iterations=4", resume=True)
            assert resumed.iteration_done == 2
            resumed.train()  # checkpoint-4 is written again, whole
            assert _lines(tmp_path) == _lines(tmp_path / "full")
            target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(TurngymError, match="no checkpoint .* can be loaded"), pytest.warns(ResumeWarning):
        _trainer(corridor, word_tok, tmp_path, "run.iterations=4", resume=True)


def test_a_resume_finishes_the_pruning_a_kill_after_the_save_left_undone(corridor, word_tok, tmp_path, monkeypatch):
    """Before: a kill between checkpoint-6's rename and the prune left checkpoint-2 beside 4 and 6 for good
    (the resumed run saved nothing more, so nothing pruned it); CI's random kill -9 test caught it."""
    from turngym.trainers import runlog

    monkeypatch.setattr(runlog, "prune_checkpoints", lambda *a, **k: None)  # every save "killed" before its prune
    _trainer(corridor, word_tok, tmp_path, "run.iterations=6").train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    monkeypatch.undo()
    finished = (tmp_path / "metrics.jsonl").read_text()
    resumed = _trainer(corridor, word_tok, tmp_path, "run.iterations=6", resume=True)
    assert resumed.iteration_done == 6
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    resumed.train()
    assert (tmp_path / "metrics.jsonl").read_text() == finished


# ---- fsync ---------------------------------------------------------------------------------------------------


def test_checkpoint_files_and_folders_are_fsynced_before_the_rename(corridor, word_tok, tmp_path, monkeypatch):
    """Before: nothing was fsynced, so a power cut after the rename could leave an empty checkpoint."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name fsynced descriptors")
    trainer = _trainer(corridor, word_tok, tmp_path)
    trainer.iteration()
    trainer.iteration()
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def record_replace(src, dst, *a, **k):
        events.append(("replace", str(src), str(dst)))
        return replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    trainer.save()
    trainer.log.write({"kind": "train", "iteration": 3})
    rename = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("checkpoint-2"))
    final, tmp = tmp_path / "checkpoint-2", Path(events[rename][1])
    synced = {e[1] for e in events[:rename] if e[0] == "fsync"}
    written = {str(tmp / p.relative_to(final)) for p in final.rglob("*")}
    assert {str(tmp / "trainer_state.pt"), str(tmp / "model.safetensors"), str(tmp)} <= written | {str(tmp)} <= synced
    assert ("fsync", str(tmp_path)) in events[rename:]  # the rename itself made durable
    latest = next(i for i, e in enumerate(events) if e[0] == "replace" and e[2].endswith("latest"))
    assert ("fsync", events[latest][1]) in events[:latest] and ("fsync", str(tmp_path)) in events[latest:]
    assert events[-1] == ("fsync", str(tmp_path / "metrics.jsonl"))


# ---- resume: no line twice, config drift ------------------------------------------------------------------


def test_resume_logs_no_line_twice(corridor, word_tok, tmp_path):
    """Before: resuming a run killed after its first eval (no checkpoint yet) logged the iteration-0 eval
    twice, and resuming a finished run logged its final eval again."""
    overrides = ("run.eval_tasks=2", "run.iterations=2")
    _trainer(corridor, word_tok, tmp_path / "full", *overrides).train()
    killed = _trainer(corridor, word_tok, tmp_path / "run", *overrides)
    killed.evaluate()  # the iteration-0 eval is logged, then the run is killed
    killed.iteration()
    del killed
    _trainer(corridor, word_tok, tmp_path / "run", *overrides, resume=True).train()
    assert _lines(tmp_path / "run") == _lines(tmp_path / "full")
    assert [(r["kind"], r["iteration"]) for r in _lines(tmp_path / "run")] == [("eval", 0), ("train", 1),
                                                                               ("train", 2), ("eval", 2)]
    _trainer(corridor, word_tok, tmp_path / "run", *overrides, resume=True).train()
    assert _lines(tmp_path / "run") == _lines(tmp_path / "full")


def test_config_drift_on_resume_is_reported_and_refused_for_fixed_keys(corridor, word_tok, tmp_path):
    """Before: the saved config was never compared with the resumed one."""
    from turngym.trainers.runlog import RESUME_FIXED, ResumeRefused, ResumeWarning

    _trainer(corridor, word_tok, tmp_path).train()
    saved = (tmp_path / "config.yaml").read_text()
    for key in ("rollout.group_size=2", "model.lora=true", "algo.estimator=rloo", "optim.lr=0.1", "run.seed=3"):
        assert key.split("=")[0] in RESUME_FIXED
        with pytest.raises(ResumeRefused, match=key.split("=")[0].replace(".", r"\.")) as info:
            _trainer(corridor, word_tok, tmp_path, key, resume=True)
        assert "set them back" in str(info.value)
        assert (tmp_path / "config.yaml").read_text() == saved
    with pytest.raises(ResumeRefused, match=r"rollout\.group_size: 4 in the checkpoint, 2 now"):
        _trainer(corridor, word_tok, tmp_path, "rollout.group_size=2", resume=True)
    with pytest.warns(ResumeWarning, match=r"run\.iterations: 2 -> 3.*run\.eval_tasks: 0 -> 2"):
        resumed = _trainer(corridor, word_tok, tmp_path, "run.iterations=3", "run.eval_tasks=2", resume=True)
    assert resumed.iteration_done == 2
    resumed.train()
    assert [(r["kind"], r["iteration"]) for r in _lines(tmp_path)] == [("train", 1), ("train", 2), ("train", 3),
                                                                       ("eval", 3)]
