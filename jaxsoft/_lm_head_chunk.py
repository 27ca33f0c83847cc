"""One vocabulary chunk of a linear head: its logits forward, its cotangent backward.

The fused language-model head functions (:mod:`jaxsoft.lm_head`) walk the vocabulary in chunks of
columns (:mod:`jaxsoft._chunks`); every step forms ``softcap(h @ W_c + b_c)`` for one chunk, with the
columns that do not take part (seen before in the clamped last chunk, masked by ``where``) set to
``-inf``, and the backward pass turns a chunk's cotangent in those logits into ``dh``, ``dW`` and
``dbias`` contributions. The head weight comes in either layout, ``[d, V]`` (``"dV"``) or ``[V, d]``
(``"Vd"``: a tied embedding, passed as is); the chunk is sliced along the vocabulary axis of the
given layout and the matmuls contract the right axis, so no transposed copy of ``W`` is ever made.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsoft import _checks
from jaxsoft import _chunks as ch
from jaxsoft import _rowstats as rs
from jaxsoft._softcap import softcap

NEG_INF = rs.NEG_INF


class Cfg(NamedTuple):
    """Static options of a fused head."""

    chunk_size: int
    vd: bool  # W is [V, d]
    cap: float | None


def vocab(W, cfg: Cfg) -> int:
    """Number of (local) vocabulary entries of ``W``."""
    return W.shape[0] if cfg.vd else W.shape[1]


def stats_dtype(h, W):
    return _checks.compute_dtype(jnp.result_type(h.dtype, W.dtype))


def _dot(a, b, contract, dtype):
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=dtype)


class Chunk(NamedTuple):
    x: jax.Array  # (N, C) capped logits, -inf where the column takes no part
    fresh: jax.Array  # (C,) columns not seen in an earlier chunk
    cols: jax.Array  # (C,) local column indices
    Wc: jax.Array  # the chunk of W, in W's layout
    start: jax.Array


def logits(h, W, bias, mask, c: ch.Chunking, i, dtype, cfg: Cfg) -> Chunk:
    """Chunk ``i``'s logits; ``mask``: ``(V,)`` or ``(N, V)`` bool, or ``None``."""
    start = c.start(i)
    Wc = lax.dynamic_slice_in_dim(W, start, c.size, axis=0 if cfg.vd else 1)
    x = _dot(h, Wc, ((1,), (1 if cfg.vd else 0,)), dtype)
    if bias is not None:
        x = x + lax.dynamic_slice_in_dim(bias, start, c.size).astype(dtype)
    x = softcap(x, cfg.cap)
    fresh = c.fresh(i, start)
    keep = fresh
    if mask is not None:
        keep = keep & lax.dynamic_slice_in_dim(mask, start, c.size, axis=-1)
    return Chunk(jnp.where(keep, x, NEG_INF), fresh, start + jnp.arange(c.size), Wc, start)


class Grads(NamedTuple):
    dh: jax.Array
    dW: jax.Array
    dbias: jax.Array | None


def zero_grads(h, W, bias, dtype) -> Grads:
    return Grads(
        jnp.zeros(h.shape, dtype),
        jnp.zeros(W.shape, W.dtype),
        None if bias is None else jnp.zeros(bias.shape, bias.dtype),
    )


def accumulate(gr: Grads, gx, chunk: Chunk, h_live, c: ch.Chunking, dtype, cfg: Cfg) -> Grads:
    """Add a chunk's contribution; ``gx``: ``(N, C)`` cotangent of the *capped* logits.

    Columns seen before (the clamped last chunk) and excluded ones have ``gx = 0``, so adding the
    chunk's slice back is exact.
    """
    if cfg.cap is not None:
        # d/du cap * tanh(u / cap) = 1 - tanh^2, from the capped value; 0 where it is -inf.
        xc = chunk.x
        gx = jnp.where(gx != 0, gx * (1 - jnp.square(xc / cfg.cap)), gx)
    gx_in = gx.astype(gr.dW.dtype)
    axis = 0 if cfg.vd else 1
    dh = gr.dh + _dot(gx_in, chunk.Wc, ((1,), (0 if cfg.vd else 1,)), dtype)
    if cfg.vd:
        dW_c = _dot(gx_in, h_live, ((0,), (0,)), dtype)
    else:
        dW_c = _dot(h_live, gx_in, ((0,), (0,)), dtype)
    old = lax.dynamic_slice_in_dim(gr.dW, chunk.start, c.size, axis=axis)
    dW = lax.dynamic_update_slice_in_dim(gr.dW, old + dW_c.astype(gr.dW.dtype), chunk.start, axis)
    dbias = gr.dbias
    if dbias is not None:
        old_b = lax.dynamic_slice_in_dim(dbias, chunk.start, c.size)
        db_c = jnp.sum(gx, axis=0).astype(dbias.dtype)
        dbias = lax.dynamic_update_slice_in_dim(dbias, old_b + db_c, chunk.start, axis=0)
    return Grads(dh, dW, dbias)


def finish_grads(gr: Grads, h, W, bias) -> tuple:
    """Cotangents in the primals' types (see :func:`jaxsoft._chunks.reduce_cotangent`)."""
    return (
        ch.reduce_cotangent(gr.dh.astype(h.dtype), h),
        ch.reduce_cotangent(gr.dW, W),
        ch.reduce_cotangent(gr.dbias, bias),
    )


def weighted_z_sum(gx, x, m, t):
    """``sum_j gx_j (x_j - m) / t`` per row, ``(N, 1)``, with ``0 * (-inf) = 0``.

    For a function of ``x / t`` whose cotangents ``gx`` (in ``x``) sum to 0 per row, the
    derivative in ``t`` is minus this.
    """
    z = rs.zdiff(x, rs.finite_or_zero(m), rs.safe_t(t))
    return jnp.sum(jnp.where(gx != 0, gx * z, 0), axis=-1, keepdims=True)


def int_zero(a):
    """The cotangent of an integer or boolean primal."""
    return None if a is None else np.zeros(a.shape, jax.dtypes.float0)
