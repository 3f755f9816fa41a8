"""One eval record: the RL trainer's eval and the SFT trainer's eval log the same keys, built by
turngym.agents.evaluation.eval_record (bench's row reads the same record; tests/test_bench_cli.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

AGENT = "agent.options={system_prompt: go right, num_exemplars: 0, format_reminder: false, prefill: false}"


def _check(record: dict, split: str, tasks: int) -> None:
    from turngym.agents.evaluation import EvalRecord, wilson_interval

    fields = {f.name for f in dataclasses.fields(EvalRecord)}
    assert set(record) == fields | {"kind", "iteration"}, set(record) ^ (fields | {"kind", "iteration"})
    assert record["kind"] == "eval" and record["split"] == split
    assert record["episodes"] + record["env_errors"] == tasks and record["env_errors"] == 0
    assert record["successes"] == round(record["success_rate"] * record["episodes"])
    assert (record["ci_low"], record["ci_high"]) == wilson_interval(record["successes"], record["episodes"])
    assert math.isfinite(record["reward_mean"]) and record["turns_mean"] >= 1 and record["time_eval"] > 0


def test_rl_and_sft_evals_log_the_same_record(corridor, tmp_path):
    from turngym.trainers.config import RLConfig, SFTConfig, load_config
    from turngym.trainers.rl import RLTrainer
    from turngym.trainers.sft import SFTTrainer

    torch.set_num_threads(1)
    tok = corridor.word_tokenizer()
    common = [f"env.id={corridor.ENV_ID}", AGENT, "agent.max_tokens=1", "run.eval_tasks=4", "run.tensorboard=false"]
    rl = RLTrainer(load_config(RLConfig, None, [*common, f"run.dir={tmp_path / 'rl'}", "run.progress=false"]),
                   model=corridor.tiny_policy(tok, seed=0), tokenizer=tok)
    rl.engine.eos_token_ids = frozenset()
    rl_record = rl.evaluate()
    rl.log.close()
    sft = SFTTrainer(load_config(SFTConfig, None, [*common, f"run.dir={tmp_path / 'sft'}"]),
                     model=corridor.tiny_policy(tok, seed=0), tokenizer=tok)
    sft.engine.eos_token_ids = frozenset()
    sft_record = sft.evaluate(0)
    sft.log.close()
    split = rl.cfg.env.eval_split
    _check(rl_record, split, 4)
    _check(sft_record, split, 4)
    for run, record in (("rl", rl_record), ("sft", sft_record)):  # what metrics.jsonl holds is the record
        logged = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        assert logged[-1] == record
