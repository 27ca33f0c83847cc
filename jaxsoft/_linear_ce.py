"""The fused linear cross-entropy kernel, shared by the chunked head and its sharded twin.

``loss = cross_entropy(h @ W + bias, labels)`` per row, walking the vocabulary (``W``'s columns)
in chunks: the forward pass keeps the statistics of :mod:`jaxsoft._ce` per row, the backward pass
(a custom VJP) recomputes each chunk's logits from ``h``, ``W`` and ``bias``. With ``axis_name``
the columns are split over the devices of that mesh axis (inside ``jax.shard_map``) and the
per-device statistics are merged with one ``pmax`` and one ``psum``.

Why a custom_vjp rather than a custom_jvp: JAX derives reverse mode from a JVP by linearising and
transposing it, and the linearised scan must save, for every chunk, whatever its tangent needs
from the primal pass: each chunk's ``(N, C)`` probabilities, i.e. the whole ``(N, V)`` array this
kernel exists to avoid. A custom_vjp keeps only ``h``, ``W``, ``bias`` and a few numbers per row.
The price: forward mode (``jax.jvp``, ``jax.jacfwd``) is not available.

Statistics and matmul accumulation use ``compute_dtype(h @ W)``: float32 for bf16/f16/f32
operands, float64 for float64 ones (with ``jax_enable_x64``).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsoft import _ce, _checks
from jaxsoft import _chunks as ch
from jaxsoft import _rowstats as rs
from jaxsoft._softcap import softcap
from jaxsoft.reductions import reduce


class Opts(NamedTuple):
    """The kernel's static options."""

    chunk_size: int
    smoothing: float = 0.0
    z_loss: float = 0.0
    cap: float | None = None
    vocab_axis: int = 1  # W: (d, V) when 1, (V, d) (a tied embedding) when 0


def _dot(a, b, contract, dtype):
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=dtype)


def _head_chunk(h, W, bias, vmask, c: ch.Chunking, i, dtype, o: Opts):
    """Logits of one vocabulary chunk ``(N, C)`` (soft-capped; excluded columns ``-inf``)."""
    start = c.start(i)
    Wc = lax.dynamic_slice_in_dim(W, start, c.size, axis=o.vocab_axis)
    x = _dot(h, Wc, ((1,), (1 - o.vocab_axis,)), dtype)
    if bias is not None:
        x = x + lax.dynamic_slice_in_dim(bias, start, c.size).astype(dtype)
    x = softcap(x, o.cap)
    cols = start + jnp.arange(c.size)
    fresh = c.fresh(i, start)
    keep = fresh if vmask is None else fresh & lax.dynamic_slice_in_dim(vmask, start, c.size)
    return jnp.where(keep, x, rs.NEG_INF), keep, fresh, cols, Wc, start


def _n_classes(W, axis_name, o: Opts):
    v = W.shape[o.vocab_axis]
    return v if axis_name is None else v * lax.axis_size(axis_name)


def _n_incl(vmask, n_classes, axis_name, dtype):
    """The classes that count: all, or those ``vmask`` keeps (over the whole mesh axis)."""
    if vmask is None:
        return n_classes
    k = jnp.sum(vmask, dtype=dtype)
    return k if axis_name is None else lax.psum(k, axis_name)


def _local_labels(labels, W, axis_name, o: Opts):
    if axis_name is None:
        return labels
    return labels - lax.axis_index(axis_name) * W.shape[o.vocab_axis]


def _stats_dtype(h, W):
    return _checks.compute_dtype(jnp.result_type(h.dtype, W.dtype))


def _t_col(t):
    return t if t is None or t.ndim == 0 else t[:, None]


def _dead(valid, n_incl):
    """Rows that add 0: ignored ones, and all of them when no class is left."""
    dead = None if valid is None else ~valid
    if isinstance(n_incl, int):
        return dead
    nothing = jnp.broadcast_to(n_incl == 0, valid.shape if valid is not None else ())
    return nothing if dead is None else dead | nothing


@partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def linear_ce(h, W, bias, t, labels, valid, vmask, o: Opts, axis_name):
    """Per-example ``(loss, lse)``, each ``(N,)``, of ``h: (N, d)`` and ``W`` (one dtype).

    ``W``: ``(d, V_local)``, or ``(V_local, d)`` with ``o.vocab_axis = 0``; ``bias``:
    ``(V_local,)`` or ``None``; ``t``: ``None``, a scalar or ``(N,)``; ``labels``: ``(N,)``
    int32 global class indices; ``valid``: ``(N,)`` bool or ``None`` (``False`` rows are
    ignored); ``vmask``: ``(V_local,)`` bool or ``None`` (``False`` classes are left out).
    """
    return _fwd(h, W, bias, t, labels, valid, vmask, o, axis_name)[0]


def _fwd(h, W, bias, t, labels, valid, vmask, o: Opts, axis_name):
    dtype = _stats_dtype(h, W)
    n_classes = _n_classes(W, axis_name, o)
    n_incl = _n_incl(vmask, n_classes, axis_name, dtype)
    y = _local_labels(labels, W, axis_name, o)
    c = ch.chunking(W.shape[o.vocab_axis], o.chunk_size)
    inv_n = 1.0 / n_incl
    tc = _t_col(t)

    def body(cs, i):
        x, keep, fresh, cols, _, _ = _head_chunk(h, W, bias, vmask, c, i, dtype, o)
        blk = _ce.ce_block(x, keep, cols, y, tc, o.smoothing, inv_n, fresh)
        return _ce.ce_combine(cs, blk, tc), None

    init = _ce.ce_empty(h.shape[0], dtype, o.smoothing)
    cs = ch.scan(body, init, c.count, like=(h, W, bias, t, labels, vmask))
    if axis_name is not None:
        cs = _ce.ce_all_reduce(cs, axis_name, tc)
    dead = _dead(valid, n_incl)
    loss, lse, lres = _ce.lm_finish(cs, tc, o.smoothing, n_incl, labels, n_classes, dead, o.z_loss)
    return (loss, lse), (h, W, bias, t, labels, valid, vmask, cs.st, lres)


def _bwd(o: Opts, axis_name, res, gs):
    h, W, bias, t, labels, valid, vmask, st, lres = res
    g, g_lse = gs
    dtype = _stats_dtype(h, W)
    n_classes = _n_classes(W, axis_name, o)
    inv_n = 1.0 / _n_incl(vmask, n_classes, axis_name, dtype)
    y = _local_labels(labels, W, axis_name, o)
    c = ch.chunking(W.shape[o.vocab_axis], o.chunk_size)
    tc = _t_col(t)
    typed = axis_name is None or ch.typed(W, axis_name)
    if not typed:
        # shard_map (check_vma=False) divided the replicated cotangent by the axis size, expecting
        # the transpose of our psum to sum it back; the rule below never differentiates a psum.
        g, g_lse = lax.psum((g, g_lse), axis_name)
    cp, cq, active, zc = _ce.lm_coeffs(g, g_lse, lres, tc, o.z_loss, dtype)
    # Rows without a gradient must not bring a NaN or inf of theirs into dW through h^T @ 0.
    h_live = jnp.where(active[:, None], h, 0)
    va = o.vocab_axis

    def body(carry, i):
        dh, dW, dbias, pz = carry
        x, keep, _, cols, Wc, start = _head_chunk(h, W, bias, vmask, c, i, dtype, o)
        gx, pz_c = _ce.lm_block_grad(
            x, keep, cols, y, st, cp, cq, active, tc, o.smoothing, inv_n, pz is not None
        )
        gx = _ce.softcap_grad(gx, x, o.cap)
        gx_in = gx.astype(W.dtype)
        dh = dh + _dot(gx_in, Wc, ((1,), (va,)), dtype)
        # Columns seen before (the clamped last chunk) have gx = 0, so adding is exact.
        if va == 1:
            dW_c = _dot(h_live, gx_in, ((0,), (0,)), dtype).astype(dW.dtype)
        else:
            dW_c = _dot(gx_in, h_live, ((0,), (0,)), dtype).astype(dW.dtype)
        dW = lax.dynamic_update_slice_in_dim(
            dW, lax.dynamic_slice_in_dim(dW, start, c.size, axis=va) + dW_c, start, axis=va
        )
        if dbias is not None:
            db_c = jnp.sum(gx, axis=0).astype(dbias.dtype)
            dbias = lax.dynamic_update_slice_in_dim(
                dbias, lax.dynamic_slice_in_dim(dbias, start, c.size) + db_c, start, axis=0
            )
        if pz is not None:
            pz = pz + pz_c
        return (dh, dW, dbias, pz), None

    init = (
        jnp.zeros(h.shape, dtype),
        jnp.zeros(W.shape, W.dtype),
        None if bias is None else jnp.zeros(bias.shape, bias.dtype),
        None if t is None else jnp.zeros(h.shape[:1], dtype),
    )
    like = (h, W, bias, t, labels, vmask, g, g_lse, st)
    dh, dW, dbias, pz = ch.scan(body, init, c.count, like=like)
    dt = None
    if t is not None:
        if axis_name is not None:
            pz = lax.psum(pz, axis_name)  # <p, z> over the whole vocabulary
        dt = _ce.lm_dt(g, g_lse, lres, pz, st, tc, zc, per_row=t.ndim == 1)
        if not typed:
            dt = dt / lax.axis_size(axis_name)  # shard_map sums t's cotangent over the axis
        dt = ch.reduce_cotangent(dt.astype(t.dtype), t)
    # Typed (check_vma=True): each cotangent is a partial sum over the devices its primal does not
    # vary over (dh over the vocabulary shards, dW over data shards); untyped, shard_map sums them.
    dh = ch.reduce_cotangent(dh.astype(h.dtype), h)
    dW = ch.reduce_cotangent(dW, W)
    dbias = ch.reduce_cotangent(dbias, bias)
    return dh, dW, dbias, dt, _int_zero(labels), _int_zero(valid), _int_zero(vmask)


def _int_zero(a):
    if a is None:
        return None
    return np.zeros(a.shape, jax.dtypes.float0)


linear_ce.defvjp(_fwd, _bwd)


# --------------------------------------------------------------------------------------------------
# Validation and preparation shared by linear_cross_entropy and sharded_linear_cross_entropy.
# --------------------------------------------------------------------------------------------------


LAYOUTS = {"dV": 1, "Vd": 0}


def check_layout(name, weight_layout) -> int:
    """``weight_layout``: ``"dV"`` (``W: [d, V]``) or ``"Vd"`` (``[V, d]``); the vocabulary axis."""
    if not isinstance(weight_layout, str) or weight_layout not in LAYOUTS:
        raise ValueError(f"{name}: weight_layout must be 'dV' or 'Vd', got {weight_layout!r}")
    return LAYOUTS[weight_layout]


def check_head(name, h, W, bias, what_w="W", vocab_axis: int = 1, where=None):
    """Eager checks of ``h: [..., d]``, ``W: [d, V]`` (or ``[V, d]``), ``bias``, ``where: [V]``."""
    h = _checks.as_array(h, name, "h")
    W = _checks.as_array(W, name, what_w)
    for what, a in (("h", h), (what_w, W)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name}: {what} must be a float array, got dtype {a.dtype}")
    shape = "[d, V]" if vocab_axis == 1 else "[V, d]"
    if h.ndim < 1 or W.ndim != 2 or h.shape[-1] != W.shape[1 - vocab_axis]:
        raise ValueError(
            f"{name}: expected h of shape [..., d] and {what_w} of shape {shape}, "
            f"got {h.shape} and {W.shape}"
        )
    v = W.shape[vocab_axis]
    if v == 0:
        raise ValueError(f"{name}: {what_w} of shape {W.shape} has no classes")
    if bias is not None:
        bias = _checks.as_array(bias, name, "bias")
        if bias.shape != (v,) or not jnp.issubdtype(bias.dtype, jnp.floating):
            raise ValueError(
                f"{name}: bias must be a float array of shape {(v,)}, "
                f"got {bias.dtype}{list(bias.shape)}"
            )
    if where is not None:
        where = _checks.as_array(where, name, "where")
        if where.dtype != jnp.bool_ or where.shape != (v,):
            raise ValueError(
                f"{name}: where must be a boolean vocabulary mask of shape {(v,)}, "
                f"got {where.dtype}{list(where.shape)}"
            )
    return h, W, bias, where


def check_row_temperature(name, t, batch):
    """A scalar ``t >= 0`` or one per row (shape ``batch``, ``h``'s shape without ``d``)."""
    t_arr = _checks.check_temperature(t, name)
    if t_arr is not None and t_arr.ndim != 0 and t_arr.shape != tuple(batch):
        raise ValueError(
            f"{name}: t must be a scalar or have the rows' shape {tuple(batch)}, got {t_arr.shape}"
        )
    return t_arr


def prepare_head(h, W, labels, t, ignore_index):
    """Inside jit: flatten the batch, cast to one matmul dtype; ``t`` to the statistics dtype."""
    dtype = jnp.result_type(h.dtype, W.dtype)
    h2 = h.reshape(-1, h.shape[-1]).astype(dtype)
    labels = labels.reshape(-1)
    valid = None if ignore_index is None else labels != ignore_index
    if t is not None and t.ndim:
        t = t.reshape(-1)
    t = _checks.traced_temperature(t, _checks.compute_dtype(dtype))
    return h2, W.astype(dtype), labels, valid, t, dtype


def finish_head(loss, lse, labels, valid, vmask, dtype, reduction, return_lse, axis_name=None):
    """Reshape to the labels' shape, cast, reduce over the rows that count; append ``lse``."""
    loss = loss.reshape(labels.shape).astype(dtype)
    count = None if valid is None else valid.reshape(labels.shape)
    if vmask is not None:
        n = jnp.sum(vmask, dtype=jnp.int32)
        anything = (n if axis_name is None else lax.psum(n, axis_name)) > 0
        count = anything if count is None else count & anything
    out = reduce(loss, count, reduction)
    return (out, lse.reshape(labels.shape).astype(dtype)) if return_lse else out
