"""Blocks-world tasks: the task dict, its validation, and the seeded generator.

A task is a JSON-able dict::

    {
      "blocks": ["red", "blue", "orange"],       # optional; canonical order after validation
      "init": [["blue", "red"], ["orange"]],     # towers, each bottom to top
      "holding": null,                           # optional: a block in the hand at the start
      "goal": [["red", "orange"]],               # [X, Y]: X on top of Y; Y may be "table"
      "optimal_length": 2,                       # optional metadata, as are the keys below
      "gold_plan": ["unstack the red block from on top of the blue block", ...],
      "source": "generated", "instance": "instance-5.pddl", "task_id": "train/0"
    }

Generated splits. A start state is a hand-empty configuration drawn exactly
uniformly: ``a(n) = sum_k L(n, k)`` configurations of ``n`` labelled blocks
(OEIS A000262: 1, 3, 13, 73, 501, ...), where the Lah number
``L(n, k) = C(n-1, k-1) n!/k!`` counts those with ``k`` towers. Draw ``k``
with probability ``L(n, k)/a(n)``, a uniform permutation of the blocks and a
uniform composition of ``n`` into ``k`` parts: the ordered list of towers is
uniform, and each configuration of ``k`` towers is made by exactly ``k!``
lists, so it is uniform too. A goal is the ``on`` facts of another uniform
configuration (one with at least one tower of two), keeping a uniform number
``1..m`` of its ``m`` facts, chosen uniformly (PlanBench goals are such
subsets). Draws of ``(n uniform in range, start, goal)`` go to the bucket of
their optimal plan length when that bucket (an even length in range) is not
full yet and the pair is new (never a packaged PlanBench problem, and, for "test", not in "train"), until every
bucket is full: each bucket holds the uniform draw conditioned on its length.
Plans from a hand-empty start to ``on`` goals always have even length, and
never more than ``4(n-1)`` moves (every block not on the table moves at most
twice), so block counts that cannot reach any open bucket are not drawn.
Cost: a draw costs one BFS over all states (cached per goal). Measured (CPU):
600 tasks of 3-5 blocks 0.2 s, of 6 blocks 1.6 s, of 7 blocks 31 s; 12 tasks
of 8 blocks 17 s (0.2 s a draw), so 8 blocks suit small splits only.

This module depends on nothing else of ours but :mod:`.world`, :mod:`.solver`,
:mod:`turngym.errors` and (lazily, for the excluded problems) :mod:`.planbench`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from typing import Any

from turngym.envs.blocksworld.solver import EXACT_MAX_BLOCKS, optimal_length
from turngym.envs.blocksworld.world import (
    HAND,
    NAME_PATTERN,
    RESERVED_WORDS,
    TABLE,
    Problem,
    block_name,
    canonical_order,
    goal_holds,
    stacks_of,
)
from turngym.errors import TaskError

#: Keys a task dict may carry besides ``init`` and ``goal``.
OPTIONAL_KEYS = ("blocks", "holding", "optimal_length", "gold_plan", "source", "instance", "task_id")
MAX_BLOCKS = 48
MAX_NAME_LENGTH = 32


# ---- uniform configurations ----------------------------------------------------------------------
def lah(n: int, k: int) -> int:
    """Unsigned Lah number: ways to split ``n`` labelled blocks into ``k`` unordered non-empty towers."""
    if n == k == 0:
        return 1
    if not 1 <= k <= n:
        return 0
    return math.comb(n - 1, k - 1) * math.factorial(n) // math.factorial(k)


def count_configurations(n: int) -> int:
    """Hand-empty configurations of ``n`` labelled blocks (OEIS A000262)."""
    return sum(lah(n, k) for k in range(n + 1))


def sample_configuration(n: int, rng: random.Random) -> tuple[int, ...]:
    """A hand-empty configuration of ``n`` blocks, exactly uniform (see the module docstring)."""
    r = rng.randrange(count_configurations(n)) if n else 0
    k = 0
    while r >= lah(n, k):
        r -= lah(n, k)
        k += 1
    order = list(range(n))
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, n), k - 1)) if k > 1 else []
    below = [TABLE] * n
    for start, end in zip([0] + cuts, cuts + [n], strict=True):
        for i in range(start + 1, end):
            below[order[i]] = order[i - 1]
    return tuple(below)


def sample_goal(n: int, rng: random.Random) -> tuple[tuple[int, int], ...]:
    """A uniform non-empty subset (uniform size, then uniform facts) of a random configuration's ``on`` facts."""
    if n < 2:
        raise ValueError("a goal of 'on' facts needs at least 2 blocks")
    while True:
        facts = [(x, b) for x, b in enumerate(sample_configuration(n, rng)) if b >= 0]
        if facts:
            break
    size = rng.randint(1, len(facts))
    return tuple(sorted(rng.sample(facts, size)))


# ---- generated splits ----------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorConfig:
    """What the generated "train"/"test" splits are made of (see :class:`BlocksWorldEnv`'s arguments)."""

    min_blocks: int = 3
    max_blocks: int = 5
    min_length: int = 2
    max_length: int = 12
    train_per_length: int = 100
    test_per_length: int = 50
    seed: int = 0

    @property
    def lengths(self) -> list[int]:
        return [length for length in range(self.min_length, self.max_length + 1) if length % 2 == 0]

    def size(self, split: str) -> int:
        per = self.train_per_length if split == "train" else self.test_per_length
        return per * len(self.lengths)

    def check(self) -> None:
        if not 2 <= self.min_blocks <= self.max_blocks <= EXACT_MAX_BLOCKS:
            raise TaskError(f"num_blocks ({self.min_blocks}, {self.max_blocks}) is out of range: generated splits "
                            f"need 2 <= min <= max <= {EXACT_MAX_BLOCKS} (buckets use exact optimal plan lengths)")
        if not 0 < self.min_length <= self.max_length or not self.lengths:
            raise TaskError(f"plan_length ({self.min_length}, {self.max_length}) must be a range of positive "
                            "lengths holding at least one even number (these plans always have even length)")
        too_long = max_plan_length(self.max_blocks)
        if self.lengths[-1] > too_long:
            raise TaskError(f"plan_length up to {self.max_length} is unreachable with at most {self.max_blocks} "
                            f"blocks (at most {too_long} moves); lower plan_length or raise num_blocks")
        for name in ("train_per_length", "test_per_length"):
            if getattr(self, name) < 0:
                raise TaskError(f"{name} must be >= 0, got {getattr(self, name)}")


def max_plan_length(n: int) -> int:
    """An upper bound of optimal plan lengths from hand-empty states of ``n`` blocks: ``4(n-1)``."""
    return 4 * (n - 1)


def _seed(config: GeneratorConfig, split: str) -> int:
    digest = hashlib.sha256(f"turngym/blocksworld/{split}/{config.seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


_GENERATED: dict[tuple[GeneratorConfig, str], list[dict[str, Any]]] = {}


def generated_split(config: GeneratorConfig, split: str) -> list[dict[str, Any]]:
    """The tasks of generated split ``"train"`` or ``"test"`` (made once per process and config)."""
    key = (config, split)
    if key not in _GENERATED:
        exclude = set(planbench_keys())
        if split == "test":
            exclude |= {pair_key(t) for t in generated_split(config, "train")}
        _GENERATED[key] = _generate(config, split, exclude)
    return _GENERATED[key]


_PLANBENCH_KEYS: frozenset[str] | None = None


def planbench_keys() -> frozenset[str]:
    """The :func:`pair_key` of every packaged PlanBench problem: no generated task is one of them, so training on
    generated tasks never trains on a PlanBench split held out for evaluation."""
    global _PLANBENCH_KEYS
    if _PLANBENCH_KEYS is None:
        from turngym.envs.blocksworld.planbench import PACKAGED_SPLITS, packaged_split  # it imports this module

        _PLANBENCH_KEYS = frozenset(pair_key(t) for name in PACKAGED_SPLITS for t in packaged_split(name))
    return _PLANBENCH_KEYS


def _generate(config: GeneratorConfig, split: str, exclude: set[str]) -> list[dict[str, Any]]:
    """Fill every length bucket from one stream of draws, then list the buckets by length."""
    rng = random.Random(_seed(config, split))
    per = config.train_per_length if split == "train" else config.test_per_length
    buckets: dict[int, list[dict[str, Any]]] = {length: [] for length in config.lengths}
    open_lengths = {length for length in buckets if per > 0}
    sizes = range(config.min_blocks, config.max_blocks + 1)
    seen = set(exclude)
    limit = 10_000 + 2_000 * per * len(buckets)
    draws = 0
    while open_lengths:
        draws += 1
        if draws > limit:
            short = sorted(open_lengths)
            raise TaskError(f"could not draw {per} distinct {split} tasks of plan length {short} with "
                            f"{config.min_blocks}..{config.max_blocks} blocks in {limit} draws; "
                            "narrow plan_length, widen num_blocks or ask for fewer tasks per length")
        # Block counts that cannot reach any open length are skipped: their draws would all be
        # rejected, so skipping them leaves each bucket's distribution unchanged.
        n = rng.choice([n for n in sizes if max_plan_length(n) >= min(open_lengths)])
        below, goal = sample_configuration(n, rng), sample_goal(n, rng)
        length = optimal_length(below, goal)
        if length not in open_lengths:
            continue
        task = problem_to_task(Problem(tuple(block_name(i) for i in range(n)), below, goal))
        key = pair_key(task)
        if key in seen:
            continue
        seen.add(key)
        task["optimal_length"] = length
        task["source"] = "generated"
        buckets[length].append(task)
        if len(buckets[length]) == per:
            open_lengths.discard(length)
    return [task for length in sorted(buckets) for task in buckets[length]]


def pair_key(task: dict[str, Any]) -> str:
    """A canonical text of a task's (start, goal), to test two tasks for the same problem."""
    init = sorted(task["init"])
    return json.dumps([init, task.get("holding"), sorted(task["goal"])])


# ---- task dicts <-> problems ---------------------------------------------------------------------
def problem_to_task(problem: Problem) -> dict[str, Any]:
    names = problem.names
    held = next((names[x] for x, b in enumerate(problem.below) if b == HAND), None)
    task: dict[str, Any] = {
        "blocks": list(names),
        "init": [[names[x] for x in tower] for tower in stacks_of(problem.below)],
        "goal": [[names[x], "table" if y == TABLE else names[y]] for x, y in problem.goal],
    }
    if held is not None:
        task["holding"] = held
    return task


def task_to_problem(task: dict[str, Any]) -> Problem:
    """The :class:`Problem` of a validated task dict."""
    names = canonical_order(task["blocks"])
    index = {name: i for i, name in enumerate(names)}
    below = [HAND] * len(names)
    for tower in task["init"]:
        for pos, name in enumerate(tower):
            below[index[name]] = TABLE if pos == 0 else index[tower[pos - 1]]
    goal = tuple(sorted((index[x], TABLE if y == "table" else index[y]) for x, y in task["goal"]))
    return Problem(names, tuple(below), goal)


def validate_task(task: Any) -> dict[str, Any]:
    """Check a task dict and return it normalized (canonical block order, sorted goal); raise TaskError."""
    if not isinstance(task, dict):
        raise TaskError(f"a BlocksWorld task must be a dict, got {type(task).__name__}")
    unknown = sorted(set(task) - {"init", "goal", *OPTIONAL_KEYS})
    if unknown:
        raise TaskError(f"task has unknown field(s) {unknown}; known fields: 'init', 'goal', "
                        + ", ".join(repr(k) for k in OPTIONAL_KEYS))
    for field in ("init", "goal"):
        if field not in task:
            raise TaskError(f"task is missing the field {field!r}")

    init = task["init"]
    if not isinstance(init, list) or not all(isinstance(t, list) and t for t in init):
        raise TaskError("task field 'init' must be a list of towers, each a non-empty list of block names "
                        "from bottom to top, e.g. [['blue', 'red'], ['orange']]")
    held = task.get("holding")
    names = [n for tower in init for n in tower] + ([held] if held is not None else [])
    for tower in init:
        for name in tower:
            _check_name(name, "init")
    if held is not None:
        _check_name(held, "holding")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise TaskError(f"task field 'init' places block {dup!r} twice (counting 'holding')")
    if not 1 <= len(names) <= MAX_BLOCKS:
        raise TaskError(f"task field 'init' must hold 1..{MAX_BLOCKS} blocks, got {len(names)}")
    if "blocks" in task:
        blocks = task["blocks"]
        if not isinstance(blocks, list) or sorted(map(str, blocks)) != sorted(names) or len(blocks) != len(names):
            raise TaskError(f"task field 'blocks' {blocks!r} must list exactly the blocks of 'init' and 'holding' "
                            f"({sorted(names)})")

    goal = task["goal"]
    if not isinstance(goal, list) or not goal:
        raise TaskError("task field 'goal' must be a non-empty list of [X, Y] facts (X on top of Y; Y may be 'table')")
    facts = set()
    for fact in goal:
        if not (isinstance(fact, (list, tuple)) and len(fact) == 2 and all(isinstance(f, str) for f in fact)):
            raise TaskError(f"task field 'goal' has the entry {fact!r}; each must be [X, Y] with X on top of Y")
        x, y = fact
        for name in (x, y) if y != "table" else (x,):
            if name not in names:
                raise TaskError(f"task field 'goal' names the block {name!r}, which is not in 'init' or 'holding'")
        if x == y:
            raise TaskError(f"task field 'goal' asks the {x} block to be on top of itself")
        facts.add((x, y))
    support, carried = {}, {}
    for x, y in sorted(facts):
        if x in support:
            raise TaskError(f"task field 'goal' asks the {x} block to be on both {support[x]!r} and {y!r}")
        if y != "table" and y in carried:
            raise TaskError(f"task field 'goal' asks both {carried[y]!r} and {x!r} to be directly on the {y} block")
        support[x] = y
        if y != "table":
            carried[y] = x
    for start in support:  # no cycles: follow supports down to the table or a block with no goal support
        seen, x = set(), start
        while x in support and support[x] != "table":
            if x in seen:
                raise TaskError(f"task field 'goal' has a cycle of blocks on top of one another (through {x!r})")
            seen.add(x)
            x = support[x]

    normalized = {k: v for k, v in task.items() if k in OPTIONAL_KEYS and k not in ("blocks", "holding")}
    blocks = list(canonical_order(names))
    normalized.update(blocks=blocks, init=[list(t) for t in init], goal=[list(f) for f in sorted(facts)])
    if held is not None:
        normalized["holding"] = held
    problem = task_to_problem(normalized)
    normalized = {**normalized, **problem_to_task(problem)}  # canonical towers and goal order
    if goal_holds(problem.below, problem.goal):
        raise TaskError("task field 'goal' already holds in the initial state: there is nothing to do")
    if "gold_plan" in task and not (isinstance(task["gold_plan"], list)
                                    and all(isinstance(a, str) for a in task["gold_plan"])):
        raise TaskError("task field 'gold_plan' must be a list of action strings")
    if "optimal_length" in task and not (isinstance(task["optimal_length"], int) and task["optimal_length"] >= 0):
        raise TaskError(f"task field 'optimal_length' must be an int >= 0, got {task['optimal_length']!r}")
    return normalized


def _check_name(name: Any, field: str) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
        raise TaskError(f"task field {field!r} has the block name {name!r}; a name must be one lowercase word "
                        f"(letters, digits, '_' or '-', starting with a letter, at most {MAX_NAME_LENGTH} characters)")
    if name in RESERVED_WORDS:
        raise TaskError(f"task field {field!r} has the block name {name!r}, a word that actions use; rename it")
