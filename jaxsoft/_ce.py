"""The integer-label cross-entropy finisher, and its block statistics for chunked and sharded code.

Every integer-label cross-entropy of the library (dense :func:`jaxsoft.cross_entropy`, the fused
:func:`jaxsoft.linear_cross_entropy`, the sharded ones) ends in :func:`finish` and :func:`settle`,
so that they agree on every edge row:

=====================================  ==================  =====================================
row                                    loss                gradient in the logits
=====================================  ==================  =====================================
finite logits                          ``-log p_y``        ``(p - q) / t``, ``q`` the target
label / target weight on a ``p = 0``   ``+inf``            0 for the whole row, never NaN
entry (``-inf`` or masked logit, a
loser of a ``+inf`` or ``t = 0`` row)
every logit masked by ``where``        0                   0
``labels == ignore_index``             0                   0 (even if the row holds NaN)
a NaN logit in the row                 NaN                 NaN on that row only
label out of range (under ``jit``)     NaN                 NaN on that row only
=====================================  ==================  =====================================

The finisher takes a row's normaliser in shift-free form: ``log_norm = log sum_j e^{z_j}`` and the
label's ``a = z_y`` for ``z = (x - c) / t`` with any finite per-row shift ``c`` (the row max, or
the label's own logit in the dense fast path), ``-inf`` when the label takes no part. With label
smoothing ``alpha`` it also takes ``mz``, the mean of ``z`` over the entries that take part.

For chunked and sharded code, :class:`CEStats` carries, besides :class:`jaxsoft._rowstats.RowStats`,
the label's logit and, for smoothing, ``hm = sum_j (x_j / 2 - m / 2) / V`` against the running max
(halves, so that no sum of huge logits overflows: four logits of 1e38 have mean 1e38).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoft import _rowstats as rs

NEG_INF = rs.NEG_INF


def finish(log_norm, a, hard, t, smoothing: float, mz=None, all_at_max=None):
    """Per-row loss ``(*batch,)``, the rows with a zero gradient, and ``<q, z>`` for ``d/dt``.

    ``t``: ``(*batch,)``, a scalar or ``None``. ``mz`` (smoothing only): mean ``z`` over the
    entries that take part, ``-inf`` if one of them is ``-inf``; ``all_at_max`` (smoothing only):
    on hard rows, whether every entry that takes part is at the max.
    """
    row_nan = jnp.isnan(log_norm) | jnp.isnan(a)
    ce_y = jnp.where(a == NEG_INF, jnp.inf, log_norm - a)
    qz = jnp.where(a == NEG_INF, 0, a)
    if smoothing:
        assert mz is not None and all_at_max is not None
        mz = jnp.where(hard, 0, mz)
        # mean_j -log p_j = log_norm - mean_j z_j: +inf once any p_j that takes part is 0.
        uniform = jnp.where(mz == NEG_INF, jnp.inf, log_norm - mz)
        # On a hard row the k maxima have z = 0, the other entries p = 0.
        uniform = jnp.where(hard, jnp.where(all_at_max, log_norm, jnp.inf), uniform)
        loss = uniform if smoothing == 1 else (1 - smoothing) * ce_y + smoothing * uniform
        qz = (1 - smoothing) * qz + smoothing * jnp.where(mz == NEG_INF, 0, mz)
    else:
        loss = ce_y
    loss = jnp.where(row_nan, jnp.nan, loss)
    zero_row = loss == jnp.inf
    if t is not None:
        zero_row = zero_row | ((t == 0) & ~row_nan)
    return loss, zero_row, qz


def settle(loss, zero_row, in_range, dead):
    """Apply the row conventions: dead rows (ignored, fully masked) 0, bad labels NaN.

    Returns ``(loss, zero_row, nan_row)``; ``nan_row``: the rows whose loss is NaN (a NaN logit,
    or a counted label out of range), whose gradients are NaN.
    """
    bad_label = ~in_range
    zero_row = zero_row & in_range
    if dead is not None:
        loss = jnp.where(dead, 0, loss)
        zero_row = zero_row | dead
        bad_label = bad_label & ~dead
    loss = jnp.where(bad_label, jnp.nan, loss)
    nan_row = jnp.isnan(loss)
    return loss, zero_row & ~nan_row, nan_row


def row_scale(g, zero_row, nan_row, t, dtype):
    """``g / t`` on rows with a gradient, 0 on the others, NaN on out-of-range labels."""
    scale = g.astype(dtype)
    if t is not None:
        scale = scale / rs.safe_t(t)
    return jnp.where(nan_row, jnp.nan, jnp.where(zero_row, 0, scale))


# --------------------------------------------------------------------------------------------------
# Block statistics for chunked and sharded code: rows (N,), columns in blocks.
# --------------------------------------------------------------------------------------------------


class CEStats(NamedTuple):
    st: rs.RowStats  # (N, 1) each
    xy: jax.Array  # (N, 1): the label's logit (0 where the label is not in these columns)
    hm: jax.Array | None  # (N, 1): sum_j (x_j/2 - m_f/2) / V, m_f the finite part of st.m
    seen: jax.Array | None  # (): the fraction of the V columns these statistics cover


def ce_empty(n_rows: int, dtype, smoothing: float) -> CEStats:
    zero = jnp.zeros((n_rows, 1), dtype)
    if not smoothing:
        return CEStats(rs.empty((n_rows,), dtype), zero, None, None)
    return CEStats(rs.empty((n_rows,), dtype), zero, zero, jnp.zeros((), dtype))


def ce_block(x, keep, cols, y, t, smoothing: float, inv_n) -> CEStats:
    """Statistics of a block of logits ``x: (N, C)``, excluded columns already ``-inf``.

    ``keep``: ``(C,)``, the columns that count; ``cols``: the block's column indices
    in the numbering of the labels ``y: (N,)``; ``inv_n = 1 / V``.
    """
    st = rs.block(x, t)
    onehot = (cols == y[:, None]) & keep
    xy = jnp.sum(jnp.where(onehot, x, 0), axis=-1, keepdims=True)
    if not smoothing:
        return CEStats(st, xy, None, None)
    half_m = rs.finite_or_zero(st.m) * 0.5
    hm = jnp.sum(jnp.where(keep, x * 0.5 - half_m, 0), axis=-1, keepdims=True) * inv_n
    seen = jnp.sum(keep, dtype=x.dtype) * inv_n
    return CEStats(st, xy, hm, seen)


def _shift_hm(cs: CEStats, m_new):
    """``hm`` of ``cs`` against the max ``m_new``."""
    assert cs.hm is not None and cs.seen is not None
    shift = rs.finite_or_zero(cs.st.m) * 0.5 - rs.finite_or_zero(m_new) * 0.5
    return cs.hm + jnp.where(cs.st.m == m_new, 0, cs.seen * shift)


def ce_combine(a: CEStats, b: CEStats, t) -> CEStats:
    st = rs.combine(a.st, b.st, t)
    if a.hm is None or b.hm is None or a.seen is None or b.seen is None:
        return CEStats(st, a.xy + b.xy, None, None)
    return CEStats(st, a.xy + b.xy, _shift_hm(a, st.m) + _shift_hm(b, st.m), a.seen + b.seen)


def ce_all_reduce(cs: CEStats, axis_name, t) -> CEStats:
    """Merge per-device statistics: one ``pmax``, one ``psum`` (label logit and ``hm`` included)."""
    if cs.hm is None:
        st, xy = rs.all_reduce(cs.st, axis_name, t, cs.xy)
        return CEStats(st, xy, None, None)
    m = lax.pmax(cs.st.m, axis_name)
    k, s = rs.rescale(cs.st, m, t)
    k, s, xy, hm, seen = lax.psum((k, s, cs.xy, _shift_hm(cs, m), cs.seen), axis_name)
    return CEStats(rs.RowStats(m, k, s), xy, hm, seen)


def ce_finish(cs: CEStats, t, smoothing: float, n_classes: int):
    """Per-row loss ``(N,)``, zero-gradient rows and ``<q, z>`` from merged statistics."""
    st = cs.st
    m = st.m[:, 0]
    hard = rs.hard(st.m, t)[:, 0]
    ts = None if t is None else rs.safe_t(t)
    log_norm = rs.log_norm(st, t)[:, 0]
    xy = cs.xy[:, 0]
    # a = (x_y - m) / t <= 0: the label's log-weight against the max; -inf when p_y = 0.
    a = jnp.where(hard, jnp.where(xy == m, 0, NEG_INF), rs.zdiff(xy, rs.finite_or_zero(m), ts))
    a = jnp.where(xy == NEG_INF, NEG_INF, a)
    mz = all_at_max = None
    if smoothing:
        assert cs.hm is not None
        hm = cs.hm[:, 0]
        mz = hm * 2 if ts is None else hm / (ts * 0.5)
        all_at_max = st.k[:, 0] == n_classes
    return finish(log_norm, a, hard, t, smoothing, mz, all_at_max)


def ce_block_grad(x, keep, cols, y, st: rs.RowStats, live, scale, t, smoothing: float, inv_n):
    """``d loss / d x`` for a block, ``(p - q) g / t``, and ``<p, z>`` per row (``None`` at t = 1).

    ``live``: ``(N,)`` rows with a gradient; ``scale``: ``(N,)`` from :func:`row_scale`.
    """
    p = rs.probs(x, st, t)
    q = jnp.where((cols == y[:, None]) & keep, 1 - smoothing, 0)
    if smoothing:
        q = q + jnp.where(keep, smoothing * inv_n, 0)
    # A select, not a product: dead rows (ignored, +inf loss) may hold NaN or inf in p.
    gx = jnp.where(live[:, None], (p - q) * scale[:, None], 0)
    pz = None if t is None else rs.weighted_z(x, jnp.where(live[:, None], p, 0), st, t)[:, 0]
    return gx, pz


def ce_dt(g, zero_row, nan_row, pz, qz, t):
    """``d loss / d t = -<p - q, z> / t`` per row, times the cotangent ``g``; summed over rows."""
    dt_row = -(pz - qz) / rs.safe_t(t) * g.astype(pz.dtype)
    dt_row = jnp.where(nan_row, jnp.nan, jnp.where(zero_row, 0, dt_row))
    return jnp.sum(dt_row)
