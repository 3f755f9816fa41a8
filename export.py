"""Convert trajectories to the formats other frameworks train on: an HF dataset, TRL's SFT and DPO data, verl's parquet.

    turngym export RUN_OR_FILE --to {hf-dataset,trl-sft,trl-dpo,verl} --out DIR

Input: a trajectory file (``turngym bench``'s JSONL, or Parquet, see
:mod:`turngym.agents.types`), a bench output folder (its ``*.jsonl`` /
``*.parquet`` files), or a training run folder (its saved rollouts,
``RUN/rollouts/iter-N.parquet``; ``--eval`` takes ``RUN/eval/iter-N.parquet``).
Episodes whose env failed (``Trajectory.error``) are missing data and are left
out of every format.

Output formats (``DIR`` is written whole or not at all: a temporary folder
renamed at the end; an existing non-empty ``DIR`` needs ``--overwrite``):

``hf-dataset``
    One row per episode, saved with ``datasets``' ``save_to_disk`` (read it
    with ``datasets.load_from_disk(DIR)``): ids, outcome (``won``,
    ``total_reward``, ``truncated``, ``num_turns``), the chat ``messages``
    and ``steps`` (observation, response, action, reward, flags and the
    engine's token ids and log-probs).
``trl-sft``
    TRL's conversational format: a ``messages`` column (``[{role, content}]``
    per episode, ending with the agent's last reply), won episodes only
    unless ``--all``; ``save_to_disk``.
``trl-dpo``
    TRL's conversational preference format: ``prompt``, ``chosen`` and
    ``rejected`` message lists; ``save_to_disk``. Pairing rule: episodes are
    grouped by task (env id + task id); within a task they are ordered by
    outcome, best first (``won``, then ``total_reward``; ties keep file
    order); pair k takes the k-th best and the k-th worst episode, for
    k < n // 2, and is kept only when the best one's outcome is strictly
    better. Each episode is in at most one pair. ``prompt`` is the longest
    common prefix of the two conversations that ends before an assistant
    message (at least the task's first user message: a pair without one is
    dropped); ``chosen``/``rejected`` are the rest of each conversation,
    env observations between replies included as user messages.
``verl``
    verl's RL parquet (``DIR/<split>.parquet``, split from the task id), one
    row per task: ``data_source`` (the env id), ``prompt`` (the episode's
    first chat messages), ``ability`` (the env's name), ``reward_model``
    ``{style: "turngym-env", ground_truth: '{"env_id": ..., "task_id": ...}'}``
    (the task's address for a reward function that replays the env, never a
    solution) and ``extra_info`` (split, index, env id, task id, episodes
    seen, their mean reward and win rate).

What is exported: only what the agent saw and did (observations, the prompts
the runner recorded, replies, actions, token ids) plus the rewards and
outcome. The env's ``info`` dicts, ``state_key`` and ``progress`` (which may
describe hidden state) and ``Trajectory.meta`` are never exported.

Conversations: when a step recorded its chat prompt (``keep_prompts``), the
last act step's prompt plus its reply is the conversation, exactly as the
agent sent it; otherwise the plain-chat rendering of
:class:`turngym.agents.chat.ChatAgent` (user: observation, assistant: reply;
a direct agent's step, which has no reply, says its action).

This module is a ``turngym`` CLI plugin (``add_arguments``/``run``) and
imports only ``turngym.agents.types`` and the leaves; ``datasets`` and
``pyarrow`` are imported when a format needs them (``pip install
'turngym[export]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from turngym.agents.types import Step, Trajectory, load_trajectories
from turngym.errors import TurngymError, require
from turngym.files import atomic_path

FORMATS = ("hf-dataset", "trl-sft", "trl-dpo", "verl")
MANIFEST = "turngym_export.json"


class ExportError(TurngymError, ValueError):
    """An input that cannot be exported (the message names it and the fix)."""


# ---- input -------------------------------------------------------------------------------------------------


def _iteration(path: Path) -> tuple[int, str]:
    found = re.search(r"(\d+)", path.stem)
    return (int(found.group(1)) if found else -1, path.name)


def trajectory_files(source: str | os.PathLike, *, eval_part: bool = False) -> list[Path]:
    """The trajectory files of ``source``: a file, a run folder (``rollouts/`` or ``eval/``) or a bench folder."""
    path = Path(source)
    if not path.exists():
        raise ExportError(f"{source}: no such file or folder; pass a trajectory file (.jsonl from `turngym bench`, "
                          "or .parquet) or a training run folder (RUN with RUN/rollouts/iter-N.parquet)")
    if path.is_file():
        return [path]
    part = "eval" if eval_part else "rollouts"
    folder = path / part if (path / part).is_dir() else path
    files = sorted([*folder.glob("*.parquet"), *folder.glob("*.jsonl")], key=_iteration)
    if not files:
        raise ExportError(f"{source}: no trajectories found (no {part}/*.parquet and no *.jsonl or *.parquet in "
                          f"the folder); train with run.save_rollouts=true, or pass a `turngym bench` JSONL file")
    return files


def load_source(sources: list[str | os.PathLike], *, eval_part: bool = False) -> tuple[list[Trajectory], list[str]]:
    """Every trajectory of ``sources`` in order, and the files read."""
    out, files = [], []
    for source in sources:
        for path in trajectory_files(source, eval_part=eval_part):
            try:
                out += load_trajectories(path)
            except (ValueError, KeyError, TypeError, OSError) as exc:
                raise ExportError(f"{path}: not a turngym trajectory file ({exc}); export the files `turngym bench` "
                                  "and `turngym train` write (JSONL, one trajectory per line, or their Parquet)") \
                    from exc
            files.append(str(path))
    return out, files


# ---- what the agent saw and did ----------------------------------------------------------------------------


def _reply(step: Step) -> str:
    return str(step.info.get("response_prefix", "") or "") + (step.response or "")


def _said(step: Step) -> str:
    """The agent's message of a step: its reply, or its action for a direct agent (oracle, random) that has none."""
    return _reply(step) if step.response else step.action


def _is_act(step: Step) -> bool:
    return step.info.get("kind", "act") == "act"


def _as_messages(prompt: Any) -> list[dict[str, str]] | None:
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt):
        return [{"role": str(m["role"]), "content": "" if m.get("content") is None else str(m["content"])}
                for m in prompt]
    return None


def conversation(traj: Trajectory) -> list[dict[str, str]]:
    """The episode as chat messages ending with the agent's last reply (see the module docstring)."""
    steps = [s for s in traj.steps if _is_act(s)]
    if not steps:
        return []
    recorded = _as_messages(steps[-1].prompt)
    if recorded is not None and steps[-1].context_mode == "full":
        return recorded + [{"role": "assistant", "content": _said(steps[-1])}]
    messages = []
    for step in steps:
        messages.append({"role": "user", "content": step.observation})
        messages.append({"role": "assistant", "content": _said(step)})
    return messages


def _step_row(step: Step) -> dict[str, Any]:
    return {"observation": step.observation, "response": _reply(step), "action": step.action,
            "reward": float(step.reward), "terminated": bool(step.terminated), "truncated": bool(step.truncated),
            "action_valid": bool(step.action_valid), "kind": str(step.info.get("kind", "act")),
            "prompt_ids": step.prompt_ids, "response_ids": step.response_ids,
            "response_logprobs": step.response_logprobs, "finish_reason": step.finish_reason}


def _episode_row(traj: Trajectory) -> dict[str, Any]:
    return {"env_id": traj.env_id, "task_id": traj.task_id, "group_id": traj.group_id, "seed": traj.seed,
            "agent": traj.agent, "model": traj.model, "won": bool(traj.won),
            "total_reward": float(traj.total_reward), "truncated": bool(traj.truncated),
            "num_turns": traj.num_turns, "messages": conversation(traj),
            "steps": [_step_row(s) for s in traj.steps]}


def _outcome(traj: Trajectory) -> tuple[bool, float]:
    return bool(traj.won), float(traj.total_reward)


# ---- formats -----------------------------------------------------------------------------------------------


def hf_dataset_rows(trajectories: list[Trajectory]) -> list[dict[str, Any]]:
    return [_episode_row(t) for t in trajectories]


def sft_rows(trajectories: list[Trajectory], *, include_all: bool = False) -> list[dict[str, Any]]:
    rows = []
    for t in trajectories:
        messages = conversation(t)
        if messages and (include_all or t.won):
            rows.append({"messages": messages, "env_id": t.env_id, "task_id": t.task_id, "won": bool(t.won),
                         "total_reward": float(t.total_reward)})
    return rows


def _split_point(a: list[dict[str, str]], b: list[dict[str, str]]) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` that both continue with an assistant message."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    while n > 0 and not (n < len(a) and n < len(b) and a[n]["role"] == "assistant" and b[n]["role"] == "assistant"):
        n -= 1
    return n


def dpo_pairs(trajectories: list[Trajectory]) -> list[dict[str, Any]]:
    """Preference pairs by the rule of the module docstring."""
    by_task: dict[tuple[str, str], list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        if conversation(t):
            by_task[(t.env_id, t.task_id)].append(t)
    rows = []
    for (env_id, task_id), group in by_task.items():
        ranked = sorted(group, key=_outcome, reverse=True)  # stable: ties keep file order
        for k in range(len(ranked) // 2):
            best, worst = ranked[k], ranked[len(ranked) - 1 - k]
            if not _outcome(best) > _outcome(worst):
                break
            chosen, rejected = conversation(best), conversation(worst)
            cut = _split_point(chosen, rejected)
            if not any(m["role"] == "user" for m in chosen[:cut]):
                continue  # no shared task statement: not a preference between replies to one prompt
            rows.append({"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:],
                         "env_id": env_id, "task_id": task_id,
                         "chosen_reward": float(best.total_reward), "rejected_reward": float(worst.total_reward),
                         "chosen_won": bool(best.won), "rejected_won": bool(worst.won)})
    return rows


def _first_prompt(traj: Trajectory) -> list[dict[str, str]]:
    messages = conversation(traj)
    end = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), len(messages))
    return messages[:end]


def _ability(env_id: str) -> str:
    name = env_id.rsplit("/", 1)[-1]
    return re.sub(r"-v\d+$", "", name).lower()


def verl_rows(trajectories: list[Trajectory]) -> dict[str, list[dict[str, Any]]]:
    """verl rows per split (see the module docstring)."""
    by_task: dict[tuple[str, str], list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        if _first_prompt(t):
            by_task[(t.env_id, t.task_id)].append(t)
    splits: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (env_id, task_id), group in by_task.items():
        split = task_id.split("/", 1)[0] if "/" in task_id else "train"
        rewards = [float(t.total_reward) for t in group]
        rows = splits[split]
        rows.append({
            "data_source": env_id, "prompt": _first_prompt(group[0]), "ability": _ability(env_id),
            "reward_model": {"style": "turngym-env",
                             "ground_truth": json.dumps({"env_id": env_id, "task_id": task_id})},
            "extra_info": {"split": split, "index": len(rows), "env_id": env_id, "task_id": task_id,
                           "episodes": len(group), "mean_reward": sum(rewards) / len(rewards),
                           "win_rate": sum(t.won for t in group) / len(group)}})
    return dict(splits)


# ---- writing -----------------------------------------------------------------------------------------------


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out}: a file is there; pass a folder path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out}: the folder exists and is not empty; pass --overwrite to replace it, "
                          "or choose another folder")


def export(sources: list[str | os.PathLike] | str | os.PathLike, to: str, out: str | os.PathLike, *,
           include_all: bool = False, eval_part: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Convert the trajectories of ``sources`` to format ``to`` in folder ``out``; returns the manifest."""
    if to not in FORMATS:
        raise ExportError(f"--to {to!r}: unknown format; use one of {', '.join(FORMATS)}")
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out = Path(out)
    _check_out(out, overwrite)
    trajectories, files = load_source(list(sources), eval_part=eval_part)
    usable = [t for t in trajectories if t.error is None]
    if to == "hf-dataset":
        tables = {"": hf_dataset_rows(usable)}
    elif to == "trl-sft":
        tables = {"": sft_rows(usable, include_all=include_all)}
    elif to == "trl-dpo":
        tables = {"": dpo_pairs(usable)}
    else:
        tables = verl_rows(usable)
    rows = sum(len(r) for r in tables.values())
    if rows == 0:
        hint = {"trl-sft": "no won episode (pass --all to keep every episode)",
                "trl-dpo": "no task has two episodes with different outcomes"}.get(to, "no usable episode")
        raise ExportError(f"{', '.join(files)}: nothing to export as {to}: {hint} "
                          f"({len(trajectories)} episodes read, {len(trajectories) - len(usable)} with env errors)")
    manifest = {"format": to, "sources": files, "episodes_read": len(trajectories),
                "episodes_with_env_errors": len(trajectories) - len(usable), "rows": rows,
                "include_all": include_all}
    with atomic_path(out) as tmp:
        if to == "verl":
            pa = require("pyarrow", "export", "turngym export --to verl")
            pq = require("pyarrow.parquet", "export", "turngym export --to verl")
            tmp.mkdir(parents=True)
            for split, split_rows in sorted(tables.items()):
                pq.write_table(pa.Table.from_pylist(split_rows), str(tmp / f"{split}.parquet"))
            manifest["files"] = sorted(f"{s}.parquet" for s in tables)
        else:
            datasets = require("datasets", "export", f"turngym export --to {to}")
            bars = datasets.is_progress_bar_enabled()
            datasets.disable_progress_bars()  # one small write: the summary line says enough
            try:
                datasets.Dataset.from_list(tables[""]).save_to_disk(str(tmp))
            finally:
                if bars:
                    datasets.enable_progress_bars()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# ---- CLI plugin --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="RUN_OR_FILE",
                        help="a trajectory file (.jsonl, .parquet), a bench output folder or a training run folder")
    parser.add_argument("--to", required=True, choices=FORMATS, help="hf-dataset (one row per episode), trl-sft (messages), trl-dpo (prompt/chosen/rejected): "
                        "datasets.save_to_disk folders; verl: DIR/<split>.parquet")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (written atomically)")
    parser.add_argument("--all", dest="include_all", action="store_true",
                        help="trl-sft: keep every episode, not only won ones")
    parser.add_argument("--eval", dest="eval_part", action="store_true",
                        help="a run folder: export RUN/eval/*.parquet instead of RUN/rollouts/*.parquet")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    manifest = export(args.sources, args.to, args.out, include_all=args.include_all, eval_part=args.eval_part,
                      overwrite=args.overwrite)
    skipped = manifest["episodes_with_env_errors"]
    print(f"turngym export: {manifest['rows']} {args.to} rows from {manifest['episodes_read']} episodes "
          f"({len(manifest['sources'])} file{'s' if len(manifest['sources']) != 1 else ''}{f', {skipped} with env errors left out' if skipped else ''}) "
          f"-> {args.out}")
    return 0


__all__ = ["FORMATS", "ExportError", "add_arguments", "conversation", "dpo_pairs", "export", "hf_dataset_rows",
           "load_source", "run", "sft_rows", "trajectory_files", "verl_rows"]
