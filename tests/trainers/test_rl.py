"""The RL trainer end to end with a tiny random model: it learns, resumes bit for bit, and its parts keep their promises.

The learning env is tests/trainers/corridor.py (walk right 1-2 cells, reward
only at the end) with a word-level tokenizer, so a random-init 2-layer Llama
samples the right word about 1 time in 18: enough signal for GRPO/GiGPO to
find within a few iterations, few enough that success starts near 0.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

HERE = Path(__file__).parent
ROOT = HERE.parents[1]


def _config(corridor, run_dir, *overrides):
    from turngym.trainers.config import RLConfig, load_config

    base = [f"env.id={corridor.ENV_ID}",
            "agent.options={system_prompt: go right, num_exemplars: 0, format_reminder: false, prefill: false}",
            "agent.max_tokens=1", "rollout.tasks_per_iter=4", "rollout.group_size=8", "optim.lr=0.003",
            f"run.dir={run_dir}", "run.eval_tasks=16", "run.progress=false", "run.save_every=100",
            "run.tensorboard=false", "optim.micro_batch_tokens=2048"]
    return load_config(RLConfig, None, base + list(overrides))


def _trainer(corridor, word_tok, run_dir, *overrides, seed=0, resume=False):
    from turngym.trainers.rl import RLTrainer

    torch.set_num_threads(1)
    model = corridor.tiny_policy(word_tok, seed=seed)
    trainer = RLTrainer(_config(corridor, run_dir, *overrides), model=model, tokenizer=word_tok, resume=resume)
    trainer.engine.eos_token_ids = frozenset()  # a random model would stop at random lengths
    return trainer


def _records(run_dir, kind="train"):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == kind]


# ---- proof of learning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["grpo", "gigpo"])
def test_success_rises_within_a_few_cpu_seconds(corridor, word_tok, tmp_path, estimator):
    trainer = _trainer(corridor, word_tok, tmp_path, f"algo.estimator={estimator}", "run.iterations=25")
    result = trainer.train()
    train = _records(tmp_path)
    evals = _records(tmp_path, "eval")
    first = np.mean([r["success_rate"] for r in train[:5]])
    last = np.mean([r["success_rate"] for r in train[-5:]])
    assert first < 0.3, first
    assert last >= first + 0.4, (first, last)
    assert evals[0]["success_rate"] <= 0.2 and result["eval"]["success_rate"] >= 0.8, evals
    # The trainer recomputes log-probs that match the engine's, and the entropy falls as the policy sharpens.
    assert max(r["logprob_diff_max"] for r in train) < 1e-4
    assert train[-1]["entropy"] < train[0]["entropy"]
    for key in ("success_rate", "reward_mean", "adv_std", "pg_clipfrac", "grad_norm", "entropy", "ppo_kl",
                "response_tokens_mean", "invalid_action_rate", "tokens_per_s", "env_steps_per_s", "time_generate",
                "time_env", "time_logprob", "time_update", "distinct_plans"):
        assert key in train[-1], key


def _learns_in_fp32_weights_despite_bf16(trainer, run_dir):
    """Trains ``trainer``; it learns, its weights stay fp32 and its log-probs differ from the engine's by bf16
    rounding only."""
    result = trainer.train()
    train = _records(run_dir)
    first = np.mean([r["success_rate"] for r in train[:5]])
    last = np.mean([r["success_rate"] for r in train[-5:]])
    assert last >= first + 0.4, (first, last)
    assert result["eval"]["success_rate"] >= 0.8
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert 1e-4 < max(r["logprob_diff_max"] for r in train) < 0.1


def test_bf16_autocast_learns_too(corridor, word_tok, tmp_path):
    """model.autocast=bfloat16: the update's forward/backward in bf16, fp32 weights and AdamW; the engine samples
    in fp32, so the trainer's log-probs differ from the engine's by bf16 rounding (logged), and it still learns."""
    trainer = _trainer(corridor, word_tok, tmp_path, "model.autocast=bfloat16", "run.iterations=25")
    _learns_in_fp32_weights_despite_bf16(trainer, tmp_path)


def test_a_bf16_rollout_copy_learns_and_follows_every_update(corridor, word_tok, tmp_path):
    """rollout.dtype=bfloat16: the engine samples from a bf16 copy of the fp32 model, synced after every update
    (the trainer's own log-probs stay fp32, so the logged engine-vs-trainer gap is bf16 rounding)."""
    trainer = _trainer(corridor, word_tok, tmp_path, "rollout.dtype=bfloat16", "run.iterations=25")
    copy = trainer.engine.model
    assert copy is not trainer.model and all(p.dtype == torch.bfloat16 for p in copy.parameters())
    _learns_in_fp32_weights_despite_bf16(trainer, tmp_path)
    ours = dict(trainer.model.named_parameters())
    for name, p in copy.named_parameters():  # the copy holds the final weights, rounded to bf16
        assert torch.equal(p, ours[name].detach().to(torch.bfloat16)), name


@pytest.mark.parametrize("mode", ["auto", "stepwise"])
def test_the_shared_prefix_update_equals_the_plain_one(corridor, word_tok, tmp_path, monkeypatch, mode):
    """optim.share_prefix (the group's prompt, or the rows' whole prefix tree, through the model once) gives the
    plain update's loss and gradient. Stepwise samples (a turn each, its prompt repeating the episode so far)
    are packed with their episode's other turns, so the tree shares that transcript too."""
    from turngym.trainers import logprobs

    monkeypatch.setattr(logprobs, "MIN_SHARED_PREFIX", 2)  # the corridor's prompts are short
    calls = []
    plain_hidden, plain_tree = logprobs._prefix_shared_hidden, logprobs._prefix_tree
    monkeypatch.setattr(logprobs, "_prefix_shared_hidden", lambda *a: calls.append(a[-1]) or plain_hidden(*a))

    def tree(*a):
        packed = plain_tree(*a)
        if packed is not None:  # the shared tokens: what the rows hold minus the tree's
            calls.append(int(a[1].sum()) - len(packed[0]))
        return packed

    monkeypatch.setattr(logprobs, "_prefix_tree", tree)
    from turngym.trainers import update

    packed, plain_pack = [], update.pack_forward

    def pack(samples, budget, share, limit):  # the update's micro-batches: the seam from optim.share_prefix
        groups = plain_pack(samples, budget, share, limit)
        packed.append((share, [[samples[i].traj_index for i in g] for g in groups]))
        return groups

    monkeypatch.setattr(update, "pack_forward", pack)
    records = {}
    for share in ("true", "false"):
        trainer = _trainer(corridor, word_tok, tmp_path / share, f"optim.share_prefix={share}",
                           "rollout.tasks_per_iter=1", "run.iterations=1", "run.eval_tasks=0",
                           f"algo.sample_mode={mode}")
        records[share] = trainer.iteration()
    assert calls and min(calls) >= 2, calls  # the shared path ran (only) in the share_prefix=true run
    assert [share for share, _ in packed] == [True, False]
    # the turns of one episode stay together, in order, so its repeated transcript can run once
    (_, groups), = [p for p in packed if p[0]]
    if mode == "stepwise":  # an episode's turns share a micro-batch (tokens.pack_forward's own test: the order)
        assert any(len(g) > len(set(g)) for g in groups), groups
    on, off = records["true"], records["false"]
    assert on["generated_tokens"] == off["generated_tokens"] and on["adv_std"] == off["adv_std"]
    for key in ("pg_loss", "grad_norm", "entropy", "ppo_kl"):
        assert math.isclose(on[key], off[key], rel_tol=1e-4, abs_tol=1e-6), (key, on[key], off[key])


def test_gradient_sign_on_a_hand_made_batch(corridor, word_tok):
    """A positive advantage raises the log-prob of the sampled token, a negative one lowers it."""
    from turngym.kernels.policy_loss import policy_loss_from_logprobs
    from turngym.trainers.logprobs import sequence_logprobs

    ids = word_tok.apply_chat_template([{"role": "user", "content": "you are at 0 of 1 ."}],
                                       add_generation_prompt=True, return_dict=False)
    right, left = word_tok.convert_tokens_to_ids("right"), word_tok.convert_tokens_to_ids("left")
    for target, sign in ((right, 1.0), (left, -1.0)):
        model = corridor.tiny_policy(word_tok, seed=3)
        x = torch.tensor([list(ids) + [target]])
        mask = torch.zeros_like(x, dtype=torch.float32)
        mask[0, -1] = 1
        before = sequence_logprobs(model, x, loss_mask=mask)[0, -1].item()
        logp = sequence_logprobs(model, x, loss_mask=mask)
        loss, _ = policy_loss_from_logprobs(logp, logp.detach(), torch.full_like(mask, sign), mask)
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad
        after = sequence_logprobs(model, x, loss_mask=mask)[0, -1].item()
        assert (after - before) * sign > 0, (target, before, after)


# ---- resume ---------------------------------------------------------------------------------------------------


def test_a_killed_and_resumed_run_logs_the_same_metrics(corridor, word_tok, tmp_path):
    overrides = ("run.iterations=4", "run.save_every=2", "run.eval_tasks=0", "algo.ppo_epochs=2",
                 "algo.mini_batches=2")
    full = _trainer(corridor, word_tok, tmp_path / "full", *overrides)
    full.train()
    # "Killed" after iteration 3: checkpoint-2 exists, iteration 3 was logged but never checkpointed.
    part = _trainer(corridor, word_tok, tmp_path / "part", *overrides)
    for _ in range(3):
        part.iteration()
        if part.iteration_done == 2:
            part.save()
    del part
    resumed = _trainer(corridor, word_tok, tmp_path / "part", *overrides, seed=123, resume=True)
    assert resumed.iteration_done == 2
    resumed.train()

    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith(("time", "tokens_per_s", "env_steps_per_s"))}
                for r in records]

    a, b = strip(_records(tmp_path / "full")), strip(_records(tmp_path / "part"))
    assert [r["iteration"] for r in b] == [1, 2, 3, 4]
    assert a == b
    sa = torch.load(tmp_path / "full" / "checkpoint-4" / "trainer_state.pt", weights_only=False)
    sb = torch.load(tmp_path / "part" / "checkpoint-4" / "trainer_state.pt", weights_only=False)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "full" / "checkpoint-4" / "model.safetensors"))
    wb = load_file(str(tmp_path / "part" / "checkpoint-4" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert sa["iteration"] == sb["iteration"] == 4
    assert (tmp_path / "part" / "latest").read_text().strip() == "checkpoint-4"


def test_checkpoints_are_engine_loadable_and_old_ones_pruned(corridor, word_tok, tmp_path):
    from turngym.agents.engines.hf import HFEngine
    from turngym.agents.types import SamplingParams

    trainer = _trainer(corridor, word_tok, tmp_path, "run.iterations=3", "run.save_every=1", "run.eval_tasks=0",
                       "run.keep_checkpoints=2")
    trainer.train()
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert names == ["checkpoint-2", "checkpoint-3"]
    assert not list(tmp_path.glob("*.tmp"))
    engine = HFEngine(str(tmp_path / "checkpoint-3"), eos_token_ids=[])
    sp = SamplingParams(max_tokens=2, seed=5)
    prompt = [{"role": "user", "content": "you are at 0 of 2 ."}]
    assert engine.generate([prompt], sp)[0].token_ids == trainer.engine.generate([prompt], sp)[0].token_ids


# ---- options ----------------------------------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_the_reference_is_the_base(corridor, word_tok, tmp_path):
    pytest.importorskip("peft")
    trainer = _trainer(corridor, word_tok, tmp_path, "model.lora=true", "model.lora_r=4",
                       "model.lora_target_modules=[q_proj, v_proj]", "algo.kl_coef=0.1", "run.iterations=2",
                       "run.eval_tasks=0", "run.save_every=2")
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" not in n}
    assert all("lora_" in n for n, p in trainer.model.named_parameters() if p.requires_grad)
    assert trainer.reference.shared  # adapters off, no second copy
    trainer.train()
    assert all(torch.equal(p, base[n]) for n, p in trainer.model.named_parameters() if "lora_" not in n)
    assert "kl" in _records(tmp_path)[-1]
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "adapter").is_dir() and (ckpt / "model.safetensors").is_file()


def test_engine_logprobs_are_checked_before_use(corridor, word_tok, tmp_path):
    from turngym.errors import TurngymError

    trainer = _trainer(corridor, word_tok, tmp_path, "algo.old_logprobs=engine", "run.eval_tasks=0")
    record = trainer.iteration()
    assert record["logprob_diff_max"] < 1e-4
    strict = _trainer(corridor, word_tok, tmp_path / "strict", "algo.old_logprobs=engine",
                      "algo.logprob_tolerance=0.0", "run.eval_tasks=0")
    with pytest.raises(TurngymError, match="logprob_tolerance"):
        strict.iteration()


def test_dynamic_filter_and_invalid_action_penalty(corridor, word_tok, tmp_path):
    trainer = _trainer(corridor, word_tok, tmp_path, "algo.dynamic_filter=true", "algo.invalid_action_penalty=0.1",
                       "run.eval_tasks=0")
    record = trainer.iteration()
    assert record["trained_episodes"] < record["episodes"] or record["reward_std"] > 0
    # Invalid steps are penalized: the mean reward is below the success rate.
    assert record["reward_mean"] < record["success_rate"] + 1e-9
    assert record["invalid_action_rate"] > 0


@pytest.mark.parametrize("overrides", [
    ("algo.objective=tb",),
    ("algo.aepo_clipping=true", "algo.aepo_advantage=0.2"),
    ("algo.entropy_coef=0.01", "algo.epo_smooth_coef=1.0"),
    ("algo.estimator=rloo", "algo.sample_mode=stepwise", "algo.loss_agg_mode=seq-mean-token-mean",
     "algo.seq_unit=step"),
    ("algo.estimator=spa",),
    ("algo.loss_agg_mode=seq-mean-token-sum-norm", "algo.dual_clip=3.0", "optim.schedule=cosine",
     "optim.warmup_iters=1"),
])
def test_objective_options_run_and_improve(corridor, word_tok, tmp_path, overrides):
    trainer = _trainer(corridor, word_tok, tmp_path, "run.iterations=12", "run.eval_tasks=0", *overrides)
    trainer.train()
    train = _records(tmp_path)
    assert all(math.isfinite(r.get("grad_norm", 0.0)) for r in train)
    assert np.mean([r["success_rate"] for r in train[-3:]]) > np.mean([r["success_rate"] for r in train[:3]])
    if "algo.objective=tb" in overrides:
        assert train[-1]["log_z"] != 0.0 and "tb_loss" in train[-1]
    if "algo.epo_smooth_coef=1.0" in overrides:
        assert len(trainer.entropy_history) == 12 and "epo_penalty" in train[-1]


def test_bad_config_values_are_named(corridor, word_tok, tmp_path):
    from turngym.trainers.config import ConfigError

    with pytest.raises(ConfigError, match="estimator"):
        _trainer(corridor, word_tok, tmp_path, "algo.estimator=grpoo")
    with pytest.raises(ConfigError, match="entropy_coef"):
        _trainer(corridor, word_tok, tmp_path, "algo.epo_smooth_coef=1.0")
    with pytest.raises(ConfigError, match="rollout.dtype"):
        _config(corridor, tmp_path, "rollout.dtype=bfloat16", "rollout.engine=vllm")
    with pytest.raises(ConfigError, match="rollout.dtype"):
        _config(corridor, tmp_path, "rollout.dtype=int3")


def test_plot_draws_the_learning_curves(corridor, word_tok, tmp_path):
    pytest.importorskip("matplotlib")
    from turngym.trainers.runlog import plot_run

    _trainer(corridor, word_tok, tmp_path, "run.iterations=2", "run.eval_tasks=4").train()
    out = plot_run(tmp_path)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_werewolf_self_play_trains_end_to_end(tmp_path, tiny_tokenizer, make_tiny_model):
    pytest.importorskip("pettingzoo")
    from turngym.trainers.config import RLConfig, load_config
    from turngym.trainers.rl import RLTrainer

    model = make_tiny_model(tiny_tokenizer, seed=0)
    model.config.max_position_embeddings = 32768  # the 300-token test vocabulary makes transcripts long
    cfg = load_config(RLConfig, ROOT / "configs" / "selfplay_werewolf.yaml", [
        "agent.max_tokens=6", "rollout.tasks_per_iter=1", "run.iterations=1", "run.eval_tasks=1",
        f"run.dir={tmp_path}", "run.progress=false", "run.tensorboard=false"])
    result = RLTrainer(cfg, model=model, tokenizer=tiny_tokenizer).train()
    train = result["train"]
    assert train["episodes"] >= 6 and train["num_loss_tokens"] > 0 and train["logprob_diff_max"] < 1e-4
    assert {t for t in ("success_rate", "ci_low")} <= set(result["eval"])
