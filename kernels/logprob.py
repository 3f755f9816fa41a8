"""Per-token log-probs and entropy of an LM head without materializing [tokens x vocab] logits.

An RL trainer needs, for every response token t, the log-prob of the sampled
token and the entropy of the policy's next-token distribution. The plain way
builds the logits ``hidden @ weight.T`` ([T, V]: 1.2 GB in fp32 for T=2048,
V=151,936) and then several more tensors of that size in the forward and the
backward pass. :func:`fused_logprobs` computes the same numbers tile by tile
([T, V] cut into [chunk_tokens, chunk_vocab] tiles, never all alive at once),
so memory grows with the hidden size (the weight gradient, [V, H], is the
floor), not with T x V.

Math, for one token with hidden state h, target y, temperature tau::

    z      = (W h + b) / tau                      logits of the tempered policy
    lse    = log sum_j exp(z_j)
    logp_y = z_y - lse
    H      = lse - sum_j p_j z_j = -sum_j p_j log p_j,   p = softmax(z)

The forward pass keeps, per token, an online log-sum-exp over the vocab tiles:
a running max m, s = sum_j exp(z_j - m) and a = sum_j exp(z_j - m) (z_j - m);
a new tile with max m' rescales them by exp(m - m'), and at the end
``lse = m + log s`` and ``H = log s - a / s``. The backward pass recomputes
each logits tile (nothing of size T x V is saved) and forms the gradient of
the logits from the upstream gradients g_lp, g_H, g_lse::

    dL/dz_j = g_lp (1[j = y] - p_j) - g_H p_j (log p_j + H) + g_lse p_j

then ``dL/dlogits = dL/dz / tau``, ``grad_hidden = dlogits @ W``,
``grad_weight = dlogits.T @ hidden`` (written one vocab slice at a time) and
``grad_bias = dlogits.sum(0)``. So one forward costs one matmul of the plain
way and a forward+backward costs four instead of three (the tile is
recomputed); the weight gradient matmul is skipped when the weight is frozen
(LoRA), as are the others when their input needs no gradient.
:func:`fused_token_loss` avoids the recomputation when the loss is a sum of
per-token terms known before the forward pass (the policy loss is): it forms
each chunk's gradient during the forward pass, three matmuls in all.

Three implementations behind ``impl``:

* ``"reference"`` -- the plain way (logits -> log_softmax -> gather, entropy
  from the full softmax), autograd does the backward. Ground truth for tests;
  its math on logits already computed (:func:`reference_logprobs_from_logits`)
  is the one log-prob reference the rest of turngym calls.
* ``"chunked"`` -- the tiles in plain torch ops; runs on every device; the CPU
  default.
* ``"triton"`` -- the same tiles; the matmuls stay in torch (cuBLAS), the
  per-tile softmax statistics and logits gradient run in two Triton kernels
  (``kernels/_logprob_triton.py``) that read and write each tile once. The
  CUDA default when triton is installed. On CPU it runs only under
  ``TRITON_INTERPRET=1`` (set before that module is first imported: the
  first call with ``impl="triton"``), which is slow and meant for tests on
  tiny shapes.

Precision: the logits tile is computed in the inputs' dtype, exactly as the
reference's ``F.linear`` would, then the softmax math runs in fp32 (fp64 for
fp64 inputs). Outputs are fp32 (fp64 for fp64 inputs). Gradients have the
inputs' dtypes.

This module depends on nothing of ours except ``turngym.errors``.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

IMPLS = ("auto", "reference", "chunked", "triton")
IGNORE_INDEX = -100

# Elements per logits tile. Bigger tiles make bigger, faster matmuls; on CPU
# 2**22 fp32 elements (16 MB, two or three alive at once) already runs the
# GEMMs at full speed and keeps the tile buffers small next to the weight
# gradient.
_CPU_TILE_ELEMS = 2**22
_GPU_TILE_ELEMS = 2**25


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_lse: bool = False,
    impl: str = "auto",
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    ignore_index: int = IGNORE_INDEX,
):
    """Log-prob of each target token and entropy of each next-token distribution.

    Args:
        hidden: final hidden states, ``[..., H]`` (e.g. ``[T, H]`` or ``[B, L, H]``).
        weight: the LM head's weight, ``[V, H]`` (``model.lm_head.weight``).
        targets: token ids, ``hidden.shape[:-1]``. The id of a token whose
            log-prob is not wanted may be ``ignore_index`` (-100, the Hugging
            Face label convention): its log-prob is 0 and carries no gradient;
            its entropy is still computed.
        bias: the LM head's bias, ``[V]``, if it has one.
        temperature: the sampling temperature tau; the log-probs and the
            entropy are those of ``softmax(logits / tau)``, the distribution the
            engine sampled from. Must be > 0.
        return_lse: also return ``logsumexp(logits / tau)`` per token.
        impl: ``"auto"`` (triton for CUDA tensors when triton is installed,
            else chunked), ``"reference"``, ``"chunked"`` or ``"triton"``.
        chunk_tokens, chunk_vocab: tile size; by default all tokens (up to
            4096 on CPU, 16384 on CUDA) times as many vocab entries as keep the
            tile near 4M elements on CPU (32M on CUDA).
        ignore_index: see ``targets``.

    Returns:
        ``(logprobs, entropy)`` or ``(logprobs, entropy, lse)``, each of shape
        ``targets.shape``, fp32 (fp64 for fp64 inputs). All three are
        differentiable with respect to ``hidden``, ``weight`` and ``bias``.
    """
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    _check_inputs(hidden, weight, targets, bias, temperature, chunk_tokens, chunk_vocab)
    lead = targets.shape
    h2 = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1).long()
    if impl == "auto":
        impl = "triton" if hidden.is_cuda and _triton_available() else "chunked"
    temperature = float(temperature)
    if impl == "reference":
        lp, ent, lse = reference_logprobs(h2, weight, y, bias, temperature, ignore_index)
    else:
        if impl == "triton":
            _check_triton_usable(hidden)
        ct, cv = _chunk_sizes(h2.shape[0], weight.shape[0], hidden.is_cuda, chunk_tokens, chunk_vocab)
        lp, ent, lse = _FusedLogprobs.apply(h2, weight, bias, y, temperature, impl, ct, cv, ignore_index)
    lp, ent, lse = lp.reshape(lead), ent.reshape(lead), lse.reshape(lead)
    return (lp, ent, lse) if return_lse else (lp, ent)


def reference_logprobs(hidden, weight, targets, bias=None, temperature=1.0, ignore_index=IGNORE_INDEX):
    """The plain way, for ``[T, H]`` hidden states: full logits, log_softmax, gather; autograd backward."""
    return reference_logprobs_from_logits(F.linear(hidden, weight, bias), targets, temperature, ignore_index)


def reference_logprobs_from_logits(logits, targets, temperature=1.0, ignore_index=IGNORE_INDEX, *,
                                   with_entropy=True, with_lse=True):
    """The reference math on logits already computed, ``[..., V]``: the one log-prob reference of turngym.

    ``log_softmax(logits / temperature)`` gathered at ``targets`` (0 where a
    target is ``ignore_index``), the entropy of each distribution and its
    log-sum-exp, in fp32 (fp64 for fp64 logits); autograd backward. For
    logits that are not ``head(hidden)`` (a model's own forward pass, logit
    soft-capping): the trainer's reference and chunked paths
    (``turngym.trainers.logprobs``) and the tests' teacher-forced log-probs
    (``turngym.testing``) call it. Returns ``(logprobs, entropy, lse)``, each
    ``targets.shape``; ``entropy`` / ``lse`` are None when not asked for.
    """
    logits = logits.to(_compute_dtype(logits.dtype))
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    valid = targets != ignore_index
    picked = logp_all.gather(-1, torch.where(valid, targets, 0).unsqueeze(-1)).squeeze(-1)
    logprobs = torch.where(valid, picked, torch.zeros_like(picked))
    entropy = -(logp_all.exp() * logp_all).sum(-1) if with_entropy else None
    lse = torch.logsumexp(logits, dim=-1) if with_lse else None
    return logprobs, entropy, lse


# --------------------------------------------------------------------------- checks and defaults


def _check_inputs(hidden, weight, targets, bias, temperature, chunk_tokens, chunk_vocab):
    if hidden.dim() < 1 or weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"hidden [..., H] and weight [V, H] must share H; got hidden {tuple(hidden.shape)}, "
            f"weight {tuple(weight.shape)} (pass lm_head.weight, not its transpose)"
        )
    if tuple(targets.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"targets must have hidden's leading shape {tuple(hidden.shape[:-1])}; got {tuple(targets.shape)}"
        )
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"targets must hold integer token ids; got dtype {targets.dtype}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must have the same dtype")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise ValueError(
            f"bias must be [V] = [{weight.shape[0]}] of dtype {weight.dtype}; got {tuple(bias.shape)} {bias.dtype}"
        )
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    for name, value in (("chunk_tokens", chunk_tokens), ("chunk_vocab", chunk_vocab)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None; got {value!r}")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_sizes(T, V, on_gpu, chunk_tokens, chunk_vocab):
    elems = _GPU_TILE_ELEMS if on_gpu else _CPU_TILE_ELEMS
    ct = chunk_tokens or min(max(T, 1), 16384 if on_gpu else 4096)
    cv = chunk_vocab or min(V, max(256, (elems // ct) // 128 * 128))
    return ct, cv


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check_triton_usable(hidden):
    from turngym.errors import require

    require("triton", "triton", "impl='triton' of turngym.kernels.fused_logprobs")
    if hidden.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"impl='triton' takes fp32, bf16 or fp16 inputs; got {hidden.dtype} (use impl='chunked')")
    if not hidden.is_cuda and os.environ.get("TRITON_INTERPRET", "0") not in ("1", "true", "True"):
        raise ValueError(
            "impl='triton' needs CUDA tensors; on CPU it runs only under the Triton interpreter: set "
            "TRITON_INTERPRET=1 before the first call (slow; for tests), or use impl='chunked'"
        )


# --------------------------------------------------------------------------- per-tile math: torch


def _tile_logits(h_c, w_c, b_c):
    return F.linear(h_c, w_c, b_c)


def _stats_torch(tile, temperature, targets_c, v0, m, s, a, zy):
    """Fold one logits tile into the running (max, sum, sum*shift, target logit) of its rows, in place."""
    z = tile.to(m.dtype)  # a fresh fp32 copy for bf16 tiles, the tile itself for fp32: both ours to change
    if temperature != 1.0:
        z.div_(temperature)
    n = z.shape[1]
    local = targets_c - v0
    in_tile = (local >= 0) & (local < n)
    picked = z.gather(1, local.clamp(0, n - 1).unsqueeze(1)).squeeze(1)
    zy.copy_(torch.where(in_tile, picked, zy))
    m_new = torch.maximum(m, z.amax(1))
    z.sub_(m_new.unsqueeze(1))
    e = torch.exp(z)
    s_tile = e.sum(1)
    a_tile = torch.linalg.vecdot(e, z)
    alpha = torch.exp(m - m_new)  # 0 on the first tile, where m = -inf
    shift = torch.where(s > 0, m - m_new, torch.zeros_like(m))  # avoids -inf * 0 on the first tile
    a.copy_(alpha * (a + shift * s) + a_tile)
    s.copy_(alpha * s + s_tile)
    m.copy_(m_new)


def _grad_torch(tile, temperature, targets_c, v0, lse, beta, g_ent, g_lp):
    """Gradient of the loss w.r.t. one logits tile (already divided by tau; see the module docstring).

    ``beta = g_lse - g_lp - g_ent * H``, and ``beta``, ``g_ent``, ``g_lp`` all
    come pre-divided by tau.
    """
    z = tile.to(lse.dtype)
    if temperature != 1.0:
        z.div_(temperature)
    z.sub_(lse.unsqueeze(1))  # log p
    p = torch.exp(z)
    if g_ent is None:
        grad = p.mul_(beta.unsqueeze(1))
    else:
        grad = z.mul_(g_ent.neg().unsqueeze(1)).add_(beta.unsqueeze(1)).mul_(p)
    if g_lp is not None:
        n = grad.shape[1]
        local = targets_c - v0
        in_tile = (local >= 0) & (local < n)
        src = torch.where(in_tile, g_lp, torch.zeros_like(g_lp))
        grad.scatter_add_(1, local.clamp(0, n - 1).unsqueeze(1), src.unsqueeze(1))
    return grad


# --------------------------------------------------------------------------- per-tile math: triton


def _stats_triton(tile, temperature, targets_c, v0, m, s, a, zy):
    from turngym.kernels import _logprob_triton

    _logprob_triton.tile_stats(tile, temperature, targets_c, v0, m, s, a, zy)


def _grad_triton(tile, temperature, targets_c, v0, lse, beta, g_ent, g_lp):
    from turngym.kernels import _logprob_triton

    return _logprob_triton.tile_grad(tile, temperature, targets_c, v0, lse, beta, g_ent, g_lp)


_TILE_OPS = {"chunked": (_stats_torch, _grad_torch), "triton": (_stats_triton, _grad_triton)}


# --------------------------------------------------------------------------- the tiled passes


def _tiled_forward(hidden, weight, bias, targets, temperature, impl, ct, cv, ignore_index):
    stats_op = _TILE_OPS[impl][0]
    T, V = hidden.shape[0], weight.shape[0]
    cdt = _compute_dtype(hidden.dtype)
    m = torch.full((T,), -math.inf, dtype=cdt, device=hidden.device)
    s = torch.zeros(T, dtype=cdt, device=hidden.device)
    a = torch.zeros(T, dtype=cdt, device=hidden.device)
    zy = torch.zeros(T, dtype=cdt, device=hidden.device)
    # Vocab slices outside, tokens inside: the weight (the big operand) is read once.
    for v0 in range(0, V, cv):
        w_c = weight[v0 : v0 + cv]
        b_c = None if bias is None else bias[v0 : v0 + cv]
        for t0 in range(0, T, ct):
            rows = slice(t0, t0 + ct)
            tile = _tile_logits(hidden[rows], w_c, b_c)
            stats_op(tile, temperature, targets[rows], v0, m[rows], s[rows], a[rows], zy[rows])
            del tile
    log_s = torch.log(s)
    lse = m + log_s
    entropy = log_s - a / s
    logprobs = torch.where(targets != ignore_index, zy - lse, torch.zeros_like(lse))
    return logprobs, entropy, lse


def _tiled_backward(ctx_needs, hidden, weight, bias, targets, lse, entropy, g_lp, g_ent, g_lse, temperature, impl,
                    ct, cv, ignore_index):
    grad_op = _TILE_OPS[impl][1]
    need_h, need_w, need_b = ctx_needs
    T, H = hidden.shape
    V = weight.shape[0]
    dt, cdt = hidden.dtype, lse.dtype
    inv_tau = 1.0 / temperature
    zeros = torch.zeros_like(lse)
    if g_lp is not None:
        g_lp = torch.where(targets != ignore_index, g_lp.to(cdt), zeros)
    beta = (zeros if g_lse is None else g_lse.to(cdt)) - (zeros if g_lp is None else g_lp)
    if g_ent is not None:
        g_ent = g_ent.to(cdt)
        beta = beta - g_ent * entropy
        g_ent = g_ent * inv_tau
    beta = beta * inv_tau
    if g_lp is not None:
        g_lp = g_lp * inv_tau

    grad_h = torch.zeros(T, H, dtype=cdt, device=hidden.device) if need_h else None
    grad_w = torch.empty_like(weight) if need_w else None
    grad_b = torch.zeros(V, dtype=cdt, device=hidden.device) if need_b else None
    one_token_chunk = ct >= T
    for v0 in range(0, V, cv):
        w_c = weight[v0 : v0 + cv]
        b_c = None if bias is None else bias[v0 : v0 + cv]
        acc_w = None  # fp32 sum over token chunks of this vocab slice's weight gradient (low-precision dtypes)
        for i, t0 in enumerate(range(0, T, ct)):
            rows = slice(t0, t0 + ct)
            h_c = hidden[rows]
            tile = _tile_logits(h_c, w_c, b_c)
            grad = grad_op(
                tile, temperature, targets[rows], v0, lse[rows], beta[rows],
                None if g_ent is None else g_ent[rows], None if g_lp is None else g_lp[rows],
            )
            del tile
            if need_b:
                grad_b[v0 : v0 + cv] += grad.sum(0, dtype=cdt)
            grad = grad.to(dt)
            if need_h:
                if dt == cdt:
                    grad_h[rows].addmm_(grad, w_c)
                else:
                    grad_h[rows] += (grad @ w_c).to(cdt)
            if need_w:
                w_slice = grad_w[v0 : v0 + cv]
                if one_token_chunk or (dt == cdt and i == 0):
                    torch.mm(grad.t(), h_c, out=w_slice)
                elif dt == cdt:
                    w_slice.addmm_(grad.t(), h_c)
                else:
                    part = (grad.t() @ h_c).to(cdt)
                    acc_w = part if acc_w is None else acc_w.add_(part)
            del grad
        if acc_w is not None:
            grad_w[v0 : v0 + cv].copy_(acc_w)
    return (
        None if grad_h is None else grad_h.to(dt),
        grad_w,
        None if grad_b is None else grad_b.to(bias.dtype),
    )


class _FusedLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, impl, ct, cv, ignore_index):
        logprobs, entropy, lse = _tiled_forward(hidden, weight, bias, targets, temperature, impl, ct, cv, ignore_index)
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.args = (temperature, impl, ct, cv, ignore_index)
        ctx.set_materialize_grads(False)
        return logprobs, entropy, lse

    @staticmethod
    def backward(ctx, g_lp, g_ent, g_lse):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if not any(needs) or (g_lp is None and g_ent is None and g_lse is None):
            return (None,) * 9
        grad_h, grad_w, grad_b = _tiled_backward(
            needs, hidden, weight, bias, targets, lse, entropy, g_lp, g_ent, g_lse, *ctx.args
        )
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


# --------------------------------------------------------------------------- a scalar loss, gradient in the forward


def fused_token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    token_loss,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    impl: str = "auto",
    chunk_tokens: int | None = None,
    ignore_index: int = IGNORE_INDEX,
):
    """A scalar loss that is a sum of per-token terms of (log-prob, entropy), its gradient computed in the forward.

    :func:`fused_logprobs` must recompute every logits tile in its backward
    because it does not know, in the forward, what the caller will do with
    its outputs: four matmuls of [T, H] x [H, V] size for a forward+backward,
    against three for the plain way. When the loss is known up front and is a
    sum over tokens ``loss = sum_t f_t(logprob_t, entropy_t)`` (PPO, GRPO, SFT,
    any weighted token mean: the weights are fixed before the forward), the
    gradient of each row of logits can be formed as soon as that row's
    log-sum-exp is known. This op walks the tokens in chunks of
    ``chunk_tokens`` rows with the whole vocabulary ([chunk_tokens, V] logits,
    the only large buffer besides the weight gradient), computes the chunk's
    log-probs and entropies, asks ``token_loss`` for the chunk's share of the
    loss, differentiates that share with respect to the chunk's log-probs and
    entropies (autograd on [chunk] vectors), and turns it into the gradients
    of hidden, weight and bias right away: three matmuls in all, nothing
    recomputed (Liger-Kernel's fused linear cross-entropy does the same for
    cross-entropy). The backward pass only scales the stored gradients.

    Args:
        hidden, weight, targets, bias, temperature, ignore_index: as in
            :func:`fused_logprobs` (``hidden`` flattened to ``[T, H]``).
        token_loss: ``token_loss(logprobs, entropy, rows) -> scalar tensor``:
            the loss share of the tokens ``rows`` (a ``slice`` into the
            flattened tokens; ``logprobs`` and ``entropy`` are theirs, fp32).
            Called once per chunk, in order; the chunk shares are summed. It
            must not depend on other chunks' values (global constants such as
            a token count are fine).
        impl: ``"auto"``, ``"chunked"`` or ``"triton"`` (the per-row softmax
            statistics and the logits gradient in the Triton kernels).
        chunk_tokens: rows per chunk; default: as many as keep
            ``chunk_tokens * V`` near 16M elements on CPU (32M on CUDA).

    Returns:
        ``(loss, logprobs, entropy)``: the scalar loss (differentiable w.r.t.
        ``hidden``, ``weight``, ``bias``) and the detached per-token log-probs
        and entropies (``targets.shape``), e.g. for metrics.

    The weight gradient is accumulated over the chunks in the weight's dtype
    (bf16 weights: one rounding per chunk).
    """
    if impl not in ("auto", "chunked", "triton"):
        raise ValueError(f"unknown impl {impl!r} for fused_token_loss; choose one of auto, chunked, triton")
    _check_inputs(hidden, weight, targets, bias, temperature, chunk_tokens, None)
    if not callable(token_loss):
        raise TypeError(f"token_loss must be a callable (logprobs, entropy, rows) -> scalar; got {token_loss!r}")
    lead = targets.shape
    h2 = hidden.reshape(-1, hidden.shape[-1])
    y = targets.reshape(-1).long()
    if impl == "auto":
        impl = "triton" if hidden.is_cuda and _triton_available() else "chunked"
    if impl == "triton":
        _check_triton_usable(hidden)
    T, V = h2.shape[0], weight.shape[0]
    if chunk_tokens is None:
        budget = _GPU_TILE_ELEMS if hidden.is_cuda else 4 * _CPU_TILE_ELEMS
        chunk_tokens = max(1, min(T, budget // V))
    grad_on = torch.is_grad_enabled()
    needs = tuple(grad_on and t is not None and t.requires_grad for t in (hidden, weight, bias))
    loss, lp, ent = _FusedTokenLoss.apply(
        h2, weight, bias, y, float(temperature), impl, chunk_tokens, token_loss, ignore_index, needs
    )
    return loss, lp.reshape(lead), ent.reshape(lead)


def _full_rows_torch(tile, temperature, targets_c, ignore_index):
    """Log-probs, entropy and log-sum-exp of whole-vocabulary rows; returns them and (log p, p) tiles."""
    z = tile.to(_compute_dtype(tile.dtype))
    if temperature != 1.0:
        z.div_(temperature)
    lse = torch.logsumexp(z, dim=1)
    z.sub_(lse.unsqueeze(1))  # log p
    p = torch.exp(z)
    entropy = -torch.linalg.vecdot(p, z)
    valid = targets_c != ignore_index
    picked = z.gather(1, torch.where(valid, targets_c, 0).unsqueeze(1)).squeeze(1)
    return torch.where(valid, picked, torch.zeros_like(picked)), entropy, lse, z, p


def _full_rows_triton(tile, temperature, targets_c, ignore_index):
    from turngym.kernels import _logprob_triton

    rows = tile.shape[0]
    m = torch.full((rows,), -math.inf, dtype=torch.float32, device=tile.device)
    s, a, zy = (torch.zeros(rows, dtype=torch.float32, device=tile.device) for _ in range(3))
    _logprob_triton.tile_stats(tile, temperature, targets_c, 0, m, s, a, zy)
    log_s = torch.log(s)
    lse = m + log_s
    logprobs = torch.where(targets_c != ignore_index, zy - lse, torch.zeros_like(lse))
    return logprobs, log_s - a / s, lse, None, None


class _FusedTokenLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, impl, ct, token_loss, ignore_index, needs):
        need_h, need_w, need_b = needs
        T, V = hidden.shape[0], weight.shape[0]
        dt, cdt = hidden.dtype, _compute_dtype(hidden.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.empty_like(weight) if need_w else None
        grad_b = torch.zeros(V, dtype=cdt, device=hidden.device) if need_b else None
        lp_out = torch.empty(T, dtype=cdt, device=hidden.device)
        ent_out = torch.empty(T, dtype=cdt, device=hidden.device)
        total = torch.zeros((), dtype=cdt, device=hidden.device)
        inv_tau = 1.0 / temperature
        for i, t0 in enumerate(range(0, T, ct)):
            rows = slice(t0, t0 + ct)
            h_c, y_c = hidden[rows], targets[rows]
            tile = _tile_logits(h_c, weight, bias)
            if impl == "triton":
                lp, ent, lse, logp, p = _full_rows_triton(tile, temperature, y_c, ignore_index)
            else:
                lp, ent, lse, logp, p = _full_rows_torch(tile, temperature, y_c, ignore_index)
            lp_out[rows], ent_out[rows] = lp, ent
            with torch.enable_grad():
                lp_v = lp.detach().requires_grad_()
                ent_v = ent.detach().requires_grad_()
                share = token_loss(lp_v, ent_v, rows)
                if not (isinstance(share, torch.Tensor) and share.dim() == 0):
                    raise ValueError(f"token_loss must return a scalar tensor; got {share!r}")
                total += share.detach().to(cdt)
                g_lp, g_ent = (None, None)
                if any(needs) and share.requires_grad:
                    g_lp, g_ent = torch.autograd.grad(share, (lp_v, ent_v), allow_unused=True)
            if not any(needs) or (g_lp is None and g_ent is None):
                if need_h:
                    grad_h[rows].zero_()
                if need_w and i == 0:
                    grad_w.zero_()
                continue
            zeros = torch.zeros_like(lse)
            if g_lp is not None:
                g_lp = torch.where(y_c != ignore_index, g_lp.to(cdt), zeros)
            beta = zeros - (zeros if g_lp is None else g_lp)
            if g_ent is not None:
                g_ent = g_ent.to(cdt)
                beta = (beta - g_ent * ent) * inv_tau
                g_ent = g_ent * inv_tau
            else:
                beta = beta * inv_tau
            if g_lp is not None:
                g_lp = g_lp * inv_tau
            if impl == "triton":
                from turngym.kernels import _logprob_triton

                grad = _logprob_triton.tile_grad(tile, temperature, y_c, 0, lse, beta, g_ent, g_lp)
            else:
                if g_ent is None:
                    grad = p.mul_(beta.unsqueeze(1))
                else:
                    grad = logp.mul_(g_ent.neg().unsqueeze(1)).add_(beta.unsqueeze(1)).mul_(p)
                if g_lp is not None:
                    valid = y_c != ignore_index
                    grad.scatter_add_(1, torch.where(valid, y_c, 0).unsqueeze(1), g_lp.unsqueeze(1))
            del tile, logp, p
            if need_b:
                grad_b += grad.sum(0, dtype=cdt)
            grad = grad.to(dt)
            if need_h:
                torch.mm(grad, weight, out=grad_h[rows])
            if need_w:
                if i == 0:
                    torch.mm(grad.t(), h_c, out=grad_w)
                else:
                    grad_w.addmm_(grad.t(), h_c)
            del grad
        ctx.save_for_backward(grad_h, grad_w, None if grad_b is None else grad_b.to(bias.dtype))
        ctx.mark_non_differentiable(lp_out, ent_out)
        return total, lp_out, ent_out

    @staticmethod
    def backward(ctx, grad_loss, _g_lp, _g_ent):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_loss is not None and not bool(grad_loss == 1):
            grad_h, grad_w, grad_b = (None if g is None else g * grad_loss.to(g.dtype) for g in (grad_h, grad_w, grad_b))
        return grad_h, grad_w, grad_b, None, None, None, None, None, None, None
