"""Fused ``KL(teacher || student)`` of two linear heads, chunked over the vocabulary.

The forward pass computes, chunk by chunk, both heads' logits and merges the centred statistics of
:mod:`jaxsoft._lm_head_klstats` (one pass, accurate when the distributions nearly agree). A batch
holding a row that form does not cover (``t = 0``, ``+inf`` or NaN logits, a teacher ``-inf`` under
a finite student logit) takes the exact path instead, through one :func:`jax.lax.cond`: a pass for
both heads' :class:`jaxsoft._rowstats.RowStats`, then ``sum_j q_j (log q_j - log p_j)``.

The backward pass (a custom VJP, recomputing chunks) uses

    dKL / dx_j = (p_j - q_j) / t,   dKL / dy_j = q_j (log q_j - log p_j - KL) / t,

from the centred form ``log q_j - log p_j = d_j - log1p(A)`` on the fast path, and ``dKL / dt =
-sum_j (g^x_j z^x_j + g^y_j z^y_j)`` for the cotangents ``g`` in the logits. The teacher's
``dh``/``dW``/``dbias`` are only computed when the teacher is differentiated. Rows with ``KL = +inf``,
hard rows (``t = 0``, ``+inf`` logits) and rows with no teacher mass get zero gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoft import _chunks as ch
from jaxsoft import _lm_head_chunk as hc
from jaxsoft import _lm_head_klstats as ks
from jaxsoft import _rowstats as rs

NEG_INF = rs.NEG_INF


def _pair(student, teacher, mask, c, i, dtype, cfg):
    (h, W, bias), (th, tW, tbias) = student, teacher
    cx = hc.logits(h, W, bias, mask, c, i, dtype, cfg)
    cy = hc.logits(th, tW, tbias, mask, c, i, dtype, cfg)
    return cx, cy


def _fast(student, teacher, t, mask, c, dtype, cfg, axis_name):
    def body(carry, i):
        cx, cy = _pair(student, teacher, mask, c, i, dtype, cfg)
        return ks.combine(carry, ks.block(cx.x, cy.x, t), t), None

    like = (*student, *teacher, t, mask)
    st = ch.scan(body, ks.empty(student[0].shape[0], dtype), c.count, like=like)
    if axis_name is not None:
        st = ks.all_reduce(st, axis_name, t)
    return st


def _exact_stats(student, teacher, t, mask, c, dtype, cfg, axis_name):
    def body(carry, i):
        cx, cy = _pair(student, teacher, mask, c, i, dtype, cfg)
        return (
            rs.combine(carry[0], rs.block(cx.x, t), t),
            rs.combine(carry[1], rs.block(cy.x, t), t),
        ), None

    n = student[0].shape[0]
    init = (rs.empty((n,), dtype), rs.empty((n,), dtype))
    st_x, st_y = ch.scan(body, init, c.count, like=(*student, *teacher, t, mask))
    if axis_name is not None:
        st_x = rs.all_reduce(st_x, axis_name, t)[0]
        st_y = rs.all_reduce(st_y, axis_name, t)[0]
    return st_x, st_y


def _exact_kl(student, teacher, t, mask, c, dtype, cfg, axis_name):
    st_x, st_y = _exact_stats(student, teacher, t, mask, c, dtype, cfg, axis_name)

    def body(acc, i):
        cx, cy = _pair(student, teacher, mask, c, i, dtype, cfg)
        lp, lq = rs.log_probs(cx.x, st_x, t), rs.log_probs(cy.x, st_y, t)
        q = rs.probs(cy.x, st_y, t)
        term = jnp.where(q == 0, 0, jnp.where(lp == NEG_INF, jnp.inf, q * (lq - lp)))
        term = jnp.where(jnp.isnan(q), jnp.nan, term)
        return acc + jnp.sum(term, axis=-1, keepdims=True), None

    n = student[0].shape[0]
    kl = ch.scan(body, jnp.zeros((n, 1), dtype), c.count, like=(*student, *teacher, t, mask))
    if axis_name is not None:
        kl = lax.psum(kl, axis_name)
    return jnp.maximum(kl, 0)


def _any(flag, axis_name):
    b = jnp.any(flag)
    if axis_name is not None:
        b = lax.pmax(b.astype(jnp.int32), axis_name) > 0
    return b


def _kl_primal(h, W, bias, th, tW, tbias, t, mask, cfg: hc.Cfg, axis_name):
    """``KL(softargmax_t(teacher) || softargmax_t(student))`` per row, ``(N,)``."""
    return _kl_value(h, W, bias, th, tW, tbias, t, mask, cfg, axis_name)[0]


def _kl_value(h, W, bias, th, tW, tbias, t, mask, cfg, axis_name):
    dtype = hc.stats_dtype(h, W)
    c = ch.chunking(hc.vocab(W, cfg), cfg.chunk_size)
    student, teacher = (h, W, bias), (th, tW, tbias)
    st = _fast(student, teacher, t, mask, c, dtype, cfg, axis_name)
    value, bad, _ = ks.finish(st, t)
    any_bad = _any(bad, axis_name)
    value = lax.cond(
        any_bad,
        lambda: _exact_kl(student, teacher, t, mask, c, dtype, cfg, axis_name),
        lambda: value,
    )
    return value[:, 0], (st, any_bad)


def _fwd(h, W, bias, th, tW, tbias, t, mask, cfg, axis_name, teacher_grad=True):
    value, (st, any_bad) = _kl_value(h, W, bias, th, tW, tbias, t, mask, cfg, axis_name)
    flag = (0,) if teacher_grad else ()
    return value, (h, W, bias, th, tW, tbias, t, mask, st, any_bad, value, flag)


def _fwd_symbolic(h, W, bias, th, tW, tbias, t, mask, cfg, axis_name):
    """With ``symbolic_zeros`` each primal comes wrapped, with whether it is differentiated."""
    teacher_grad = any(a is not None and a.perturbed for a in (th, tW, tbias))
    h, W, bias, th, tW, tbias, t, mask = (
        None if a is None else a.value for a in (h, W, bias, th, tW, tbias, t, mask)
    )
    return _fwd(h, W, bias, th, tW, tbias, t, mask, cfg, axis_name, teacher_grad=teacher_grad)


def _bwd(cfg, axis_name, res, g):
    h, W, bias, th, tW, tbias, t, mask, st, any_bad, value, flag = res
    teacher_grad = bool(flag)
    dtype = hc.stats_dtype(h, W)
    c = ch.chunking(hc.vocab(W, cfg), cfg.chunk_size)
    typed = axis_name is None or ch.typed(W, axis_name)
    if not typed:
        g = lax.psum(g, axis_name)  # shard_map (check_vma=False) divided it by the axis size
    student, teacher = (h, W, bias), (th, tW, tbias)
    ts = rs.safe_t(t)
    scale = g.astype(dtype)[:, None]
    if ts is not None:
        scale = scale / ts
    kl_v = value[:, None].astype(dtype)
    nan = jnp.isnan(kl_v)
    like = (*student, *teacher, t, mask, g, st)

    def grads(dead, chunk_grads, extra_pass=None):
        scale_r = jnp.where(nan, jnp.nan, jnp.where(dead, 0, scale))
        row_dead = dead & ~nan
        h_live = jnp.where(row_dead, 0, h)
        th_live = jnp.where(row_dead, 0, th)

        def body(carry, i):
            gs, gt, tz = carry
            cx, cy = _pair(student, teacher, mask, c, i, dtype, cfg)
            gx, gy, tz_c = chunk_grads(cx.x, cy.x, extra_pass)
            gx = jnp.where(row_dead, 0, gx * scale_r)
            gy = jnp.where(row_dead, 0, gy * scale_r)
            gs = hc.accumulate(gs, gx, cx, h_live, c, dtype, cfg)
            if gt is not None:
                gt = hc.accumulate(gt, gy, cy, th_live, c, dtype, cfg)
            if tz is not None:
                tz = tz + jnp.where(row_dead, 0, tz_c * scale_r)
            return (gs, gt, tz), None

        init = (
            hc.zero_grads(h, W, bias, dtype),
            hc.zero_grads(th, tW, tbias, dtype) if teacher_grad else None,
            None if t is None else jnp.zeros(t.shape, dtype),
        )
        return ch.scan(body, init, c.count, like=like)

    def fast_grads(x, y, _):
        mf = rs.finite_or_zero(st.m)
        regular = jnp.isfinite(x) & jnp.isfinite(y)
        zx = jnp.where(regular, rs.zdiff(x, mf, ts), NEG_INF)
        lp = zx - jnp.log(st.T)
        d = jnp.where(regular, rs.zdiff(y, x, ts) - st.mu, 0)
        r = d - jnp.log1p(st.A)
        p = jnp.exp(lp)
        q = jnp.exp(lp + r)
        gx = jnp.where(jnp.abs(r) <= 1, -p * jnp.expm1(r), p - q)
        gy = q * (r - kl_v)
        zx0 = jnp.where(regular, zx, 0)
        tz = jnp.sum(jnp.where(regular, (gx + gy) * zx0 + gy * d, 0), axis=-1, keepdims=True)
        return jnp.where(regular, gx, 0), jnp.where(regular, gy, 0), tz

    def fast():
        dead = jnp.isinf(kl_v) | (st.T == 0)
        return grads(dead, fast_grads)

    def exact():
        st_x, st_y = _exact_stats(student, teacher, t, mask, c, dtype, cfg, axis_name)

        def exact_grads(x, y, _):
            p, q = rs.probs(x, st_x, t), rs.probs(y, st_y, t)
            lp, lq = rs.log_probs(x, st_x, t), rs.log_probs(y, st_y, t)
            gx = p - q
            gy = jnp.where(q == 0, 0, q * (lq - lp - kl_v))
            tz = hc.weighted_z_sum(gx, x, st_x.m, t) + hc.weighted_z_sum(gy, y, st_y.m, t)
            return gx, gy, tz

        dead = jnp.isinf(kl_v) | rs.empty_row(st_y) | rs.hard(st_x.m, t) | rs.hard(st_y.m, t)
        return grads(dead, exact_grads)

    gs, gt, tz = lax.cond(any_bad, exact, fast)
    dt = None
    if t is not None:
        if axis_name is not None:
            tz = lax.psum(tz, axis_name)
        dt = -tz
        if not typed:
            dt = dt / lax.axis_size(axis_name)  # shard_map sums t's cotangent over the axis
        dt = ch.reduce_cotangent(dt.astype(t.dtype), t)
    dh, dW, dbias = hc.finish_grads(gs, h, W, bias)
    if gt is None:
        dth = dtW = dtbias = None
    else:
        dth, dtW, dtbias = hc.finish_grads(gt, th, tW, tbias)
    return dh, dW, dbias, dth, dtW, dtbias, dt, hc.int_zero(mask)


# `kl` skips the teacher's backward matmuls when the teacher is not differentiated (symbolic zeros);
# jax's shard_map does not support symbolic zeros outside jit, so the sharded twin uses `kl_sharded`,
# which always computes the teacher's cotangents (XLA drops them under jit when unused).
kl = jax.custom_vjp(_kl_primal, nondiff_argnums=(8, 9))
kl.defvjp(_fwd_symbolic, _bwd, symbolic_zeros=True)
kl_sharded = jax.custom_vjp(_kl_primal, nondiff_argnums=(8, 9))
kl_sharded.defvjp(_fwd, _bwd)
