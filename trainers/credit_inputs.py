"""The credit estimator's inputs, filled by one mechanism: every declared StepBatch field has one provider.

Each estimator of ``turngym.credit`` declares the optional :class:`~turngym.credit.StepBatch`
fields it reads (``turngym.credit.estimator_inputs(name, **hparams)``). The trainer asks
:func:`credit_inputs` for exactly those; each field comes from one provider below, and a field
without a provider (a critic's ``values``) or an env that lacks the info key a provider reads is
an error naming the estimator, the field and the fix. Nothing falls back to a stand-in signal.

=================  ==================================================================================
field              provider
=================  ==================================================================================
``state_key``      the env's ``info["state_key"]`` of the state each step acted in (trajectories)
``observation``    the observation each step acted on (trajectories)
``action_valid``   the env's ``info["action_valid"]`` after each step (trajectories)
``num_tool_calls`` the env's ``info["num_tool_calls"]`` after the last step: the trajectory's count of
                   tool (search) calls (env contract; turngym/Search-v0 emits it)
``gold_logprob``   the policy's mean token log-prob of the gold answer (``info["gold_answers"]`` or
                   ``info["gold_answer"]``) teacher-forced after each step's prompt (IGPO)
``entropy``        the policy's mean token entropy over each step's sampled tokens, at the sampling
                   temperature: ``H_t = mean_k -sum_v p(v | ctx_k) log p(v | ctx_k)`` (EMPG)
``progress``       SPA's per-step progress contributions. ``algo.progress_source="learned"`` (the
                   default, as in the paper): a progress estimator on the policy's final hidden state
                   at each step's last sampled token, refitted every iteration on the latest
                   ``algo.progress_buffer`` iterations' steps so that a trajectory's contributions
                   sum to its outcome (``turngym.credit.fit_progress_estimator``, SPA's loss).
                   ``"oracle_progress"``: the env's ground-truth ``progress`` after each step (an
                   oracle signal for analysis; the metrics record ``oracle_signal = 1``)
``values``         none: the trainer has no critic (``gae`` is refused with the alternatives)
=================  ==================================================================================

The model-dependent providers go through a :class:`StepScorer` (the trainer implements it with a
no-grad forward of its policy), so this module never touches the trainer's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from turngym.agents.types import Trajectory
from turngym.errors import TurngymError

#: StepBatch fields ``turngym.trainers.tokens.step_batch`` builds from the trajectories themselves.
FROM_TRAJECTORIES = ("state_key", "observation", "action_valid")
#: values of ``algo.progress_source``
PROGRESS_SOURCES = ("learned", "oracle_progress")


class StepScorer(Protocol):
    """Per-step statistics of the current policy on (context ids, target ids) pairs, without gradients.

    ``what`` is ``"logprob"`` (mean log-prob of the target ids), ``"entropy"`` (mean entropy of the
    predictive distributions of the target ids) or ``"hidden"`` (the final hidden state at the
    last target id, or at the last context id when there are no target ids).
    """

    def score_steps(self, pairs: list[tuple[list[int], list[int]]], what: str) -> list[Any]: ...

    def encode(self, text: str) -> list[int]: ...


@dataclass
class SPAProgressState:
    """The learned progress estimator's replay: features, trajectory codes and outcomes per iteration."""

    buffer: list[dict[str, np.ndarray]] = field(default_factory=list)

    def state_dict(self) -> list[dict[str, Any]]:
        return [{k: v.copy() for k, v in item.items()} for item in self.buffer]

    def load_state_dict(self, state: list[dict[str, Any]] | None) -> None:
        self.buffer = [{k: np.asarray(v) for k, v in item.items()} for item in (state or [])]


@dataclass
class CreditInputs:
    """What :func:`credit_inputs` gives: StepBatch fields, hyper-parameters they imply, metrics."""

    fields: dict[str, Any] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CreditSettings:
    """The config values providers read (``algo.*``)."""

    igpo_answer_template: str = "<answer> {answer} </answer>"
    progress_source: str = "learned"
    progress_l2: float = 1.0
    progress_hidden: int = 0
    progress_buffer: int = 4
    seed: int = 0


def credit_inputs(estimator: str, hparams: dict[str, Any], trajs: list[Trajectory], scorer: StepScorer,
                  settings: CreditSettings, spa_state: SPAProgressState | None = None) -> CreditInputs:
    """Fill every StepBatch field estimator ``estimator`` declares, by its provider."""
    from turngym.credit import estimator_inputs

    out = CreditInputs()
    for name in estimator_inputs(estimator, **hparams):
        if name in FROM_TRAJECTORIES:
            continue
        provider = PROVIDERS.get(name)
        if provider is None:
            raise TurngymError(_NO_PROVIDER.get(name, f"estimator {estimator!r} needs StepBatch field {name!r}, "
                                                      "which the RL trainer cannot provide"))
        provider(out, estimator, hparams, trajs, scorer, settings, spa_state)
    return out


_NO_PROVIDER = {
    "values": "estimator 'gae' needs a critic's values; the RL trainer has no critic yet: use grpo, gigpo, rloo, "
              "reinforce_pp, dr_grpo, spa, igpo, stratified_grpo or empg",
    "info_gain": "StepBatch field 'info_gain' is precomputed by the caller; the trainer provides 'gold_logprob'",
}


def _steps(trajs: list[Trajectory]):
    return [s for t in trajs for s in t.steps]


def _tool_calls(out, estimator, hparams, trajs, scorer, settings, spa_state) -> None:
    counts = []
    for t in trajs:
        info = t.steps[-1].info if t.steps else {}
        if "num_tool_calls" not in (info or {}):
            raise TurngymError(
                f"estimator {estimator!r} stratifies on the trajectory's tool calls, but env {t.env_id!r} puts no "
                "'num_tool_calls' in its step info (the env contract key for tool-using envs, e.g. "
                "turngym/Search-v0); use another estimator for this env"
            )
        counts += [int(info["num_tool_calls"])] * t.num_turns
    out.fields["num_tool_calls"] = counts
    out.metrics["num_tool_calls_mean"] = float(np.mean([c for c in counts])) if counts else 0.0


def _step_pairs(trajs: list[Trajectory]) -> list[tuple[list[int], list[int]]]:
    pairs = []
    for t in trajs:
        for s in t.steps:
            if s.prompt_ids is None or s.response_ids is None:
                raise TurngymError(f"trajectory {t.task_id!r} of {t.env_id!r} has a step without token ids; "
                                   "credit inputs from the policy need the engine's prompt and response ids")
            pairs.append(([int(i) for i in s.prompt_ids], [int(i) for i in s.response_ids]))
    return pairs


def _entropy(out, estimator, hparams, trajs, scorer, settings, spa_state) -> None:
    ent = [float(x) for x in scorer.score_steps(_step_pairs(trajs), "entropy")]
    out.fields["entropy"] = ent
    out.metrics["step_entropy_mean"] = float(np.mean(ent)) if ent else 0.0


def gold_answer(traj: Trajectory) -> str:
    """The gold answer an env exposes to trainers in its info (``gold_answers`` list or ``gold_answer``)."""
    for s in traj.steps:
        info = s.info or {}
        if info.get("gold_answers"):
            return str(next(iter(info["gold_answers"])))
        if info.get("gold_answer"):
            return str(info["gold_answer"])
    raise TurngymError(f"estimator 'igpo' needs the gold answer, but env {traj.env_id!r} puts neither "
                       "'gold_answers' nor 'gold_answer' in its step info (IGPO is for QA envs such as "
                       "turngym/Search-v0)")


def _gold_logprob(out, estimator, hparams, trajs, scorer, settings, spa_state) -> None:
    pairs = []
    for t in trajs:
        answer = scorer.encode(settings.igpo_answer_template.format(answer=gold_answer(t)))
        pairs += [([int(i) for i in (s.prompt_ids or [])], answer) for s in t.steps]
    out.fields["gold_logprob"] = [float(x) for x in scorer.score_steps(pairs, "logprob")]


def _progress(out, estimator, hparams, trajs, scorer, settings, spa_state) -> None:
    source = settings.progress_source
    if source not in PROGRESS_SOURCES:
        raise TurngymError(f"algo.progress_source={source!r}: use one of {', '.join(PROGRESS_SOURCES)}")
    if source == "oracle_progress":
        progress = [s.progress for s in _steps(trajs)]
        if any(p is None for p in progress):
            raise TurngymError(f"algo.progress_source='oracle_progress' needs the env's ground-truth progress, "
                               f"but env {trajs[0].env_id!r} reports none")
        out.fields["progress"] = [float(p) for p in progress]
        _set_hparam(out, hparams, "progress_is_cumulative", True, source)  # Step.progress: after the step
        out.metrics["oracle_signal"] = 1.0
        return
    _set_hparam(out, hparams, "progress_is_cumulative", False, source)
    contributions, loss = learned_progress(trajs, scorer, settings, spa_state or SPAProgressState())
    out.fields["progress"] = contributions.tolist()
    out.metrics["spa_progress_loss"] = loss
    out.metrics["oracle_signal"] = 0.0


def _set_hparam(out: CreditInputs, hparams: dict[str, Any], key: str, value: Any, source: str) -> None:
    if key in hparams and hparams[key] != value:
        raise TurngymError(f"algo.estimator_kwargs.{key}={hparams[key]!r} contradicts algo.progress_source="
                           f"{source!r}, which gives {key}={value!r}; drop the key")
    out.hparams[key] = value


def learned_progress(trajs: list[Trajectory], scorer: StepScorer, settings: CreditSettings,
                     state: SPAProgressState) -> tuple[np.ndarray, float]:
    """SPA's progress contributions of this iteration's steps from an estimator fitted in the loop.

    Features: the policy's final hidden state at each step's last sampled token (the history up to
    and including the step's action). Target: each trajectory's outcome (its summed reward). The
    estimator (``turngym.credit.fit_progress_estimator``: ridge-linear, or a small MLP) is fitted on
    the latest ``progress_buffer`` iterations' steps, features standardized on that buffer, and
    gives this iteration's contributions. Returns them and SPA's loss on this iteration,
    ``mean_j (R_j - sum_t c_t)^2``.
    """
    from turngym.credit import fit_progress_estimator, progress_loss

    if settings.progress_buffer < 1:
        raise TurngymError(f"algo.progress_buffer={settings.progress_buffer}: needs >= 1 iteration")
    feats = np.asarray(scorer.score_steps(_step_pairs(trajs), "hidden"), dtype=np.float32)
    traj = np.concatenate([np.full(t.num_turns, i) for i, t in enumerate(trajs)]) if trajs else np.zeros(0, int)
    outcome = np.concatenate([np.full(t.num_turns, float(sum(s.reward for s in t.steps))) for t in trajs])
    state.buffer.append({"features": feats, "traj": traj.astype(np.int64), "outcome": outcome})
    del state.buffer[:-settings.progress_buffer]
    x = np.concatenate([b["features"] for b in state.buffer]).astype(np.float64)
    offsets = np.cumsum([0] + [int(b["traj"].max()) + 1 if len(b["traj"]) else 0 for b in state.buffer])
    traj_all = np.concatenate([b["traj"] + off for b, off in zip(state.buffer, offsets, strict=False)])
    outcome_all = np.concatenate([b["outcome"] for b in state.buffer])
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    estimator = fit_progress_estimator((x - mean) / scale, traj_all, outcome_all, hidden=settings.progress_hidden,
                                       l2=settings.progress_l2, seed=settings.seed)
    contributions = np.asarray(estimator((feats.astype(np.float64) - mean) / scale), dtype=np.float64)
    return contributions, progress_loss(contributions, traj, outcome)


PROVIDERS = {
    "num_tool_calls": _tool_calls,
    "entropy": _entropy,
    "gold_logprob": _gold_logprob,
    "progress": _progress,
}
