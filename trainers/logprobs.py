"""Per-token log-probs (and entropy) of a causal LM on training sequences, without a [tokens x vocab] tensor.

:func:`sequence_logprobs` is the ONE function the trainer calls for new,
old and reference log-probs. It runs the model's decoder to the final hidden
states and applies the output head only at the positions asked for, through
:func:`token_logprobs`, which dispatches to:

1. ``turngym.kernels.fused_logprobs`` when that module is importable and the
   head is a plain ``nn.Linear`` (the fused op of the kernels package);
2. otherwise a chunked plain-torch path: ``chunk_size`` tokens at a time,
   each chunk's logits, log-softmax and entropy computed (by the kernels'
   reference math, ``reference_logprobs_from_logits``) and dropped; under
   autograd every chunk is checkpointed (recomputed in backward), so at
   most one chunk of ``[tokens x vocab]`` exists at any time, forward or
   backward;
3. :func:`reference_sequence_logprobs` (the model's full logits, then the
   kernels' reference math: log-softmax and gather): the ground truth for
   tests, and the path for models whose logits are not ``head(hidden)``
   (final logit soft-capping, logit scaling) or whose decoder cannot be
   found.

Alignment. Outputs are ``[B, T]`` aligned with ``input_ids``:
``logprobs[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`` (the
prediction made at position ``t - 1``) and ``entropy[b, t]`` the entropy of
that same distribution; position 0, padding, and positions outside
``loss_mask`` hold 0. So a sample's ``loss_mask`` and ``old_logprobs`` (see
``turngym.trainers.tokens``) index the same positions, with no shift to get
wrong.

Temperature: log-probs of ``softmax(logits / temperature)``. The engines
report log-probs at temperature 1 (the policy's own), so compare with
``temperature=1`` (the default).

Depends on torch and ``turngym.kernels`` (the fused op and the one log-prob reference).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from turngym.kernels.logprob import reference_logprobs_from_logits

#: Default number of logit elements (tokens x vocab) per chunk: 16M floats = 64 MiB in fp32.
CHUNK_ELEMENTS = 1 << 24


def _position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0) * attention_mask.long()


def _targets_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor | None):
    """Positions t >= 1 whose token gets a log-prob."""
    want = attention_mask.bool() if loss_mask is None else (loss_mask > 0) & attention_mask.bool()
    want = want.clone()
    want[:, 0] = False
    return want


def _plain_head(model: Any) -> Any:
    """The output head if ``logits == head(final hidden states)`` for this model, else None."""
    config = getattr(model, "config", None)
    for name in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale"):
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return None
    get_head = getattr(model, "get_output_embeddings", None)
    return get_head() if get_head is not None else None


def _decoder(model: Any) -> Any:
    get = getattr(model, "get_decoder", None)
    if get is None:
        return None
    try:
        decoder = get()
    except Exception:  # noqa: BLE001 - exotic architectures: take the reference path
        return None
    return None if decoder is model else decoder


def sequence_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      temperature: float = 1.0, with_entropy: bool = False, *,
                      loss_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                      chunk_size: int | None = None, impl: str = "auto", share_prefix: bool = False):
    """Per-token log-probs of ``input_ids`` under ``model`` (and the entropy of each predictive distribution).

    Args:
        model: a transformers causal LM (or a peft wrapper of one).
        input_ids: ``[B, T]`` token ids, right padded (``turngym.trainers.tokens.collate``).
        attention_mask: ``[B, T]``, 1 on real tokens (default: all ones).
        temperature: divides the logits before the softmax.
        with_entropy: also return the entropy ``-sum_v p_v log p_v`` (differentiable).
        loss_mask: optional ``[B, T]``; if given, only these positions are
            computed (the head runs on them alone: prompts and observations
            cost no head FLOPs); others hold 0.
        position_ids: ``[B, T]`` (default: 0, 1, ... over each row's real tokens).
        chunk_size: tokens per chunk for the chunked path (default: ``CHUNK_ELEMENTS // vocab``).
        impl: ``"auto"`` (kernel if available, else chunked), ``"chunked"`` or ``"reference"``.
        share_prefix: compute what rows share once: the ids every row starts with (a group's prompt)
            run once and the rows' remainders on its KV cache (:func:`shared_prefix_length` says when),
            or, when it saves more, the rows' whole prefix tree as one packed sequence (:func:`_prefix_tree`:
            a trajectory's turns whose prompts repeat the transcript before them); the same values within
            float rounding, gradients included, for fewer tokens.

    Returns:
        ``logprobs`` ``[B, T]`` float32, or ``(logprobs, entropy)`` with
        ``with_entropy``; aligned with ``input_ids`` (see the module docstring).
        Gradients flow when called with grad enabled.
    """
    if impl not in ("auto", "chunked", "reference"):
        raise ValueError(f"unknown impl {impl!r}: use 'auto', 'chunked' or 'reference'")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to define log-probs, got {temperature}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, tokens], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = _position_ids(attention_mask)
    head = _plain_head(model) if impl != "reference" else None
    decoder = _decoder(model) if head is not None else None
    if head is None or decoder is None:
        return reference_sequence_logprobs(model, input_ids, attention_mask, temperature, with_entropy,
                                           loss_mask=loss_mask, position_ids=position_ids)
    want = _targets_mask(input_ids, attention_mask, loss_mask)
    p = shared_prefix_length(input_ids, attention_mask, want, model) if share_prefix else 0
    tree = _prefix_tree(input_ids, attention_mask, position_ids, p) if share_prefix and _cache_safe(model) else None
    if tree is not None:
        # Every token several rows hold at the same place runs once (the rows' prefix tree, one packed sequence);
        # the hidden state of row b's position t is the tree node's: node[b, t].
        ids, pos, node, mask = tree
        out = decoder(input_ids=ids[None], attention_mask=mask, position_ids=pos[None], use_cache=False)
        hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])[0]
        rows, cols = want.nonzero(as_tuple=True)  # position t is predicted by the hidden state at t - 1
        logp, ent = token_logprobs(hidden[node[rows, cols - 1]], head, input_ids[rows, cols], temperature=temperature,
                                   with_entropy=with_entropy, chunk_size=chunk_size, use_kernel=impl == "auto")
        return _scatter(want, logp, ent, with_entropy)
    if p:
        hidden = _prefix_shared_hidden(decoder, input_ids, attention_mask, position_ids, p)
    else:
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    # Position t's token is predicted by the hidden state at t - 1; ``hidden`` covers positions p, p + 1, ...
    # and no position before p + 1 is wanted (shared_prefix_length guarantees it).
    pred = want[:, p + 1:]
    h = hidden[:, :-1][pred]
    targets = input_ids[:, p + 1:][pred]
    logp, ent = token_logprobs(h, head, targets, temperature=temperature, with_entropy=with_entropy,
                               chunk_size=chunk_size, use_kernel=impl == "auto")
    return _scatter(want, logp, ent, with_entropy)


#: Fewest shared tokens worth a second decoder call.
MIN_SHARED_PREFIX = 16


def shared_prefix_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, want: torch.Tensor,
                         model: Any = None) -> int:
    """How many leading positions :func:`sequence_logprobs` may compute once for all rows (0: none).

    The longest run of ids that every row starts with (real tokens, no padding), cut so that each row keeps
    at least one token after it and that no wanted position needs a hidden state inside it (position ``t``
    is predicted at ``t - 1``). 0 for a single row, a run shorter than :data:`MIN_SHARED_PREFIX`, and for
    models that cannot attend over a cache under autograd (gradient checkpointing turns the cache off) or
    whose layers crop it (sliding windows).
    """
    b, t = input_ids.shape
    if b < 2 or t < 2 or not _cache_safe(model):
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    lcp = int(same.long().cumprod(0).sum())
    wanted = want.any(0).nonzero()
    first_wanted = int(wanted[0]) if len(wanted) else t
    shortest = int(attention_mask.long().sum(-1).min())
    p = min(lcp, first_wanted - 1, shortest - 1)
    return p if p >= MIN_SHARED_PREFIX else 0


def _cache_safe(model: Any) -> bool:
    """Whether attention over shared positions gives what one row's own causal pass gives: not under gradient
    checkpointing (it turns the cache off) nor with sliding-window layers (they crop it)."""
    return not _checkpointing(model) and not _windowed(model)


def _checkpointing(model: Any) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # transformers 5.25 renamed it
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _windowed(model: Any) -> bool:
    # Sliding-window layers crop their cache: the one-pass and the cached forward could then differ.
    config = getattr(model, "config", None)
    layer_types = getattr(config, "layer_types", None) or ()
    return getattr(config, "sliding_window", None) is not None or any("sliding" in str(k) for k in layer_types)


def _prefix_shared_hidden(decoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          position_ids: torch.Tensor, p: int) -> torch.Tensor:
    """Final hidden states of positions ``p, p + 1, ...`` (``[B, T - p, H]``, 0 at padding): the decoder runs
    once on row 0's first ``p`` ids, then on every row's remainder over that one KV cache: packed into one
    sequence when :func:`_packed_remainders` allows (no padded position computed), else with the cache
    repeated for every row (autograd sums the rows' gradients back into the one prefix pass)."""
    cache_arg = "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"
    head = decoder(input_ids=input_ids[:1, :p], attention_mask=attention_mask[:1, :p],
                   position_ids=position_ids[:1, :p], use_cache=True)
    cache = getattr(head, "cache", None) if cache_arg == "cache" else None
    cache = cache if cache is not None else head.past_key_values
    packed = _packed_remainders(attention_mask, position_ids, p)
    if packed is not None:
        rows, cols, pos, mask = packed
        out = decoder(input_ids=input_ids[:, p:][rows, cols][None], attention_mask=mask, position_ids=pos[None],
                      use_cache=True, **{cache_arg: cache})
        h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        b, t = input_ids.shape
        return h.new_zeros((b, t - p, h.shape[-1])).index_put((rows, cols), h[0])
    cache.batch_repeat_interleave(input_ids.shape[0])
    out = decoder(input_ids=input_ids[:, p:], attention_mask=attention_mask, position_ids=position_ids[:, p:],
                  use_cache=True, **{cache_arg: cache})
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


#: Most query x key scores per head the packed path may build (its mask and attention are ``L x (p + L)``).
MAX_PACKED_SCORES = 1 << 23


def max_tree_tokens() -> int:
    """The most tokens a micro-batch's prefix tree may hold to be packed (:func:`_prefix_tree`: ``U x U`` scores
    within :data:`MAX_PACKED_SCORES`); the SFT trainer's micro-batch budget under ``optim.share_prefix``."""
    return math.isqrt(MAX_PACKED_SCORES)


def _packed_remainders(attention_mask: torch.Tensor, position_ids: torch.Tensor, p: int):
    """The rows' remainders after the shared ``p`` positions as ONE packed sequence, or None.

    Padding then costs nothing: ``L`` (the sum of the rows' real remainder
    lengths) tokens run through the decoder instead of ``B x (T - p)``, on
    the single prefix cache (not repeated per row). Returns ``(rows, cols,
    positions, mask)``: the packed tokens' row and column (in ``[:, p:]``),
    their position ids, and the ``[1, 1, L, p + L]`` boolean mask (every
    token sees the prefix and its own row's earlier tokens). None when a row
    is not right padded (real tokens first, then padding only) or the scores
    would exceed :data:`MAX_PACKED_SCORES`.
    """
    real = attention_mask.bool()
    lengths = real.long().sum(-1)
    cols_all = torch.arange(real.shape[1], device=real.device)
    if not bool((real == (cols_all[None] < lengths[:, None])).all()):
        return None
    rem = real[:, p:]
    total = int(rem.sum())
    if total == 0 or total * (p + total) > MAX_PACKED_SCORES:
        return None
    rows, cols = rem.nonzero(as_tuple=True)  # row-major: each row's tokens together, in order
    pos = position_ids[:, p:][rows, cols]
    same = rows[:, None] == rows[None, :]
    causal = cols[None, :] <= cols[:, None]
    mask = torch.cat([torch.ones((total, p), dtype=torch.bool, device=real.device), same & causal], dim=1)
    return rows, cols, pos, mask[None, None]


def _prefix_tree(input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, p: int):
    """The rows as their prefix tree, packed into ONE sequence, when that computes fewer tokens; else None.

    A token that several rows hold after the same ids (at the same positions) is one node of the tree, so
    the rows of a multi-turn trajectory (each turn's prompt repeats the transcript before it) or of one
    system prompt share everything they have in common, not only what ALL rows start with (the ``p`` of
    :func:`shared_prefix_length`); the tree is :func:`~turngym.trainers.tokens.prefix_tree` of the rows'
    (id, position) pairs. Every node attends to its ancestors and itself,
    which is exactly what each of its rows' tokens sees in that row's own causal pass; the node's position
    id is the rows'. Returns ``(ids [U], positions [U], node [B, T], mask [1, 1, U, U])``, ``node[b, t]``
    being the packed index of row b's position t (0 at padding). None when a row is not right padded, the
    tree saves under a tenth of the tokens the other paths run (``p`` shared once and the rest packed, or
    every padded position when ``p`` is 0), or its score matrix would exceed :data:`MAX_PACKED_SCORES`.
    """
    real = attention_mask.bool()
    b, t = input_ids.shape
    lengths = real.long().sum(-1)
    if b < 2 or not bool((real == (torch.arange(t, device=real.device)[None] < lengths[:, None])).all()):
        return None
    from turngym.trainers.tokens import prefix_tree

    ids_rows, pos_rows = input_ids.tolist(), position_ids.tolist()
    nodes, items = prefix_tree([list(zip(ids_rows[r][:n], pos_rows[r][:n])) for r, n in enumerate(lengths.tolist())])
    node = torch.zeros((b, t), dtype=torch.long)
    for r, path in enumerate(nodes):
        node[r, :len(path)] = torch.tensor(path, dtype=torch.long)
    packed_ids, packed_pos = [i for i, _ in items], [q for _, q in items]
    u = len(packed_ids)
    total = int(lengths.sum())
    other = p + total - b * p if p else b * t
    if u * u > MAX_PACKED_SCORES or u > 0.9 * other:
        return None
    mask = torch.zeros((u, u), dtype=torch.bool)
    for r, n in enumerate(lengths.tolist()):
        i, j = torch.tril_indices(n, n)
        mask[node[r, i], node[r, j]] = True
    device = input_ids.device
    return (torch.tensor(packed_ids, dtype=torch.long, device=device),
            torch.tensor(packed_pos, dtype=torch.long, device=device), node.to(device), mask.to(device)[None, None])


def _scatter(want: torch.Tensor, logp: torch.Tensor, ent: torch.Tensor | None, with_entropy: bool):
    full = torch.zeros(want.shape, dtype=torch.float32, device=want.device)
    full = full.masked_scatter(want, logp.float())
    if not with_entropy:
        return full
    ent_full = torch.zeros(want.shape, dtype=torch.float32, device=want.device).masked_scatter(want, ent.float())
    return full, ent_full


def token_logprobs(hidden: torch.Tensor, head: Any, targets: torch.Tensor, *, temperature: float = 1.0,
                   with_entropy: bool = False, chunk_size: int | None = None, use_kernel: bool = True):
    """Log-prob of ``targets[i]`` under ``softmax(head(hidden[i]) / temperature)`` (and its entropy), ``[N]`` each.

    The one place the trainer's log-prob math happens: the kernels package's
    fused op when importable and ``head`` is a plain ``nn.Linear``, else the
    chunked torch path. Returns ``(logprobs, entropy_or_None)``, float32.

    The fused op is called as ``fused_logprobs(hidden, weight, targets,
    bias=..., temperature=...)`` (plus an entropy flag if its signature has
    one); it returns ``(logprobs, entropy)`` (``turngym.kernels``), or the
    log-prob tensor alone, or an object with ``logprobs``/``entropy``
    attributes. If it cannot give what is asked (a bias or temperature it
    does not take, no entropy), the chunked path runs instead.
    """
    if hidden.shape[0] == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        # keep the graph connected so backward works on an all-masked batch
        zero = (hidden.sum() * 0).float()
        return empty + zero, (empty + zero if with_entropy else None)
    if use_kernel and type(head) is torch.nn.Linear:
        result = _kernel_logprobs(hidden, head, targets, temperature, with_entropy)
        if result is not None:
            return result
    return chunked_token_logprobs(hidden, head, targets, temperature=temperature, with_entropy=with_entropy,
                                  chunk_size=chunk_size)


def _kernel_logprobs(hidden, head, targets, temperature, with_entropy):
    try:
        from turngym.kernels import fused_logprobs
    except ImportError:
        return None
    try:
        params = dict(inspect.signature(fused_logprobs).parameters)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):  # a wrapper: assume it takes the usual keywords
        params.update({"bias": None, "temperature": None})
    kwargs: dict[str, Any] = {}
    if head.bias is not None:
        if "bias" not in params:
            return None
        kwargs["bias"] = head.bias
    if temperature != 1.0:
        if "temperature" not in params:
            return None
        kwargs["temperature"] = temperature
    elif "temperature" in params:
        kwargs["temperature"] = 1.0
    flag = next((n for n in ("with_entropy", "return_entropy", "compute_entropy") if n in params), None)
    if flag is not None:
        kwargs[flag] = with_entropy
    result = fused_logprobs(hidden, head.weight, targets, **kwargs)
    if isinstance(result, torch.Tensor):
        logp, ent = result, None
    elif isinstance(result, (tuple, list)):
        logp, ent = result[0], (result[1] if len(result) > 1 else None)
    else:
        logp, ent = result.logprobs, getattr(result, "entropy", None)
    if with_entropy and ent is None:
        return None
    return logp.float(), (ent.float() if with_entropy else None)


def _chunk_math(h: torch.Tensor, head: Any, t: torch.Tensor, temperature: float, with_entropy: bool):
    logp, entropy, _ = reference_logprobs_from_logits(head(h).float(), t, temperature, with_entropy=with_entropy,
                                                      with_lse=False)
    return (logp, entropy) if with_entropy else logp


def chunked_token_logprobs(hidden: torch.Tensor, head: Any, targets: torch.Tensor, *, temperature: float = 1.0,
                           with_entropy: bool = False, chunk_size: int | None = None):
    """The plain-torch path of :func:`token_logprobs`: ``chunk_size`` tokens at a time, checkpointed under autograd.

    Returns ``(logprobs, entropy_or_None)`` ``[N]`` float32.
    """
    from torch.utils.checkpoint import checkpoint

    vocab = _vocab_size(head)
    if chunk_size is None:
        chunk_size = max(1, CHUNK_ELEMENTS // max(vocab, 1))
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    logps, ents = [], []
    for h, t in zip(hidden.split(chunk_size), targets.split(chunk_size)):
        if grad:
            out = checkpoint(_chunk_math, h, head, t, temperature, with_entropy, use_reentrant=False)
        else:
            out = _chunk_math(h, head, t, temperature, with_entropy)
        if with_entropy:
            logps.append(out[0])
            ents.append(out[1])
        else:
            logps.append(out)
    return torch.cat(logps), (torch.cat(ents) if with_entropy else None)


def _vocab_size(head: Any) -> int:
    weight = getattr(head, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(getattr(head, "out_features", 1 << 16))


def reference_sequence_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                                temperature: float = 1.0, with_entropy: bool = False, *,
                                loss_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None):
    """The plain reference: the model's full ``[B, T, V]`` logits, log-softmax, gather. Same outputs as
    :func:`sequence_logprobs`."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = _position_ids(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits.float()
    picked, picked_entropy, _ = reference_logprobs_from_logits(logits[:, :-1], input_ids[:, 1:], temperature,
                                                               with_entropy=with_entropy, with_lse=False)
    logp = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    logp[:, 1:] = picked
    want = _targets_mask(input_ids, attention_mask, loss_mask)
    logp = logp * want
    if not with_entropy:
        return logp
    entropy = torch.zeros_like(logp)
    entropy[:, 1:] = picked_entropy
    return logp, entropy * want


def compare_logprobs(engine_logprobs: Any, trainer_logprobs: Any, mask: Any) -> dict[str, float]:
    """How far the engine's log-probs are from the trainer's recomputation, on the masked tokens.

    All three are ``[B, T]`` aligned tensors (or nested lists). Returns
    ``max_abs_diff``, ``mean_abs_diff``, ``num_tokens`` and ``max_ratio``
    (``max |exp(trainer - engine) - 1|``, the largest importance ratio error
    it would put into PPO). fp32 engine and trainer on the same device agree
    to about 1e-5; bf16, or a vLLM engine against a transformers trainer,
    differ by 1e-2 and more, which is when to recompute old log-probs.
    """
    engine = torch.as_tensor(engine_logprobs, dtype=torch.float32)
    trainer = torch.as_tensor(trainer_logprobs, dtype=torch.float32).detach().to(engine.device)
    m = torch.as_tensor(mask).to(engine.device) > 0
    if engine.shape != trainer.shape or engine.shape != m.shape:
        raise ValueError(f"compare_logprobs needs equal shapes, got engine {tuple(engine.shape)}, trainer "
                         f"{tuple(trainer.shape)}, mask {tuple(m.shape)}")
    n = int(m.sum())
    if n == 0:
        return {"max_abs_diff": 0.0, "mean_abs_diff": 0.0, "max_ratio": 0.0, "num_tokens": 0}
    diff = (trainer - engine)[m]
    return {"max_abs_diff": float(diff.abs().max()), "mean_abs_diff": float(diff.abs().mean()),
            "max_ratio": float((diff.exp() - 1).abs().max()), "num_tokens": n}


def final_hidden_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                        position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The model's last-layer hidden states ``[B, T, H]`` (after the final norm, what the head reads).

    Features for learned critics and progress estimators (SPA); gradients flow if enabled.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if position_ids is None:
        position_ids = _position_ids(attention_mask)
    decoder = _decoder(model)
    if decoder is not None:
        out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                output_hidden_states=True)
    return out.hidden_states[-1]
