"""sequence_logprobs: equal to a plain reference (values and gradients) and to HFEngine's own log-probs.

All on a tiny random Llama (tests/trainers/conftest.py).
"""

from __future__ import annotations

import sys
import types

import pytest

from turngym.agents.types import SamplingParams, Step, Trajectory
from turngym.trainers.logprobs import (
    MIN_SHARED_PREFIX,
    compare_logprobs,
    reference_sequence_logprobs,
    sequence_logprobs,
    shared_prefix_length,
    token_logprobs,
)
from turngym.trainers.tokens import build_samples, collate, verify_samples


def padded_batch(torch, tokenizer, texts):
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


TEXTS = ["Thought: move the red block first.", "Observation: the hand is empty.", "Déjà vu ✓"]


@pytest.mark.parametrize("impl", ["chunked", "auto"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_equals_the_reference_with_gradients(torch, tiny_tokenizer, make_tiny_model, temperature, impl):
    """The chunked path, and "auto" (turngym.kernels' fused op when it is there), against the full-logits reference."""
    model = make_tiny_model(tiny_tokenizer, seed=1)
    ids, mask = padded_batch(torch, tiny_tokenizer, TEXTS)
    loss_mask = mask.clone()
    loss_mask[:, :3] = 0  # only part of each row: the head runs there alone
    weights = torch.randn(ids.shape, generator=torch.Generator().manual_seed(0))
    results = {}
    for name in (impl, "reference"):
        model.zero_grad()
        logp, ent = sequence_logprobs(model, ids, mask, temperature=temperature, with_entropy=True,
                                      loss_mask=loss_mask, chunk_size=3, impl=name)
        ((logp * weights).sum() + (ent * weights.flip(0)).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results[name] = (logp.detach(), ent.detach(), grads)
    (lc, ec, gc), (lr, er, gr) = results[impl], results["reference"]
    assert torch.allclose(lc, lr, atol=1e-5) and torch.allclose(ec, er, atol=1e-5)
    assert (lc[loss_mask == 0] == 0).all() and (lc[loss_mask == 1] < 0).all()
    assert (ec[loss_mask == 1] > 0).all()
    for name in gc:
        assert torch.allclose(gc[name], gr[name], atol=1e-5, rtol=1e-4), name
    # Without a loss mask every real position t >= 1 gets its log-prob; padding and position 0 stay 0.
    full = sequence_logprobs(model, ids, mask, temperature=temperature, impl=impl)
    assert (full[:, 0] == 0).all() and (full[mask == 0] == 0).all() and (full[:, 1:][mask[:, 1:] == 1] < 0).all()
    assert torch.allclose(full[loss_mask == 1], lc[loss_mask == 1], atol=1e-5)


@pytest.mark.parametrize("impl", ["chunked", "auto"])
def test_a_shared_prefix_computed_once_gives_the_same_values_and_gradients(torch, make_tiny_model, tiny_tokenizer,
                                                                             impl, monkeypatch):
    """A GRPO group: one prompt, several replies of different lengths (right padded); the prompt runs once, the
    replies after it either packed into one sequence (no padding computed) or with the prompt's cache repeated."""
    import turngym.trainers.logprobs as logprobs_module

    model = make_tiny_model(tiny_tokenizer, seed=2)
    gen = torch.Generator().manual_seed(3)
    prompt = torch.randint(3, 250, (MIN_SHARED_PREFIX + 5,), generator=gen).tolist()
    rows = [prompt + torch.randint(3, 250, (n,), generator=gen).tolist() for n in (9, 4, 12, 1)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tiny_tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    loss_mask = mask.clone()
    loss_mask[:, :len(prompt)] = 0  # the replies only, as the trainer's samples
    p = shared_prefix_length(ids, mask, loss_mask.bool(), model)
    assert p == len(prompt) - 1  # the last prompt token predicts the first reply token: it stays per row
    weights = torch.randn(ids.shape, generator=gen)
    assert logprobs_module._packed_remainders(mask, mask.cumsum(-1) - 1, p) is not None
    results = {}
    for mode in ("unshared", "packed", "repeated"):
        monkeypatch.setattr(logprobs_module, "MAX_PACKED_SCORES", 0 if mode == "repeated" else 1 << 23)
        model.zero_grad()
        logp, ent = sequence_logprobs(model, ids, mask, temperature=0.7, with_entropy=True, loss_mask=loss_mask,
                                      impl=impl, share_prefix=mode != "unshared")
        ((logp * weights).sum() + (ent * weights.flip(0)).sum()).backward()
        results[mode] = (logp.detach(), ent.detach(), {n: q.grad.clone() for n, q in model.named_parameters()})
    l0, e0, g0 = results["unshared"]
    for mode in ("packed", "repeated"):
        l1, e1, g1 = results[mode]
        assert torch.allclose(l0, l1, atol=1e-5) and torch.allclose(e0, e1, atol=1e-5), mode
        assert (l1[loss_mask == 0] == 0).all() and (l1[loss_mask == 1] < 0).all()
        for name in g0:
            assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=1e-4), (mode, name)
    # Packing needs right padding (a left-padded row keeps the repeated cache) and a bounded score matrix.
    assert logprobs_module._packed_remainders(mask.flip(-1), mask.cumsum(-1) - 1, p) is None
    # Nothing worth sharing: a short prefix, one row, or a wanted position inside the common run.
    assert shared_prefix_length(ids[:, :MIN_SHARED_PREFIX], mask[:, :MIN_SHARED_PREFIX],
                                loss_mask[:, :MIN_SHARED_PREFIX].bool(), model) == 0
    assert shared_prefix_length(ids[:1], mask[:1], loss_mask[:1].bool(), model) == 0
    assert shared_prefix_length(ids, mask, mask.bool(), model) == 0


@pytest.mark.parametrize("impl", ["chunked", "auto"])
def test_a_prefix_tree_computed_once_gives_the_same_values_and_gradients(torch, make_tiny_model, tiny_tokenizer,
                                                                           impl, monkeypatch):
    """A multi-turn trajectory's turns as SFT rows: each prompt repeats the transcript before it, so the rows share
    much more than what ALL of them start with. Packed as their prefix tree (each shared token once, every token
    attending to its ancestors) the log-probs, entropies and gradients are the unshared ones."""
    import turngym.trainers.logprobs as logprobs_module

    model = make_tiny_model(tiny_tokenizer, seed=2)
    gen = torch.Generator().manual_seed(5)

    def rand(n):
        return torch.randint(3, 250, (n,), generator=gen).tolist()

    system, t1, t2, t3 = rand(MIN_SHARED_PREFIX + 2), rand(11), rand(7), rand(9)
    rows = [system + t1 + rand(3), system + t1 + t2 + rand(4), system + t1 + t2 + t3 + rand(2), system + rand(6)]
    prompts = [len(r) - n for r, n in zip(rows, (3, 4, 2, 6))]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tiny_tokenizer.pad_token_id, dtype=torch.long)
    mask, loss_mask = torch.zeros_like(ids), torch.zeros(ids.shape)
    for i, (r, n) in enumerate(zip(rows, prompts)):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
        loss_mask[i, n:len(r)] = 1  # the replies only, as SFT samples
    positions = mask.cumsum(-1) - 1
    tree = logprobs_module._prefix_tree(ids, mask, positions.clamp(min=0) * mask, 0)
    assert tree is not None
    packed, pos, node, attend = tree
    # Worked size: the system prompt and t1 once, t2 once more, t3, and every row's own tail.
    assert len(packed) == len(system) + 11 + 7 + 9 + 3 + 4 + 2 + 6
    from turngym.trainers.tokens import prefix_tree_size

    assert prefix_tree_size(rows) == len(packed)
    # A row's tokens sit at their own positions and see exactly that row's earlier tokens.
    for r, row in enumerate(rows):
        n = len(row)
        assert packed[node[r, :n]].tolist() == row and pos[node[r, :n]].tolist() == list(range(n))
        sub = attend[0, 0][node[r, :n]][:, node[r, :n]]
        assert torch.equal(sub, torch.ones(n, n, dtype=torch.bool).tril())
    weights = torch.randn(ids.shape, generator=gen)
    results = {}
    for share in (False, True):
        model.zero_grad()
        logp, ent = sequence_logprobs(model, ids, mask, temperature=0.7, with_entropy=True, loss_mask=loss_mask,
                                      impl=impl, share_prefix=share)
        ((logp * weights).sum() + (ent * weights.flip(0)).sum()).backward()
        results[share] = (logp.detach(), ent.detach(), {n: q.grad.clone() for n, q in model.named_parameters()})
    (l0, e0, g0), (l1, e1, g1) = results[False], results[True]
    assert torch.allclose(l0, l1, atol=1e-5) and torch.allclose(e0, e1, atol=1e-5)
    assert (l1[loss_mask == 0] == 0).all() and (l1[loss_mask == 1] < 0).all()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=1e-4), name
    # Not taken: left padding, a tree over the score bound, rows that share (almost) nothing.
    assert logprobs_module._prefix_tree(ids, mask.flip(-1), positions, 0) is None
    monkeypatch.setattr(logprobs_module, "MAX_PACKED_SCORES", len(packed) ** 2 - 1)
    assert logprobs_module._prefix_tree(ids, mask, positions, 0) is None
    monkeypatch.undo()
    apart = torch.tensor([rand(20), rand(20)])
    assert logprobs_module._prefix_tree(apart, torch.ones_like(apart), torch.arange(20).expand(2, 20), 0) is None


def test_reference_is_the_plain_formula(torch, tiny_tokenizer, tiny_model):
    ids, mask = padded_batch(torch, tiny_tokenizer, TEXTS[:1])
    with torch.no_grad():
        logits = tiny_model(input_ids=ids).logits[0]
        ref = reference_sequence_logprobs(tiny_model, ids, mask)[0]
    for t in range(1, ids.shape[1]):
        expected = torch.log_softmax(logits[t - 1], -1)[ids[0, t]]
        assert abs(ref[t].item() - expected.item()) < 1e-5


def test_equals_the_engines_logprobs_over_a_multi_turn_rollout(torch, tiny_engine, tiny_tokenizer, tiny_model):
    """The engine samples two turns (token in, token out); the trainer's recomputation agrees on every token."""
    tok = tiny_tokenizer
    chats = [[{"role": "user", "content": c}] for c in ("Observation: the hand is empty.", "Action: answer", "Déjà")]
    prompts = [tiny_engine.render(c) for c in chats]
    trajs = [Trajectory(env_id="e", task_id=f"t/{i}", group_id="g") for i in range(len(chats))]
    for turn in range(2):
        params = [SamplingParams(max_tokens=6 + 3 * i, temperature=0.8 if i else 1.0, top_p=0.9 if i == 2 else 1.0,
                                 seed=10 * turn + i) for i in range(len(prompts))]
        outs = tiny_engine.generate(prompts, params)
        for i, (prompt, out) in enumerate(zip(prompts, outs)):
            trajs[i].steps.append(Step(observation="", prompt_ids=prompt, response_ids=out.token_ids,
                                       response_logprobs=out.logprobs, response=out.text))
            suffix = tok("<|im_end|>\n<|im_start|>user\nObservation: ok.<|im_end|>\n<|im_start|>assistant\n",
                         add_special_tokens=False)["input_ids"]
            prompts[i] = prompt + out.token_ids + suffix
    for mode in ("in_context", "stepwise"):
        samples = build_samples(trajs, mode=mode)
        verify_samples(samples, trajs)
        batch = collate(samples, pad_token_id=tok.pad_token_id)
        with torch.no_grad():
            trainer = sequence_logprobs(tiny_model, batch.input_ids, batch.attention_mask, loss_mask=batch.loss_mask)
        report = compare_logprobs(batch.old_logprobs, trainer, batch.loss_mask)
        assert report["num_tokens"] == sum(len(s.response_ids) for t in trajs for s in t.steps)
        assert report["max_abs_diff"] < 1e-4, report


def test_compare_logprobs_reports_the_gap(torch):
    engine = torch.tensor([[0.0, -1.0, -2.0], [0.0, -0.5, 0.0]])
    trainer = engine + torch.tensor([[5.0, 0.1, -0.2], [0.0, 0.05, 9.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    report = compare_logprobs(engine, trainer, mask)
    assert report["num_tokens"] == 3
    assert report["max_abs_diff"] == pytest.approx(0.2, abs=1e-6)
    assert report["mean_abs_diff"] == pytest.approx(0.35 / 3, abs=1e-6)
    assert report["max_ratio"] == pytest.approx(1 - torch.exp(torch.tensor(-0.2)).item(), abs=1e-6)
    assert compare_logprobs(engine, trainer, torch.zeros_like(mask))["num_tokens"] == 0
    with pytest.raises(ValueError, match="equal shapes"):
        compare_logprobs(engine, trainer[:, :2], mask)


def test_the_kernels_op_is_used_when_importable(torch, tiny_tokenizer, tiny_model, monkeypatch):
    calls = []

    def fused_logprobs(hidden, weight, targets, bias=None, temperature=1.0):  # turngym.kernels' contract
        calls.append(tuple(hidden.shape))
        head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        head.weight = weight
        from turngym.trainers.logprobs import chunked_token_logprobs

        return chunked_token_logprobs(hidden, head, targets, temperature=temperature, with_entropy=True)

    fake = types.ModuleType("turngym.kernels")
    fake.fused_logprobs = fused_logprobs
    monkeypatch.setitem(sys.modules, "turngym.kernels", fake)
    ids, mask = padded_batch(torch, tiny_tokenizer, TEXTS)
    with torch.no_grad():
        logp, ent = sequence_logprobs(tiny_model, ids, mask, with_entropy=True)
        ref_logp, ref_ent = reference_sequence_logprobs(tiny_model, ids, mask, with_entropy=True)
    assert calls == [(int(mask[:, 1:].sum()), 32)]
    assert torch.allclose(logp, ref_logp, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    with torch.no_grad():
        sequence_logprobs(tiny_model, ids, mask, impl="chunked")
    assert len(calls) == 1  # impl="chunked" skips the kernel


def test_models_whose_logits_are_not_head_of_hidden_use_the_reference(torch, tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(tiny_tokenizer, seed=2)
    model.config.final_logit_softcapping = 30.0  # e.g. Gemma 2: logits are post-processed after the head
    ids, mask = padded_batch(torch, tiny_tokenizer, TEXTS)
    seen = []
    model.register_forward_hook(lambda *args: seen.append(1))  # the full model forward = the reference path
    with torch.no_grad():
        sequence_logprobs(model, ids, mask)
    assert seen


def test_an_all_masked_batch_gives_zeros_and_a_graph(torch, tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(tiny_tokenizer, seed=3)
    ids, mask = padded_batch(torch, tiny_tokenizer, TEXTS)
    logp, ent = sequence_logprobs(model, ids, mask, with_entropy=True, loss_mask=torch.zeros_like(mask))
    assert (logp == 0).all() and (ent == 0).all()
    (logp.sum() + ent.sum()).backward()  # no error: micro-batches without loss tokens still step
    lp, _ = token_logprobs(torch.zeros(0, 32), model.lm_head, torch.zeros(0, dtype=torch.long))
    assert lp.shape == (0,)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sequence_logprobs(model, ids, mask, temperature=0.0)


def test_autograd_never_keeps_a_tokens_by_vocab_tensor(torch, tiny_tokenizer, make_tiny_model):
    """Under grad the chunked path saves no logits for backward (chunks are recomputed); the reference does."""
    model = make_tiny_model(tiny_tokenizer, seed=4)
    ids, mask = padded_batch(torch, tiny_tokenizer, TEXTS * 4)
    vocab, n_tokens = model.config.vocab_size, int(mask[:, 1:].sum())

    def largest_saved_logits(impl):
        sizes = [0]

        def pack(t):
            if t.dim() and t.shape[-1] == vocab:
                sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logp, ent = sequence_logprobs(model, ids, mask, with_entropy=True, chunk_size=8, impl=impl)
        (logp.sum() + ent.sum()).backward()
        return max(sizes)

    assert largest_saved_logits("reference") >= n_tokens * vocab
    assert largest_saved_logits("chunked") == 0
