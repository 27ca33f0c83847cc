"""Dense cross-entropy kernels on canonical logits ``x: (*batch, n)`` (classes last).

- :func:`ce_labels` ``(x, labels, t, mask, valid, smoothing) -> (*batch,)``: integer labels, with a
  custom JVP. It forms no ``log_softargmax`` array. The forward pass is one exp-sum per row,
  shifted by the label's own logit: ``CE = log1p(s)``, ``s = sum_{j != y} e^{(x_j - x_y)/t}``,
  exact to a few ulps when the prediction is confident and right (tiny ``s``), where
  ``logsumexp(x) - x_y`` rounds to 0. bf16/f16 logits are upcast inside that pass, never copied.
  Rows it cannot take (``s`` overflows: the label trails the max by more than ~88 t, so the loss
  is large and ``lse - x_y`` loses nothing; +-inf; NaN; ``t = 0``) read ``-log p_y`` from the
  core's exact ``log p``, with no ``[batch, n]`` temporary. Masks, label smoothing on such rows,
  and the JVP (which stores one array of weights for the backward pass, as optax does) use the
  max shift, ``CE = log1p(expm1(a) + r) - a`` with ``a = (x_y - m)/t``,
  ``r = sum_{j != y} e^{(x_j - m)/t}``. All end in the finisher of :mod:`jaxsoft._ce` shared
  with the chunked and sharded losses.
- :func:`ce_probs` ``(x, q, t, mask) -> (*batch,)``: probability targets, built on
  :func:`jaxsoft._core._core`.

Differences of logits go through :func:`jaxsoft._rowstats.zdiff` (no overflow for finite logits of
any size), and a NaN is carried into the row sums explicitly: XLA:CPU's fused max (and minimum)
may drop a NaN on long rows, sums and products do not.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _ce
from jaxsoft import _rowstats as rs
from jaxsoft._core import core as _core
from jaxsoft._core import core_one

NEG_INF = rs.NEG_INF

# f32 holds every class index below this exactly, which the arithmetic label mask relies on.
_EXACT_INDEX = 2**24


def _div_t(a, t):
    return a if t is None else a / rs.safe_t(t)


def _nan_carrier(x, c):
    """0 for every ``x`` (+-inf included) but NaN, which it keeps: added into a fused sum."""
    return 0 * (0.5 / (0.5 + jnp.abs(x - c)))


class _Rows(NamedTuple):
    """Each row's normaliser, in units of a per-row shift ``c``: with ``z_j = (x_j - c) / t``,
    ``p_j = e^{z_j} / norm`` on soft rows and ``[x_j = m] / norm`` on hard rows."""

    c: jax.Array  # (*batch, 1): the shift, finite
    norm: jax.Array  # (*batch, 1): sum_j e^{z_j} over the entries that take part (k on hard rows)
    log_norm: jax.Array  # (*batch,): log(norm), accurate when norm is near 1
    a: jax.Array  # (*batch,): z_y, -inf when the label takes no part
    hard: jax.Array  # (*batch, 1): +inf rows and t = 0 rows, where the argmax takes all the mass


def _off_label(shape, y, dtype):
    """0 on the label's column and >= 1 elsewhere: ``(j - y)**2``.

    Arithmetic rather than ``iota == y`` and a select: XLA:CPU then keeps the whole
    ``sum(exp(z) * min(off_label, 1))`` in one streaming reduction, as it does for optax's plain
    ``sum(exp(z))``; a select there costs a materialised ``[batch, n]`` array.
    """
    return jnp.square(jnp.arange(shape[-1], dtype=dtype) - y[..., None].astype(dtype))


def _taker(y):
    return lambda a: jnp.take_along_axis(a, y[..., None], axis=-1)[..., 0]


def _zero_label(e, y):
    """``e`` with each row's label entry set to 0: a one-element-per-row scatter, in place.

    The reduction over ``e`` is then a plain sum; the JVP adds the label's ``p_y`` back.
    """
    flat = e.reshape(-1, e.shape[-1])
    flat = flat.at[jnp.arange(flat.shape[0]), y.reshape(-1)].set(0, unique_indices=True)
    return flat.reshape(e.shape)


def _general_rows(x, y, t, mask, materialize=False):
    """Shift by the row max: right for every row (masks, +-inf, t = 0, NaN), two passes.

    Returns ``(rows, e)``; with ``materialize`` ``e`` is the weights (``p = e / norm`` off the label; 0 on
    it, where ``p_y = exp(a) / norm``) as one array, which the JVP keeps for the backward pass
    as optax keeps its ``exp``: one ``exp`` per entry in all.
    """
    take = _taker(y)
    if mask is None:
        m = jnp.max(x, axis=-1, keepdims=True)
    else:
        # Not rs.block's -inf fill: masked entries must be able to take the (finite) max below.
        m = jnp.max(jnp.where(mask, x, jnp.finfo(x.dtype).min), axis=-1, keepdims=True)
        # Masked entries take the row max, so nothing below overflows on them.
        x = jnp.where(mask, x, m)
    m_fin = rs.finite_or_zero(m)
    # An all -inf row stays empty and a NaN row stays NaN at t = 0 too: both take the soft path.
    hard = rs.hard(m, t) & (m > NEG_INF)
    hard_row = hard[..., 0]
    ts = rs.safe_t(t)
    x_y = take(x)
    # From the gathered logit, not from z: gathering z would make XLA materialise all of it.
    a = rs.zdiff(x_y, m_fin[..., 0], None if ts is None else ts[..., 0])
    a = rs.hard_limit(x_y, m[..., 0], hard_row, a)
    if mask is not None:
        a = jnp.where(take(mask), a, NEG_INF)
    if materialize:
        # Hard rows: 1 on the entries at the max, 0 elsewhere, by selects in the one array; the
        # selects are only paid for when there is a hard row or a mask.
        def with_selects(_):
            # A NaN entry is not at the max but must stay in the row sum: it marks a NaN row.
            drop = hard & (x != m) & ~jnp.isnan(x)
            if mask is not None:
                drop = drop | ~mask
            keep_z = ~hard | jnp.isnan(x)
            return jnp.where(drop, 0, jnp.exp(jnp.where(keep_z, rs.zdiff(x, m_fin, ts), 0)))

        if mask is None:
            plain = lambda _: jnp.exp(rs.zdiff(x, m_fin, ts))
            e = jax.lax.cond(jnp.any(hard), with_selects, plain, None)
        else:
            e = with_selects(None)
        e = _zero_label(e, y)
        r = jnp.sum(e, axis=-1)
    else:
        e = None
        # Hard rows weigh the entries at the max 1, the others 0; the label is left out.
        z = rs.hard_limit(x, m, hard, rs.zdiff(x, m_fin, ts))
        iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
        others = iota != y[..., None]
        if mask is not None:
            others = others & mask
        r = jnp.sum(jnp.where(others, jnp.exp(z), 0) + _nan_carrier(x, m_fin), axis=-1)
    # log(e^a + r) without rounding a dominant e^a = 1 into the small r.
    log_norm = jnp.log1p(jnp.expm1(a) + r)
    norm = (jnp.exp(a) + r)[..., None]
    return _Rows(m_fin, norm, log_norm, a, hard), e


def _label_shifted(x, y, t, cdt):
    """``(c, dead, z)`` in ``cdt``: the shift ``c`` (the label's logit, ``(*batch, 1)``), the rows
    ``dead`` ``(*batch,)`` whose label sits on a ``-inf`` logit (shifted by 0 instead), and
    ``z = (x - c) / t``.

    The gather reads ``x`` in its own dtype behind a barrier: XLA would otherwise share one
    upcast of a bf16 ``x`` between the gather and the sum, and write that float32 copy to memory
    (jax 0.10.2; measured: a ``[batch, n]`` float32 temporary and a pass).
    """
    x_y = _taker(y)(jax.lax.optimization_barrier(x)).astype(cdt)[..., None]
    dead = x_y == NEG_INF
    c = jnp.where(dead, 0, x_y)
    return c, dead[..., 0], rs.zdiff(x.astype(cdt), c, rs.safe_t(t))


def _fast_ok(s, t):
    """Rows the label shift gets right: ``s`` finite (no overflow, +-inf or NaN) and ``t > 0``."""
    ok = jnp.isfinite(s)
    return ok if t is None else ok & (t[..., 0] > 0)


def _core_rows(xf, y, t) -> _Rows:
    """Any unmasked row from the core's exact ``log p`` at the label: ``CE = -log p_y``.

    Only rows the label shift cannot take come here (``s`` overflows, so the loss exceeds ~88;
    +-inf; NaN; ``t = 0``), where ``lse - x_y`` loses nothing, so the core's ``log p`` (which
    covers every edge: ``-log k`` on a hard row's maxima) serves with ``log_norm = 0``. Where XLA
    fuses the gather into the core's output pass no ``[batch, n]`` array is written (that depends
    on the core kernel's fusions at the shape: see bench/README.md).
    """
    logp_y = _taker(y)(core_one("logp", xf, t, None))
    zero = jnp.zeros_like(logp_y)
    return _Rows(zero[..., None], (zero + 1)[..., None], zero, logp_y, (zero != 0)[..., None])


def _label_rows(x, y, t, mask, smoothing) -> _Rows:
    """Row statistics for the forward pass; ``x`` in its own dtype (bf16 is upcast in the fusion).

    One pass: shift by the label's own logit, so that ``z_y = 0`` and
    ``CE = log(1 + s)``, ``s = sum_{j != y} e^{(x_j - x_y)/t}``, exact for tiny ``s`` and no max
    needed. Rows it cannot take (see :func:`_fast_ok`) take an exact path, which only runs if such
    a row exists.
    """
    cdt = jnp.promote_types(x.dtype, jnp.float32)
    if mask is not None or x.shape[-1] >= _EXACT_INDEX:
        return _general_rows(x.astype(cdt), y, t, mask)[0]
    c, dead, z = _label_shifted(x, y, t, cdt)
    s = jnp.sum(jnp.exp(z) * jnp.minimum(_off_label(x.shape, y, cdt), 1), axis=-1)
    # A label on a -inf logit (a masked vocabulary) has loss +inf, or NaN when s carries a NaN of
    # its row; with the shift 0 the label's own term is e^-inf = 0, so the normaliser is s.
    ok = _fast_ok(jnp.where(dead & ~jnp.isnan(s), 0, s), t)
    norm = jnp.where(dead, s, 1 + s)
    log_norm = jnp.where(dead, jnp.log(jnp.where(dead, s, 1)), jnp.log1p(s))
    a = jnp.where(dead, NEG_INF, 0)
    fast = _Rows(c, norm[..., None], log_norm, a, jnp.zeros_like(c, bool))

    def general(_):
        def row_select(f, g):
            return jnp.where(ok.reshape(ok.shape + (1,) * (f.ndim - ok.ndim)), f, g)

        # The operand is x in its own dtype: a float32 copy made outside would be written to
        # memory for this branch's sake.
        xg = x.astype(cdt)
        # Label smoothing needs the shift and the count of maxima that the core does not return.
        slow = _general_rows(xg, y, t, None)[0] if smoothing else _core_rows(xg, y, t)
        return jax.tree.map(row_select, fast, slow)

    return jax.lax.cond(jnp.all(ok), lambda _: fast, general, None)


def _jvp_rows(x, y, t, mask):
    """``(rows, e)`` for the JVP: ``e`` is ``p * norm`` off the label and 0 on it, one array.

    Shifted by the row max, as optax does: the label shift would save the max pass, but which
    rows it can take is only known from its own sum, and an ``e`` passed through the ``lax.cond``
    that repairs the other rows is copied by XLA (a ``[batch, n]`` temporary and a pass more than
    the max pass costs; jax 0.10.2).
    """
    cdt = jnp.promote_types(x.dtype, jnp.float32)
    return _general_rows(x.astype(cdt), y, t, mask, materialize=True)


class _LabelStats(NamedTuple):
    loss: jax.Array  # (*batch,)
    y: jax.Array  # (*batch,) int32, clipped into range
    rows: _Rows
    zero_row: jax.Array  # (*batch,): rows whose gradient is 0 by convention
    nan_row: jax.Array  # (*batch,): counted rows whose label is out of range
    count: jax.Array | None  # (*batch, 1): included entries per row (label smoothing only)
    e: jax.Array | None  # (*batch, n): p * norm off the label, 0 on it; only for the JVP


def _label_stats(x, labels, t, mask, valid, smoothing, for_jvp=False) -> _LabelStats:
    n = x.shape[-1]
    in_range = (labels >= 0) & (labels < n)
    y = jnp.where(in_range, labels, 0).astype(jnp.int32)
    e = None
    if for_jvp:
        # The backward pass needs p on every entry: one materialised array of weights.
        rows, e = _jvp_rows(x, y, t, mask)
    else:
        rows = _label_rows(x, y, t, mask, smoothing)
    x = x.astype(rows.c.dtype)
    t_row = None if t is None else t[..., 0]
    count = mz = all_at_max = None
    if smoothing:
        count = (
            jnp.full(rows.c.shape, n, x.dtype)
            if mask is None
            else jnp.sum(mask, axis=-1, keepdims=True, dtype=x.dtype)
        )
        # mean_j z_j from halves divided by the count first: no sum of huge logits overflows.
        xs = x if mask is None else jnp.where(mask, x, rows.c)
        hm = jnp.sum((xs * 0.5 - rows.c * 0.5) * (1 / count), axis=-1)
        mz = _ce.mean_z(hm, t_row)
        all_at_max = rows.norm[..., 0] == count[..., 0]
    hard = rows.hard[..., 0]
    loss, zero_row, _ = _ce.finish(rows.log_norm, rows.a, hard, t_row, smoothing, mz, all_at_max)
    # Fully masked rows and ignored rows contribute 0, whatever their logits hold.
    dead = None if mask is None else ~jnp.any(mask, axis=-1)
    if valid is not None:
        dead = ~valid if dead is None else dead | ~valid
    loss, zero_row, nan_row = _ce.settle(loss, zero_row, in_range, dead)
    return _LabelStats(loss, y, rows, zero_row, nan_row, count, e)


@partial(jax.custom_jvp, nondiff_argnums=(5,))
def ce_labels(x, labels, t, mask, valid, smoothing: float = 0.0):
    """Per-example CE for canonical ``x: (*batch, n)`` and ``labels: (*batch,)`` (any int dtype).

    ``t``: ``(*batch, 1)`` or ``None``; ``mask``: ``(*batch, n)`` bool or ``None``; ``valid``:
    ``(*batch,)`` bool or ``None`` (``False`` rows are ignored); ``smoothing``: a static float in
    ``[0, 1]``. Labels out of range give NaN (the public function rejects them when concrete).
    """
    return _label_stats(x, labels, t, mask, valid, smoothing).loss


def _ce_labels_jvp(smoothing, primals, tangents):
    """``dCE = <(p - q) / t, dx> + (H(p) - CE) / t * dt``, O(n), reusing the forward's weights.

    ``q`` is the (smoothed) one-hot target and ``H(p) = log_norm - <p, z>`` the entropy. Rows in
    ``zero_row`` (loss ``+inf``, ``t = 0``, ignored, fully masked) get 0; out-of-range rows NaN.
    The one materialised array ``e`` gives both the normaliser and ``p = e / norm``, so reverse
    mode costs a max pass, one ``exp`` pass, a sum and the gradient pass, like optax's.
    """
    x, labels, t, mask, valid = primals
    dx, _, dt, _, _ = tangents
    # One float32 copy for every pass here: measured to keep the scratch memory at optax's.
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if not rs.is_zero(dx):
        dx = dx.astype(x.dtype)
    st = _label_stats(x, labels, t, mask, valid, smoothing, for_jvp=True)
    rows = st.rows
    assert st.e is not None
    inv_norm = 1 / jnp.where(rows.norm == 0, 1, rows.norm)
    p = st.e * inv_norm
    dloss = jnp.zeros_like(st.loss)
    if not rs.is_zero(dx):
        if mask is not None:
            # Masked entries get no gradient, not even on a NaN row (the transpose of this select).
            dx = jnp.where(mask, dx, 0)
        # w = (p - q) scale with q = (1 - a) onehot(y) + a incl / K; the one-hot part is taken
        # as a gather of dx (a scatter of 1 element per row in reverse mode, as in optax)
        # rather than a [batch, n] comparison. scale is 1/t, 0 on zero_row, NaN on nan_row.
        scale = _div_t(jnp.ones_like(rows.norm), t)
        scale = jnp.where(
            st.zero_row[..., None], 0, jnp.where(st.nan_row[..., None], jnp.nan, scale)
        )
        w = st.e * (inv_norm * scale)
        if smoothing:
            assert st.count is not None
            incl = 1.0 if mask is None else mask.astype(w.dtype)
            w = w - (smoothing * scale / st.count) * incl
        p_y = jnp.exp(rows.a) * inv_norm[..., 0]
        label_w = ((1 - smoothing) - p_y) * scale[..., 0]
        if mask is not None or valid is not None:
            # Ignored and fully masked rows may hold NaN or inf: select rather than scale.
            w = jnp.where(st.zero_row[..., None], 0, w)
            label_w = jnp.where(st.zero_row, 0, label_w)
        dx_y = jnp.take_along_axis(dx, st.y[..., None], axis=-1)[..., 0]
        dloss = dloss + jnp.sum(w * dx, axis=-1, where=mask) - label_w * dx_y
    if t is not None and not rs.is_zero(dt):
        # z = 0 on the kept entries of hard rows; p = 0 on -inf logits, where z is -inf too.
        z = jnp.where(rows.hard, 0, rs.zdiff(x, rows.c, rs.safe_t(t)))
        p_y = jnp.exp(rows.a) * inv_norm[..., 0]
        p_z_y = jnp.where(p_y > 0, p_y * rows.a, 0)
        entropy = rows.log_norm - jnp.sum(jnp.where(p > 0, p * z, 0), axis=-1) - p_z_y
        dce_dt = jnp.where(st.zero_row, 0, _div_t(entropy - st.loss, t[..., 0]))
        dloss = dloss + jnp.where(st.nan_row, jnp.nan, dce_dt) * dt[..., 0]
    return st.loss, dloss


ce_labels.defjvp(_ce_labels_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# Probability targets, built on the shared kernel.
# --------------------------------------------------------------------------------------------------


def _probs_parts(x, q, t, mask):
    out = _core(x, t, mask)
    lse, _, logp = out
    # 0 * log 0 = 0, chosen in the value only: the JVP below keeps d/dq = -log p. Masked entries
    # leave the computation with their targets (SPEC 5.4).
    drop = q == 0 if mask is None else (q == 0) | ~mask
    loss = jnp.sum(jnp.where(drop, 0, -(q * logp)), axis=-1)
    nan_row = jnp.isnan(lse[..., 0])
    # A NaN row is NaN whatever its targets (all-zero ones included).
    loss = jnp.where(nan_row, jnp.nan, loss)
    alive = None if mask is None else jnp.any(mask, axis=-1)
    if alive is not None:
        loss = jnp.where(alive, loss, 0)
    return loss, out, alive, nan_row


@jax.custom_jvp
def ce_probs(x, q, t, mask):
    """Per-example CE ``-sum_i q_i log p_i`` for canonical ``x, q: (*batch, n)``."""
    return _probs_parts(x, q, t, mask)[0]


def _ce_probs_jvp(primals, tangents):
    """``dCE = <(Q p - q) / t, dx> + (Q H(p) - CE) / t * dt - <log p, dq>``, ``Q = sum q``.

    ``log p`` is taken as 0 where it is ``-inf`` (masked and ``-inf`` logits), as
    ``log_softargmax`` treats those entries as constants: the target derivative stays finite.
    A NaN row's derivatives are NaN (at ``t = 0`` too).
    """
    x, q, t, mask = primals
    dx, dq, dt, _ = tangents
    loss, (_, p, logp), alive, nan_row = _probs_parts(x, q, t, mask)
    logp_fin = jnp.where(logp == NEG_INF, 0, logp)
    zero_row = loss == jnp.inf
    if t is not None:
        zero_row = zero_row | (t[..., 0] == 0)
    zero_row = zero_row & ~nan_row
    if alive is not None:
        zero_row = zero_row | ~alive
    qm = q if mask is None else jnp.where(mask, q, 0)
    mass = jnp.sum(qm, axis=-1, keepdims=True)
    dloss = jnp.zeros_like(loss)
    if not rs.is_zero(dx):
        if mask is not None:
            dx = jnp.where(mask, dx, 0)
        w = jnp.where(zero_row[..., None], 0, _div_t(mass * p - qm, t))
        dloss = dloss + jnp.sum(w * dx, axis=-1, where=mask)
    if t is not None and not rs.is_zero(dt):
        entropy = -jnp.sum(p * logp_fin, axis=-1)
        dce_dt = _div_t(mass[..., 0] * entropy - loss, t[..., 0])
        dloss = dloss + jnp.where(zero_row, 0, dce_dt) * dt[..., 0]
    if not rs.is_zero(dq):
        if mask is not None:
            dq = jnp.where(mask, dq, 0)
        g_q = jnp.where(nan_row[..., None], jnp.nan, logp_fin)
        dloss = dloss - jnp.sum(g_q * dq, axis=-1, where=mask)
    return loss, dloss


ce_probs.defjvp(_ce_probs_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# z-loss and the returned log-sum-exp (SPEC 8.2, 8.3), on top of either loss.
# --------------------------------------------------------------------------------------------------


def z_term(x, t, mask, lse, loss, dead, z_loss: float):
    """``z_loss * (lse / t)^2`` per row ``(*batch,)``: ``log Z = lse / t`` the loss's normaliser.

    ``lse``: ``(*batch,)`` from :func:`jaxsoft._core._core` on ``x`` (rows in ``dead`` may hold
    anything: they add 0). Where the term is not a finite function of the logits (``lse`` = +-inf,
    ``t = 0``) or the row's loss is ``+inf``, it gets no gradient, as the loss itself (SPEC 5.4);
    at ``t = 0`` it is the limit ``(m / t + log k)^2``: ``+inf`` unless the max ``m`` is 0.
    """
    t_row = None if t is None else t[..., 0]
    ok = jnp.isfinite(lse) & (jax.lax.stop_gradient(loss) < jnp.inf)
    if t_row is not None:
        ok = ok & (t_row > 0)
    log_z = _div_t(jnp.where(ok, lse, 0), t_row)
    edge = jnp.where(jnp.isnan(lse) | jnp.isnan(loss), jnp.nan, jnp.inf)
    if t_row is not None:
        # t = 0, max 0: log Z -> log k, k the number of maxima (the row's other entries vanish).
        # Counted here (not rs.log_norm): the core's lse comes without a count of maxima.
        at_max = x == lse[..., None]
        if mask is not None:
            at_max = at_max & mask
        log_k = jnp.log(jnp.maximum(jnp.sum(at_max, axis=-1, dtype=x.dtype), 1))
        edge = jnp.where((t_row == 0) & (lse == 0), z_loss * log_k**2, edge)
    term = jnp.where(ok, z_loss * jnp.square(log_z), edge)
    return term if dead is None else jnp.where(dead, 0, term)


def lse_rows(x, t, mask):
    """``(*batch,)`` log-sum-exp of canonical ``x`` (``-inf`` on fully masked rows), differentiable."""
    return _core(x, t, mask)[0][..., 0]
