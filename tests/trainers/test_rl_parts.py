"""The trainer's parts against worked examples: EPO/AEPO/FoR terms, configs and recipes, the CLI, SFT data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]


# ---- EPO / AEPO / FoR against credit-spec sections 7-8 ----------------------------------------------------


def test_epo_penalty_is_zero_inside_the_band_and_a_hinge_outside():
    from turngym.trainers.objectives import epo_entropy_penalty

    # credit-spec 7(d): history [1.0, 0.8, 0.6], ratios 0.8/1.2, rows on turns 0 and 2.
    ent = torch.tensor([[1.1, 0.3, 1.6], [0.7, 0.5, 0.65]], requires_grad=True)
    turn = torch.tensor([[0, 0, 0], [2, 2, 2]])
    pen = epo_entropy_penalty(ent, turn, [1.0, 0.8, 0.6], min_ratio=0.8, max_ratio=1.2)
    # Outside the band exactly where the reference code's mask is 0.1; here the distance to the band.
    assert torch.allclose(pen, torch.tensor([[0.0, 0.5, 0.4], [0.0, 0.0, 0.0]]), atol=1e-6)
    pen.sum().backward()
    assert torch.equal(ent.grad, torch.tensor([[0.0, -1.0, 1.0], [0.0, 0.0, 0.0]]))
    # No history for the turn (or none at all): no penalty.
    assert epo_entropy_penalty(ent, torch.tensor([[5, 5, 5], [-1, -1, -1]]), [1.0]).abs().sum() == 0


def test_aepo_clipping_keeps_a_bounded_gradient_on_clipped_positive_tokens():
    from turngym.kernels.policy_loss import ppo_clip_token_loss
    from turngym.trainers.objectives import aepo_clip_correction

    # credit-spec 8(d): log-ratio [0.5, 0.1, -0.5, 0.5], A [1, 1, -1, -1], eps 0.2, c 3.
    old = torch.zeros(4)
    logp = torch.tensor([0.5, 0.1, -0.5, 0.5], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    mask = torch.ones(4)
    loss, *_ = ppo_clip_token_loss(logp, old, adv, 0.2, 0.2, 3.0)
    term, selected = aepo_clip_correction(logp, old, adv, mask, 0.2)
    total = loss + term
    assert torch.allclose(total, torch.tensor([-1.2, -1.105171, 0.8, 1.648721]), atol=1e-5)  # forward unchanged
    total.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([-1.2, -1.105171, 0.0, 1.648721]), atol=1e-5)
    assert selected.tolist() == [True, False, False, False]


def test_entropy_aware_advantage_worked_example():
    from turngym.trainers.objectives import entropy_aware_advantage

    adv = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    ent = torch.tensor([[0.5, 2.0, 1.0], [0.2, 1.3, 9.9]])
    out = entropy_aware_advantage(adv, ent, mask, 0.2)
    want = torch.tensor([[0.857866, 1.284268, 1.0], [-0.772586, -1.08528, 0.0]])
    assert torch.allclose(out, want, atol=1e-5)


def test_trajectory_balance_residual_and_gradient():
    from turngym.trainers.objectives import trajectory_balance_loss

    log_z = torch.tensor(0.5, requires_grad=True)
    log_pf = torch.tensor([-2.0, -3.0], requires_grad=True)
    loss = trajectory_balance_loss(log_z, log_pf, [1.0, 0.0], reward_floor=1e-4)
    # (0.5 - 2 - log 1)^2 = 2.25 ; (0.5 - 3 - log 1e-4)^2 = (6.710340)^2
    assert torch.allclose(loss, torch.tensor([2.25, (0.5 - 3.0 - np.log(1e-4)) ** 2], dtype=torch.float32))
    loss.sum().backward()
    assert log_pf.grad[0] < 0 < log_pf.grad[1]  # the winner's probability goes up, the loser's down


# ---- config -----------------------------------------------------------------------------------------------


def test_overrides_types_and_unknown_keys():
    from turngym.trainers.config import ConfigError, RLConfig, load_config

    cfg = load_config(RLConfig, None, ["algo.clip_high=0.3", "rollout.group_size=4", "model.lora=true",
                                       "agent.options={window: 2}", "optim.betas=[0.9, 0.95]"])
    assert (cfg.algo.clip_high, cfg.rollout.group_size, cfg.model.lora) == (0.3, 4, True)
    assert cfg.agent.options == {"window": 2} and cfg.optim.betas == [0.9, 0.95]
    with pytest.raises(ConfigError, match="did you mean 'clip_high'"):
        load_config(RLConfig, None, ["algo.clip_hihg=0.3"])
    with pytest.raises(ConfigError, match="did you mean 'algo'"):
        load_config(RLConfig, None, ["alg.clip_high=0.3"])
    with pytest.raises(ConfigError, match="must be an integer"):
        load_config(RLConfig, None, ["rollout.group_size=many"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(RLConfig, None, ["algo.clip_high"])


def test_unknown_recipe_key_is_named(tmp_path):
    from turngym.trainers.config import ConfigError, RLConfig, load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("algo: {estimater: grpo}\n")
    with pytest.raises(ConfigError, match="algo.estimater.*did you mean 'estimator'"):
        load_config(RLConfig, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(RLConfig, tmp_path / "missing.yaml")


@pytest.mark.parametrize("recipe", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_recipe_is_valid(recipe):
    import turngym
    from turngym.credit import ESTIMATORS
    from turngym.trainers.config import RLConfig, SFTConfig, load_config

    cls = SFTConfig if recipe.startswith("sft") else RLConfig
    cfg = load_config(cls, ROOT / "configs" / recipe)
    if cls is RLConfig:
        assert cfg.algo.estimator in ESTIMATORS
    if not recipe.endswith("_gpu.yaml"):  # CPU recipes run here: their envs exist and the model is the embedded one
        assert cfg.env.id in turngym.registry()
        assert cfg.model.path == "default" and cfg.model.dtype == "float32"


def test_every_field_has_help():
    import dataclasses

    from turngym.trainers import config as c

    for cls in (c.ModelConfig, c.EnvConfig, c.AgentConfig, c.RolloutConfig, c.AlgoConfig, c.OptimConfig,
                c.RunConfig, c.SFTData):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


# ---- CLI ----------------------------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "turngym.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_cli_help_config_and_bad_key():
    out = _cli("train", "--help-config")
    assert out.returncode == 0 and "algo.clip_high" in out.stdout and "rollout.group_size" in out.stdout
    bad = _cli("train", "configs/grpo_game24.yaml", "algo.estimatr=grpo")
    assert bad.returncode != 0
    assert "did you mean 'estimator'" in (bad.stderr + bad.stdout)


# ---- SFT data -------------------------------------------------------------------------------------------------


def test_oracle_sft_samples_put_loss_only_on_the_reply(tmp_path, tiny_tokenizer, make_tiny_model):
    from turngym.trainers.config import SFTConfig, load_config
    from turngym.trainers.sft import SFTTrainer

    model = make_tiny_model(tiny_tokenizer, seed=1)
    model.config.max_position_embeddings = 4096
    cfg = load_config(SFTConfig, None, ["env.id=turngym/BlocksWorld-v0", "agent.options={num_exemplars: 0, context: full}",
                                        "data.episodes=3", "data.epochs=3", "data.batch_size=3", "optim.lr=0.003",
                                        f"run.dir={tmp_path}", "run.eval_tasks=0", "run.tensorboard=false"])
    trainer = SFTTrainer(cfg, model=model, tokenizer=tiny_tokenizer)
    trajs = trainer.data()
    assert all(t.won for t in trajs)
    from turngym.trainers.tokens import build_samples

    samples = build_samples(trajs, None, mode="in_context")  # full context: one token stream per episode
    assert len(samples) == len(trajs)
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    for s, t in zip(samples, trajs):
        replies = [tiny_tokenizer.decode(st.response_ids) for st in t.steps]
        assert all(r.rstrip().endswith("<|im_end|>") and f"Action: {st.action}" in r for r, st in zip(replies, t.steps))
        masked = [i for i, m in zip(s.input_ids, s.loss_mask) if m]
        assert masked.count(im_end) == len(t.steps)
    result = trainer.train()
    nll = [json.loads(line)["nll"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert nll[-1] < nll[0]
    assert Path(result["checkpoint"], "model.safetensors").is_file()


def test_sft_autocast_runs_in_bf16_and_keeps_fp32_weights(tmp_path, tiny_tokenizer, make_tiny_model, monkeypatch):
    """model.autocast=bfloat16 reaches the SFT update (it was silently ignored): the model's matmuls run in bf16
    under autocast, the weights (and so AdamW) stay fp32, and it still learns."""
    import torch

    from turngym.trainers.config import SFTConfig, load_config
    from turngym.trainers.sft import SFTTrainer

    model = make_tiny_model(tiny_tokenizer, seed=1)
    model.config.max_position_embeddings = 4096
    cfg = load_config(SFTConfig, None, ["env.id=turngym/BlocksWorld-v0", "agent.options={num_exemplars: 0, context: full}",
                                        "data.episodes=3", "data.epochs=3", "data.batch_size=3", "optim.lr=0.003",
                                        "model.autocast=bfloat16", f"run.dir={tmp_path}", "run.eval_tasks=0",
                                        "run.tensorboard=false"])
    trainer = SFTTrainer(cfg, model=model, tokenizer=tiny_tokenizer)
    seen: list[torch.dtype] = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))  # a decoder layer's projection
    linear.register_forward_hook(lambda mod, inputs, output: seen.append(output.dtype))
    trainer.train()
    assert seen and set(seen) == {torch.bfloat16}, seen
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    nll = [json.loads(line)["nll"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert nll[-1] < nll[0]


def _transcript_trajectories(tokenizer, n: int, seed: int = 0):
    """Werewolf-like SFT data: each turn's prompt repeats the transcript before it plus new lines; the reply
    ends with <|im_end|>. Trajectories of 1-4 turns."""
    import random

    from turngym.agents.types import Step, Trajectory

    rng = random.Random(seed)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    system = [rng.randrange(3, 250) for _ in range(24)]
    out = []
    for k in range(n):
        transcript, steps = list(system), []
        for _ in range(1 + k % 4):
            transcript += [rng.randrange(3, 250) for _ in range(rng.randrange(5, 15))]
            reply = [rng.randrange(3, 250) for _ in range(rng.randrange(1, 4))] + [im_end]
            steps.append(Step(observation="o", action="a", prompt_ids=list(transcript), response_ids=reply))
        out.append(Trajectory(env_id="turngym/BlocksWorld-v0", task_id=str(k), group_id=str(k), seed=k,
                              steps=steps, won=True))
    return out


def test_sft_step_plan_by_trajectory_keeps_trajectories_whole(tiny_tokenizer):
    from turngym.trainers.sft import step_plan
    from turngym.trainers.tokens import build_samples

    samples = build_samples(_transcript_trajectories(tiny_tokenizer, 9), None, mode="auto")
    assert len(samples) == sum(1 + k % 4 for k in range(9))  # a fresh prompt each turn: one sample per turn
    plan = step_plan(samples, 2, 5, "trajectory", np.random.default_rng(0))
    for epoch in (0, 1):
        steps = [idx for e, idx in plan if e == epoch]
        assert sorted(i for idx in steps for i in idx) == list(range(len(samples)))  # each sample once an epoch
        for idx in steps:
            trajs = {samples[i].traj_index for i in idx}
            assert all(sum(s.traj_index == t for s in samples) == sum(samples[i].traj_index == t for i in idx)
                       for t in trajs)  # whole trajectories only
            assert len(idx) <= 5 or len(trajs) == 1
            assert idx == sorted(idx)  # trajectory then turn order, for pack_prefix_trees
    # 'sample' is the permutation cut into batch_size pieces, as before batch_by existed.
    rng = np.random.default_rng(3)
    order = rng.permutation(len(samples))
    assert [idx for _, idx in step_plan(samples, 1, 4, "sample", np.random.default_rng(3))] == \
        [sorted(int(i) for i in order[s:s + 4]) for s in range(0, len(order), 4)]
    with pytest.raises(ValueError, match="batch_by"):
        step_plan(samples, 1, 4, "episode", np.random.default_rng(0))


def test_sft_shares_a_trajectorys_transcript_and_trains_the_same(tmp_path, tiny_tokenizer, make_tiny_model,
                                                               monkeypatch):
    """The seam: optim.share_prefix reaches the SFT update; with data.batch_by=trajectory each micro-batch is a
    prefix tree (each turn's repeated transcript computed once), and every step's loss is the unshared one."""
    from turngym.agents.types import save_trajectories
    from turngym.trainers import logprobs
    from turngym.trainers.config import ConfigError, SFTConfig, load_config
    from turngym.trainers.sft import SFTTrainer

    data = save_trajectories(_transcript_trajectories(tiny_tokenizer, 10), tmp_path / "data.jsonl")
    saved = []
    plain_tree = logprobs._prefix_tree

    def tree(*a):
        packed = plain_tree(*a)
        if packed is not None:
            saved.append(int(a[1].sum()) - len(packed[0]))
        return packed

    monkeypatch.setattr(logprobs, "_prefix_tree", tree)
    nll = {}
    for share in ("true", "false"):
        cfg = load_config(SFTConfig, None, ["env.id=turngym/BlocksWorld-v0", f"data.source={data}", "data.epochs=2",
                                            "data.batch_size=6", "data.batch_by=trajectory", "optim.lr=0.003",
                                            f"optim.share_prefix={share}", f"run.dir={tmp_path / share}",
                                            "run.eval_tasks=0", "run.tensorboard=false", "run.progress=false"])
        SFTTrainer(cfg, model=make_tiny_model(tiny_tokenizer, seed=1), tokenizer=tiny_tokenizer).train()
        nll[share] = [json.loads(line)["nll"] for line in (tmp_path / share / "metrics.jsonl").read_text().splitlines()]
        if share == "true":
            assert saved and sum(saved) > 200, saved  # the shared transcripts ran once
            saved.clear()
    assert not saved  # share_prefix=false never packs a tree
    assert len(nll["true"]) == len(nll["false"]) and nll["true"][-1] < nll["true"][0]
    for a, b in zip(nll["true"], nll["false"]):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (nll["true"], nll["false"])
    with pytest.raises(ConfigError, match="data.batch_by='turn'"):
        load_config(SFTConfig, None, ["env.id=turngym/BlocksWorld-v0", f"data.source={data}", "data.batch_by=turn"])
