"""Rollout throughput: batched vs sequential generation, env speed, P-ReAct vs ReAct, engine vs raw vLLM.

Five measurements, each printed as a table and written to ``--out`` (JSON):

0. **decode** -- one decode step with ``--context`` cached tokens per row,
   at batch 1 and ``--batch``, with transformers' concatenating KV layer and
   the hf engine's preallocated buffer, interleaved (what the buffer saves).
1. **batch** -- the same ReAct episodes (``--episodes`` tasks of ``--env``,
   same seeds) played by the runner twice in one process with the same
   engine: sequentially (``max_concurrent=1``: one prompt per ``generate``)
   and batched (``max_concurrent=--batch``) on the runner's lockstep
   schedule (one ``generate`` per turn for all live episodes) and/or its
   continuous one (``--schedule``). Printed side by side with the ratio of
   wall times and of generated tokens/s (the texts can differ slightly
   between runs: batch shapes change float rounding; tokens/s is the fair
   ratio). ``--repeats N`` interleaves N runs of every mode and reports the
   median one.
   ``--prefix-cache compare`` plays each of the two runs twice, with the hf
   engine's prefix KV cache off and on (side by side, off then on), and adds
   the on/off ratios and the prompt tokens each run prefilled. Every run
   starts with an empty cache (as a rollout phase does after a weight
   update).
2. **envs** -- env-steps/s of every registered Gymnasium env alone with the
   random agent: a bare ``env.step`` loop (the env's own speed) and through
   the runner's thread pool with 16 live episodes (what the runner adds).
3. **preact** -- wall clock of ReAct vs P-ReAct on ``--env`` wrapped so that
   every step sleeps ``--latency`` seconds (a stand-in for a search engine, a
   sandbox or a web page). Two engines: the real model (``--model``; a small
   model may not follow P-ReAct's format, so the share of actions dispatched
   early is reported), and a controlled stream (a scripted engine that emits
   the same number of characters at a fixed token rate for both formats,
   action first or last), which isolates the runner's overlap of env time
   with generation.
4. **vllm** (``--model vllm:default``, inside the vLLM venv) -- the runner on
   the vLLM engine (lockstep, ``--batch`` live episodes) end to end against
   raw ``vllm.LLM.generate`` replaying the very calls the runner made (same
   prompt ids, same sampling and seeds), and the first-turn prompts alone
   through ``engine.generate`` and raw: what the engine and the runner cost
   on top of vLLM (1.0x = nothing).

``--dtype`` sets the engine's dtype for every run of a part (the sequential
baseline and the batched runs alike, so ratios compare like with like); its
default ``auto`` is bfloat16 for the hf engine on a CPU with native bf16, AMX-BF16
or AVX512-BF16 (see ``_bench_dtype``), so compare with ``--dtype float32`` for the
float32 numbers.

    python -m turngym.benchmarks.rollout_throughput                       # all three, embedded SmolLM2
    python -m turngym.benchmarks.rollout_throughput --parts batch --episodes 16 --batch 16
    python -m turngym.benchmarks.rollout_throughput --parts batch --prefix-cache compare --env turngym/BlocksWorld-v0
    python -m turngym.benchmarks.rollout_throughput --parts preact --latency 1.0
    python -m turngym.benchmarks.rollout_throughput --parts batch --dtype bfloat16
    .venv-vllm/bin/python -m turngym.benchmarks.rollout_throughput --parts vllm --model vllm:default --repeats 3

This script may import every layer of turngym.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import gymnasium as gym

from turngym.agents.engines.base import per_prompt_sampling
from turngym.agents.factory import make_agent
from turngym.agents.pool import make_env
from turngym.agents.runner import EpisodeRunner, plan_episodes
from turngym.agents.types import Completion
from turngym.files import write_text_atomic


class LatencyEnv(gym.Wrapper):
    """Adds a fixed sleep to every ``step`` (an env whose steps wait on something slow)."""

    def __init__(self, env: gym.Env, latency: float):
        super().__init__(env)
        self.latency = latency

    def step(self, action: str):
        time.sleep(self.latency)
        return self.env.step(action)


def latency_env(env_id: str, latency: float, env_kwargs: dict[str, Any] | None = None) -> gym.Env:
    """Picklable factory of a :class:`LatencyEnv` (usable with the process pool too)."""
    return LatencyEnv(make_env(env_id, env_kwargs), latency)


class PacedEngine:
    """A controlled stream: answers every prompt with ``reply(prompt)`` at ``tokens_per_s`` (4 chars a token).

    All rows of a batch stream in parallel, like a batched model; ``on_text``
    is called after every token.
    """

    name = "paced"

    def __init__(self, reply: Any, tokens_per_s: float = 40.0):
        self.reply, self.tokens_per_s = reply, tokens_per_s

    def render(self, messages, tools=None):
        return messages

    def generate(self, prompts, sampling, on_text=None):
        params = per_prompt_sampling(sampling, len(prompts))
        texts = [self.reply(p) for p in prompts]
        longest = max(len(t) for t in texts)
        for end in range(4, longest + 4, 4):
            time.sleep(1.0 / self.tokens_per_s)
            if on_text is not None:
                for i, text in enumerate(texts):
                    if end - 4 < len(text):
                        on_text(i, text[:end])
        return [Completion(t, list(t.encode()), [0.0] * len(t.encode()) if sp.logprobs else None)
                for t, sp in zip(texts, params)]


# ---- 1. batched vs sequential ------------------------------------------------------------------------


@contextlib.contextmanager
def prefix_cache(engine: Any, enabled: bool) -> Iterator[None]:
    """The hf engine's prefix KV cache on or off for the duration, emptied at the start and its counters reset."""
    if not hasattr(engine, "prefix_cache"):
        if enabled:
            yield
            return
        raise SystemExit(f"--prefix-cache off/compare needs the hf engine ({engine.name} has no prefix cache)")
    saved = engine.prefix_cache
    if enabled and saved is None:
        raise SystemExit(f"{engine.name} runs without a prefix cache: {engine.prefix_cache_off_reason}")
    engine.clear_prefix_cache()
    engine.prefill_stats.reset()
    engine.prefix_cache = saved if enabled else None
    try:
        yield
    finally:
        engine.prefix_cache = saved
        engine.clear_prefix_cache()


def _cache_settings(args: argparse.Namespace) -> list[tuple[str, bool]]:
    return {"on": [("", True)], "off": [("", False)], "compare": [(" off", False), (" on", True)]}[args.prefix_cache]


def _schedules(engine: Any, args: argparse.Namespace) -> list[str]:
    can = callable(getattr(engine, "session", None)) and getattr(engine, "session_off_reason", None) is None
    if args.schedule == "compare":
        return ["lockstep", "continuous"] if can else ["lockstep"]
    if args.schedule == "continuous" and not can:
        raise SystemExit(f"--schedule continuous: {engine.name} has no continuous batching "
                         f"({getattr(engine, 'session_off_reason', None) or 'no session()'})")
    return [args.schedule]


def measure_batching(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    specs = plan_episodes(args.env, split=args.split, num_tasks=args.episodes, seed=args.seed)
    schedules = _schedules(engine, args)
    rows: dict[str, Any] = {"prefix_cache": args.prefix_cache, "schedules": schedules}
    labels = []
    modes = [("sequential", 1, "lockstep")] + [(name, args.batch, name) for name in schedules]
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeats):  # interleaved (A B C A B C ...): drifts of a shared machine hit every mode
        for mode, concurrent, schedule in modes:
            for suffix, enabled in _cache_settings(args):
                label = mode + suffix
                if label not in labels:
                    labels.append(label)
                agent = make_agent("react", args.env, max_tokens=args.max_tokens, temperature=args.temperature)
                runner = EpisodeRunner(args.env, agent, engine, max_concurrent=concurrent,
                                       max_steps=args.max_steps, schedule=schedule)
                with prefix_cache(engine, enabled):
                    result = runner.run(specs)
                    prefill = engine.prefill_stats.to_dict() if hasattr(engine, "prefill_stats") else {}
                s = result.stats
                runs.setdefault(label, []).append(
                    {"max_concurrent": concurrent, "schedule": schedule, "prefix_cache": enabled,
                     "episodes": s.episodes, "wall_s": s.wall_s, "generate_calls": s.generate_calls,
                     "generated_tokens": s.generated_tokens, "tokens_per_s": s.tokens_per_s,
                     "env_steps": s.env_steps, "env_steps_per_s": s.env_steps_per_s,
                     "generate_s": s.generate_s, "env_s": s.env_wait_s, "other_s": s.other_s,
                     "successes": sum(t.won for t in result.trajectories), "prefill": prefill})
                print(f"  {label}: {s.wall_s:.1f}s, {s.generated_tokens} tokens, {s.generate_calls} generate "
                      "calls", file=sys.stderr, flush=True)
    for label, done in runs.items():  # the median run by wall time stands for the mode; every wall time is kept
        rows[label] = dict(sorted(done, key=lambda r: r["wall_s"])[(len(done) - 1) // 2],
                           wall_s_runs=[r["wall_s"] for r in done])
    for mode in schedules:
        for suffix, _ in _cache_settings(args):
            seq, bat = rows["sequential" + suffix], rows[mode + suffix]
            tail = f"_{mode}" + (f"_cache_{suffix.strip()}" if suffix else "")
            rows["ratio_wall" + tail] = _ratio(seq["wall_s"], bat["wall_s"])
            rows["ratio_tokens_per_s" + tail] = _ratio(bat["tokens_per_s"], seq["tokens_per_s"])
    best = schedules[-1]  # the runner's default: continuous when the engine has it
    on = "_cache_on" if args.prefix_cache == "compare" else ""
    rows["ratio_wall"] = rows[f"ratio_wall_{best}{on}"]
    rows["ratio_tokens_per_s"] = rows[f"ratio_tokens_per_s_{best}{on}"]
    if args.prefix_cache == "compare":
        for mode in ("sequential", *schedules):
            rows[f"cache_on_vs_off_{mode}"] = {
                "wall": _ratio(rows[mode + " off"]["wall_s"], rows[mode + " on"]["wall_s"]),
                "generate": _ratio(rows[mode + " off"]["generate_s"], rows[mode + " on"]["generate_s"]),
                "tokens_per_s": _ratio(rows[mode + " on"]["tokens_per_s"], rows[mode + " off"]["tokens_per_s"])}
        rows["batched_on_vs_sequential_off_wall"] = _ratio(rows["sequential off"]["wall_s"],
                                                           rows[best + " on"]["wall_s"])
    with prefix_cache(engine, args.prefix_cache != "off"):
        rows["engine_only"] = _engine_only(engine, specs, args)
    print(f"\n== batched x{args.batch} vs sequential: {args.episodes} ReAct episodes of {args.env} "
          f"({args.max_steps} steps max, {args.max_tokens} tokens max per reply, {engine.name}, "
          f"prefix cache {args.prefix_cache}) ==")
    print(f"{'':15} {'wall s':>8} {'gen s':>8} {'env s':>7} {'calls':>6} {'tokens':>7} {'tok/s':>8} {'steps/s':>8} "
          f"{'prompt tok':>11} {'prefilled':>10} {'padded':>8}")
    for label in labels:
        r, f = rows[label], rows[label]["prefill"]
        print(f"{label:15} {r['wall_s']:8.1f} {r['generate_s']:8.1f} {r['env_s']:7.2f} {r['generate_calls']:6d} "
              f"{r['generated_tokens']:7d} {r['tokens_per_s']:8.1f} {r['env_steps_per_s']:8.2f} "
              f"{f.get('prompt_tokens', 0):11d} {f.get('prefill_tokens', 0):10d} {f.get('padded_tokens', 0):8d}")
    for mode in schedules:
        for suffix, _ in _cache_settings(args):
            key = suffix.strip()
            tail = f"_{mode}" + (f"_cache_{key}" if key else "")
            print(f"{mode} x{args.batch} vs sequential{' (cache ' + key + ')' if key else ''}: "
                  f"wall {rows['ratio_wall' + tail]:.2f}x, tokens/s {rows['ratio_tokens_per_s' + tail]:.2f}x")
    if args.prefix_cache == "compare":
        for mode in ("sequential", *schedules):
            c, f = rows[f"cache_on_vs_off_{mode}"], rows[mode + " on"]["prefill"]
            print(f"prefix cache on vs off, {mode}: wall {c['wall']:.2f}x, generate {c['generate']:.2f}x, "
                  f"tokens/s {c['tokens_per_s']:.2f}x; prefilled {f['prefill_tokens']} of {f['prompt_tokens']} "
                  f"prompt tokens ({_share(f['saved_tokens'], f['prompt_tokens'])} saved)")
        print(f"{best} with cache vs sequential without: wall {rows['batched_on_vs_sequential_off_wall']:.2f}x")
    e = rows["engine_only"]
    print(f"engine alone on the {e['prompts']} first-turn prompts ({e['prompt_tokens']} prompt tokens each on "
          f"average, prefix cache {'off' if args.prefix_cache == 'off' else 'on'}, emptied before each): one by one "
          f"{e['sequential_s']:.1f}s, one batch {e['batched_s']:.1f}s -> {e['ratio']:.2f}x; decode only "
          f"({e['decode_tokens']} tokens after a 1-token prompt each): {e['decode_ratio']:.2f}x")
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def _engine_only(engine: Any, specs: list, args: argparse.Namespace) -> dict[str, Any]:
    """The same first-turn prompts through the engine alone, one by one and as one batch (no runner, no env)."""
    from turngym.agents.types import SamplingParams

    env = make_env(args.env)
    agent = make_agent("react", args.env, max_tokens=args.max_tokens, temperature=args.temperature)
    prompts = []
    for spec in specs[: args.batch]:
        obs, info = env.reset(options={"task_id": spec.task_id})
        turn = agent.prompt(agent.start(info["instruction"], obs, info, spec.seed))
        prompts.append(engine.render(turn.messages))
    params = [SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=i)
              for i in range(len(prompts))]
    clear = getattr(engine, "clear_prefix_cache", lambda: None)
    clear()
    start = time.perf_counter()
    for p, sp in zip(prompts, params):
        engine.generate([p], sp)
    one_by_one = time.perf_counter() - start
    clear()
    start = time.perf_counter()
    engine.generate(prompts, params)
    batched = time.perf_counter() - start
    # Decode alone: a 1-token prompt, a fixed number of tokens (no stop), so prefill costs nothing.
    tiny = [[prompts[0][-1]] for _ in prompts]
    fixed = [SamplingParams(max_tokens=args.max_tokens, temperature=1.0, seed=i) for i in range(len(prompts))]
    start = time.perf_counter()
    decoded = sum(len(engine.generate([p], sp)[0].token_ids) for p, sp in zip(tiny, fixed))
    decode_one = time.perf_counter() - start
    start = time.perf_counter()
    engine.generate(tiny, fixed)
    decode_batch = time.perf_counter() - start
    return {"prompts": len(prompts), "prompt_tokens": sum(map(len, prompts)) // len(prompts),
            "sequential_s": one_by_one, "batched_s": batched, "ratio": one_by_one / batched,
            "decode_tokens": decoded, "decode_sequential_s": decode_one, "decode_batched_s": decode_batch,
            "decode_ratio": decode_one / decode_batch}


# ---- 1c. the runner on the vLLM engine vs raw vLLM --------------------------------------------------


def measure_vllm(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The runner (lockstep, ``--batch`` live episodes) on the vLLM engine vs raw ``vllm.LLM.generate`` on
    the very requests the runner made: the same prompt ids, grouped in the same calls, with the same
    sampling (max_tokens, temperature, top-p, stop strings, seed, log-probs). vLLM's prefix cache is
    emptied before every timed run. Also the first-turn prompts alone: raw vs ``engine.generate``."""
    llm = getattr(engine, "llm", None)
    if llm is None:
        raise SystemExit(f"--parts vllm needs the vLLM engine (--model vllm:default), not {engine.name}")
    import vllm

    specs = plan_episodes(args.env, split=args.split, num_tasks=args.episodes, seed=args.seed)
    calls: list[tuple[list[Any], list[Any]]] = []
    engine_generate = engine.generate

    def recording(prompts, sampling, on_text=None):
        calls.append((list(prompts), per_prompt_sampling(sampling, len(prompts))))
        return engine_generate(prompts, sampling, on_text=on_text)

    def run_runner() -> dict[str, Any]:
        agent = make_agent("react", args.env, max_tokens=args.max_tokens, temperature=args.temperature)
        runner = EpisodeRunner(args.env, agent, engine, max_concurrent=args.batch, max_steps=args.max_steps,
                               schedule="lockstep")
        llm.reset_prefix_cache()
        s = runner.run(specs).stats
        return {"wall_s": s.wall_s, "generate_s": s.generate_s, "generated_tokens": s.generated_tokens,
                "tokens_per_s": s.tokens_per_s, "generate_calls": s.generate_calls}

    def raw(batches: list[tuple[list[list[int]], list[Any]]]) -> tuple[float, int]:
        llm.reset_prefix_cache()
        start, tokens = time.perf_counter(), 0
        for ids, params in batches:
            outs = llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
            tokens += sum(len(o.outputs[0].token_ids) for o in outs)
        return time.perf_counter() - start, tokens

    def engine_alone(prompts: list[Any], params: list[Any]) -> float:
        llm.reset_prefix_cache()
        start = time.perf_counter()
        engine.generate(prompts, params)
        return time.perf_counter() - start

    engine.generate = recording  # the first runner run records its calls (and warms vLLM up)
    try:
        run_runner()
    finally:
        engine.generate = engine_generate
    batches = [([engine.prompt_ids(p) for p in prompts],
                [vllm.SamplingParams(n=1, max_tokens=sp.max_tokens, temperature=float(sp.temperature),
                                     top_p=float(sp.top_p), stop=[x for x in sp.stop if x] or None, seed=sp.seed,
                                     logprobs=0 if sp.logprobs else None) for sp in params])
               for prompts, params in calls]
    runs: dict[str, list[Any]] = {"runner": [], "raw": [], "first_engine": [], "first_raw": []}
    for _ in range(max(1, args.repeats)):  # interleaved, median reported
        runs["runner"].append(run_runner())
        runs["raw"].append(raw(batches))
        runs["first_engine"].append(engine_alone(*calls[0]))
        runs["first_raw"].append(raw(batches[:1])[0])
    def median(xs: list[Any], key: Any = None) -> Any:
        return sorted(xs, key=key)[(len(xs) - 1) // 2]

    runner = median(runs["runner"], key=lambda r: r["wall_s"])
    raw_s, raw_tokens = median(runs["raw"], key=lambda r: r[0])
    first_engine, first_raw = median(runs["first_engine"]), median(runs["first_raw"])
    out = {"engine": engine.name, "dtype": str(engine.dtype), "calls": len(batches),
           "requests": sum(len(ids) for ids, _ in batches), "runner": runner,
           "raw": {"wall_s": raw_s, "generated_tokens": raw_tokens, "tokens_per_s": raw_tokens / raw_s},
           "first_turn": {"prompts": len(batches[0][0]), "engine_s": first_engine, "raw_s": first_raw,
                          "engine_vs_raw": first_raw / first_engine},
           "runner_vs_raw_wall": raw_s / runner["wall_s"],
           "runner_vs_raw_tokens_per_s": runner["tokens_per_s"] / (raw_tokens / raw_s),
           "runs": {k: v for k, v in runs.items()}}
    print(f"\n== runner on {engine.name} ({out['dtype']}) vs raw vllm.LLM.generate: {args.episodes} ReAct episodes "
          f"of {args.env}, lockstep x{args.batch}, the runner's {out['calls']} generate calls "
          f"({out['requests']} requests) replayed raw ==")
    print(f"{'':22} {'wall s':>8} {'tokens':>7} {'tok/s':>8}")
    print(f"{'runner (end to end)':22} {runner['wall_s']:8.2f} {runner['generated_tokens']:7d} "
          f"{runner['tokens_per_s']:8.1f}")
    print(f"{'raw vLLM (same calls)':22} {raw_s:8.2f} {raw_tokens:7d} {raw_tokens / raw_s:8.1f}")
    print(f"runner vs raw vLLM: wall {out['runner_vs_raw_wall']:.2f}x, tokens/s "
          f"{out['runner_vs_raw_tokens_per_s']:.2f}x (1.0 = no overhead; target >= 0.9)")
    print(f"first-turn prompts alone ({out['first_turn']['prompts']}): engine.generate {first_engine:.2f}s, raw "
          f"{first_raw:.2f}s -> {out['first_turn']['engine_vs_raw']:.2f}x")
    return out


# ---- 1b. the decode step: transformers' concatenating KV layer vs the engine's buffer --------------


def measure_decode(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Time of one decode step with ``--context`` cached tokens per row, at batch 1 and ``--batch``, with
    transformers' ``DynamicLayer`` (concatenates: copies every row's keys/values each step) and with the hf
    engine's growing layer (writes in place), interleaved, median of ``--decode-steps`` steps per try."""
    import statistics

    import torch
    from transformers import DynamicCache

    from turngym.agents.engines.kv_layers import new_cache

    model = getattr(engine, "model", None)
    if model is None:
        raise SystemExit("--parts decode needs the hf engine")
    out: dict[str, Any] = {"context": args.context, "steps": args.decode_steps}
    gen = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().num_embeddings
    for batch in (1, args.batch):
        ids = torch.randint(0, vocab, (batch, args.context), generator=gen)
        times: dict[str, list[float]] = {"dynamic": [], "buffer": []}
        for _ in range(2):
            for kind in times:
                cache = DynamicCache(config=model.config) if kind == "dynamic" else new_cache(
                    model, reserve=args.decode_steps + 1)
                mask = torch.ones(batch, args.context, dtype=torch.long)
                with torch.no_grad():
                    model(input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True,
                          logits_to_keep=1)
                    for step in range(args.decode_steps):
                        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
                        t0 = time.perf_counter()
                        model(input_ids=ids[:, :1], attention_mask=mask, use_cache=True, logits_to_keep=1,
                              position_ids=torch.full((batch, 1), args.context + step), past_key_values=cache)
                        times[kind].append(time.perf_counter() - t0)
        row = {kind: statistics.median(t) * 1000 for kind, t in times.items()}
        row["speedup"] = row["dynamic"] / row["buffer"]
        out[f"batch_{batch}_ms"] = row
    b1, bn = out["batch_1_ms"], out[f"batch_{args.batch}_ms"]
    out["batched_tokens_per_s_gain"] = {kind: args.batch * b1[kind] / bn[kind] for kind in ("dynamic", "buffer")}
    print(f"\n== one decode step with {args.context} cached tokens per row ({engine.name}), median ms ==")
    print(f"{'':10} {'transformers':>13} {'engine buffer':>14} {'speedup':>8}")
    for batch in (1, args.batch):
        r = out[f"batch_{batch}_ms"]
        print(f"batch {batch:<4} {r['dynamic']:13.1f} {r['buffer']:14.1f} {r['speedup']:7.2f}x")
    g = out["batched_tokens_per_s_gain"]
    print(f"tokens/s batched x{args.batch} vs batch 1: {g['dynamic']:.2f}x with transformers' layer, "
          f"{g['buffer']:.2f}x with the engine's buffer")
    return out


# ---- 2. env speed --------------------------------------------------------------------------------


def measure_envs(args: argparse.Namespace) -> list[dict[str, Any]]:
    from turngym.envs import gymnasium_ids

    rows = []
    for env_id in gymnasium_ids():
        env = make_env(env_id)
        agent = make_agent("random")
        steps, start = 0, time.perf_counter()
        episode = 0
        while time.perf_counter() - start < args.env_seconds:
            obs, info = env.reset(seed=episode)
            memory = agent.start(info.get("instruction", ""), obs, info, seed=episode)
            done = False
            while not done:
                answer = None
                query = agent.env_query(memory)
                if query:
                    answer = getattr(env.unwrapped, query)()
                action = agent.act(memory, answer)
                obs, reward, terminated, truncated, info = env.step(action)
                agent.observe(memory, action, obs, reward, info)
                steps += 1
                done = terminated or truncated
            episode += 1
        bare = steps / (time.perf_counter() - start)
        env.close()
        specs = plan_episodes(env_id, split=args.split, num_tasks=args.env_episodes, seed=0)
        result = EpisodeRunner(env_id, make_agent("random"), max_concurrent=16).run(specs)
        rows.append({"env": env_id, "bare_steps_per_s": bare, "bare_steps": steps,
                     "runner_steps_per_s": result.stats.env_steps_per_s, "runner_steps": result.stats.env_steps})
    print("\n== env-steps/s, random agent ==")
    print(f"{'env':28} {'bare loop':>12} {'runner (16 live, threads)':>26}")
    for r in rows:
        print(f"{r['env']:28} {r['bare_steps_per_s']:12.0f} {r['runner_steps_per_s']:26.0f}")
    return rows


# ---- 3. P-ReAct vs ReAct -------------------------------------------------------------------------


def _run_latency(env_id: str, agent: Any, engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    specs = plan_episodes(env_id, split=args.split, num_tasks=args.preact_episodes, seed=args.seed,
                          env_kwargs=args.env_kwargs)
    # lockstep turns for both formats: the gain measured is P-ReAct's overlap of env time with generation
    runner = EpisodeRunner(env_id, agent, engine, env_fn=partial(latency_env, env_id, args.latency, args.env_kwargs),
                           max_concurrent=args.batch, max_steps=args.preact_steps, schedule="lockstep")
    result = runner.run(specs)
    s = result.stats
    acted = [st for t in result.trajectories for st in t.steps if st.info.get("kind", "act") == "act"]
    return {"wall_s": s.wall_s, "generate_s": s.generate_s, "env_wait_s": s.env_wait_s, "env_steps": s.env_steps,
            "turns": s.generate_calls, "generated_tokens": s.generated_tokens,
            "dispatched_early": s.dispatched_early,
            "format_ok": sum(1 for st in acted if st.info.get("format_ok")) / max(1, len(acted)),
            "successes": sum(t.won for t in result.trajectories), "episodes": len(result.trajectories)}


def measure_preact(engine: Any, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"latency_s": args.latency, "env": args.env}
    thought = "Thought: " + "I compare the numbers and pick a move that keeps 24 reachable. " * 2
    # A move in the env's own action language (any string is legal; this one is realistic).
    move = "<search> Vethquith Works founder </search>" if "Search" in args.env else "1 + 1"
    paced = {
        "react": PacedEngine(lambda p: f"{thought}\nAction: {move}", args.paced_tokens_per_s),
        "p-react": PacedEngine(lambda p: f"<action>{move}</action>\n{thought}", args.paced_tokens_per_s),
    }
    for source in ("controlled", "model"):
        if source == "model" and engine is None:
            continue
        rows = {}
        for name in ("react", "p-react"):
            agent = make_agent(name, args.env, max_tokens=args.max_tokens, temperature=args.temperature)
            eng = paced[name] if source == "controlled" else engine
            rows[name] = _run_latency(args.env, agent, eng, args)
            print(f"  {source} {name}: {rows[name]['wall_s']:.1f}s", file=sys.stderr, flush=True)
        rows["speedup"] = rows["react"]["wall_s"] / rows["p-react"]["wall_s"] if rows["p-react"]["wall_s"] else 0.0
        out[source] = rows
        label = (f"controlled stream at {args.paced_tokens_per_s:g} tok/s" if source == "controlled"
                 else getattr(engine, "name", "model"))
        print(f"\n== P-ReAct vs ReAct, {args.env} with {args.latency:g}s per env step, {label} "
              f"({args.preact_episodes} episodes, batch {args.batch}, {args.preact_steps} steps max) ==")
        print(f"{'agent':8} {'wall s':>8} {'gen s':>8} {'env wait s':>11} {'turns':>6} {'early':>6} {'format ok':>10}")
        for name in ("react", "p-react"):
            r = rows[name]
            print(f"{name:8} {r['wall_s']:8.1f} {r['generate_s']:8.1f} {r['env_wait_s']:11.2f} {r['turns']:6d} "
                  f"{r['dispatched_early']:6d} {100 * r['format_ok']:9.0f}%")
        print(f"P-ReAct wall-clock gain: {rows['speedup']:.2f}x")
    return out


# ---- main ------------------------------------------------------------------------------------------


def _bench_dtype(dtype: str, model: str) -> str:
    """``--dtype auto``: bfloat16 for the hf engine on a CPU with native bf16 matmuls, AMX-BF16 or AVX512-BF16
    (``cpu_has_native``; on AMX, at 16 rows of a ReAct prompt, bf16 prefills ~3x and decodes ~1.6x faster than
    float32, while one row decodes ~1.3x slower; on an AVX512-BF16 AMD EPYC without AMX the batched runs took
    16.6 s in bf16 against 37.5 s in float32: see ``--parts batch --dtype float32``); else the engine's own
    default. Log-probs differ from float32 by up to ~0.17 nats (mean ~0.016) on SmolLM2; the engine's own
    default stays float32 on CPU (a trainer shares its weights)."""
    if dtype != "auto" or model.startswith(("vllm:", "openai:")):
        return dtype
    import torch

    from turngym.agents.engines.device import cpu_has_native

    return "bfloat16" if not torch.cuda.is_available() and cpu_has_native("bfloat16") else "auto"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="batch,envs,preact",
                   help="comma list of: batch, decode, envs, preact, vllm (the last with --model vllm:default)")
    p.add_argument("--context", type=int, default=900, help="cached tokens per row (decode)")
    p.add_argument("--decode-steps", type=int, default=16, help="timed decode steps per try (decode)")
    p.add_argument("--model", default="default", help="engine spec (default: the embedded SmolLM2-135M)")
    p.add_argument("--env", default="turngym/Game24-v0")
    p.add_argument("--split", default="test")
    p.add_argument("--env-kwarg", action="append", default=[], metavar="KEY=VALUE",
                   help="env constructor argument (repeatable), e.g. retriever=http://127.0.0.1:8000 for Search")
    p.add_argument("--episodes", type=int, default=16, help="episodes of the batch comparison")
    p.add_argument("--batch", type=int, default=16, help="live episodes in the batched runs")
    p.add_argument("--max-steps", type=int, default=2, help="env steps per episode (batch comparison)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per reply")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--env-seconds", type=float, default=3.0, help="bare-loop time per env")
    p.add_argument("--env-episodes", type=int, default=64, help="runner episodes per env")
    p.add_argument("--latency", type=float, default=0.5, help="seconds added to every env step (preact)")
    p.add_argument("--preact-episodes", type=int, default=8)
    p.add_argument("--preact-steps", type=int, default=3)
    p.add_argument("--paced-tokens-per-s", type=float, default=40.0, help="token rate of the controlled stream")
    p.add_argument("--prefix-cache", choices=("on", "off", "compare"), default="on",
                   help="hf engine's prefix KV cache in the batch comparison; compare: both, side by side")
    p.add_argument("--schedule", choices=("lockstep", "continuous", "compare"), default="compare",
                   help="runner schedule of the batched runs: lockstep turns, continuous batching, or both "
                        "side by side (the sequential run is always lockstep)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of every batch mode, interleaved; the median run is reported (noisy machines)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--dtype", default="auto",
                   help="engine dtype for every run (sequential and batched alike): auto (bfloat16 for the hf engine "
                        "on a CPU with native bf16, AMX-BF16 or AVX512-BF16, else the engine's own: float32 for hf "
                        "on CPU, bfloat16 for vllm), float32 or bfloat16")
    p.add_argument("--out", default="results/rollout_throughput.json")
    args = p.parse_args(argv)
    from turngym.keyvalue import parse_key_values

    args.env_kwargs = parse_key_values(args.env_kwarg, "--env-kwarg")
    parts = {x.strip() for x in args.parts.split(",") if x.strip()}
    unknown = parts - {"batch", "decode", "envs", "preact", "vllm"}
    if unknown:
        p.error(f"unknown part(s) {sorted(unknown)}; use batch, decode, envs, preact, vllm")

    report: dict[str, Any] = {"config": vars(args), "machine": {"python": platform.python_version(),
                                                                "platform": platform.platform(),
                                                                "cpu_count": os.cpu_count()}}
    from turngym.benchmarks.contention import CpuWatch, idle_check

    report["machine"]["other_cores_before"] = idle_check()["other_cores"]
    watch = CpuWatch()
    engine = None
    if parts & {"batch", "decode", "preact", "vllm"}:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see turngym.benchmarks.bench._load_engine
        from turngym.agents.engines import make_engine

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        start = time.perf_counter()
        dtype = _bench_dtype(args.dtype, args.model)
        engine = make_engine(args.model, **({"dtype": dtype} if dtype != "auto" else {}))
        report["engine"] = {"name": engine.name, "load_s": time.perf_counter() - start,
                            "dtype": str(getattr(engine, "dtype", args.dtype))}
        import torch

        report["machine"].update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        print(f"loaded {engine.name} ({report['engine']['dtype']}) in {report['engine']['load_s']:.1f}s; torch threads "
              f"{torch.get_num_threads()}", file=sys.stderr, flush=True)
    if "decode" in parts:
        report["decode"] = measure_decode(engine, args)
    if "batch" in parts:
        report["batch"] = measure_batching(engine, args)
    if "vllm" in parts:
        report["vllm"] = measure_vllm(engine, args)
    if "envs" in parts:
        report["envs"] = measure_envs(args)
    if "preact" in parts:
        report["preact"] = measure_preact(engine, args)
    report["machine"]["other_cores_during"] = watch.stop()["other_cores"]
    report["machine"]["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    others = (report["machine"]["other_cores_before"], report["machine"]["other_cores_during"])
    print("other processes' CPU use (cores): before " + ", during ".join(
        "n/a" if x is None else f"{x:.2f}" for x in others))
    if any(x is not None and x > 0.2 for x in others):
        print("WARNING: other work ran beside this benchmark; its timings are not an idle machine's")
    out = write_text_atomic(args.out, json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
