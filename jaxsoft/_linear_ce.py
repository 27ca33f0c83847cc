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

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsoft import _ce, _checks
from jaxsoft import _chunks as ch
from jaxsoft import _rowstats as rs


def _dot(a, b, contract, dtype):
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=dtype)


def _head_chunk(h, W, bias, c: ch.Chunking, i, dtype):
    """Logits of one vocabulary chunk, ``(N, C)``, with already-seen columns at ``-inf``."""
    start = c.start(i)
    Wc = lax.dynamic_slice_in_dim(W, start, c.size, axis=1)
    x = _dot(h, Wc, ((1,), (0,)), dtype)
    if bias is not None:
        x = x + lax.dynamic_slice_in_dim(bias, start, c.size).astype(dtype)
    cols = start + jnp.arange(c.size)
    keep = c.fresh(i, start)
    return jnp.where(keep, x, rs.NEG_INF), keep, cols, Wc, start


def _n_classes(W, axis_name):
    v = W.shape[1]
    return v if axis_name is None else v * lax.axis_size(axis_name)


def _local_labels(labels, W, axis_name):
    if axis_name is None:
        return labels
    return labels - lax.axis_index(axis_name) * W.shape[1]


def _stats_dtype(h, W):
    return _checks.compute_dtype(jnp.result_type(h.dtype, W.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def linear_ce(h, W, bias, t, labels, valid, chunk_size: int, smoothing: float, axis_name):
    """Per-example loss ``(N,)`` of ``h: (N, d)``, ``W: (d, V_local)`` (one dtype).

    ``bias``: ``(V_local,)`` or ``None``; ``t``: a scalar or ``None``; ``labels``: ``(N,)`` int32
    global class indices; ``valid``: ``(N,)`` bool or ``None`` (``False`` rows are ignored).
    """
    return _fwd(h, W, bias, t, labels, valid, chunk_size, smoothing, axis_name)[0]


def _fwd(h, W, bias, t, labels, valid, chunk_size, smoothing, axis_name):
    dtype = _stats_dtype(h, W)
    n_classes = _n_classes(W, axis_name)
    y = _local_labels(labels, W, axis_name)
    c = ch.chunking(W.shape[1], chunk_size)
    inv_n = 1.0 / n_classes

    def body(cs, i):
        x, keep, cols, _, _ = _head_chunk(h, W, bias, c, i, dtype)
        return _ce.ce_combine(cs, _ce.ce_block(x, keep, cols, y, t, smoothing, inv_n), t), None

    init = _ce.ce_empty(h.shape[0], dtype, smoothing)
    cs = ch.scan(body, init, c.count, like=(h, W, bias, t, labels))
    if axis_name is not None:
        cs = _ce.ce_all_reduce(cs, axis_name, t)
    loss, zero_row, qz = _ce.ce_finish(cs, t, smoothing, n_classes)
    in_range = (labels >= 0) & (labels < n_classes)
    loss, zero_row, nan_row = _ce.settle(
        loss, zero_row, in_range, None if valid is None else ~valid
    )
    return loss, (h, W, bias, t, labels, valid, cs.st, zero_row, nan_row, qz)


def _bwd(chunk_size, smoothing, axis_name, res, g):
    h, W, bias, t, labels, valid, st, zero_row, nan_row, qz = res
    dtype = _stats_dtype(h, W)
    n_classes = _n_classes(W, axis_name)
    y = _local_labels(labels, W, axis_name)
    c = ch.chunking(W.shape[1], chunk_size)
    typed = axis_name is None or ch.typed(W, axis_name)
    if not typed:
        # shard_map (check_vma=False) divided the replicated cotangent by the axis size, expecting
        # the transpose of our psum to sum it back; the rule below never differentiates a psum.
        g = lax.psum(g, axis_name)
    scale = _ce.row_scale(g, zero_row, nan_row, t, dtype)
    live = ~zero_row
    # Rows without a gradient must not bring a NaN or inf of theirs into dW through h^T @ 0.
    h_live = jnp.where(live[:, None], h, 0)

    def body(carry, i):
        dh, dW, dbias, pz = carry
        x, keep, cols, Wc, start = _head_chunk(h, W, bias, c, i, dtype)
        gx, pz_c = _ce.ce_block_grad(
            x, keep, cols, y, st, live, scale, t, smoothing, 1.0 / n_classes
        )
        gx_in = gx.astype(W.dtype)
        dh = dh + _dot(gx_in, Wc, ((1,), (1,)), dtype)
        # Columns seen before (the clamped last chunk) have gx = 0, so adding is exact.
        dW_c = _dot(h_live, gx_in, ((0,), (0,)), dtype).astype(dW.dtype)
        dW = lax.dynamic_update_slice_in_dim(
            dW, lax.dynamic_slice_in_dim(dW, start, c.size, axis=1) + dW_c, start, axis=1
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
    dh, dW, dbias, pz = ch.scan(body, init, c.count, like=(h, W, bias, t, labels, g, st))
    dt = None
    if t is not None:
        if axis_name is not None:
            pz = lax.psum(pz, axis_name)  # <p, z> over the whole vocabulary
        dt = _ce.ce_dt(g, zero_row, nan_row, pz, qz, t)
        if not typed:
            dt = dt / lax.axis_size(axis_name)  # shard_map sums t's cotangent over the axis
        dt = ch.reduce_cotangent(dt.astype(t.dtype), t)
    # Typed (check_vma=True): each cotangent is a partial sum over the devices its primal does not
    # vary over (dh over the vocabulary shards, dW over data shards); untyped, shard_map sums them.
    dh = ch.reduce_cotangent(dh.astype(h.dtype), h)
    dW = ch.reduce_cotangent(dW, W)
    dbias = ch.reduce_cotangent(dbias, bias)
    return dh, dW, dbias, dt, _int_zero(labels), _int_zero(valid)


def _int_zero(a):
    return None if a is None else np.zeros(a.shape, jax.dtypes.float0)


linear_ce.defvjp(_fwd, _bwd)


# --------------------------------------------------------------------------------------------------
# Validation and preparation shared by linear_cross_entropy and sharded_linear_cross_entropy.
# --------------------------------------------------------------------------------------------------


def check_head(name, h, W, bias, what_w="W"):
    """Eager shape/dtype checks of ``h: [..., d]``, ``W: [d, V]`` and ``bias: [V]``."""
    h = _checks.as_array(h, name, "h")
    W = _checks.as_array(W, name, what_w)
    for what, a in (("h", h), (what_w, W)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name}: {what} must be a float array, got dtype {a.dtype}")
    if h.ndim < 1 or W.ndim != 2 or h.shape[-1] != W.shape[0]:
        raise ValueError(
            f"{name}: expected h of shape [..., d] and {what_w} of shape [d, V], "
            f"got {h.shape} and {W.shape}"
        )
    if W.shape[1] == 0:
        raise ValueError(f"{name}: {what_w} of shape {W.shape} has no classes")
    if bias is not None:
        bias = _checks.as_array(bias, name, "bias")
        if bias.shape != (W.shape[1],) or not jnp.issubdtype(bias.dtype, jnp.floating):
            raise ValueError(
                f"{name}: bias must be a float array of shape {(W.shape[1],)}, "
                f"got {bias.dtype}{list(bias.shape)}"
            )
    return h, W, bias


def prepare_head(h, W, labels, t, ignore_index):
    """Inside jit: flatten the batch, cast to one matmul dtype; ``t`` to the statistics dtype."""
    dtype = jnp.result_type(h.dtype, W.dtype)
    h2 = h.reshape(-1, h.shape[-1]).astype(dtype)
    labels = labels.reshape(-1)
    valid = None if ignore_index is None else labels != ignore_index
    t = _checks.traced_temperature(t, _checks.compute_dtype(dtype))
    return h2, W.astype(dtype), labels, valid, t, dtype
