"""A run directory: metrics (JSONL + TensorBoard), atomic checkpoints with RNG states, safe resume, plots.

Layout of ``RUN_DIR``::

    config.yaml            the resolved config of the run
    metrics.jsonl          one JSON object per iteration (and per evaluation)
    tb/                    TensorBoard events (if tensorboard is installed)
    wandb/, mlruns/        W&B (offline) and MLflow (file store) runs, with run.wandb / run.mlflow
    trackers.json          the W&B and MLflow run ids, so a resumed run continues the same tracker runs
    rollouts/iter-N.parquet  the trajectories of iteration N (run.save_rollouts; docs/trajectories.md)
    eval/iter-N.parquet    the trajectories of the evaluation after iteration N (0: before training)
    checkpoint-N/          engine-loadable model folder + trainer_state.pt
    latest                 the name of the newest complete checkpoint
    curves.png             `turngym plot RUN_DIR`

Crash safety. A checkpoint is written into a temporary folder, every file
and the folder are fsynced, then it is renamed to ``checkpoint-N`` and the
run folder is fsynced (:func:`turngym.files.atomic_path`); ``latest`` is
replaced the same way. A run killed at any moment (``kill -9``, a power cut)
leaves the previous or the new checkpoint, never half of one. Metric lines
are appended whole and fsynced; a line torn by a kill is dropped when the
log is read or reopened. Resuming cuts ``metrics.jsonl`` back to the
checkpoint's iteration, so the resumed run's lines replace the lost ones
instead of repeating them. Trajectory files are written whole (temp file +
rename) and named by iteration; resuming removes those of iterations after
the checkpoint (:func:`prune_trajectory_files`), and the rerun writes them
again. W&B and MLflow are append-only: a resumed run continues the same
tracker run and logs the rerun iterations again (each record carries its
``iteration``; MLflow's step is the iteration).

Safe loading. ``trainer_state.pt`` holds tensors and plain data only (numpy
arrays become tagged tensors, see :func:`plain_state`) and is read with
``torch.load(weights_only=True)``, so a run folder from someone else cannot
run code. A newest checkpoint that does not load (a corrupt file) is skipped
with a warning for the one before it (:func:`load_newest`). The config of
the resumed run is compared with the checkpoint's (:func:`check_resume_config`):
every change is reported, and changes to the keys in :data:`RESUME_FIXED`
(shapes of the saved state, or what it means) are refused.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from turngym.errors import TurngymError
from turngym.files import atomic_path, write_text_atomic

STATE_FILE = "trainer_state.pt"
_T = TypeVar("_T")


class ResumeWarning(UserWarning):
    """Resuming went on past something the user should know: a skipped checkpoint, a changed config key,
    a torn metrics line."""


class ResumeRefused(TurngymError):
    """The resumed run's config changes a key the checkpoint's state depends on."""


# ---- metrics -------------------------------------------------------------------------------------------


class MetricsLog:
    """Appends metric dicts to ``metrics.jsonl`` (each line written whole, flushed and fsynced), to
    TensorBoard and to the ``trackers`` (:func:`open_trackers`: W&B, MLflow), which it closes. Opening it
    drops a torn last line (a record a killed run never finished writing)."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, trackers: Sequence[Any] = ()):
        self.trackers = list(trackers)
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # noqa: BLE001 (tensorboard missing or broken: JSONL only)
                self.tb = None

    def _drop_torn_tail(self) -> None:
        # Appending after a line without its newline would glue two records into one unreadable line.
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())
        warnings.warn(f"{str(self.path)!r} ended in a torn line (a killed run's unfinished record): dropped it",
                      ResumeWarning, stacklevel=3)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _plain(v) for k, v in record.items()}, sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.tb is not None:
            step = int(record.get("iteration", 0))
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(prefix + key, value, step)
            self.tb.flush()
        for tracker in self.trackers:
            tracker.write(record)

    def truncate_after(self, iteration: int) -> list[dict[str, Any]]:
        """Keep only the records of iterations up to ``iteration`` (resume from a checkpoint; -1: none);
        lines that do not parse (torn by a kill) go too. Returns the records kept."""
        if not self.path.exists():
            return []
        keep = [r for r in _parse_lines(self.path) if int(r.get("iteration", 0)) <= iteration]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))
        return keep

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        trackers, self.trackers = self.trackers, []
        for tracker in trackers:
            tracker.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl``; lines that do not parse (a line torn by a killed run) are
    skipped with a warning."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist: is {str(run_dir)!r} a turngym run directory?")
    return _parse_lines(path)


def _parse_lines(path: Path) -> list[dict[str, Any]]:
    records, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        warnings.warn(f"{str(path)!r}: skipped {len(bad)} line(s) that are not whole JSON records (line "
                      f"{', '.join(map(str, bad[:5]))}): torn by a killed run", ResumeWarning, stacklevel=3)
    return records


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


# ---- progress ----------------------------------------------------------------------------------------------


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "it") -> Any:
    """A tqdm bar on stderr, or None: with ``enabled`` false (``run.progress=false``), when tqdm is missing,
    and (tqdm's ``disable=None``) when stderr is not a terminal, so logs and CI stay clean."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit=unit, disable=None, dynamic_ncols=True, leave=False)


# ---- W&B and MLflow -------------------------------------------------------------------------------------------

TRACKERS_FILE = "trackers.json"


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record as TensorBoard and the trackers see them: ``train/KEY`` or ``eval/KEY``
    (by the record's ``kind``), finite ints and floats only (no bools, strings or lists)."""
    prefix = "eval/" if record.get("kind") == "eval" else "train/"
    out = {}
    for key, value in record.items():
        value = _plain(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[prefix + key] = value
    return out


class WandbTracker:
    """One W&B run in ``RUN_DIR/wandb`` (``WANDB_MODE=offline``: nothing leaves the machine). Each record's
    scalars are logged against ``iteration`` (W&B's own step only counts calls, so rerun iterations after
    a resume are kept, not dropped as out of order)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str, run_id: str | None = None):
        from turngym.errors import require

        wandb = require("wandb", "tracking", "run.wandb=true (logging to Weights & Biases)")
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, dir=str(run_dir), name=run_dir.name, config=config,
                              id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(console="off"))
        self.run_id = self.run.id
        self.run.define_metric("iteration")
        for prefix in ("train/*", "eval/*"):
            self.run.define_metric(prefix, step_metric="iteration")

    def write(self, record: dict[str, Any]) -> None:
        values = scalars(record)
        if values:
            self.run.log({**values, "iteration": int(record.get("iteration", 0))})

    def close(self) -> None:
        self.run.finish()


class MLflowTracker:
    """One MLflow run: to ``MLFLOW_TRACKING_URI`` when set, else a file store in ``RUN_DIR/mlruns``. The
    config goes in once as params (dotted keys) and as the artifact ``config.json``; each record's scalars
    are metrics whose step is the iteration."""

    def __init__(self, run_dir: Path, config: dict[str, Any], experiment: str, run_id: str | None = None):
        from turngym.errors import require

        require("mlflow", "tracking", "run.mlflow=true (logging to MLflow)")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        run_dir = Path(run_dir)
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            # MLflow 3 refuses its file store unless asked for it; a folder in the run needs no server
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
            flat = _flatten(config)
            # MLflow caps a param's value at 6000 characters; config.json keeps the whole config
            params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:6000]) for k, v in flat.items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(run_id, params=params[start:start + 100])
            self.client.log_dict(run_id, config, "config.json")
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def write(self, record: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        values = scalars(record)
        step, now = int(record.get("iteration", 0)), int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_trackers(run_dir: Path, run_config: Any, config: dict[str, Any], resume: bool = False) -> list[Any]:
    """The trackers ``run_config`` (a config's ``run`` section) turns on: :class:`WandbTracker` with
    ``run.wandb``, :class:`MLflowTracker` with ``run.mlflow``; ``config`` (the whole config, nested) is
    logged once. Their run ids are kept in ``RUN_DIR/trackers.json``; with ``resume`` the same runs go on.
    A missing package is a :class:`~turngym.errors.MissingDependencyError` naming the extra."""
    run_dir = Path(run_dir)
    ids_path = run_dir / TRACKERS_FILE
    ids: dict[str, str] = {}
    if resume and ids_path.is_file():
        try:
            ids = json.loads(ids_path.read_text(encoding="utf-8"))
        except ValueError:
            warnings.warn(f"{str(ids_path)!r} is not JSON: the trackers start new runs", ResumeWarning, stacklevel=2)
    trackers: list[Any] = []
    try:
        if getattr(run_config, "wandb", False):
            trackers.append(WandbTracker(run_dir, config, run_config.wandb_project, ids.get("wandb")))
            ids["wandb"] = trackers[-1].run_id
        if getattr(run_config, "mlflow", False):
            trackers.append(MLflowTracker(run_dir, config, run_config.mlflow_experiment, ids.get("mlflow")))
            ids["mlflow"] = trackers[-1].run_id
    except BaseException:
        for tracker in trackers:
            tracker.close()
        raise
    if trackers:
        write_atomic(ids_path, json.dumps(ids, indent=2) + "\n")
    return trackers


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value and prefix == "":
            out.update(_flatten(value, f"{key}."))
        else:
            out[prefix + str(key)] = value
    return out


# ---- saved trajectories ------------------------------------------------------------------------------------

#: the folders of RUN_DIR that hold trajectory files: the iterations' rollouts and the evaluations'
TRAJECTORY_FOLDERS = ("rollouts", "eval")


def trajectory_file(run_dir: Path, folder: str, iteration: int, rank: int | None = None) -> Path:
    """``RUN_DIR/<folder>/iter-000003.parquet``; ``rank`` R (a data-parallel run's rank R > 0, which rolls out
    other groups than rank 0) adds ``-rankR`` before the suffix."""
    if folder not in TRAJECTORY_FOLDERS:
        raise ValueError(f"trajectory folder {folder!r}: use one of {TRAJECTORY_FOLDERS}")
    suffix = f"-rank{rank}" if rank is not None else ""
    return Path(run_dir) / folder / f"iter-{iteration:06d}{suffix}.parquet"


def save_trajectory_file(run_dir: Path, folder: str, iteration: int, trajectories: Sequence[Any],
                         rank: int | None = None) -> Path:
    """Write ``trajectories`` (as the runner made them, the fields ``turngym bench`` writes) to
    :func:`trajectory_file` atomically (temp file + rename: a reader never sees half a file); an
    existing file of the same iteration (a timeline a resume abandoned) is replaced."""
    from turngym.agents.types import save_trajectories_parquet

    return save_trajectories_parquet(trajectories, trajectory_file(run_dir, folder, iteration, rank))


def trajectory_file_iteration(path: Path) -> int | None:
    """N of ``iter-N[-rankR].parquet`` (None for other names)."""
    name = Path(path).name
    if not (name.startswith("iter-") and name.endswith(".parquet")):
        return None
    number = name[len("iter-"):-len(".parquet")].split("-rank")[0]
    return int(number) if number.isdigit() else None


def prune_trajectory_files(run_dir: Path, iteration: int) -> list[Path]:
    """Remove the trajectory files of iterations after ``iteration`` (-1: all) and the temp files a kill
    left; resuming from the checkpoint of ``iteration`` calls it, so the rerun's files are the only ones.
    Returns the removed files."""
    removed = []
    for folder in TRAJECTORY_FOLDERS:
        base = Path(run_dir) / folder
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            n = trajectory_file_iteration(path)
            if path.name.endswith(".tmp") or (n is not None and n > iteration):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


# ---- RNG ------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Python's, numpy's and torch's global RNG states (numpy's key array is made a tensor on save)."""
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the saved state: tensors and plain data only ----------------------------------------------------------

_NDARRAY = "__ndarray__"
# numpy dtypes stored as a tensor of the same dtype; other numeric arrays go through int64/float64 tensors
_TENSOR_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")


def plain_state(obj: Any, where: str = "state") -> Any:
    """``obj`` as what ``torch.load(weights_only=True)`` reads: tensors, None, bool, int, float, str and
    dicts/lists/tuples of them. A numpy array becomes ``{"__ndarray__": tensor, "dtype": ..., "shape": ...}``
    (:func:`from_plain_state` turns it back), a numpy scalar a Python one; anything else is a TypeError
    naming where it is, raised before a checkpoint that could not be loaded is written."""
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        dtype = obj.dtype
        if dtype.name in _TENSOR_DTYPES:
            data: Any = torch.from_numpy(np.ascontiguousarray(obj).copy())
        elif dtype.kind in "iu":
            data = torch.from_numpy(obj.astype(np.int64))
        elif dtype.kind == "f":
            data = torch.from_numpy(obj.astype(np.float64))
        elif dtype.kind in "USO":
            data = plain_state(obj.tolist(), where)
        else:
            raise TypeError(f"checkpoint state {where!r} is a numpy array of dtype {dtype}: not saved")
        return {_NDARRAY: data, "dtype": dtype.str if dtype.kind != "O" else "object", "shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint state {where!r} has a key {k!r} of type {type(k).__name__}: "
                                "only str and int keys load with weights_only=True")
            out[k] = plain_state(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(f"checkpoint state {where!r} is a {type(obj).__module__}.{type(obj).__name__}: a checkpoint "
                    "holds tensors, numpy arrays and plain data only (it is loaded with weights_only=True)")


def from_plain_state(obj: Any) -> Any:
    """The inverse of :func:`plain_state`: tagged arrays become numpy arrays again."""
    import numpy as np
    import torch

    if isinstance(obj, dict):
        if _NDARRAY in obj and set(obj) == {_NDARRAY, "dtype", "shape"}:
            data = obj[_NDARRAY]
            if isinstance(data, torch.Tensor):
                data = data.numpy()
            dtype = object if obj["dtype"] == "object" else np.dtype(obj["dtype"])
            return np.asarray(data, dtype=dtype).reshape(obj["shape"])
        return {k: from_plain_state(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain_state(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain_state(v) for v in obj)
    return obj


# ---- checkpoints ----------------------------------------------------------------------------------------


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint-{iteration}"


def checkpoint_iteration(path: Path) -> int | None:
    """N of a ``checkpoint-N`` folder name (None for other names: temporary folders, moved-aside ones)."""
    name = Path(path).name
    prefix, _, number = name.partition("-")
    return int(number) if prefix == "checkpoint" and number.isdigit() else None


def save_checkpoint(run_dir: Path, iteration: int, model: Any, tokenizer: Any, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write ``checkpoint-<iteration>`` atomically and durably; update ``latest``; keep the newest ``keep``
    checkpoints. Checkpoints of later iterations (left by the timeline a resume abandoned) are removed."""
    import torch

    from turngym.trainers.model import save_model

    run_dir = Path(run_dir)
    plain = plain_state(state)  # before anything is written: an unloadable state is an error now, not on resume
    for stale in run_dir.glob("*.tmp"):  # what writes a kill interrupted left (the run has one writer)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    for stale in run_dir.glob("checkpoint-*.old"):
        shutil.rmtree(stale, ignore_errors=True)
    final = run_dir / checkpoint_name(iteration)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        save_model(model, tokenizer, tmp)
        torch.save(plain, tmp / STATE_FILE)
    write_atomic(run_dir / "latest", final.name + "\n")
    prune_checkpoints(run_dir, iteration, keep)
    return final


def prune_checkpoints(run_dir: Path, iteration: int, keep: int) -> None:
    """Remove the checkpoints after ``iteration`` (a timeline a resume abandoned) and all but the newest
    ``keep`` up to it (``keep`` <= 0 keeps all). :func:`save_checkpoint` prunes after each save; a resume
    prunes again, which finishes the pruning a kill between the save and the prune left undone."""
    found = list_checkpoints(run_dir)
    older = [p for p in found if checkpoint_iteration(p) < iteration]
    drop = [p for p in found if checkpoint_iteration(p) > iteration]
    if keep > 0:
        drop += older[:max(0, len(older) - (keep - 1))]
    for old in drop:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (named ``checkpoint-N``, with their state file), oldest first."""
    found = []
    for p in Path(run_dir).glob("checkpoint-*"):
        n = checkpoint_iteration(p)
        if n is not None and p.is_dir() and (p / STATE_FILE).is_file():
            found.append((n, p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    run_dir = Path(run_dir)
    pointer = run_dir / "latest"
    if pointer.is_file():
        candidate = run_dir / pointer.read_text().strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's trainer state, read with ``weights_only=True`` (tensors and plain data; no code runs)."""
    import torch

    return from_plain_state(torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=True))


def load_newest(run_dir: Path, load: Callable[[Path], _T]) -> tuple[Path, _T] | None:
    """``(checkpoint, load(checkpoint))`` for the newest checkpoint that loads, None when there is none.

    A checkpoint whose ``load`` raises (a truncated or corrupt file, a state that is not plain data) is
    skipped with a :class:`ResumeWarning` for the one before it; :class:`ResumeRefused` is raised at once,
    and so is an error naming every failure when no checkpoint loads. ``load`` must leave nothing half
    applied that the next call does not overwrite.
    """
    failures = []
    for ckpt in reversed(list_checkpoints(run_dir)):
        try:
            return ckpt, load(ckpt)
        except ResumeRefused:
            raise
        except Exception as exc:  # noqa: BLE001 (any failure to read a checkpoint: try the one before)
            failures.append(f"{ckpt.name}: {type(exc).__name__}: {str(exc)[:300]}")
            warnings.warn(f"checkpoint {str(ckpt)!r} cannot be loaded ({failures[-1]}); trying the one before it",
                          ResumeWarning, stacklevel=2)
    if failures:
        raise TurngymError(f"no checkpoint in {str(run_dir)!r} can be loaded ({'; '.join(failures)}); start a "
                           "new run without --resume, or in another run.dir")
    return None


# ---- config drift on resume --------------------------------------------------------------------------------

#: config keys a resumed run may not change, each with what the checkpoint's state ties to it
RESUME_FIXED: dict[str, str] = {
    "model.path": "the weights are a fine-tune of this model",
    "model.lora": "it decides which parameters the weights and the optimizer state hold",
    "model.lora_r": "the adapters' shapes",
    "model.lora_alpha": "the adapters' scale (the same weights would be another policy)",
    "model.lora_target_modules": "which modules hold adapters",
    "env.id": "the env the policy and its state were trained on",
    "env.split": "the task stream the run replays",
    "env.kwargs": "the env's tasks and rules",
    "agent.name": "the prompt and action format the policy learned",
    "agent.options": "the prompt and action format the policy learned",
    "rollout.group_size": "the groups the estimator compares, and the task stream",
    "rollout.tasks_per_iter": "the task stream the run replays",
    "algo.estimator": "the advantages, and the estimator's saved state (SPA's progress replay)",
    "algo.objective": "the loss, and the optimizer's parameter groups (log Z)",
    "algo.ppo_epochs": "the optimizer steps per iteration the learning-rate schedule counts",
    "algo.mini_batches": "the optimizer steps per iteration the learning-rate schedule counts",
    "algo.tb_logz_lr": "the optimizer state restores the saved value, so a new one would be ignored",
    "optim.lr": "the optimizer state restores the saved value, so a new one would be ignored",
    "optim.betas": "the optimizer state restores the saved value, so a new one would be ignored",
    "optim.weight_decay": "the optimizer state restores the saved value, so a new one would be ignored",
    "run.seed": "the task order and sampling seeds the run replays",
}


def config_drift(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (saved value, current value)}`` for every key both nested configs hold and differ on."""
    drift = {}
    for section, fields in current.items():
        old_fields = saved.get(section)
        if not isinstance(fields, dict) or not isinstance(old_fields, dict):
            continue
        for key, value in fields.items():
            if key in old_fields and old_fields[key] != value:
                drift[f"{section}.{key}"] = (old_fields[key], value)
    return drift


def check_resume_config(saved: dict[str, Any] | None, current: dict[str, Any], checkpoint: Path) -> dict[str, tuple]:
    """Compare the config a checkpoint was saved with to the resumed run's: refuse a change to a key of
    :data:`RESUME_FIXED` (:class:`ResumeRefused` naming each key, both values and the way out), report the
    other changes with a :class:`ResumeWarning`. Returns the drift."""
    if not saved:
        return {}
    drift = config_drift(saved, current)
    fixed = {k: v for k, v in drift.items() if k in RESUME_FIXED}
    if fixed:
        lines = [f"  {k}: {old!r} in the checkpoint, {new!r} now ({RESUME_FIXED[k]})" for k, (old, new) in fixed.items()]
        back = " ".join(f"{k}={json.dumps(old)}" for k, (old, _) in fixed.items())
        raise ResumeRefused(f"cannot resume from {str(checkpoint)!r} with a changed config:\n" + "\n".join(lines)
                            + f"\nset them back ({back}), or start a new run from its weights: "
                            f"model.path={checkpoint} run.dir=NEW_DIR")
    if drift:
        changes = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in drift.items())
        warnings.warn(f"resuming from {str(checkpoint)!r} with a changed config: {changes}", ResumeWarning,
                      stacklevel=2)
    return drift


# ---- plots ----------------------------------------------------------------------------------------------

PLOT_KEYS = ("success_rate", "reward_mean", "eval_success_rate", "entropy", "kl", "pg_clipfrac", "grad_norm",
             "response_tokens_mean", "invalid_action_rate", "tokens_per_s")


def plot_run(run_dir: str | Path, out: str | Path | None = None, keys: tuple[str, ...] = PLOT_KEYS) -> Path:
    """Learning curves of a run as one PNG (a panel per metric present in ``metrics.jsonl``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    panels = []
    for key in keys:
        if key == "eval_success_rate":
            pts = [(r["iteration"], r["success_rate"]) for r in evals if r.get("success_rate") is not None]
        else:
            pts = [(r["iteration"], r[key]) for r in train if r.get(key) is not None]
        if pts:
            panels.append((key, pts))
    if not panels:
        raise ValueError(f"{str(run_dir)!r} has no metrics to plot yet")
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (key, pts) in zip(axes.flat, panels):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    out = Path(out) if out is not None else Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
