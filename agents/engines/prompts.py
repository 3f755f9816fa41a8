"""Prompt encoding shared by the local engines (hf, vllm): one tokenizer, one set of rules.

* Chat messages go through the tokenizer's chat template with the generation
  prompt; the template writes its own special tokens, so none are added.
* Raw text is tokenized without special tokens, then gets the tokenizer's own
  leading special ids (e.g. BOS) unless the text already starts with them;
  never an EOS.
* Token ids pass through, checked against the vocabulary.

Engines hold a :class:`PromptEncoder` and delegate ``render``/``encode_text``/
``prompt_ids`` to it, so both engines give the same ids for the same prompt.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from turngym.agents.engines.base import check_token_ids
from turngym.agents.types import Prompt


class PromptEncoder:
    """Turns text, token ids or chat messages into prompt ids for one tokenizer."""

    def __init__(self, tokenizer: Any, vocab_size: int, name: str,
                 chat_template_kwargs: Mapping[str, Any] | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = int(vocab_size)
        self.name = name
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.text_prefix = self._leading_special_ids()
        self.text_prefix_str = tokenizer.decode(self.text_prefix) if self.text_prefix else ""

    def _leading_special_ids(self) -> list[int]:
        """The special ids the tokenizer puts BEFORE a text (e.g. BOS), found by tokenizing a probe."""
        with_special = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        for k in range(len(with_special) - len(plain) + 1):
            if with_special[k:k + len(plain)] == plain:
                return list(with_special[:k])
        return []

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt ids for chat ``messages``: the chat template with the generation prompt (``tools=`` passed on)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {self.name} has no chat template: pass text or token ids, "
                             "or set tokenizer.chat_template")
        kwargs = dict(self.chat_template_kwargs)
        if tools is not None:
            kwargs["tools"] = tools
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw text prompt (see the module docstring for the special-token rule)."""
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if self.text_prefix and not text.startswith(self.text_prefix_str):
            ids = self.text_prefix + ids
        return ids

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The ids a prompt (text, token ids, or chat messages) is generated from."""
        if isinstance(prompt, str):
            return self.encode_text(prompt)
        if hasattr(prompt, "tolist"):  # a tensor or array of ids
            prompt = prompt.tolist()
        prompt = list(prompt)
        if not prompt:
            raise ValueError("empty prompt: pass text, token ids or chat messages")
        if isinstance(prompt[0], Mapping):
            return self.render(prompt)
        return check_token_ids(prompt, self.vocab_size, self.name)


class LocalPrompts:
    """The prompt methods of a local engine (hf, vllm), delegated to its ``PromptEncoder`` (``self._prompts``)."""

    _prompts: PromptEncoder

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt ids for chat ``messages`` (see :class:`~turngym.agents.engines.prompts.PromptEncoder`)."""
        return self._prompts.render(messages, tools)

    @property
    def vocab_size(self) -> int:
        """Size of the model's vocabulary (prompt token ids must be below it)."""
        return self._prompts.vocab_size

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw text prompt (BOS added once, never EOS)."""
        return self._prompts.encode_text(text)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The ids a prompt (text, token ids, or chat messages) is generated from."""
        return self._prompts.prompt_ids(prompt)
