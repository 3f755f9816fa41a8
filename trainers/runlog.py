"""A run directory: metrics (JSONL + TensorBoard), atomic checkpoints with RNG states, learning-curve plots.

Layout of ``RUN_DIR``::

    config.yaml            the resolved config of the run
    metrics.jsonl          one JSON object per iteration (and per evaluation)
    tb/                    TensorBoard events (if tensorboard is installed)
    checkpoint-N/          engine-loadable model folder + trainer_state.pt
    latest                 the name of the newest complete checkpoint
    curves.png             `turngym plot RUN_DIR`

Checkpoints are written to ``checkpoint-N.tmp`` and renamed when complete,
and ``latest`` is replaced atomically, so a run killed at any moment leaves
either the previous or the new checkpoint, never half of one. Resuming
truncates ``metrics.jsonl`` to the checkpoint's iteration, so the resumed
run's lines replace the lost ones instead of repeating them.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Any

from turngym.files import write_text_atomic

STATE_FILE = "trainer_state.pt"


# ---- metrics -------------------------------------------------------------------------------------------


class MetricsLog:
    """Appends metric dicts to ``metrics.jsonl`` (flushed per line) and to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # noqa: BLE001 (tensorboard missing or broken: JSONL only)
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _plain(v) for k, v in record.items()}, sort_keys=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
        if self.tb is not None:
            step = int(record.get("iteration", 0))
            prefix = "eval/" if record.get("kind") == "eval" else "train/"
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.tb.add_scalar(prefix + key, value, step)
            self.tb.flush()

    def truncate_after(self, iteration: int) -> None:
        """Drop the records of iterations after ``iteration`` (resume from a checkpoint)."""
        if not self.path.exists():
            return
        keep = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and int(json.loads(line).get("iteration", 0)) <= iteration]
        write_atomic(self.path, "".join(line + "\n" for line in keep))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist: is {str(run_dir)!r} a turngym run directory?")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_atomic(path: Path, text: str) -> None:
    write_text_atomic(path, text)


# ---- RNG ------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- checkpoints ----------------------------------------------------------------------------------------


def checkpoint_name(iteration: int) -> str:
    return f"checkpoint-{iteration}"


def save_checkpoint(run_dir: Path, iteration: int, model: Any, tokenizer: Any, state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write ``checkpoint-<iteration>`` atomically; update ``latest``; keep the newest ``keep`` checkpoints."""
    import torch

    from turngym.trainers.model import save_model

    run_dir = Path(run_dir)
    final = run_dir / checkpoint_name(iteration)
    tmp = run_dir / (checkpoint_name(iteration) + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save_model(model, tokenizer, tmp)
    torch.save(state, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(run_dir / "latest", final.name + "\n")
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = []
    for p in Path(run_dir).glob("checkpoint-*"):
        if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file():
            try:
                found.append((int(p.name.split("-")[-1]), p))
            except ValueError:
                continue
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
    import torch

    return torch.load(Path(checkpoint) / STATE_FILE, map_location="cpu", weights_only=False)


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
