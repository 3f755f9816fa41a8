"""Run tracking and artifacts of the RL trainer: rollouts and evaluations saved as Parquet (resume-safe), and the
optional W&B and MLflow trackers, each read back from what the real package wrote.

The run is the seconds-long corridor run of tests/trainers/test_rl.py (a tiny random policy). W&B runs
offline (WANDB_MODE=offline: its records stay in RUN_DIR/wandb and are read back from the run's .wandb
file); MLflow writes its file store in RUN_DIR/mlruns and is read back with ``MlflowClient``. Needs the
``tracking`` extra (wandb, mlflow-skinny) and ``parquet`` (pyarrow).
"""

from __future__ import annotations

import io
import json
import struct
import sys
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("pyarrow")

SMALL = ("rollout.tasks_per_iter=2", "rollout.group_size=4", "run.eval_tasks=4")


def _config(corridor, run_dir, *overrides):
    from turngym.trainers.config import RLConfig, load_config

    base = [f"env.id={corridor.ENV_ID}",
            "agent.options={system_prompt: go right, num_exemplars: 0, format_reminder: false, prefill: false}",
            "agent.max_tokens=1", "optim.lr=0.003", f"run.dir={run_dir}", "run.progress=false",
            "run.save_every=100", "run.tensorboard=false", "optim.micro_batch_tokens=2048", *SMALL]
    return load_config(RLConfig, None, base + list(overrides))


def _trainer(corridor, word_tok, run_dir, *overrides, seed=0, resume=False):
    from turngym.trainers.rl import RLTrainer

    torch.set_num_threads(1)
    model = corridor.tiny_policy(word_tok, seed=seed)
    trainer = RLTrainer(_config(corridor, run_dir, *overrides), model=model, tokenizer=word_tok, resume=resume)
    trainer.engine.eos_token_ids = frozenset()  # a random model would stop at random lengths
    return trainer


def _records(run_dir, kind):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def _files(run_dir, folder):
    base = Path(run_dir) / folder
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


def _comparable(trajs):
    """The trajectories without wall-clock times (a rerun replays everything else)."""
    from turngym.testing import without_timings

    return [without_timings(t) for t in trajs]


# ---- rollouts and evaluations as Parquet -------------------------------------------------------------------


def test_each_iteration_and_evaluation_is_saved_as_parquet(corridor, word_tok, tmp_path):
    from turngym.agents.types import load_trajectories

    run = tmp_path / "run"
    _trainer(corridor, word_tok, run, "run.iterations=2").train()
    assert _files(run, "rollouts") == ["iter-000001.parquet", "iter-000002.parquet"]
    assert _files(run, "eval") == ["iter-000000.parquet", "iter-000002.parquet"]  # before training, at the end
    for record in _records(run, "train"):
        trajs = load_trajectories(run / "rollouts" / f"iter-{record['iteration']:06d}.parquet")
        assert len(trajs) == record["episodes"] == 2 * 4
        assert sum(t.won for t in trajs) / len(trajs) == pytest.approx(record["success_rate"])
        assert all(t.env_id == corridor.ENV_ID and t.steps and t.steps[0].response_ids for t in trajs)
        assert len({t.group_id for t in trajs}) == 2  # two tasks, a group of four episodes each
    for record in _records(run, "eval"):
        trajs = load_trajectories(run / "eval" / f"iter-{record['iteration']:06d}.parquet")
        assert len(trajs) == record["episodes"] == 4
        assert sum(t.won for t in trajs) == record["successes"]


def test_save_rollouts_false_writes_no_trajectories(corridor, word_tok, tmp_path):
    run = tmp_path / "run"
    _trainer(corridor, word_tok, run, "run.iterations=1", "run.save_rollouts=false").train()
    assert _records(run, "train") and _files(run, "rollouts") == [] and _files(run, "eval") == []


def test_a_resumed_run_rewrites_the_files_after_its_checkpoint(corridor, word_tok, tmp_path):
    from turngym.agents.types import load_trajectories

    overrides = ("run.iterations=4", "run.save_every=2", "run.eval_tasks=0")
    _trainer(corridor, word_tok, tmp_path / "full", *overrides).train()
    # "Killed" after iteration 3: checkpoint-2 exists, iteration 3's rollouts were saved but never checkpointed.
    part = _trainer(corridor, word_tok, tmp_path / "part", *overrides)
    for _ in range(3):
        part.iteration()
        if part.iteration_done == 2:
            part.save()
    del part
    (tmp_path / "part" / "rollouts" / "iter-000004.parquet.123.tmp").write_bytes(b"half a file")  # a kill's leftover
    resumed = _trainer(corridor, word_tok, tmp_path / "part", *overrides, seed=123, resume=True)
    assert resumed.iteration_done == 2
    assert _files(tmp_path / "part", "rollouts") == ["iter-000001.parquet", "iter-000002.parquet"]
    resumed.train()
    names = [f"iter-{i:06d}.parquet" for i in (1, 2, 3, 4)]
    assert _files(tmp_path / "part", "rollouts") == _files(tmp_path / "full", "rollouts") == names
    for name in names:  # the same episodes as the uninterrupted run, none lost, none twice
        a = load_trajectories(tmp_path / "full" / "rollouts" / name)
        b = load_trajectories(tmp_path / "part" / "rollouts" / name)
        assert _comparable(a) == _comparable(b)


def test_prune_trajectory_files_keeps_what_the_checkpoint_covers(tmp_path):
    from turngym.trainers.runlog import prune_trajectory_files, trajectory_file, trajectory_file_iteration

    for folder, it, rank in [("rollouts", 1, None), ("rollouts", 2, None), ("rollouts", 3, 1), ("eval", 2, None),
                             ("eval", 3, None)]:
        path = trajectory_file(tmp_path, folder, it, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    assert trajectory_file_iteration(trajectory_file(tmp_path, "rollouts", 3, 1)) == 3
    removed = prune_trajectory_files(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["iter-000003-rank1.parquet", "iter-000003.parquet"]
    assert _files(tmp_path, "rollouts") == ["iter-000001.parquet", "iter-000002.parquet"]
    assert _files(tmp_path, "eval") == ["iter-000002.parquet"]
    with pytest.raises(ValueError, match="trajectory folder 'train'"):
        trajectory_file(tmp_path, "train", 1)


# ---- W&B ------------------------------------------------------------------------------------------------------


def _wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (``run-ID.wandb``): a 7-byte header, then LevelDB-style 32 KiB
    blocks of chunks (crc32, length, type: full / first / middle / last), each record a protobuf ``Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    records, pos, pending = [], 7, b""
    block = 32768
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's tail too short for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        if length == 0 and kind == 0:
            break
        pos += 7 + length
        pending += chunk
        if kind in (1, 4):  # full or last: a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _wandb_flushed() -> None:
    """Shut W&B's service down, as the end of the process does: ``run.finish()`` returns once the run's
    exit is acknowledged, and the service closes (and so completes) the offline transaction log no later
    than its own shutdown. Read right after ``finish()``, the log once lacked its history records in CI, and
    the resume test failed once in 9 runs of ``pytest -n 2 tests/trainers`` here; after the shutdown the
    test reads the finished log, as a later ``wandb sync`` does. A failure prints the record kinds it held."""
    import wandb

    wandb.teardown()


def _record_kinds(records: list) -> Counter:
    return Counter(record.WhichOneof("record_type") for record in records)


def _wandb_history(path: Path) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in _wandb_records(path) if record.WhichOneof("record_type") == "history"]


def test_wandb_offline_logs_every_record_and_the_config(corridor, word_tok, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    _trainer(corridor, word_tok, run, "run.iterations=2", "run.wandb=true", "run.wandb_project=tg-test").train()
    _wandb_flushed()
    run_id = json.loads((run / "trackers.json").read_text())["wandb"]
    logs = list((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(logs) == 1, list((run / "wandb").iterdir())
    history, config = [], {}
    records = _wandb_records(logs[0])
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    train = [h for h in history if "train/success_rate" in h]
    assert [h["iteration"] for h in train] == [1, 2], _record_kinds(records)
    for logged, record in zip(train, _records(run, "train")):
        assert logged["train/success_rate"] == pytest.approx(record["success_rate"])
        assert logged["train/reward_mean"] == pytest.approx(record["reward_mean"])
    evals = [h for h in history if "eval/success_rate" in h]
    assert [h["iteration"] for h in evals] == [r["iteration"] for r in _records(run, "eval")] == [0, 2]
    assert config["run"]["dir"] == str(run) and config["env"]["id"] == corridor.ENV_ID


def test_wandb_resume_continues_the_same_run(corridor, word_tok, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    overrides = ("run.iterations=2", "run.save_every=1", "run.eval_tasks=0", "run.wandb=true")
    _trainer(corridor, word_tok, run, *overrides).train()
    _wandb_flushed()  # a resume comes from a new process, after W&B's service of the first one has shut down
    first = json.loads((run / "trackers.json").read_text())["wandb"]
    _trainer(corridor, word_tok, run, *overrides[1:], "run.iterations=3", resume=True).train()
    _wandb_flushed()
    assert json.loads((run / "trackers.json").read_text())["wandb"] == first
    logs = sorted((run / "wandb").glob(f"offline-run-*-{first}*/run-{first}.wandb"))
    assert len(logs) == 2  # W&B keeps one offline folder per process; `wandb sync` merges them into one run
    iterations = [h["iteration"] for log in logs for h in _wandb_history(log) if "train/success_rate" in h]
    assert iterations == [1, 2, 3], [_record_kinds(_wandb_records(log)) for log in logs]


# ---- MLflow -----------------------------------------------------------------------------------------------------


def test_mlflow_file_store_logs_every_record_and_the_config(corridor, word_tok, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    _trainer(corridor, word_tok, run, "run.iterations=2", "run.mlflow=true", "run.mlflow_experiment=tg-test").train()
    run_id = json.loads((run / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    train = _records(run, "train")
    history = client.get_metric_history(run_id, "train/success_rate")
    assert [(m.step, m.value) for m in history] == [(r["iteration"], pytest.approx(r["success_rate"])) for r in train]
    evals = client.get_metric_history(run_id, "eval/success_rate")
    assert [m.step for m in evals] == [0, 2]
    found = client.get_run(run_id)
    assert found.info.status == "FINISHED"
    assert found.data.params["run.dir"] == str(run) and found.data.params["env.id"] == corridor.ENV_ID
    assert client.get_experiment(found.info.experiment_id).name == "tg-test"


def test_mlflow_resume_continues_the_same_run(corridor, word_tok, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = tmp_path / "run"
    overrides = ("run.iterations=2", "run.save_every=1", "run.eval_tasks=0", "run.mlflow=true")
    _trainer(corridor, word_tok, run, *overrides).train()
    first = json.loads((run / "trackers.json").read_text())["mlflow"]
    _trainer(corridor, word_tok, run, *overrides[1:], "run.iterations=3", resume=True).train()
    assert json.loads((run / "trackers.json").read_text())["mlflow"] == first
    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    assert [m.step for m in client.get_metric_history(first, "train/success_rate")] == [1, 2, 3]


def test_a_missing_tracker_package_names_the_extra(corridor, word_tok, tmp_path, monkeypatch):
    import sys

    from turngym.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb gives: ImportError
    with pytest.raises(MissingDependencyError, match=r"run.wandb=true.*pip install 'turngym\[tracking\]'"):
        _trainer(corridor, word_tok, tmp_path / "run", "run.wandb=true")


# ---- SFT and progress bars ---------------------------------------------------------------------------------------


def test_sft_saves_its_evaluations_and_logs_to_mlflow(tmp_path, tiny_tokenizer, make_tiny_model, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from turngym.agents.types import load_trajectories
    from turngym.trainers.config import SFTConfig, load_config
    from turngym.trainers.sft import SFTTrainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    torch.set_num_threads(1)
    model = make_tiny_model(tiny_tokenizer, seed=1)
    model.config.max_position_embeddings = 4096
    cfg = load_config(SFTConfig, None, ["env.id=turngym/BlocksWorld-v0", "agent.options={num_exemplars: 0}",
                                        "agent.max_tokens=4", "env.max_steps=2", "data.episodes=2", "data.epochs=2",
                                        "data.batch_size=4", f"run.dir={tmp_path}", "run.eval_tasks=2",
                                        "run.tensorboard=false", "run.progress=false", "run.mlflow=true"])
    result = SFTTrainer(cfg, model=model, tokenizer=tiny_tokenizer).train()
    steps = [r["iteration"] for r in _records(tmp_path, "train")]
    assert steps and steps[-1] == int(result["checkpoint"].rsplit("-", 1)[1])
    assert _files(tmp_path, "eval") == ["iter-000000.parquet", f"iter-{steps[-1]:06d}.parquet"]
    for record in _records(tmp_path, "eval"):
        trajs = load_trajectories(tmp_path / "eval" / f"iter-{record['iteration']:06d}.parquet")
        assert len(trajs) == record["episodes"] == 2 and sum(t.won for t in trajs) == record["successes"]
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    nll = client.get_metric_history(run_id, "train/nll")
    assert [m.step for m in nll] == steps
    assert [m.value for m in nll] == pytest.approx([r["nll"] for r in _records(tmp_path, "train")])


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal (tqdm shows bars only there)."""

    def isatty(self) -> bool:
        return True


def test_progress_bars_follow_run_progress_and_the_terminal(capsys, monkeypatch):
    from turngym.trainers.runlog import progress_bar

    assert progress_bar(3, "sft", enabled=False) is None  # run.progress=false
    bar = progress_bar(3, "sft", enabled=True)  # pytest captures stderr: not a terminal, so the bar stays quiet
    assert bar is not None and bar.disable
    bar.update(3)
    bar.close()
    assert capsys.readouterr().err == ""
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress_bar(3, "sft", enabled=True, unit="step")
    bar.update(3)
    bar.close()
    assert "sft:" in terminal.getvalue() and "/3 [" in terminal.getvalue()


def test_the_model_conversion_shows_its_stages_on_a_terminal(monkeypatch):
    from turngym.agents.engines import default_model as dm

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(dm._PROGRESS, "enabled", True, raising=False)
    seen = []
    for _ in dm._stage_bar("tiny.Q4_0.gguf", ["tokenizer", "de-quantize", "rebuild", "save"]):
        seen.append(terminal.getvalue())
    out = terminal.getvalue()
    assert "converting tiny.Q4_0.gguf:" in out and "/4 [" in out
    assert all(stage in text for stage, text in zip(["tokenizer", "de-quantize", "rebuild", "save"], seen))
    monkeypatch.setattr(dm._PROGRESS, "enabled", False)  # resolve_model(..., progress=False)
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert len(list(dm._stage_bar("tiny.Q4_0.gguf", ["a", "b"]))) == 2 and quiet.getvalue() == ""


def test_data_parallel_ranks_save_their_own_groups(tmp_path):
    """Two torchrun ranks roll out different groups: rank 0 writes iter-N.parquet, rank 1 iter-N-rank1.parquet,
    and together they hold the episodes one process plays."""
    import subprocess

    from turngym.agents.types import load_trajectories

    worker = str(Path(__file__).parent / "dp_worker.py")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    for cmd in ([sys.executable, worker, str(tmp_path / "one")], [*torchrun, worker, str(tmp_path / "two")]):
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
    one = _files(tmp_path / "one", "rollouts")
    assert one and all("-rank" not in name for name in one)
    assert _files(tmp_path / "two", "rollouts") == sorted(one + [n.replace(".parquet", "-rank1.parquet") for n in one])
    for name in one:
        single = load_trajectories(tmp_path / "one" / "rollouts" / name)
        rank0 = load_trajectories(tmp_path / "two" / "rollouts" / name)
        rank1 = load_trajectories(tmp_path / "two" / "rollouts" / name.replace(".parquet", "-rank1.parquet"))
        assert rank0 and rank1 and not {t.group_id for t in rank0} & {t.group_id for t in rank1}
        assert sorted(t.group_id for t in rank0 + rank1) == sorted(t.group_id for t in single)
    assert _files(tmp_path / "two", "eval") == _files(tmp_path / "one", "eval")  # rank 0 evaluates
