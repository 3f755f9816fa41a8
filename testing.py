"""Test helpers: a byte-level BPE tokenizer trained in a second, a random Llama, teacher-forced log-probs.

Tests of engines and trainers need a real tokenizer and a real transformers
model, not SmolLM2 (slow to build, slow to run). These build both from
nothing, offline and deterministically, so a test suite (ours, or an env
author's) can exercise token-exact code paths in milliseconds::

    tok = tiny_bpe_tokenizer(["Thought: x. Action: y"], vocab_size=300)
    model = tiny_llama(tok, hidden=32, seed=0)
    engine = HFEngine((model, tok), eos_token_ids=[])

:func:`teacher_forced_logprobs` is the reference an engine's
``Completion.logprobs`` are checked against (one full forward pass, then the
kernels' reference math, ``turngym.kernels.reference_logprobs_from_logits``).

Needs the ``hf`` extra (torch, transformers, tokenizers); imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: A ChatML template; ``CHATML_TOOLS_TEMPLATE`` also renders ``tools`` (one JSON line each, in a system turn).
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}"
    "<|im_end|>\n{% endif %}" + CHATML_TEMPLATE
)


def tiny_bpe_tokenizer(corpus: Sequence[str], *, vocab_size: int = 320, pad_token: str = "<|im_end|>",
                       chat_template: str = CHATML_TEMPLATE) -> Any:
    """A byte-level BPE with ``vocab_size`` ids trained on ``corpus`` (x4), ChatML special tokens
    (``<|endoftext|>``, ``<|im_start|>`` as BOS, ``<|im_end|>`` as EOS) and ``chat_template``. Byte-level:
    any text encodes, and multi-byte characters split across tokens (what streaming code must handle)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus) * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token=pad_token)
    fast.chat_template = chat_template
    return fast



def word_chat_tokenizer(words: Sequence[str]) -> Any:
    """A word-level tokenizer over ``words`` after the ChatML specials (<unk>, <|im_start|>, <|im_end|>), with a
    whitespace-split chat template: tiny vocabularies that a random model samples from often enough to learn."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<|im_start|>", "<|im_end|>", *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<unk>", pad_token="<unk>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = ("{% for message in messages %}<|im_start|> {{ message['role'] }} {{ message['content'] }} "
                          "<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|> assistant {% endif %}")
    return fast


def tiny_llama(tokenizer: Any, *, hidden: int = 64, intermediate: int | None = None, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, max_positions: int = 512, init: float = 0.1, seed: int = 0,
               eval_mode: bool = True) -> Any:
    """A random-init fp32 Llama for ``tokenizer`` (untied embeddings, grouped-query attention with
    ``kv_heads``); the same arguments give the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, initializer_range=init)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    return model.eval() if eval_mode else model


def teacher_forced_logprobs(model: Any, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
    """Log-probs (temperature 1) of ``completion_ids`` given ``prompt_ids`` from ONE full forward pass.

    The reference an engine's ``Completion.logprobs`` must match, and what a
    trainer recomputes: ``log_softmax(model(prompt + completion).logits)`` at
    the positions that predict each completion token (the model in eval mode,
    no cache, no padding).
    """
    import torch

    from turngym.agents.engines.hf import eval_mode
    from turngym.kernels.logprob import reference_logprobs_from_logits

    ids = list(prompt_ids) + list(completion_ids)
    device = next(model.parameters()).device
    with torch.no_grad(), eval_mode(model):
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    target = torch.tensor(list(completion_ids), device=device)
    logprobs, _, _ = reference_logprobs_from_logits(logits[len(prompt_ids) - 1:-1], target, with_entropy=False,
                                                    with_lse=False)
    return logprobs.tolist()


__all__ = ["CHATML_TEMPLATE", "CHATML_TOOLS_TEMPLATE", "teacher_forced_logprobs", "tiny_bpe_tokenizer", "tiny_llama"]


def without_timings(trajectory: Any) -> dict[str, Any]:
    """A trajectory's dict without its wall-clock times: what a rerun or another file format must reproduce."""
    d = trajectory.to_dict()
    d.pop("timings")
    for step in d["steps"]:
        step.pop("gen_seconds"), step.pop("env_seconds")
    return d
