"""The numerical kernels behind :func:`jaxsoft.attention`: scores, the dense path, the key-chunked path.

Internal layout: the query heads sharing a key/value head are stacked along the rows, so the
scores are 4-D like ``jax.nn``'s: ``q (B, K, R, H)`` with ``R = G * T`` rows (row ``r`` is query
position ``r % T`` of group ``r // T``), ``k (B, S, K, H)``, ``v (B, S, K, Hv)``, scores
``(B, K, R, S)`` (a 5-D ``(B, K, G, T, S)`` layout made XLA copy the scores once more).
``bias``/``mask`` broadcast to the scores; ``t`` is ``None`` (meaning 1) or broadcasts to the rows
``(B, K, R, 1)``. Every kernel returns the output in float32 (float64 for float64 inputs),
``(B, K, R, Hv)``, and ``lse`` ``(B, K, R, 1)``.

Per query row, with ``ref = max(max_j s_j, -fmax)`` the shift and ``l = sum_j exp((s_j - ref)/t)``:

* a row with no key (every score ``-inf``) is shifted by ``-fmax``, so every ``exp`` is exactly 0,
  ``l = 0``, and the output is ``0 * 1/max(l, tiny) = 0``, its ``lse`` ``-inf``;
* ``t = 0`` multiplies the shifted scores by ``2**64`` and then by ``fmax``, which maps every key
  below the maximum to ``exp(-huge) = 0`` and the maxima to ``exp(0) = 1`` (ties split evenly);
* a NaN score makes ``l`` NaN, and so its row (XLA:CPU's fused max may drop the NaN on long rows;
  ``exp(NaN - ref)`` does not). A ``+inf`` score gives ``inf - inf``: its row is NaN as well.

All of it is arithmetic (``maximum``, not ``where``) between the reductions and the value matmul,
and per-row work otherwise: XLA:CPU then fuses the scores, max, exp, sum and both matmuls of the
dense path into one kernel that never writes the ``(T, S)`` scores, like ``jax.nn``'s softmax
attention. Normalising by ``1/l`` happens after the value matmul, on ``(T, Hv)`` rather than
``(T, S)``.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoft._rowstats import is_zero

_NEG_INF = -jnp.inf


class Config(NamedTuple):
    """Static settings of one attention call (hashable: a jit static argument)."""

    scale: float
    softcap: float | None
    is_causal: bool
    q_len: int  # T (rows are (group, position) pairs; the causal mask needs the position)
    seq_len: int  # S, the number of real keys (the chunked path pads to a multiple of the chunk)


# --------------------------------------------------------------------------------------------------
# Scores and the per-row pieces both paths share.
# --------------------------------------------------------------------------------------------------


def scores(q, k, bias, mask, k_start, cfg: Config, padded: bool = False):
    """Scores ``(B, K, R, C)`` of ``q`` against the keys ``k_start, ..., k_start + C - 1``.

    ``softcap(scale * q.k) + bias``, then ``-inf`` where the key does not take part. The cap acts
    on the scaled dot products only, before bias and mask (as Gemma 2 and FlashAttention do), so a
    ``-inf`` bias stays a mask. Also returns ``tanh`` of the capped argument (for the chain rule
    of the chunked backward pass) or ``None``.
    """
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    x = jnp.einsum("bkrh,bskh->bkrs", q, k, preferred_element_type=dtype) * cfg.scale
    th = None
    if cfg.softcap is not None:
        th = jnp.tanh(x * (1 / cfg.softcap))
        x = cfg.softcap * th
    if bias is not None:
        x = x + bias.astype(dtype)
    keep = mask
    n_rows, n_k = q.shape[2], k.shape[1]
    if cfg.is_causal or padded:
        # Built for the T positions and repeated for the G groups (no per-entry remainder).
        shape = (cfg.q_len, n_k)
        k_idx = k_start + lax.broadcasted_iota(jnp.int32, shape, 1)
        if cfg.is_causal:  # top-left aligned, as jax.nn: query i sees keys j <= i
            pos = k_idx <= lax.broadcasted_iota(jnp.int32, shape, 0)
            pos = pos & (k_idx < cfg.seq_len) if padded else pos
        else:
            pos = k_idx < cfg.seq_len
        groups = n_rows // cfg.q_len
        if groups > 1:
            pos = jnp.broadcast_to(pos, (groups, *shape)).reshape(n_rows, n_k)
        keep = pos if keep is None else keep & pos
    if keep is not None:
        x = jnp.where(keep, x, _NEG_INF)
    return x, th


class TParams(NamedTuple):
    """Per-row factors of the temperature: ``exp((s - ref) * a * b)``, and ``1/t`` (0 at ``t = 0``)."""

    a: jax.Array
    b: jax.Array
    inv: jax.Array


def t_params(t, dtype) -> TParams | None:
    if t is None:
        return None
    t = t.astype(dtype)
    hard = t == 0
    big = jnp.finfo(dtype).max
    # Two factors rather than one: 2**64 * big overflows, and 0 * inf would be NaN on the maxima.
    a = jnp.where(hard, jnp.asarray(2.0**64, dtype), 1 / jnp.where(hard, 1, t))
    b = jnp.where(hard, big, 1).astype(dtype)
    return TParams(a, b, jnp.where(hard, 0, a))


def row_max(s):
    """The per-row shift: the largest score, or ``-fmax`` in a row with no key.

    ``maximum``, not a select: between the reductions and the value matmul everything must be
    plain arithmetic, or XLA:CPU stops fusing scores, max, exp, sum and the matmuls into one
    kernel (a single select there made the forward pass 2x slower than ``jax.nn``).
    """
    return jnp.maximum(jnp.max(s, axis=-1, keepdims=True), -jnp.finfo(s.dtype).max)


def shifted_exp(s, ref, tp: TParams | None, *, differentiable: bool = False):
    d = s - ref
    if tp is None:
        return jnp.exp(d)
    if not differentiable:
        return jnp.exp(d * tp.a * tp.b)
    # -inf * d(1/t) would be NaN in derivatives taken through t (both selects are needed: in
    # reverse mode the unused branch still receives a zero cotangent, and 0 * -inf is NaN).
    out = d == _NEG_INF
    return jnp.exp(jnp.where(out, _NEG_INF, jnp.where(out, 0, d) * tp.a * tp.b))


def normaliser_inverse(l, *, differentiable: bool = True):
    """``1/l``, and 0 in a row with no key (``l = 0``; otherwise ``l >= 1``, the max adds 1)."""
    if differentiable:  # the inner select keeps 1/0 out of higher derivatives
        return jnp.where(l == 0, 0, 1 / jnp.where(l == 0, 1, l))
    # Arithmetic only, for the dense forward kernel (a select here splits XLA's fusion): the
    # output of an empty row is 0, and 0 times the finite 1/tiny stays 0.
    return 1 / jnp.maximum(l, jnp.finfo(l.dtype).tiny)


def row_lse(ref, l, t):
    """``ref + t log l``; ``-inf`` in a row with no key (``l = 0``), NaN in a NaN row."""
    log_l = jnp.log(jnp.where(l == 0, 1, l))
    lse = ref + (log_l if t is None else t * log_l)
    return jnp.where(l == 0, _NEG_INF, lse)


def value_matmul(p, v):
    # bf16 values: the weights are rounded to bf16 for the matmul, accumulated in float32 (jax.nn too).
    acc = jnp.promote_types(v.dtype, jnp.float32)
    return jnp.einsum("bkrs,bskh->bkrh", p.astype(v.dtype), v, preferred_element_type=acc)


# --------------------------------------------------------------------------------------------------
# Dense path: the scores are formed in full; softargmax and the value matmul share one JVP rule.
# --------------------------------------------------------------------------------------------------


def _dense_primal(s, v, t, differentiable):
    ref = row_max(s)
    tp = t_params(t, s.dtype)
    e = shifted_exp(s, ref, tp, differentiable=differentiable)
    l = jnp.sum(e, axis=-1, keepdims=True)
    return e, ref, l, normaliser_inverse(l, differentiable=differentiable), tp


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def softmax_values(s, v, t, masked: bool):
    """``(softargmax_t(s) @ v, t * logsumexp(s / t))`` over the last axis of the scores ``s``.

    Without a mask XLA:CPU fuses the whole forward pass into one kernel that never writes the
    ``(T, S)`` scores. With one, the mask's select writes them anyway, and that fused kernel
    was measured ~10% slower than ending the fusion before the value matmul, so it is ended there.
    """
    e, ref, l, inv, _ = _dense_primal(s, v, t, differentiable=False)
    if masked:
        e = lax.optimization_barrier(e)
    # Normalising after the matmul: a (T, Hv) multiply instead of a (T, S) one.
    return value_matmul(e, v) * inv, row_lse(ref, l, t)


@partial(softmax_values.defjvp, symbolic_zeros=True)
def _softmax_values_jvp(masked, primals, tangents):
    """``d out = ((p * ds) @ v - out * <p, ds>) / t + p @ dv``, ``d lse = <p, ds> + log(l) dt``.

    With ``dt``, ``ds`` becomes ``ds - (s - ref) dt / t``. Written this way, the transpose JAX
    derives is FlashAttention's backward pass: ``ds_bar = p * (g / t - rowsum(dout_bar * out) / t
    + lse_bar)`` with ``g = dout_bar @ v^T``, i.e. no second reduction over the ``(T, S)`` scores.
    At ``t = 0`` (hard rows) the weights are piecewise constant: only ``p @ dv`` and ``d lse``
    remain. Rows with no key have ``p = 0``, hence zero tangents.
    """
    del masked  # the differentiated graph is split into several kernels anyway
    s, v, t = primals
    ds, dv, dt = tangents
    e, ref, l, inv, tp = _dense_primal(s, v, t, differentiable=True)
    out = value_matmul(e, v) * inv
    lse = row_lse(ref, l, t)
    p = e * inv
    dout = jnp.zeros_like(out)
    dlse = jnp.zeros_like(lse)
    with_dt = t is not None and not is_zero(dt)
    if not is_zero(ds) or with_dt:
        ds_eff = jnp.zeros_like(s) if is_zero(ds) else ds
        if with_dt:
            assert tp is not None
            w = jnp.where(p > 0, s - ref, 0)
            ds_eff = ds_eff - w * (dt * tp.inv)
        pds = p * ds_eff
        dot = jnp.sum(pds, axis=-1, keepdims=True)
        dout = value_matmul(pds, v) - out * dot
        if tp is not None:
            dout = dout * tp.inv
        dlse = dot
        if with_dt:
            dlse = dlse + jnp.log(jnp.where(l == 0, 1, l)) * dt
    if not is_zero(dv):
        dout = dout + value_matmul(p, dv)
    return (out, lse), (dout, dlse)


def dense(q, k, v, bias, mask, t, cfg: Config):
    s, _ = scores(q, k, bias, mask, 0, cfg)
    return softmax_values(s, v, t, mask is not None or cfg.is_causal)


# --------------------------------------------------------------------------------------------------
# Chunked path: online softmax over key chunks; the backward pass recomputes each chunk's scores.
# --------------------------------------------------------------------------------------------------


class Chunks(NamedTuple):
    k: jax.Array  # (nc, B, C, K, H)
    v: jax.Array  # (nc, B, C, K, Hv)
    bias: jax.Array | None  # (nc, ..., C) when it varies along the keys, else None
    mask: jax.Array | None
    start: jax.Array  # (nc,) first key index of each chunk


def _split(a, size, n_chunks, axis, fill):
    """Pad ``a`` along ``axis`` to ``n_chunks * size`` and move the chunk index to the front."""
    pad = n_chunks * size - a.shape[axis]
    if pad:
        widths = [(0, 0)] * a.ndim
        widths[axis] = (0, pad)
        a = jnp.pad(a, widths, constant_values=fill)
    a = a.reshape(a.shape[:axis] + (n_chunks, size) + a.shape[axis + 1 :])
    return jnp.moveaxis(a, axis, 0)


def _varies(a) -> bool:
    return a is not None and a.shape[-1] != 1


def _chunks(k, v, bias, mask, size):
    n = -(-k.shape[1] // size)
    return Chunks(
        _split(k, size, n, 1, 0),
        _split(v, size, n, 1, 0),
        _split(bias, size, n, bias.ndim - 1, 0) if _varies(bias) else None,
        _split(mask, size, n, mask.ndim - 1, False) if _varies(mask) else None,
        jnp.arange(n, dtype=jnp.int32) * size,
    )


def _chunk_scores(q, xs, bias, mask, cfg):
    k_c, _, bias_c, mask_c, start = xs
    return scores(
        q,
        k_c,
        bias_c if bias_c is not None else bias,
        mask_c if mask_c is not None else mask,
        start,
        cfg,
        padded=cfg.seq_len % k_c.shape[1] != 0,
    )


def _chunked_forward(q, k, v, bias, mask, t, cfg, size):
    xs = _chunks(k, v, bias, mask, size)
    dtype = jnp.promote_types(q.dtype, jnp.float32)
    rows = q.shape[:3] + (1,)
    tp = t_params(t, dtype)

    def body(carry, x):
        ref, l, acc = carry
        s, _ = _chunk_scores(q, x, bias, mask, cfg)
        ref_new = jnp.maximum(ref, row_max(s))
        corr = shifted_exp(ref, ref_new, tp)  # rescales what earlier chunks summed
        # (differentiable: second derivatives differentiate this forward pass too)
        e = shifted_exp(s, ref_new, tp, differentiable=True)
        l = l * corr + jnp.sum(e, axis=-1, keepdims=True)
        acc = acc * corr + value_matmul(e, x[1])
        return (ref_new, l, acc), None

    init = (
        jnp.full(rows, -jnp.finfo(dtype).max, dtype),
        jnp.zeros(rows, dtype),
        jnp.zeros(q.shape[:3] + (v.shape[-1],), dtype),
    )
    (ref, l, acc), _ = lax.scan(body, init, xs)
    inv = normaliser_inverse(l)
    return acc * inv, row_lse(ref, l, t), ref, inv


def chunked(q, k, v, bias, mask, t, cfg: Config, size: int) -> tuple[jax.Array, jax.Array]:
    """``(out, lse)`` with the keys taken ``size`` at a time (custom VJP: recomputes the scores)."""
    return _chunked(q, k, v, bias, mask, t, cfg, size)


@partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _chunked(q, k, v, bias, mask, t, cfg: Config, size: int):
    out, lse, _, _ = _chunked_forward(q, k, v, bias, mask, t, cfg, size)
    return out, lse


def _chunked_fwd(q, k, v, bias, mask, t, cfg, size):
    out, lse, ref, inv = _chunked_forward(q, k, v, bias, mask, t, cfg, size)
    # Residuals are O(T + S): the inputs, the output and three per-row numbers; no (T, S) array.
    return (out, lse), (q, k, v, bias, mask, t, out, lse, ref, inv)


def _sum_to(a, shape):
    """Sum ``a`` over the axes along which an operand of ``shape`` was broadcast."""
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, a.shape)) if n == 1 and m != 1)
    return jnp.sum(a, axis=axes, keepdims=True) if axes else a


def _chunked_bwd(cfg, size, res, cts):
    q, k, v, bias, mask, t, out, lse, ref, inv = res
    d_out, d_lse = cts
    dtype = out.dtype
    tp = t_params(t, dtype)
    xs = _chunks(k, v, bias, mask, size)
    d_out = d_out.astype(dtype)
    # rowsum(p * (d_out @ v^T)) = rowsum(d_out * out): FlashAttention's per-row shortcut.
    dot = jnp.sum(d_out * out, axis=-1, keepdims=True)
    tinv = 1 if tp is None else tp.inv
    row_ct = d_lse.astype(dtype) - dot * tinv
    bias_shape = None if bias is None else bias.shape

    def body(carry, x):
        dq, dbias_acc, dt_acc = carry
        k_c, v_c = x[0], x[1]
        s, th = _chunk_scores(q, x, bias, mask, cfg)
        p = shifted_exp(s, ref, tp, differentiable=True) * inv
        g = jnp.einsum("bkrh,bskh->bkrs", d_out, v_c, preferred_element_type=dtype)
        ds = p * (g * tinv + row_ct)
        dv_c = jnp.einsum("bkrs,bkrh->bskh", p, d_out, preferred_element_type=dtype)
        if t is not None:
            w = jnp.where(p > 0, s - ref, 0)
            dt_acc = dt_acc - jnp.sum(ds * w, axis=-1, keepdims=True)
        dbias_c = None
        if bias_shape is not None:
            if x[2] is not None:
                dbias_c = _sum_to(ds, bias_shape[:-1] + (ds.shape[-1],))
            else:
                dbias_acc = dbias_acc + _sum_to(ds, bias_shape)
        dx = ds if th is None else ds * (1 - th * th)
        dx = dx * cfg.scale
        dq = dq + jnp.einsum("bkrs,bskh->bkrh", dx, k_c, preferred_element_type=dtype)
        dk_c = jnp.einsum("bkrs,bkrh->bskh", dx, q, preferred_element_type=dtype)
        return (dq, dbias_acc, dt_acc), (dk_c, dv_c, dbias_c)

    init = (
        jnp.zeros(q.shape, dtype),
        None if bias_shape is None or _varies(bias) else jnp.zeros(bias_shape, dtype),
        None if t is None else jnp.zeros(lse.shape, dtype),
    )
    (dq, dbias_acc, dt_acc), (dk, dv, dbias_c) = lax.scan(body, init, xs)
    n_keys = k.shape[1]

    def unsplit(a, axis):  # (nc, ..., C, ...) -> (..., S, ...), dropping the padding
        a = jnp.moveaxis(a, 0, axis)
        a = a.reshape(a.shape[:axis] + (-1,) + a.shape[axis + 2 :])
        return lax.slice_in_dim(a, 0, n_keys, axis=axis)

    dk = unsplit(dk, 1).astype(k.dtype)
    dv = unsplit(dv, 1).astype(v.dtype)
    dbias = None
    if bias is not None:
        dbias = dbias_acc if dbias_c is None else unsplit(dbias_c, bias.ndim - 1)
        assert dbias is not None
        dbias = dbias.astype(bias.dtype)
    dt = None
    if t is not None:
        assert tp is not None and dt_acc is not None
        finite = jnp.isfinite(lse)
        soft = tp.inv * (dt_acc + jnp.where(finite, d_lse * (lse - ref), 0))
        hard = jnp.where(finite, -d_lse * jnp.log(jnp.where(inv == 0, 1, inv)), 0)  # log l
        dt = _sum_to(jnp.where(t == 0, hard, soft), t.shape).astype(t.dtype)
    return dq.astype(q.dtype), dk, dv, dbias, None, dt


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
