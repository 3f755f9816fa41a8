"""Trainer configuration: dataclasses with help on every field, YAML recipes, ``key=value`` overrides.

A recipe is a YAML file whose sections mirror :class:`RLConfig` (``model``,
``env``, ``agent``, ``rollout``, ``algo``, ``optim``, ``run``)::

    model: {path: default, lora: true}
    env: {id: turngym/BlocksWorld-v0, split: train}
    algo: {estimator: gigpo}
    run:
      dir: runs/${algo.estimator}-${env.split}

given as a file or by the name of one shipped in ``turngym/configs`` (``turngym train gigpo_blocksworld``).
Command-line overrides use dotted keys and values typed by their field: a ``str`` field keeps the text
(``model.path=007``, ``run.dir=2026-01-05``), other fields read YAML (``algo.clip_high=0.28``,
``agent.options={window: 2}``). Inside a free mapping (``agent.options``, ``env.kwargs``,
``rollout.engine_kwargs``, ``algo.estimator_kwargs``) a dotted key sets one entry
(``agent.options.window=2``) and ``+KEY=VALUE`` adds one (Hydra's spelling). ``${section.key}``
interpolations (OmegaConf's, ``${oc.env:VAR}`` too) work in recipes and overrides and are resolved
against the whole config, defaults included (OmegaConf's structured config of these dataclasses).
Unknown keys anywhere are rejected with the closest known key named, and
every field's help text is printed by ``turngym train --help-config``;
``--print-config`` prints the resolved config.
:func:`load_config` then checks the values (:func:`validate_config`): every
key with a fixed set of choices, the env id, the agent and its options, the
credit estimator and its hyper-parameters, so a typo fails before any model
is loaded, naming the key, the bad value and the closest valid one.

The dataclasses depend on nothing but the standard library; loading reads YAML with PyYAML and
resolves with OmegaConf (both core dependencies); :func:`validate_config` imports the layers whose
names it checks (``turngym.envs``, ``turngym.agents``, ``turngym.credit``, ``turngym.kernels``).
"""

# ruff: noqa: RUF009  (_f() returns dataclasses.field(); list/dict defaults get a default_factory)
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import json
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turngym.errors import TurngymError
from turngym.keyvalue import YamlLoader, parse_as, parse_value


class ConfigError(TurngymError, ValueError):
    """A recipe or override names an unknown key or holds a value of the wrong type."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: json.loads(json.dumps(d)), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


# ---- sections -------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    path: str = _f("default", "model to train: 'default' (the embedded SmolLM2-135M-Instruct), a local HF folder, "
                              "a Hub id ORG/NAME[@REV] (from the HF cache), a GGUF file, or a checkpoint folder of a previous run (RUN_DIR/checkpoint-N)")
    dtype: str = _f("float32", "parameter dtype: float32 or bfloat16 (CPU: float32)")
    device: str = _f("auto", "'auto' (cuda if available), 'cpu' or 'cuda[:N]'")
    lora: bool = _f(False, "train LoRA adapters (peft) instead of all weights; the reference model is the base "
                           "(adapters off), so no second copy is held")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA alpha (scale = alpha / r)")
    lora_dropout: float = _f(0.0, "LoRA dropout (0 keeps rollouts and updates deterministic)")
    lora_target_modules: list = _f(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                   "module names that get adapters")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (saves memory, costs time)")
    autocast: str = _f("none", "compute dtype of the trainer's forward and backward: none or bfloat16 "
                               "(torch.autocast; weights, gradients and AdamW stay in model.dtype; the engine "
                               "samples in model.dtype). CPU: fast with AMX/AVX512-BF16")


@dataclass
class EnvConfig:
    id: str = _f("turngym/BlocksWorld-v0", "registered env id (see `turngym envs`)")
    split: str = _f("train", "task split rollouts are drawn from")
    eval_split: str = _f("test", "held-out split for evaluation")
    kwargs: dict = _f({}, "env constructor arguments")
    max_steps: int = _f(0, "env steps before an episode is truncated (0: the env's registered limit)")


@dataclass
class AgentConfig:
    name: str = _f("react", "agent: react, p-react, tool or chat (see `turngym bench --list`); multi-agent envs "
                            "(Werewolf) use their runner's LLM policy, whatever the name")
    options: dict = _f({}, "agent constructor options (e.g. {context: full, window: 4, num_exemplars: 1})")
    temperature: float = _f(1.0, "rollout sampling temperature (the loss uses the same one)")
    top_p: float = _f(1.0, "rollout nucleus mass; keep 1.0 for on-policy log-probs")
    max_tokens: int = _f(96, "max new tokens per turn")


@dataclass
class RolloutConfig:
    engine: str = _f("hf", "rollout engine: 'hf' (shares the trained model, CPU or GPU) or 'vllm' "
                           "(GPU; weights synced after every update)")
    dtype: str = _f("model", "hf engine's weights: 'model' (it samples from the trained model itself) or a dtype "
                             "such as bfloat16 (a copy in that dtype, synced after every update: on an AMX CPU "
                             "prefill runs ~3x faster; old log-probs are still the trainer's, algo.old_logprobs)")
    tasks_per_iter: int = _f(4, "tasks per iteration")
    group_size: int = _f(8, "rollouts per task (the G of GRPO)")
    max_concurrent: int = _f(32, "episodes generated in one batch")
    schedule: str = _f("auto", "runner schedule: 'continuous' batching (an episode's next turn joins the running "
                               "batch as soon as its env step is back), 'lockstep' turns, or 'auto' (continuous "
                               "where the engine supports it: hf)")
    deterministic: bool = _f(True, "continuous schedule: wait for each decode step's env steps before the next "
                                   "(rollouts then depend on the seeds alone; set false for slow envs)")
    engine_kwargs: dict = _f({}, "extra engine arguments (e.g. {max_batch_size: 16} or vLLM's {gpu_memory_utilization: 0.5})")
    env_pool: str = _f("thread", "where the envs step: 'thread' (this process; envs that wait), 'process' (worker "
                                 "processes; CPU-heavy envs) or 'ray' (Ray actors, local or the cluster of RAY_ADDRESS; "
                                 "turngym[ray])")
    env_workers: int = _f(0, "env workers of the pool (threads, processes or Ray actors; 0: the pool's default)")


@dataclass
class AlgoConfig:
    estimator: str = _f("grpo", "advantage estimator from turngym.credit (grpo, dr_grpo, rloo, reinforce_pp, gigpo, "
                                "gae, spa, igpo, stratified_grpo, empg)")
    estimator_kwargs: dict = _f({}, "estimator hyper-parameters, the keyword arguments of its turngym.credit "
                                  "function (e.g. {omega: 1.0, gamma: 0.95} for gigpo)")
    objective: str = _f("ppo", "'ppo' (PPO-clip / GRPO loss), 'tb' (FoR's GFlowNet trajectory balance) or "
                               "'step_dpo' (Agent Q: step-level DPO on pairs from search over env snapshots)")
    sample_mode: str = _f("auto", "'stepwise' (each turn one sample), 'in_context' (the transcript one sequence) or "
                                  "'auto' (one sequence per unbroken run of turns)")
    ppo_epochs: int = _f(1, "passes over each iteration's samples")
    mini_batches: int = _f(1, "optimizer steps per epoch (the samples are split into this many mini-batches)")
    clip_low: float = _f(0.2, "PPO ratio clip below: 1 - clip_low")
    clip_high: float = _f(0.28, "PPO ratio clip above: 1 + clip_high (DAPO clip-higher 0.28; 0.2 = symmetric)")
    dual_clip: float = _f(0.0, "dual-clip constant c > 1 for negative advantages (0: off)")
    kl_coef: float = _f(0.0, "weight of the KL to the frozen reference policy in the loss (0: no reference)")
    kl_estimator: str = _f("k3", "KL estimator: k1, k2, k3 (low_var_kl) or their straight-through '+' forms")
    entropy_coef: float = _f(0.0, "entropy bonus weight")
    loss_agg_mode: str = _f("token-mean", "token-mean, seq-mean-token-sum, seq-mean-token-mean or "
                                          "seq-mean-token-sum-norm (Dr.GRPO's constant normalizer)")
    norm_constant: float = _f(0.0, "C of seq-mean-token-sum-norm (0: the padded length)")
    seq_unit: str = _f("sample", "what seq-mean-* averages over: 'sample' (each training sequence) or 'step' "
                                 "(each turn's response)")
    dynamic_filter: bool = _f(False, "DAPO dynamic sampling: drop groups whose rollouts all got the same reward")
    invalid_action_penalty: float = _f(0.0, "subtracted from the reward of every step with an invalid action")
    old_logprobs: str = _f("recompute", "'recompute' the rollout log-probs with the trainer (exact ratio) or take "
                                        "the 'engine' ones after checking their agreement")
    logprob_tolerance: float = _f(1e-2, "max |engine - trainer| log-prob allowed with old_logprobs='engine'")
    # EPO (arXiv 2509.22576)
    epo_smooth_coef: float = _f(0.0, "EPO entropy-smoothing weight (0: off); needs entropy_coef > 0")
    epo_min_ratio: float = _f(0.5, "EPO: entropy band lower edge, a fraction of the historical mean per turn")
    epo_max_ratio: float = _f(1.5, "EPO: entropy band upper edge")
    # AEPO (arXiv 2510.14545)
    aepo_clipping: bool = _f(False, "AEPO entropy-balanced (stop-gradient) clipping of the upper ratio bound")
    aepo_advantage: float = _f(0.0, "AEPO entropy-aware advantage weight (0.2 in the paper; 0: off)")
    # IGPO (arXiv 2510.14967)
    igpo_answer_template: str = _f("<answer> {answer} </answer>", "IGPO: the text teacher-forced after each turn to "
                                   "score the gold answer ({answer} is replaced by it)")
    # SPA (arXiv 2505.20732): where its per-step progress comes from
    progress_source: str = _f("learned", "SPA's progress: 'learned' (the paper: a progress estimator on the policy's "
                              "hidden state at each step's last token, fitted in the loop so a trajectory's "
                              "contributions sum to its outcome) or 'oracle_progress' (the env's ground-truth "
                              "progress: an oracle signal for analysis, flagged in metrics; never a default)")
    progress_l2: float = _f(1.0, "SPA learned estimator: ridge penalty per trajectory on the standardized features")
    progress_hidden: int = _f(0, "SPA learned estimator: hidden width of its MLP head (0: linear)")
    progress_buffer: int = _f(4, "SPA learned estimator: fit on the steps of this many latest iterations (>= 1)")
    # Agent Q step-level DPO (arXiv 2408.07199)
    dpo_beta: float = _f(0.1, "step_dpo: DPO temperature beta")
    dpo_margin: float = _f(0.0, "step_dpo: a pair needs Q(best) - Q(worst) above this")
    # FoR trajectory balance (arXiv 2406.05673)
    tb_logz_lr: float = _f(0.1, "learning rate of FoR's learned log Z")
    tb_reward_floor: float = _f(1e-4, "FoR: log R = log(max(R, floor)) so failed trajectories stay finite")
    tb_reward_temp: float = _f(1.0, "FoR: reward exponent 1/T (log R / T)")


@dataclass
class OptimConfig:
    lr: float = _f(1e-5, "learning rate (AdamW)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    betas: list = _f([0.9, 0.999], "AdamW betas")
    schedule: str = _f("constant", "learning-rate schedule: constant, linear or cosine (decay to 0 at the end)")
    warmup_iters: int = _f(0, "iterations of linear warm-up")
    max_grad_norm: float = _f(1.0, "gradient-norm clip (0: off)")
    micro_batch_tokens: int = _f(4096, "token budget of one forward/backward (gradient accumulation splits above it)")
    share_prefix: bool = _f(True, "run the ids all rows of a micro-batch start with (a group's prompt) through "
                            "the model once and the rest on its KV cache (same values within float rounding)")


@dataclass
class RunConfig:
    dir: str = _f("runs/run", "run directory: metrics.jsonl, TensorBoard events, checkpoints, config.yaml")
    iterations: int = _f(20, "training iterations (rollout + update)")
    seed: int = _f(0, "seed of task order, sampling and mini-batch order (resume replays them)")
    eval_every: int = _f(0, "evaluate on env.eval_split every N iterations (0: only at the start and end)")
    eval_tasks: int = _f(16, "held-out tasks per evaluation (one greedy rollout each)")
    eval_temperature: float = _f(0.0, "sampling temperature of evaluation rollouts (0: greedy)")
    save_every: int = _f(5, "checkpoint every N iterations (and at the end)")
    keep_checkpoints: int = _f(2, "most recent checkpoints kept (older ones are deleted)")
    tensorboard: bool = _f(True, "also write TensorBoard events (if tensorboard is installed)")
    progress: bool = _f(True, "show a progress bar")
    wandb: bool = _f(False, "also log every record and the config to Weights & Biases (turngym[tracking]); "
                            "WANDB_MODE=offline keeps it in RUN_DIR/wandb")
    wandb_project: str = _f("turngym", "W&B project of run.wandb")
    mlflow: bool = _f(False, "also log every record and the config to MLflow (turngym[tracking]): to "
                             "MLFLOW_TRACKING_URI if set, else a file store in RUN_DIR/mlruns")
    mlflow_experiment: str = _f("turngym", "MLflow experiment of run.mlflow")
    save_rollouts: bool = _f(True, "save each iteration's rollouts to RUN_DIR/rollouts/iter-N.parquet and each "
                                   "evaluation's trajectories to RUN_DIR/eval/iter-N.parquet (docs/trajectories.md)")
    threads: int = _f(0, "torch intra-op threads (0: leave torch's default)")
    data_parallel: str = _f("ddp", "under torchrun (WORLD_SIZE > 1): 'ddp' (DistributedDataParallel, replicas, "
                            "bucketed all-reduce once per optimizer step) or 'fsdp2' (fully_shard: parameters, "
                            "gradients and optimizer state sharded across ranks); ignored in one process")


@dataclass
class RLConfig:
    """Everything one RL run needs; see each section's fields."""

    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass
class SFTData:
    source: str = _f("oracle", "'oracle' (play the env's oracle and train the agent's format on it) or a "
                               "trajectories .jsonl file (from `turngym bench --out`)")
    episodes: int = _f(64, "oracle episodes to collect")
    only_won: bool = _f(True, "train only on won episodes (jsonl source)")
    epochs: int = _f(2, "passes over the data")
    batch_size: int = _f(8, "samples per optimizer step")
    batch_by: str = _f("sample", "what a step draws: 'sample' (batch_size shuffled samples) or 'trajectory' "
                       "(shuffled whole trajectories, as many as fit batch_size samples, at least one: a "
                       "trajectory's turns then share their repeated transcript in one forward under "
                       "optim.share_prefix)")


@dataclass
class SFTConfig:
    """Supervised fine-tuning on (oracle) trajectories in the agent's own format."""

    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    data: SFTData = field(default_factory=SFTData)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/sft", iterations=0))


# ---- building: recipe and overrides -> typed mapping -> OmegaConf (defaults, ${...}) -> dataclasses -------
#
# Our own walk over the dataclasses types every value by its field (a str field keeps `007` as typed) and
# names unknown keys with the closest known one; OmegaConf, on the structured config of the same dataclasses,
# adds the defaults and resolves interpolations; the resolved mapping is typed once more and built.


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _closest(key: str, known: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}"
    return f"unknown config key {where + key!r}{hint}"


def free_mappings(cls: type, prefix: str = "") -> list[str]:
    """The dotted keys of ``cls`` whose value is a free mapping (``agent.options``, ``env.kwargs``, ...): the
    only places where an override may add a key the dataclasses do not declare."""
    out = []
    for name in _fields(cls):
        typ = _field_type(cls, name)
        if dataclasses.is_dataclass(typ):
            out += free_mappings(typ, f"{prefix}{name}.")
        elif typ is dict:
            out.append(prefix + name)
    return out


def _is_interpolation(value: Any) -> bool:
    return isinstance(value, str) and "${" in value


def _coerce(value: Any, typ: Any, where: str) -> Any:
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"config section {where!r} must be a mapping, got {value!r}")
        return _typed(typ, value, prefix=where + ".")
    if _is_interpolation(value):  # typed once OmegaConf has resolved it
        return value
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"config key {where!r} must be true or false, got {value!r}")
    if typ in (int, float) and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-5" (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"config key {where!r} must be an integer, got {value!r}")
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {where!r} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {where!r} must be a string, got {value!r}")
        return str(value)
    if typ is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r} must be a mapping, got {value!r}")
        return dict(value)
    if typ is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {where!r} must be a list, got {value!r}")
        return list(value)
    return value


def _typed(cls: type, data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``data`` with every value of the type its field declares (sections as mappings, interpolations kept);
    an unknown key raises :class:`ConfigError` naming the closest known one."""
    known = _fields(cls)
    out = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(_closest(str(key), list(known), prefix))
        out[key] = _coerce(value, _field_type(cls, key), prefix + key)
    return out


def _construct(cls: type, typed: dict[str, Any]) -> Any:
    kwargs = {}
    for key, value in typed.items():
        sub = _field_type(cls, key)
        kwargs[key] = _construct(sub, value) if dataclasses.is_dataclass(sub) else value
    return cls(**kwargs)


def _omegaconf_error(exc: Exception, known: list[str]) -> ConfigError:
    """An OmegaConf error as a :class:`ConfigError` naming the key and, for a missing target, the closest one."""
    where = getattr(exc, "full_key", None)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    missing = re.match(r"Interpolation key '([^']+)' not found", message)
    if missing:
        close = difflib.get_close_matches(missing.group(1), known, n=1, cutoff=0.5)
        message += f"; did you mean '${{{close[0]}}}'?" if close else f" (known keys: {', '.join(known)})"
    elif type(exc).__name__ == "GrammarParseError":
        message += " (interpolations are ${section.key}, e.g. run.dir=runs/${env.id}; write \\${ for a literal ${)"
    return ConfigError(f"config key {where!r}: {message}" if where else f"config: {message}")


def _dotted_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for name in _fields(cls):
        typ = _field_type(cls, name)
        out += _dotted_keys(typ, f"{prefix}{name}.") if dataclasses.is_dataclass(typ) else [prefix + name]
    return out


def build(cls: type, data: dict[str, Any] | None = None) -> Any:
    """An instance of the config dataclass ``cls`` from a (nested) mapping: unknown keys and values of the wrong
    type raise :class:`ConfigError`; ``${section.key}`` interpolations (OmegaConf's, ``${oc.env:VAR}`` too) are
    resolved against the whole config, defaults included."""
    typed = _typed(cls, dict(data or {}))
    try:
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException
    except ImportError:  # a core dependency: only a broken install lacks it
        raise ConfigError("turngym's configs need omegaconf: pip install 'omegaconf>=2.4,<3'") from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), typed)
        resolved = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        raise _omegaconf_error(exc, _dotted_keys(cls)) from None
    return _construct(cls, _typed(cls, resolved))


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a recipe mapping (validated against ``cls``).

    A value is typed by its field (:func:`turngym.keyvalue.parse_as`: a ``str`` field keeps ``007`` and
    ``2026-01-05`` as typed). Inside a free mapping (:func:`free_mappings`) a dotted key sets one entry
    (``agent.options.window=2``) and ``+key=value`` adds one that must not be there yet (Hydra's spelling);
    ``++key=value`` sets it either way. A mapping value (``agent.options={window: 2}``) replaces the whole
    mapping.
    """
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        plus = len(key) - len(key.lstrip("+"))
        path = key[plus:]
        if not sep or not path or plus > 2:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. algo.clip_high=0.28, "
                              "+agent.options.window=2)")
        add = plus == 1
        parts = path.split(".")
        node: Any = data
        typ: Any = cls
        default: Any = cls()
        where = ""
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if typ is dict:  # inside a free mapping: any key
                if last:
                    if add and part in node:
                        raise ConfigError(f"override {item!r}: {where + part!r} is already set (to {node[part]!r}); "
                                          f"drop the '+' to change it: {path}={raw}")
                    node[part] = parse_value(raw)
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    elif not isinstance(node[part], dict):
                        raise ConfigError(f"config key {where + part!r} holds {node[part]!r}, not a mapping; "
                                          f"cannot set {path!r}")
                    node = node[part]
                where += part + "."
                continue
            known = _fields(typ)
            if part not in known:
                message = _closest(part, list(known), where)
                if plus:
                    message += f" ('+' adds keys only inside {', '.join(free_mappings(cls))})"
                raise ConfigError(message)
            sub = _field_type(typ, part)
            if last:
                if add:
                    raise ConfigError(f"override {item!r}: {path!r} is a key of the config already; set it without "
                                      f"the '+': {path}={raw}")
                node[part] = parse_as(raw, sub)
            elif dataclasses.is_dataclass(sub):
                if node.get(part) is None:
                    node[part] = {}
                elif not isinstance(node[part], dict):
                    raise ConfigError(f"config section {where + part!r} must be a mapping, got {node[part]!r}")
                node, typ, default = node[part], sub, getattr(default, part)
            elif sub is dict:
                if node.get(part) is None:
                    node[part] = copy.deepcopy(getattr(default, part))
                elif not isinstance(node[part], dict):
                    raise ConfigError(f"config key {where + part!r} must be a mapping, got {node[part]!r}")
                node, typ = node[part], dict
            else:
                raise ConfigError(f"config key {where + part!r} is not a section; cannot set {path!r}")
            where += part + "."
    return data


# ---- recipes: YAML files, by path or by the name of one shipped in turngym/configs ----------------------


def recipe_dir() -> Path:
    """The recipes shipped with turngym: ``configs/`` inside the installed package."""
    import turngym

    return Path(turngym.__file__).resolve().parent / "configs"


def recipes() -> list[str]:
    """The names of the shipped recipes (``turngym train NAME``)."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe file: ``recipe`` itself if it is a file, else the shipped recipe of that name
    (``gigpo_blocksworld``, ``gigpo_blocksworld.yaml`` or, outside a checkout, ``configs/gigpo_blocksworld.yaml``)."""
    p = Path(recipe)
    if p.is_file():
        return p
    name = p.stem if p.suffix in (".yaml", ".yml") else p.name
    shipped = recipe_dir() / f"{name}.yaml"
    if shipped.is_file() and (len(p.parts) == 1 or p.parent.name == "configs"):
        return shipped
    known = recipes()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"recipe {str(recipe)!r} does not exist: no such file and no recipe of that name shipped "
                      f"with turngym{hint} (shipped: {', '.join(known)}; or pass only KEY=VALUE overrides)")


def _from_node(loader: Any, node: Any, typ: Any) -> Any:
    import yaml

    if dataclasses.is_dataclass(typ) and isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        known = _fields(typ)
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            sub = _field_type(typ, key) if isinstance(key, str) and key in known else None
            out[key] = _from_node(loader, value_node, sub)  # an unknown key is named later, by _typed
        return out
    if typ is str and isinstance(node, yaml.ScalarNode):
        return node.value  # the text as written: 007, 2026-01-05 and yes stay strings
    return loader.construct_object(node, deep=True)


def read_recipe(path: str | Path, cls: type) -> dict[str, Any]:
    """A YAML recipe as a mapping, each ``str`` field's value the text as written (:class:`YamlLoader` else)."""
    import yaml

    p = Path(path)
    loader = YamlLoader(p.read_text())
    try:
        node = loader.get_single_node()
        data = {} if node is None else _from_node(loader, node, cls)
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(p)!r} is not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(p)!r} must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Read a YAML recipe (optional: a file or a shipped recipe's name), apply overrides, resolve
    interpolations, validate: an instance of ``cls``."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_recipe(resolve_recipe(path), cls)
    data = apply_overrides(data, list(overrides or []), cls)
    return validate_config(build(cls, data))


# ---- validating values (at load time, before any model or rollout) --------------------------------------

OBJECTIVES = ("ppo", "tb", "step_dpo")
ENGINES = ("hf", "vllm")
ENV_POOLS = ("thread", "process", "ray")
SCHEDULES = ("auto", "lockstep", "continuous")  # EpisodeRunner's
LR_SCHEDULES = ("constant", "linear", "cosine")
DATA_PARALLEL = ("ddp", "fsdp2")
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")  # names agents.engines.device resolves
AUTOCAST = ("none", "bfloat16", "bf16")
OLD_LOGPROBS = ("recompute", "engine")
SEQ_UNITS = ("sample", "step")
#: The LLM agents a trainer can train (make_agent also builds the oracle and random baselines); other
#: spellings are resolved by agents.factory.agent_key.
TRAINABLE_AGENTS = ("react", "p-react", "tool", "chat")
#: Other codebases' names of estimator hyper-parameters (verl-agent calls GiGPO's omega step_advantage_w).
_HPARAM_ALIASES = {"step_weight": "omega", "step_advantage_w": "omega"}


def _choice(key: str, value: Any, choices: Sequence[str]) -> None:
    if value in choices:
        return
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}{hint}")


def _at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{key}={value!r} must be >= {low:g}")


def _check_model(m: ModelConfig) -> None:
    _choice("model.dtype", m.dtype, DTYPES)
    _choice("model.autocast", m.autocast, AUTOCAST)
    if m.device not in ("auto", "", "cpu", "mps") and not re.fullmatch(r"cuda(:\d+)?", m.device):
        raise ConfigError(f"model.device={m.device!r}: use 'auto', 'cpu' or 'cuda[:N]' (e.g. cuda:0)")


def _check_env(env: EnvConfig, eval_tasks: int) -> bool:
    """Make ``env.id`` the registered id (``Game24-v0`` is a shorthand); True for a multi-agent env.

    A single-agent env is built once (seconds at most) to check ``env.kwargs`` and the splits.
    """
    import turngym
    from turngym.envs import check_env_id, registry

    try:
        env.id = check_env_id(env.id)
    except KeyError as exc:  # UnknownEnvError names the closest registered ids
        raise ConfigError(f"env.id={env.id!r}: {exc}") from None
    _at_least("env.max_steps", env.max_steps, 0)
    entry = registry().get(env.id)
    if entry is not None and entry.kind == "pettingzoo":  # its kwargs go to the runner, its tasks are deals
        return True
    try:
        instance = turngym.make(env.id, **env.kwargs)
    except TypeError as exc:
        raise ConfigError(f"env.kwargs={env.kwargs!r}: {exc}") from None
    try:
        splits = list(instance.unwrapped.splits())
    except (AttributeError, NotImplementedError):  # an env without named splits
        return False
    finally:
        instance.close()
    used = [("env.split", env.split)] + ([("env.eval_split", env.eval_split)] if eval_tasks > 0 else [])
    for key, split in used:
        _choice(key, split, splits)
    return False


def _check_agent(a: AgentConfig, env_id: str) -> None:
    """The agent's name, and its options by building it (what the trainer does later)."""
    from turngym.agents.factory import agent_key, make_agent

    name = a.name.strip().lower().replace("_", "-")
    if agent_key(name) not in TRAINABLE_AGENTS:
        close = difflib.get_close_matches(name, list(TRAINABLE_AGENTS), n=1, cutoff=0.4)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"agent.name={a.name!r} is not one of {', '.join(TRAINABLE_AGENTS)}{hint}")
    _at_least("agent.max_tokens", a.max_tokens, 1)
    _at_least("agent.temperature", a.temperature, 0)
    if not 0 < a.top_p <= 1:
        raise ConfigError(f"agent.top_p={a.top_p!r} must be in (0, 1]")
    try:
        make_agent(a.name, env_id, temperature=a.temperature, top_p=a.top_p, max_tokens=a.max_tokens, **a.options)
    except TypeError as exc:  # an option the agent's constructor does not take
        passed = ("self", "env_id", "temperature", "top_p", "max_tokens")  # set from the other agent.* keys
        known = [p for p in inspect.signature(type(make_agent(a.name, env_id)).__init__).parameters if p not in passed]
        unknown = [str(k) for k in a.options if k not in known]
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.5) if unknown else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        where = f"agent.options.{unknown[0]}" if unknown else "agent.options"
        raise ConfigError(f"{where}: {exc}{hint} (known: {', '.join(known)})") from None
    except ValueError as exc:  # an option value the agent rejects
        raise ConfigError(f"agent.options={a.options!r}: {exc}") from None


def _check_estimator(a: AlgoConfig) -> None:
    from turngym.credit import ESTIMATORS, check_estimator

    try:
        check_estimator(a.estimator)
    except KeyError as exc:
        raise ConfigError(f"algo.estimator={a.estimator!r}: {exc.args[0]}") from None
    if a.estimator == "gae":
        raise ConfigError("algo.estimator='gae' needs a critic's values; the RL trainer has no critic yet: use grpo, "
                          "gigpo, rloo, reinforce_pp, dr_grpo, spa, igpo, stratified_grpo or empg")
    for key, value in a.estimator_kwargs.items():
        try:
            check_estimator(a.estimator, {key: value})
        except TypeError as exc:
            message = exc.args[0]
            alias = _HPARAM_ALIASES.get(str(key))
            if alias and "did you mean" not in message and alias in inspect.signature(ESTIMATORS[a.estimator]).parameters:
                message += f"; did you mean {alias!r}?"
            raise ConfigError(f"algo.estimator_kwargs.{key}={value!r}: {message}") from None


def _check_algo(a: AlgoConfig) -> None:
    from turngym.kernels.policy_loss import KL_ESTIMATORS, LOSS_AGG_MODES
    from turngym.trainers.credit_inputs import PROGRESS_SOURCES
    from turngym.trainers.tokens import SAMPLE_MODES

    _choice("algo.objective", a.objective, OBJECTIVES)
    if a.objective == "ppo":  # tb and step_dpo use no advantages
        _check_estimator(a)
    _choice("algo.sample_mode", a.sample_mode, SAMPLE_MODES)
    _choice("algo.loss_agg_mode", a.loss_agg_mode, LOSS_AGG_MODES)
    _choice("algo.kl_estimator", a.kl_estimator, KL_ESTIMATORS)
    _choice("algo.old_logprobs", a.old_logprobs, OLD_LOGPROBS)
    _choice("algo.seq_unit", a.seq_unit, SEQ_UNITS)
    _choice("algo.progress_source", a.progress_source, PROGRESS_SOURCES)
    _at_least("algo.progress_buffer", a.progress_buffer, 1)
    if a.epo_smooth_coef and not a.entropy_coef:
        raise ConfigError("algo.epo_smooth_coef needs algo.entropy_coef > 0 (EPO scales the smoothing term by it)")
    _at_least("algo.ppo_epochs", a.ppo_epochs, 1)
    _at_least("algo.mini_batches", a.mini_batches, 1)
    if a.dual_clip and a.dual_clip <= 1:
        raise ConfigError(f"algo.dual_clip={a.dual_clip!r} must be 0 (off) or > 1")


def _check_rollout(r: RolloutConfig) -> None:
    _choice("rollout.engine", r.engine, ENGINES)
    _choice("rollout.schedule", r.schedule, SCHEDULES)
    _choice("rollout.dtype", r.dtype, ("model", *DTYPES))
    if r.dtype != "model" and r.engine != "hf":
        raise ConfigError(f"rollout.dtype={r.dtype!r} applies to the hf engine; rollout.engine={r.engine!r} loads "
                          "its own weights (set its dtype in rollout.engine_kwargs)")
    _choice("rollout.env_pool", r.env_pool, ENV_POOLS)
    if r.env_workers < 0:
        raise ConfigError(f"rollout.env_workers={r.env_workers}: give 0 (the pool's default) or a positive count")
    _at_least("rollout.tasks_per_iter", r.tasks_per_iter, 1)
    _at_least("rollout.group_size", r.group_size, 1)
    _at_least("rollout.max_concurrent", r.max_concurrent, 1)


def _check_data(d: SFTData) -> None:
    if d.source != "oracle" and not Path(d.source).is_file():
        close = difflib.get_close_matches(d.source, ["oracle"], n=1, cutoff=0.5)
        hint = "; did you mean 'oracle'?" if close else ""
        raise ConfigError(f"data.source={d.source!r} is neither 'oracle' nor a trajectories .jsonl file{hint}")
    _at_least("data.episodes", d.episodes, 1)
    _at_least("data.epochs", d.epochs, 1)
    _at_least("data.batch_size", d.batch_size, 1)
    if d.batch_by not in ("sample", "trajectory"):
        raise ConfigError(f"data.batch_by={d.batch_by!r}: use 'sample' or 'trajectory'")


def validate_config(config: Any) -> Any:
    """Check the values of an :class:`RLConfig` or :class:`SFTConfig`; return it (``env.id`` made canonical).

    Every key with a fixed set of choices, the env id, the agent and its options (multi-agent envs
    prompt through their runner's policy: no agent to check) and, for the ``ppo`` objective, the credit
    estimator and its hyper-parameters. A bad value raises :class:`ConfigError` naming the key, the
    value and the closest valid choice.
    """
    _check_model(config.model)
    _choice("optim.schedule", config.optim.schedule, LR_SCHEDULES)
    if isinstance(config, RLConfig):
        _check_rollout(config.rollout)
        _check_algo(config.algo)
        _choice("run.data_parallel", config.run.data_parallel, DATA_PARALLEL)
    if isinstance(config, SFTConfig):
        _check_data(config.data)
    multi_agent = _check_env(config.env, config.run.eval_tasks)
    if multi_agent and isinstance(config, RLConfig) and config.algo.objective == "step_dpo":
        raise ConfigError("algo.objective=step_dpo searches env snapshots: it needs a single-agent env")
    if not multi_agent:
        _check_agent(config.agent, config.env.id)
    return config


def _escape_interpolations(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("${", "\\${")
    if isinstance(value, dict):
        return {k: _escape_interpolations(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_interpolations(v) for v in value]
    return value


def dump_yaml(config: Any) -> str:
    """The config as a YAML recipe that loads back to it (a literal ``${`` written as ``\\${``)."""
    import yaml

    return yaml.safe_dump(_escape_interpolations(to_dict(config)), sort_keys=False)


def describe(cls: type, prefix: str = "") -> str:
    """Every key of ``cls`` with its default and help text, one per line."""
    lines = []
    defaults = cls()
    for f in dataclasses.fields(cls):
        typ = _field_type(cls, f.name)
        if dataclasses.is_dataclass(typ):
            lines.append(f"\n[{prefix}{f.name}]")
            lines.append(describe(typ, prefix + f.name + "."))
        else:
            default = getattr(defaults, f.name)
            lines.append(f"  {prefix}{f.name} = {json.dumps(default)}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


__all__ = [
    "AgentConfig", "AlgoConfig", "ConfigError", "EnvConfig", "ModelConfig", "OptimConfig", "RLConfig",
    "RolloutConfig", "RunConfig", "SFTConfig", "SFTData", "apply_overrides", "build", "describe", "dump_yaml",
    "free_mappings", "load_config", "parse_value", "read_recipe", "recipe_dir", "recipes", "resolve_recipe", "to_dict",
    "validate_config",
]
