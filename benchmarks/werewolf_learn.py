"""Werewolf that learns: SFT on the rule village's recorded moves, then the LLM village against rule wolves.

    python -m turngym.benchmarks.werewolf_learn --out results/werewolf_learn                  # the study (resumable)
    python -m turngym.benchmarks.werewolf_learn --out results/werewolf_learn --dtype bfloat16 --autocast bfloat16
                                                                            # bf16 engine and updates: faster on AMX CPUs
    python -m turngym.benchmarks.werewolf_learn --quick --out /tmp/q                          # tiny-model smoke (the test)

Why: the untrained SmolLM2-135M-Instruct village plays almost only invalid
actions (94-100% of its turns), so its win rate says nothing about play, and
self-play from it starts with nothing to reinforce. A warm start on the rule
bots' own moves, in exactly the format the LLM seats see, teaches valid moves
first; the before/after evaluation measures what that buys.

The pipeline, each phase skipped when its output is already there (a later
session, on a GPU say, picks up where the last one stopped):

1. Record (``OUT/data/village.jsonl``, ``OUT/data/record.json``): ``--games``
   all-rule games (deal seeds ``RECORD_SEED + k``, disjoint from the evaluation
   deals) with ``record_bots=True``; the VILLAGE seats' trajectories are kept
   (the LLM plays the village) and every turn is rendered as the LLM seat's
   request: the runner's own :class:`~turngym.agents.werewolf_runner.WerewolfLLMPolicy`
   messages from the seat's observation (cut to the model's context the way
   the runner cuts it), the chat template's prompt ids, and as the target the
   bot's action followed by the end-of-turn token. The observation is the
   seat's own view from the env: nothing another seat saw (no hidden role)
   enters a prompt. All games are kept, won or lost (``data.only_won=false``;
   ``--only-won`` turns rejection sampling on): the target is the rule
   village's valid play, which is the same policy in games it loses; keeping
   only won games would drop most of the data (the rule village won 13 of 64
   recorded lspo7 games: 55 of 280 village trajectories) and bias it towards
   easy deals. The record is then checked by
   replaying it: the same deals with the village played by an engine that
   answers every prompt with its recorded target. Every prompt must be one the
   LLM seat is really asked (token for token), every target must parse into
   the action the bot played and the env must accept it
   (``record.json: replay``).
2. SFT (``OUT/sft/sft.json``, checkpoint under ``OUT/sft``): the SFT trainer
   (``data.source`` = that file) from the base model, each step whole village
   trajectories (``--batch-by trajectory``, ``data.batch_by``), so a seat's
   turns, whose prompts repeat the game so far, share that transcript in one
   forward (``optim.share_prefix``'s prefix tree: about 2.9x fewer tokens run
   on the 64 recorded games, ``benchmarks/sft_sharing.py``). Its built-in evaluation
   runs gym episodes, which a PettingZoo env has not, so ``run.eval_tasks=0``
   and phase 3 evaluates.
3. Evaluation (``OUT/eval/{rule,base,sft}/games.jsonl``): the village against
   rule wolves (``village=llm,wolves=rule``) on ``--eval-games`` deals (seeds
   ``0..N-1``, the deals of ``turngym bench --env werewolf -n N``; the same for
   every row), the rule village on the same deals as the reference. Games are
   played and appended in chunks of ``--max-concurrent``, so a killed
   evaluation resumes at the next unplayed deal (``--skip sft`` plays the
   rule and base rows without training anything). Per row: the village's win
   rate with a Wilson 95% interval and the LLM seats' invalid-action rate
   (the env's verdict on each turn) and unparsable-reply rate, and the
   engine's prompt-side work (``OUT/eval/NAME/prefill.jsonl``, a line per
   chunk: prompt tokens, the share the prefix cache served, tokens prefilled,
   padding), printed per chunk: prefill of ~600-token prompts is the cost. The
   engine's prefix cache holds ``--prefix-cache-gib`` (default 4 GiB; 16
   games' village seats keep ~2.5 GB of transcripts in fp32, over the
   engine's 1 GiB default), so a seat's next turn prefills only what is new.
4. Optional self-play (``--selfplay-iterations N``, default 0: off;
   ``OUT/selfplay``): N iterations of the self-play recipe
   (``configs/selfplay_werewolf.yaml``, GRPO; ``--selfplay-lineup``, default
   ``all=llm``: the policy plays every seat) from the SFT checkpoint on the
   study's preset, resumed from its newest checkpoint, then evaluated as a
   fourth row like the others. ``selfplay.json`` keeps each iteration's
   learning signal (``curve``: invalid moves, reward spread, the share of
   zero advantages). Off by default: on the 2-core CPU below one iteration of
   4 SmolLM2 games took 4.5-6 minutes (about 130k prompt tokens to train on;
   14 minutes before the RL update shared an episode's transcript), and 4
   iterations did not move the win rate (see the README).

Writes ``OUT/results.json`` (setting, record, SFT, rows, paired comparisons) and
prints a table: rule village, LLM before (base), LLM after (SFT), and SFT +
self-play when it ran; then each stage against the one before it and each LLM
village against the rule village, paired by deal (``comparisons``: the
difference in win rate with Newcombe's paired 95% interval and the exact
McNemar p).

Setting and cost: the default preset is ``lspo7`` (7 players, no bidding:
about 15 village turns a game against about 106 on ``arena8``), the rules the
self-play trainer uses too; ``--preset arena8`` is the ``turngym bench``
default. Measured on the 2-core CPU of issue 23 (SmolLM2-135M-Instruct):
recording 64 lspo7 games with the replay check takes 5 s (280 village
trajectories, 1005 turns, 671k prompt tokens, 7.7k target tokens; the rule
village won 13 of the 64); the SFT then trains on about 680k tokens per epoch.
Evaluation is the cost: ``turngym bench --env werewolf --agents
village=llm,wolves=rule -n 8`` on arena8 in float32 did not finish 8 games in
10 minutes (75 s a game or more), so 200 arena8 games take over 4 hours per
model. One lspo7 game of the base model's village (float32, temperature 0.7,
max 96 tokens, one game at a time, deal 0) took 37 s (11 LLM turns, 8 of them
invalid): 200 games are about 2 hours per model played one at a time
(``--max-concurrent`` batches the seats of several games into one generate
call, which should bring it down; not measured here), so the default study
(rule, base, SFT rows) is about 4-5 hours of evaluation plus the SFT, over as
many sessions as it takes. Measured since, on a 2-core Intel Xeon (AVX-512, no native bf16), fp32,
``--skip base --max-concurrent 16``: the SFT's 296 steps (whole trajectories, the transcript shared) took
4,355 s, about 25 minutes of it beside other work; the SFT village's 200 games 1,944 s in chunks of 16
(9.7 s a game; 62% of 2.39M prompt tokens from the 4 GiB prefix cache); ``--skip sft``: the base
village's 200 games 2,735 s (13.7 s a game: its mostly unparsable replies are longer; 67% of 1.41M prompt
tokens from the cache), so the whole default study is about 2.5 hours here. ``--dtype bfloat16`` (the evaluation engine's
weights in bf16; prefill about 3x faster on AMX CPUs) is the cheaper setting;
``results.json`` records which setting its numbers come from. Only on a CPU
with native bf16 (AMX-BF16 or AVX512-BF16): on an AVX2-only CPU (a 2-core AMD
EPYC) bf16 is about 25x slower than float32 (``benchmarks/cpu_dtypes.py``);
there one bf16 SFT step did not finish in 13 minutes, so keep the float32
defaults (a ``SlowDtypeWarning`` says so). A GPU is used by
itself when there is one.

This module depends on the trainer (``turngym.trainers``), the Werewolf
runner (``turngym.agents``), the env and ``turngym.testing`` (``--quick``'s
tiny model); nothing depends on it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from turngym.files import read_json, write_json_atomic

ENV_ID = "turngym/Werewolf-v0"
EVAL_LINEUP = "village=llm,wolves=rule"
#: the recorded games' deals: RECORD_SEED + k, far from the evaluation deals 0..N-1
RECORD_SEED = 1_000_000
PRESET = "lspo7"
DEFAULTS = {"games": 64, "epochs": 2, "eval_games": 200, "lr": 5e-5, "batch_size": 8}
QUICK = {"games": 2, "epochs": 1, "eval_games": 2, "lr": 1e-3, "batch_size": 8, "max_tokens": 8}
ROWS = ("rule", "base", "sft", "selfplay")
#: paired comparisons on the shared deals, ``a - b``: each training stage against the one before it and each LLM
#: village against the rule village
COMPARISONS = (("sft", "base"), ("selfplay", "sft"), ("selfplay", "base"), ("base", "rule"), ("sft", "rule"),
               ("selfplay", "rule"))
SELFPLAY_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "selfplay_werewolf.yaml"



def _eos_id(tokenizer: Any) -> int:
    vocab = tokenizer.get_vocab()
    return int(vocab["<|im_end|>"]) if "<|im_end|>" in vocab else int(tokenizer.eos_token_id)


# ---- prompts exactly as the runner renders them -----------------------------------------------------------------


class Renderer:
    """The LLM seat's prompt ids for an observation, as :class:`WerewolfRunner` makes them for an engine with
    this tokenizer and context (messages from the policy, cut to ``max_context - max_tokens`` when too long)."""

    def __init__(self, tokenizer: Any, max_context: int | None, llm: Any, name: str = "model"):
        from turngym.agents.engines.prompts import PromptEncoder

        self.tokenizer, self.max_context, self.llm = tokenizer, max_context, llm
        self.encoder = PromptEncoder(tokenizer, len(tokenizer), name)
        self.eos = _eos_id(tokenizer)

    def prompt(self, observation: str) -> tuple[list[dict[str, str]], list[int], int]:
        messages = self.llm.messages(observation)
        ids = self.encoder.render(messages)
        left_out = 0
        limit = self.max_context
        if limit and len(ids) + self.llm.sampling.max_tokens > limit:
            messages, left_out = self.llm.fit(observation, lambda m: len(self.encoder.render(m)),
                                              limit - self.llm.sampling.max_tokens)
            ids = self.encoder.render(messages)
        return messages, ids, left_out

    def target(self, action: str) -> list[int]:
        return [int(i) for i in self.tokenizer(action, add_special_tokens=False)["input_ids"]] + [self.eos]


class ReplayEngine:
    """An engine that answers each prompt with the recorded target for those exact prompt ids (the record's
    contract check); a prompt it was not given raises."""

    name = "replay"

    def __init__(self, renderer: Renderer, trajectories: list[Any]):
        self.renderer = renderer
        self.max_context = renderer.max_context
        self.answers: dict[tuple[int, ...], list[list[int]]] = defaultdict(list)
        for t in trajectories:
            for s in t.steps:
                self.answers[tuple(s.prompt_ids)].append(list(s.response_ids))

    def render(self, messages: list[dict[str, Any]], tools: Any = None) -> list[int]:
        return self.renderer.encoder.render(messages)

    def generate(self, prompts: list[Any], sampling: Any, on_text: Any = None) -> list[Any]:
        from turngym.agents.types import Completion

        out = []
        for p in prompts:
            ids = self.renderer.encoder.prompt_ids(p)
            queue = self.answers.get(tuple(ids))
            if not queue:
                raise AssertionError("the replay asked a prompt that is not in the recorded data: the SFT prompts "
                                     "differ from what an LLM seat is asked")
            reply = queue.pop(0)
            text = self.renderer.tokenizer.decode(reply[:-1])
            out.append(Completion(text=text, token_ids=reply, finish_reason="stop", prompt_ids=list(ids)))
        return out


def village_data(result: Any, renderer: Renderer) -> list[Any]:
    """The village seats' non-empty trajectories of an all-rule run, each turn rendered as the LLM seat's
    request (prompt messages and ids from the seat's own observation) with the bot's action as the target."""
    trajs = []
    for t in result.trajectories:
        if t.meta.get("team") != "village" or not t.steps:
            continue
        for s in t.steps:
            messages, ids, left_out = renderer.prompt(s.observation)
            s.prompt, s.prompt_ids = messages, ids
            s.response = s.action
            s.response_ids, s.response_logprobs = renderer.target(s.action), None
            if left_out:
                s.info["transcript_lines_left_out"] = left_out
        t.agent = "rule-as-llm"
        trajs.append(t)
    return trajs


def replay_check(trajs: list[Any], renderer: Renderer, preset: str, seeds: list[int],
                 games: list[Any]) -> dict[str, Any]:
    """Replay the recorded deals with the village answered from the data (see the module docstring), one deal
    at a time (two deals can ask a seat the same first question, which the bots answered differently)."""
    from turngym.agents.werewolf_runner import WerewolfRunner

    by_seed: dict[int, list[Any]] = defaultdict(list)
    for t in trajs:
        by_seed[int(t.seed)].append(t)
    recorded = {g.seed: g.winner for g in games}
    wanted = {f"{t.meta['seat']}|{t.seed}": [s.action for s in t.steps] for t in trajs}
    played: dict[str, list[str]] = {}
    out = {"turns": 0, "accepted": 0, "parsed": 0, "same_winner": 0, "games": 0, "unused_prompts": 0}
    for seed in seeds:
        engine = ReplayEngine(renderer, by_seed.get(seed, []))
        result = WerewolfRunner(engine, lineup=EVAL_LINEUP, preset=preset, llm=renderer.llm).run([seed])
        steps = [s for t in result.trajectories for s in t.steps]
        out["turns"] += len(steps)
        out["accepted"] += sum(bool(s.action_valid) for s in steps)
        out["parsed"] += sum(bool(s.info.get("format_ok")) for s in steps)
        out["same_winner"] += sum(recorded.get(g.seed) == g.winner for g in result.games)
        out["games"] += len(result.games)
        out["unused_prompts"] += sum(len(q) for q in engine.answers.values())
        played.update({f"{t.meta['seat']}|{t.seed}": [s.action for s in t.steps] for t in result.trajectories})
    out["same_actions"] = sum(played.get(k) == v for k, v in wanted.items())
    out["trajectories"] = len(wanted)
    return out


def record(out: Path, games: int, preset: str, renderer: Renderer, model: str) -> dict[str, Any]:
    from turngym.agents.types import save_trajectories
    from turngym.agents.werewolf_runner import WerewolfRunner

    data_dir = out / "data"
    done = read_json(data_dir / "record.json")
    key = {"games": games, "preset": preset, "model": model, "max_tokens": renderer.llm.sampling.max_tokens}
    if done and (data_dir / "village.jsonl").is_file() and done.get("key") == key:
        print(f"record: done ({done['trajectories']} village trajectories, {done['turns']} turns)", flush=True)
        return done
    t0 = time.perf_counter()
    seeds = [RECORD_SEED + k for k in range(games)]
    result = WerewolfRunner(None, lineup="rule", preset=preset, record_bots=True, max_concurrent=32).run(seeds)
    trajs = village_data(result, renderer)
    replay = replay_check(trajs, renderer, preset, seeds, result.games)
    ok = (replay["accepted"] == replay["turns"] == replay["parsed"] and replay["same_actions"] ==
          replay["trajectories"] and replay["same_winner"] == replay["games"] and replay["unused_prompts"] == 0)
    if not ok:
        raise RuntimeError(f"the recorded village data failed its replay check: {replay}")
    save_trajectories(trajs, data_dir / "village.jsonl")
    turns = sum(len(t.steps) for t in trajs)
    done = {"key": key, "games": games, "preset": preset, "seeds": [seeds[0], seeds[-1]], "trajectories": len(trajs),
            "won_trajectories": sum(bool(t.won) for t in trajs), "turns": turns,
            "village_wins": sum(g.winner == "village" for g in result.games),
            "target_tokens": sum(len(s.response_ids) for t in trajs for s in t.steps),
            "prompt_tokens": sum(len(s.prompt_ids) for t in trajs for s in t.steps),
            "actions": dict(sorted(_count(s.action.split(":")[0] for t in trajs for s in t.steps).items())),
            "replay": replay, "file": str(data_dir / "village.jsonl"), "seconds": time.perf_counter() - t0}
    write_json_atomic(data_dir / "record.json", done)
    print(f"record: {games} rule games, {len(trajs)} village trajectories, {turns} turns; replay accepted "
          f"{replay['accepted']}/{replay['turns']} ({done['seconds']:.0f} s)", flush=True)
    return done


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[x] += 1
    return dict(out)


# ---- SFT ------------------------------------------------------------------------------------------------------


def sft(out: Path, base: str, data: str, turns: int, args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    from turngym.trainers.config import SFTConfig, load_config
    from turngym.trainers.sft import SFTTrainer

    sft_dir = out / "sft"
    done = read_json(sft_dir / "sft.json")
    inputs = {"data_turns": turns, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
              "batch_by": args.batch_by, "only_won": bool(args.only_won), "autocast": args.autocast}
    if done and Path(done["checkpoint"], "config.json").is_file() and done.get("inputs") == inputs:
        print(f"SFT: done ({done['checkpoint']})", flush=True)
        return done
    # a half-finished or outdated SFT restarts, and what was made from it goes
    for stale in (sft_dir, out / "eval" / "sft", out / "selfplay", out / "eval" / "selfplay"):
        shutil.rmtree(stale, ignore_errors=True)
    overrides = [f"model.path={base}", f"env.id={ENV_ID}", "agent.name=werewolf", f"data.source={data}",
                 f"data.only_won={str(bool(args.only_won)).lower()}", f"data.epochs={args.epochs}",
                 f"data.batch_size={args.batch_size}", f"data.batch_by={args.batch_by}", f"optim.lr={args.lr}",
                 f"run.dir={sft_dir}",
                 "run.eval_tasks=0", "run.save_rollouts=false", "run.progress=false", "run.tensorboard=false",
                 "run.keep_checkpoints=1", "run.seed=0", f"model.autocast={args.autocast}"]
    if args.threads or quick:
        overrides.append(f"run.threads={args.threads or 1}")
    cfg = load_config(SFTConfig, None, overrides)
    t0 = time.perf_counter()
    result = SFTTrainer(cfg).train()
    from turngym.trainers.runlog import read_metrics

    nll = [r["nll"] for r in read_metrics(sft_dir) if r.get("kind") == "train"]
    done = {"checkpoint": result["checkpoint"], "inputs": inputs, "episodes": result["episodes"],
            "samples": result["samples"], "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "only_won": bool(args.only_won),
            "nll_first": nll[0] if nll else None, "nll_last": nll[-1] if nll else None,
            "seconds": time.perf_counter() - t0}
    write_json_atomic(sft_dir / "sft.json", done)
    print(f"SFT: {done['episodes']} trajectories, {done['samples']} samples, nll {done['nll_first']:.3f} -> "
          f"{done['nll_last']:.3f}, {done['seconds']:.0f} s -> {done['checkpoint']}", flush=True)
    return done


# ---- self-play ------------------------------------------------------------------------------------------------


def selfplay(out: Path, start: str, args: argparse.Namespace, quick: bool) -> dict[str, Any]:
    """``--selfplay-iterations`` of RL self-play (``configs/selfplay_werewolf.yaml``: GRPO, one role across an
    iteration's games) from the SFT checkpoint, on the study's preset; resumed from its newest checkpoint and
    skipped when it finished that many iterations. The trainer's own evaluation is off: phase 3 evaluates."""
    from turngym.trainers.config import RLConfig, load_config
    from turngym.trainers.rl import RLTrainer

    run_dir = out / "selfplay"
    n = args.selfplay_iterations
    done = read_json(run_dir / "selfplay.json")
    if done and (done.get("iterations"), done.get("start")) == (n, start) and \
            Path(done["checkpoint"], "config.json").is_file():
        print(f"self-play: done ({done['checkpoint']})", flush=True)
        return {**done, "curve": _selfplay_curve(run_dir / "train")}
    kwargs = f"{{preset: {args.preset}, lineup: '{args.selfplay_lineup}', eval_lineup: '{EVAL_LINEUP}'}}"
    overrides = [f"model.path={start}", f"env.kwargs={kwargs}", f"run.dir={run_dir / 'train'}", f"run.iterations={n}",
                 "run.save_every=1", "run.keep_checkpoints=1", "run.eval_tasks=0", "run.eval_every=0",
                 "run.progress=false", "run.tensorboard=false", "run.save_rollouts=false", "run.seed=0",
                 f"model.autocast={args.autocast}"]
    if quick:
        overrides += [f"agent.max_tokens={args.max_tokens}", "rollout.tasks_per_iter=1", "rollout.group_size=2",
                      "run.threads=1"]
    cfg = load_config(RLConfig, str(SELFPLAY_RECIPE), overrides)
    t0 = time.perf_counter()
    trainer = RLTrainer(cfg, resume=True)
    trainer.train()
    final = trainer.run_dir / f"checkpoint-{trainer.iteration_done}"
    from turngym.trainers.runlog import read_metrics

    train = [r for r in read_metrics(run_dir / "train") if r.get("kind") == "train"]
    done = {"checkpoint": str(final), "start": start, "iterations": n, "lineup": args.selfplay_lineup,
            "train_seconds": sum(r.get("time_total", 0.0) for r in train), "session_seconds": time.perf_counter() - t0}
    write_json_atomic(run_dir / "selfplay.json", done)
    curve = _selfplay_curve(run_dir / "train")
    for r in curve:
        print(f"  self-play iteration {r['iteration']}: {r['episodes']} seat trajectories, invalid "
              f"{_pct(r['invalid_action_rate'])}, reward std {r['reward_std'] or 0.0:.3f}, advantages zero "
              f"{_pct(r['adv_zero_frac'])}, {r['time_total']:.0f} s", flush=True)
    print(f"self-play: {n} iterations -> {final}", flush=True)
    return {**done, "curve": curve}


#: what each self-play iteration's metrics say about its learning signal: are moves valid, do rewards vary
#: within a group, how many advantages are zero (the untrained model's self-play had ~all of them zero)
CURVE_KEYS = ("iteration", "episodes", "success_rate", "reward_std", "invalid_action_rate", "format_ok_rate",
              "adv_zero_frac", "adv_std", "turns_mean", "response_tokens_mean", "time_total")


def _selfplay_curve(train_dir: Path) -> list[dict[str, Any]]:
    """The self-play run's per-iteration :data:`CURVE_KEYS` from its ``metrics.jsonl`` (the last record of an
    iteration a resumed run wrote twice)."""
    from turngym.trainers.runlog import read_metrics

    by_it = {r["iteration"]: r for r in read_metrics(train_dir) if r.get("kind") == "train"}
    return [{k: by_it[it].get(k) for k in CURVE_KEYS} for it in sorted(by_it)]


# ---- evaluation -----------------------------------------------------------------------------------------------


def evaluate(name: str, model: str | None, out: Path, args: argparse.Namespace, preset: str) -> dict[str, Any]:
    """The village (``model`` as the LLM, or the rule bots when None) against rule wolves on deals 0..N-1,
    appended to OUT/eval/NAME/games.jsonl chunk by chunk (a rerun plays only the deals not there yet)."""
    from turngym.agents.evaluation import wilson_interval
    from turngym.agents.werewolf_runner import WerewolfLLMPolicy, WerewolfRunner

    eval_dir = out / "eval" / name
    eval_dir.mkdir(parents=True, exist_ok=True)
    setting = {"model": model, "preset": preset, "dtype": args.dtype if model else None,
               "temperature": args.temperature if model else None, "max_tokens": args.max_tokens if model else None}
    meta = read_json(eval_dir / "setting.json")
    games_file = eval_dir / "games.jsonl"
    prefill_file = eval_dir / "prefill.jsonl"  # a line per chunk: the engine's prompt-side work
    if meta != setting:  # another model or setting: start over
        games_file.unlink(missing_ok=True)
        prefill_file.unlink(missing_ok=True)
        write_json_atomic(eval_dir / "setting.json", setting)
    rows = _read_games(games_file)
    have = {r["seed"] for r in rows}
    todo = [s for s in range(args.eval_games) if s not in have]
    engine = None
    if todo and model is not None:
        from turngym.agents.engines.hf import HFEngine

        engine = HFEngine(model, dtype=args.dtype, progress=False,
                          prefix_cache_bytes=int(args.prefix_cache_gib * (1 << 30)))
    chunk = max(1, args.max_concurrent)
    if todo:
        print(f"eval {name}: {len(todo)} of {args.eval_games} games to play", flush=True)
    for start in range(0, len(todo), chunk):
        seeds = todo[start:start + chunk]
        t0 = time.perf_counter()
        runner = WerewolfRunner(engine, lineup=EVAL_LINEUP if model else "rule", preset=preset,
                                llm=WerewolfLLMPolicy(temperature=args.temperature, max_tokens=args.max_tokens),
                                max_concurrent=chunk)
        if engine is not None:
            engine.prefill_stats.reset()
        result = runner.run(seeds)
        seconds = time.perf_counter() - t0
        per_seed: dict[int, list[Any]] = defaultdict(list)
        for t in result.trajectories:
            per_seed[int(t.seed)].extend(t.steps)
        with games_file.open("a") as f:
            for g in result.games:
                steps = per_seed.get(g.seed, [])
                f.write(json.dumps({"seed": g.seed, "winner": g.winner, "steps": g.steps, "truncated": g.truncated,
                                    "llm_turns": len(steps), "llm_invalid": sum(not s.action_valid for s in steps),
                                    "llm_unparsed": sum(not s.info.get("format_ok", True) for s in steps),
                                    "seconds": seconds / len(result.games)}) + "\n")
        work = ""
        if engine is not None:  # where the chunk's time went: prompt tokens, the prefix cache's share, padding
            stats = engine.prefill_stats.to_dict()
            with prefill_file.open("a") as f:
                f.write(json.dumps({"seeds": seeds, "seconds": seconds, **stats}) + "\n")
            work = f"; {_prefill_line(stats)}"
        print(f"  eval {name}: {start + len(seeds)}/{len(todo)} games ({seconds:.0f} s for {len(seeds)}{work})",
              flush=True)
    rows = [r for r in _read_games(games_file) if r["seed"] < args.eval_games]
    n = len(rows)
    wins = sum(r["winner"] == "village" for r in rows)
    lo, hi = wilson_interval(wins, n)
    turns = sum(r["llm_turns"] for r in rows)
    return {"name": name, **setting, "games": n, "village_wins": wins, "village_win_rate": wins / n if n else None,
            "ci95": [lo, hi], "draws": sum(r["winner"] == "draw" for r in rows), "llm_turns": turns,
            "invalid_rate": sum(r["llm_invalid"] for r in rows) / turns if turns else None,
            "unparsed_rate": sum(r["llm_unparsed"] for r in rows) / turns if turns else None,
            "seconds": sum(r["seconds"] for r in rows), "seconds_per_game": sum(r["seconds"] for r in rows) / n
            if n else None, "prefill": _prefill_total(prefill_file, args.eval_games)}


def compare(out: Path, names: list[str], eval_games: int) -> list[dict[str, Any]]:
    """Each pair of :data:`COMPARISONS` among the evaluated rows, paired by deal (the rows play the same deals):
    village wins of a and b, the difference a - b with Newcombe's paired interval and the exact McNemar p
    (:func:`~turngym.agents.evaluation.paired_proportions`). Pairing removes the deals' own difficulty from the
    comparison, so it is tighter than the two rows' separate intervals."""
    from turngym.agents.evaluation import paired_proportions

    won = {name: {r["seed"]: r["winner"] == "village" for r in _read_games(out / "eval" / name / "games.jsonl")
                  if r["seed"] < eval_games} for name in names}
    result = []
    for a, b in COMPARISONS:
        if a in won and b in won:
            seeds = sorted(set(won[a]) & set(won[b]))
            result.append({"a": a, "b": b, **paired_proportions([won[a][s] for s in seeds],
                                                                 [won[b][s] for s in seeds])})
    return result


def _prefill_total(path: Path, eval_games: int) -> dict[str, float] | None:
    """The prompt-side work summed over the chunks of deals 0..eval_games-1 that recorded it (None: none did)."""
    if not path.is_file():
        return None
    total: dict[str, float] = {}
    for line in path.read_text().splitlines():
        try:
            chunk = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if all(seed < eval_games for seed in chunk.get("seeds", [])):
            for key, value in chunk.items():
                if key != "seeds":
                    total[key] = total.get(key, 0) + value
    return total or None


def _prefill_line(stats: dict[str, int]) -> str:
    """``PrefillStats.to_dict()`` in words: prompt tokens, the share the prefix cache served, padding computed."""
    prompt, run = stats["prompt_tokens"], stats["prefill_tokens"]
    return (f"{prompt} prompt tokens, {stats['cached_tokens'] / max(prompt, 1):.0%} from the prefix cache, "
            f"{run} prefilled, {max(stats['padded_tokens'] - run, 0)} padding positions")


def _read_games(path: Path) -> list[dict[str, Any]]:
    """The finished games of an evaluation (a line torn by a kill is dropped, and its deal played again)."""
    if not path.is_file():
        return []
    rows, seen = [], set()
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r["seed"] not in seen:
            seen.add(r["seed"])
            rows.append(r)
    return rows


def _pct(x: float | None) -> str:
    return "    -" if x is None else f"{x * 100:5.1f}%"


def print_comparisons(comparisons: list[dict[str, Any]]) -> None:
    if not comparisons:
        return
    print("\npaired on the same deals (a - b, Newcombe 95% CI, exact McNemar p; deals won by a only / b only):")
    for c in comparisons:
        lo, hi = c["ci95"]
        print(f"  {c['a'] + ' - ' + c['b']:18s} {c['diff'] * 100:+6.1f} pts [{lo * 100:+6.1f}, {hi * 100:+6.1f}]  "
              f"p = {c['mcnemar_p']:.2g}  ({c['only_a']} / {c['only_b']} of {c['n']})")


def print_table(rows: list[dict[str, Any]]) -> None:
    labels = {"rule": "rule village", "base": "LLM before (base)", "sft": "LLM after (SFT)",
              "selfplay": "LLM SFT + self-play"}
    print(f"\nvillage vs rule wolves, Wilson 95% CI:\n{'village':20s} {'games':>5s}  {'win rate':22s} "
          f"{'invalid':>8s} {'unparsed':>8s} {'s/game':>7s}")
    for r in rows:
        ci = f"{_pct(r['village_win_rate'])} [{_pct(r['ci95'][0])}, {_pct(r['ci95'][1])}]"
        spg = f"{r['seconds_per_game']:7.1f}" if r["seconds_per_game"] is not None else "      -"
        print(f"{labels.get(r['name'], r['name']):20s} {r['games']:5d}  {ci:22s} {_pct(r['invalid_rate']):>8s} "
              f"{_pct(r['unparsed_rate']):>8s} {spg}")


# ---- --quick's tiny model ---------------------------------------------------------------------------------------


def tiny_base(path: Path, preset: str) -> str:
    """--quick's base model, saved once to ``path``: a byte-level BPE trained on Werewolf text and a random
    2-layer Llama with a long context (the small vocabulary makes transcripts long)."""
    if (path / "config.json").is_file():
        return str(path)
    from turngym.agents.werewolf_runner import SYSTEM_PROMPT, WerewolfRunner
    from turngym.testing import tiny_bpe_tokenizer, tiny_llama

    sample = WerewolfRunner(None, lineup="rule", preset=preset, record_bots=True).run([RECORD_SEED - 1])
    corpus = [SYSTEM_PROMPT] + [s.observation + "\n" + s.action for t in sample.trajectories for s in t.steps[-2:]]
    tok = tiny_bpe_tokenizer(corpus, vocab_size=600, pad_token="<|endoftext|>")
    model = tiny_llama(tok, hidden=32, max_positions=16384, init=0.02, seed=0, eval_mode=False)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _load_tokenizer(model: str) -> tuple[Any, int | None]:
    from transformers import AutoConfig, AutoTokenizer

    from turngym.agents.engines.default_model import resolve_model

    path = resolve_model(model, progress=False)
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    return (AutoTokenizer.from_pretrained(path, local_files_only=True),
            getattr(config, "max_position_embeddings", None))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="results/werewolf_learn", help="folder for data/, sft/, eval/ and results.json")
    p.add_argument("--model", default="default", help="the base model (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--preset", default=PRESET, help=f"rules preset of every phase (default {PRESET})")
    p.add_argument("--games", type=int, default=None, help=f"recorded rule games (default {DEFAULTS['games']})")
    p.add_argument("--only-won", action="store_true", help="SFT on the won games' village seats only")
    p.add_argument("--epochs", type=int, default=None, help=f"SFT epochs (default {DEFAULTS['epochs']})")
    p.add_argument("--lr", type=float, default=None, help=f"SFT learning rate (default {DEFAULTS['lr']})")
    p.add_argument("--batch-size", type=int, default=None, help="SFT samples per step (default 8)")
    p.add_argument("--batch-by", default="trajectory", choices=("trajectory", "sample"),
                   help="SFT steps of whole village trajectories, whose turns share their repeated transcript in "
                        "one forward (default), or of shuffled turns (data.batch_by)")
    p.add_argument("--eval-games", type=int, default=None,
                   help=f"evaluation deals, the same for every row (default {DEFAULTS['eval_games']})")
    p.add_argument("--skip", default="", help="comma list of evaluation rows not to play now: rule, base, sft "
                   "(sft without self-play skips the SFT itself too)")
    p.add_argument("--dtype", default="float32", help="the evaluation engine's weights: float32 (default), bfloat16")
    p.add_argument("--temperature", type=float, default=0.7, help="LLM seats' sampling temperature (default 0.7)")
    p.add_argument("--max-tokens", type=int, default=None, help="LLM seats' reply budget (default 96)")
    p.add_argument("--max-concurrent", type=int, default=8,
                   help="games in flight, and the evaluation's resume chunk (default 8)")
    p.add_argument("--prefix-cache-gib", type=float, default=4.0,
                   help="the evaluation engine's prefix KV cache bound in GiB (default 4: 16 games' village seats "
                        "keep their transcripts, ~46 KB a token in fp32; the engine's own default is 1)")
    p.add_argument("--autocast", default="none", choices=("none", "bfloat16"),
                   help="compute dtype of the SFT and self-play updates (model.autocast; weights stay fp32)")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the SFT (0: the trainer's default)")
    p.add_argument("--selfplay-iterations", type=int, default=0,
                   help="RL self-play iterations from the SFT checkpoint, evaluated as a 4th row (default 0: none)")
    p.add_argument("--selfplay-lineup", default="all=llm", help="who the policy plays in self-play (default all=llm)")
    p.add_argument("--quick", action="store_true", help="tiny random model, 2 recorded games, 1 epoch, 2 eval games")
    args = p.parse_args(argv)
    base_defaults = QUICK if args.quick else DEFAULTS
    for key in ("games", "epochs", "eval_games", "lr", "batch_size"):
        if getattr(args, key) is None:
            setattr(args, key, base_defaults[key])
    if args.max_tokens is None:
        args.max_tokens = QUICK["max_tokens"] if args.quick else 96
    if args.prefix_cache_gib < 0:
        p.error(f"--prefix-cache-gib must be >= 0, got {args.prefix_cache_gib}")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if unknown := skip - set(ROWS):
        p.error(f"--skip: unknown rows {sorted(unknown)} (use {', '.join(ROWS)})")

    from turngym.threads import configure

    configure()  # OpenMP's settings, before torch loads
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    if args.quick:
        import torch

        torch.set_num_threads(1)
    from turngym.agents.werewolf_runner import WerewolfLLMPolicy

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = tiny_base(out / "base", args.preset) if args.quick else args.model
    tok, max_context = _load_tokenizer(base)
    renderer = Renderer(tok, max_context, WerewolfLLMPolicy(temperature=args.temperature, max_tokens=args.max_tokens))
    rec = record(out, args.games, args.preset, renderer, base)
    if "sft" in skip and args.selfplay_iterations == 0:  # nothing this session needs the SFT checkpoint
        tuned = None
        print("SFT: skipped (--skip sft; a later run without it trains it)", flush=True)
    else:
        tuned = sft(out, base, rec["file"], rec["turns"], args, args.quick)
    played = selfplay(out, tuned["checkpoint"], args, args.quick) if args.selfplay_iterations > 0 else None
    models = [("rule", None), ("base", base), ("sft", tuned["checkpoint"] if tuned else None)]
    if played:
        models.append(("selfplay", played["checkpoint"]))
    rows = []
    for name, model in models:
        if name in skip:
            continue
        r = evaluate(name, model, out, args, args.preset)
        rows.append(r)
    result = {"env": ENV_ID, "lineup": EVAL_LINEUP, "preset": args.preset, "base_model": base,
              "eval_games": args.eval_games, "eval_seeds": [0, args.eval_games - 1], "dtype": args.dtype,
              "autocast": args.autocast, "batch_by": args.batch_by, "prefix_cache_gib": args.prefix_cache_gib,
              "temperature": args.temperature, "max_tokens": args.max_tokens, "quick": args.quick,
              "record": rec, "sft": tuned, "selfplay": played, "rows": rows,
              "comparisons": compare(out, [r["name"] for r in rows], args.eval_games),
              "session_seconds": time.perf_counter() - t0}
    write_json_atomic(out / "results.json", result)
    print_table(rows)
    print_comparisons(result["comparisons"])
    print(f"wrote {out / 'results.json'} ({result['session_seconds']:.0f} s this session)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
