"""The hf engine's prefix KV cache: keys/values of token sequences already run through the model.

Agent prompts repeat themselves: every row and episode starts with the same
system prompt and few-shot exemplars, the G rollouts of a task share their
whole first prompt, and a multi-turn prompt extends the previous turn's
prompt + sampled reply. :class:`PrefixKVCache` keeps the keys/values of token
sequences already run through the model in a radix tree (one node per shared
stretch of tokens, so the system prompt is stored once), bounded in bytes
(``prefix_cache_bytes``; least recently used leaves go first). A batch's
prefill (``HFEngine._prefill``) then takes each row's longest cached prefix
from the tree and runs only the rest:

* the layout of the batch is the one without a cache (every row right-aligned
  at the width of the longest prompt); the first ``width - new`` columns come
  from the tree, where ``new`` is the longest uncached suffix of any row; a
  row with a shorter suffix recomputes a few cached tokens in columns that
  would otherwise be padding, so the prefill costs ``rows x new`` positions
  and the mask has no holes;
* before that, prefixes that several rows of the batch share and the tree
  lacks (:meth:`PrefixKVCache.shared_prefixes`) are computed ONCE (one short
  batch of the distinct shared prefixes, themselves deduplicated the same
  way) and put into the tree: a cold batch of 16 rows pays for its system
  prompt once, not 16 times;
* a finished row's prompt + reply (all of it but the last sampled token,
  which was never fed) goes into the tree, so the next turn of a full-context
  episode prefills only the new observation.

Keys/values are the same numbers a full prefill computes, up to float
rounding of differently shaped matmuls (fp32: ~1e-6 on log-probs; the sampled
tokens are the same). The cache belongs to the weights it was computed with
(:func:`weights_fingerprint`, checked by :meth:`PrefixKVCache.check_weights`):
it is emptied by ``HFEngine.update_weights``, by
``HFEngine.clear_prefix_cache``, and automatically whenever any parameter or
buffer of the model changed since it was filled (an optimizer step or a
``load_state_dict`` on ``engine.model`` bumps the tensors' version counters,
which every ``generate`` call checks). Things that change the forward pass
without touching a tensor (peft's ``disable_adapter()`` context) need an
explicit ``clear_prefix_cache``. Models whose cache is not a plain
full-attention ``DynamicCache`` (sliding-window layers) run without it.
:class:`PrefillStats` (``engine.prefill_stats``) counts prompt tokens, tokens
taken from the cache and tokens actually prefilled.

Depends on nothing of ours and imports nothing heavy: the tree holds whatever
tensors it is given (torch tensors, in the engine).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Default memory bound of the prefix KV cache (bytes, on the model's device).
DEFAULT_PREFIX_CACHE_BYTES = 1 << 30

#: A prefix several rows of a batch share is computed once when at least this many of its tokens are new.
_MIN_SHARED = 16


@dataclass
class PrefillStats:
    """Prompt-side work of an ``HFEngine`` (counts of tokens; see the module docstring).

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
            k = min(common_prefix_length(child.tokens, ids[pos:pos + len(child.tokens)]), limit - pos)
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
            k = common_prefix_length(child.tokens, ids[pos:pos + len(child.tokens)])
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

    def shared_prefixes(self, seqs: Sequence[Sequence[int]]) -> list[list[int]]:
        """The prefixes that several of ``seqs`` share and that the tree lacks, to compute ONCE and store.

        Sorted sequences put every shared prefix between neighbours; the longest
        prefix each neighbour pair shares (when at least ``_MIN_SHARED`` of its
        tokens are not cached yet) is a candidate, and candidates that are
        prefixes of other candidates are dropped (storing the longer one stores
        them). The engine runs the rest as one batch, after their own shared
        prefixes (found by calling this again on them).
        """
        ordered = sorted(seqs)
        candidates = set()
        for a, b in itertools.pairwise(ordered):
            n = common_prefix_length(a, b)
            if n >= _MIN_SHARED and n - self.lookup(a, n)[0] >= _MIN_SHARED:
                candidates.add(tuple(a[:n]))
        if not candidates:
            return []
        ordered = sorted(candidates)
        return [list(c) for c, d in zip(ordered, ordered[1:] + [()]) if d[:len(c)] != c]


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
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


def weights_fingerprint(model: Any) -> Any:
    """Identity, storage and version counter of every parameter and buffer: any in-place change (an
    optimizer step, ``load_state_dict``, ``copy_``) or replacement of a tensor changes it."""
    try:
        return tuple((id(t), t.data_ptr(), t._version)
                     for t in itertools.chain(model.parameters(), model.buffers()))
    except RuntimeError:  # inference tensors keep no version counter: trust nothing across calls
        return object()

