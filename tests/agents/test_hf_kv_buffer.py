"""HFEngine's preallocated KV buffer (the growing layer): transformers' numbers without its per-step copies.

transformers' ``DynamicLayer`` concatenates the whole batch's keys/values on
every decode step; the engine's layer writes into a buffer with free columns.
These tests hold it to what ``DynamicLayer`` does (same keys/values after any
sequence of updates, left trims, row removals and growth), check that decode
steps write in place, and that generation through it still matches a
teacher-forced forward pass when rows finish at different steps.
"""

from __future__ import annotations

import pytest

from turngym.agents.engines.hf import HFEngine
from turngym.agents.engines.kv_layers import growing_layer_class as _growing_layer_class
from turngym.agents.engines.kv_layers import new_cache as _new_cache
from turngym.agents.types import SamplingParams
from turngym.testing import teacher_forced_logprobs

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from transformers.cache_utils import DynamicLayer


def _kv(batch, tokens, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, tokens, 4, generator=g), torch.randn(batch, 2, tokens, 4, generator=g)


def _same(a, b):
    assert a.keys.shape == b.keys.shape
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
    assert a.get_seq_length() == b.get_seq_length()


@pytest.mark.parametrize("reserve", [0, 2, 64])
def test_growing_layer_holds_what_dynamic_layer_holds(reserve):
    growing, plain = _growing_layer_class()(reserve), DynamicLayer()
    seed = iter(range(1000))
    for layer in (growing, plain):
        out = layer.update(*_kv(4, 7, 0))
    assert torch.equal(out[0], growing.keys)
    _same(growing, plain)
    for _ in range(5):  # decode steps, past the reserve when it is small (the buffer grows)
        k, v = _kv(4, 1, next(seed))
        got, want = growing.update(k, v), plain.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    _same(growing, plain)
    growing.drop_left(3)  # leading columns that became padding for every row
    plain.keys, plain.values = plain.keys[:, :, 3:], plain.values[:, :, 3:]
    _same(growing, plain)
    index = torch.tensor([0, 2, 3])
    growing.batch_select_indices(index)  # finished rows leave
    plain.batch_select_indices(index)
    _same(growing, plain)
    for _ in range(70):  # beyond any reserve
        k, v = _kv(3, 1, next(seed))
        growing.update(k, v)
        plain.update(k, v)
    _same(growing, plain)
    growing.crop(-4)
    plain.crop(-4)
    _same(growing, plain)
    growing.batch_repeat_interleave(2)
    plain.batch_repeat_interleave(2)
    _same(growing, plain)
    growing.reset()
    assert growing.get_seq_length() == 0
    with pytest.raises(ValueError, match="negative"):
        growing.crop(3)


def test_decode_steps_write_into_the_buffer_in_place():
    layer = _growing_layer_class()(reserve=8)
    layer.update(*_kv(16, 100, 0))
    buffer = layer._kv.data_ptr()
    for step in range(8):
        layer.update(*_kv(16, 1, step + 1))
        assert layer._kv.data_ptr() == buffer  # no copy of the 16 x 100 columns per step
    layer.update(*_kv(16, 1, 99))  # the ninth overflows the reserve: one grow, with room to spare
    grown = layer._kv.data_ptr()
    assert grown != buffer and layer._kv.shape[-2] >= 109 + 16
    layer.update(*_kv(16, 1, 100))
    assert layer._kv.data_ptr() == grown and layer.get_seq_length() == 110


def test_engine_caches_use_the_growing_layer(tiny_model):
    cache = _new_cache(tiny_model, reserve=5)
    assert [type(layer) for layer in cache.layers] == [_growing_layer_class()] * len(cache.layers)
    assert {layer.reserve for layer in cache.layers} == {5}


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_rows_finishing_at_different_steps_match_a_teacher_forced_pass(tiny_tokenizer, make_tiny_model,
                                                                       prefix_cache):
    """Rows leave the batch one by one (each its own max_tokens) and prompts of different lengths leave
    all-padding columns to trim: every row's ids and log-probs must still be the model's."""
    model = make_tiny_model(tiny_tokenizer, seed=5)
    engine = HFEngine((model, tiny_tokenizer), max_batch_size=8, eos_token_ids=[], prefix_cache=prefix_cache)
    texts = ["Observation: block b1 is on the table; the hand is empty. " * 3, "Thought: I", "x",
             "Action: pick up the red block. Observation: you hold the red block.", "Déjà vu: naïve café"]
    params = [SamplingParams(max_tokens=3 + 4 * i, temperature=1.0, seed=i) for i in range(len(texts))]
    for _turn in range(2):  # the second turn takes prefixes from the tree when it is on
        outs = engine.generate(texts, params)
        for out, sp in zip(outs, params, strict=True):
            assert len(out.token_ids) == sp.max_tokens and out.finish_reason == "length"
            ref = teacher_forced_logprobs(model, out.prompt_ids, out.token_ids)
            assert max(abs(a - b) for a, b in zip(out.logprobs, ref, strict=True)) < 1e-4
        texts = [t + o.text for t, o in zip(texts, outs, strict=True)]
