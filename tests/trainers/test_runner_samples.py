"""The runner's own trajectories (a tiny model playing Game24) become exact samples, both ways.

Couples the trainer's token layer to what :mod:`turngym.agents.runner`
actually records: "full" context prompts form one token stream (one sample
per episode), "summary" context restarts the prompt after the summary (the
sample splits there), and the trainer's recomputed log-probs equal the
engine's on every sampled token.
"""

from __future__ import annotations

import pytest

from turngym.trainers.logprobs import compare_logprobs, sequence_logprobs
from turngym.trainers.tokens import PrefixBreakError, build_samples, collate, prefix_breaks, verify_samples

G24 = "turngym/Game24-v0"


@pytest.fixture(scope="module")
def long_engine(tiny_tokenizer, make_tiny_model):
    from turngym.agents.engines.hf import HFEngine

    model = make_tiny_model(tiny_tokenizer, seed=7)
    model.config.max_position_embeddings = 4096  # Game24's instruction is long in a 300-token vocabulary
    return HFEngine((model, tiny_tokenizer), name="hf:tiny", max_batch_size=8, eos_token_ids=[])


def run(engine, context, **agent_kw):
    from turngym.agents.factory import make_agent
    from turngym.agents.runner import EpisodeRunner, plan_episodes

    agent = make_agent("react", G24, context=context, num_exemplars=0, **agent_kw)
    return EpisodeRunner(G24, agent, engine, max_concurrent=2, max_steps=3).run(
        plan_episodes(G24, num_tasks=1, group_size=2, seed=0)).trajectories


def test_full_context_episodes_are_one_sequence_with_the_engines_logprobs(torch, long_engine, tiny_tokenizer):
    trajs = run(long_engine, "full", max_tokens=6)
    assert all(t.error is None and t.num_turns >= 2 for t in trajs)
    samples = build_samples(trajs, [1.0] * sum(t.num_turns for t in trajs), mode="in_context")
    verify_samples(samples, trajs)
    assert [s.steps for s in samples] == [tuple(range(t.num_turns)) for t in trajs]
    batch = collate(samples, pad_token_id=tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        trainer = sequence_logprobs(long_engine.model, batch.input_ids, batch.attention_mask,
                                    loss_mask=batch.loss_mask)
    report = compare_logprobs(batch.old_logprobs, trainer, batch.loss_mask)
    assert report["num_tokens"] == sum(len(s.response_ids) for t in trajs for s in t.steps)
    assert report["max_abs_diff"] < 1e-4, report


def test_summary_context_splits_where_the_prompt_restarts(long_engine):
    trajs = run(long_engine, "summary", max_tokens=5, summary_trigger_tokens=1, max_summaries=1)
    traj = trajs[0]
    kinds = [s.info["kind"] for s in traj.steps]
    assert "summarize" in kinds
    breaks = [b.step for b in prefix_breaks(traj)]
    # The turns up to the summary form one stream; the turn after it starts a fresh prompt. (So do the
    # later ones today: the agent re-lays out its messages after a summary, so the runner re-renders them.)
    assert breaks[0] == kinds.index("summarize") + 1
    with pytest.raises(PrefixBreakError, match=f"step {breaks[0]}'s prompt_ids do not extend"):
        build_samples([traj], mode="in_context")
    samples = build_samples([traj], mode="auto")
    verify_samples(samples, [traj])
    assert [s.steps[0] for s in samples] == [0] + breaks
    assert samples[0].steps == tuple(range(breaks[0]))


@pytest.mark.slow
def test_smollm2_rollouts_train_in_context_with_matching_logprobs(torch):
    """The real thing: SmolLM2-135M-Instruct plays BlocksWorld with full context; recomputation matches."""
    from turngym.agents.engines.hf import HFEngine
    from turngym.agents.factory import make_agent
    from turngym.agents.runner import EpisodeRunner, plan_episodes

    torch.set_num_threads(2)
    engine = HFEngine("default", device="cpu", progress=False)
    env_id = "turngym/BlocksWorld-v0"
    agent = make_agent("react", env_id, context="full", max_tokens=32)
    trajs = EpisodeRunner(env_id, agent, engine, max_concurrent=2, max_steps=2).run(
        plan_episodes(env_id, num_tasks=1, group_size=2, seed=0)).trajectories
    samples = build_samples(trajs, mode="in_context")
    verify_samples(samples, trajs)
    assert len(samples) == len(trajs)
    batch = collate(samples, pad_token_id=engine.pad_token_id)
    with torch.no_grad():
        trainer = sequence_logprobs(engine.model, batch.input_ids, batch.attention_mask, loss_mask=batch.loss_mask)
    report = compare_logprobs(batch.old_logprobs, trainer, batch.loss_mask)
    print(f"SmolLM2 engine vs trainer log-probs: {report}")
    assert report["max_abs_diff"] < 1e-3, report
