"""Token-exact samples on SmolLM2's real chat template and tokenizer (no model weights are loaded).

A three-turn BlocksWorld-like episode is built the way the runner builds it
(token in, token out): step k+1's prompt is step k's prompt + the sampled
ids + the template's ids for the closing of the assistant turn and the new
observation. Its sampled responses hold three real re-tokenization traps:

* turn 0 wrote " hello" as the two tokens " hel" + "lo" (a sampled,
  non-canonical split; the tokenizer encodes " hello" as one token);
* turn 1 ended with "\\n" "\\n" as two tokens (the tokenizer merges "\\n\\n")
  and stopped on a stop string, so the template's <|im_end|> was not sampled;
* turn 2 hit max_tokens in the middle of "✓" (3 UTF-8 bytes, 2 tokens):
  its text decodes to U+FFFD, which encodes to other ids.

Decoding the transcript and re-applying the chat template gives other ids;
the samples keep the sampled ones.
"""

from __future__ import annotations

import functools
import operator

import numpy as np
import pytest

from turngym.agents.types import Step, Trajectory
from turngym.credit import compute_advantages
from turngym.trainers.tokens import (
    PrefixBreakError,
    TrainingSample,
    build_samples,
    collate,
    forward_cost,
    loss_normalizers,
    pack_forward,
    pack_microbatches,
    pack_prefix_trees,
    prefix_breaks,
    prefix_tree_size,
    step_batch,
    verify_samples,
)

SYSTEM = "You move blocks. Reply with a thought and an action."
TASK = "Goal: b1 on b2. Observation: b1 is on the table, b2 is on the table."
OBSERVATIONS = ["You hold b1.", "b1 is on b2. Done ✓"]


def enc(tok, text):
    return list(tok(text, add_special_tokens=False)["input_ids"])


def dec(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def render(tok, messages, generation=True):
    """The engines' render: the chat template as text, tokenized without added special tokens."""
    return enc(tok, tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation))


def sampled_responses(tok):
    """The three responses as the policy sampled them (ids), and the engine's text of each."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    hel, lo = tok.convert_tokens_to_ids("Ġhel"), tok.convert_tokens_to_ids("lo")
    newline = tok.convert_tokens_to_ids("Ċ")
    check_half = enc(tok, "✓")[:1]  # the first of the two tokens of "✓"
    r0 = enc(tok, "Thought: I say") + [hel, lo] + enc(tok, ". Action: pick up b1") + [im_end]
    r1 = enc(tok, "Action: stack b1 on b2") + [newline, newline]
    r2 = enc(tok, "Action: finish ") + check_half
    return [r0, r1, r2], ["stop", "stop", "length"]


def continue_ids(tok, prompt_ids, response_ids, observation):
    """Next prompt, token in token out: close the assistant turn (unless sampled), the observation, the header."""
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    close = [] if response_ids and response_ids[-1] == im_end else [im_end]
    suffix = enc(tok, "\n<|im_start|>user\n" + observation + "<|im_end|>\n<|im_start|>assistant\n")
    return prompt_ids + response_ids + close + suffix


def episode(tok, advantage_seed=0, logprob_offset=0.0):
    """A 3-step trajectory built as the runner builds full-context prompts, and its chat messages."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": TASK}]
    responses, finishes = sampled_responses(tok)
    prompt = render(tok, messages)
    steps = []
    rng = np.random.default_rng(advantage_seed)
    for k, (resp, finish) in enumerate(zip(responses, finishes)):
        text = dec(tok, [t for t in resp if t != tok.eos_token_id])
        logprobs = (-rng.random(len(resp)) - logprob_offset).tolist()
        steps.append(Step(observation=messages[-1]["content"], response=text, prompt_ids=prompt,
                          response_ids=resp, response_logprobs=logprobs, finish_reason=finish,
                          reward=1.0 if k == 2 else 0.0, state_key=f"s{k}"))
        messages = messages + [{"role": "assistant", "content": text}]
        if k < len(OBSERVATIONS):
            messages = messages + [{"role": "user", "content": OBSERVATIONS[k]}]
            prompt = continue_ids(tok, prompt, resp, OBSERVATIONS[k])
    traj = Trajectory(env_id="turngym/BlocksWorld-v0", task_id="t/0", group_id="t/0", steps=steps, won=True)
    return traj, messages


def test_the_template_renders_what_the_continued_ids_decode_to(smollm2_tokenizer):
    """The continuation is the template's own rendering: decoded, each prompt is the template's text."""
    tok = smollm2_tokenizer
    traj, messages = episode(tok)
    assert "<|im_start|>system" in dec(tok, traj.steps[0].prompt_ids)
    # Prompts 1 and 2 decode to exactly the template's text of the chat so far (the ids differ: see below).
    assert dec(tok, traj.steps[1].prompt_ids) == tok.apply_chat_template(messages[:4], tokenize=False,
                                                                         add_generation_prompt=True)
    assert dec(tok, traj.steps[2].prompt_ids) == tok.apply_chat_template(messages[:6], tokenize=False,
                                                                         add_generation_prompt=True)


def test_in_context_mask_covers_exactly_the_sampled_ids(smollm2_tokenizer):
    tok = smollm2_tokenizer
    traj, _ = episode(tok)
    (sample,) = build_samples([traj], mode="in_context")
    verify_samples([sample], [traj])
    assert sample.input_ids == traj.steps[-1].prompt_ids + traj.steps[-1].response_ids
    ids, mask = np.array(sample.input_ids), np.array(sample.loss_mask)
    responses = [s.response_ids for s in traj.steps]
    assert ids[mask == 1].tolist() == functools.reduce(operator.iadd, responses, [])
    assert mask.sum() == sum(len(r) for r in responses) == sum(len(s.response_logprobs) for s in traj.steps)
    # Exactly the sampled spans are 1: one contiguous run per step, at the end of that step's prompt.
    runs = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    starts, ends = runs[::2], runs[1::2]
    assert starts.tolist() == [len(s.prompt_ids) for s in traj.steps]
    assert (ends - starts).tolist() == [len(r) for r in responses]
    # Template tokens the policy did not sample carry no loss; the <|im_end|> it sampled does.
    im_end, im_start = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|im_start|>")
    sampled_end = len(traj.steps[0].prompt_ids) + len(responses[0]) - 1
    assert ids[sampled_end] == im_end and mask[sampled_end] == 1
    assert all(mask[t] == 0 for t in np.flatnonzero(ids == im_start))
    inserted_end = len(traj.steps[1].prompt_ids) + len(responses[1])  # turn 1 stopped on a stop string
    assert ids[inserted_end] == im_end and mask[inserted_end] == 0
    header = enc(tok, "<|im_start|>assistant\n")
    assert ids[mask == 0][-len(header):].tolist() == header
    observation = enc(tok, OBSERVATIONS[0])
    at = len(traj.steps[0].prompt_ids) + len(responses[0])
    window = ids[at:len(traj.steps[1].prompt_ids)].tolist()
    assert any(window[i:i + len(observation)] == observation for i in range(len(window)))
    assert mask[at:len(traj.steps[1].prompt_ids)].sum() == 0
    # Old log-probs sit on the sampled positions, 0 elsewhere.
    logp = np.array(sample.old_logprobs)
    assert logp[mask == 1].tolist() == functools.reduce(operator.iadd, (s.response_logprobs for s in traj.steps), [])
    assert (logp[mask == 0] == 0).all()


def test_retokenizing_the_transcript_gives_other_ids(smollm2_tokenizer):
    """The re-tokenization trap, on SmolLM2's real tokenizer: the decoded transcript re-encodes differently."""
    tok = smollm2_tokenizer
    traj, messages = episode(tok)
    (sample,) = build_samples([traj], mode="in_context")
    retokenized = render(tok, messages, generation=False)
    assert retokenized != sample.input_ids
    # Each trap on its own.
    hel, lo, hello = (tok.convert_tokens_to_ids(t) for t in ("Ġhel", "lo", "Ġhello"))
    assert enc(tok, " hello") == [hello]
    assert dec(tok, [hel, lo]) == " hello"
    r0, r1, r2 = (s.response_ids for s in traj.steps)
    assert enc(tok, traj.steps[0].response) != r0[:-1]  # " hel" "lo" comes back as " hello"
    assert hello in retokenized and hello not in sample.input_ids
    assert enc(tok, traj.steps[1].response) != r1  # "\n" "\n" comes back as "\n\n"
    assert enc(tok, "\n\n") == [tok.convert_tokens_to_ids("ĊĊ")]
    assert traj.steps[2].response.endswith("\ufffd")  # half of "✓": the text cannot say which bytes were sampled
    assert enc(tok, traj.steps[2].response) != r2
    # The stepwise samples carry the sampled ids too, never the text's.
    stepwise = build_samples([traj], mode="stepwise")
    for s, step in zip(stepwise, traj.steps):
        assert s.input_ids == step.prompt_ids + step.response_ids
        assert [t for t, m in zip(s.input_ids, s.loss_mask) if m] == step.response_ids


def test_stepwise_mask_is_exactly_the_response(smollm2_tokenizer):
    traj, _ = episode(smollm2_tokenizer)
    samples = build_samples([traj], mode="stepwise")
    verify_samples(samples, [traj])
    assert len(samples) == 3
    for k, (s, step) in enumerate(zip(samples, traj.steps)):
        assert s.loss_mask == [0] * len(step.prompt_ids) + [1] * len(step.response_ids)
        assert s.segment_ids == [-1] * len(step.prompt_ids) + [k] * len(step.response_ids)
        assert s.steps == (k,) and s.traj_index == 0


def broken_episode(tok):
    """Step 2's prompt re-rendered from the decoded text (what a naive agent loop does)."""
    traj, messages = episode(tok)
    traj.steps[2].prompt_ids = render(tok, messages[:6])
    return traj


def test_prefix_check_catches_a_re_rendered_prompt(smollm2_tokenizer):
    tok = smollm2_tokenizer
    traj = broken_episode(tok)
    with pytest.raises(PrefixBreakError, match=r"trajectory 0 .*step 2's prompt_ids do not extend step 1's") as err:
        build_samples([traj], mode="in_context", tokenizer=tok)
    # The message points at the first differing token: " hel" was sampled, " hello" re-rendered.
    assert "'Ġhel'" not in str(err.value) and "' hel'" in str(err.value) and "' hello'" in str(err.value)
    (brk,) = prefix_breaks(traj)
    assert brk.step == 2
    assert traj.steps[1].prompt_ids[:brk.position] == traj.steps[2].prompt_ids[:brk.position]
    assert brk.expected == tok.convert_tokens_to_ids("Ġhel") and brk.got == tok.convert_tokens_to_ids("Ġhello")
    assert prefix_breaks(episode(tok)[0]) == []


def test_broken_prefix_splits_or_falls_back(smollm2_tokenizer):
    traj = broken_episode(smollm2_tokenizer)
    split = build_samples([traj], mode="in_context", on_break="split")
    assert [s.steps for s in split] == [(0, 1), (2,)]
    assert split[1].input_ids == traj.steps[2].prompt_ids + traj.steps[2].response_ids
    assert [s.steps for s in build_samples([traj], mode="auto")] == [(0, 1), (2,)]
    assert [s.steps for s in build_samples([traj], mode="in_context", on_break="stepwise")] == [(0,), (1,), (2,)]
    verify_samples(split, [traj])


def test_advantages_are_broadcast_per_step(smollm2_tokenizer):
    tok = smollm2_tokenizer
    trajs = [episode(tok, advantage_seed=i)[0] for i in range(3)]
    trajs[1].steps[2].reward = 0.0  # a failure in the group
    for t in trajs:
        t.group_id = "t/0"
    batch = step_batch(trajs)
    assert batch.traj_id.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and batch.step.tolist() == [0, 1, 2] * 3
    grpo = compute_advantages("grpo", batch)
    assert grpo[3] < 0 < grpo[0]
    per_step = np.arange(9, dtype=float) - 4.0  # distinct on every step, to see where each one lands
    for mode in ("in_context", "stepwise"):
        for adv in (grpo, per_step, per_step.reshape(3, 3).tolist()):
            samples = build_samples(trajs, adv, mode=mode)
            verify_samples(samples, trajs)
            flat = np.asarray(adv, dtype=float).reshape(-1)
            for s in samples:
                a, seg, m = np.array(s.advantages), np.array(s.segment_ids), np.array(s.loss_mask)
                assert (a[m == 0] == 0).all()
                for k in s.steps:
                    assert np.allclose(a[seg == k], flat[3 * s.traj_index + k])
                    assert (seg == k).sum() == len(trajs[s.traj_index].steps[k].response_ids)
    with pytest.raises(ValueError, match="got 8 advantages for 9 steps"):
        build_samples(trajs, per_step[:8])
    assert build_samples(trajs)[0].advantages is None


def test_bad_inputs_are_clear_errors(smollm2_tokenizer):
    traj, _ = episode(smollm2_tokenizer)
    with pytest.raises(ValueError, match="unknown sample mode 'context'"):
        build_samples([traj], mode="context")
    traj.steps[1].response_logprobs = traj.steps[1].response_logprobs[:-1]
    with pytest.raises(ValueError, match=r"step 1 has \d+ response_ids but \d+ response_logprobs"):
        build_samples([traj])
    traj.steps[1].response_ids = None
    with pytest.raises(ValueError, match="step 1 has no token ids"):
        build_samples([traj])
    failed = Trajectory(env_id="e", task_id="t/1", group_id="g", error="sandbox died")
    with pytest.raises(ValueError, match="failed in its env"):
        step_batch([failed])


def test_missing_engine_logprobs_and_skipped_steps(smollm2_tokenizer):
    traj, _ = episode(smollm2_tokenizer)
    traj.steps[1].response_logprobs = None
    (sample,) = build_samples([traj], mode="in_context")
    assert sample.old_logprobs is None
    skipped = build_samples([traj], mode="in_context", skip_steps=lambda s: s.finish_reason == "length")
    (s,) = skipped
    assert s.steps == (0, 1) and s.input_ids == sample.input_ids
    assert sum(s.loss_mask) == len(traj.steps[0].response_ids) + len(traj.steps[1].response_ids)
    assert len(build_samples([traj], mode="stepwise", skip_steps=lambda s: s.finish_reason == "length")) == 2


# ---- collation and micro-batches (plain ids, no tokenizer) ---------------------------------------------


def toy_sample(n_prompt, responses, traj_index=0):
    ids, mask, adv, logp, seg = list(range(1, n_prompt + 1)), [0] * n_prompt, [0.0] * n_prompt, [0.0] * n_prompt, \
        [-1] * n_prompt
    for k, r in enumerate(responses):
        ids += [100 + k] * r + [7]
        mask += [1] * r + [0]
        adv += [float(k + 1)] * r + [0.0]
        logp += [-0.5] * r + [0.0]
        seg += [k] * r + [-1]
    return TrainingSample(ids, mask, adv, logp, seg, traj_index, tuple(range(len(responses))))


def test_collate_pads_right_with_positions_and_segments(torch):
    samples = [toy_sample(3, [2]), toy_sample(2, [1, 2, 0])]
    batch = collate(samples, pad_token_id=9)
    assert batch.input_ids.shape == (2, 8)  # lengths 6 and 8
    assert batch.input_ids[0, 6:].eq(9).all() and batch.attention_mask[0].tolist() == [1] * 6 + [0] * 2
    assert batch.position_ids[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 0]
    assert batch.position_ids[1].tolist() == list(range(8))
    assert batch.loss_mask[0].tolist() == [0, 0, 0, 1, 1, 0, 0, 0]
    assert batch.segment_ids[0].tolist() == [-1, -1, -1, 0, 0, -1, -1, -1]
    assert batch.segment_ids[1].tolist() == [-1, -1, 1, -1, 2, 2, -1, -1]  # empty step 2: no segment
    assert batch.advantages[1, 4].item() == 2.0 and batch.old_logprobs[0, 3].item() == -0.5
    assert batch.num_tokens == 14
    assert collate(samples, pad_to_multiple_of=5).input_ids.shape == (2, 10)
    assert collate(samples, indices=[1]).sample_indices == [1]
    no_adv = TrainingSample([1, 2], [0, 1], None, None, [-1, 0], 0, (0,))
    assert collate([no_adv]).advantages is None and collate([no_adv]).old_logprobs is None
    assert loss_normalizers(samples) == {"num_tokens": 5, "num_samples": 2, "num_steps": 3}


def test_prefix_tree_size_counts_each_shared_token_once():
    system, a, b = [1, 2, 3, 4], [5, 6], [7, 8, 9]
    assert prefix_tree_size([]) == 0
    assert prefix_tree_size([system + a]) == 6
    # A trajectory's turns: each prompt repeats the one before; a reply ends each row.
    turns = [system + a + [20], system + a + b + [21], system + a + b + [30, 31]]
    assert prefix_tree_size(turns) == 4 + 2 + 1 + 3 + 1 + 2
    assert prefix_tree_size(turns[::-1]) == prefix_tree_size(turns)  # order does not matter
    assert prefix_tree_size([system + a, system + a]) == 6  # a duplicate row costs nothing
    assert prefix_tree_size([[1, 2], [2, 1]]) == 4  # only a common START is shared


def test_pack_prefix_trees_keeps_order_and_the_tree_budget():
    system = list(range(100, 110))
    rows = [system + [1] * 5, system + [1] * 5 + [2] * 5, system + [3] * 20, system + [4] * 3, [9] * 40]
    batches = pack_prefix_trees(rows, max_tokens=40)
    assert [i for b in batches for i in b] == list(range(len(rows)))  # every row once, in the order given
    for b in batches:
        assert len(b) == 1 or prefix_tree_size([rows[i] for i in b]) <= 40
    # rows 0-1 hold 15 + 5 tokens; row 2 adds 20 (the system prompt is shared): 40; row 3 would make 43
    assert batches == [[0, 1, 2], [3], [4]]
    assert pack_prefix_trees([[1] * 50, [2]], max_tokens=10) == [[0], [1]]
    samples = [TrainingSample(r, [1] * len(r), None, None, [0] * len(r), i, (0,)) for i, r in enumerate(rows)]
    assert pack_prefix_trees(samples, max_tokens=40) == batches
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        pack_prefix_trees(rows, max_tokens=0)


def test_forward_cost_is_the_tree_only_when_the_forward_packs_it():
    system = list(range(100, 110))
    turns = [system + [1] * 5, system + [1] * 5 + [2] * 5, system + [1] * 5 + [2] * 5 + [3] * 10]
    assert forward_cost([turns[0]], 1000) == 15  # one row: itself
    assert forward_cost(turns, 1000) == 30  # the tree: the last turn holds the other two
    assert forward_cost(turns, 29) == 3 * 30  # a tree over the limit is not packed: rows x longest
    # unrelated rows of one length: the tree saves nothing, so the padded rows run
    assert forward_cost([[1] * 10, [2] * 10], 1000) == 20
    # the tree must save a tenth: 19 of 20 padded positions is not enough
    assert forward_cost([[1] * 10, [2] * 9], 1000) == 20 and forward_cost([[1] * 10, [2] * 8], 1000) == 18


def test_pack_forward_shares_a_trajectorys_turns_and_keeps_the_padded_packing_otherwise():
    system = list(range(100, 130))
    episode = [system + [1] * k + [9] for k in range(0, 60, 10)]  # each turn repeats the one before
    other = [list(range(200, 230)) + [2] * k + [8] for k in range(0, 60, 10)]
    rows = episode + other
    budget, limit = 100, 1000  # one episode's tree (86 tokens) fits, not with another row
    trees = pack_forward(rows, budget, True, limit)
    padded = pack_forward(rows, budget, False, limit)
    assert padded == pack_microbatches([len(r) for r in rows], budget)  # share_prefix off: the old packing
    for groups in (trees, padded):
        assert sorted(i for g in groups for i in g) == list(range(len(rows)))
    # in order, each episode's turns form one tree: 30 + 50 tokens and the 6 turns' ends
    assert trees == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    cost = [sum(forward_cost([rows[i] for i in g], limit) for g in groups) for groups in (trees, padded)]
    assert cost == [2 * (30 + 50 + 6), sum(len(r) for r in rows)]  # padded: only rows of one length pair up
    # rows that share nothing: trees would not save, so the padded packing (longest first) stays
    unrelated = [[k] * n for k, n in enumerate((5, 40, 12, 33, 7))]
    assert pack_forward(unrelated, 50, True, limit) == pack_microbatches([len(r) for r in unrelated], 50)


def test_pack_microbatches_respects_the_token_budget():
    lengths = [5, 30, 12, 12, 7, 50, 1, 29]
    batches = pack_microbatches(lengths, max_tokens=60)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 60
    assert batches[0] == [5]  # longest first
    assert pack_microbatches(lengths, max_tokens=60) == batches  # deterministic
    assert pack_microbatches([100, 3], max_tokens=10) == [[0], [1]]  # too long: alone
    assert all(len(b) <= 2 for b in pack_microbatches(lengths, max_tokens=10_000, max_batch_size=2))
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        pack_microbatches(lengths, max_tokens=0)
