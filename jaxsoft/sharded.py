"""Vocabulary-parallel log-sum-exp and cross-entropy, for use inside ``jax.shard_map``.

Each device holds ``V / P`` consecutive classes (columns) of the logits, or of the head ``W``;
device ``i`` along ``axis_name`` holds classes ``[i * V_local, (i + 1) * V_local)``. Every function
computes its local online statistics (:mod:`jaxsoft.large_vocab`: the max, the count of entries at
the max, the rescaled sum of the others) and merges them with one ``lax.pmax`` and one
``lax.psum``; the label's logit is a masked local lookup (the label offset by
``axis_index * V_local``) summed with the same ``psum``. No device ever holds more than its own
``[N, V_local]`` block, and only ``O(N)`` numbers cross devices.

Derivatives come from custom rules (a JVP for the log-sum-exp, VJPs for the losses) that are
written in terms of the merged statistics, so ``pmax`` is never differentiated: the result is
invariant to the shift by the max, and treating it as a constant is exact. The gradient in the
local logits is the local slice of ``softargmax - target``; a replicated ``h`` gets the ``psum``
of the per-shard ``dh``.

Example (8 devices, each holding an eighth of the vocabulary)::

    mesh = jax.sharding.Mesh(jax.devices(), ("v",))
    f = jax.jit(jax.shard_map(partial(sharded_cross_entropy, axis_name="v"), mesh=mesh,
                              in_specs=(P(None, "v"), P()), out_specs=P()))
    loss = f(logits, labels)          # logits: [N, V], V divisible by 8
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft import large_vocab as _lv

_NEG_INF = -jnp.inf

try:  # jax >= 0.7
    shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map  # noqa: F401


def _merge(st: _lv._Stats, axis_name, t) -> _lv._Stats:
    m = lax.pmax(st.m, axis_name)
    k, s = _lv._rescale(st, m, t)
    k, s = lax.psum((k, s), axis_name)
    return _lv._Stats(m, k, s)


def _local_stats(x, t, mask):
    if mask is not None:
        x = jnp.where(mask, x, _NEG_INF)
    return x, _lv._block_stats(x, t)


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _sharded_lse(x, t, mask, axis_name):
    _, st = _local_stats(x, t, mask)
    return _lv._lse_finish(_merge(st, axis_name, t), t)


def _sharded_lse_jvp(axis_name, primals, tangents):
    """``d lse = psum <p_local, dx_local> + H(p) dt``, ``p`` from the merged statistics."""
    x, t, mask = primals
    dx, dt, _ = tangents
    xm, st = _local_stats(x, t, mask)
    st = _merge(st, axis_name, t)
    lse = _lv._lse_finish(st, t)
    p = _lv._block_probs(xm, st, t)
    dot = jnp.zeros_like(x[..., :1])
    if not _lv._is_zero(dx):
        # where, not p * dx: a NaN or inf tangent on a masked entry must not reach the sum.
        dot = jnp.sum(p * (dx if mask is None else jnp.where(mask, dx, 0)), axis=-1, keepdims=True)
    with_dt = t is not None and not _lv._is_zero(dt)
    pz = _lv._block_pz(xm, p, st, t) if with_dt else jnp.zeros_like(dot)
    dot, pz = lax.psum((dot, pz), axis_name)
    dlse = dot
    if with_dt:
        entropy = _lv._log_norm(st, t) - pz
        dlse = dlse + jnp.where(st.m == _NEG_INF, 0, entropy) * dt
    return lse, dlse


_sharded_lse.defjvp(_sharded_lse_jvp, symbolic_zeros=True)


def sharded_logsumexp(
    x_local: ArrayLike,
    axis_name,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""Log-sum-exp over the last axis when that axis is split across the devices of ``axis_name``.

    .. math::
        \mathrm{logsumexp}_t(x) = M + t \log \sum_{\text{devices}} \sum_j e^{(x_j - M)/t},
        \qquad M = \mathrm{pmax}(\max_j x_j)

    Call it inside :func:`jax.shard_map` with ``x`` sharded on its last axis over ``axis_name``.
    Same values and edge semantics (SPEC 6) as :func:`jaxsoft.logsumexp` over the whole axis,
    including the ``log1p`` accuracy; the gradient is each device's slice of ``softargmax``.

    Args:
      x_local: this device's ``[..., V_local]`` block (float; bf16 computed in float32).
      axis_name: the mesh axis (or tuple of axes) the last axis is split over.
      t: temperature ``>= 0``, a scalar or one per row (replicated); differentiable.
      where: optional boolean mask of this device's block.
      keepdims: keep the reduced axis with size 1.

    Returns:
      ``x_local.shape[:-1]`` (replicated over ``axis_name``), in ``x_local``'s float dtype.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jax.sharding import PartitionSpec as P
      >>> from jaxsoft.sharded import sharded_logsumexp
      >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("v",))
      >>> f = jax.jit(jax.shard_map(lambda x: sharded_logsumexp(x, "v"), mesh=mesh,
      ...                           in_specs=P(None, "v"), out_specs=P()))
      >>> f(jnp.array([[0.0, jnp.log(3.0)]]))
      Array([1.386294], dtype=float32)
    """
    name = "sharded_logsumexp"
    x, t_arr, w, axes = _checks.prepare(name, x_local, -1, t, where)
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t_arr, w, axes, name)
    if layout.n == 0:
        out = _sharded_empty(xc, axis_name)
    else:
        out = _sharded_lse(xc, tc, mc, axis_name)
    return layout.reduced_from_canonical(out.astype(out_dtype), keepdims)


def _sharded_empty(xc, axis_name):
    # Every device has an empty block (the split is even), so the whole axis is empty.
    return jnp.full(xc.shape[:-1] + (1,), _NEG_INF, xc.dtype)


# --------------------------------------------------------------------------------------------------
# Cross-entropy on vocabulary-sharded logits.
# --------------------------------------------------------------------------------------------------


def _ce_fwd(x, t, labels, valid, smoothing, axis_name):
    n_local = x.shape[-1]
    n_classes = n_local * lax.axis_size(axis_name)
    y = labels - lax.axis_index(axis_name) * n_local
    cols = jnp.arange(n_local)
    keep = jnp.ones_like(x, bool)
    cs = _lv._ce_block(x, keep, cols, y, t, smoothing)
    cs = _lv._all_reduce(cs, axis_name, t)
    loss, rows = _lv._ce_finish(cs, labels, valid, t, smoothing, n_classes)
    return loss, (x, t, labels, valid, cs.st, rows)


# A custom_vjp for the same reason as jaxsoft.large_vocab._lce: the rule is written against the
# merged statistics, so no collective is ever differentiated.
@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _sharded_ce(x, t, labels, valid, smoothing, axis_name):
    return _ce_fwd(x, t, labels, valid, smoothing, axis_name)[0]


def _sharded_ce_bwd(smoothing, axis_name, res, g):
    x, t, labels, valid, st, rows = res
    n_local = x.shape[-1]
    n_classes = n_local * lax.axis_size(axis_name)
    y = labels - lax.axis_index(axis_name) * n_local
    scale = _lv._ce_row_scale(g, rows, t)
    keep = jnp.ones_like(x, bool)
    gx, pz = _lv._ce_block_grad(
        x, keep, jnp.arange(n_local), y, st, rows, scale, t, smoothing, n_classes
    )
    dt = None
    if t is not None:
        dt = _lv._ce_dt(g, rows, lax.psum(pz, axis_name), t).astype(t.dtype)
    return gx, dt, _lv._int_zero(labels), _lv._int_zero(valid)


_sharded_ce.defvjp(_ce_fwd, _sharded_ce_bwd)


def sharded_cross_entropy(
    logits_local: ArrayLike,
    labels: ArrayLike,
    axis_name,
    *,
    t: ArrayLike = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
) -> jax.Array:
    r"""Integer-label cross-entropy when the class axis (last) is split over ``axis_name``.

    .. math::
        \mathrm{CE} = \mathrm{logsumexp}_j(z_j) - (1-\alpha) z_y - \tfrac{\alpha}{V}\textstyle\sum_j z_j,
        \qquad z = x / t

    Call inside :func:`jax.shard_map` with the logits sharded on their last axis and the labels
    replicated. Equal to :func:`jaxsoft.losses.cross_entropy` on the gathered logits (values,
    gradients, edge rows), without gathering them: one ``pmax`` and one ``psum`` of ``O(N)``
    numbers. The label's logit is looked up locally at ``label - axis_index * V_local`` by the
    one device that holds it.

    Args:
      logits_local: this device's ``[..., V_local]`` block of the logits (float).
      labels: global class indices in ``[0, V)``, shape ``logits_local.shape[:-1]``, replicated.
      axis_name: the mesh axis (or tuple of axes) the classes are split over.
      t: scalar temperature ``>= 0``; differentiable. ``t = 0`` is the hard argmax.
      label_smoothing: ``alpha`` in ``[0, 1]`` (target ``(1 - alpha) onehot + alpha / V``).
      ignore_index: examples with this label get loss 0 and zero gradient.

    Returns:
      Per-example losses of shape ``labels.shape`` (replicated), in the logits' float dtype.
      Labels out of range give NaN (they cannot be checked: everything here is traced).
    """
    name = "sharded_cross_entropy"
    x = _checks.as_array(logits_local, name, "logits")
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 1:
        raise TypeError(f"{name}: logits must be a float array with a class axis, got {x.dtype}")
    labels = _check_labels(name, labels, x.shape[:-1])
    smoothing, t_arr, ignore = _check_common(name, t, label_smoothing, ignore_index)
    out_dtype = x.dtype
    xc = x.reshape(-1, x.shape[-1]).astype(_checks.compute_dtype(x.dtype))
    lab = labels.reshape(-1).astype(jnp.int32)
    valid = None if ignore is None else lab != ignore
    t_arr = _prepare_t(t_arr)
    loss = _sharded_ce(xc, t_arr, lab, valid, smoothing, axis_name)
    return loss.reshape(labels.shape).astype(out_dtype)


# --------------------------------------------------------------------------------------------------
# Fused linear cross-entropy with W split by columns.
# --------------------------------------------------------------------------------------------------


def sharded_linear_cross_entropy(
    h: ArrayLike,
    W_local: ArrayLike,
    labels: ArrayLike,
    axis_name,
    *,
    bias_local: ArrayLike | None = None,
    chunk_size: int = 2048,
    t: ArrayLike = 1.0,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r""":func:`jaxsoft.large_vocab.linear_cross_entropy` with ``W``'s columns split over ``axis_name``.

    .. math::
        \ell_i = \mathrm{logsumexp}_j(z_{ij}) - (1-\alpha) z_{iy_i}
          - \tfrac{\alpha}{V}\textstyle\sum_j z_{ij},\qquad z = (hW + b)/t

    Call inside :func:`jax.shard_map` with ``h`` and ``labels`` replicated and ``W`` (and
    ``bias``) sharded on the vocabulary axis. Each device walks its own ``V_local`` columns in
    chunks of ``chunk_size`` (never forming even its ``[N, V_local]`` block), then the statistics
    are merged by one ``pmax`` and one ``psum``. Backward: each device recomputes its chunks,
    keeps its ``dW``/``dbias`` slice, and ``dh`` is ``psum``-ed.

    Args:
      h: ``[..., d]`` hidden states, replicated.
      W_local: this device's ``[d, V_local]`` columns of the head.
      labels: global class indices of shape ``h.shape[:-1]``, replicated.
      axis_name: the mesh axis (or tuple of axes) the vocabulary is split over.
      bias_local: optional ``[V_local]`` slice of the bias.
      chunk_size, t, ignore_index, label_smoothing: as in ``linear_cross_entropy``.

    Returns:
      Per-example losses of shape ``labels.shape`` (replicated), in the dtype of ``h @ W``.
    """
    name = "sharded_linear_cross_entropy"
    chunk_size = _lv._check_chunk_size(name, chunk_size)
    h, W, labels, bias, t_arr, ignore, smoothing = _lv._check_linear_args(
        name, h, W_local, labels, bias_local, t, ignore_index, label_smoothing
    )
    h2, W, lab, valid, bias, t_arr, dtype = _lv._prepare_head(h, W, labels, bias, t_arr, ignore)
    loss = _lv._lce(h2, W, bias, t_arr, lab, valid, chunk_size, smoothing, axis_name)
    return loss.reshape(labels.shape).astype(dtype)


# --------------------------------------------------------------------------------------------------
# Validation (everything inside shard_map is traced: shapes and dtypes only).
# --------------------------------------------------------------------------------------------------


def _check_labels(name, labels, batch):
    labels = _checks.as_array(labels, name, "labels")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != tuple(batch):
        raise ValueError(f"{name}: labels of shape {labels.shape} do not match the batch {tuple(batch)}")
    return labels


def _check_common(name, t, label_smoothing, ignore_index):
    # Reuse the linear head's checks on dummy shapes for t, smoothing and ignore_index.
    _, _, _, _, t_arr, ignore, smoothing = _lv._check_linear_args(
        name, jnp.zeros((1,)), jnp.zeros((1, 1)), jnp.zeros((), jnp.int32), None, t,
        ignore_index, label_smoothing,
    )
    return smoothing, t_arr, ignore


def _prepare_t(t):
    if t is None:
        return None
    t = t.astype(jnp.float32)
    return jnp.where((t >= 0) & (t < jnp.inf), t, jnp.nan)
