"""turngym's credit estimators in verl's advantage-estimator registry.

Importing this module registers every estimator of :data:`turngym.credit.ESTIMATORS` (but ``gae``,
see below) with verl's ``register_adv_est`` under the name ``"turngym_<name>"``, so a verl run picks
one with ``algorithm.adv_estimator=turngym_gigpo`` once the module is imported (e.g. from the
trainer's entry point: ``import turngym.integrations.verl``)::

    import turngym.integrations.verl  # registers turngym_grpo, turngym_gigpo, ...
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn
    adv, returns = get_adv_estimator_fn("turngym_grpo")(token_level_rewards=r, response_mask=m, index=uid)

The registered function has verl's estimator signature::

    fn(token_level_rewards, response_mask, index=None, config=None, *, traj_index=None, step_index=None,
       **fields) -> (advantages, returns)

* ``token_level_rewards`` [bs, T]: a row's reward is its sum over tokens (as verl's GRPO).
* ``response_mask`` [bs, T]: the advantages are each row's value on its response tokens, 0 elsewhere;
  ``returns`` equals ``advantages`` (as verl's critic-free estimators return them).
* ``index`` [bs]: group ids, verl's ``data.non_tensor_batch["uid"]`` (rollouts of one prompt share one).
* ``config``: verl's ``algorithm`` config; its ``turngym`` mapping, if any, gives the estimator's
  hyperparameters (``+algorithm.turngym.omega=0.5``), over those given to :func:`register`.

Rows as trajectories or as steps. Without ``traj_index`` each row is one whole trajectory (verl's
layout, a multi-turn conversation in one response): fine for the trajectory-level estimators (grpo,
rloo, dr_grpo, reinforce_pp). Step-level estimators need one row per agent step (verl-agent's
layout) and these extra keyword arguments, arrays of length bs:

* ``traj_index``: trajectory id of each row (verl-agent's ``traj_uid``);
* ``step_index``: turn index within the trajectory; if absent, a trajectory's rows are its turns in
  batch order;
* the :class:`turngym.credit.StepBatch` fields the estimator reads (``estimator_inputs(name)``):
  ``state_key`` or ``observation`` (gigpo; verl-agent's ``anchor_obs`` is ``observation`` with
  ``anchor="observation"``), ``entropy`` (empg), ``gold_logprob`` (igpo), ``progress`` and
  ``action_valid`` (spa), ``num_tool_calls`` (stratified_grpo).

Gap: verl 0.9.1's ``compute_advantage`` (``verl/trainer/ppo/ray_trainer.py``) passes a registered
estimator only ``token_level_rewards``, ``response_mask``, ``config`` and ``index``, so the step-level
estimators need a call site that also passes the keys above from ``data.non_tensor_batch`` (as
verl-agent's trainer does); the trajectory-level ones run from verl's trainer as they are.
:func:`compute_advantage` is that call site for a ``DataProto``: it reads ``uid``, ``traj_uid``,
``step_index``, verl-agent's ``anchor_obs`` (as ``observation``) and the StepBatch field names from
``data.non_tensor_batch`` (or ``data.batch``) and writes ``advantages`` and ``returns``.

``gae`` is not registered: turngym's GAE works on per-step values, and verl's own token-level
``gae`` (with its critic's per-token values) is the one to use inside verl.

Tested against verl 0.9.1 on CPU (``make test-verl``), installed as a verl user installs it:
``pip install -c constraints-cpu.txt -e ".[verl]"`` in its own venv, so verl's own pins hold
(``transformers<5.11``, ``tensordict<=0.10``). Its wheel also installs top-level ``tests`` and ``scripts``
packages into site-packages, which would shadow a turngym checkout's folders of those names: one more
reason it stays out of the main venv and out of ``all``.
Depends on torch, numpy, verl and turngym.credit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from turngym.credit import ESTIMATORS, StepBatch, check_estimator, compute_advantages, factorize
from turngym.errors import require

PREFIX = "turngym_"
#: turngym estimators left out of verl's registry (see the module doc).
NOT_REGISTERED = ("gae",)
_STEP_FIELDS = (
    "state_key",
    "observation",
    "progress",
    "info_gain",
    "gold_logprob",
    "num_tool_calls",
    "entropy",
    "action_valid",
)
_MADE: dict[tuple[str, tuple[tuple[str, Any], ...]], Callable[..., Any]] = {}


def _config_hparams(config: Any) -> dict[str, Any]:
    """The ``turngym`` mapping of verl's algorithm config (a DictConfig, an AlgoConfig or a dict), if any."""
    if config is None:
        return {}
    section = config.get("turngym", None) if hasattr(config, "get") else getattr(config, "turngym", None)
    if section is None:
        return {}
    try:
        return {str(k): section[k] for k in section}
    except TypeError:
        raise TypeError(
            f"verl config algorithm.turngym must be a mapping of estimator hyperparameters, got {section!r}"
        ) from None


def _row_array(value: Any, name: str, rows: int) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.ndim != 1 or len(arr) != rows:
        raise ValueError(
            f"verl estimator argument {name!r} must hold one entry per row ({rows}), got shape {arr.shape}"
        )
    return arr


def make_adv_estimator(name: str, **hparams: Any) -> Callable[..., Any]:
    """verl-signature advantage estimator running turngym's estimator ``name`` (see the module doc)."""
    check_estimator(name, hparams)
    if name in NOT_REGISTERED:
        raise ValueError(f"turngym estimator {name!r} is not offered to verl: use verl's own 'gae'")
    key = (name, tuple(sorted(hparams.items(), key=lambda kv: kv[0])))
    if key in _MADE:
        return _MADE[key]
    torch = require("torch", "hf", "turngym's verl estimators")

    def adv_estimator(
        token_level_rewards: Any,
        response_mask: Any,
        index: Any = None,
        config: Any = None,
        *,
        traj_index: Any = None,
        step_index: Any = None,
        **fields: Any,
    ) -> tuple[Any, Any]:
        rows = int(token_level_rewards.shape[0])
        if index is None:
            raise ValueError(
                f"verl estimator '{PREFIX}{name}' needs index (the group ids, data.non_tensor_batch['uid'])"
            )
        known = ("reward_baselines",)  # verl passes it where the batch has it; no turngym estimator reads it
        unknown = [k for k in fields if k not in _STEP_FIELDS and k not in known]
        if unknown:
            raise TypeError(
                f"verl estimator '{PREFIX}{name}' got unknown argument(s) {unknown}; "
                f"it accepts traj_index, step_index and {', '.join(_STEP_FIELDS)}"
            )
        group_id = _row_array(index, "index", rows)
        if traj_index is None:
            if step_index is not None:
                raise ValueError(f"verl estimator '{PREFIX}{name}': step_index needs traj_index too")
            traj_id, step = np.arange(rows), np.zeros(rows, dtype=np.int64)
        else:
            traj_id = _row_array(traj_index, "traj_index", rows)
            if step_index is None:  # a trajectory's rows are its turns in batch order
                codes = factorize(traj_id)
                step = np.zeros(rows, dtype=np.int64)
                seen = np.zeros(int(codes.max()) + 1 if rows else 0, dtype=np.int64)
                for row, code in enumerate(codes):
                    step[row] = seen[code]
                    seen[code] += 1
            else:
                step = _row_array(step_index, "step_index", rows)
        reward = token_level_rewards.detach().sum(dim=-1).to(torch.float64).cpu().numpy()
        extra = {k: _row_array(v, k, rows) for k, v in fields.items() if k in _STEP_FIELDS and v is not None}
        batch = StepBatch(group_id=group_id, traj_id=traj_id, step=step, reward=reward, **extra)
        adv = compute_advantages(name, batch, **{**hparams, **_config_hparams(config)})
        per_row = torch.as_tensor(adv, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
        advantages = per_row.unsqueeze(-1) * response_mask.to(token_level_rewards.dtype)
        return advantages, advantages

    adv_estimator.__name__ = f"{PREFIX}{name}"
    adv_estimator.__qualname__ = adv_estimator.__name__
    adv_estimator.__doc__ = f"turngym's {name!r} estimator with verl's signature (turngym.integrations.verl)."
    _MADE[key] = adv_estimator
    return adv_estimator


def register(names: list[str] | None = None, *, prefix: str = PREFIX, **hparams: Any) -> dict[str, str]:
    """Register turngym estimators with verl's ``register_adv_est``; returns verl name -> turngym name.

    ``names`` defaults to every estimator but ``gae``. ``hparams`` (only with one name) are the
    estimator's defaults in verl. Registering again with the same arguments is a no-op.
    """
    core_algos = require("verl.trainer.ppo.core_algos", "verl", "turngym's verl estimators")
    names = [n for n in sorted(ESTIMATORS) if n not in NOT_REGISTERED] if names is None else list(names)
    if hparams and len(names) != 1:
        raise ValueError(f"register: hyperparameters {sorted(hparams)} need exactly one estimator name, got {names}")
    out = {}
    for name in names:
        fn = make_adv_estimator(name, **hparams)
        verl_name = f"{prefix}{name}"
        core_algos.register_adv_est(verl_name)(fn)
        out[verl_name] = name
    return out


#: ``data.non_tensor_batch`` key -> estimator argument, for :func:`compute_advantage` (verl-agent's names).
DATA_KEYS = {"uid": "index", "traj_uid": "traj_index", "step_index": "step_index", "anchor_obs": "observation"}


def compute_advantage(data: Any, estimator: str, config: Any = None, **hparams: Any) -> Any:
    """verl's ``compute_advantage`` for a turngym estimator, passing the step-level keys verl's does not.

    ``data`` is a verl ``DataProto`` with ``token_level_rewards`` and ``response_mask`` in ``data.batch``
    and ``uid`` (group ids) in ``data.non_tensor_batch``; ``traj_uid``, ``step_index``, ``anchor_obs``
    and the StepBatch fields the estimator reads are passed where present. ``estimator`` is a turngym
    name (``"gigpo"``) or its verl name (``"turngym_gigpo"``). Sets ``data.batch["advantages"]`` and
    ``data.batch["returns"]`` and returns ``data``.
    """
    name = estimator.removeprefix(PREFIX)
    fn = make_adv_estimator(name, **hparams)
    # .keys(): a TensorDict's `in` is not a key lookup in every tensordict release
    tensor_keys = sorted(data.batch.keys())
    missing = [f"data.batch[{k!r}]" for k in ("token_level_rewards", "response_mask") if k not in tensor_keys]
    if "uid" not in data.non_tensor_batch:
        missing.append("data.non_tensor_batch['uid'] (the group ids)")
    if missing:
        raise ValueError(
            f"compute_advantage({estimator!r}) needs {', '.join(missing)}; the DataProto has batch keys "
            f"{tensor_keys} and non-tensor keys {sorted(data.non_tensor_batch)}"
        )
    kwargs: dict[str, Any] = {}
    for source in (data.batch, data.non_tensor_batch):
        for key in source.keys():  # noqa: SIM118
            arg = DATA_KEYS.get(key, key if key in _STEP_FIELDS else None)
            if arg is not None:
                kwargs[arg] = source[key]
    advantages, returns = fn(
        token_level_rewards=data.batch["token_level_rewards"],
        response_mask=data.batch["response_mask"],
        config=config,
        **kwargs,
    )
    data.batch["advantages"] = advantages
    data.batch["returns"] = returns
    return data


REGISTERED = register()
