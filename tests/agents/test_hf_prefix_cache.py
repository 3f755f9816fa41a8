"""HFEngine's prefix KV cache: the same tokens and log-probs as without it, less prefill, never stale.

Every comparison runs one tiny random Llama (tests/agents/conftest.py) through two engines, cache on and
cache off, with the same seeds: the sampled ids must be equal and the log-probs equal to fp32 rounding.
"""

from __future__ import annotations

import itertools

import pytest

from turngym.agents.engines.hf import HFEngine
from turngym.agents.engines.prefix_cache import PrefixKVCache
from turngym.agents.engines.prefix_cache import common_prefix_length as _common_prefix_length
from turngym.agents.types import SamplingParams
from turngym.testing import teacher_forced_logprobs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

SYSTEM = ("You are in the middle of a room. Looking around you, you see a desk and a lamp. "
          "Observation: block b1 is on the table; the hand is empty. ")
SUFFIXES = ["Thought: I", "Action: pick up the red block. Observation: you hold",
            "Déjà vu: naïve café", "x", "Thought: I should combine 4 and 6 first. Action: answer[(4+6)*(3-1)+4]"]


@pytest.fixture()
def pair(tiny_tokenizer, make_tiny_model):
    """(cache on, cache off) engines over ONE fresh model (tests may change its weights)."""
    model = make_tiny_model(tiny_tokenizer, seed=3)
    on = HFEngine((model, tiny_tokenizer), max_batch_size=8, eos_token_ids=[])
    off = HFEngine((model, tiny_tokenizer), max_batch_size=8, eos_token_ids=[], prefix_cache=False)
    assert on.prefix_cache is not None and off.prefix_cache is None
    return on, off


def sampling(n, seed=0, max_tokens=12, temperature=1.0):
    return [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=0.95 if i % 2 else 1.0,
                           seed=seed + i) for i in range(n)]


def assert_same(with_cache, without, tolerance=1e-5):
    for a, b in zip(with_cache, without, strict=True):
        assert a.prompt_ids == b.prompt_ids
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < tolerance


def test_cold_batch_computes_a_shared_prefix_once(pair):
    on, off = pair
    system = on.encode_text(SYSTEM)
    prompts = [system + on.encode_text(s) for s in SUFFIXES] + [system + on.encode_text(SUFFIXES[1])] * 3
    for params in (sampling(len(prompts)), SamplingParams(max_tokens=12, temperature=0.0)):
        on.clear_prefix_cache()
        on.prefill_stats.reset()
        got, want = on.generate(prompts, params), off.generate(prompts, params)
        assert_same(got, want)
        stats = on.prefill_stats
        assert stats.prompt_tokens == sum(map(len, prompts))
        # The work of a prefill pass is rows x its width. Without the cache: every row as wide as the longest
        # prompt. With it: the system prompt once, then passes no wider than the longest suffix (rows whose
        # suffix is shorter recompute cached tokens in what would be padding columns).
        longest_suffix = max(len(p) - len(system) for p in prompts)
        assert off.prefill_stats.padded_tokens >= len(prompts) * max(map(len, prompts))
        assert stats.padded_tokens <= len(system) + (len(prompts) + 2) * longest_suffix
        assert stats.prefill_tokens <= stats.padded_tokens < stats.prompt_tokens
        off.prefill_stats.reset()
    for c in got:  # and still the model's own log-probs
        reference = teacher_forced_logprobs(on.model, c.prompt_ids, c.token_ids)
        assert max(abs(x - y) for x, y in zip(c.logprobs, reference)) < 1e-4


def test_next_turn_prefills_only_the_new_tokens(pair):
    """Full-context multi-turn: turn 2's prompt = turn 1's prompt + sampled reply + a new observation."""
    on, off = pair
    system = on.encode_text(SYSTEM)
    first = [system + on.encode_text(s) for s in SUFFIXES]
    params = sampling(len(first), seed=10)
    replies = on.generate(first, params)
    assert_same(replies, off.generate(first, params))
    observations = [on.encode_text(" Observation: ok." * (i + 1)) for i in range(len(first))]
    second = [p + r.token_ids + o for p, r, o in zip(first, replies, observations)]
    on.prefill_stats.reset()
    params = sampling(len(second), seed=20)
    assert_same(on.generate(second, params), off.generate(second, params))
    # the tree holds each prompt + reply but its last (never fed) token: the new part of a row is that token
    # and the observation, and the batch's prefill is as wide as the widest new part
    new = max(len(o) + 1 for o in observations)
    assert on.prefill_stats.prefill_tokens == len(second) * new
    assert on.prefill_stats.cached_tokens == sum(len(p) - new for p in second)


def test_rows_with_and_without_cached_prefixes_in_micro_batches(tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(tiny_tokenizer, seed=4)
    on = HFEngine((model, tiny_tokenizer), max_batch_size=3, eos_token_ids=[])
    off = HFEngine((model, tiny_tokenizer), max_batch_size=3, eos_token_ids=[], prefix_cache=False)
    system = on.encode_text(SYSTEM)
    warm = [system + on.encode_text(SUFFIXES[0]), on.encode_text(SUFFIXES[4] * 2)]
    on.generate(warm, SamplingParams(max_tokens=6, temperature=0.0))
    # cached prefixes of many lengths, unrelated prompts, a prompt equal to a cached one, a 1-token prompt
    prompts = [warm[0], warm[0][:40], warm[1] + on.encode_text(" and more"), on.encode_text("Déjà vu?"),
               system + on.encode_text(SUFFIXES[2]), on.encode_text("x"), warm[1][:7]]
    params = [SamplingParams(max_tokens=4 + i, temperature=0.0 if i % 3 == 0 else 0.9, seed=i)
              for i in range(len(prompts))]
    on.prefill_stats.reset()
    assert_same(on.generate(prompts, params), off.generate(prompts, params))
    assert on.prefill_stats.cached_tokens > 0


def test_weight_changes_empty_the_cache(pair, tiny_tokenizer, make_tiny_model):
    on, off = pair
    model = on.model
    prompts = [on.encode_text(SYSTEM + s) for s in SUFFIXES[:3]]
    params = sampling(len(prompts), seed=30)
    cache = on.prefix_cache

    def changes():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=True)
        logits = model(input_ids=torch.tensor([prompts[0]])).logits
        logits.logsumexp(-1).mean().backward()
        optimizer.step()  # a trainer optimizing engine.model in place: no call to the engine
        model.zero_grad(set_to_none=True)
        yield "optimizer step"
        model.load_state_dict(make_tiny_model(tiny_tokenizer, seed=5).state_dict())
        yield "load_state_dict"
        on.update_weights(make_tiny_model(tiny_tokenizer, seed=6).state_dict())
        assert cache.tokens == 0  # emptied by the call itself
        yield "update_weights"

    on.generate(prompts, params)
    cold = on.prefill_stats.prefill_tokens
    on.prefill_stats.reset()
    on.generate(prompts, params)
    assert on.prefill_stats.prefill_tokens < cold  # warm: the prompts come from the cache
    for done, how in enumerate(changes(), 1):
        on.prefill_stats.reset()
        assert_same(on.generate(prompts, params), off.generate(prompts, params)), how
        # as much work as the cold call: nothing computed with the old weights was reused
        assert on.prefill_stats.prefill_tokens == cold, how
        assert cache.tokens > 0  # refilled with the new weights
        if how != "update_weights":  # (update_weights empties it before the next generate looks)
            assert cache.invalidations == done, how


def test_weights_changed_during_generate_leave_nothing_stale(pair):
    on, _ = pair
    prompts = [on.encode_text(SYSTEM + s) for s in SUFFIXES[:2]]

    def trainer_step(i, text):  # runs inside the decode loop, as another thread's update could
        with torch.no_grad():
            on.model.lm_head.weight.mul_(1.0)

    on.generate(prompts, SamplingParams(max_tokens=4, temperature=0.0), on_text=trainer_step)
    assert on.prefix_cache.tokens == 0
    on.generate(prompts, SamplingParams(max_tokens=2, temperature=0.0))
    assert on.prefix_cache.tokens > 0
    # clearing from inside generate (no deadlock) also leaves it empty when the call ends
    on.generate(prompts, SamplingParams(max_tokens=4, temperature=0.0), on_text=lambda i, t: on.clear_prefix_cache())
    assert on.prefix_cache.tokens == 0


def test_memory_bound_and_least_recently_used_eviction(tiny_tokenizer, make_tiny_model):
    model = make_tiny_model(tiny_tokenizer, seed=7)
    per_token = 2 * 2 * 2 * 16 * 4  # layers x (k, v) x kv heads x head dim x fp32 bytes
    on = HFEngine((model, tiny_tokenizer), eos_token_ids=[], prefix_cache_bytes=120 * per_token)
    off = HFEngine((model, tiny_tokenizer), eos_token_ids=[], prefix_cache=False)
    prompts = [on.encode_text(f"{i} {SYSTEM}") for i in range(6)]  # ~100 tokens each, nothing shared
    params = SamplingParams(max_tokens=5, temperature=0.0)
    for p in prompts:
        assert_same(on.generate([p], params), off.generate([p], params))
        assert on.prefix_cache.bytes <= on.prefix_cache.max_bytes
    assert on.prefix_cache.evicted_tokens > 0
    on.prefill_stats.reset()
    on.generate([prompts[-1]], params)  # the most recent one survived
    assert on.prefill_stats.cached_tokens == len(prompts[-1]) - 1
    zero = HFEngine((model, tiny_tokenizer), eos_token_ids=[], prefix_cache_bytes=0)
    assert_same(zero.generate(prompts[:2], params), off.generate(prompts[:2], params))
    assert zero.prefix_cache.tokens == 0 and zero.prefill_stats.cached_tokens == 0
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        HFEngine((model, tiny_tokenizer), prefix_cache_bytes=-1)


def test_radix_tree_stores_shared_stretches_once():
    def kv_for(ids):  # a fake [layers=1, 2, heads=1, n, dim=1] whose values are the token ids
        return lambda lo, hi: torch.tensor(ids[lo:hi], dtype=torch.float32).view(1, 1, 1, -1, 1).expand(1, 2, 1, -1, 1)

    tree = PrefixKVCache(max_bytes=10**6)
    for ids in ([1, 2, 3, 4, 5], [1, 2, 3, 9], [1, 2, 3, 4, 5, 6, 7], [8]):
        tree.insert(ids, kv_for(ids))
    assert tree.tokens == 5 + 1 + 2 + 1  # the shared [1, 2, 3] and [1, 2, 3, 4, 5] are stored once
    assert tree.lookup([1, 2, 3, 4, 0])[0] == 4
    assert tree.lookup([1, 2, 3, 4, 5, 6, 7, 8], limit=6)[0] == 6
    assert tree.lookup([2, 1])[0] == 0
    rows = [(3, tree.lookup([1, 2, 3, 9, 9])[1]), (6, tree.lookup([1, 2, 3, 4, 5, 6, 0])[1]), (0, [])]
    kv = tree.gather(rows, 6, layer=0)
    assert kv.shape == (2, 3, 1, 6, 1) and tree.num_layers == 1
    assert kv[1, :, 0, :, 0].tolist() == [[0, 0, 0, 1, 2, 3], [1, 2, 3, 4, 5, 6], [0] * 6]
    tree.max_bytes = tree.bytes - 1  # the least recently used leaf goes first: [8]
    tree.lookup([1, 2, 3, 9])
    tree.insert([1, 2, 3, 4, 5, 6, 7], kv_for([1, 2, 3, 4, 5, 6, 7]))
    assert tree.lookup([8])[0] == 0 and tree.lookup([1, 2, 3, 9])[0] == 4


def test_common_prefix_length():
    for a, b in itertools.product([[], [1], [1, 2, 3], [1, 2, 4], [1, 2, 3, 4, 5], [0, 2, 3]], repeat=2):
        n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        assert _common_prefix_length(a, b) == n


def test_off_when_asked_or_unsupported(tiny_engine, tiny_tokenizer):
    assert tiny_engine.prefix_cache is None and tiny_engine.prefix_cache_off_reason == "prefix_cache=False"
    transformers = pytest.importorskip("transformers")
    config = transformers.MistralConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                        sliding_window=16, max_position_embeddings=512)
    model = transformers.MistralForCausalLM(config).eval()
    engine = HFEngine((model, tiny_tokenizer), eos_token_ids=[])
    # sliding-window layers keep only the last window of keys/values: run without the cache, and say why
    assert engine.prefix_cache is None
    assert "sliding" in engine.prefix_cache_off_reason or "per-layer" in engine.prefix_cache_off_reason
    out = engine.generate(["Thought: I"], SamplingParams(max_tokens=3, temperature=0.0))[0]
    assert len(out.token_ids) == 3
