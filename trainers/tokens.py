"""Trajectories -> token-exact training samples, padded batches and micro-batches.

The field's top bug class is the token level of multi-turn RL: a loss mask
that covers tokens the policy never sampled, or a training sequence rebuilt
by decoding the sampled ids and re-applying the chat template (BPE is not a
bijection: the sampled ``" hel" "lo"`` re-tokenizes as ``" hello"``, a
max-tokens cut in the middle of a UTF-8 character decodes to U+FFFD, and the
trained ids and log-probs then are not the sampled ones). This module never
tokenizes anything: it only concatenates the ids the engine saw and sampled
(``Step.prompt_ids``, ``Step.response_ids``, ``Step.response_logprobs``).

Two ways to turn a trajectory into samples (``build_samples(mode=...)``):

``"stepwise"``
    Every step is one sample: ``input_ids = prompt_ids + response_ids``,
    ``loss_mask`` 1 exactly on the response ids. Always exact, whatever the
    agent's context management (windowed, summarized, re-rendered prompts):
    verl-agent's layout, where "sequence" means "step".
``"in_context"``
    The whole multi-turn transcript is ONE sequence, valid only when every
    step's ``prompt_ids`` starts with the previous step's
    ``prompt_ids + response_ids`` (checked token by token). The tokens each
    prompt adds after that prefix (the template's ``<|im_end|>\\n`` closing
    the assistant turn when the model did not sample it, the env's
    observation as a user/tool message, the next ``<|im_start|>assistant\\n``)
    get mask 0; the sampled ids get mask 1 (a sampled ``<|im_end|>`` too).
    Where the prefix breaks, ``on_break`` decides: ``"raise"`` (default; the
    error names the trajectory, the step and the first differing token),
    ``"split"`` (start a new sequence at that step) or ``"stepwise"`` (the
    whole trajectory falls back to step-wise samples).
``"auto"``
    ``"in_context"`` with ``on_break="split"``: one sequence per unbroken run
    of steps (agents whose window never slid give one sequence per episode).

Every sample carries per-token advantages (the step's advantage broadcast to
the tokens of its response, 0 elsewhere), per-token old log-probs from the
engine (0 where the mask is 0), and ``segment_ids`` (the step each loss token
belongs to, -1 elsewhere) so the loss can average per step or per sequence.

:func:`step_batch` builds the ``turngym.credit.StepBatch`` whose row order is
the order ``build_samples`` reads advantages in. :func:`collate` pads samples
on the right into tensors (attention mask, position ids) and
:func:`pack_microbatches` groups samples into micro-batches under a token
budget; :func:`pack_forward`, what the SFT and RL updates call, packs a step
either that way or, under ``optim.share_prefix``, as prefix trees
(:func:`pack_prefix_trees`: a trajectory's turns, whose prompts repeat the
transcript, run it once), whichever runs fewer tokens. :func:`verify_samples` is the sanity check of credit-spec section 11
rule 7: the masked ids are exactly the engine's ids, and as many log-probs.

Depends on ``turngym.agents.types`` (records only) and, lazily, on
``turngym.credit`` (numpy) and torch (:func:`collate`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from turngym.agents.types import Step, Trajectory

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from turngym.credit import StepBatch

SAMPLE_MODES = ("stepwise", "in_context", "auto")
ON_BREAK = ("raise", "split", "stepwise")


class PrefixBreakError(ValueError):
    """A trajectory cannot be trained as one sequence: a step's prompt does not extend the previous step's ids."""


@dataclass
class TrainingSample:
    """One training sequence, token-exact, aligned position by position.

    Attributes:
        input_ids: the ids the model saw and sampled, in order.
        loss_mask: 1 on ids the policy sampled, 0 on prompt, env and template ids.
        advantages: the step's advantage on each of its sampled ids, 0 elsewhere
            (None when ``build_samples`` got no advantages, e.g. for SFT).
        old_logprobs: the engine's log-prob of each sampled id, 0 elsewhere
            (None when a step of the sample has no engine log-probs).
        segment_ids: index (within the trajectory) of the step each sampled id
            belongs to; -1 on ids with mask 0.
        traj_index: position of the trajectory in the list given to ``build_samples``.
        steps: the trajectory's step indices this sample covers, in order.
        group_id: the trajectory's group (task) id.
    """

    input_ids: list[int]
    loss_mask: list[int]
    advantages: list[float] | None
    old_logprobs: list[float] | None
    segment_ids: list[int]
    traj_index: int
    steps: tuple[int, ...]
    group_id: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_loss_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def num_loss_steps(self) -> int:
        """Steps of this sample with at least one sampled id (the units of per-step aggregation)."""
        return len({s for s in self.segment_ids if s >= 0})


@dataclass(frozen=True)
class PrefixBreak:
    """Where step ``step``'s prompt stops extending step ``step - 1``'s prompt + response ids."""

    traj_index: int
    step: int
    position: int  # first differing position in the step's prompt_ids (-1: a step has no token ids)
    expected: int | None  # the previous step's id at that position
    got: int | None  # the prompt's id there (None: the prompt ends before the previous ids do)

    def describe(self, tokenizer: Any = None) -> str:
        if self.position < 0:
            return f"step {self.step} or step {self.step - 1} has no token ids"

        def show(tok: int | None) -> str:
            if tok is None:
                return "end of prompt"
            if tokenizer is None:
                return f"id {tok}"
            text = tokenizer.decode([tok], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            return f"id {tok} {text!r}"

        return (f"step {self.step}'s prompt_ids do not extend step {self.step - 1}'s prompt_ids + response_ids: "
                f"first difference at token {self.position} (expected {show(self.expected)}, "
                f"got {show(self.got)})")


# ---- steps -> credit rows --------------------------------------------------------------------------------


def _check_trajectory(traj: Trajectory, index: int) -> None:
    if traj.error is not None:
        raise ValueError(f"trajectory {index} (task {traj.task_id!r}) failed in its env ({traj.error}); "
                         "leave failed episodes out of training: keep [t for t in trajectories if t.error is None]")


def step_batch(trajectories: Sequence[Trajectory], **extra: Any) -> StepBatch:
    """The ``turngym.credit.StepBatch`` of these trajectories, one row per step.

    Rows are in (trajectory, step) order: row ``k`` is the ``k``-th step when
    the trajectories' steps are listed one trajectory after another. That is
    the order :func:`build_samples` reads a flat advantage array in, so
    ``build_samples(trajs, compute_advantages(name, step_batch(trajs)))``
    lines up. Fields: ``group_id``, ``traj_id`` (the trajectory's position),
    ``step``, ``reward``, ``observation``, ``action_valid`` and ``state_key``
    (when every step has one). ``extra`` adds or overrides fields (e.g.
    ``entropy=...`` for EMPG, ``num_tool_calls=...`` for Stratified GRPO).
    """
    from turngym.credit import StepBatch

    group_id, traj_id, step_idx, reward, observation, valid, state_key = [], [], [], [], [], [], []
    for i, traj in enumerate(trajectories):
        _check_trajectory(traj, i)
        for k, step in enumerate(traj.steps):
            group_id.append(str(traj.group_id))
            traj_id.append(i)
            step_idx.append(k)
            reward.append(float(step.reward))
            observation.append(step.observation)
            valid.append(1.0 if step.action_valid else 0.0)
            state_key.append(_hashable(step.state_key))
    fields: dict[str, Any] = {"group_id": group_id, "traj_id": traj_id, "step": step_idx, "reward": reward,
                                  "observation": _object_array(observation), "action_valid": valid}
    if state_key and all(key is not None for key in state_key):
        fields["state_key"] = _object_array(state_key)
    fields.update(extra)
    return StepBatch(**fields)


def _hashable(key: Any) -> Any:
    # JSONL round trips turn tuple state keys into lists; a list is unhashable, its tuple is the same key.
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key


def _object_array(values: list[Any]):
    import numpy as np

    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def _per_step_advantages(trajectories: Sequence[Trajectory], advantages: Any) -> list[list[float]] | None:
    """Advantages as one list per trajectory (from a flat per-step array or nested lists)."""
    if advantages is None:
        return None
    if hasattr(advantages, "tolist"):
        advantages = advantages.tolist()
    advantages = list(advantages)
    sizes = [len(t.steps) for t in trajectories]
    if len(advantages) == len(trajectories) and all(isinstance(a, (list, tuple)) for a in advantages):
        for i, (a, n) in enumerate(zip(advantages, sizes)):
            if len(a) != n:
                raise ValueError(f"advantages[{i}] has {len(a)} entries but trajectory {i} has {n} steps")
        return [[float(x) for x in a] for a in advantages]
    if len(advantages) != sum(sizes):
        raise ValueError(f"got {len(advantages)} advantages for {sum(sizes)} steps: pass one per step in "
                         "(trajectory, step) order, the row order of step_batch(trajectories)")
    out, start = [], 0
    for n in sizes:
        out.append([float(x) for x in advantages[start:start + n]])
        start += n
    return out


def _step_ids(traj: Trajectory, index: int, k: int, step: Step) -> tuple[list[int], list[int], list[float] | None]:
    if step.prompt_ids is None or step.response_ids is None:
        raise ValueError(f"trajectory {index} (task {traj.task_id!r}) step {k} has no token ids "
                         f"(prompt_ids {'missing' if step.prompt_ids is None else 'ok'}, response_ids "
                         f"{'missing' if step.response_ids is None else 'ok'}): train only on rollouts from an "
                         "engine that returns ids (hf, vllm), never on re-tokenized text")
    if not step.prompt_ids:
        raise ValueError(f"trajectory {index} step {k} has empty prompt_ids: a response needs a prompt to condition on")
    logprobs = step.response_logprobs
    if logprobs is not None and len(logprobs) != len(step.response_ids):
        raise ValueError(f"trajectory {index} step {k} has {len(step.response_ids)} response_ids but "
                         f"{len(logprobs)} response_logprobs: the engine must return one log-prob per sampled id")
    return list(step.prompt_ids), list(step.response_ids), None if logprobs is None else [float(x) for x in logprobs]


def find_prefix_break(previous_ids: Sequence[int], prompt_ids: Sequence[int]) -> int | None:
    """First position where ``prompt_ids`` stops extending ``previous_ids``; None if it extends them."""
    n = len(previous_ids)
    if len(prompt_ids) >= n and list(prompt_ids[:n]) == list(previous_ids):
        return None
    for pos in range(min(n, len(prompt_ids))):
        if prompt_ids[pos] != previous_ids[pos]:
            return pos
    return min(n, len(prompt_ids))


def prefix_breaks(trajectory: Trajectory, traj_index: int = 0) -> list[PrefixBreak]:
    """Every step whose prompt does not extend the previous step's prompt + response ids."""
    breaks = []
    steps = trajectory.steps
    for k in range(1, len(steps)):
        prev, cur = steps[k - 1], steps[k]
        if prev.prompt_ids is None or prev.response_ids is None or cur.prompt_ids is None:
            breaks.append(PrefixBreak(traj_index, k, -1, None, None))
            continue
        previous = list(prev.prompt_ids) + list(prev.response_ids)
        pos = find_prefix_break(previous, cur.prompt_ids)
        if pos is not None:
            breaks.append(PrefixBreak(traj_index, k, pos, previous[pos] if pos < len(previous) else None,
                                      cur.prompt_ids[pos] if pos < len(cur.prompt_ids) else None))
    return breaks


# ---- trajectories -> samples -----------------------------------------------------------------------------


class _Builder:
    """Accumulates one sequence: prompt/template ids with mask 0, sampled ids with mask 1."""

    def __init__(self, traj_index: int, group_id: str, with_adv: bool):
        self.traj_index, self.group_id, self.with_adv = traj_index, group_id, with_adv
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.adv: list[float] = []
        self.logp: list[float] = []
        self.has_logp = True
        self.seg: list[int] = []
        self.steps: list[int] = []

    def context(self, ids: list[int]) -> None:
        self.ids += ids
        self.mask += [0] * len(ids)
        self.adv += [0.0] * len(ids)
        self.logp += [0.0] * len(ids)
        self.seg += [-1] * len(ids)

    def response(self, k: int, ids: list[int], logprobs: list[float] | None, advantage: float) -> None:
        self.ids += ids
        self.mask += [1] * len(ids)
        self.adv += [advantage] * len(ids)
        if logprobs is None:
            self.has_logp = False
            self.logp += [0.0] * len(ids)
        else:
            self.logp += logprobs
        self.seg += [k] * len(ids)
        self.steps.append(k)

    def sample(self) -> TrainingSample:
        return TrainingSample(input_ids=self.ids, loss_mask=self.mask, advantages=self.adv if self.with_adv else None,
                              old_logprobs=self.logp if self.has_logp else None, segment_ids=self.seg,
                              traj_index=self.traj_index, steps=tuple(self.steps), group_id=self.group_id)


def build_samples(trajectories: Sequence[Trajectory], advantages: Any = None, *, mode: str = "stepwise",
                  on_break: str = "raise", tokenizer: Any = None, skip_steps: Any = None) -> list[TrainingSample]:
    """Training samples from trajectories, token-exact (see the module docstring).

    Args:
        trajectories: rollouts whose steps carry the engine's ``prompt_ids``,
            ``response_ids`` and (for PPO ratios) ``response_logprobs``.
            Failed episodes (``error`` set) are rejected: filter them first.
        advantages: per-step advantages, flat in (trajectory, step) order (the
            row order of :func:`step_batch`, so ``compute_advantages`` output
            fits as is) or one list per trajectory; None for no advantages (SFT).
        mode: ``"stepwise"``, ``"in_context"`` or ``"auto"``.
        on_break: in ``"in_context"`` mode, what a broken prefix does:
            ``"raise"`` a :class:`PrefixBreakError`, ``"split"`` the sequence
            there, or fall back to ``"stepwise"`` for that trajectory.
        tokenizer: optional, only to show the differing tokens as text in errors.
        skip_steps: optional predicate ``f(step) -> bool``; a skipped step's
            response gets mask 0 (its ids stay in an in-context sequence, as
            context) and a step-wise sample is not made for it.

    Returns:
        Samples in trajectory order, then step order.
    """
    if mode not in SAMPLE_MODES:
        raise ValueError(f"unknown sample mode {mode!r}: use one of {', '.join(SAMPLE_MODES)}")
    if on_break not in ON_BREAK:
        raise ValueError(f"unknown on_break {on_break!r}: use one of {', '.join(ON_BREAK)}")
    if mode == "auto":
        mode, on_break = "in_context", "split"
    for i, traj in enumerate(trajectories):
        _check_trajectory(traj, i)
    per_step = _per_step_advantages(trajectories, advantages)
    samples: list[TrainingSample] = []
    for i, traj in enumerate(trajectories):
        adv = per_step[i] if per_step is not None else [0.0] * len(traj.steps)
        if mode == "stepwise":
            samples += _stepwise(traj, i, adv, per_step is not None, skip_steps)
        else:
            samples += _in_context(traj, i, adv, per_step is not None, on_break, tokenizer, skip_steps)
    return samples


def _stepwise(traj: Trajectory, i: int, adv: list[float], with_adv: bool, skip: Any) -> list[TrainingSample]:
    out = []
    for k, step in enumerate(traj.steps):
        if skip is not None and skip(step):
            continue
        prompt, response, logprobs = _step_ids(traj, i, k, step)
        b = _Builder(i, str(traj.group_id), with_adv)
        b.context(prompt)
        b.response(k, response, logprobs, adv[k])
        out.append(b.sample())
    return out


def _in_context(traj: Trajectory, i: int, adv: list[float], with_adv: bool, on_break: str, tokenizer: Any,
                skip: Any) -> list[TrainingSample]:
    out: list[TrainingSample] = []
    b: _Builder | None = None
    for k, step in enumerate(traj.steps):
        prompt, response, logprobs = _step_ids(traj, i, k, step)
        if b is not None:
            pos = find_prefix_break(b.ids, prompt)
            if pos is not None:
                brk = PrefixBreak(i, k, pos, b.ids[pos] if pos < len(b.ids) else None,
                                  prompt[pos] if pos < len(prompt) else None)
                if on_break == "raise":
                    raise PrefixBreakError(
                        f"trajectory {i} (task {traj.task_id!r}, group {traj.group_id!r}) cannot be one sequence: "
                        f"{brk.describe(tokenizer)}. The prompt was re-rendered or re-tokenized (the "
                        f"re-tokenization trap) or the context window slid (context_mode {step.context_mode!r}): "
                        "train it with mode='stepwise', or on_break='split' to start a new sequence there")
                if on_break == "stepwise":
                    return _stepwise(traj, i, adv, with_adv, skip)
                out.append(b.sample())
                b = None
        if b is None:
            b = _Builder(i, str(traj.group_id), with_adv)
            b.context(prompt)
        else:
            b.context(prompt[len(b.ids):])
        if skip is not None and skip(step):
            b.context(response)
        else:
            b.response(k, response, logprobs, adv[k])
    if b is not None:
        out.append(b.sample())
    return out


def verify_samples(samples: Sequence[TrainingSample], trajectories: Sequence[Trajectory]) -> None:
    """Assert the token-level invariants (credit-spec section 11, rule 7); raise AssertionError naming the sample.

    For every sample: equal lengths of all per-token lists; the ids under
    mask 1 are exactly the concatenated ``response_ids`` of its steps, in
    order; its old log-probs under mask 1 are exactly their engine
    log-probs; no loss on position 0 (nothing predicts it).
    """
    for n, s in enumerate(samples):
        lists = {"loss_mask": s.loss_mask, "segment_ids": s.segment_ids, "advantages": s.advantages,
                 "old_logprobs": s.old_logprobs}
        for name, values in lists.items():
            if values is not None and len(values) != len(s.input_ids):
                raise AssertionError(f"sample {n}: {name} has {len(values)} entries for {len(s.input_ids)} ids")
        if s.loss_mask and s.loss_mask[0]:
            raise AssertionError(f"sample {n}: position 0 carries loss, but no token predicts it")
        traj = trajectories[s.traj_index]
        masked = [t for t, m in zip(s.input_ids, s.loss_mask) if m]
        sampled = [t for k in s.steps for t in traj.steps[k].response_ids]
        if masked != sampled:
            raise AssertionError(f"sample {n} (trajectory {s.traj_index}, steps {list(s.steps)}): the ids under "
                                 "the loss mask are not the engine's sampled ids")
        if s.old_logprobs is not None:
            got = [lp for lp, m in zip(s.old_logprobs, s.loss_mask) if m]
            want = [float(lp) for k in s.steps for lp in traj.steps[k].response_logprobs]
            if got != want:
                raise AssertionError(f"sample {n}: old log-probs under the mask are not the engine's log-probs")


def loss_normalizers(samples: Sequence[TrainingSample]) -> dict[str, int]:
    """Global counts for loss aggregation across micro-batches (see ``objectives.aggregate_loss``).

    ``num_tokens``: sampled tokens; ``num_samples``: samples with at least one;
    ``num_steps``: (sample, step) segments with at least one.
    """
    return {"num_tokens": sum(s.num_loss_tokens for s in samples),
            "num_samples": sum(1 for s in samples if s.num_loss_tokens),
            "num_steps": sum(s.num_loss_steps for s in samples)}


# ---- samples -> tensors ----------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    """Right-padded tensors of a list of samples, all ``[B, T]``.

    ``segment_ids`` numbers the (sample, step) segments of this batch 0..n-1
    (-1 on mask-0 positions): pass it as ``seq_ids`` to the loss to average
    per step; leave ``seq_ids`` None to average per row (= per sample).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor | None
    old_logprobs: torch.Tensor | None
    segment_ids: torch.Tensor
    sample_indices: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: Any) -> TokenBatch:
        def move(t):
            return None if t is None else t.to(device)

        return TokenBatch(move(self.input_ids), move(self.attention_mask), move(self.position_ids),
                          move(self.loss_mask), move(self.advantages), move(self.old_logprobs),
                          move(self.segment_ids), list(self.sample_indices))


def collate(samples: Sequence[TrainingSample], pad_token_id: int = 0, *, indices: Sequence[int] | None = None,
            pad_to_multiple_of: int | None = None, device: Any = None) -> TokenBatch:
    """Pad ``samples`` (or ``samples[i] for i in indices``) on the right into a :class:`TokenBatch`.

    Padding positions have attention mask 0, loss mask 0, advantage 0,
    old log-prob 0 and segment id -1; position ids count 0, 1, ... over each
    row's real tokens (0 on padding), as the engines number them.
    """
    import torch

    idx = list(range(len(samples))) if indices is None else list(indices)
    if not idx:
        raise ValueError("collate needs at least one sample")
    rows = [samples[i] for i in idx]
    width = max(len(s) for s in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    b = len(rows)
    input_ids = torch.full((b, width), int(pad_token_id), dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    loss_mask = torch.zeros((b, width), dtype=torch.float32)
    segment = torch.full((b, width), -1, dtype=torch.long)
    with_adv = all(s.advantages is not None for s in rows)
    with_logp = all(s.old_logprobs is not None for s in rows)
    advantages = torch.zeros((b, width), dtype=torch.float32) if with_adv else None
    old_logprobs = torch.zeros((b, width), dtype=torch.float32) if with_logp else None
    next_segment = 0
    for r, s in enumerate(rows):
        n = len(s)
        input_ids[r, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention[r, :n] = 1
        loss_mask[r, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
        if with_adv:
            advantages[r, :n] = torch.tensor(s.advantages, dtype=torch.float32)
        if with_logp:
            old_logprobs[r, :n] = torch.tensor(s.old_logprobs, dtype=torch.float32)
        seg = torch.tensor(s.segment_ids, dtype=torch.long)
        if bool((seg >= 0).any()):
            uniq, inverse = torch.unique(seg[seg >= 0], return_inverse=True)
            seg[seg >= 0] = inverse + next_segment
            next_segment += len(uniq)
        segment[r, :n] = seg
    positions = (attention.cumsum(-1) - 1).clamp(min=0) * attention
    batch = TokenBatch(input_ids, attention, positions, loss_mask, advantages, old_logprobs, segment, idx)
    return batch.to(device) if device is not None else batch


def pack_microbatches(samples: Sequence[TrainingSample] | Sequence[int], max_tokens: int, *,
                      max_batch_size: int | None = None) -> list[list[int]]:
    """Group samples into micro-batches whose PADDED size ``rows x longest`` stays within ``max_tokens``.

    ``samples`` may be samples or their lengths. Samples are taken longest
    first (ties in input order), so each micro-batch holds similar lengths
    and wastes little padding; the result is deterministic. A sample longer
    than ``max_tokens`` gets a micro-batch of its own (it cannot be split
    without changing what the model sees; raise the budget or shorten
    contexts if that runs out of memory). Returns lists of sample indices;
    every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    lengths = [s if isinstance(s, int) else len(s) for s in samples]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))

    def overflows(current: list[int], i: int) -> bool:
        # Sorted longest first: the first index of a micro-batch sets its padded width.
        full = max_batch_size is not None and len(current) >= max_batch_size
        return full or (len(current) + 1) * lengths[current[0]] > max_tokens

    return _greedy_groups(order, overflows)


def _greedy_groups(order: Sequence[int], overflows: Any) -> list[list[int]]:
    """``order`` cut into consecutive groups: ``i`` starts a new group when ``overflows(current, i)``."""
    groups: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and overflows(current, i):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


def prefix_tree(rows: Sequence[Sequence[Any]]) -> tuple[list[list[int]], list[Any]]:
    """The prefix tree of ``rows``: an element several rows hold after the same elements is one node.

    Returns ``(nodes, items)``: ``nodes[r][t]`` is the node of row ``r``'s element ``t`` and ``items`` the
    nodes' elements, in creation order (a node's ancestors come before it). Rows are walked in sorted
    order, where a row's longest common prefix with any earlier row is the one with the row just before it.
    """
    keys = [tuple(r) for r in rows]
    nodes: list[list[int]] = [[] for _ in keys]
    items: list[Any] = []
    prev: int | None = None
    for r in sorted(range(len(keys)), key=keys.__getitem__):
        key, shared = keys[r], 0
        if prev is not None:
            limit = min(len(key), len(keys[prev]))
            while shared < limit and key[shared] == keys[prev][shared]:
                shared += 1
        fresh = list(range(len(items), len(items) + len(key) - shared))
        nodes[r] = nodes[prev][:shared] + fresh if prev is not None else fresh
        items += key[shared:]
        prev = r
    return nodes, items


def prefix_tree_size(rows: Sequence[Sequence[int]]) -> int:
    """Tokens in the prefix tree of ``rows`` (:func:`prefix_tree`): a token several rows hold after the same
    ids counts once. What ``sequence_logprobs(..., share_prefix=True)`` runs when it packs a micro-batch as
    its prefix tree (rows numbered 0, 1, ... from their start, as :func:`collate` numbers them)."""
    return len(prefix_tree(rows)[1])


def forward_cost(rows: Sequence[Sequence[int]], tree_limit: int) -> int:
    """At most the tokens ``sequence_logprobs(..., share_prefix=True)`` runs for ``rows`` as one micro-batch
    (right padded, positions from 0): their prefix tree (:func:`prefix_tree_size`) when it holds at most
    ``tree_limit`` tokens and under 90% of the padded rows, as that function decides; else ``rows x longest``
    (its other paths run that or less)."""
    padded = len(rows) * max((len(r) for r in rows), default=0)
    if len(rows) < 2:
        return padded
    tree = prefix_tree_size(rows)
    return tree if tree <= tree_limit and tree <= 0.9 * padded else padded


def pack_prefix_trees(samples: Sequence[TrainingSample] | Sequence[Sequence[int]], max_tokens: int,
                      tree_limit: int | None = None) -> list[list[int]]:
    """Group samples, in the order given, into micro-batches whose forward (:func:`forward_cost`: the prefix
    tree's tokens when it is used, else the padded rows) stays within ``max_tokens``: the packing for
    ``share_prefix``, where a micro-batch costs its tree's tokens, not ``rows x longest``. Give a trajectory's
    samples next to each other (each turn's prompt repeats the transcript before it) and they share it.
    ``tree_limit`` (default ``max_tokens``): the largest tree the forward packs. A sample longer than
    ``max_tokens`` gets a micro-batch of its own. Returns lists of sample indices; every index appears
    exactly once, in order.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    limit = max_tokens if tree_limit is None else tree_limit
    rows = [s.input_ids if isinstance(s, TrainingSample) else list(s) for s in samples]
    return _greedy_groups(range(len(rows)),
                          lambda current, i: forward_cost([rows[j] for j in current] + [rows[i]], limit) > max_tokens)


def pack_forward(samples: Sequence[TrainingSample] | Sequence[Sequence[int]], max_tokens: int, share_prefix: bool,
                 tree_limit: int) -> list[list[int]]:
    """The micro-batches of one optimizer step (what the SFT and RL updates run): without ``share_prefix``,
    :func:`pack_microbatches` (padded size, longest first); with it, whichever of that and
    :func:`pack_prefix_trees` (trees within ``min(max_tokens, tree_limit)``, in the order given) runs fewer
    tokens in all (:func:`forward_cost`; a tie keeps the padded packing). So a trajectory's turns, given in
    order, share their transcript, and rows that share nothing still pack by length."""
    rows = [s.input_ids if isinstance(s, TrainingSample) else list(s) for s in samples]
    padded = pack_microbatches([len(r) for r in rows], max_tokens)
    if not share_prefix:
        return padded
    trees = pack_prefix_trees(rows, min(max_tokens, tree_limit), tree_limit)

    def cost(groups: list[list[int]]) -> int:
        return sum(forward_cost([rows[i] for i in g], tree_limit) for g in groups)

    return trees if cost(trees) < cost(padded) else padded