"""Config values are checked at load time: a bad choice names its key, the value and the closest valid one.

(Unknown keys, types and the recipes' YAML are tested in test_rl_parts.py; every recipe runs in test_recipes.py.)
"""

from __future__ import annotations

import pytest

from turngym.trainers.config import (
    AlgoConfig,
    ConfigError,
    EnvConfig,
    RLConfig,
    SFTConfig,
    load_config,
    validate_config,
)

# (override, the key the message names, the closest valid value it suggests or None)
RL_CHOICES = [
    ("algo.objective=ppoo", "algo.objective='ppoo'", "ppo"),
    ("algo.sample_mode=step_wise", "algo.sample_mode='step_wise'", "stepwise"),
    ("algo.loss_agg_mode=token_mean", "algo.loss_agg_mode='token_mean'", "token-mean"),
    ("algo.kl_estimator=low_var", "algo.kl_estimator='low_var'", "low_var_kl"),
    ("algo.old_logprobs=recomputed", "algo.old_logprobs='recomputed'", "recompute"),
    ("algo.seq_unit=steps", "algo.seq_unit='steps'", "step"),
    ("algo.progress_source=oracle", "algo.progress_source='oracle'", "oracle_progress"),
    ("rollout.engine=vlm", "rollout.engine='vlm'", "vllm"),
    ("rollout.schedule=lock-step", "rollout.schedule='lock-step'", "lockstep"),
    ("optim.schedule=cosin", "optim.schedule='cosin'", "cosine"),
    ("model.dtype=bfloat", "model.dtype='bfloat'", "bfloat16"),
    ("agent.name=reactt", "agent.name='reactt'", "react"),
    ("agent.name=oracle", "agent.name='oracle'", None),  # a baseline, not a policy to train
    ("env.id=turngym/Game42-v0", "env.id='turngym/Game42-v0'", "turngym/Game24-v0"),
    ("env.split=tran", "env.split='tran'", "train"),
    ("algo.estimator=gigpoo", "algo.estimator='gigpoo'", "gigpo"),
    ("algo.estimator_kwargs={gamma: 0.9, omgea: 1.0}", "algo.estimator_kwargs.omgea=1.0", "omega"),
    ("agent.options={contxt: full}", "agent.options.contxt", "context"),
]


@pytest.mark.parametrize(("override", "key", "closest"), RL_CHOICES, ids=[c[0].split("=")[0] for c in RL_CHOICES])
def test_a_bad_choice_names_the_key_the_value_and_the_closest(override, key, closest):
    with pytest.raises(ConfigError) as info:
        load_config(RLConfig, None, ["algo.estimator=gigpo", override])
    message = str(info.value)
    assert message.startswith(key), message
    if closest is not None:
        assert f"did you mean {closest!r}" in message, message


def test_gigpo_step_weight_is_omega():
    # verl-agent's name for GiGPO's step-advantage weight; the recipes used it until the estimator rejected it.
    with pytest.raises(ConfigError, match=r"^algo\.estimator_kwargs\.step_weight=1\.0: .*did you mean 'omega'"):
        load_config(RLConfig, None, ["algo.estimator=gigpo", "algo.estimator_kwargs={step_weight: 1.0}"])
    cfg = load_config(RLConfig, None, ["algo.estimator=gigpo", "algo.estimator_kwargs={omega: 1.0, gamma: 0.95}"])
    assert cfg.algo.estimator_kwargs == {"omega": 1.0, "gamma": 0.95}
    with pytest.raises(ConfigError, match="did you mean 'progress_is_cumulative'"):
        load_config(RLConfig, None, ["algo.estimator=spa", "algo.estimator_kwargs={progres_is_cumulative: true}"])


def test_the_estimator_is_checked_only_where_it_is_used():
    # tb and step_dpo use no advantages, so their estimator is never read (as in the trainer before).
    cfg = load_config(RLConfig, None, ["algo.objective=tb", "algo.estimator=none", "algo.estimator_kwargs={x: 1}"])
    assert cfg.algo.objective == "tb"
    with pytest.raises(ConfigError, match=r"^algo\.estimator='gae'.*critic"):
        load_config(RLConfig, None, ["algo.estimator=gae"])


@pytest.mark.parametrize(("overrides", "match"), [
    (["algo.epo_smooth_coef=1.0"], "algo.epo_smooth_coef needs algo.entropy_coef"),
    (["rollout.group_size=0"], r"rollout\.group_size=0 must be >= 1"),
    (["algo.mini_batches=0"], r"algo\.mini_batches=0 must be >= 1"),
    (["algo.progress_buffer=0"], r"algo\.progress_buffer=0 must be >= 1"),
    (["algo.dual_clip=0.5"], r"algo\.dual_clip=0\.5 must be 0 \(off\) or > 1"),
    (["agent.top_p=0"], r"agent\.top_p=0\.0 must be in \(0, 1\]"),
    (["model.device=gpu"], r"model\.device='gpu'.*cuda\[:N\]"),
    (["env.kwargs={sizee: 3}"], r"env\.kwargs=.*sizee"),
    (["agent.options={context: fulll}"], r"agent\.options=.*fulll"),
    (["env.id=turngym/Werewolf-v0", "algo.objective=step_dpo"], "step_dpo .*single-agent env"),
])
def test_other_bad_values_are_named(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(RLConfig, None, overrides)


def test_eval_split_is_checked_only_when_evaluating():
    with pytest.raises(ConfigError, match=r"^env\.eval_split='valid' is not one of"):
        load_config(RLConfig, None, ["env.eval_split=valid"])
    assert load_config(RLConfig, None, ["env.eval_split=valid", "run.eval_tasks=0"]).env.eval_split == "valid"


def test_a_shorthand_env_id_becomes_the_registered_one():
    cfg = load_config(RLConfig, None, ["env.id=Werewolf-v0", "agent.name=anything"])  # multi-agent: no agent
    assert cfg.env.id == "turngym/Werewolf-v0"


def test_sft_values_are_checked():
    with pytest.raises(ConfigError, match=r"^data\.source='orcale' .*did you mean 'oracle'"):
        load_config(SFTConfig, None, ["data.source=orcale"])
    with pytest.raises(ConfigError, match=r"^agent\.name='tool_caller'"):
        load_config(SFTConfig, None, ["agent.name=tool_caller"])
    with pytest.raises(ConfigError, match=r"^env\.id='turngym/Game25-v0'.*did you mean 'turngym/Game24-v0'"):
        load_config(SFTConfig, None, ["env.id=turngym/Game25-v0"])
    assert load_config(SFTConfig, None, ["agent.name=p_react"]).agent.name == "p_react"  # make_agent's spelling


def test_configs_built_in_code_get_the_same_checks():
    pytest.importorskip("torch")
    from turngym.trainers.rl import RLTrainer

    bad = RLConfig(algo=AlgoConfig(kl_estimator="k4"))
    with pytest.raises(ConfigError, match=r"^algo\.kl_estimator='k4'"):
        validate_config(bad)
    with pytest.raises(ConfigError, match=r"^algo\.kl_estimator='k4'"):  # before any model is loaded
        RLTrainer(bad)
    assert validate_config(RLConfig(env=EnvConfig(id="Game24-v0"))).env.id == "turngym/Game24-v0"
