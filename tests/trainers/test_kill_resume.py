"""kill -9 at many points of a run, then `resume`: the metrics and the weights equal an uninterrupted run's.

One corridor run (tests/trainers/kill_worker.py: SPA's learned progress replay, EPO's entropy history,
two epochs x two mini-batches, a cosine schedule, evaluations at 0, 3 and 6, checkpoints every 2
iterations) is run once to the end, and once as a chain of processes, each SIGKILLed at its own point
and the next resuming the same run directory:

1. half of the iteration-0 eval line written (no checkpoint yet: the resume starts afresh);
2. right after iteration 3's train line (resume from checkpoint-2);
3. inside checkpoint-4: model files written, trainer state not;
4. checkpoint-4 complete in its temporary folder, not renamed;
5. checkpoint-4 renamed, ``latest`` still naming checkpoint-2; then checkpoint-4's state file is
   truncated, so the resume skips it with a warning for checkpoint-2;
6. half of iteration 5's train line written;
7. at a seeded random moment of the last two iterations;

then a last resume runs to the end. The slow tier adds a chain of kills at seeded random moments of a
whole run (wherever they land: an update, an evaluation, a checkpoint, a metrics line) until five have
landed before the run's end, and one more resume of the finished run, which adds nothing.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
HERE = Path(__file__).parent
WORKER = HERE / "kill_worker.py"
VOLATILE = ("time", "tokens_per_s", "env_steps_per_s")
ITERATIONS = 6
SECONDS_PER_ITERATION = 0.2  # about, on one CPU thread: random kills are drawn over the run's remaining time


def _run(run_dir: Path, point: str, *, resume: bool, kill_after: float | None = None) -> tuple[int, str]:
    cmd = [sys.executable, "-P", str(WORKER), str(run_dir), point] + (["--resume"] if resume else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = ""
    if kill_after is not None:
        for line in proc.stdout:
            head += line
            if line.startswith("READY"):
                break
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, head + out + err


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith(VOLATILE)} for line in lines]


def _weights(run_dir: Path, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / name / "model.safetensors"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run."""
    ref = tmp_path_factory.mktemp("kill") / "ref"
    rc, log = _run(ref, "none", resume=False)
    assert rc == 0, log[-3000:]
    return ref


def _assert_same_run(ref: Path, run: Path) -> None:
    from turngym.trainers.runlog import load_state

    a, b = _records(ref), _records(run)
    assert [(r["kind"], r["iteration"]) for r in b] == [("eval", 0), ("train", 1), ("train", 2), ("train", 3),
                                                        ("eval", 3), ("train", 4), ("train", 5), ("train", 6),
                                                        ("eval", 6)]
    assert a == b
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-4", "checkpoint-6", "config.yaml", "eval", "latest",
                                                     "metrics.jsonl", "rollouts"]  # no temporary file or folder left
    from turngym.agents.types import load_trajectories

    for folder, iterations in (("rollouts", range(1, 7)), ("eval", (0, 3, 6))):  # each once, as uninterrupted
        names = [f"iter-{i:06d}.parquet" for i in iterations]
        assert sorted(p.name for p in (run / folder).iterdir()) == names, folder
        for name in names:
            ta, tb = load_trajectories(ref / folder / name), load_trajectories(run / folder / name)
            assert [(t.group_id, t.seed, [s.response_ids for s in t.steps], t.total_reward) for t in ta] == [
                (t.group_id, t.seed, [s.response_ids for s in t.steps], t.total_reward) for t in tb], name
    for name in ("checkpoint-4", "checkpoint-6"):
        wa, wb = _weights(ref, name), _weights(run, name)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
    sa, sb = load_state(ref / "checkpoint-6"), load_state(run / "checkpoint-6")
    assert sa["iteration"] == sb["iteration"] == 6
    assert sa["entropy_history"] == sb["entropy_history"]
    for x, y in zip(sa["spa_progress"], sb["spa_progress"], strict=True):
        assert all((x[k] == y[k]).all() for k in x)
    for key, value in sa["optimizer"]["state"].items():
        assert all(torch.equal(value[n], sb["optimizer"]["state"][key][n]) for n in value)


def _finish(run: Path, again: bool = False) -> None:
    rc, log = _run(run, "none", resume=True)
    assert rc == 0, log[-3000:]
    if again:  # resuming a finished run logs nothing more (in-process: test_checkpoints.py)
        finished = (run / "metrics.jsonl").read_text()
        rc, log = _run(run, "none", resume=True)
        assert rc == 0 and (run / "metrics.jsonl").read_text() == finished, log[-3000:]


def test_kill_9_at_each_point_then_resume_equals_an_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "killed"

    points = ["torn:eval:0", "after:train:3", "in_checkpoint:4", "before_rename:4", "before_latest:4",
              "torn:train:5"]
    for i, point in enumerate(points):
        rc, log = _run(run, point, resume=i > 0)
        assert rc == -signal.SIGKILL, (point, log[-3000:])  # the kill point was reached
        if point == "torn:eval:0":
            assert not list(run.glob("checkpoint-*")) and not (run / "metrics.jsonl").read_text().endswith("\n")
        if point == "in_checkpoint:4":
            names = [p.name for p in run.glob("checkpoint-4*")]
            assert names and all(n.endswith(".tmp") for n in names), names  # only the temporary folder
        if point == "before_latest:4":
            assert (run / "latest").read_text().strip() == "checkpoint-2"
            state = run / "checkpoint-4" / "trainer_state.pt"
            state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # a corrupt newest checkpoint
        if i == 1:
            assert "starting afresh" in log, log[-2000:]
        if points[i - 1] == "before_latest:4":
            assert "checkpoint-4" in log and "cannot be loaded" in log and "resumed from" in log, log[-3000:]
            assert "(iteration 2)" in log
    rc, log = _run(run, "none", resume=True, kill_after=_random_moment(random.Random(5), run))
    assert rc in (0, -signal.SIGKILL), log[-3000:]
    _finish(run)
    _assert_same_run(reference, run)


def _newest_checkpoint(run: Path) -> int:
    from turngym.trainers.runlog import checkpoint_iteration, list_checkpoints

    found = list_checkpoints(run) if run.exists() else []
    return checkpoint_iteration(found[-1]) if found else 0


def _random_moment(rng: random.Random, run: Path) -> float:
    return rng.uniform(0.0, SECONDS_PER_ITERATION * (ITERATIONS - _newest_checkpoint(run) + 0.5))


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_equals_an_uninterrupted_run(reference, tmp_path):
    run = tmp_path / "killed"
    rng = random.Random(17)
    landed = []
    for _ in range(12):  # segments killed at random moments after their trainer is built, until 5 landed in a run
        start = _newest_checkpoint(run)
        rc, log = _run(run, "none", resume=True, kill_after=_random_moment(rng, run))
        assert rc in (0, -signal.SIGKILL), log[-3000:]
        if _newest_checkpoint(run) == ITERATIONS:  # the run saved its last checkpoint: check it, start another
            if rc != 0:  # killed after the last save: the resume of a finished run finishes its pruning
                _finish(run)
            _assert_same_run(reference, run)
            shutil.rmtree(run)
            continue
        text = (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").exists() else ""
        landed.append((start, text.count("\n"), bool(text) and not text.endswith("\n"), _newest_checkpoint(run)))
        if len(landed) == 5:
            break
    print("random kills (resumed at, metric lines, torn line, newest checkpoint after):", *landed, sep="\n  ")
    assert len(landed) == 5
    _finish(run, again=True)
    _assert_same_run(reference, run)
