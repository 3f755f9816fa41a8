"""The transformers engine: true batched generation with a KV cache, on CPU or GPU.

``HFEngine`` runs its own decode loop over ``model(...)`` forward passes
instead of ``model.generate`` so that it controls, per request: stop strings,
``max_tokens``, temperature, top-p and seed, the log-probs of the sampled
tokens, and the streaming callback.

How a batch is generated (``_generate_batch``):

* prompts are LEFT-padded into one ``[B, L]`` tensor with an attention mask;
  position ids come from the mask (``cumsum - 1``), so a padded row sees the
  same positions as it would alone;
* one prefill forward fills a ``DynamicCache`` (only the last position's
  logits are computed); every later step feeds one token per live row;
* the cache's full-attention layers are the engine's own growing layer: one
  preallocated buffer per layer with room for the batch's ``max_tokens``, so
  a decode step writes its new column in place (transformers' own layer
  concatenates, copying every row's keys/values at every step: at 16 rows of
  ~900 tokens that copy made SmolLM2's decode step 1.5-1.8x slower);
* a row that finishes (EOS, stop string, its own ``max_tokens``, or the
  model's context length) is REMOVED from the batch and the KV cache at once,
  and leading cache columns that have become padding for every remaining row
  are cut off (no copy), so long finished rows cost nothing afterwards;
* more prompts than ``max_batch_size`` run as successive micro-batches
  (sorted by prompt length to limit padding; results keep the input order).

Sampling and log-probs. ``Completion.logprobs[t]`` is
``log_softmax(logits)[token]`` at temperature 1 with no top-p: the policy's
own log-probability of the sampled token, the quantity PPO ratios need and
the one a trainer's teacher-forced forward recomputes
(:func:`teacher_forced_logprobs`). Temperature and top-p only shape the
distribution the token is DRAWN from. Temperature 0 is greedy (argmax).
Sampling is inverse-CDF over the temperature-scaled distribution (in
token-id order; with top-p, over the nucleus, most likely token first),
with ONE uniform number per generated token drawn from the request's own
``torch.Generator``: the same seed and prompt give the same completion
whatever else is in the batch, up to float rounding: another batch shape,
or a prefix taken from the prefix cache, changes the last bits of the
logits, which changes a sampled token only when its uniform number lies
within that rounding of a CDF boundary (rare; with ``prefix_cache=False``
and the same batch, results are bitwise reproducible).
The same ``SamplingParams`` broadcast to several prompts gives them all the
same seed, so identical prompts then get identical completions: give each
rollout its own seed (or ``seed=None``, drawn from torch's global RNG).

Stop strings are matched on the decoded completion text after every token.
The token that completes a stop string is the last one kept: ``token_ids``
and ``logprobs`` end there, ``text`` ends exactly at the end of the stop
string (so when that last token also carries characters past the stop
string, e.g. a token ``"]\\n"`` completing the stop ``"]"``, ``text`` is the
decoding of ``token_ids`` minus those characters). An EOS token the model
samples is kept in ``token_ids``/``logprobs`` (the policy sampled it; it
carries loss) and left out of ``text``. Decoding never cleans up spaces, so
texts only grow as tokens arrive.

Prompts: chat messages go through :meth:`HFEngine.render` (the tokenizer's
chat template, ``add_generation_prompt=True``); token ids are used verbatim;
raw text is tokenized WITHOUT the tokenizer's special tokens and then gets
the tokenizer's own leading special tokens (a BOS, for tokenizers that add
one; SmolLM2's adds none) unless the text already starts with them, and never
an EOS suffix. So a text rendered by ``apply_chat_template(tokenize=False)``,
which carries its BOS, is not given a second one.

Prefix KV cache (``prefix_cache=True``, the default). Agent prompts repeat
themselves: every row and episode starts with the same system prompt and
few-shot exemplars, the G rollouts of a task share their whole first prompt,
and a multi-turn prompt extends the previous turn's prompt + sampled reply.
:class:`PrefixKVCache` keeps the keys/values of token sequences already run
through the model in a radix tree (one node per shared stretch of tokens, so
the system prompt is stored once), bounded in bytes (``prefix_cache_bytes``;
least recently used leaves go first). A batch's prefill then takes each row's
longest cached prefix from the tree and runs only the rest:

* the layout of the batch is the one without a cache (every row right-aligned
  at the width of the longest prompt); the first ``width - new`` columns come
  from the tree, where ``new`` is the longest uncached suffix of any row; a
  row with a shorter suffix recomputes a few cached tokens in columns that
  would otherwise be padding, so the prefill costs ``rows x new`` positions
  and the mask has no holes;
* before that, prefixes that several rows of the batch share and the tree
  lacks are computed ONCE (one short batch of the distinct shared prefixes,
  themselves deduplicated the same way) and put into the tree: a cold batch
  of 16 rows pays for its system prompt once, not 16 times;
* a finished row's prompt + reply (all of it but the last sampled token,
  which was never fed) goes into the tree, so the next turn of a full-context
  episode prefills only the new observation.

Keys/values are the same numbers a full prefill computes, up to float
rounding of differently shaped matmuls (fp32: ~1e-6 on log-probs; the sampled
tokens are the same). The cache belongs to the weights it was computed with:
it is emptied by :meth:`HFEngine.update_weights`, by
:meth:`HFEngine.clear_prefix_cache`, and automatically whenever any parameter
or buffer of the model changed since it was filled (an optimizer step or a
``load_state_dict`` on ``engine.model`` bumps the tensors' version counters,
which every ``generate`` call checks). Things that change the forward pass
without touching a tensor (peft's ``disable_adapter()`` context) need an
explicit :meth:`~HFEngine.clear_prefix_cache`. Models whose cache is not a
plain full-attention ``DynamicCache`` (sliding-window layers) run without it.
``engine.prefill_stats`` counts prompt tokens, tokens taken from the cache
and tokens actually prefilled.

Weights are shared, not copied: ``engine.model`` is the ``nn.Module`` a
trainer optimizes, and ``generate`` always samples from the current weights.
It runs under ``torch.no_grad()`` in eval mode (dropout off) and restores
every submodule's train/eval flag afterwards.

Depends on ``turngym.agents`` and ``turngym.errors``; torch and transformers
are imported lazily (the ``hf`` extra).
"""

from __future__ import annotations

import contextlib
import heapq
import inspect
import itertools
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turngym.agents.engines.base import OnText, find_stop, per_prompt_sampling
from turngym.agents.engines.default_model import read_model_info, resolve_model
from turngym.agents.engines.prompts import PromptEncoder
from turngym.agents.types import Completion, Prompt, SamplingParams
from turngym.errors import TurngymError, require

_PURPOSE = "the transformers engine (HFEngine)"


def _torch():
    return require("torch", "hf", _PURPOSE)


def _resolve_device(device: str | None) -> str:
    torch = _torch()
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{device}' asked for, but torch sees no CUDA GPU: use device='cpu' or 'auto'")
    return str(device)


def _resolve_dtype(dtype: Any, device: str):
    torch = _torch()
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "half": torch.float16, "float64": torch.float64}
    try:
        return names[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype '{dtype}': use 'float32', 'bfloat16', 'float16' or 'auto'") from None


@dataclass
class _Row:
    """Decoding state of one request in a batch."""

    index: int  # position in the generate() call's prompts
    prompt_ids: list[int]
    sampling: SamplingParams
    max_new: int
    generator: Any = None  # torch.Generator for sampled rows
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    streamed: str = ""
    finish: str | None = None


@dataclass
class _Batch:
    """Rows being decoded together: their KV cache, mask, next positions and pending next-token logits."""

    rows: list[_Row]
    cache: Any
    attention: Any  # [rows, width], 1 where a column holds a real token
    positions: Any  # [rows]: the position of each row's next token
    logits: Any  # [rows, vocab]: the distribution of each row's next token (None once every row is done)


#: Default memory bound of the prefix KV cache (bytes, on the model's device).
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30

#: A prefix several rows of a batch share is computed once when at least this many of its tokens are new.
_MIN_SHARED = 16


@dataclass
class PrefillStats:
    """Prompt-side work of an :class:`HFEngine` (counts of tokens; see "Prefix KV cache").

    Attributes:
        prompt_tokens: tokens of the prompts given to ``generate``.
        cached_tokens: of those, tokens whose keys/values came from the prefix cache.
        prefill_tokens: tokens run through the model by prefill passes, the
            passes over prefixes shared within a batch included (padding excluded).
        padded_tokens: positions those passes computed, padding included (rows x width).
        prefill_passes: prefill forward calls.
    """

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens: int = 0
    padded_tokens: int = 0
    prefill_passes: int = 0

    @property
    def saved_tokens(self) -> int:
        """Prompt tokens that did not have to be prefilled."""
        return self.prompt_tokens - self.prefill_tokens

    def reset(self) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, 0)

    def to_dict(self) -> dict[str, int]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["saved_tokens"] = self.saved_tokens
        return out


class _Node:
    """A stretch of tokens in the prefix tree and their keys/values ``[layers, 2, heads, len, head_dim]``."""

    __slots__ = ("children", "kv", "last_used", "parent", "tokens")

    def __init__(self, tokens: list[int], kv: Any, parent: _Node | None, last_used: int = 0):
        self.tokens, self.kv, self.parent = tokens, kv, parent
        self.children: dict[int, _Node] = {}
        self.last_used = last_used

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size() if self.kv is not None else 0


class PrefixKVCache:
    """Keys/values of token sequences already run through a model, in a radix tree bounded in bytes.

    Each node holds a stretch of tokens (an edge of the tree) and their
    keys/values for every layer as one tensor ``[layers, 2, kv_heads, tokens,
    head_dim]``; a sequence's keys/values are those of the nodes on its path,
    so a prefix many sequences share is stored once. :meth:`lookup` finds the
    longest stored prefix of a sequence, :meth:`gather` copies such prefixes
    into a left-padded batch, :meth:`insert` stores a sequence (only the part
    the tree lacks is copied), and leaves least recently looked up or stored
    are evicted while the tree holds more than ``max_bytes``. Not thread-safe:
    the engine uses it under its lock.
    """

    def __init__(self, max_bytes: int = DEFAULT_PREFIX_CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self.fingerprint: Any = None
        self.invalidations = 0  # times a non-empty cache was emptied because the weights changed
        self.evicted_tokens = 0
        self._tick = 0
        self.clear()

    def clear(self) -> None:
        """Forget everything."""
        self._root = _Node([], None, None)
        self.bytes = 0
        self.tokens = 0

    def check_weights(self, fingerprint: Any) -> None:
        """Empty the cache when ``fingerprint`` (of the model's tensors) differs from the one it was filled under."""
        if fingerprint != self.fingerprint:
            if self.tokens:
                self.invalidations += 1
            self.clear()
            self.fingerprint = fingerprint

    def lookup(self, ids: Sequence[int], limit: int | None = None) -> tuple[int, list[tuple[_Node, int]]]:
        """Longest stored prefix of ``ids[:limit]``: its length and path (nodes, tokens used of each)."""
        limit = len(ids) if limit is None else min(limit, len(ids))
        self._tick += 1
        node, pos, path = self._root, 0, []
        while pos < limit:
            child = node.children.get(ids[pos])
            if child is None:
                break
            k = min(_common_prefix_length(child.tokens, ids[pos:pos + len(child.tokens)]), limit - pos)
            child.last_used = self._tick
            path.append((child, k))
            pos += k
            if k < len(child.tokens):
                break
            node = child
        return pos, path

    def gather(self, rows: Sequence[tuple[int, list[tuple[_Node, int]]]], width: int, layer: int, out: Any = None):
        """Keys/values ``[2, rows, heads, width, head_dim]`` of one layer: row b's first ``used`` cached tokens
        right-aligned (zeros before them), for ``rows`` of ``(used, path from lookup)``. One layer at a time,
        so that a prefill holds one extra layer, not a second copy of the batch's cache. ``out``: a buffer
        ``[2, rows, heads, >= width, head_dim]`` whose first ``width`` columns receive them (returned)."""
        first = next(node for _, path in rows for node, _ in path)
        _, _, heads, _, head_dim = first.kv.shape
        if out is None:
            out = first.kv.new_zeros((2, len(rows), heads, width, head_dim))
        for b, (used, path) in enumerate(rows):
            at = width - used
            if out.shape[-2] > width or at > 0:  # a caller's buffer holds garbage where a row is padding
                out[:, b, :, :at].zero_()
            for node, k in path:
                take = min(k, used)
                if take <= 0:
                    break
                out[:, b, :, at:at + take] = node.kv[layer, :, :, :take]
                at += take
                used -= take
        return out

    def first_kv(self):
        """Some stored node's keys/values (their dtype, device, heads and head size are everyone's)."""
        return next(iter(self._root.children.values())).kv

    @property
    def num_layers(self) -> int:
        """Layers of the stored keys/values (0 while empty)."""
        node = next(iter(self._root.children.values()), None)
        return node.kv.shape[0] if node is not None else 0

    def insert(self, ids: Sequence[int], kv_of: Any) -> None:
        """Store ``ids``; ``kv_of(lo, hi)`` returns the keys/values of ``ids[lo:hi]`` (called once, for the
        part the tree lacks). Then evicts down to ``max_bytes``."""
        if self.max_bytes <= 0 or not ids:
            return
        self._tick += 1
        node, pos = self._root, 0
        while pos < len(ids):
            child = node.children.get(ids[pos])
            if child is None:
                break
            k = _common_prefix_length(child.tokens, ids[pos:pos + len(child.tokens)])
            child.last_used = self._tick
            if k < len(child.tokens):
                child = self._split(child, k)
            pos += k
            node = child
        if pos < len(ids):
            leaf = _Node(list(ids[pos:]), kv_of(pos, len(ids)), node, self._tick)
            node.children[leaf.tokens[0]] = leaf
            self.bytes += leaf.nbytes
            self.tokens += len(leaf.tokens)
        self._evict()

    def _split(self, node: _Node, k: int) -> _Node:
        """Cut ``node`` after its first ``k`` tokens; returns the new upper part (the copies keep the byte
        count exact when one part is evicted later)."""
        upper = _Node(node.tokens[:k], node.kv[:, :, :, :k].clone(), node.parent, node.last_used)
        node.parent.children[upper.tokens[0]] = upper
        node.tokens, node.kv, node.parent = node.tokens[k:], node.kv[:, :, :, k:].clone(), upper
        upper.children[node.tokens[0]] = node
        return upper

    def _evict(self) -> None:
        if self.bytes <= self.max_bytes:
            return
        leaves, stack = [], list(self._root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                leaves.append((node.last_used, id(node), node))
        heapq.heapify(leaves)
        while self.bytes > self.max_bytes and leaves:
            _, _, leaf = heapq.heappop(leaves)
            parent = leaf.parent
            del parent.children[leaf.tokens[0]]
            self.bytes -= leaf.nbytes
            self.tokens -= len(leaf.tokens)
            self.evicted_tokens += len(leaf.tokens)
            if parent is not self._root and not parent.children:
                heapq.heappush(leaves, (parent.last_used, id(parent), parent))

    def stats(self) -> dict[str, int]:
        return {"tokens": self.tokens, "bytes": self.bytes, "max_bytes": self.max_bytes,
                "evicted_tokens": self.evicted_tokens, "invalidations": self.invalidations}


class HFEngine:
    """Batched generation with a transformers causal LM (see the module docstring).

    Args:
        model: "default" (the embedded SmolLM2-135M-Instruct), a local HF model
            folder, a .gguf file (converted and cached once), or an already
            loaded ``(model, tokenizer)`` pair (then ``tokenizer=`` may be given
            separately instead). A loaded model is used as is: the engine
            samples from its current weights.
        tokenizer: the tokenizer of a loaded ``model`` (when not given as a pair).
        device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when available). For a
            loaded model "auto" leaves it where it is.
        dtype: "float32", "bfloat16", "float16", a ``torch.dtype`` or "auto"
            (float32 on CPU, bfloat16 on GPU; a loaded model keeps its own).
        max_batch_size: most sequences decoded together; more prompts run as
            successive micro-batches.
        name: report name (default "hf:<model name>").
        eos_token_ids: ids that end a completion (default: the tokenizer's EOS
            and the generation config's EOS ids).
        attn_implementation: passed to ``from_pretrained`` ("sdpa", "eager", ...).
        chat_template_kwargs: extra keyword arguments for every
            ``apply_chat_template`` call (e.g. ``{"enable_thinking": False}``).
        progress: print where the default model / a GGUF file is cached on first use.
        prefix_cache: reuse the keys/values of prompt prefixes already computed
            (see "Prefix KV cache" in the module docstring); False turns it off.
        prefix_cache_bytes: memory bound of that cache (on the model's device),
            default 1 GiB (SmolLM2-135M in fp32 needs 46 KB per token).

    Attributes:
        prefix_cache: the :class:`PrefixKVCache`, or None when off or unsupported
            by the model (``prefix_cache_off_reason`` then says why).
        prefill_stats: a :class:`PrefillStats` counting prompt tokens, tokens
            taken from the cache and tokens prefilled, over the engine's life
            (``reset()`` it to measure a stretch).
    """

    def __init__(self, model: Any = "default", tokenizer: Any = None, *, device: str | None = "auto",
                 dtype: Any = "auto", max_batch_size: int = 32, name: str | None = None,
                 eos_token_ids: Iterable[int] | None = None, attn_implementation: str | None = None,
                 chat_template_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
                 prefix_cache: bool = True, prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES):
        torch = _torch()
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if prefix_cache_bytes < 0:
            raise ValueError(f"prefix_cache_bytes must be >= 0, got {prefix_cache_bytes}")
        if isinstance(model, tuple):
            if len(model) != 2:
                raise ValueError("HFEngine(model=(model, tokenizer)) needs a pair")
            model, tokenizer = model
        if isinstance(model, (str, os.PathLike)):
            path = resolve_model(model, progress=progress)
            self.model, self.tokenizer = self._load(path, device, dtype, attn_implementation)
            info = read_model_info(path)
            default_name = info.get("name") or Path(path).name
        else:
            if tokenizer is None:
                raise ValueError("HFEngine got a loaded model without its tokenizer: pass (model, tokenizer)")
            self.model, self.tokenizer = model, tokenizer
            if device not in (None, "auto") or dtype not in (None, "auto"):
                target_device = _resolve_device(device) if device not in (None, "auto") else None
                target_dtype = _resolve_dtype(dtype, target_device or "cpu") if dtype not in (None, "auto") else None
                self.model.to(device=target_device, dtype=target_dtype)
            default_name = Path(str(getattr(self.model.config, "name_or_path", "") or "model")).name or "model"
        self.name = name or f"hf:{default_name}"
        self.max_batch_size = int(max_batch_size)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.eos_token_ids = self._eos_ids(eos_token_ids)
        tok = self.tokenizer
        self.pad_token_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None),
                                 min(self.eos_token_ids) if self.eos_token_ids else 0)
        self.max_context = getattr(self.model.config, "max_position_embeddings", None)
        self._prompts = PromptEncoder(tok, self.model.get_input_embeddings().num_embeddings, self.name,
                                      self.chat_template_kwargs)
        # A wrapper (a peft model) forwards **kwargs: ask the model underneath whether it can skip the
        # vocabulary projection of all but the last prompt position.
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self._logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        self._lock = threading.Lock()
        self._torch = torch
        self.prefill_stats = PrefillStats()
        self.prefix_cache: PrefixKVCache | None = None
        self.prefix_cache_off_reason: str | None = "prefix_cache=False"
        #: why :meth:`session` (continuous batching) is unavailable, or None
        self.session_off_reason = _plain_cache_reason(_new_cache(self.model))
        if prefix_cache:
            self.prefix_cache_off_reason = self.session_off_reason
            if self.prefix_cache_off_reason is None:
                self.prefix_cache = PrefixKVCache(prefix_cache_bytes)

    # -- loading ---------------------------------------------------------------------------------------------

    @staticmethod
    def _load(path: Path, device: str | None, dtype: Any, attn_implementation: str | None):
        transformers = require("transformers", "hf", _PURPOSE)
        from turngym.agents.engines.default_model import _dtype_kwarg

        device = _resolve_device(device)
        kwargs = _dtype_kwarg(transformers, _resolve_dtype(dtype, device))
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs)
        return model.to(device).eval(), tokenizer

    def _eos_ids(self, given: Iterable[int] | None) -> frozenset[int]:
        if given is not None:
            return frozenset(int(i) for i in given)
        generation_config = getattr(self.model, "generation_config", None)
        ids: set[int] = set()
        for source in (self.tokenizer.eos_token_id, getattr(generation_config, "eos_token_id", None)):
            if source is not None:
                ids.update([source] if isinstance(source, int) else source)
        return frozenset(ids)


    # -- properties ------------------------------------------------------------------------------------------

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        return next(self.model.parameters()).dtype

    # -- prompts ---------------------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[int]:
        """Prompt ids for chat ``messages`` (see :class:`~turngym.agents.engines.prompts.PromptEncoder`)."""
        return self._prompts.render(messages, tools)

    def encode_text(self, text: str) -> list[int]:
        """Token ids of a raw text prompt (BOS added once, never EOS)."""
        return self._prompts.encode_text(text)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """The ids a prompt (text, token ids, or chat messages) is generated from."""
        return self._prompts.prompt_ids(prompt)

    # -- generation ------------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams | Sequence[SamplingParams],
                 on_text: OnText | None = None) -> list[Completion]:
        """Complete every prompt in batches of at most ``max_batch_size`` (see the module docstring).

        ``on_text(i, text_so_far)`` is called for prompt ``i`` whenever its decoded
        text grows (an incomplete trailing UTF-8 character is held back) and once
        more with the final text when it finishes; it runs in the decode loop, so
        keep it quick (an exception it raises aborts the call).
        """
        prompts = list(prompts)
        params = per_prompt_sampling(sampling, len(prompts))
        if not prompts:
            return []
        ids = [self.prompt_ids(p) for p in prompts]
        rows = [self._new_row(i, ids[i], params[i]) for i in range(len(prompts))]
        # Longest first: similar lengths share a micro-batch, and the first batch shows memory trouble early.
        order = sorted(range(len(rows)), key=lambda i: -len(ids[i])) if len(rows) > self.max_batch_size \
            else list(range(len(rows)))
        with self._lock, self._torch.no_grad(), _eval_mode(self.model):
            cache = self.prefix_cache
            if cache is not None:
                cache.check_weights(_weights_fingerprint(self.model))
            try:
                for start in range(0, len(order), self.max_batch_size):
                    self._generate_batch([rows[i] for i in order[start:start + self.max_batch_size]], on_text)
            finally:
                # weights changed while we generated (a trainer in another thread): what we stored is stale
                if cache is not None:
                    cache.check_weights(_weights_fingerprint(self.model))
        return [self._completion(r) for r in rows]

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix (needed only after a change to the forward pass that leaves the
        model's tensors alone, e.g. entering peft's ``disable_adapter()``; weight changes are detected)."""
        cache = self.prefix_cache
        if cache is not None:  # no lock: a generate in flight (or this one, from on_text) empties it when it ends
            cache.clear()
            cache.fingerprint = None

    def _new_row(self, index: int, prompt_ids: list[int], sp: SamplingParams) -> _Row:
        max_new = sp.max_tokens
        if self.max_context:
            room = self.max_context - len(prompt_ids)
            if room < 1:
                raise ValueError(f"prompt {index} has {len(prompt_ids)} tokens, which fills the context of "
                                 f"{self.name} ({self.max_context} tokens): shorten it (e.g. a smaller history window)")
            max_new = min(max_new, room)
        generator = None
        if sp.temperature > 0:
            torch = self._torch
            seed = sp.seed if sp.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            generator = torch.Generator(device="cpu")
            generator.manual_seed(int(seed) % 2**64)
        return _Row(index=index, prompt_ids=prompt_ids, sampling=sp, max_new=max_new, generator=generator)

    def _completion(self, row: _Row) -> Completion:
        return Completion(text=row.text, token_ids=list(row.ids),
                          logprobs=list(row.logprobs) if row.sampling.logprobs else None,
                          finish_reason=row.finish or "length", prompt_ids=list(row.prompt_ids))

    def _generate_batch(self, rows: list[_Row], on_text: OnText | None) -> None:
        batch = self._open(rows)
        while batch.rows:
            self._decode_step(batch, on_text)

    def _open(self, rows: list[_Row]) -> _Batch:
        """Prefill ``rows`` (from their longest cached prefixes) into a new running batch."""
        seqs = [r.prompt_ids for r in rows]
        if self.prefix_cache is not None:
            self._prefill_shared_prefixes(seqs)
        cache, attention, logits = self._prefill(seqs, requests=True, reserve=max(r.max_new for r in rows))
        positions = self._torch.tensor([len(s) for s in seqs], dtype=self._torch.long, device=self.device)
        return _Batch(list(rows), cache, attention, positions, logits)

    def _decode_step(self, batch: _Batch, on_text: OnText | None) -> list[_Row]:
        """Sample every row's next token from ``batch.logits``; finished rows leave the batch (their keys and
        values go to the prefix cache); the others are fed their token. Returns the rows that finished."""
        torch = self._torch
        tokens, logprobs = self._choose(batch.logits, batch.rows)
        keep, done = [], []
        for b, row in enumerate(batch.rows):
            self._advance(row, tokens[b], logprobs[b], on_text)
            if row.finish is None:
                keep.append(b)
            else:
                done.append(row)
                if self.prefix_cache is not None:
                    # everything fed so far: the prompt and the reply but its last token
                    self._remember(batch.cache, batch.attention, b, row.prompt_ids + row.ids[:-1])
        if not keep:
            batch.rows, batch.logits = [], None
            return done
        device = self.device
        step_tokens = torch.tensor([tokens[b] for b in keep], dtype=torch.long, device=device)
        if done:
            index = torch.tensor(keep, dtype=torch.long, device=device)
            attention = _trim_left_padding(batch.cache, batch.attention[index])  # first: the copy skips them
            batch.cache.batch_select_indices(index)
            batch.attention, batch.positions = attention, batch.positions[index]
            batch.rows = [batch.rows[b] for b in keep]
        batch.attention = torch.cat([batch.attention, batch.attention.new_ones((len(batch.rows), 1))], dim=1)
        batch.logits = self._forward(step_tokens[:, None], batch.attention, batch.positions[:, None], batch.cache)
        batch.positions = batch.positions + 1
        return done

    def _merge(self, batch: _Batch, other: _Batch) -> None:
        """Append ``other``'s rows to ``batch`` (both between decode steps, every row with pending logits):
        both right-aligned at the wider width, new buffers with room for every row's remaining tokens."""
        torch = self._torch
        width = max(batch.attention.shape[1], other.attention.shape[1])
        reserve = max(r.max_new - len(r.ids) for r in batch.rows + other.rows)
        pads = [width - batch.attention.shape[1], width - other.attention.shape[1]]
        layers = []
        for mine, theirs in zip(batch.cache.layers, other.cache.layers, strict=True):
            a, b = mine.keys.shape[0], theirs.keys.shape[0]
            buffer = mine.keys.new_empty((2, a + b, mine.keys.shape[1], width + reserve, mine.keys.shape[3]))
            for layer, pad, lo, hi in ((mine, pads[0], 0, a), (theirs, pads[1], a, a + b)):
                buffer[:, lo:hi, :, :pad].zero_()
                buffer[0, lo:hi, :, pad:width] = layer.keys
                buffer[1, lo:hi, :, pad:width] = layer.values
            merged = _growing_layer_class()(reserve)
            merged.adopt(buffer, width)
            layers.append(merged)
        batch.cache.layers = layers
        batch.attention = torch.cat([torch.nn.functional.pad(batch.attention, (pads[0], 0)),
                                     torch.nn.functional.pad(other.attention, (pads[1], 0))])
        batch.positions = torch.cat([batch.positions, other.positions])
        batch.logits = torch.cat([batch.logits, other.logits])
        batch.rows = batch.rows + other.rows
        batch.attention = _trim_left_padding(batch.cache, batch.attention)

    def session(self, admit_fraction: float = 0.25, max_wait_steps: int = 16) -> HFSession:
        """A continuous-batching session: requests join the running batch between decode steps
        (see :class:`HFSession`)."""
        return HFSession(self, admit_fraction=admit_fraction, max_wait_steps=max_wait_steps)

    def _prefill(self, seqs: list[list[int]], *, requests: bool, reserve: int = 0) -> tuple[Any, Any, Any]:
        """One forward over the prompts ``seqs``, left-padded, starting from their longest cached prefixes.

        The layout is the one without a cache (rows right-aligned at the longest
        prompt's width); its first ``width - new`` columns come from the tree,
        ``new`` being the longest uncached part of any row (at least its last
        token, whose logits are needed). Returns the KV cache, the attention
        mask and the last position's logits. ``requests``: these are the
        caller's prompts (counted as such in :attr:`prefill_stats`).
        ``reserve``: columns the KV buffers keep free for the tokens decoding will add.
        """
        torch = self._torch
        device = self.device
        tree = self.prefix_cache
        lengths = [len(s) for s in seqs]
        width = max(lengths)
        hits = [tree.lookup(s, len(s) - 1) for s in seqs] if tree is not None else [(0, [])] * len(seqs)
        new = max(n - hit for n, (hit, _) in zip(lengths, hits))
        used = [max(0, n - new) for n in lengths]  # <= each row's hit
        past = width - new
        attention = torch.zeros((len(seqs), width), dtype=torch.long)
        input_ids = torch.full((len(seqs), new), self.pad_token_id, dtype=torch.long)
        for b, s in enumerate(seqs):
            attention[b, width - lengths[b]:] = 1
            input_ids[b, new - (lengths[b] - used[b]):] = torch.tensor(s[used[b]:], dtype=torch.long)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)[:, past:]
        input_ids, attention, positions = input_ids.to(device), attention.to(device), positions.to(device)
        cache = _new_cache(self.model, reserve)
        if past:
            rows = [(u, path) for u, (_, path) in zip(used, hits)]
            for layer in range(tree.num_layers):
                target = cache.layers[layer] if layer < len(cache.layers) else None
                if type(target) is _growing_layer_class():  # gathered straight into the layer's buffer
                    target.adopt(tree.gather(rows, past, layer, out=target.empty_like_batch(
                        tree.first_kv(), len(seqs), past + new + reserve)), past)
                    continue
                kv = tree.gather(rows, past, layer)
                if target is not None:  # hand the tensors over (update() would copy them once more)
                    target.lazy_initialization(kv[0], kv[1])
                    target.keys, target.values = kv[0], kv[1]
                else:
                    cache.update(kv[0], kv[1], layer)
                del kv
            del rows
        logits = self._forward(input_ids, attention, positions, cache)
        stats = self.prefill_stats
        stats.prefill_tokens += sum(lengths) - sum(used)
        stats.padded_tokens += len(seqs) * new
        stats.prefill_passes += 1
        if requests:
            stats.prompt_tokens += sum(lengths)
            stats.cached_tokens += sum(used)
        return cache, attention, logits

    def _prefill_shared_prefixes(self, seqs: list[list[int]], depth: int = 0) -> None:
        """Compute ONCE, and store, the prefixes that several of ``seqs`` share and the tree lacks.

        Sorted sequences put every shared prefix between neighbours; the longest
        prefix each neighbour pair shares (when at least ``_MIN_SHARED`` of its
        tokens are not cached yet) is a candidate, candidates that are prefixes
        of other candidates are dropped (storing the longer one stores them),
        and the rest run as one batch, after their own shared prefixes (depth
        at most 3: the system prompt, the task, ...).
        """
        tree = self.prefix_cache
        if tree is None or len(seqs) < 2 or depth > 3:
            return
        ordered = sorted(seqs)
        candidates = set()
        for a, b in itertools.pairwise(ordered):
            n = _common_prefix_length(a, b)
            if n >= _MIN_SHARED and n - tree.lookup(a, n)[0] >= _MIN_SHARED:
                candidates.add(tuple(a[:n]))
        if not candidates:
            return
        ordered = sorted(candidates)
        shared = [list(c) for c, d in zip(ordered, ordered[1:] + [()]) if d[:len(c)] != c]
        self._prefill_shared_prefixes(shared, depth + 1)
        cache, attention, _ = self._prefill(shared, requests=False)
        for b, seq in enumerate(shared):
            self._remember(cache, attention, b, seq)

    def _remember(self, cache: Any, attention: Any, b: int, seq: list[int]) -> None:
        """Store row ``b``'s keys/values (the last ``len(seq)`` columns of ``cache``) under the tokens ``seq``."""
        if self.prefix_cache is None:
            return
        layers = cache.layers
        width = attention.shape[1]
        start = width - len(seq)
        if start < 0 or any(getattr(layer, "keys", None) is None or layer.keys.shape[-2] != width
                            for layer in layers):
            return
        torch = self._torch

        def kv_of(lo: int, hi: int):
            return torch.stack([torch.stack((layer.keys[b, :, start + lo:start + hi],
                                             layer.values[b, :, start + lo:start + hi])) for layer in layers])

        try:
            self.prefix_cache.insert(seq, kv_of)
        except RuntimeError as exc:  # layers of different shapes cannot share one tensor per node
            self.prefix_cache = None
            self.prefix_cache_off_reason = f"the model's layers cache keys/values of different shapes ({exc})"

    def _forward(self, input_ids, attention, positions, cache):
        kwargs = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                         past_key_values=cache, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float()

    def _choose(self, logits, rows: list[_Row]) -> tuple[list[int], list[float]]:
        """Next token of every row (greedy or seeded inverse-CDF sampling) and its temperature-1 log-prob.

        A sampled row draws one uniform ``u`` from its own generator and takes the
        first token whose cumulative probability exceeds ``u`` times the total:
        over token-id order when top-p is off, over the nucleus (most likely
        first) when it is on. The nucleus comes from ``topk`` with k grown until
        it holds the top-p mass (sorting a 49k vocabulary every step would cost
        more than the model's forward pass on a CPU).
        """
        torch = self._torch
        token_logp_all = torch.log_softmax(logits, dim=-1)
        chosen = logits.argmax(dim=-1)
        sampled = [b for b, r in enumerate(rows) if r.sampling.temperature > 0]
        if sampled:
            device = logits.device
            temps = torch.tensor([rows[b].sampling.temperature for b in sampled], device=device)
            uniforms = torch.cat([torch.rand(1, generator=rows[b].generator) for b in sampled]).to(device)
            probs = torch.softmax(logits[sampled] / temps[:, None], dim=-1)
            top_p = [rows[b].sampling.top_p for b in sampled]
            full = [j for j, p in enumerate(top_p) if p >= 1.0]
            nucleus = [j for j, p in enumerate(top_p) if p < 1.0]
            picks = torch.empty(len(sampled), dtype=torch.long, device=device)
            if full:
                picks[full] = _inverse_cdf(probs[full], uniforms[full])
            if nucleus:
                p_n = probs[nucleus]
                mass = torch.tensor([top_p[j] for j in nucleus], device=device)
                k = min(256, p_n.shape[-1])
                while True:
                    values, ids = p_n.topk(k, dim=-1)  # most likely first
                    cdf = values.cumsum(-1)
                    if k == p_n.shape[-1] or bool((cdf[:, -1] >= mass).all()):
                        break
                    k = min(p_n.shape[-1], k * 8)
                values = torch.where(cdf - values < mass[:, None], values, torch.zeros_like(values))
                picks[nucleus] = ids.gather(1, _inverse_cdf(values, uniforms[nucleus])[:, None])[:, 0]
            chosen[sampled] = picks
        token_logp = token_logp_all.gather(1, chosen[:, None])[:, 0]
        return chosen.tolist(), token_logp.tolist()

    def _advance(self, row: _Row, token: int, logprob: float, on_text: OnText | None) -> None:
        """Append one sampled token to a row and decide whether it is finished."""
        row.ids.append(token)
        row.logprobs.append(logprob)
        sp = row.sampling
        if token in self.eos_token_ids:
            row.finish = "stop"
            row.text = self._decode(row.ids[:-1])
        else:
            if sp.stop or on_text is not None or len(row.ids) >= row.max_new:
                row.text = self._decode(row.ids)
            end = find_stop(row.text, sp.stop) if sp.stop else None
            if end is not None:
                row.finish = "stop"
                row.text = row.text[:end]
            elif len(row.ids) >= row.max_new:
                row.finish = "length"
        if on_text is not None:
            visible = row.text if row.finish else row.text.rstrip("\ufffd")
            if row.finish or visible != row.streamed:
                row.streamed = visible
                on_text(row.index, visible)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    # -- training hooks --------------------------------------------------------------------------------------

    def update_weights(self, weights: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> None:
        """Copy named tensors into the model's parameters/buffers in place (for a trainer holding a copy).

        A trainer that optimizes ``engine.model`` itself needs no call: the engine
        always generates with the module's current weights. Empties the prefix
        KV cache (so does any in-place change of the model's tensors, detected
        at the next ``generate``).
        """
        torch = self._torch
        items = weights.items() if isinstance(weights, Mapping) else weights
        state = self.model.state_dict(keep_vars=True)
        unknown = []
        with torch.no_grad():
            for key, value in items:
                if key not in state:
                    unknown.append(key)
                    continue
                state[key].copy_(value)
            # keys/values computed with the old weights must not be reused (the version check would see the
            # copies too; this says it outright and frees the memory now)
            self.clear_prefix_cache()
        if unknown:
            raise KeyError(f"update_weights: {len(unknown)} names are not in {self.name}: {unknown[:5]}")


class HFSession:
    """Continuous batching over one :class:`HFEngine`: requests join and leave a running batch between steps.

    ``generate`` decodes a fixed batch until its LAST row finishes, so a turn
    of a multi-turn rollout costs as many decode steps as its longest reply
    while most rows sit finished, and no episode starts its next turn before
    all have ended theirs. A session instead keeps one batch running:
    :meth:`submit` queues a request, :meth:`step` runs ONE decode step over
    every running row and returns the requests that finished in it; queued
    requests are prefilled (from the prefix cache, shared prefixes once) and
    merged into the running batch before a step when enough of them wait
    (``admit_fraction`` of the running rows, at least one), when nothing
    runs, or when the oldest has waited ``max_wait_steps`` steps, up to the
    engine's ``max_batch_size`` rows. Merging copies the running keys/values
    once; batching admissions keeps that rare.

    Every request is decoded exactly as ``generate`` would (same sampling,
    stop strings, log-probs, per-request seeded generator), so a request's
    completion does not depend on what else runs beside it, up to float
    rounding of differently shaped batches. ``on_text`` streams like
    ``generate``'s, per request. The engine's weights must not change while
    rows run (a step raises if they did); between rollout phases, let the
    session drain or open a new one. Used by
    :class:`~turngym.agents.runner.EpisodeRunner` (``schedule="continuous"``).
    Single-threaded: call it from one thread.
    """

    def __init__(self, engine: HFEngine, *, admit_fraction: float = 0.25, max_wait_steps: int = 16):
        if engine.session_off_reason is not None:
            raise TurngymError(f"{engine.name} cannot run a continuous-batching session: "
                               f"{engine.session_off_reason}; use generate() (the runner's schedule='lockstep')")
        if not 0 <= admit_fraction <= 1:
            raise ValueError(f"admit_fraction must be in [0, 1], got {admit_fraction}")
        self.engine = engine
        self.admit_fraction = float(admit_fraction)
        self.max_wait_steps = int(max_wait_steps)
        self._waiting: deque[tuple[_Row, int]] = deque()
        self._callbacks: dict[int, Callable[[str], None]] = {}
        self._batch: _Batch | None = None
        self._fingerprint: Any = None
        self._modules = list(engine.model.modules())
        self._tensors = list(itertools.chain(engine.model.parameters(), engine.model.buffers()))
        self._versions: tuple[int, ...] = ()
        self._next_id = 0
        #: decode steps run, prefill passes that admitted requests, requests admitted
        self.steps = self.admissions = self.admitted = 0

    @property
    def running(self) -> int:
        """Rows in the running batch."""
        return len(self._batch.rows) if self._batch is not None else 0

    @property
    def waiting(self) -> int:
        """Submitted requests not admitted yet."""
        return len(self._waiting)

    def submit(self, prompt: Prompt, sampling: SamplingParams, on_text: Callable[[str], None] | None = None) -> int:
        """Queue a request; returns its id (the first element of its pair in :meth:`step`'s result).
        ``on_text(text_so_far)`` streams its text as ``generate``'s ``on_text`` does."""
        request = self._next_id
        self._next_id += 1
        row = self.engine._new_row(request, self.engine.prompt_ids(prompt), sampling)
        self._waiting.append((row, self.steps))
        if on_text is not None:
            self._callbacks[request] = on_text
        return request

    def step(self) -> list[tuple[int, Completion]]:
        """Admit queued requests when due, run one decode step; returns ``(id, completion)`` of every request
        that finished (in the running batch's order). Nothing to do returns ``[]``."""
        engine = self.engine
        torch = engine._torch
        with engine._lock, torch.no_grad(), _eval_mode(engine.model, self._modules):
            if self._batch is not None and self._batch.rows and self._changed():
                raise RuntimeError(f"{engine.name}'s weights changed while a session had rows running; let a "
                                   "session drain (or open a new one) before updating the weights")
            self._admit()
            if self._batch is None or not self._batch.rows:
                return []
            done = engine._decode_step(self._batch, self._stream if self._callbacks else None)
            self.steps += 1
        for row in done:
            self._callbacks.pop(row.index, None)
        return [(row.index, engine._completion(row)) for row in done]

    def _changed(self) -> bool:
        """Whether the weights changed since the running rows started: version counters of the tensors
        listed then (cheap enough for every step), and the full fingerprint every 16 steps (a tensor
        replaced by another)."""
        if not isinstance(self._fingerprint, tuple):  # inference tensors: nothing to compare
            return False
        if tuple(t._version for t in self._tensors) != self._versions:
            return True
        return self.steps % 16 == 0 and _weights_fingerprint(self.engine.model) != self._fingerprint

    def _stream(self, index: int, text: str) -> None:
        callback = self._callbacks.get(index)
        if callback is not None:
            callback(text)

    def _admit(self) -> None:
        engine, waiting = self.engine, self._waiting
        running = self.running
        room = engine.max_batch_size - running
        if not waiting or room <= 0:
            return
        due = (running == 0 or len(waiting) >= max(1, math.ceil(running * self.admit_fraction))
               or self.steps - waiting[0][1] >= self.max_wait_steps)
        if not due:
            return
        rows = [waiting.popleft()[0] for _ in range(min(room, len(waiting)))]
        if running == 0:
            self._fingerprint = _weights_fingerprint(engine.model)
            try:
                self._versions = tuple(t._version for t in self._tensors)
            except RuntimeError:  # inference tensors keep no version counter
                self._tensors, self._versions = [], ()
        if engine.prefix_cache is not None:
            engine.prefix_cache.check_weights(self._fingerprint)
        new = engine._open(rows)
        if running == 0:
            self._batch = new
        else:
            engine._merge(self._batch, new)
        self.admissions += 1
        self.admitted += len(rows)


def teacher_forced_logprobs(model: Any, prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> list[float]:
    """Log-probs (temperature 1) of ``completion_ids`` given ``prompt_ids`` from ONE full forward pass.

    The reference the engine's ``Completion.logprobs`` must match, and what a
    trainer recomputes: ``log_softmax(model(prompt + completion).logits)`` at
    the positions that predict each completion token.
    """
    torch = _torch()
    ids = list(prompt_ids) + list(completion_ids)
    device = next(model.parameters()).device
    with torch.no_grad(), _eval_mode(model):
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt_ids) - 1:-1], dim=-1)
    target = torch.tensor(list(completion_ids), device=device)
    return logp.gather(1, target[:, None])[:, 0].tolist()


def _inverse_cdf(weights, uniforms):
    """Per row, the first index whose cumulative weight exceeds ``u * total`` (never a zero-weight index)."""
    import torch

    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    at = torch.searchsorted(cdf, uniforms[:, None] * total, right=True)
    # u * total can round up to total; the last index that adds weight is the largest legal answer
    last = (cdf < total).sum(-1, keepdim=True)
    return torch.minimum(at, last)[:, 0]


@contextlib.contextmanager
def _eval_mode(model: Any, modules: Sequence[Any] | None = None) -> Iterator[None]:
    """Eval mode for the duration, then every submodule's own train/eval flag back (``modules``: the
    model's ``modules()``, listed once by a caller that enters this every decode step)."""
    flags = [(m, m.training) for m in (model.modules() if modules is None else modules)]
    if not any(training for _, training in flags):  # already in eval mode: nothing to switch
        yield
        return
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def _new_cache(model: Any, reserve: int = 0):
    """A ``DynamicCache`` for ``model`` whose full-attention layers are :class:`_GrowingLayer` s keeping
    ``reserve`` free columns (other layer kinds, e.g. sliding-window ones, stay as transformers makes them)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    growing = _growing_layer_class()
    if layers and growing is not None:
        from transformers.cache_utils import DynamicLayer

        cache.layers = [growing(reserve) if type(layer) is DynamicLayer else layer for layer in layers]
    return cache


_GrowingLayer: Any = None


def _growing_layer_class():
    """:class:`_GrowingLayer`, defined on first use (it subclasses a transformers class; None where
    ``transformers.cache_utils.DynamicLayer`` does not exist)."""
    global _GrowingLayer
    if _GrowingLayer is None:
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:
            return None
        _GrowingLayer = _define_growing_layer(DynamicLayer)
    return _GrowingLayer


def _define_growing_layer(DynamicLayer: Any):
    class GrowingLayer(DynamicLayer):
        """A full-attention layer cache that writes new keys/values into a preallocated buffer.

        transformers' ``DynamicLayer`` concatenates on every ``update``: each
        decode step copies the whole batch's keys/values (16 rows x 900 tokens
        of SmolLM2: ~660 MB a step). This layer keeps one buffer ``[2, batch,
        heads, capacity, head_dim]`` with ``reserve`` free columns after the
        first write; ``keys``/``values`` are views of its live columns
        ``[start, end)``. Dropping all-padding leading columns moves ``start``
        (no copy); removing finished rows copies the live columns once; a
        write past the capacity grows the buffer (by at least half).
        """

        def __init__(self, reserve: int = 0):
            super().__init__()
            self.reserve = max(0, int(reserve))
            self._kv = None
            self._start = self._end = 0

        def lazy_initialization(self, key_states, value_states) -> None:
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True

        @staticmethod
        def empty_like_batch(kv, batch: int, capacity: int):
            """An uninitialized buffer for ``batch`` rows and ``capacity`` columns shaped after a tree node's
            ``kv`` ``[layers, 2, heads, tokens, head_dim]``."""
            return kv.new_empty((2, batch, kv.shape[2], capacity, kv.shape[4]))

        def adopt(self, buffer, end: int) -> None:
            """Use ``buffer`` ``[2, batch, heads, capacity, head_dim]`` whose first ``end`` columns are filled."""
            self.dtype, self.device, self.is_initialized = buffer.dtype, buffer.device, True
            self._kv, self._start, self._end = buffer, 0, end
            self._views()

        def _views(self) -> None:
            self.keys = self._kv[0, :, :, self._start:self._end]
            self.values = self._kv[1, :, :, self._start:self._end]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = key_states.shape[-2]
            if self._kv is None:
                batch, heads, _, head_dim = key_states.shape
                self._kv = key_states.new_empty((2, batch, heads, n + self.reserve, head_dim))
                self._start = self._end = 0
            elif self._end + n > self._kv.shape[-2]:
                live = self._end - self._start
                grown = self._kv.new_empty((*self._kv.shape[:3], live + n + max(live // 2, n, 16),
                                            self._kv.shape[-1]))
                grown[:, :, :, :live] = self._kv[:, :, :, self._start:self._end]
                self._kv, self._start, self._end = grown, 0, live
            self._kv[0, :, :, self._end:self._end + n] = key_states
            self._kv[1, :, :, self._end:self._end + n] = value_states
            self._end += n
            self._views()
            return self.keys, self.values

        def drop_left(self, columns: int) -> None:
            """Forget the first ``columns`` live columns (no copy)."""
            self._start = min(self._end, self._start + columns)
            self._views()

        def batch_select_indices(self, indices) -> None:
            """Keep rows ``indices`` (increasing, as the engine passes them), compacted in place: each kept
            row's live columns move down to its new index; nothing is allocated."""
            if self._kv is None:
                return
            keep = [int(i) for i in indices.tolist()]
            if any(b <= a for a, b in itertools.pairwise(keep)):  # not increasing: a fresh copy is simplest
                self._kv = self._kv[:, indices]
            else:
                live = slice(self._start, self._end)
                for j, i in enumerate(keep):
                    if i != j:  # i > j: the source row is past every row written so far
                        self._kv[:, j, :, live] = self._kv[:, i, :, live]
                self._kv = self._kv[:, :len(keep)]
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self._kv is None:
                return
            self._kv = self._kv[:, :, :, self._start:].repeat_interleave(repeats, dim=1)
            self._end -= self._start
            self._start = 0
            self._views()

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError(f"crop({tokens_to_remove}): give the number of tokens to remove as a negative "
                                 "integer")
            if tokens_to_remove and self._kv is not None:
                self._end = max(self._start, self._end + tokens_to_remove)
                self._views()

        def reset(self) -> None:
            self._kv = None
            self._start = self._end = 0
            super().reset()

        def offload(self):
            raise NotImplementedError("the engine's KV buffers are not offloaded")

    return GrowingLayer


def _trim_left_padding(cache: Any, attention):
    """Drop leading mask columns that are padding for every row, from the mask and the KV cache.

    Only for plain full-attention caches (every layer a ``DynamicLayer``); other
    cache kinds keep the columns, which the mask still hides.
    """
    layers = getattr(cache, "layers", None)
    if not layers:
        return attention
    from transformers.cache_utils import DynamicLayer

    growing = _growing_layer_class()
    if any(type(layer) not in (DynamicLayer, growing) or getattr(layer, "keys", None) is None
           for layer in layers):
        return attention
    real = attention.any(dim=0)
    lead = int(real.int().argmax()) if bool(real.any()) else 0
    if lead == 0 or any(layer.keys.shape[-2] != attention.shape[1] for layer in layers):
        return attention
    for layer in layers:
        if type(layer) is growing:
            layer.drop_left(lead)
        else:
            layer.keys = layer.keys[:, :, lead:, :]
            layer.values = layer.values[:, :, lead:, :]
    return attention[:, lead:]


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists (slice comparisons run in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n - 1  # a[:lo] == b[:lo] and a[:hi + 1] != b[:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _weights_fingerprint(model: Any) -> Any:
    """Identity, storage and version counter of every parameter and buffer: any in-place change (an
    optimizer step, ``load_state_dict``, ``copy_``) or replacement of a tensor changes it."""
    try:
        return tuple((id(t), t.data_ptr(), t._version)
                     for t in itertools.chain(model.parameters(), model.buffers()))
    except RuntimeError:  # inference tensors keep no version counter: trust nothing across calls
        return object()


def _plain_cache_reason(cache: Any) -> str | None:
    """Why the prefix cache cannot work with this KV cache object (None when it can: full-attention layers)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return "this transformers version's DynamicCache has no per-layer objects (transformers >= 4.56 has)"
    from transformers.cache_utils import DynamicLayer

    kinds = {type(layer) for layer in layers} or {getattr(cache, "layer_class_to_replicate", None)}
    if not kinds or not kinds <= {DynamicLayer, _growing_layer_class()}:
        return (f"the model's KV cache has {sorted(getattr(k, '__name__', str(k)) for k in kinds)} layers "
                "(sliding-window or hybrid attention), which the prefix cache does not handle")
    return None
