"""Fused per-token log-probabilities and entropy of a linear head (one chunked kernel).

Per row, with ``x = softcap(h @ W + b)`` (excluded columns ``-inf``), ``z = (x - m) / t`` against
the row max ``m`` and ``log Z = log sum_j e^{z_j}``:

- ``log p_y = z_y - log Z`` (SPEC 8.4), ``-inf`` when the token takes no part;
- ``H = log Z + W / Z`` with ``W = sum_j e^{z_j} (-z_j) >= 0``: both terms non-negative, so a
  near-one-hot row keeps its tiny entropy (``log Z = log1p(s)`` from :mod:`jaxsoft._rowstats`).

The forward pass carries :class:`jaxsoft._rowstats.RowStats`, the token's logit and ``W`` across
chunks (and devices: one ``pmax``, one ``psum``); when the max grows from ``m`` to ``m'`` every old
entry's ``z`` drops by ``e = (m' - m) / t`` and ``W`` becomes ``e^{-e} (W + (k + s) e)``.
The backward pass (a custom VJP, as :mod:`jaxsoft._linear_ce`) recomputes each chunk:

    d log p_y / dx_j = (1[j = y] - p_j) / t,   dH / dx_j = -p_j (log p_j + H) / t,

and the derivative in ``t`` is ``-sum_j g_j z_j`` for the total cotangent ``g`` in ``x``. Hard
rows (``t = 0``, a ``+inf`` logit), rows whose token has ``p = 0`` (for the log-probability) and
empty rows have zero gradients; NaN rows NaN.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoft import _chunks as ch
from jaxsoft import _lm_head_chunk as hc
from jaxsoft import _rowstats as rs

NEG_INF = rs.NEG_INF


def _w_block(x, st: rs.RowStats, t):
    """``sum e^z (-z)`` over a block against its own max; 0 on hard rows."""
    z = rs.zdiff(x, rs.finite_or_zero(st.m), rs.safe_t(t))
    w = jnp.where((x == st.m) | (x == NEG_INF), 0, jnp.exp(z) * -z)
    return jnp.where(rs.hard(st.m, t), 0, jnp.sum(w, axis=-1, keepdims=True))


def _w_rescale(st: rs.RowStats, w, m_new, t):
    """``w`` of ``st`` against the larger max ``m_new`` (see the module docstring)."""
    e = rs.zdiff(m_new, st.m, rs.safe_t(t))
    moved = jnp.exp(-e) * (w + (st.k + st.s) * e)
    out = jnp.where(st.m == m_new, w, moved)
    # An empty part adds nothing; a hard merged row does not use w.
    return jnp.where((st.m == NEG_INF) | rs.hard(m_new, t), 0, out)


def _combine(a, b, t):
    st_a, y_a, w_a = a
    st_b, y_b, w_b = b
    st = rs.combine(st_a, st_b, t)
    w = _w_rescale(st_a, w_a, st.m, t) + _w_rescale(st_b, w_b, st.m, t)
    return st, y_a + y_b, w


def _all_reduce(carry, axis_name, t):
    st, xy, w = carry
    m = lax.pmax(st.m, axis_name)
    k, s = rs.rescale(st, m, t)
    w = _w_rescale(st, w, m, t)
    k, s, xy, w = lax.psum((k, s, xy, w), axis_name)
    return rs.RowStats(m, k, s), xy, w


def _local_labels(labels, n_local, axis_name):
    if axis_name is None:
        return labels
    return labels - lax.axis_index(axis_name) * n_local


def _n_classes(n_local, axis_name):
    return n_local if axis_name is None else n_local * lax.axis_size(axis_name)


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def logprob_entropy(h, W, bias, t, mask, labels, cfg: hc.Cfg, axis_name):
    """``(log p_y, H)``, each ``(N,)``, of ``h: (N, d)`` and ``W`` (``cfg`` layout).

    ``bias``: ``(V,)`` or ``None``; ``t``: ``(N, 1)`` or ``None`` (1); ``mask``: ``(V,)`` or
    ``(N, V)`` bool or ``None``; ``labels``: ``(N,)`` int32 global indices.
    """
    return _fwd(h, W, bias, t, mask, labels, cfg, axis_name)[0]


def _fwd(h, W, bias, t, mask, labels, cfg, axis_name):
    dtype = hc.stats_dtype(h, W)
    n_local = hc.vocab(W, cfg)
    y = _local_labels(labels, n_local, axis_name)
    c = ch.chunking(n_local, cfg.chunk_size)

    def body(carry, i):
        x, fresh, cols, _, _ = hc.logits(h, W, bias, mask, c, i, dtype, cfg)
        st = rs.block(x, t)
        xy = jnp.sum(jnp.where((cols == y[:, None]) & fresh, x, 0), axis=-1, keepdims=True)
        return _combine(carry, (st, xy, _w_block(x, st, t)), t), None

    n = h.shape[0]
    zero = jnp.zeros((n, 1), dtype)
    carry = ch.scan(body, (rs.empty((n,), dtype), zero, zero), c.count, like=(h, W, bias, t, mask))
    if axis_name is not None:
        carry = _all_reduce(carry, axis_name, t)
    st, xy, w = carry
    log_z = rs.log_norm(st)
    ent = jnp.where(rs.hard(st.m, t), log_z, log_z + w / (st.k + st.s))
    ent = jnp.where(rs.empty_row(st), 0, ent)
    lp = rs.log_probs(xy, st, t)
    n_classes = _n_classes(n_local, axis_name)
    nan = rs.nan_row(st) | ~((labels >= 0) & (labels < n_classes))[:, None]
    lp = jnp.where(nan, jnp.nan, lp)
    ent = jnp.where(rs.nan_row(st), jnp.nan, ent)
    out = (lp[:, 0], ent[:, 0])
    return out, (h, W, bias, t, mask, labels, st, out)


def _bwd(cfg, axis_name, res, g):
    h, W, bias, t, mask, labels, st, (lp, ent) = res
    g_lp, g_ent = g
    dtype = hc.stats_dtype(h, W)
    n_local = hc.vocab(W, cfg)
    y = _local_labels(labels, n_local, axis_name)
    c = ch.chunking(n_local, cfg.chunk_size)
    typed = axis_name is None or ch.typed(W, axis_name)
    if not typed:
        # shard_map (check_vma=False) divided the replicated cotangents by the axis size.
        g_lp, g_ent = lax.psum((g_lp, g_ent), axis_name)
    hard = rs.hard(st.m, t)[:, 0]
    nan = jnp.isnan(lp) | jnp.isnan(ent)
    ts = rs.safe_t(t)
    inv_t = 1 if ts is None else 1 / ts[:, 0]
    # Rows without a gradient (hard, p_y = 0, empty) get 0 in a select, never through a product.
    s_lp = jnp.where(hard | (lp == NEG_INF), 0, g_lp.astype(dtype) * inv_t)
    s_ent = jnp.where(hard | rs.empty_row(st)[:, 0], 0, g_ent.astype(dtype) * inv_t)
    s_lp = jnp.where(nan, jnp.nan, s_lp)
    s_ent = jnp.where(nan, jnp.nan, s_ent)
    dead = (s_lp == 0) & (s_ent == 0)
    h_live = jnp.where(dead[:, None], 0, h)
    ent_c = jnp.where(jnp.isnan(ent), 0, ent)[:, None]

    def body(carry, i):
        gr, tz = carry
        chunk = hc.logits(h, W, bias, mask, c, i, dtype, cfg)
        x = chunk.x
        p = rs.probs(x, st, t)
        lpj = rs.log_probs(x, st, t)
        onehot = (chunk.cols == y[:, None]) & chunk.fresh
        gx = s_lp[:, None] * (onehot - p)
        gx = gx - s_ent[:, None] * jnp.where(p != 0, p * (lpj + ent_c), 0)
        gx = jnp.where(dead[:, None], 0, gx)
        if tz is not None:
            tz = tz + hc.weighted_z_sum(gx, x, st.m, t)
        return (hc.accumulate(gr, gx, chunk, h_live, c, dtype, cfg), tz), None

    init = (hc.zero_grads(h, W, bias, dtype), None if t is None else jnp.zeros_like(t, dtype))
    gr, tz = ch.scan(body, init, c.count, like=(h, W, bias, t, mask, labels, g, st))
    dt = None
    if t is not None:
        assert tz is not None
        if axis_name is not None:
            tz = lax.psum(tz, axis_name)
        # tz = sum_j g_j z_j, g the cotangent in the logits (already / t): d/dt = -tz.
        dt = jnp.where(jnp.isnan(lp) | jnp.isnan(ent), jnp.nan, -tz[:, 0])[:, None]
        if not typed:
            dt = dt / lax.axis_size(axis_name)  # shard_map sums t's cotangent over the axis
        dt = ch.reduce_cotangent(dt.astype(t.dtype), t)
    dh, dW, dbias = hc.finish_grads(gr, h, W, bias)
    return dh, dW, dbias, dt, hc.int_zero(mask), hc.int_zero(labels)


logprob_entropy.defvjp(_fwd, _bwd)
