"""Does step-level credit learn faster than outcome-only credit? Five estimators, one tiny model, many seeds, on CPU.

    python -m turngym.benchmarks.credit_learning                 # the study: 20 seeds x 5 estimators, ~10 min
    python -m turngym.benchmarks.credit_learning --quick         # a smoke version, under a minute (the test runs it)

Each (estimator, seed) run trains the same random-init 2-layer Llama (hidden 32,
``turngym.testing.tiny_llama``, init seed = the run's seed) with the RL trainer
used as a library (``RLTrainer``), on the task below, for 20 iterations, and
evaluates it greedily on all 12 held-out tasks every 2 iterations. Estimators:
grpo and rloo (outcome only), gigpo (episode + anchor-state step advantage;
defaults gamma = 0.95, omega = 1, anchors on the env's ``state_key``), spa (its
default *learned* progress estimator, ``algo.progress_source=learned``: never
the env's ground-truth ``progress``; the metrics record ``oracle_signal = 0``)
and empg (GRPO base scaled by step entropies, which the trainer computes from
the policy). Every estimator runs at its ``turngym.credit`` defaults, and all
share one set of trainer hyper-parameters (``HPARAMS``, ``AGENT_OPTIONS``,
``ITERATIONS``), chosen with GRPO alone and frozen before the study (below).

The task, ``turngym-bench/SignTrail-v0``: a trail of 4 or 5 cells, each with a
sign, "left" or "right". The agent sees only the sign of its current cell. Its
reply is one token (``agent.max_tokens = 1``) and must be a move word: the
sign's word steps forward, the other word steps back one cell (not below 0),
any other token (the vocabulary also holds the 3 ChatML specials) wastes the
step. Reward 1 on reaching the end, else 0; the budget is 12 steps. Tasks are
the 48 sign sequences of length 4 and 5; the 12 whose bits end in "11" (read as
a number, value % 4 == 3) are the held-out test split, the other 36 train. Why
this is a fair test of step-level credit:

* several decisions (4-5 forward moves, up to 12 steps) and a reward only at
  the end, so an outcome-only estimator gives every step of a trajectory the
  same credit, the wrong moves of a lucky success and the right moves of a
  failure alike;
* the state (task, cell) recurs across the 8 rollouts of a task's group and
  within a rollout (a step back or a wasted step revisits a cell), so GiGPO's
  anchor groups exist and are large;
* the step budget makes wasted and backward steps cost success;
* the right move depends on the observation, so held-out sequences test a
  learned rule (follow the sign), not memorized plans; a policy that ignores
  the sign solves at most the 2 all-"right" test trails greedily (16.7%);
* the rule is learnable by this model from this signal (the GRPO pilot below
  reaches 100% held-out on most seeds), and the random start is low but not
  zero: a step is forward with probability ~0.2 (2 of 5 tokens are move words),
  ~5% of train episodes succeed (simulated: ~10% at length 4, ~3% at length 5).

Why it looks like this (the previous design learned nothing): with 2-token
replies of which only the first move word counted, a 9-step budget, lr 0.003
and the last 4 turns in context, every method went from ~10% to ~18% train
success in 40 iterations and stalled at 0-8% held-out (10 seeds; no better at
80 iterations). Diagnosis, GRPO, one seed, 40 iterations: the invalid-action
rate fell (38% -> 3%) and the entropy with it (1.60 -> 1.22), but train success
stayed at the level of choosing a move word at random (~15-20%) and greedy
held-out success at 0 or 16.7%: the policy learned to say a move word, not to
read the sign. One-token replies alone (removing the uncounted second token
from the loss) changed nothing (train 19%, held-out 0), nor did lr 0.01 or a
1-turn context on top of it (train 22% and 16%, held-out 0).
The model *can* learn the mapping from reward: on one-step trails (a contextual
bandit) GRPO at lr 0.01 reached 100% in ~20 iterations. What blocked the
multi-step task was the reading, not the credit: the sign was one token among
the instruction's, the first observation's and the model's own move words, and
a random-init 2-layer model has to learn attention to a fixed offset before a
reward correlates with anything; with ~1-3 successes per iteration (75% of
groups all-failed) that did not happen in budget. Two changes made the rule
learnable, both the same for every estimator: the observation writes the sign
6 times (the current sign outweighs the stale ones in any average over the
context), and the context is the first observation plus the last turn
(``window: 1``); the budget rose to 12 steps so that a move-word-at-random
policy succeeds often enough (~30%) for groups to have mixed outcomes. Without
the repetition (budget 12, window 1, one token), GRPO learned the rule in 1 of
4 seeds in 60 iterations at lr 0.01 and 1 of 4 at lr 0.005; with it, below.

Hyper-parameters, GRPO-only pilot (seeds 100-105, disjoint from the study's
0-19; 40 iterations; the design above): mean greedy held-out success every 5
iterations was 6, 33, 53, 83, 86, 86, 81, 83, 83% at lr 0.005 and 6, 19, 14,
53, 64, 61, 67, 69, 75% at lr 0.01 (lr 0.03 collapsed to one word on the
bandit). lr 0.005 was taken as the faster learner; 20 iterations as the
length: GRPO learns clearly by then (6% -> 86%) and is flat afterwards, yet 2
of 6 pilot seeds sat at 50% (a partial rule), so there is room above it, and
the curves (every 2 iterations) show the speed of learning. The other settings
(4 tasks x group 8 per iteration, temperature 1, one PPO epoch, one mini-batch)
are the previous design's. Nothing was changed after the first run of the
comparison; the study's result is whatever that run printed.

Statistics, across seeds (each seed's number is its final held-out success over
the 12 test tasks): the mean with a 95% Student-t interval; for GiGPO - GRPO the
per-seed (paired: same seed, same init, same task order) differences, their
mean with a 95% t interval, a paired t-test and a Wilcoxon signed-rank test
(two-sided p). The same paired test on each seed's curve mean (held-out success
averaged over the evaluations after iteration 0, a measure of speed) is the one
secondary statistic. Curves: held-out success against iteration, the mean over
seeds with a 95% t band. Writes ``OUT/results.json`` (every run's curve and
final success, the hyper-parameters, the summary) and ``OUT/curves.png``.

Runs go to a process pool (``--workers``, default 2), one torch thread each.
This module depends on the trainer (``turngym.trainers``), the env core and
``turngym.testing``; nothing depends on it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from turngym.envs.core import TextEnv, Transition

ENV_ID = "turngym-bench/SignTrail-v0"
MOVES = ("left", "right")
LENGTHS = (4, 5)
BUDGET = 12
#: how many times an observation repeats the current sign (see the module docstring)
SIGN_REPEAT = 6
ESTIMATORS = ("grpo", "rloo", "gigpo", "spa", "empg")

#: the trainer settings every estimator shares (chosen by the GRPO-only pilot, then frozen; never tuned per method)
HPARAMS = {
    "rollout.tasks_per_iter": 4,
    "rollout.group_size": 8,
    "agent.max_tokens": 1,
    "agent.temperature": 1.0,
    "optim.lr": 0.005,
    "algo.ppo_epochs": 1,
    "algo.mini_batches": 1,
}
#: the agent: no format, no exemplars, the first observation and the last turn in context
AGENT_OPTIONS = ("{system_prompt: follow the signs, num_exemplars: 0, format_reminder: false, prefill: false, "
                 "context: window, window: 1}")
#: the study's default length; --quick shortens it
ITERATIONS, EVAL_EVERY, SEEDS = 20, 2, 20
QUICK = {"seeds": 2, "iterations": 3, "eval_every": 3}


def _all_tasks() -> list[tuple[str, ...]]:
    return [signs for n in LENGTHS for signs in itertools.product(MOVES, repeat=n)]


def _is_test(signs: tuple[str, ...]) -> bool:
    return sum((s == "right") << i for i, s in enumerate(reversed(signs))) % 4 == 3


SPLITS = {"train": [t for t in _all_tasks() if not _is_test(t)], "test": [t for t in _all_tasks() if _is_test(t)]}


class SignTrailEnv(TextEnv):
    """Follow the signs along a short trail; reward 1 at its end.

    Observation: the sign of the current cell ("left" or "right") written 6 times
    (``SIGN_REPEAT``), "goal" at the end (the first observation is preceded by the
    instruction).
    Action: exactly one move word, "left" or "right" (case and surrounding space
    ignored). The sign's word moves forward one cell, the other word back one (not
    below cell 0); anything else is an invalid action and wastes the step.
    Reward: 1.0 on the step that reaches the end, else 0. Episode: ends at the end
    of the trail; the registered step limit (the budget) is 12.
    Info: ``state_key`` (signs and cell), ``progress`` (cell / length: ground
    truth, for analysis only), ``admissible_actions``.
    Splits: train (36 sequences of length 4-5), test (12, disjoint).

    Version History:
        v0: initial version (the credit-learning benchmark's task; one-word actions, the sign shown 6 times).
    """

    def splits(self) -> dict[str, int]:
        return {name: len(tasks) for name, tasks in SPLITS.items()}

    def load_task(self, split: str, index: int) -> dict[str, Any]:
        return {"signs": list(SPLITS[split][index])}

    def validate_task(self, task: dict[str, Any]) -> dict[str, Any]:
        signs = list(task.get("signs") or [])
        if not signs or any(s not in MOVES for s in signs):
            raise ValueError(f"a SignTrail task needs 'signs', a non-empty list of {MOVES}; got {signs!r}")
        return {"signs": signs}

    def _start(self, task: dict[str, Any]) -> str:
        self.signs, self.pos = list(task["signs"]), 0
        return self._describe()

    def _describe(self) -> str:
        return "goal" if self.won else " ".join([self.signs[self.pos]] * SIGN_REPEAT)

    @property
    def instruction(self) -> str:
        return "follow the signs"

    def _apply(self, action: str) -> Transition:
        move = action.strip().lower()
        if move not in MOVES:
            return Transition(self._describe(), valid=False)
        self.pos = self.pos + 1 if move == self.signs[self.pos] else max(0, self.pos - 1)
        return Transition(self._describe(), valid=True, reward=1.0 if self.won else 0.0, terminated=self.won)

    @property
    def won(self) -> bool:
        return self.pos >= len(self.signs)

    def state_key(self) -> str:
        return f"{''.join(s[0] for s in self.signs)}:{self.pos}"

    def _get_state(self) -> Any:
        return {"signs": list(self.signs), "pos": self.pos}

    def _set_state(self, state: Any) -> None:
        self.signs, self.pos = list(state["signs"]), int(state["pos"])

    def oracle_action(self) -> str:
        return self.signs[self.pos]

    def admissible_actions(self) -> list[str] | None:
        return list(MOVES)

    def progress(self) -> float | None:
        return min(1.0, self.pos / len(self.signs))


def register() -> str:
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point=SignTrailEnv, max_episode_steps=BUDGET)
    return ENV_ID


def word_tokenizer():
    """The policy's word-level tokenizer: 3 ChatML specials and the 2 move words; every other word is <unk>."""
    from turngym.testing import word_chat_tokenizer

    return word_chat_tokenizer(MOVES)


def overrides(estimator: str, seed: int, iterations: int, eval_every: int, run_dir: Path) -> list[str]:
    """The trainer config of one run: the shared HPARAMS plus the estimator and the seed."""
    return [f"env.id={ENV_ID}", "env.split=train", "env.eval_split=test", f"env.max_steps={BUDGET}",
            f"agent.options={AGENT_OPTIONS}",
            *(f"{k}={v}" for k, v in HPARAMS.items()), f"algo.estimator={estimator}", f"run.seed={seed}",
            f"run.iterations={iterations}", f"run.eval_every={eval_every}", f"run.eval_tasks={len(SPLITS['test'])}",
            f"run.dir={run_dir}", f"run.save_every={iterations}", "run.keep_checkpoints=1", "run.progress=false",
            "run.tensorboard=false", "run.save_rollouts=false", "run.threads=1", "optim.micro_batch_tokens=4096"]


def run_one(estimator: str, seed: int, iterations: int, eval_every: int, out: str) -> dict[str, Any]:
    """Train one (estimator, seed) run; its held-out curve, train curve and the credit-input checks."""
    import torch
    import transformers

    from turngym.testing import tiny_llama
    from turngym.trainers.config import RLConfig, load_config
    from turngym.trainers.rl import RLTrainer

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notes, once per run
    transformers.utils.logging.disable_progress_bar()  # the checkpoint's "Writing model shards" bar
    register()
    t0 = time.perf_counter()
    run_dir = Path(out) / "runs" / f"{estimator}-seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a rerun into the same --out would append to the old metrics
    cfg = load_config(RLConfig, None, overrides(estimator, seed, iterations, eval_every, run_dir))
    tok = word_tokenizer()
    model = tiny_llama(tok, hidden=32, intermediate=64, max_positions=256, init=0.02, seed=seed, eval_mode=False)
    trainer = RLTrainer(cfg, model=model, tokenizer=tok)
    trainer.engine.eos_token_ids = frozenset()  # a random model would stop at random lengths
    trainer.train()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    train = [r for r in records if r["kind"] == "train"]
    checks = {k: float(np.mean([r[k] for r in train if k in r])) for k in ("oracle_signal", "spa_progress_loss",
                                                                           "step_entropy_mean")
              if any(k in r for r in train)}
    return {"estimator": estimator, "seed": seed,
            "eval_iterations": [r["iteration"] for r in evals],
            "heldout_success": [r["success_rate"] for r in evals],
            "train_success": [r["success_rate"] for r in train],
            "final_heldout_success": evals[-1]["success_rate"],
            "credit_input_checks": checks, "seconds": time.perf_counter() - t0}


# ---- statistics -----------------------------------------------------------------------------------------------


def t_interval(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and its Student-t interval across seeds (half-width 0 for one value or no spread)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2 or float(x.std(ddof=1)) == 0.0:
        return mean, mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """a - b per seed: mean, 95% t interval, paired t-test and Wilcoxon signed-rank p (two-sided)."""
    from scipy import stats

    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean, low, high = t_interval(diff)
    nonzero = diff[diff != 0]
    t_p = float(stats.ttest_rel(a, b).pvalue) if len(diff) > 1 and diff.std() > 0 else 1.0
    w_p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) > 0 else 1.0
    return {"per_seed": diff.tolist(), "mean": mean, "ci_low": low, "ci_high": high, "paired_t_p": t_p,
            "wilcoxon_p": w_p, "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum()),
            "ties": int((diff == 0).sum())}


def summarize(runs: list[dict[str, Any]], estimators: list[str], seeds: list[int]) -> dict[str, Any]:
    by = {(r["estimator"], r["seed"]): r for r in runs}
    table = {}
    for est in estimators:
        finals = [by[est, s]["final_heldout_success"] for s in seeds]
        start = [by[est, s]["heldout_success"][0] for s in seeds]
        mean, low, high = t_interval(finals)
        curve_means = [float(np.mean(by[est, s]["heldout_success"][1:])) for s in seeds]
        table[est] = {"final_mean": mean, "ci_low": low, "ci_high": high, "per_seed": finals,
                      "curve_mean": float(np.mean(curve_means)), "curve_mean_per_seed": curve_means,
                      "start_mean": float(np.mean(start)),
                      "train_success_last5": float(np.mean([np.mean(by[est, s]["train_success"][-5:]) for s in seeds]))}
    out: dict[str, Any] = {"method": "95% Student-t interval over per-seed final held-out success; paired over seeds: "
                                     "t interval of the differences, paired t-test, Wilcoxon signed-rank (two-sided)",
                           "estimators": table}
    if "gigpo" in estimators and "grpo" in estimators:
        out["gigpo_minus_grpo"] = paired(table["gigpo"]["per_seed"], table["grpo"]["per_seed"])
        out["gigpo_minus_grpo_curve_mean"] = paired(table["gigpo"]["curve_mean_per_seed"],
                                                    table["grpo"]["curve_mean_per_seed"])
    return out


def plot(runs: list[dict[str, Any]], estimators: list[str], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["estimator"], r["seed"]): r for r in runs}
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for est in estimators:
        its = by[est, seeds[0]]["eval_iterations"]
        curves = np.array([by[est, s]["heldout_success"] for s in seeds])
        bands = [t_interval(curves[:, j]) for j in range(curves.shape[1])]
        ax.plot(its, [b[0] for b in bands], marker="o", ms=3, label=est)
        ax.fill_between(its, [b[1] for b in bands], [b[2] for b in bands], alpha=0.15)
    ax.set_xlabel("iteration")
    ax.set_ylabel("held-out success (greedy)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{ENV_ID}: mean over {len(seeds)} seeds, 95% t band")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(row: dict[str, Any]) -> str:
    return f"{row['final_mean'] * 100:5.1f}%  [{row['ci_low'] * 100:5.1f}, {row['ci_high'] * 100:5.1f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds 0..N-1, the same for every estimator (paired; default {SEEDS})")
    p.add_argument("--estimators", default=",".join(ESTIMATORS), help="comma-separated turngym.credit estimators")
    p.add_argument("--iterations", type=int, default=None, help=f"training iterations per run (default {ITERATIONS})")
    p.add_argument("--eval-every", type=int, default=None, help=f"held-out evaluation period (default {EVAL_EVERY})")
    p.add_argument("--workers", type=int, default=2, help="process-pool workers (one torch thread each)")
    p.add_argument("--out", default="results/credit_learning", help="folder for results.json, curves.png, runs/")
    p.add_argument("--quick", action="store_true",
                   help=f"the 1-minute smoke version: {QUICK['seeds']} seeds, {QUICK['iterations']} iterations")
    args = p.parse_args(argv)
    estimators = [e.strip() for e in args.estimators.split(",") if e.strip()]
    n_seeds = args.seeds or (QUICK["seeds"] if args.quick else SEEDS)
    iterations = args.iterations or (QUICK["iterations"] if args.quick else ITERATIONS)
    eval_every = args.eval_every or (QUICK["eval_every"] if args.quick else EVAL_EVERY)
    seeds = list(range(n_seeds))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    jobs = [(est, s) for s in seeds for est in estimators]
    print(f"{len(jobs)} runs ({len(estimators)} estimators x {n_seeds} seeds, {iterations} iterations) on "
          f"{args.workers} workers", flush=True)
    runs = []
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(run_one, est, s, iterations, eval_every, str(out)) for est, s in jobs]
        for fut in futures:
            r = fut.result()
            runs.append(r)
            print(f"  {r['estimator']:6s} seed {r['seed']:2d}: held-out {r['final_heldout_success'] * 100:5.1f}%  "
                  f"({r['seconds']:.0f}s)", flush=True)
    wall = time.perf_counter() - t0

    summary = summarize(runs, estimators, seeds)
    plot(runs, estimators, seeds, out / "curves.png")
    result = {"env": ENV_ID, "seeds": seeds, "estimators": estimators, "iterations": iterations,
              "eval_every": eval_every, "heldout_tasks": len(SPLITS["test"]), "hparams": HPARAMS, "budget": BUDGET,
              "workers": args.workers, "wall_seconds": wall, "summary": summary, "runs": runs}
    (out / "results.json").write_text(json.dumps(result, indent=1))

    print(f"\nfinal held-out success over {n_seeds} seeds ({len(SPLITS['test'])} test tasks, greedy), "
          "mean [95% t interval]:")
    for est in estimators:
        row = summary["estimators"][est]
        print(f"  {est:6s} {_fmt(row)}   start {row['start_mean'] * 100:5.1f}%   curve mean {row['curve_mean'] * 100:5.1f}%   "
              f"train success (last 5 it.) {row['train_success_last5'] * 100:5.1f}%")
    if "gigpo_minus_grpo" in summary:
        d = summary["gigpo_minus_grpo"]
        print(f"GiGPO - GRPO (paired over seeds): {d['mean'] * 100:+.1f} points [{d['ci_low'] * 100:+.1f}, "
              f"{d['ci_high'] * 100:+.1f}], paired t p = {d['paired_t_p']:.3g}, Wilcoxon p = {d['wilcoxon_p']:.3g} "
              f"({d['wins']} wins, {d['losses']} losses, {d['ties']} ties)")
        d = summary["gigpo_minus_grpo_curve_mean"]
        print(f"  over the curve (mean held-out success of the evaluations after iteration 0): {d['mean'] * 100:+.1f} "
              f"points [{d['ci_low'] * 100:+.1f}, {d['ci_high'] * 100:+.1f}], paired t p = {d['paired_t_p']:.3g}, "
              f"Wilcoxon p = {d['wilcoxon_p']:.3g} ({d['wins']} wins, {d['losses']} losses, {d['ties']} ties)")
    print(f"wall {wall:.0f}s; wrote {out / 'results.json'} and {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
