"""The transformers engine: true batched generation with a KV cache, on CPU or GPU.

``HFEngine`` runs its own decode loop over ``model(...)`` forward passes
instead of ``model.generate`` so that it controls, per request: stop strings,
``max_tokens``, temperature, top-p and seed, the log-probs of the sampled
tokens, and the streaming callback. Its parts, one module each:

* ``sampling.py``: a request's decoding state, how its next token is chosen
  (greedy, seeded inverse-CDF, top-p) with its temperature-1 log-prob, and
  when it stops (EOS, stop strings, ``max_tokens``);
* ``prefix_cache.py``: the prefix KV cache (a radix tree of keys/values
  already computed), its statistics and the weight fingerprint that empties it;
* ``kv_layers.py``: the KV cache object and everything tied to transformers'
  cache internals (the engine's preallocated growing layer);
* ``continuous.py``: :class:`~turngym.agents.engines.continuous.HFSession`,
  continuous batching over one engine (:meth:`HFEngine.session`).

How a batch is generated (``_generate_batch``):

* prompts are LEFT-padded into one ``[B, L]`` tensor with an attention mask;
  position ids come from the mask (``cumsum - 1``), so a padded row sees the
  same positions as it would alone;
* one prefill forward fills a ``DynamicCache`` (only the last position's
  logits are computed), starting from each row's longest prefix in the
  prefix cache (``prefix_cache=True``, the default); every later step feeds
  one token per live row;
* the cache's full-attention layers are the engine's own growing layer: one
  preallocated buffer per layer with room for the batch's ``max_tokens``, so
  a decode step writes its new column in place (see ``kv_layers.py``);
* a row that finishes (EOS, stop string, its own ``max_tokens``, or the
  model's context length) is REMOVED from the batch and the KV cache at once,
  and leading cache columns that have become padding for every remaining row
  are cut off (no copy), so long finished rows cost nothing afterwards; its
  prompt + reply go into the prefix cache;
* more prompts than ``max_batch_size`` run as successive micro-batches
  (sorted by prompt length to limit padding; results keep the input order).

``Completion.logprobs[t]`` is the policy's own temperature-1 log-probability
of the sampled token; the same seed and prompt give the same completion
whatever else is in the batch, up to float rounding (see ``sampling.py``).
A trainer's teacher-forced forward recomputes the log-probs
(:func:`turngym.testing.teacher_forced_logprobs` is the test's version).

Prompts: chat messages go through :meth:`HFEngine.render` (the tokenizer's
chat template, ``add_generation_prompt=True``); token ids are used verbatim;
raw text is tokenized WITHOUT the tokenizer's special tokens and then gets
the tokenizer's own leading special tokens (a BOS, for tokenizers that add
one; SmolLM2's adds none) unless the text already starts with them, and never
an EOS suffix. So a text rendered by ``apply_chat_template(tokenize=False)``,
which carries its BOS, is not given a second one.

Weights are shared, not copied: ``engine.model`` is the ``nn.Module`` a
trainer optimizes, and ``generate`` always samples from the current weights.
It runs under ``torch.no_grad()`` in eval mode (dropout off) and restores
every submodule's train/eval flag afterwards.

Depends on ``turngym.agents`` and ``turngym.errors``; torch and transformers
are imported lazily (the ``hf`` extra).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from turngym.agents.engines import kv_layers
from turngym.agents.engines.base import OnText, per_prompt_sampling
from turngym.agents.engines.default_model import read_model_info, resolve_model
from turngym.agents.engines.device import resolve_device, resolve_dtype
from turngym.agents.engines.prefix_cache import (
    DEFAULT_PREFIX_CACHE_BYTES,
    PrefillStats,
    PrefixKVCache,
    weights_fingerprint,
)
from turngym.agents.engines.prompts import LocalPrompts, PromptEncoder
from turngym.agents.engines.sampling import Row, advance, choose, request_generator
from turngym.agents.types import Completion, Prompt, SamplingParams
from turngym.errors import require

if TYPE_CHECKING:
    from turngym.agents.engines.continuous import HFSession


_PURPOSE = "the transformers engine (HFEngine)"


def _torch():
    return require("torch", "hf", _PURPOSE)


@dataclass
class _Batch:
    """Rows being decoded together: their KV cache, mask, next positions and pending next-token logits."""

    rows: list[Row]
    cache: Any
    attention: Any  # [rows, width], 1 where a column holds a real token
    positions: Any  # [rows]: the position of each row's next token
    logits: Any  # [rows, vocab]: the distribution of each row's next token (None once every row is done)



class HFEngine(LocalPrompts):
    """Batched generation with a transformers causal LM (see the module docstring).

    Args:
        model: "default" (the embedded SmolLM2-135M-Instruct), a local HF model
            folder, a .gguf file (converted and cached once), a Hugging Face Hub id
            ``org/name[@revision]`` (from the HF cache, see ``hub.py``), or an already
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
            (see ``prefix_cache.py``); False turns it off.
        prefix_cache_bytes: memory bound of that cache (on the model's device),
            default 1 GiB (SmolLM2-135M in fp32 needs 46 KB per token).
        dtype_setting: the name ``dtype`` goes by in the caller's settings (``rollout.dtype`` in the
            trainer), used in the error for a bad name and the warning for a half precision this CPU
            lacks native instructions for (:func:`~turngym.agents.engines.device.warn_if_slow_on_cpu`).

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
                 prefix_cache: bool = True, prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
                 dtype_setting: str = "dtype"):
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
            self.model, self.tokenizer = self._load(path, device, dtype, attn_implementation, dtype_setting)
            info = read_model_info(path)
            default_name = info.get("name") or Path(path).name
        else:
            if tokenizer is None:
                raise ValueError("HFEngine got a loaded model without its tokenizer: pass (model, tokenizer)")
            self.model, self.tokenizer = model, tokenizer
            if device not in (None, "auto") or dtype not in (None, "auto"):
                target_device = resolve_device(device) if device not in (None, "auto") else None
                target_dtype = resolve_dtype(dtype, target_device or str(self.device),
                                             setting=dtype_setting) if dtype not in (None, "auto") else None
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
        self.session_off_reason = kv_layers.plain_cache_reason(kv_layers.new_cache(self.model))
        if prefix_cache:
            self.prefix_cache_off_reason = self.session_off_reason
            if self.prefix_cache_off_reason is None:
                self.prefix_cache = PrefixKVCache(prefix_cache_bytes)

    # -- loading ---------------------------------------------------------------------------------------------

    @staticmethod
    def _load(path: Path, device: str | None, dtype: Any, attn_implementation: str | None,
              dtype_setting: str = "dtype"):
        transformers = require("transformers", "hf", _PURPOSE)
        from turngym.agents.engines.default_model import _dtype_kwarg

        device = resolve_device(device)
        kwargs = _dtype_kwarg(transformers, resolve_dtype(dtype, device, setting=dtype_setting))
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
        with self._lock, self._torch.no_grad(), eval_mode(self.model):
            cache = self.prefix_cache
            if cache is not None:
                cache.check_weights(weights_fingerprint(self.model))
            try:
                for start in range(0, len(order), self.max_batch_size):
                    self._generate_batch([rows[i] for i in order[start:start + self.max_batch_size]], on_text)
            finally:
                # weights changed while we generated (a trainer in another thread): what we stored is stale
                if cache is not None:
                    cache.check_weights(weights_fingerprint(self.model))
        return [self._completion(r) for r in rows]

    def clear_prefix_cache(self) -> None:
        """Forget every cached prefix (needed only after a change to the forward pass that leaves the
        model's tensors alone, e.g. entering peft's ``disable_adapter()``; weight changes are detected)."""
        cache = self.prefix_cache
        if cache is not None:  # no lock: a generate in flight (or this one, from on_text) empties it when it ends
            cache.clear()
            cache.fingerprint = None

    def _new_row(self, index: int, prompt_ids: list[int], sp: SamplingParams) -> Row:
        max_new = sp.max_tokens
        if self.max_context:
            room = self.max_context - len(prompt_ids)
            if room < 1:
                raise ValueError(f"prompt {index} has {len(prompt_ids)} tokens, which fills the context of "
                                 f"{self.name} ({self.max_context} tokens): shorten it (e.g. a smaller history window)")
            max_new = min(max_new, room)
        return Row(index=index, prompt_ids=prompt_ids, sampling=sp, max_new=max_new, generator=request_generator(sp))

    def _completion(self, row: Row) -> Completion:
        return Completion(text=row.text, token_ids=list(row.ids),
                          logprobs=list(row.logprobs) if row.sampling.logprobs else None,
                          finish_reason=row.finish or "length", prompt_ids=list(row.prompt_ids))

    def _generate_batch(self, rows: list[Row], on_text: OnText | None) -> None:
        batch = self._open(rows)
        while batch.rows:
            self._decode_step(batch, on_text)

    def _open(self, rows: list[Row]) -> _Batch:
        """Prefill ``rows`` (from their longest cached prefixes) into a new running batch."""
        seqs = [r.prompt_ids for r in rows]
        if self.prefix_cache is not None:
            self._prefill_shared_prefixes(seqs)
        cache, attention, logits = self._prefill(seqs, requests=True, reserve=max(r.max_new for r in rows))
        positions = self._torch.tensor([len(s) for s in seqs], dtype=self._torch.long, device=self.device)
        return _Batch(list(rows), cache, attention, positions, logits)

    def _decode_step(self, batch: _Batch, on_text: OnText | None) -> list[Row]:
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
        step_tokens = torch.tensor([tokens[b] for b in keep], dtype=torch.long, device=self.device)
        if done:
            batch.logits = None  # spent: the forward below gives the kept rows' next ones
            self._keep_rows(batch, keep)
        batch.attention = torch.cat([batch.attention, batch.attention.new_ones((len(batch.rows), 1))], dim=1)
        batch.logits = self._forward(step_tokens[:, None], batch.attention, batch.positions[:, None], batch.cache)
        batch.positions = batch.positions + 1
        return done

    def _keep_rows(self, batch: _Batch, keep: list[int]) -> None:
        """Keep only the rows at positions ``keep`` (in order, at least one) of ``batch``: their keys and values,
        mask, positions and pending logits; the others leave it (finished rows, a cancelled request)."""
        index = self._torch.tensor(keep, dtype=self._torch.long, device=self.device)
        attention = kv_layers.trim_left_padding(batch.cache, batch.attention[index])  # first: the copy skips them
        batch.cache.batch_select_indices(index)
        batch.attention, batch.positions = attention, batch.positions[index]
        if batch.logits is not None:
            batch.logits = batch.logits[index]
        batch.rows = [batch.rows[b] for b in keep]

    def _merge(self, batch: _Batch, other: _Batch) -> None:
        """Append ``other``'s rows to ``batch`` (both between decode steps, every row with pending logits):
        both right-aligned at the wider width, new buffers with room for every row's remaining tokens."""
        torch = self._torch
        width = max(batch.attention.shape[1], other.attention.shape[1])
        reserve = max(r.max_new - len(r.ids) for r in batch.rows + other.rows)
        pads = [width - batch.attention.shape[1], width - other.attention.shape[1]]
        kv_layers.merge_caches(batch.cache, other.cache, pads, width, reserve)
        batch.attention = torch.cat([torch.nn.functional.pad(batch.attention, (pads[0], 0)),
                                     torch.nn.functional.pad(other.attention, (pads[1], 0))])
        batch.positions = torch.cat([batch.positions, other.positions])
        batch.logits = torch.cat([batch.logits, other.logits])
        batch.rows = batch.rows + other.rows
        batch.attention = kv_layers.trim_left_padding(batch.cache, batch.attention)

    def session(self, admit_fraction: float = 0.25, max_wait_steps: int = 16) -> HFSession:
        """A continuous-batching session: requests join the running batch between decode steps
        (see :class:`~turngym.agents.engines.continuous.HFSession`)."""
        from turngym.agents.engines.continuous import HFSession

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
        cache = kv_layers.new_cache(self.model, reserve)
        if past:
            kv_layers.load_prefixes(cache, tree, [(u, path) for u, (_, path) in zip(used, hits)], past,
                                    past + new + reserve)
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
        """Compute ONCE, and store, the prefixes that several of ``seqs`` share and the tree lacks
        (:meth:`PrefixKVCache.shared_prefixes`): one batch, after their own shared prefixes (depth at most 3:
        the system prompt, the task, ...)."""
        tree = self.prefix_cache
        if tree is None or len(seqs) < 2 or depth > 3:
            return
        shared = tree.shared_prefixes(seqs)
        if not shared:
            return
        self._prefill_shared_prefixes(shared, depth + 1)
        cache, attention, _ = self._prefill(shared, requests=False)
        for b, seq in enumerate(shared):
            self._remember(cache, attention, b, seq)

    def _remember(self, cache: Any, attention: Any, b: int, seq: list[int]) -> None:
        """Store row ``b``'s keys/values (the last ``len(seq)`` columns of ``cache``) under the tokens ``seq``."""
        if self.prefix_cache is None:
            return
        width = attention.shape[1]
        kv_of = kv_layers.row_kv_reader(cache, width, b, width - len(seq))
        if kv_of is None:
            return
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

    def _choose(self, logits, rows: list[Row]) -> tuple[list[int], list[float]]:
        """Next token of every row and its temperature-1 log-prob (:func:`~turngym.agents.engines.sampling.choose`)."""
        return choose(logits, rows)

    def _advance(self, row: Row, token: int, logprob: float, on_text: OnText | None) -> None:
        """Append one sampled token to a row and decide whether it is finished
        (:func:`~turngym.agents.engines.sampling.advance`, with this engine's EOS ids and tokenizer)."""
        advance(row, token, logprob, self.eos_token_ids, self._decode, on_text)

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


@contextlib.contextmanager
def eval_mode(model: Any, modules: Sequence[Any] | None = None) -> Iterator[None]:
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


def __getattr__(name: str) -> Any:
    # HFSession lives in continuous.py, which imports this module; the old import path still finds it
    if name == "HFSession":
        from turngym.agents.engines.continuous import HFSession

        return HFSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
