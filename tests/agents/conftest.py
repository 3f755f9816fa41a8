"""Shared fixtures for engine tests: a tiny random Llama with a tiny BPE tokenizer, built in a second.

Why not the SmolLM2 tokenizer: it lives in the default-model cache, which the
first use builds from the GGUF file (about a minute). The default test run
must be fast and must not depend on that cache, so the fast tests use a
byte-level BPE trained here (``turngym.testing``) on a few sentences (320 ids, ChatML special tokens,
a ChatML chat template that also renders ``tools``). Byte-level BPE splits
multi-byte characters across tokens, which the streaming tests need. Tests
that load SmolLM2 itself are marked ``slow``.

Fixtures (session-scoped, so build once): ``tiny_tokenizer``, ``tiny_model``
(fp32, 2 layers, hidden 64, random init with a fixed seed, eval mode),
``tiny_engine`` (an ``HFEngine`` over them that never stops on EOS, so
completion lengths do not hang on whether a random model happens to sample
EOS; tests of EOS build their own engine), ``tiny_model_dir`` (the pair saved
as an HF folder, for path-based loading). Tests that change weights build
their own model with the ``make_tiny_model`` fixture (a factory); conftest
modules are not importable under ``--import-mode=importlib``, hence fixtures.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_CORPUS = [
    "Thought: I should combine 4 and 6 first. Action: answer[(4+6)*(3-1)+4]",
    "Observation: block b1 is on the table; the hand is empty.",
    "You are in the middle of a room. Looking around you, you see a desk and a lamp.",
    "Action: pick up the red block. Observation: you hold the red block.",
    "Déjà vu: naïve café, wörld, 世界, ✓ done.",
    "<tool_call>{\"name\": \"search\", \"arguments\": {\"query\": \"capital of France\"}}</tool_call>",
]


def build_tiny_tokenizer():
    """A byte-level BPE (320 ids) with ChatML special tokens and a chat template that renders ``tools``."""
    from turngym.testing import CHATML_TOOLS_TEMPLATE, tiny_bpe_tokenizer

    return tiny_bpe_tokenizer(_CORPUS, vocab_size=320, pad_token="<|im_end|>", chat_template=CHATML_TOOLS_TEMPLATE)


def make_tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    """A random-init Llama (hidden 64) for ``tokenizer``, fp32, eval mode."""
    from turngym.testing import tiny_llama

    return tiny_llama(tokenizer, hidden=64, intermediate=128, layers=layers, max_positions=512, init=0.1, seed=seed)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    # A 64-wide model gains nothing from intra-op threads, and on a busy 2-core machine their
    # spin-waiting made these tests ten times slower; the setting lasts for the session.
    torch.set_num_threads(1)
    return build_tiny_tokenizer()


@pytest.fixture(scope="session", name="make_tiny_model")
def make_tiny_model_fixture():
    """``make_tiny_model(tokenizer, seed=0, layers=2)``: a fresh tiny model."""
    return make_tiny_model


@pytest.fixture(scope="session", name="build_tiny_tokenizer")
def build_tiny_tokenizer_fixture():
    """``build_tiny_tokenizer()``: a fresh tiny tokenizer (to modify without touching the shared one)."""
    return build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return make_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, tiny_tokenizer):
    from turngym.agents.engines.hf import HFEngine

    # Without the prefix KV cache, a prompt's numbers never depend on what earlier tests left in the cache, so
    # "same seed, same tokens" comparisons here are bitwise; test_hf_prefix_cache.py checks the cache against this.
    return HFEngine((tiny_model, tiny_tokenizer), name="hf:tiny", max_batch_size=8, eos_token_ids=[],
                    prefix_cache=False)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model, tiny_tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
