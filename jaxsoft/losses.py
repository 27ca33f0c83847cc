"""Cross-entropy losses: integer labels, probability targets, the binary (sigmoid) case.

Every loss returns per-example values (no hidden reduction, like optax); ``reduction="mean"`` or
:func:`mean_over_valid` averages over the examples that count. The kernels work in the canonical
layout of :mod:`jaxsoft._checks` (classes on the last axis, ``(*batch, n)``), so the chunked and
fused variants can reuse them:

- ``_ce_labels(x, labels, t, mask, valid, smoothing)`` -> ``(*batch,)``: integer-label CE with a
  custom JVP. It forms no ``log_softargmax`` array. The forward pass is one exp-sum per row,
  shifted by the label's own logit: ``CE = log1p(s)``, ``s = sum_{j != y} e^{(x_j - x_y)/t}``,
  exact to a few ulps when the prediction is confident and right (tiny ``s``), where
  ``logsumexp(x) - x_y`` rounds to 0. Rows this cannot take (``s`` overflows: the label trails
  the max by more than ~88 t; +-inf; NaN; ``t = 0``; masks) use the max shift,
  ``CE = log1p(expm1(a) + r) - a`` with ``a = (x_y - m)/t``, ``r = sum_{j != y} e^{(x_j - m)/t}``.
  Ties need no count: another entry equal to ``x_y`` or ``m`` adds 1 to ``s`` or ``r``.
  ``_Rows``/``_general_rows`` give the per-row normaliser, the pieces an online (chunked over
  classes) version would carry.
- ``_ce_probs(x, q, t, mask)`` -> ``(*batch,)``: probability-target CE built on
  :func:`jaxsoft._core._core`.

Edge semantics (they match ``-log_softargmax(x)[y]``, SPEC 5 and 6):

=====================================  ==================  =====================================
row                                    loss                gradient in the logits
=====================================  ==================  =====================================
finite logits                          ``-log p_y``        ``(p - q) / t``, ``q`` the target
label / target weight on a ``p = 0``   ``+inf``            0 for the whole row (the loss is
entry (``-inf`` or masked logit, a                         ``+inf`` for every nearby input);
loser of a ``+inf`` or ``t = 0`` row)                      never NaN
every logit masked by ``where``        0                   0
``labels == ignore_index``             0                   0 (even if the row holds NaN)
a NaN logit in the row                 NaN                 NaN on that row only
label out of range (under ``jit``)     NaN                 NaN on that row only
=====================================  ==================  =====================================
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft._core import _core

_NEG_INF = -jnp.inf
_REDUCTIONS = ("none", "mean", "sum")


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _div_t(a: jax.Array, t: jax.Array | None) -> jax.Array:
    return a if t is None else a / jnp.where(t == 0, 1, t)


# --------------------------------------------------------------------------------------------------
# Integer labels: one exp-sum per row forward, one materialised exp for the JVP.
# --------------------------------------------------------------------------------------------------


# f32 holds every class index below this exactly, which the arithmetic label mask relies on.
_EXACT_INDEX = 2**24


class _Rows(NamedTuple):
    """Each row's normaliser, in units of a per-row shift ``c``: with ``z_j = (x_j - c) / t``,
    ``p_j = e^{z_j} / norm`` on soft rows and ``[x_j = m] / norm`` on hard rows."""

    c: jax.Array  # (*batch, 1): the shift, finite
    norm: jax.Array  # (*batch, 1): sum_j e^{z_j} over the entries that take part (k on hard rows)
    log_norm: jax.Array  # (*batch,): log(norm), accurate when norm is near 1
    a: jax.Array  # (*batch,): z_y, -inf when the label takes no part
    hard: jax.Array  # (*batch, 1): +inf rows and t = 0 rows, where the argmax takes all the mass
    m: jax.Array  # (*batch, 1): the row max over the included entries


def _off_label(shape, y, dtype):
    """0 on the label's column and >= 1 elsewhere: ``(j - y)**2``.

    Arithmetic rather than ``iota == y`` and a select: XLA:CPU then keeps the whole
    ``sum(exp(z) * min(off_label, 1))`` in one streaming reduction, as it does for optax's plain
    ``sum(exp(z))``; a select there costs a materialised ``[batch, n]`` array.
    """
    return jnp.square(jnp.arange(shape[-1], dtype=dtype) - y[..., None].astype(dtype))


def _drop_label(e, y):
    """``e`` with the label's entry set to 0, for ``e <= 1``."""
    if e.shape[-1] < _EXACT_INDEX:
        # min(e, (j - y)**2): e off the label (where the square is >= 1), 0 on it.
        return jnp.minimum(e, _off_label(e.shape, y, e.dtype))
    iota = jax.lax.broadcasted_iota(jnp.int32, e.shape, e.ndim - 1)
    return jnp.where(iota == y[..., None], 0, e)


def _sum_others(e, y, mask):
    """``sum_{j != y} e_j`` over the included entries, for ``e <= 1`` (a max shift)."""
    if mask is None:
        return jnp.sum(_drop_label(e, y), axis=-1)
    iota = jax.lax.broadcasted_iota(jnp.int32, e.shape, e.ndim - 1)
    return jnp.sum(jnp.where((iota != y[..., None]) & mask, e, 0), axis=-1)


def _general_rows(x, y, t, mask, take, materialize=False):
    """Shift by the row max: right for every row (masks, +-inf, t = 0, NaN), two passes.

    With ``materialize`` also returns the weights ``e`` (``p = e / norm`` off the label; 0 on
    it, where ``p_y = exp(a) / norm``) as one array, which the JVP keeps for the backward pass
    as optax keeps its ``exp``: one ``exp`` per entry in all.
    """
    if mask is None:
        m = jnp.max(x, axis=-1, keepdims=True)
    else:
        m = jnp.max(jnp.where(mask, x, jnp.finfo(x.dtype).min), axis=-1, keepdims=True)
        # Masked entries take the row max, so nothing below overflows on them.
        x = jnp.where(mask, x, m)
    m_fin = jnp.where(jnp.isfinite(m), m, 0)
    hard = m == jnp.inf
    if t is not None:
        # An all -inf row stays empty and a NaN row stays NaN at t = 0 too: both take the soft path.
        hard = hard | ((t == 0) & jnp.isfinite(m))
    hard_row = hard[..., 0]
    x_y = take(x)
    keep_y = ~hard_row | (x_y == m[..., 0])
    if mask is not None:
        keep_y = keep_y & take(mask)
    # From the gathered logit, not from z: gathering z would make XLA materialise all of it.
    a = _div_t(x_y - m_fin[..., 0], None if t is None else t[..., 0])
    a = jnp.where(keep_y, jnp.where(hard_row, 0, a), _NEG_INF)
    if materialize:
        # Hard rows: 1 on the entries at the max, 0 elsewhere, by selects in the one array; the
        # selects are only paid for when there is a hard row or a mask.
        def with_selects(_):
            drop = hard & (x != m)
            if mask is not None:
                drop = drop | ~mask
            return jnp.where(drop, 0, jnp.exp(jnp.where(hard, 0, _div_t(x - m_fin, t))))

        if mask is None:
            plain = lambda _: jnp.exp(_div_t(x - m_fin, t))  # noqa: E731
            e = jax.lax.cond(jnp.any(hard), with_selects, plain, None)
        else:
            e = with_selects(None)
        # The label's entry is zeroed by a one-element-per-row scatter into this array (in
        # place), so that the reduction is a plain sum; the JVP adds the label's p_y back.
        flat = e.reshape(-1, e.shape[-1])
        flat = flat.at[jnp.arange(flat.shape[0]), y.reshape(-1)].set(0, unique_indices=True)
        e = flat.reshape(e.shape)
        r = jnp.sum(e, axis=-1)
    else:
        e = None
        r = _sum_others(jnp.exp(_div_t(x - m_fin, t)), y, mask)

        # Hard rows: each of the k entries at the max has weight 1, the rest 0. Counting them
        # takes a pass that only runs when such a row exists.
        def count_max(_):
            at_max = x == m if mask is None else (x == m) & mask
            return jnp.sum(at_max, axis=-1, dtype=x.dtype)

        k = jax.lax.cond(jnp.any(hard), count_max, lambda _: jnp.zeros(r.shape, x.dtype), None)
        r = jnp.where(hard_row, k - keep_y.astype(x.dtype), r)
    # log(e^a + r) without rounding a dominant e^a = 1 into the small r.
    log_norm = jnp.log1p(jnp.expm1(a) + r)
    norm = (jnp.exp(a) + r)[..., None]
    rows = _Rows(m_fin, norm, log_norm, a, hard, m)
    return (rows, e) if materialize else rows


def _label_rows(x, y, t, mask) -> _Rows:
    """Row stats for the forward pass."""
    take = _taker(y)
    if mask is not None or x.shape[-1] >= _EXACT_INDEX:
        return _general_rows(x, y, t, mask, take)
    # One pass: shift by the label's own logit, so that z_y = 0 and
    # CE = log(1 + s), s = sum_{j != y} e^{(x_j - x_y)/t}, exact for tiny s and no max needed.
    # A row where s overflows (the label trails the max by more than ~88 t in float32) or is
    # not finite (+-inf, NaN, t = 0) takes the general path, which only runs if such a row exists.
    x_y = take(x)[..., None]
    e = jnp.exp(_div_t(x - x_y, t)) * jnp.minimum(_off_label(x.shape, y, x.dtype), 1)
    s = jnp.sum(e, axis=-1)
    ok = jnp.isfinite(s)
    if t is not None:
        ok = ok & (t[..., 0] > 0)
    zero = jnp.zeros_like(s)
    fast = _Rows(x_y, (1 + s)[..., None], jnp.log1p(s), zero, jnp.zeros_like(x_y, bool), x_y)

    def general(_):
        def row_select(f, g):
            return jnp.where(ok.reshape(ok.shape + (1,) * (f.ndim - ok.ndim)), f, g)

        return jax.tree.map(row_select, fast, _general_rows(x, y, t, None, take))

    return jax.lax.cond(jnp.all(ok), lambda _: fast, general, None)


def _taker(y):
    return lambda a: jnp.take_along_axis(a, y[..., None], axis=-1)[..., 0]


class _LabelStats(NamedTuple):
    loss: jax.Array  # (*batch,)
    y: jax.Array  # (*batch,) int32, clipped into range
    rows: _Rows
    zero_row: jax.Array  # (*batch,): rows whose gradient is 0 by convention
    nan_row: jax.Array  # (*batch,): valid rows whose label is out of range
    count: jax.Array | None  # (*batch, 1): included entries per row (label smoothing only)
    e: jax.Array | None  # (*batch, n): p * norm off the label, 0 on it; only for the JVP


def _label_stats(x, labels, t, mask, valid, smoothing, for_jvp=False) -> _LabelStats:
    n = x.shape[-1]
    in_range = (labels >= 0) & (labels < n)
    y = jnp.where(in_range, labels, 0).astype(jnp.int32)
    e = None
    if for_jvp:
        # The backward pass needs p on every entry, so here the max shift's one materialised
        # array of weights serves all rows (a max pass is cheap next to the exp).
        rows, e = _general_rows(x, y, t, mask, _taker(y), materialize=True)
    else:
        rows = _label_rows(x, y, t, mask)
    ce_y = jnp.where(rows.a == _NEG_INF, jnp.inf, rows.log_norm - rows.a)
    count = None
    if smoothing:
        count = (
            jnp.full(rows.c.shape, n, x.dtype)
            if mask is None
            else jnp.sum(mask, axis=-1, keepdims=True, dtype=x.dtype)
        )
        # mean_i -log p_i = log_norm - mean_i z_i, +inf once any included p_i is 0.
        xs = x if mask is None else jnp.where(mask, x, rows.c)
        z_sum = jnp.sum(_div_t(xs - rows.c, t), axis=-1)
        soft = jnp.where(z_sum == _NEG_INF, jnp.inf, rows.log_norm - z_sum / count[..., 0])
        # On a hard row the k entries at the max have z = 0 and the others p = 0.
        all_kept = rows.norm[..., 0] == count[..., 0]
        uniform = jnp.where(rows.hard[..., 0], jnp.where(all_kept, rows.log_norm, jnp.inf), soft)
        loss = (
            smoothing * uniform if smoothing == 1 else (1 - smoothing) * ce_y + smoothing * uniform
        )
    else:
        loss = ce_y
    zero_row = loss == jnp.inf
    if t is not None:
        zero_row = zero_row | ((t[..., 0] == 0) & ~jnp.isnan(loss))
    nan_row = ~in_range
    # Fully masked rows and ignored rows contribute 0, whatever their logits hold.
    dead = None if mask is None else ~jnp.any(mask, axis=-1)
    if valid is not None:
        dead = ~valid if dead is None else dead | ~valid
    if dead is not None:
        loss = jnp.where(dead, 0, loss)
        zero_row = zero_row | dead
        nan_row = nan_row & ~dead
    loss = jnp.where(nan_row, jnp.nan, loss)
    return _LabelStats(loss, y, rows, zero_row, nan_row, count, e)


@partial(jax.custom_jvp, nondiff_argnums=(5,))
def _ce_labels(x, labels, t, mask, valid, smoothing: float = 0.0):
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
    st = _label_stats(x, labels, t, mask, valid, smoothing, for_jvp=True)
    rows = st.rows
    inv_norm = 1 / jnp.where(rows.norm == 0, 1, rows.norm)
    p = st.e * inv_norm
    dloss = jnp.zeros_like(st.loss)
    if not _is_zero(dx):
        # w = (p - q) scale with q = (1 - a) onehot(y) + a incl / K; the one-hot part is taken
        # as a gather of dx (a scatter of 1 element per row in reverse mode, as in optax)
        # rather than a [batch, n] comparison. scale is 1/t, 0 on zero_row, NaN on nan_row.
        scale = _div_t(jnp.ones_like(rows.norm), t)
        scale = jnp.where(
            st.zero_row[..., None], 0, jnp.where(st.nan_row[..., None], jnp.nan, scale)
        )
        w = st.e * (inv_norm * scale)
        if smoothing:
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
    if t is not None and not _is_zero(dt):
        # z = 0 on the kept entries of hard rows; p = 0 on -inf logits, where z is -inf too.
        z = jnp.where(rows.hard, 0, _div_t(x - rows.c, t))
        p_y = jnp.exp(rows.a) * inv_norm[..., 0]
        p_z_y = jnp.where(p_y > 0, p_y * rows.a, 0)
        entropy = rows.log_norm - jnp.sum(jnp.where(p > 0, p * z, 0), axis=-1) - p_z_y
        dce_dt = jnp.where(st.zero_row, 0, _div_t(entropy - st.loss, t[..., 0]))
        dloss = dloss + jnp.where(st.nan_row, jnp.nan, dce_dt) * dt[..., 0]
    return st.loss, dloss


_ce_labels.defjvp(_ce_labels_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# Probability targets, built on the shared kernel.
# --------------------------------------------------------------------------------------------------


def _probs_parts(x, q, t, mask):
    out = _core(x, t, mask)
    logp = out[2]
    # 0 * log 0 = 0, chosen in the value only: the JVP below keeps d/dq = -log p.
    loss = -jnp.sum(jnp.where(q == 0, 0, q * logp), axis=-1)
    alive = None if mask is None else jnp.any(mask, axis=-1)
    if alive is not None:
        loss = jnp.where(alive, loss, 0)
    return loss, out, alive


@jax.custom_jvp
def _ce_probs(x, q, t, mask):
    """Per-example CE ``-sum_i q_i log p_i`` for canonical ``x, q: (*batch, n)``."""
    return _probs_parts(x, q, t, mask)[0]


def _ce_probs_jvp(primals, tangents):
    """``dCE = <(Q p - q) / t, dx> + (Q H(p) - CE) / t * dt - <log p, dq>``, ``Q = sum q``.

    ``log p`` is taken as 0 where it is ``-inf`` (masked and ``-inf`` logits), as
    ``log_softargmax`` treats those entries as constants: the target derivative stays finite.
    """
    x, q, t, mask = primals
    dx, dq, dt, _ = tangents
    loss, (_, p, logp), alive = _probs_parts(x, q, t, mask)
    logp_fin = jnp.where(logp == _NEG_INF, 0, logp)
    zero_row = loss == jnp.inf
    if t is not None:
        zero_row = zero_row | (t[..., 0] == 0)
    if alive is not None:
        zero_row = zero_row | ~alive
    mass = jnp.sum(q, axis=-1, keepdims=True, where=mask)
    dloss = jnp.zeros_like(loss)
    if not _is_zero(dx):
        w = jnp.where(zero_row[..., None], 0, _div_t(mass * p - q, t))
        dloss = dloss + jnp.sum(w * dx, axis=-1, where=mask)
    if t is not None and not _is_zero(dt):
        entropy = -jnp.sum(p * logp_fin, axis=-1)
        dce_dt = _div_t(mass[..., 0] * entropy - loss, t[..., 0])
        dloss = dloss + jnp.where(zero_row, 0, dce_dt) * dt[..., 0]
    if not _is_zero(dq):
        dloss = dloss - jnp.sum(logp_fin * dq, axis=-1, where=mask)
    return loss, dloss


_ce_probs.defjvp(_ce_probs_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# Reductions and validation.
# --------------------------------------------------------------------------------------------------


def mean_over_valid(losses: ArrayLike, valid: ArrayLike | None = None) -> jax.Array:
    r"""Mean of ``losses`` over the entries where ``valid`` is true; 0 when none is.

    .. math::
        \frac{\sum_i [v_i]\,\ell_i}{\max(1, \sum_i [v_i])}

    Invalid entries are left out of both sums, so a NaN or ``inf`` there changes nothing and gets a
    zero gradient. Use it with ``labels != ignore_index`` (what ``reduction="mean"`` does).

    Args:
      losses: per-example losses of any shape, e.g. ``[batch_size]``.
      valid: boolean array broadcastable to ``losses.shape``, or ``None`` for a plain mean.

    Returns:
      A scalar array in ``losses``' dtype.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> float(jaxsoft.mean_over_valid(jnp.array([1.0, jnp.nan, 3.0]),
      ...                               jnp.array([True, False, True])))
      2.0
    """
    losses = _checks.as_array(losses, "mean_over_valid", "losses")
    if valid is not None:
        valid = _checks.check_where(valid, losses.shape, "mean_over_valid")
    return _mean_over_valid(losses, valid)


@jax.jit
def _mean_over_valid(losses, valid):
    if valid is None:
        return jnp.mean(losses)
    valid = jnp.broadcast_to(valid, losses.shape)
    n = jnp.sum(valid, dtype=losses.dtype)
    return jnp.sum(losses, where=valid) / jnp.maximum(n, 1)


def _reduce(loss: jax.Array, valid: jax.Array | None, reduction: str) -> jax.Array:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    return _mean_over_valid(loss, valid)


def _check_reduction(name: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _check_labels(name, labels, shape, axes, n, ignore_index) -> jax.Array:
    labels = _checks.as_array(labels, name, "labels")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"{name}: labels must be integer class indices, got dtype {labels.dtype}; "
            "for one-hot or probability targets use cross_entropy_with_probs"
        )
    batch = tuple(s for i, s in enumerate(shape) if i not in axes)
    if labels.shape != batch:
        raise ValueError(
            f"{name}: labels of shape {labels.shape} do not match logits of shape {tuple(shape)}: "
            f"expected {batch} (the logits' shape without axis {axes})"
        )
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
    ):
        raise TypeError(f"{name}: ignore_index must be an int or None, got {ignore_index!r}")
    if ignore_index is not None and not -(2**31) <= ignore_index < 2**31:
        raise ValueError(f"{name}: ignore_index must fit in int32, got {ignore_index}")
    if n == 0:
        raise ValueError(f"{name}: logits of shape {tuple(shape)} have no classes along {axes}")
    # Only concrete labels can be checked here; traced ones that are out of range give NaN.
    if _checks._is_concrete(labels) and labels.size:
        lab = np.asarray(labels)
        bad = (lab < 0) | (lab >= n)
        if ignore_index is not None:
            bad &= lab != ignore_index
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name}: labels must lie in [0, {n}) or equal ignore_index={ignore_index}; "
                f"got {lab[idx]} at index {idx}"
            )
    return labels


def _labels_int32(labels: jax.Array) -> jax.Array:
    info = jnp.iinfo(labels.dtype)
    if info.min >= -(2**31) and info.max < 2**31:
        return labels.astype(jnp.int32)
    # Saturate: a label beyond int32 is out of range anyway (no axis has 2**31 - 1 classes), and
    # stays so after the cast instead of wrapping into range.
    lo = np.array(max(int(info.min), -(2**31)), labels.dtype)
    hi = np.array(min(int(info.max), 2**31 - 1), labels.dtype)
    return jnp.clip(labels, lo, hi).astype(jnp.int32)


def _check_smoothing(name: str, smoothing) -> float:
    if isinstance(smoothing, bool) or not isinstance(
        smoothing, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name}: label_smoothing must be a Python float, got {smoothing!r}")
    smoothing = float(smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must lie in [0, 1], got {smoothing}")
    return smoothing


# --------------------------------------------------------------------------------------------------
# Public losses.
# --------------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("axes", "smoothing", "ignore_index", "reduction"))
def _cross_entropy(x, labels, t, where, *, axes, smoothing, ignore_index, reduction):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "cross_entropy")
    labels = _labels_int32(labels)
    valid = None if ignore_index is None else labels != ignore_index
    loss = _ce_labels(xc, labels, tc, mc, valid, smoothing).astype(out_dtype)
    if reduction == "mean" and mc is not None:
        alive = jnp.any(mc, axis=-1)
        valid = alive if valid is None else valid & alive
    return _reduce(loss, valid, reduction)


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: _checks.Axis = -1,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    reduction: str = "none",
) -> jax.Array:
    r"""Softmax cross-entropy with integer labels, exact for confident predictions.

    .. math::
        \mathrm{CE}(x, y) = -\log \mathrm{softargmax}_t(x)_y
        = \mathrm{log1p}\Big(\mathrm{expm1}(a) + \sum_{j \ne y} e^{(x_j - m)/t}\Big) - a,
        \quad a = \frac{x_y - m}{t},\ m = \max x

    With label smoothing ``alpha`` the target is ``(1 - alpha) onehot(y) + alpha / K`` over the
    ``K`` entries that ``where`` includes. The gradient in the logits is ``(softargmax_t(x) -
    target) / t``; the derivative in ``t`` is ``(H(p) - CE) / t`` (``H`` the entropy of ``p``).
    For a confident correct prediction the loss is tiny and kept to a few ulps (``log1p`` of the
    other terms), where ``logsumexp(x) - x_y`` (optax) rounds it to 0 in float32.

    Args:
      logits: ``[..., num_classes]`` floats (ints promote; bf16/f16 computed in float32).
      labels: integer class indices of shape ``logits.shape`` without ``axis``, e.g.
        ``[batch_size]``. With a tuple ``axis`` a label is the flat index over those axes in the
        order given (as optax). Float labels raise ``TypeError`` (see
        :func:`cross_entropy_with_probs`); out-of-range labels raise ``ValueError`` when concrete.
        Under ``jit`` they cannot be checked: such a row's loss and gradient are NaN.
      axis: int or tuple of ints: the class axes. Default ``-1``.
      t: temperature ``>= 0``: scalar or one per example; differentiable. ``t = 0`` is the hard
        argmax (loss ``log k`` on one of ``k`` tied maxima, else ``+inf``; zero gradient).
      where: optional boolean mask broadcastable to ``logits.shape``; masked classes are left out.
        A row with no class left has loss 0 and zero gradient.
      label_smoothing: ``alpha`` in ``[0, 1]`` (a Python float). Non-zero smoothing puts weight on
        every included class, so a ``-inf`` logit gives ``+inf``: exclude such classes with
        ``where``.
      ignore_index: examples whose label equals it get loss 0 and zero gradient (NaN logits
        included), and ``reduction="mean"`` leaves them out.
      reduction: ``"none"`` (default: per-example losses), ``"sum"``, or ``"mean"`` over the
        examples that are neither ignored nor fully masked (:func:`mean_over_valid`).

    Returns:
      Losses of shape ``labels.shape`` (a scalar when reduced), in the logits' float dtype.

    Edges: a label on a ``-inf`` or masked logit (or on a loser of a ``+inf`` row) gives ``+inf``
    with a zero gradient for the whole row: the loss is ``+inf`` for all nearby logits, so no
    direction changes it, and nothing is NaN. A NaN logit makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> [round(float(v), 4) for v in jaxsoft.cross_entropy(logits, jnp.array([0, 1]))]
      [0.2761, 2.9518]
      >>> float(jaxsoft.cross_entropy(jnp.array([20.0, 0.0]), jnp.array(0)))  # optax: 0.0
      2.0611536e-09
      >>> [round(float(v), 4) for v in jaxsoft.cross_entropy(logits, jnp.array([0, -100]),
      ...                                                     ignore_index=-100)]
      [0.2761, 0.0]

    .. seealso:: :func:`cross_entropy_with_probs` for probability (or one-hot) targets,
       :func:`sigmoid_cross_entropy` for independent binary labels.
    """
    name = "cross_entropy"
    x, t_arr, w, axes = _checks.prepare(name, logits, axis, t, where)
    n = int(np.prod([x.shape[a] for a in axes]))
    labels = _check_labels(name, labels, x.shape, axes, n, ignore_index)
    smoothing = _check_smoothing(name, label_smoothing)
    _check_reduction(name, reduction)
    ignore = None if ignore_index is None else int(ignore_index)
    return _cross_entropy(
        x,
        labels,
        t_arr,
        w,
        axes=axes,
        smoothing=smoothing,
        ignore_index=ignore,
        reduction=reduction,
    )


@partial(jax.jit, static_argnames=("axes", "reduction"))
def _cross_entropy_with_probs(x, q, t, where, *, axes, reduction):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(
        x, t, where, axes, "cross_entropy_with_probs"
    )
    qc = layout.to_canonical(jnp.broadcast_to(q, x.shape).astype(xc.dtype))
    if layout.n == 0:
        loss = jnp.zeros(layout.batch, out_dtype)
    else:
        loss = _ce_probs(xc, qc, tc, mc).astype(out_dtype)
    valid = None if mc is None else jnp.any(mc, axis=-1)
    return _reduce(loss, valid, reduction)


def cross_entropy_with_probs(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    axis: _checks.Axis = -1,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
    r"""Softmax cross-entropy against probability (or one-hot) targets, with ``0 log 0 = 0``.

    .. math::
        \mathrm{CE}(x, q) = -\sum_i q_i \log \mathrm{softargmax}_t(x)_i

    ``log p`` comes from the ``log1p``-accurate :func:`log_softargmax`, so one-hot targets give the
    same exact tiny losses as :func:`cross_entropy`. Gradients: ``(Q p - q) / t`` in the logits
    (``Q = sum_i q_i``, 1 for a distribution), ``-log p_i`` in the targets (SPEC 5.3: finite
    wherever ``p_i > 0``; the ``0 log 0 = 0`` convention does not zero it), and
    ``(Q H(p) - CE) / t`` in ``t``.

    Args:
      logits: ``[..., num_classes]`` floats (ints promote; bf16/f16 computed in float32).
      targets: weights broadcastable to ``logits.shape``, usually rows that sum to 1 over
        ``axis``. Differentiable.
      axis: int or tuple of ints: the class axes. Default ``-1``.
      t: temperature ``>= 0``: scalar or one per example; differentiable.
      where: optional boolean mask broadcastable to ``logits.shape``; masked classes are left
        out. A row with no class left has loss 0 and zero gradients.
      reduction: ``"none"`` (default), ``"sum"``, or ``"mean"`` over the rows that are not fully
        masked.

    Returns:
      Losses of shape ``logits.shape`` without ``axis``, in the logits' float dtype.

    Edges: a positive weight on a ``-inf`` or masked logit gives ``+inf`` with a zero logits
    gradient for the row. Where ``p_i = 0`` (masked or ``-inf`` logits) the target gradient is 0,
    as ``log_softargmax`` treats those entries as constants, so a target that is itself 0 there
    (a teacher's softargmax with the same mask) backpropagates without NaN; the true one-sided
    derivative there is ``+inf``. A NaN logit makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> targets = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> [round(float(v), 4) for v in jaxsoft.cross_entropy_with_probs(logits, targets)]
      [0.2761, 2.9518]
      >>> float(jaxsoft.cross_entropy_with_probs(jnp.array([0.0, -jnp.inf]), jnp.array([1.0, 0.0])))
      0.0

    .. seealso:: :func:`cross_entropy` for integer labels (faster: no ``[batch, n]`` targets).
    """
    name = "cross_entropy_with_probs"
    x, t_arr, w, axes = _checks.prepare(name, logits, axis, t, where)
    q = _checks.as_array(targets, name, "targets")
    if not (jnp.issubdtype(q.dtype, jnp.number) or q.dtype == jnp.bool_) or jnp.issubdtype(
        q.dtype, jnp.complexfloating
    ):
        raise TypeError(f"{name}: targets must be real numbers, got dtype {q.dtype}")
    try:
        ok = np.broadcast_shapes(q.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: targets of shape {q.shape} do not broadcast to logits of shape {x.shape}"
        )
    _check_reduction(name, reduction)
    return _cross_entropy_with_probs(x, q, t_arr, w, axes=axes, reduction=reduction)


# --------------------------------------------------------------------------------------------------
# The binary case.
# --------------------------------------------------------------------------------------------------


def _softplus(x: jax.Array) -> jax.Array:
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, and exact for large negative x.
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@jax.custom_jvp
def _sigmoid_ce(x, y):
    # 0 * inf = 0: a zero weight on an impossible outcome costs nothing.
    pos = jnp.where(y == 0, 0, y * _softplus(-x))
    neg = jnp.where(y == 1, 0, (1 - y) * _softplus(x))
    return pos + neg


def _sigmoid_ce_jvp(primals, tangents):
    """``d loss = (sigmoid(x) - y) dx - x dy``: 2-class ``(p - q)`` and ``-log p_0 + log p_1``."""
    x, y = primals
    dx, dy = tangents
    loss = _sigmoid_ce(x, y)
    # The same conventions as the softargmax CE: no logits gradient on a +inf loss, and the target
    # derivative is finite (0 at x = +-inf, where one of the two probabilities is 0).
    w = jnp.where(loss == jnp.inf, 0, jax.nn.sigmoid(x) - y)
    return loss, w * dx - jnp.where(jnp.isinf(x), 0, x) * dy


_sigmoid_ce.defjvp(_sigmoid_ce_jvp)


def sigmoid_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""Element-wise binary cross-entropy on logits: the 2-class softargmax CE (SPEC 1.4).

    .. math::
        \ell(x, y) = -y \log \sigma(x) - (1 - y) \log(1 - \sigma(x))
        = y\,\mathrm{softplus}(-x) + (1 - y)\,\mathrm{softplus}(x)

    Equal to ``cross_entropy_with_probs([x, 0], [y, 1 - y])`` (``softargmax([x, 0])_0 =
    sigmoid(x)``), in values and gradients: ``sigmoid(x) - y`` in the logits, ``-x`` in the
    labels. Stable for any ``|x|``: ``softplus`` never overflows and a confident correct
    prediction keeps its tiny loss (``softplus(-20) = 2.06e-9``, not 0).

    Args:
      logits: float array of any shape (ints promote).
      labels: targets in ``[0, 1]`` (bool, int or float) broadcastable to ``logits.shape``.

    Returns:
      Losses of the broadcast shape, in the logits' float dtype.

    Edges: ``x = +-inf`` gives 0 when the label agrees (``y = 1`` resp. ``0``), ``+inf`` (zero
    gradient) when a positive weight sits on the impossible side; NaN stays NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> jaxsoft.sigmoid_cross_entropy(jnp.array([20.0, 0.0, -jnp.inf]), jnp.array([1, 1, 0]))
      Array([2.0611537e-09, 6.9314718e-01, 0.0000000e+00], dtype=float32)
    """
    name = "sigmoid_cross_entropy"
    x = _checks.as_array(logits, name)
    dtype = _checks.result_dtype(x, name)
    y = _checks.as_array(labels, name, "labels")
    if not (jnp.issubdtype(y.dtype, jnp.number) or y.dtype == jnp.bool_) or jnp.issubdtype(
        y.dtype, jnp.complexfloating
    ):
        raise TypeError(f"{name}: labels must be real numbers in [0, 1], got dtype {y.dtype}")
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
    except ValueError:
        raise ValueError(
            f"{name}: labels of shape {y.shape} do not broadcast with logits of shape {x.shape}"
        ) from None
    return _sigmoid_apply(x, y, shape=tuple(shape), dtype=np.dtype(dtype))


@partial(jax.jit, static_argnames=("shape", "dtype"))
def _sigmoid_apply(x, y, *, shape, dtype):
    cdt = _checks.compute_dtype(dtype)
    xb = jnp.broadcast_to(x.astype(cdt), shape)
    yb = jnp.broadcast_to(y.astype(cdt), shape)
    return _sigmoid_ce(xb, yb).astype(dtype)
