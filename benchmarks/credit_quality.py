"""Credit quality against ground truth: do step advantages rank good steps above bad ones?

Only turngym's envs expose the ground truth this needs: ``info["progress"]``
(true closeness to the goal) before and after every step. We roll out a
mixed policy (the oracle's action with probability p, a uniformly random
admissible action otherwise) in groups of G rollouts per task, compute every
estimator's per-step advantages, and score them against the true progress
change of each step:

* AUC: probability that a step which increased progress gets a higher
  advantage than a step which decreased it (ties count 1/2; steps that left
  progress unchanged are left out). 0.5 is chance.
* Spearman: rank correlation of advantage and progress change over all steps.

GiGPO is run with three anchors: the env's true ``state_key``, the exact
observation text (what verl-agent and ROLL group on), and observation
similarity. SPA gets its per-step contributions from a progress estimator
fitted on the same rollouts (linear, on hashed (state_key, action) features,
so that contributions of a trajectory sum to its outcome). GAE runs without a
critic (values 0). IGPO (needs the gold answer's log-probs under an LLM) and
Stratified GRPO (needs tool-call counts) have no meaning on a policy without
an LLM or tools, and are left out.

    python -m turngym.benchmarks.credit_quality --env turngym/BlocksWorld-v0 --tasks 64 --group-size 8 --p-oracle 0.5

Prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

import turngym
from turngym.credit import StepBatch, compute_advantages
from turngym.credit.gigpo import anchor_groups
from turngym.credit.spa import fit_progress_estimator, spa_rewards


def mixed_policy_entropy(n_actions: int, oracle_in_set: bool, p: float) -> float:
    """Entropy of pi(a|s) = p [a = oracle] + (1-p)/n over the admissible actions."""
    if n_actions <= 0:
        return 0.0
    probs = np.full(n_actions, (1 - p) / n_actions)
    if oracle_in_set:
        probs[0] += p
    probs = probs[probs > 0]
    return float(-(probs * np.log(probs)).sum())


def rollout(env_id: str, split: str, tasks: int, group_size: int, p_oracle: float, seed: int) -> dict[str, np.ndarray]:
    """Play groups of mixed-policy episodes; return flat per-step arrays."""
    env = turngym.make(env_id, split=split)
    rng = np.random.default_rng(seed)
    task_ids = env.unwrapped.task_ids(split)
    chosen = [task_ids[i] for i in rng.permutation(len(task_ids))[:tasks]]
    rows: dict[str, list] = {k: [] for k in ("group_id", "traj_id", "step", "reward", "state_key", "observation",
                                             "entropy", "action_valid", "delta_progress", "action", "won")}
    traj = 0
    for g, task_id in enumerate(chosen):
        for _ in range(group_size):
            obs, info = env.reset(seed=int(rng.integers(2**31)), options={"task_id": task_id})
            t = 0
            while True:
                base = env.unwrapped
                admissible = info.get("admissible_actions") or []
                oracle = base.oracle_action()
                action = oracle if (rng.random() < p_oracle or not admissible) else admissible[rng.integers(len(admissible))]
                ordered = [oracle] + [a for a in admissible if a != oracle]
                entropy = mixed_policy_entropy(len(ordered), True, p_oracle)
                before_key, before_progress = info["state_key"], info["progress"]
                obs_next, reward, terminated, truncated, info = env.step(action)
                for k, v in (("group_id", g), ("traj_id", traj), ("step", t), ("reward", reward),
                             ("state_key", before_key), ("observation", obs), ("entropy", entropy),
                             ("action_valid", info["action_valid"]),
                             ("delta_progress", info["progress"] - before_progress), ("action", action),
                             ("won", info["won"])):
                    rows[k].append(v)
                obs, t = obs_next, t + 1
                if terminated or truncated:
                    break
            traj += 1
    return {k: np.asarray(v) for k, v in rows.items()}


def hashed_features(state_key: np.ndarray, action: np.ndarray, dim: int) -> np.ndarray:
    """One-hot of hash(state_key, action) into ``dim`` buckets (a tabular progress model)."""
    x = np.zeros((len(state_key), dim))
    for i, (s, a) in enumerate(zip(state_key.tolist(), action.tolist())):
        x[i, int(hashlib.sha1(f"{s}|{a}".encode()).hexdigest()[:8], 16) % dim] = 1.0
    return x


def ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 1-based."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    r = np.empty(len(x))
    boundaries = np.flatnonzero(np.diff(sorted_x)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(x)]])
    for s, e in zip(starts, ends):
        r[order[s:e]] = (s + e + 1) / 2
    return r


def auc(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray) -> float:
    """Mann-Whitney AUC of positives over negatives (ties 1/2)."""
    pos, neg = scores[positive], scores[negative]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    r = ranks(np.concatenate([pos, neg]))
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def evaluate(data: dict[str, np.ndarray], feature_dim: int) -> list[dict]:
    outcome = np.zeros(len(data["reward"]))
    traj_return = np.bincount(data["traj_id"], weights=data["reward"])
    outcome[:] = traj_return[data["traj_id"]]
    spa_model = fit_progress_estimator(hashed_features(data["state_key"], data["action"], feature_dim),
                                       data["traj_id"], outcome, l2=1e-3)
    contributions = spa_model(hashed_features(data["state_key"], data["action"], feature_dim))
    batch = StepBatch(group_id=data["group_id"], traj_id=data["traj_id"], step=data["step"], reward=data["reward"],
                      state_key=data["state_key"], observation=data["observation"],
                      values=np.zeros(len(data["reward"])), progress=contributions, entropy=data["entropy"],
                      action_valid=data["action_valid"])
    runs = [
        ("grpo", "grpo", {}), ("dr_grpo", "dr_grpo", {}), ("rloo", "rloo", {}),
        ("reinforce_pp", "reinforce_pp", {}), ("gae (no critic)", "gae", {}),
        ("gigpo [state_key]", "gigpo", {"anchor": "state_key"}),
        ("gigpo [observation]", "gigpo", {"anchor": "observation"}),
        ("gigpo [obs similarity 0.95]", "gigpo", {"anchor": "observation_similarity"}),
        ("spa (linear estimator)", "spa", {}), ("empg", "empg", {}),
    ]
    # SPA's signal itself, before return-to-go accumulation: the fused step reward
    spa_step = spa_rewards(batch)
    delta = data["delta_progress"]
    good, bad = delta > 0, delta < 0
    results = []
    for label, name, hp in runs:
        t0 = time.perf_counter()
        adv = compute_advantages(name, batch, **hp)
        took = time.perf_counter() - t0
        row = {"estimator": label, "auc": auc(adv, good, bad), "spearman": spearman(adv, delta), "seconds": took}
        if name == "gigpo":
            anchors = anchor_groups(batch, anchor=hp["anchor"])
            sizes = np.bincount(anchors)
            row["steps_in_shared_anchor_groups"] = float((sizes[anchors] > 1).mean())
            row["anchor_groups"] = int(len(sizes))
        results.append(row)
    results.append({"estimator": "spa step reward (no accumulation)", "auc": auc(spa_step, good, bad),
                    "spearman": spearman(spa_step, delta), "seconds": 0.0})
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="turngym/BlocksWorld-v0")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--p-oracle", type=float, nargs="+", default=[0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feature-dim", type=int, default=2048, help="hash buckets of SPA's tabular estimator")
    parser.add_argument("--out", default="results/credit_quality.json")
    args = parser.parse_args(argv)

    report = {"env": args.env, "split": args.split, "tasks": args.tasks, "group_size": args.group_size,
              "seed": args.seed, "runs": []}
    for p in args.p_oracle:
        t0 = time.perf_counter()
        data = rollout(args.env, args.split, args.tasks, args.group_size, p, args.seed)
        n = len(data["reward"])
        good, bad = int((data["delta_progress"] > 0).sum()), int((data["delta_progress"] < 0).sum())
        win = float(np.bincount(data["traj_id"], weights=data["won"].astype(float)).mean())
        print(f"\n{args.env} split={args.split} p_oracle={p}: {args.tasks} tasks x {args.group_size} rollouts, "
              f"{n} steps ({good} good, {bad} bad), success {win:.2f}, rollout {time.perf_counter() - t0:.1f}s")
        results = evaluate(data, args.feature_dim)
        print(f"{'estimator':<36} {'AUC':>6} {'Spearman':>9} {'shared anchors':>15}")
        for r in results:
            shared = f"{r['steps_in_shared_anchor_groups']:.2f}" if "steps_in_shared_anchor_groups" in r else ""
            print(f"{r['estimator']:<36} {r['auc']:>6.3f} {r['spearman']:>9.3f} {shared:>15}")
        report["runs"].append({"p_oracle": p, "steps": n, "good_steps": good, "bad_steps": bad,
                               "success_rate": win, "results": results})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
