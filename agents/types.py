"""The records that flow from engines through agents and the runner to trainers.

``SamplingParams`` and ``Completion`` are the engine interface's data;
``Step`` and ``Trajectory`` are what the runner produces and the trainers and
benchmarks consume (saved as JSONL, one trajectory per line, or as Parquet,
one row per trajectory, with pyarrow).

Token in, token out: ``Completion.token_ids`` are the ids the engine sampled
and ``Completion.logprobs`` their log-probabilities under the sampling
distribution's model (before temperature/top-p: the policy's own
log-probs, which is what PPO ratios need). Nobody re-tokenizes generated
text.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from turngym.files import atomic_path

#: A prompt is raw text, token ids, or chat messages ({"role": ..., "content": ...}).
Prompt = str | list[int] | list[dict[str, Any]]


@dataclass
class SamplingParams:
    """How to sample one completion.

    Attributes:
        max_tokens: maximum number of generated tokens.
        temperature: 0 means greedy.
        top_p: nucleus sampling mass (1.0 = off).
        stop: strings that end the completion; the stop string is kept in
            the text and the ids (so the trainer sees exactly what was sampled).
        seed: per-request seed (same seed, same prompt, same engine -> same completion).
        logprobs: return the log-probs of the sampled tokens.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: bool = True

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")


@dataclass
class Completion:
    """One generated response.

    Attributes:
        text: the decoded response (includes a matched stop string).
        token_ids: the sampled ids (None only for remote engines that cannot return them).
        logprobs: log-prob of each sampled id under the model (None if not requested/available).
        finish_reason: "stop" (stop string or EOS), "length" (max_tokens) or "abort".
        prompt_ids: the prompt's token ids as the engine saw them (None for remote chat engines).
    """

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str = "stop"
    prompt_ids: list[int] | None = None


@dataclass
class Step:
    """One agent turn: the prompt it saw, what it generated, what the env answered.

    ``prompt_ids``/``response_ids``/``response_logprobs`` are the engine's
    (token in, token out). ``context_mode`` records how the prompt was built
    ("full", "window", "workspace", "summary"), so trainers know whether the
    turns of a trajectory share one growing context.

    Which state the fields describe (the runner fills them so): ``observation``
    and ``state_key`` are those of the state the step ACTED IN (before its
    action: GiGPO's anchor state, credit's ``StepBatch.state_key``);
    ``reward``, ``terminated``, ``truncated``, ``action_valid`` and
    ``progress`` are what the action led to (``progress`` after the step:
    SPA's cumulative progress); ``info`` is the env's info after the step
    (its ``state_key`` is the next state's) plus the runner's keys:
    ``kind`` ("act", or "summarize" for a memory-only summarization turn
    with no env step), ``format_ok`` (the reply followed the agent's format),
    ``dispatched_early`` (P-ReAct: the action reached the env before the
    reply was finished), ``response_prefix`` (words the reply was started
    with, e.g. "Thought:": they are the last prompt ids, not sampled; the
    agent's reply is ``response_prefix + response``), ``continued_prompt``
    (the prompt ids extend the previous step's prompt + response ids). ``gen_seconds`` is the wall time of the batched
    generate call the step was part of; ``env_seconds`` the env's own time
    for this step.
    """

    observation: str
    prompt: Any = None
    response: str = ""
    action: str = ""
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    action_valid: bool = True
    state_key: Any = None
    progress: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    prompt_ids: list[int] | None = None
    response_ids: list[int] | None = None
    response_logprobs: list[float] | None = None
    finish_reason: str | None = None
    context_mode: str = "full"
    gen_seconds: float = 0.0
    env_seconds: float = 0.0


@dataclass
class Trajectory:
    """One episode.

    ``error`` is set when the env itself failed (the episode is not a loss,
    it is missing data); benchmarks and trainers exclude such episodes.
    """

    env_id: str
    task_id: str
    group_id: str
    seed: int | None = None
    steps: list[Step] = field(default_factory=list)
    won: bool = False
    total_reward: float = 0.0
    truncated: bool = False
    error: str | None = None
    agent: str = ""
    model: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Trajectory":
        data = dict(data)
        data["steps"] = [Step(**s) for s in data.get("steps", [])]
        return cls(**data)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and obj != obj:  # NaN -> null keeps the JSONL strict
        return None
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def trajectory_to_json(traj: Trajectory) -> str:
    """One trajectory as one line of strict JSON (no trailing newline)."""
    return json.dumps(traj.to_dict(), default=_jsonable)


def save_trajectories(trajectories: Iterable[Trajectory], path: str | os.PathLike) -> Path:
    """Write trajectories as JSONL atomically (temp file + rename); a ``.parquet`` path writes Parquet."""
    path = Path(path)
    if path.suffix == ".parquet":
        return save_trajectories_parquet(trajectories, path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for traj in trajectories:
            f.write(trajectory_to_json(traj) + "\n")
    return path


def load_trajectories(path: str | os.PathLike) -> list[Trajectory]:
    """Read a JSONL file written by :func:`save_trajectories` (or a ``.parquet`` file: Parquet)."""
    if Path(path).suffix == ".parquet":
        return load_trajectories_parquet(path)
    return list(iter_trajectories(path))


def iter_trajectories(path: str | os.PathLike) -> Iterator[Trajectory]:
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Trajectory.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a trajectory record ({exc})") from exc


# ---- Parquet ----------------------------------------------------------------------------------------
#
# One row per trajectory, as in the JSONL files; ``steps`` is a list of structs with typed columns (token
# ids as int64 lists, log-probs as float64 lists, so nothing is rounded) that Arrow tools (pandas, polars,
# DuckDB, HF datasets) read directly. Free-form fields (a step's ``prompt``, ``state_key`` and ``info``, a
# trajectory's ``meta``) are JSON text, written the way the JSONL writer writes them, so a Parquet round trip
# gives what a JSONL round trip gives. pyarrow is optional: pip install 'turngym[parquet]'.


def _parquet_modules():
    from turngym.errors import require

    pa = require("pyarrow", "parquet", "Parquet trajectory files")
    return pa, require("pyarrow.parquet", "parquet", "Parquet trajectory files")


def _parquet_schema(pa: Any):
    text, real, flag = pa.string(), pa.float64(), pa.bool_()
    step = pa.struct([
        ("observation", text), ("prompt", text), ("response", text), ("action", text), ("reward", real),
        ("terminated", flag), ("truncated", flag), ("action_valid", flag), ("state_key", text),
        ("progress", real), ("info", text), ("prompt_ids", pa.list_(pa.int64())),
        ("response_ids", pa.list_(pa.int64())), ("response_logprobs", pa.list_(real)),
        ("finish_reason", text), ("context_mode", text), ("gen_seconds", real), ("env_seconds", real),
    ])
    schema = pa.schema([
        ("env_id", text), ("task_id", text), ("group_id", text), ("seed", pa.int64()), ("steps", pa.list_(step)),
        ("won", flag), ("total_reward", real), ("truncated", flag), ("error", text), ("agent", text),
        ("model", text), ("timings", pa.map_(text, real)), ("meta", text),
    ], metadata={b"turngym": b"trajectories/1"})
    # the dataclasses and the schema must name the same fields (a new field needs a column here)
    assert [f.name for f in step] == list(Step.__dataclass_fields__), "Parquet step schema is out of date"
    assert schema.names == list(Trajectory.__dataclass_fields__), "Parquet trajectory schema is out of date"
    return schema


def _parquet_record(traj: Trajectory) -> dict[str, Any]:
    record = traj.to_dict()
    record["meta"] = json.dumps(record["meta"], default=_jsonable)
    record["timings"] = list(record["timings"].items())
    for step in record["steps"]:
        for key in ("prompt", "state_key", "info"):
            step[key] = json.dumps(step[key], default=_jsonable)
    return record


def save_trajectories_parquet(trajectories: Iterable[Trajectory], path: str | os.PathLike) -> Path:
    """Write trajectories to one Parquet file atomically (temp file + rename); needs pyarrow."""
    pa, pq = _parquet_modules()
    path = Path(path)
    table = pa.Table.from_pylist([_parquet_record(t) for t in trajectories], schema=_parquet_schema(pa))
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))
    return path


def load_trajectories_parquet(path: str | os.PathLike) -> list[Trajectory]:
    """Read a Parquet file written by :func:`save_trajectories_parquet`; needs pyarrow."""
    pa, pq = _parquet_modules()
    try:
        table = pq.read_table(path)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: not a Parquet file ({exc})") from exc
    missing = set(_parquet_schema(pa).names) - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not a turngym trajectory file (no column(s) {sorted(missing)}); "
                         "write it with save_trajectories_parquet")
    out = []
    for record in table.to_pylist():
        record["meta"] = json.loads(record["meta"]) if record["meta"] is not None else {}
        record["timings"] = dict(record["timings"] or [])
        for step in record["steps"] or []:
            for key in ("prompt", "state_key", "info"):
                step[key] = json.loads(step[key]) if step[key] is not None else None
            if step["info"] is None:
                step["info"] = {}
        record["steps"] = record["steps"] or []
        out.append(Trajectory.from_dict(record))
    return out
