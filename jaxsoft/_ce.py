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


def mean_z(hm, t):
    """The mean ``z`` of a row, ``2 hm / t``, from ``hm``: the mean of ``x_j / 2 - c / 2``."""
    return hm * 2 if t is None else hm / (rs.safe_t(t) * 0.5)


def row_scale(g, zero_row, nan_row, t, dtype):
    """``g / t`` on rows with a gradient, 0 on the others, NaN on out-of-range labels."""
    scale = g.astype(dtype)
    if t is not None:
        scale = scale / rs.safe_t(t)
    return jnp.where(nan_row, jnp.nan, jnp.where(zero_row, 0, scale))


# --------------------------------------------------------------------------------------------------
# Block statistics for chunked and sharded code: rows (N,), columns in blocks.
# --------------------------------------------------------------------------------------------------


def row_t(t):
    """``t`` as one value per row ``(N,)`` (or a scalar, or ``None``) from ``(N, 1)``."""
    return t if t is None or t.ndim == 0 else t[:, 0]


class CEStats(NamedTuple):
    st: rs.RowStats  # (N, 1) each
    xy: jax.Array  # (N, 1): the label's logit (0 where the label is not in these columns)
    hm: jax.Array | None  # (N, 1): sum_j (x_j/2 - m_f/2) / V, m_f the finite part of st.m
    seen: jax.Array | None  # () or (N, 1): the fraction of the V columns these statistics cover


def ce_empty(n_rows: int, dtype, smoothing: float) -> CEStats:
    zero = jnp.zeros((n_rows, 1), dtype)
    if not smoothing:
        return CEStats(rs.empty((n_rows,), dtype), zero, None, None)
    return CEStats(rs.empty((n_rows,), dtype), zero, zero, jnp.zeros((), dtype))


def ce_block(x, keep, cols, y, t, smoothing: float, inv_n, fresh=None) -> CEStats:
    """Statistics of a block of logits ``x: (N, C)``, excluded columns already ``-inf``.

    ``keep``: ``(C,)``, the columns that count; ``cols``: the block's column indices
    in the numbering of the labels ``y: (N,)``; ``inv_n = 1 / V`` (``V`` the classes that count).
    ``fresh``: the columns not seen in another block, when ``keep`` also drops masked classes: a
    label on a masked class must read its ``-inf`` logit there.
    """
    st = rs.block(x, t)
    onehot = (cols == y[:, None]) & (keep if fresh is None else fresh)
    xy = jnp.sum(jnp.where(onehot, x, 0), axis=-1, keepdims=True)
    if not smoothing:
        return CEStats(st, xy, None, None)
    half_m = rs.finite_or_zero(st.m) * 0.5
    hm = jnp.sum(jnp.where(keep, x * 0.5 - half_m, 0), axis=-1, keepdims=True) * inv_n
    # (): the fraction of columns seen; per row (N, 1) when keep is a per-row mask (N, C).
    seen = jnp.sum(keep, axis=-1, keepdims=keep.ndim == 2, dtype=x.dtype) * inv_n
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
    """Per-row loss ``(N,)``, zero-gradient rows and ``<q, z>`` from merged statistics.

    ``t``: ``None``, a scalar or ``(N, 1)``; ``n_classes``: the classes that count.
    """
    st = cs.st
    hard = rs.hard(st.m, t)[:, 0]
    # a = (x_y - m) / t <= 0: the label's log-weight against the max; -inf when p_y = 0.
    a = rs.log_weight(cs.xy, st, t)[:, 0]
    t = row_t(t)
    log_norm = rs.log_norm(st)[:, 0]
    mz = all_at_max = None
    if smoothing:
        assert cs.hm is not None
        hm = cs.hm[:, 0]
        mz = mean_z(hm, t)
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


# --------------------------------------------------------------------------------------------------
# The language-model head terms on merged statistics (SPEC 8.2, 8.3), for the fused and sharded
# losses: z-loss and the returned log-sum-exp, forward and backward.
# --------------------------------------------------------------------------------------------------


class LMRes(NamedTuple):
    zero_row: jax.Array  # (N,): rows whose cross-entropy has no gradient
    nan_row: jax.Array  # (N,)
    qz: jax.Array  # (N,): <q, z>
    log_z: jax.Array | None  # (N,): lse / t where the z-loss has a gradient, else 0
    z_live: jax.Array | None  # (N,): rows whose z-loss has a gradient


def lm_finish(cs: CEStats, t, smoothing: float, n_incl, labels, n_classes, dead, z_loss: float):
    """``(loss, lse, LMRes)`` per row from merged statistics: the cross-entropy (settled), plus
    ``z_loss * (lse / t)^2`` on the rows that count, and ``lse = t log Z``.

    ``t``: ``None``, a scalar or ``(N, 1)``; ``n_incl``: the classes that count (an int or a
    traced scalar); ``dead``: ``(N,)`` rows that add 0 (ignored, nothing left), or ``None``.
    The z-term has a gradient only where it is a finite function of the logits (``lse`` finite,
    ``t > 0``, the loss finite); at ``t = 0`` it is the limit: ``(log k)^2`` when the max is 0.
    """
    loss, zero_row, qz = ce_finish(cs, t, smoothing, n_incl)
    in_range = (labels >= 0) & (labels < n_classes)
    loss, zero_row, nan_row = settle(loss, zero_row, in_range, dead)
    lse = rs.lse(cs.st, t)[:, 0]
    log_z = z_live = None
    if z_loss:
        tr = row_t(t)
        ok = jnp.isfinite(lse) & (loss < jnp.inf)
        if tr is not None:
            ok = ok & (tr > 0)
        if dead is not None:
            ok = ok & ~dead
        log_z = jnp.where(ok, lse, 0)
        if tr is not None:
            log_z = log_z / rs.safe_t(tr)
        edge = jnp.where(jnp.isnan(lse) | jnp.isnan(loss), jnp.nan, jnp.inf)
        if tr is not None:
            log_k = rs.log_norm(cs.st)[:, 0]  # log k on hard rows
            edge = jnp.where((tr == 0) & (lse == 0), z_loss * jnp.square(log_k), edge)
        term = jnp.where(ok, z_loss * jnp.square(log_z), edge)
        if dead is not None:
            term = jnp.where(dead, 0, term)
        loss = loss + term
        z_live = ok
    return loss, lse, LMRes(zero_row, nan_row, qz, log_z, z_live)


def lm_coeffs(g, g_lse, res: LMRes, t, z_loss: float, dtype):
    """Per-row ``(cp, cq, active, zc)``: a block's logits gradient is ``p cp - q cq`` on the
    ``active`` rows; ``zc = 2 z_loss log Z g`` (``None`` without z-loss)."""
    tr = row_t(t)
    cq = row_scale(g, res.zero_row, res.nan_row, tr, dtype)
    g_lse = g_lse.astype(dtype)
    cp = cq + g_lse
    active = ~res.zero_row | (g_lse != 0)
    zc = None
    if z_loss:
        assert res.log_z is not None and res.z_live is not None
        zc = jnp.where(res.z_live, 2 * z_loss * res.log_z * g.astype(dtype), 0)
        cp = cp + (zc if tr is None else zc / rs.safe_t(tr))
        active = active | res.z_live
    return cp, cq, active, zc


def lm_block_grad(x, keep, cols, y, st: rs.RowStats, cp, cq, active, t, smoothing, inv_n, pz):
    """``d/dx`` of a block, ``p cp - q cq`` (0 off ``keep`` and on inactive rows), and
    ``<p, z>`` per row when ``pz`` (whether the ``t`` derivative is needed) is true."""
    p = rs.probs(x, st, t)
    q = jnp.where((cols == y[:, None]) & keep, 1 - smoothing, 0)
    if smoothing:
        q = q + jnp.where(keep, smoothing * inv_n, 0)
    live = active[:, None] & keep
    # A select, not a product: inactive rows (ignored, +inf loss) may hold NaN or inf in p.
    gx = jnp.where(live, p * cp[:, None] - q * cq[:, None], 0)
    if not pz:
        return gx, None
    return gx, rs.weighted_z(x, jnp.where(live, p, 0), st, t)[:, 0]


def lm_dt(g, g_lse, res: LMRes, pz, st: rs.RowStats, t, zc, per_row: bool):
    """The cotangent of ``t``: per row (``per_row``) or summed, from ``<p, z>`` over the vocabulary.

    ``d CE/dt = -<p - q, z> / t``, ``d lse/dt = H = log_norm - <p, z>``, ``d z-term/dt =
    2 z_loss log Z (H - log Z) / t``.
    """
    ts = rs.safe_t(row_t(t))
    dt = -(pz - res.qz) / ts * g.astype(pz.dtype)
    dt = jnp.where(res.nan_row, jnp.nan, jnp.where(res.zero_row, 0, dt))
    entropy = rs.entropy(st, pz[:, None])[:, 0]
    dt = dt + jnp.where(g_lse != 0, g_lse * entropy, 0)
    if zc is not None:
        assert res.z_live is not None and res.log_z is not None
        dt = dt + jnp.where(res.z_live, zc * (entropy - res.log_z) / ts, 0)
    return dt if per_row else jnp.sum(dt)


def softcap_grad(gx, x_capped, cap):
    """``gx`` through the soft-cap: times ``1 - (x' / c)^2`` (0 at ``-inf``, where ``gx`` is 0)."""
    if cap is None:
        return gx
    return jnp.where(x_capped == NEG_INF, 0, gx * (1 - jnp.square(x_capped / cap)))
