"""`turngym export`: each format reads back (datasets / pyarrow) with the fields of the source trajectories, the
DPO pairing rule on a worked example, no hidden env state in any output, and errors that name the input and the fix.
"""

from __future__ import annotations

import json

import pytest

from turngym.agents.types import Step, Trajectory, save_trajectories

datasets = pytest.importorskip("datasets")  # extra: export
pq = pytest.importorskip("pyarrow.parquet")

SECRET = "SECRET-GOAL-STATE"  # what the env knows and the agent must not: it must appear in no export


def _step(obs: str, reply: str, reward: float = 0.0, done: bool = False) -> Step:
    return Step(observation=obs, response=reply, action=reply.strip(), reward=reward, terminated=done,
                state_key=SECRET, progress=0.5, info={"kind": "act", "hidden": SECRET, "continued_prompt": True},
                prompt_ids=[1, 2, 3], response_ids=[7, 8], response_logprobs=[-0.5, -0.25], finish_reason="stop")


def _traj(task: str, replies: list[str], won: bool, seed: int, error: str | None = None) -> Trajectory:
    steps = [_step(f"{task} obs {k}", r, reward=1.0 if (won and k == len(replies) - 1) else 0.0,
                   done=k == len(replies) - 1) for k, r in enumerate(replies)]
    return Trajectory(env_id="turngym/BlocksWorld-v0", task_id=task, group_id=f"{task}@0", seed=seed, steps=steps,
                      won=won, total_reward=1.0 if won else 0.0, error=error, agent="chat", model="hf:tiny",
                      meta={"answer": SECRET})


@pytest.fixture
def trajectories():
    return [
        _traj("train/1", ["move a", "move b"], won=True, seed=1),
        _traj("train/1", ["move a", "move c"], won=False, seed=2),
        _traj("train/1", ["move a", "move b"], won=True, seed=3),
        _traj("train/1", ["stack x"], won=False, seed=4),
        _traj("test/2", ["move z"], won=True, seed=5),
        _traj("test/2", ["move q"], won=True, seed=6),  # same outcome as seed 5: no pair for test/2
        _traj("test/3", [], won=False, seed=7, error="env crashed at reset"),  # missing data: never exported
    ]


@pytest.fixture(params=["jsonl", "parquet"])
def source(request, tmp_path, trajectories):
    if request.param == "parquet":
        pytest.importorskip("pyarrow")
    return save_trajectories(trajectories, tmp_path / f"bench.{request.param}")


def _no_secret(folder):
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), f"{path} leaks env-side state"


def test_hf_dataset_round_trip(source, tmp_path, trajectories):
    from turngym.export import export

    out = tmp_path / "hf"
    manifest = export(source, "hf-dataset", out)
    ds = datasets.load_from_disk(str(out))
    usable = [t for t in trajectories if t.error is None]
    assert manifest["rows"] == len(ds) == len(usable) == 6
    assert manifest["episodes_with_env_errors"] == 1
    for row, traj in zip(ds, usable):
        assert (row["env_id"], row["task_id"], row["seed"], row["won"]) == (traj.env_id, traj.task_id, traj.seed,
                                                                            traj.won)
        assert row["total_reward"] == traj.total_reward and row["num_turns"] == traj.num_turns
        assert [s["response"] for s in row["steps"]] == [s.response for s in traj.steps]
        assert [s["response_ids"] for s in row["steps"]] == [s.response_ids for s in traj.steps]
        assert [s["response_logprobs"] for s in row["steps"]] == [s.response_logprobs for s in traj.steps]
        # the plain-chat rendering: user observation, assistant reply, turn by turn
        assert row["messages"][0] == {"role": "user", "content": traj.steps[0].observation}
        assert [m["content"] for m in row["messages"] if m["role"] == "assistant"] == [s.response for s in traj.steps]
    assert "meta" not in ds.column_names and not {"state_key", "info", "progress"} & set(ds[0]["steps"][0])
    _no_secret(out)


def test_trl_sft_keeps_won_episodes_unless_all(source, tmp_path, trajectories):
    from turngym.export import export

    export(source, "trl-sft", tmp_path / "sft")
    ds = datasets.load_from_disk(str(tmp_path / "sft"))
    assert len(ds) == 4 and all(ds["won"])
    assert ds[0]["messages"] == [{"role": "user", "content": "train/1 obs 0"}, {"role": "assistant", "content": "move a"},
                                 {"role": "user", "content": "train/1 obs 1"}, {"role": "assistant", "content": "move b"}]
    export(source, "trl-sft", tmp_path / "sft-all", include_all=True)
    assert len(datasets.load_from_disk(str(tmp_path / "sft-all"))) == 6
    trl_data = pytest.importorskip("trl.data_utils")
    assert trl_data.is_conversational(ds[0])  # TRL reads it as its conversational format
    _no_secret(tmp_path / "sft")


def test_trl_dpo_pairing_rule(source, tmp_path):
    from turngym.export import export

    export(source, "trl-dpo", tmp_path / "dpo")
    ds = datasets.load_from_disk(str(tmp_path / "dpo"))
    # train/1 ranked best first: seeds 1, 3 (won), 2, 4 (lost); pairs (1st, 4th) = (1, 4) and (2nd, 3rd) = (3, 2).
    # test/2: both won, equal outcomes, no pair.
    assert len(ds) == 2 and set(ds["task_id"]) == {"train/1"}
    first, second = ds[0], ds[1]
    # seed 1 vs seed 4 differ at the first reply: the prompt is the task's first user message
    assert first["prompt"] == [{"role": "user", "content": "train/1 obs 0"}]
    assert first["chosen"] == [{"role": "assistant", "content": "move a"}, {"role": "user", "content": "train/1 obs 1"},
                               {"role": "assistant", "content": "move b"}]
    assert first["rejected"] == [{"role": "assistant", "content": "stack x"}]
    # seed 3 vs seed 2 share the first turn: it joins the prompt, the pair is the second reply
    assert second["prompt"][-1] == {"role": "user", "content": "train/1 obs 1"} and len(second["prompt"]) == 3
    assert second["chosen"] == [{"role": "assistant", "content": "move b"}]
    assert second["rejected"] == [{"role": "assistant", "content": "move c"}]
    assert (second["chosen_reward"], second["rejected_reward"]) == (1.0, 0.0)
    trl_data = pytest.importorskip("trl.data_utils")
    assert trl_data.is_conversational(first)
    _no_secret(tmp_path / "dpo")


def test_verl_parquet(source, tmp_path, trajectories):
    from turngym.export import export

    manifest = export(source, "verl", tmp_path / "verl")
    assert manifest["files"] == ["test.parquet", "train.parquet"]
    train = pq.read_table(tmp_path / "verl" / "train.parquet").to_pylist()
    test = pq.read_table(tmp_path / "verl" / "test.parquet").to_pylist()
    assert len(train) == 1 and len(test) == 1  # one row per task; the errored test/3 is left out
    row = train[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["data_source"] == "turngym/BlocksWorld-v0" and row["ability"] == "blocksworld"
    assert row["prompt"] == [{"role": "user", "content": "train/1 obs 0"}]
    assert row["reward_model"]["style"] == "turngym-env"
    assert json.loads(row["reward_model"]["ground_truth"]) == {"env_id": "turngym/BlocksWorld-v0", "task_id": "train/1"}
    assert row["extra_info"]["episodes"] == 4 and row["extra_info"]["win_rate"] == 0.5
    assert row["extra_info"]["split"] == "train" and row["extra_info"]["index"] == 0
    assert test[0]["extra_info"]["mean_reward"] == 1.0
    _no_secret(tmp_path / "verl")


def test_recorded_prompts_are_the_conversation(tmp_path):
    from turngym.export import conversation

    traj = _traj("train/1", ["move a", "move b"], won=True, seed=1)
    traj.steps[-1].prompt = [{"role": "system", "content": "You stack blocks."},
                             {"role": "user", "content": "train/1 obs 0"}, {"role": "assistant", "content": "move a"},
                             {"role": "user", "content": "train/1 obs 1"}]
    traj.steps[-1].info["response_prefix"] = "Action: "
    assert conversation(traj) == traj.steps[-1].prompt + [{"role": "assistant", "content": "Action: move b"}]


def test_run_folder_rollouts_and_cli(tmp_path, trajectories):
    pytest.importorskip("pyarrow")
    from turngym.cli import main

    run = tmp_path / "run"
    save_trajectories(trajectories[:3], run / "rollouts" / "iter-2.parquet")
    save_trajectories(trajectories[3:], run / "rollouts" / "iter-10.parquet")
    save_trajectories(trajectories[:1], run / "eval" / "iter-0.parquet")
    out = tmp_path / "ds"
    assert main(["export", str(run), "--to", "hf-dataset", "--out", str(out)]) == 0
    ds = datasets.load_from_disk(str(out))
    assert ds["seed"] == [1, 2, 3, 4, 5, 6]  # iteration order (2 before 10), errored episode left out
    manifest = json.loads((out / "turngym_export.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in manifest["sources"]] == ["iter-2.parquet", "iter-10.parquet"]
    # an existing folder is replaced only on request, and then whole (no temporary folder left behind)
    assert main(["export", str(run), "--eval", "--to", "hf-dataset", "--out", str(out)]) == 2
    assert main(["export", str(run), "--eval", "--to", "hf-dataset", "--out", str(out), "--overwrite"]) == 0
    assert datasets.load_from_disk(str(out))["seed"] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "run"]


def test_errors_name_the_input_and_the_fix(tmp_path, trajectories, capsys):
    from turngym.cli import main
    from turngym.export import ExportError, export

    with pytest.raises(ExportError, match=r"nope\.jsonl: no such file.*turngym bench"):
        export(tmp_path / "nope.jsonl", "hf-dataset", tmp_path / "o1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"env_id": "x"}\nnot json\n')
    with pytest.raises(ExportError, match=r"bad\.jsonl.*not a turngym trajectory file"):
        export(bad, "hf-dataset", tmp_path / "o2")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(ExportError, match=r"empty-run: no trajectories found.*run.save_rollouts"):
        export(tmp_path / "empty-run", "verl", tmp_path / "o3")
    lost = save_trajectories([t for t in trajectories if not t.won], tmp_path / "lost.jsonl")
    with pytest.raises(ExportError, match=r"lost\.jsonl: nothing to export as trl-sft: no won episode.*--all"):
        export(lost, "trl-sft", tmp_path / "o4")
    assert not (tmp_path / "o4").exists()
    assert main(["export", str(lost), "--to", "trl-dpo", "--out", str(tmp_path / "o5")]) == 2
    assert "no task has two episodes with different outcomes" in capsys.readouterr().err


def test_bench_folder_of_direct_agents(tmp_path, monkeypatch, capsys):
    """The README's flow: `turngym bench` with the oracle and random agents, then export its folder."""
    from turngym.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["bench", "--env", "turngym/BlocksWorld-v0", "--agent", "oracle", "--agent", "random",
                 "--episodes", "3", "--out", "results/bb"]) == 0
    assert main(["export", "results/bb", "--to", "trl-dpo", "--out", "exports/bb-dpo"]) == 0
    # one pair per task the random walk lost (the oracle wins every task); how many it loses depends on the
    # generated split, so the count comes from its own trajectory file, not a constant
    with open("results/bb/BlocksWorld-v0__random.jsonl") as f:
        lost = sum(not json.loads(line)["won"] for line in f if line.strip())
    assert lost >= 1, "the random walk won every task: no pair to check"
    assert f"{lost} trl-dpo rows from 6 episodes (2 files)" in capsys.readouterr().out
    pairs = datasets.load_from_disk("exports/bb-dpo")
    assert len(pairs) == lost
    for pair in pairs:  # the oracle's plan beats the random walk; a direct agent's message is its action
        assert pair["chosen_won"] and not pair["rejected_won"]
        assert pair["prompt"][0]["content"].startswith("Blocks World.")
        assert pair["chosen"][0]["role"] == "assistant" and pair["chosen"][0]["content"]
