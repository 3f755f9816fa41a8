"""The hf engine's KV cache: transformers' ``DynamicCache`` with the engine's own growing layers.

This is the one module that knows transformers' cache internals
(``transformers.cache_utils``, ``DynamicCache``, ``DynamicLayer``, a layer's
``keys``/``values``/``lazy_initialization``): when transformers changes its
cache, this is the file to touch. The engine (``hf.py``) and the continuous
batching session only pass cache objects around and call the functions here
(and the cache's public ``batch_select_indices``).

The growing layer. A cache's full-attention layers are the engine's own
:class:`GrowingLayer` (built by :func:`growing_layer_class`): one
preallocated buffer per layer with room for the batch's ``max_tokens``, so a
decode step writes its new column in place (transformers' own layer
concatenates, copying every row's keys/values at every step: at 16 rows of
~900 tokens that copy made SmolLM2's decode step 1.5-1.8x slower). Leading
columns that have become padding for every row are cut off without a copy
(:func:`trim_left_padding`); removing finished rows compacts the buffer in
place.

Depends on nothing of ours; torch and transformers are imported lazily (the
``hf`` extra).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any


def new_cache(model: Any, reserve: int = 0):
    """A ``DynamicCache`` for ``model`` whose full-attention layers are :class:`GrowingLayer` s keeping
    ``reserve`` free columns (other layer kinds, e.g. sliding-window ones, stay as transformers makes them)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56
        return DynamicCache()
    layers = getattr(cache, "layers", None)
    growing = growing_layer_class()
    if layers and growing is not None:
        from transformers.cache_utils import DynamicLayer

        cache.layers = [growing(reserve) if type(layer) is DynamicLayer else layer for layer in layers]
    return cache


GrowingLayer: Any = None


def growing_layer_class():
    """:class:`GrowingLayer`, defined on first use (it subclasses a transformers class; None where
    ``transformers.cache_utils.DynamicLayer`` does not exist)."""
    global GrowingLayer
    if GrowingLayer is None:
        try:
            from transformers.cache_utils import DynamicLayer
        except ImportError:
            return None
        GrowingLayer = _define_growing_layer(DynamicLayer)
    return GrowingLayer


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


def trim_left_padding(cache: Any, attention):
    """Drop leading mask columns that are padding for every row, from the mask and the KV cache.

    Only for plain full-attention caches (every layer a ``DynamicLayer``); other
    cache kinds keep the columns, which the mask still hides.
    """
    layers = getattr(cache, "layers", None)
    if not layers:
        return attention
    from transformers.cache_utils import DynamicLayer

    growing = growing_layer_class()
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


def plain_cache_reason(cache: Any) -> str | None:
    """Why the prefix cache cannot work with this KV cache object (None when it can: full-attention layers)."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return "this transformers version's DynamicCache has no per-layer objects (transformers >= 4.56 has)"
    from transformers.cache_utils import DynamicLayer

    kinds = {type(layer) for layer in layers} or {getattr(cache, "layer_class_to_replicate", None)}
    if not kinds or not kinds <= {DynamicLayer, growing_layer_class()}:
        return (f"the model's KV cache has {sorted(getattr(k, '__name__', str(k)) for k in kinds)} layers "
                "(sliding-window or hybrid attention), which the prefix cache does not handle")
    return None


def load_prefixes(cache: Any, tree: Any, rows: Sequence[tuple[int, Any]], past: int, capacity: int) -> None:
    """Fill ``cache``'s first ``past`` columns with cached prefixes from ``tree`` (a
    :class:`~turngym.agents.engines.prefix_cache.PrefixKVCache`), for ``rows`` of ``(used, path from lookup)``
    right-aligned as in :meth:`~turngym.agents.engines.prefix_cache.PrefixKVCache.gather`. A growing layer
    receives them straight into a buffer of ``capacity`` columns; other layers get the gathered tensors."""
    for layer in range(tree.num_layers):
        target = cache.layers[layer] if layer < len(cache.layers) else None
        if type(target) is growing_layer_class():  # gathered straight into the layer's buffer
            target.adopt(tree.gather(rows, past, layer, out=target.empty_like_batch(
                tree.first_kv(), len(rows), capacity)), past)
            continue
        kv = tree.gather(rows, past, layer)
        if target is not None:  # hand the tensors over (update() would copy them once more)
            target.lazy_initialization(kv[0], kv[1])
            target.keys, target.values = kv[0], kv[1]
        else:
            cache.update(kv[0], kv[1], layer)
        del kv


def row_kv_reader(cache: Any, width: int, b: int, start: int) -> Callable[[int, int], Any] | None:
    """``kv_of(lo, hi)``: row ``b``'s keys/values ``[layers, 2, heads, hi - lo, head_dim]`` of the columns
    ``start + lo`` to ``start + hi`` (what :meth:`PrefixKVCache.insert` asks for), or None when some layer
    does not hold ``width`` columns (the row's tokens cannot be located in it)."""
    import torch

    layers = cache.layers
    if start < 0 or any(getattr(layer, "keys", None) is None or layer.keys.shape[-2] != width for layer in layers):
        return None

    def kv_of(lo: int, hi: int):
        return torch.stack([torch.stack((layer.keys[b, :, start + lo:start + hi],
                                         layer.values[b, :, start + lo:start + hi])) for layer in layers])

    return kv_of


def merge_caches(cache: Any, other: Any, pads: Sequence[int], width: int, reserve: int) -> None:
    """Put ``other``'s rows after ``cache``'s, both right-aligned at ``width`` columns (``pads``: the
    zero columns each gets on the left), into new growing layers with ``reserve`` free columns."""
    layers = []
    for mine, theirs in zip(cache.layers, other.layers, strict=True):
        a, b = mine.keys.shape[0], theirs.keys.shape[0]
        buffer = mine.keys.new_empty((2, a + b, mine.keys.shape[1], width + reserve, mine.keys.shape[3]))
        for layer, pad, lo, hi in ((mine, pads[0], 0, a), (theirs, pads[1], a, a + b)):
            buffer[:, lo:hi, :, :pad].zero_()
            buffer[0, lo:hi, :, pad:width] = layer.keys
            buffer[1, lo:hi, :, pad:width] = layer.values
        merged = growing_layer_class()(reserve)
        merged.adopt(buffer, width)
        layers.append(merged)
    cache.layers = layers
