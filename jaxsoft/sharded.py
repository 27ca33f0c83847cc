"""Vocabulary-parallel log-sum-exp and cross-entropy, for use inside ``jax.shard_map``.

Each device holds ``V / P`` consecutive classes (columns) of the logits, or of the head ``W``;
device ``i`` along ``axis_name`` holds classes ``[i * V_local, (i + 1) * V_local)``. Every function
computes its local row statistics (:mod:`jaxsoft._rowstats`: the max, the count of entries at
the max, the rescaled sum of the others) and merges them with one ``lax.pmax`` and one
``lax.psum``; the label's logit is a masked local lookup (the label offset by
``axis_index * V_local``) summed with the same ``psum``. No device ever holds more than its own
``[N, V_local]`` block, and only ``O(N)`` numbers cross devices.

Derivatives come from custom rules (a JVP for the log-sum-exp, VJPs for the losses) that are
written in terms of the merged statistics, so ``pmax`` is never differentiated: the result is
invariant to the shift by the max, and treating it as a constant is exact. The gradient in the
local logits is the local slice of ``softargmax - target``; a replicated ``h`` gets the ``psum``
of the per-shard ``dh``. Both ``check_vma=True`` and ``check_vma=False`` give the true gradients,
and ``h``/``labels`` may themselves be sharded over a data axis (a data x vocabulary mesh).
The losses are ``custom_vjp``: reverse mode only (``jax.jvp``/``jax.jacfwd`` raise);
:func:`sharded_logsumexp` is a ``custom_jvp`` and supports both modes.

Example (8 devices, each holding an eighth of the vocabulary)::

    mesh = jax.sharding.Mesh(jax.devices(), ("v",))
    f = jax.jit(jax.shard_map(partial(sharded_cross_entropy, axis_name="v"), mesh=mesh,
                              in_specs=(P(None, "v"), P()), out_specs=P()))
    loss = f(logits, labels)          # logits: [N, V], V divisible by 8
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jaxsoft import _ce, _checks, _linear_ce
from jaxsoft import _chunks as ch
from jaxsoft import _rowstats as rs
from jaxsoft._softcap import check_softcap, softcap
from jaxsoft.reductions import reduce

try:  # jax >= 0.7
    shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map  # noqa: F401


def _local_stats(x, t, mask):
    if mask is not None:
        x = jnp.where(mask, x, rs.NEG_INF)
    return x, rs.block(x, t)


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _sharded_lse(x, t, mask, axis_name):
    _, st = _local_stats(x, t, mask)
    return rs.lse(rs.all_reduce(st, axis_name, t)[0], t)


def _sharded_lse_jvp(axis_name, primals, tangents):
    """``d lse = psum <p_local, dx_local> + H(p) dt``, ``p`` from the merged statistics."""
    x, t, mask = primals
    dx, dt, _ = tangents
    xm, st = _local_stats(x, t, mask)
    st = rs.all_reduce(st, axis_name, t)[0]
    lse = rs.lse(st, t)
    p = rs.probs(xm, st, t)
    dot = jnp.zeros_like(lse)
    if not rs.is_zero(dx):
        # where, not p * dx: a NaN or inf tangent on a masked entry must not reach the sum.
        dot = jnp.sum(p * (dx if mask is None else jnp.where(mask, dx, 0)), axis=-1, keepdims=True)
    with_dt = t is not None and not rs.is_zero(dt)
    pz = rs.weighted_z(xm, p, st, t) if with_dt else jnp.zeros_like(dot)
    dot, pz = lax.psum((dot, pz), axis_name)
    dlse = dot
    if with_dt:
        dlse = dlse + rs.entropy(st, pz) * dt
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
        # Every device has an empty block (the split is even), so the whole axis is empty.
        out = jnp.full(xc.shape[:-1] + (1,), rs.NEG_INF, xc.dtype)
    else:
        out = _sharded_lse(xc, tc, mc, axis_name)
    return layout.reduced_from_canonical(out.astype(out_dtype), keepdims)


# --------------------------------------------------------------------------------------------------
# Cross-entropy on vocabulary-sharded logits.
# --------------------------------------------------------------------------------------------------


class _SOpts(NamedTuple):
    smoothing: float = 0.0
    z_loss: float = 0.0
    cap: float | None = None


def _sce_fwd(x, t, labels, valid, mask, o: _SOpts, axis_name):
    n_local = x.shape[-1]
    n_classes = n_local * lax.axis_size(axis_name)
    y = labels - lax.axis_index(axis_name) * n_local
    cols = jnp.arange(n_local)
    tc = t if t is None or t.ndim == 0 else t[:, None]
    fresh = jnp.ones(n_local, bool)
    xs = softcap(x, o.cap)
    dead = None if valid is None else ~valid
    if mask is None:
        keep, n_incl, inv_n = fresh, n_classes, 1.0 / n_classes
    else:
        keep = mask
        xs = jnp.where(mask, xs, rs.NEG_INF)
        count = lax.psum(jnp.sum(mask, axis=-1, dtype=x.dtype), axis_name)
        n_incl, inv_n = count, (1 / jnp.maximum(count, 1))[:, None]
        dead = (count == 0) if dead is None else dead | (count == 0)
    cs = _ce.ce_block(xs, keep, cols, y, tc, o.smoothing, inv_n, fresh)
    cs = _ce.ce_all_reduce(cs, axis_name, tc)
    loss, lse, lres = _ce.lm_finish(cs, tc, o.smoothing, n_incl, labels, n_classes, dead, o.z_loss)
    return (loss, lse), (xs, t, labels, valid, mask, inv_n, cs.st, lres)


# A custom_vjp for the same reason as jaxsoft._linear_ce: the rule is written against the merged
# statistics, so no collective is ever differentiated.
@partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _sharded_ce(x, t, labels, valid, mask, o: _SOpts, axis_name):
    return _sce_fwd(x, t, labels, valid, mask, o, axis_name)[0]


def _sce_bwd(o: _SOpts, axis_name, res, gs):
    xs, t, labels, valid, mask, inv_n, st, lres = res
    g, g_lse = gs
    n_local = xs.shape[-1]
    y = labels - lax.axis_index(axis_name) * n_local
    tc = t if t is None or t.ndim == 0 else t[:, None]
    typed = ch.typed(xs, axis_name)
    if not typed:
        # shard_map (check_vma=False) divided the replicated cotangent by the axis size.
        g, g_lse = lax.psum((g, g_lse), axis_name)
    cp, cq, active, zc = _ce.lm_coeffs(g, g_lse, lres, tc, o.z_loss, xs.dtype)
    keep = jnp.ones(n_local, bool) if mask is None else mask
    gx, pz = _ce.lm_block_grad(
        xs,
        keep,
        jnp.arange(n_local),
        y,
        st,
        cp,
        cq,
        active,
        tc,
        o.smoothing,
        inv_n,
        t is not None,
    )
    gx = _ce.softcap_grad(gx, xs, o.cap)
    dt = None
    if t is not None:
        dt = _ce.lm_dt(g, g_lse, lres, lax.psum(pz, axis_name), st, tc, zc, t.ndim == 1)
        if not typed:
            dt = dt / lax.axis_size(axis_name)  # shard_map sums t's cotangent over the axis
        dt = ch.reduce_cotangent(dt.astype(t.dtype), t)
    return (
        ch.reduce_cotangent(gx, xs),
        dt,
        _int_zero(labels),
        _int_zero(valid),
        _int_zero(mask),
    )


def _int_zero(a):
    return None if a is None else np.zeros(a.shape, jax.dtypes.float0)


_sharded_ce.defvjp(_sce_fwd, _sce_bwd)


def sharded_cross_entropy(
    logits_local: ArrayLike,
    labels: ArrayLike,
    axis_name,
    *,
    t: ArrayLike = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    where: ArrayLike | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Integer-label cross-entropy when the class axis (last) is split over ``axis_name``.

    .. math::
        \mathrm{CE} = \mathrm{logsumexp}_j(z_j) - (1-\alpha) z_y - \tfrac{\alpha}{V}\textstyle\sum_j z_j,
        \qquad z = x / t

    Call inside :func:`jax.shard_map` with the logits sharded on their last axis over
    ``axis_name`` and the labels replicated over it (rows may be sharded over a data axis). Equal to :func:`jaxsoft.losses.cross_entropy` on the gathered logits (values,
    gradients, edge rows), without gathering them: one ``pmax`` and one ``psum`` of ``O(N)``
    numbers. The label's logit is looked up locally at ``label - axis_index * V_local`` by the
    one device that holds it.

    Args:
      logits_local: this device's ``[..., V_local]`` block of the logits (float).
      labels: global class indices in ``[0, V)``, shape ``logits_local.shape[:-1]``, replicated
        over ``axis_name``.
      axis_name: the mesh axis (or tuple of axes) the classes are split over.
      t: temperature ``>= 0``, a scalar or one per example (shape ``labels.shape``, replicated
        over ``axis_name``); differentiable. ``t = 0`` is the hard argmax.
      label_smoothing: ``alpha`` in ``[0, 1]`` (target ``(1 - alpha) onehot + alpha / K`` over
        the ``K`` classes that ``where`` includes).
      ignore_index: examples with this label get loss 0 and zero gradient.
      where: optional boolean mask of this device's block, as in :func:`jaxsoft.cross_entropy`: an
        element mask with the logits' rank or a per-example one with the labels' rank.
      reduction: ``"none"``, ``"sum"`` or ``"mean"`` over the examples this device holds that
        count (with rows sharded over a data axis, reduce with ``"sum"`` and
        :func:`jaxsoft.count_valid`, then ``psum`` over that axis).
      z_loss, logit_softcap, return_lse: as in :func:`jaxsoft.cross_entropy` (SPEC 8.1-8.3).

    Returns:
      Per-example losses of shape ``labels.shape`` (replicated over ``axis_name``), in the
      logits' float dtype (a scalar when reduced); with ``return_lse`` also the per-example
      ``lse = t log Z``. Labels out of range give NaN (the number of classes is only known
      inside ``shard_map``). Gradients are right under ``check_vma`` True and False; reverse
      mode only (a ``custom_vjp``: ``jax.jvp`` raises).
    """
    name = "sharded_cross_entropy"
    x = _checks.as_array(logits_local, name, "logits")
    if not jnp.issubdtype(x.dtype, jnp.floating) or x.ndim < 1:
        raise TypeError(f"{name}: logits must be a float array with a class axis, got {x.dtype}")
    ignore = _checks.check_ignore_index(name, ignore_index)
    opts = _SOpts(
        _checks.check_smoothing(name, label_smoothing),
        _checks.check_z_loss(name, z_loss),
        check_softcap(name, logit_softcap),
    )
    t_arr = _linear_ce.check_row_temperature(name, t, x.shape[:-1])
    w = _checks.check_loss_where(name, where, x.shape, (x.ndim - 1,))
    reduction = _checks.check_reduction(name, reduction)
    # The number of classes is only known inside shard_map: out-of-range labels give NaN.
    labels = _checks.check_labels(
        name, labels, x.shape[:-1], None, ignore, against=f"logits of shape {x.shape}"
    )
    cdt = _checks.compute_dtype(x.dtype)
    xc = x.reshape(-1, x.shape[-1]).astype(cdt)
    mask = None if w is None else jnp.broadcast_to(w, x.shape).reshape(xc.shape)
    lab = labels.reshape(-1)
    valid = None if ignore is None else lab != ignore
    if t_arr is not None and t_arr.ndim:
        t_arr = t_arr.reshape(-1)
    t_c = _checks.traced_temperature(t_arr, cdt)
    # cast: jax types a custom_vjp call as returning object.
    out = _sharded_ce(xc, t_c, lab, valid, mask, opts, axis_name)
    loss, lse = cast(tuple[jax.Array, jax.Array], out)
    loss = loss.reshape(labels.shape).astype(x.dtype)
    count = None if valid is None else valid.reshape(labels.shape)
    if mask is not None:
        alive = lax.psum(jnp.sum(mask, axis=-1), axis_name).reshape(labels.shape) > 0
        count = alive if count is None else count & alive
    loss = reduce(loss, count, reduction)
    return (loss, lse.reshape(labels.shape).astype(x.dtype)) if return_lse else loss


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
    where_local: ArrayLike | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    return_lse: bool = False,
    weight_layout: str = "dV",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r""":func:`jaxsoft.large_vocab.linear_cross_entropy` with ``W``'s columns split over ``axis_name``.

    .. math::
        \ell_i = \mathrm{logsumexp}_j(z_{ij}) - (1-\alpha) z_{iy_i}
          - \tfrac{\alpha}{V}\textstyle\sum_j z_{ij},\qquad z = (hW + b)/t

    Call inside :func:`jax.shard_map` with ``W`` (and ``bias``) sharded on the vocabulary axis
    over ``axis_name``, and ``h`` and ``labels`` replicated over it: they may be sharded over a
    data axis (a data x vocabulary mesh), whose partial ``dW`` are then summed. Each device walks its own ``V_local`` columns in
    chunks of ``chunk_size`` (never forming even its ``[N, V_local]`` block), then the statistics
    are merged by one ``pmax`` and one ``psum``. Backward: each device recomputes its chunks,
    keeps its ``dW``/``dbias`` slice, and ``dh`` is ``psum``-ed.

    Args:
      h: ``[..., d]`` hidden states, replicated over ``axis_name``.
      W_local: this device's ``[d, V_local]`` columns of the head (``[V_local, d]`` rows with
        ``weight_layout="Vd"``, e.g. a tied embedding sharded over the vocabulary).
      labels: global class indices of shape ``h.shape[:-1]``, replicated over ``axis_name``.
      axis_name: the mesh axis (or tuple of axes) the vocabulary is split over.
      bias_local: optional ``[V_local]`` slice of the bias.
      where_local: optional ``[V_local]`` slice of the boolean vocabulary mask.
      chunk_size, t, ignore_index, label_smoothing, z_loss, logit_softcap, return_lse,
        weight_layout: as in ``linear_cross_entropy`` (``t`` may be one per example, replicated).
      reduction: as in :func:`sharded_cross_entropy` (over this device's rows).

    Returns:
      Per-example losses of shape ``labels.shape`` (replicated over ``axis_name``), in the dtype
      of ``h @ W``; a scalar when reduced; with ``return_lse`` also the per-example ``lse``. Reverse mode only (a ``custom_vjp``), right under ``check_vma`` True and False.
    """
    name = "sharded_linear_cross_entropy"
    va = _linear_ce.check_layout(name, weight_layout)
    opts = _linear_ce.Opts(
        _checks.check_chunk_size(name, chunk_size),
        _checks.check_smoothing(name, label_smoothing),
        _checks.check_z_loss(name, z_loss),
        check_softcap(name, logit_softcap),
        va,
    )
    h, W, bias, vmask = _linear_ce.check_head(
        name, h, W_local, bias_local, what_w="W_local", vocab_axis=va, where=where_local
    )
    ignore = _checks.check_ignore_index(name, ignore_index)
    t_arr = _linear_ce.check_row_temperature(name, t, h.shape[:-1])
    reduction = _checks.check_reduction(name, reduction)
    labels = _checks.check_labels(
        name, labels, h.shape[:-1], None, ignore, against=f"h of shape {h.shape}"
    )
    h2, W, lab, valid, t_arr, dtype = _linear_ce.prepare_head(h, W, labels, t_arr, ignore)
    out = _linear_ce.linear_ce(h2, W, bias, t_arr, lab, valid, vmask, opts, axis_name)
    loss, lse = cast(tuple[jax.Array, jax.Array], out)
    return _linear_ce.finish_head(
        loss, lse, labels, valid, vmask, dtype, reduction, bool(return_lse), axis_name
    )
