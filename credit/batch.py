"""`StepBatch`, the one input of every credit estimator, and the estimator registry.

A batch is one row per agent step, as flat arrays. Rows may come in any
order; every estimator returns advantages aligned to the input rows.

The batch works out once, at construction, where each row sits in its
trajectory (:class:`TrajectoryLayout`, from :meth:`StepBatch.layout`) and
caches dense integer codes of its id fields (:meth:`StepBatch.codes`), so
estimators never repeat that work. Treat a batch as immutable: the caches
follow a field that is reassigned, not one changed in place.

This module depends on nothing of ours (numpy only; torch tensors are
accepted and converted).
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# Fields every batch has, and the optional ones some estimators need.
REQUIRED_FIELDS = ("group_id", "traj_id", "step", "reward")
OPTIONAL_FIELDS = (
    "state_key",  # hashable digest of the true env state (GiGPO anchors)
    "observation",  # observation text (GiGPO's text grouping, for envs without state_key)
    "values",  # critic values V(s_t) (GAE)
    "progress",  # per-step progress estimates (SPA)
    "info_gain",  # per-step information gain, or ...
    "gold_logprob",  # ... log-prob of the gold answer given the context the step acts on (IGPO)
    "num_tool_calls",  # per-trajectory tool-call count, repeated on its rows (Stratified GRPO)
    "entropy",  # per-step policy entropy (EMPG)
    "action_valid",  # 1 if the env executed the step's action, else 0 (SPA's grounding signal)
)
_FLOAT_FIELDS = ("values", "progress", "info_gain", "gold_logprob", "entropy", "action_valid")


def _plain(x: Any) -> Any:
    """A numpy scalar as the Python value it holds, so error messages read 't', not np.str_('t')."""
    return x.item() if isinstance(x, np.generic) else x


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise ValueError("StepBatch fields must be 1-D arrays with one entry per step, got a scalar")
    if arr.ndim > 1 and not isinstance(x, np.ndarray) and all(isinstance(v, tuple) for v in x):
        arr = np.fromiter(x, dtype=object, count=len(x))  # tuple ids, e.g. (task, seed): one entry each
    return arr


@dataclass(frozen=True)
class TrajectoryLayout:
    """Where each row of a batch sits in its trajectory (see :meth:`StepBatch.layout`).

    Per-row arrays are aligned to the batch's input rows; per-trajectory arrays
    are indexed by trajectory code (``traj``), per-group ones by group code.

    Attributes:
        order: row indices sorted by (trajectory, step): the rows of a
            trajectory are contiguous there, in turn order.
        traj: trajectory code of each row, 0..num_trajectories-1.
        group: group code of each row, 0..num_groups-1.
        position: rank of each row within its trajectory (0 = first step). Gaps
            in ``step`` are closed: steps 0, 2, 5 have positions 0, 1, 2.
        length: number of steps of each trajectory.
        traj_group: group code of each trajectory.
    """

    order: np.ndarray
    traj: np.ndarray
    group: np.ndarray
    position: np.ndarray
    length: np.ndarray
    traj_group: np.ndarray

    @property
    def num_trajectories(self) -> int:
        return len(self.length)

    @property
    def num_groups(self) -> int:
        return int(self.traj_group.max()) + 1 if len(self.traj_group) else 0


@dataclass
class StepBatch:
    """One row per agent step; flat arrays of equal length.

    Attributes:
        group_id: rollouts of the same task share it (any hashable values).
        traj_id: identifies the trajectory a step belongs to (unique across groups).
        step: turn index within its trajectory (0, 1, ...).
        reward: per-step reward; the outcome reward sits on the final step.
        state_key: hashable digest of the true env state before the step's action.
        observation: the observation text the step acted on.
        values: critic value of the state (GAE).
        progress: estimated progress / per-step contribution (SPA).
        info_gain: per-step information-gain reward (IGPO).
        gold_logprob: mean token log-prob of the gold answer given the context the step
            acts on, i.e. after the trajectory's earlier steps (step 0: the prompt alone) (IGPO).
        num_tool_calls: the trajectory's number of tool calls, on each of its rows.
        entropy: the policy's mean token entropy on the step's response (EMPG).
        action_valid: 1 if the env accepted / executed the step's action, else 0 (SPA).
    """

    group_id: Any
    traj_id: Any
    step: Any
    reward: Any
    state_key: Any = None
    observation: Any = None
    values: Any = None
    progress: Any = None
    info_gain: Any = None
    gold_logprob: Any = None
    num_tool_calls: Any = None
    entropy: Any = None
    action_valid: Any = None

    def __post_init__(self) -> None:
        n = None
        for name in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is None:
                if name in REQUIRED_FIELDS:
                    raise ValueError(f"StepBatch.{name} is required")
                continue
            arr = _to_numpy(value)
            if arr.ndim != 1:
                raise ValueError(f"StepBatch.{name} must be 1-D (one entry per step), got shape {arr.shape}")
            if n is None:
                n = len(arr)
            elif len(arr) != n:
                raise ValueError(f"StepBatch.{name} has {len(arr)} rows but group_id has {n}")
            setattr(self, name, arr)
        if self.step.dtype.kind not in "iub" and not (
            self.step.dtype.kind == "f" and np.all(np.isfinite(self.step)) and np.all(self.step == np.round(self.step))
        ):
            raise ValueError(f"StepBatch.step must hold integer turn indices, got dtype {self.step.dtype}")
        self.step = self.step.astype(np.int64)
        self.reward = self.reward.astype(np.float64)
        for name in _FLOAT_FIELDS:
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).astype(np.float64))
        if not np.all(np.isfinite(self.reward)):
            raise ValueError("StepBatch.reward has NaN or inf entries")
        if len(self.step) and self.step.min() < 0:
            raise ValueError("StepBatch.step must be >= 0 (turn index within the trajectory)")
        self._cache: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self.layout()  # validates the trajectories and caches the layout

    def __len__(self) -> int:
        return len(self.reward)

    def require(self, estimator: str, *names: str) -> None:
        """Raise a clear error if an optional field an estimator needs is missing."""
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"estimator {estimator!r} needs StepBatch field(s) {missing}; pass them when building the batch"
            )

    def codes(self, name: str) -> np.ndarray:
        """Dense int64 codes 0..k-1 of field ``name`` (equal values, equal codes), computed once per batch."""
        if name not in REQUIRED_FIELDS + OPTIONAL_FIELDS:
            raise ValueError(f"StepBatch has no field {name!r}")
        arr = getattr(self, name)
        if arr is None:
            raise ValueError(f"StepBatch.{name} is not set")

        def compute() -> np.ndarray:
            try:
                return factorize(arr)
            except TypeError as err:
                raise TypeError(f"StepBatch.{name} entries must be hashable: {err}") from None

        return self._cached(f"codes:{name}", (arr,), compute)

    def layout(self) -> TrajectoryLayout:
        """Where each row sits in its trajectory; computed once per batch (see :class:`TrajectoryLayout`).

        Raises ValueError if a trajectory spans two groups or repeats a step index.
        """
        return self._cached("layout", (self.group_id, self.traj_id, self.step), self._build_layout)

    def _cached(self, key: str, inputs: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        hit = self._cache.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], inputs)):
            return hit[1]
        value = compute()
        self._cache[key] = (inputs, value)
        return value

    def _build_layout(self) -> TrajectoryLayout:
        """Each trajectory lies in one group and has distinct step indices; sort rows by (trajectory, step)."""
        n = len(self)
        traj = self.codes("traj_id")
        group = self.codes("group_id")
        num_traj = int(traj.max()) + 1 if n else 0
        traj_group = np.full(num_traj, -1, dtype=np.int64)
        traj_group[traj] = group
        split = np.flatnonzero(traj_group[traj] != group)
        if len(split):
            i = split[0]
            other = np.flatnonzero(traj == traj[i])
            groups = sorted({repr(g) for g in self.group_id[other].tolist()})
            raise ValueError(
                f"StepBatch: trajectory (traj_id) {_plain(self.traj_id[i])!r} appears in more than one group_id "
                f"({', '.join(groups)}); a trajectory belongs to one group"
            )
        span = int(self.step.max()) + 1 if n else 1
        if num_traj * span <= 4 * n + 1024:  # a counting sort: O(n), no comparison sort
            key = traj * span + self.step  # unique per row iff the (trajectory, step) pairs are
            slot = np.full(num_traj * span, -1, dtype=np.int64)
            slot[key] = np.arange(n, dtype=np.int64)
            order = slot[slot >= 0]
            dup_rows = np.flatnonzero(key == np.argmax(np.bincount(key))) if len(order) != n else []
        else:
            order = np.argsort(traj * span + self.step) if num_traj * span < 2**62 else np.lexsort((self.step, traj))
            t, s = traj[order], self.step[order]
            same = np.flatnonzero((t[1:] == t[:-1]) & (s[1:] == s[:-1]))
            dup_rows = order[same[:1]]
        if len(dup_rows):
            i = dup_rows[0]
            raise ValueError(
                f"StepBatch: (traj_id, step) = ({_plain(self.traj_id[i])!r}, {self.step[i]}) appears twice; "
                "step must be unique within a trajectory"
            )
        traj_sorted = traj[order]
        length = np.bincount(traj, minlength=num_traj)
        start = np.cumsum(length) - length
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n, dtype=np.int64) - start[traj_sorted]
        return TrajectoryLayout(
            order=order, traj=traj, group=group, position=position, length=length, traj_group=traj_group
        )


def factorize(values: np.ndarray) -> np.ndarray:
    """Dense integer codes 0..k-1 for any 1-D array of hashables (equal values, equal codes).

    Codes are labels only: their order carries no meaning. Integers in a range
    not much wider than the array are coded by a lookup table; other numbers by
    ``np.unique``. Strings and other objects are hashed, and every row is then
    checked against a representative row of its code, so a hash collision
    falls back to an exact dict-based pass instead of merging unequal values.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"factorize needs a 1-D array, got shape {values.shape}")
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    if values.dtype.kind in "iub":
        return _factorize_ints(values.astype(np.int64) if values.dtype.kind == "b" else values)
    if values.dtype.kind in "fcmM":
        return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64, copy=False)
    items = values.tolist()
    hashes = np.fromiter(map(hash, items), dtype=np.int64, count=len(items))
    codes = _factorize_ints(hashes)
    if values.dtype.kind != "O":
        values = np.empty(len(items), dtype=object)
        values[:] = items
    some_row = np.empty(int(codes.max()) + 1, dtype=np.int64)
    some_row[codes] = np.arange(len(codes))
    if bool(np.all(np.equal(values, values[some_row[codes]]))):
        return codes
    seen: dict[Any, int] = {}  # a hash collision: exact, slower pass
    return np.fromiter((seen.setdefault(v, len(seen)) for v in items), dtype=np.int64, count=len(items))


def _factorize_ints(values: np.ndarray) -> np.ndarray:
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 4 * len(values) + 1024:  # dense enough for a lookup table: O(n), no sort
        shifted = (values - lo).astype(np.int64, copy=False) if lo else values.astype(np.int64, copy=False)
        present = np.zeros(hi - lo + 1, dtype=np.int64)
        present[shifted] = 1
        return (np.cumsum(present) - 1)[shifted]
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.int64, copy=False)


Estimator = Callable[..., np.ndarray]
#: name -> estimator function ``f(batch, **hparams) -> np.ndarray`` of per-step advantages.
ESTIMATORS: dict[str, Estimator] = {}
#: what an estimator reads beyond the required fields: a tuple of optional field names, or a function of
#: its hyper-parameters giving that tuple (see :func:`estimator_inputs`).
Inputs = tuple[str, ...] | Callable[..., tuple[str, ...]]
_INPUTS: dict[str, Inputs] = {}


def register_estimator(name: str, *, inputs: Inputs = ()) -> Callable[[Estimator], Estimator]:
    """Decorator adding an estimator to :data:`ESTIMATORS` under ``name``.

    ``inputs`` declares the optional :class:`StepBatch` fields (``OPTIONAL_FIELDS``) the estimator
    needs, so a trainer can fill exactly those: a tuple, or a function ``f(**hparams) -> tuple``
    when the need depends on the hyper-parameters (e.g. GiGPO's anchor field). Where an estimator
    accepts one of several fields, it declares the one a trainer should provide.
    """
    names = () if callable(inputs) else tuple(inputs)
    unknown = [n for n in names if n not in OPTIONAL_FIELDS]
    if unknown:
        raise ValueError(f"estimator {name!r} declares unknown inputs {unknown}; StepBatch has {OPTIONAL_FIELDS}")

    def wrap(fn: Estimator) -> Estimator:
        if name in ESTIMATORS and ESTIMATORS[name] is not fn:
            raise ValueError(f"credit estimator {name!r} is registered twice")
        ESTIMATORS[name] = fn
        _INPUTS[name] = inputs
        return fn

    return wrap


def estimator_inputs(name: str, **hparams: Any) -> tuple[str, ...]:
    """The optional StepBatch fields estimator ``name`` needs with these hyper-parameters.

    Defaults of the estimator's signature fill the hyper-parameters not given, so
    ``estimator_inputs("spa")`` is ``("progress", "action_valid")`` and
    ``estimator_inputs("spa", beta=0.0)`` is ``("progress",)``.
    """
    check_estimator(name, hparams)
    inputs = _INPUTS.get(name, ())
    if callable(inputs):
        params = list(inspect.signature(ESTIMATORS[name]).parameters.values())[1:]
        full = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        full.update(hparams)
        inputs = tuple(inputs(**full))
        unknown = [n for n in inputs if n not in OPTIONAL_FIELDS]
        if unknown:
            raise ValueError(f"estimator {name!r} declared unknown inputs {unknown}")
    return tuple(dict.fromkeys(inputs))


def _check_hparams(name: str, fn: Estimator, hparams: dict[str, Any]) -> None:
    """Unknown hyperparameters are an error that names the closest known one."""
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first one is the batch
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in hparams:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(
                f"credit estimator {name!r} has no hyperparameter {key!r}{hint} (known: {', '.join(known) or 'none'})"
            )


def check_estimator(name: str, hparams: dict[str, Any] | None = None) -> None:
    """Raise before any work if ``name`` is not a registered estimator or ``hparams`` has a key it lacks.

    Unknown names are a ``KeyError`` and unknown hyperparameters a ``TypeError``, each naming the
    closest known one. Config loaders call this so a typo fails before the first rollout.
    """
    if name not in ESTIMATORS:
        close = difflib.get_close_matches(name, list(ESTIMATORS), n=2)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"unknown credit estimator {name!r}{hint} (known: {', '.join(sorted(ESTIMATORS))})")
    _check_hparams(name, ESTIMATORS[name], dict(hparams or {}))


def compute_advantages(name: str, batch: StepBatch, **hparams: Any) -> np.ndarray:
    """Per-step advantages (float64, aligned to the batch rows) from estimator ``name``."""
    check_estimator(name, hparams)
    if not isinstance(batch, StepBatch):
        raise TypeError(f"compute_advantages needs a StepBatch, got {type(batch).__name__}")
    fn = ESTIMATORS[name]
    adv = np.asarray(fn(batch, **hparams), dtype=np.float64)
    if adv.shape != (len(batch),):
        raise AssertionError(f"estimator {name!r} returned shape {adv.shape}, expected ({len(batch)},)")
    if not np.all(np.isfinite(adv)):
        raise FloatingPointError(f"estimator {name!r} returned NaN or inf advantages; this is a bug, please report it")
    return adv
