"""The trainer feeds each credit estimator the inputs it declares, from the right source (trainer-level).

One test per wiring, on a small batch of the trainer's own rollouts (the corridor env and a tiny
random policy, tests/trainers/corridor.py) or of the real Search env:

* Stratified GRPO: strata are the env's ``info["num_tool_calls"]`` (Search-v0), not turn counts;
  an env without the key is an error, never a fallback.
* EMPG: ``entropy`` is the policy's mean token entropy over each step's sampled tokens, equal to a
  hand computation from the full logits.
* IGPO: ``gold_logprob`` is the mean log-prob of the gold answer after each step's prompt, equal to
  a hand computation.
* SPA: by default a progress estimator fitted in the loop on the policy's hidden states (its
  contributions sum to the outcomes; the env's ground-truth progress is never read); the oracle
  source only by name, flagged ``oracle_signal = 1``. Its replay buffer survives a resume.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")



def _trainer(corridor, word_tok, run_dir, *overrides, resume=False):
    from turngym.trainers.config import RLConfig, load_config
    from turngym.trainers.rl import RLTrainer

    torch.set_num_threads(1)
    base = [f"env.id={corridor.ENV_ID}",
            "agent.options={system_prompt: go right, num_exemplars: 0, format_reminder: false, prefill: false}",
            "agent.max_tokens=3", "rollout.tasks_per_iter=3", "rollout.group_size=4", "agent.temperature=0.7",
            f"run.dir={run_dir}", "run.eval_tasks=0", "run.progress=false", "run.save_every=100",
            "run.tensorboard=false", "optim.micro_batch_tokens=512"]
    cfg = load_config(RLConfig, None, base + list(overrides))
    trainer = RLTrainer(cfg, model=corridor.tiny_policy(word_tok, seed=0), tokenizer=word_tok, resume=resume)
    trainer.engine.eos_token_ids = frozenset()
    return trainer


def _hand_stats(model, context, target, temperature):
    """Mean log-prob of ``target`` after ``context`` and mean entropy of the distributions predicting it."""
    ids = torch.tensor([list(context) + list(target)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].double() / temperature
    logp_all = torch.log_softmax(logits, -1)
    rows = range(len(context) - 1, len(context) + len(target) - 1)  # position p predicts token p + 1
    logp = [float(logp_all[p, ids[0, p + 1]]) for p in rows]
    ent = [float(-(logp_all[p].exp() * logp_all[p]).sum()) for p in rows]
    return float(np.mean(logp)), float(np.mean(ent))


def test_empg_gets_the_policys_per_step_entropy(corridor, word_tok, tmp_path):
    trainer = _trainer(corridor, word_tok, tmp_path, "algo.estimator=empg")
    trajs, _ = trainer.rollout(0)
    inputs = trainer._credit_inputs(trajs)
    steps = [s for t in trajs for s in t.steps]
    assert set(inputs.fields) == {"entropy"} and len(inputs.fields["entropy"]) == len(steps)
    hand = [_hand_stats(trainer.model, s.prompt_ids, s.response_ids, 0.7)[1] for s in steps]
    np.testing.assert_allclose(inputs.fields["entropy"], hand, rtol=1e-4, atol=1e-5)
    # Not the sampled tokens' mean NLL (what the trainer used to feed EMPG).
    nll = [-float(np.mean(s.response_logprobs)) for s in steps]
    assert not np.allclose(inputs.fields["entropy"], nll, atol=1e-3)
    record = trainer.iteration()
    assert np.isfinite(record["loss"]) and record["step_entropy_mean"] == pytest.approx(np.mean(hand), rel=1e-3)


def test_igpo_gets_the_gold_answers_logprob_after_each_prompt(corridor, word_tok, tmp_path):
    trainer = _trainer(corridor, word_tok, tmp_path, "algo.estimator=igpo",
                       "algo.igpo_answer_template=right {answer}")
    trajs, _ = trainer.rollout(0)
    for t in trajs:  # the corridor is not a QA env: give its steps a gold answer as a QA env would
        for s in t.steps:
            s.info["gold_answers"] = ["right"]
    inputs = trainer._credit_inputs(trajs)
    answer = trainer.encode("right right")
    hand = [_hand_stats(trainer.model, s.prompt_ids, answer, 0.7)[0] for t in trajs for s in t.steps]
    np.testing.assert_allclose(inputs.fields["gold_logprob"], hand, rtol=1e-4, atol=1e-5)


def test_stratified_grpo_strata_are_the_search_envs_tool_call_counts(corridor, word_tok, tmp_path):
    """Real Search-v0 episodes with 0, 1 and 2 searches; the trainer's strata are those counts."""
    import gymnasium as gym

    from turngym.agents.types import Step, Trajectory
    from turngym.credit import StepBatch, compute_advantages

    trainer = _trainer(corridor, word_tok, tmp_path, "algo.estimator=stratified_grpo")
    trajs = []
    for searches in (0, 1, 2, 2):
        env = gym.make("turngym:turngym/Search-v0")
        obs, info = env.reset(options={"task_id": "test/0"})
        gold = info.get("gold_answers") or ["x"]
        steps = []
        for k in range(searches):
            nxt, reward, _, _, info = env.step(f"<search> query {k} </search>")
            steps.append(Step(observation=obs, action="search", reward=reward, info=dict(info),
                              prompt_ids=[1, 2], response_ids=[3], response_logprobs=[-0.5], action_valid=True))
            obs = nxt
        answer = gold[0] if searches == 2 else "wrong"
        _, reward, term, _, info = env.step(f"<answer> {answer} </answer>")
        steps.append(Step(observation=obs, action="answer", reward=reward, info=dict(info), prompt_ids=[1, 2],
                          response_ids=[3], response_logprobs=[-0.5], action_valid=True, terminated=term))
        trajs.append(Trajectory(env_id="turngym/Search-v0", task_id="test/0", group_id="g", steps=steps))
        env.close()
    inputs = trainer._credit_inputs(trajs)
    calls = [t.steps[-1].info["num_tool_calls"] for t in trajs]
    assert calls == [0, 1, 2, 2]
    assert inputs.fields["num_tool_calls"] == [c for t, c in zip(trajs, calls, strict=True) for _ in t.steps]
    _, adv = trainer._samples(trajs)
    rows = [(0, i, k, float(s.reward)) for i, t in enumerate(trajs) for k, s in enumerate(t.steps)]
    group, traj, step, reward = zip(*rows, strict=True)
    want = compute_advantages("stratified_grpo", StepBatch(group_id=group, traj_id=traj, step=step, reward=reward,
                                                             num_tool_calls=inputs.fields["num_tool_calls"]))
    np.testing.assert_allclose(adv, want)


def test_stratified_grpo_on_an_env_without_tool_calls_is_an_error(corridor, word_tok, tmp_path):
    from turngym.errors import TurngymError

    trainer = _trainer(corridor, word_tok, tmp_path, "algo.estimator=stratified_grpo")
    trajs, _ = trainer.rollout(0)
    with pytest.raises(TurngymError, match="num_tool_calls"):
        trainer._credit_inputs(trajs)


def test_spa_learns_its_progress_estimator_in_the_loop_and_never_reads_ground_truth(corridor, word_tok, tmp_path):
    trainer = _trainer(corridor, word_tok, tmp_path, "algo.estimator=spa", "algo.progress_l2=0.001")
    trajs, _ = trainer.rollout(0)
    for t in trajs:  # ground truth is unavailable to the learned source: hide it
        for s in t.steps:
            s.progress = None
    inputs = trainer._credit_inputs(trajs)
    assert inputs.hparams == {"progress_is_cumulative": False} and inputs.metrics["oracle_signal"] == 0.0
    contrib = np.asarray(inputs.fields["progress"])
    sums = np.array([contrib[i:i + t.num_turns].sum() for i, t in
                     zip(np.cumsum([0] + [t.num_turns for t in trajs]), trajs, strict=False)])
    outcome = np.array([sum(s.reward for s in t.steps) for t in trajs])
    # SPA's loss: a trajectory's contributions sum to its outcome (fitted in-sample, small ridge).
    assert inputs.metrics["spa_progress_loss"] == pytest.approx(np.mean((sums - outcome) ** 2))
    assert inputs.metrics["spa_progress_loss"] < 0.05 * max(np.var(outcome), 1e-3) + 1e-6
    assert len(trainer.spa_state.buffer) == 1


def test_spa_oracle_progress_only_by_name_and_flagged(corridor, word_tok, tmp_path):
    trainer = _trainer(corridor, word_tok, tmp_path, "algo.estimator=spa", "algo.progress_source=oracle_progress")
    record = trainer.iteration()
    assert record["oracle_signal"] == 1.0
    trajs, _ = trainer.rollout(1)
    inputs = trainer._credit_inputs(trajs)
    assert inputs.fields["progress"] == [float(s.progress) for t in trajs for s in t.steps]
    assert inputs.hparams == {"progress_is_cumulative": True}


def test_spa_replay_buffer_survives_a_resume(corridor, word_tok, tmp_path):
    trainer = _trainer(corridor, word_tok, tmp_path, "algo.estimator=spa", "run.iterations=2")
    trainer.train()
    before = trainer.spa_state.state_dict()
    assert len(before) == 2
    resumed = _trainer(corridor, word_tok, tmp_path, "algo.estimator=spa", "run.iterations=2", resume=True)
    after = resumed.spa_state.state_dict()
    assert len(after) == 2
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a["features"], b["features"])
        np.testing.assert_array_equal(a["outcome"], b["outcome"])


def test_gae_without_a_critic_is_refused_with_alternatives(corridor, word_tok, tmp_path):
    from turngym.errors import TurngymError
    from turngym.trainers.config import ConfigError
    from turngym.trainers.credit_inputs import CreditSettings, credit_inputs

    with pytest.raises(ConfigError, match="no critic"):  # at config load, before any rollout
        _trainer(corridor, word_tok, tmp_path, "algo.estimator=gae")
    trainer = _trainer(corridor, word_tok, tmp_path)
    trajs, _ = trainer.rollout(0)
    with pytest.raises(TurngymError, match="no critic"):  # and in the provider mechanism itself
        credit_inputs("gae", {}, trajs, trainer, CreditSettings())


def test_turngym_eval_scores_a_runs_checkpoint_as_the_trainer_does(corridor, word_tok, tmp_path):
    """`turngym eval RUN_DIR` (DESIGN's eval subcommand) reloads the run's config and newest checkpoint."""
    import json

    from turngym.cli import main

    run_dir = tmp_path / "run"
    trainer = _trainer(corridor, word_tok, run_dir, "run.iterations=1", "run.save_every=1")
    trainer.train()
    before = (run_dir / "metrics.jsonl").read_text()
    out = tmp_path / "eval.json"
    assert main(["eval", str(run_dir), "--tasks", "5", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["episodes"] == 5 and 0.0 <= record["success_rate"] <= 1.0
    assert record["checkpoint"].endswith("checkpoint-1") and record["ci_low"] <= record["ci_high"]
    assert (run_dir / "metrics.jsonl").read_text() == before  # the run itself is untouched
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
