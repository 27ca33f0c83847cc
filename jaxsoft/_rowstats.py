"""Per-row softmax statistics: computed on a block, combined, finished.

This is the one statistics module of the package: the dense reference kernel
(:mod:`jaxsoft._reference`), the chunked functions (a ``lax.scan`` over column blocks), the
sharded ones (one block per device) and the losses built on them all compute a row's
normaliser, its probabilities and its log-probabilities here, so that the hard-row test, the
``log1p`` form and the edges of SPEC 6 are defined once and every caller agrees on them.

One row's log-normaliser ``log sum_j exp(x_j / t)`` is carried as three numbers against the
running max ``m`` (Milakov & Gimelshein 2018, refined so the ``log1p`` accuracy of SPEC 2.5 is
kept):

- ``m``: the max of the entries seen (``-inf`` when none takes part);
- ``k``: how many entries equal ``m`` (exact in float32 below 2**24 entries; 0 on an empty row);
- ``s``: ``sum exp((x_j - m) / t)`` over the other entries; 0 on hard rows (``m = +inf`` or
  ``t = 0``, where the maxima take all the mass), NaN on a row holding a NaN.

So ``sum_j exp((x_j - m) / t) = k + s``, and ``log(k + s) = log1p(s + (k - 1))`` keeps, with a
single maximum, the small ``s`` that ``log(1 + s)`` rounds away.

A block of columns gives its statistics (:func:`block`); two blocks' merge by rescaling the
smaller max's mass (:func:`combine`); the blocks on the devices of a mesh axis merge with one
``pmax`` and one ``psum`` (:func:`all_reduce`). The finishers read the merged statistics:
:func:`log_norm` and :func:`lse` per row; :func:`log_weight` (``z = (x - m) / t`` and its hard-row
limit), :func:`probs`, :func:`log_probs` and :func:`weighted_z` on a block of the row's entries
(or on one gathered entry per row, such as a label's logit); :func:`weighted_mean` on a whole row;
:func:`entropy` from the row's ``<p, z>``.

Row regimes, as every finisher treats them (SPEC 6): soft (finite ``m``, ``t > 0``); hard
(:func:`hard`: the limit, uniform over the ``k`` maxima); empty (:func:`empty_row`: ``m = -inf``,
nothing takes part); NaN (:func:`nan_row`: NaN throughout).

A NaN is carried by ``s``, not by ``m``: XLA:CPU's fused max may drop a NaN on long rows, and
``lax.pmax`` need not propagate one, while sums and products keep it.

Conventions: statistics have shape ``(*batch, 1)``; ``t`` is ``(*batch, 1)``, a scalar, or
``None`` for ``t = 1`` (no division emitted); a block ``x`` is ``(*batch, C)`` with its excluded
entries (masked, out of range) already ``-inf``.

Examples:
  >>> import jax.numpy as jnp
  >>> from jaxsoft import _rowstats as rs
  >>> x = jnp.array([[0.0, -30.0, 0.0, -jnp.inf]])
  >>> st = rs.combine(rs.block(x[:, :2], None), rs.block(x[:, 2:], None), None)
  >>> st.m, st.k, st.s
  (Array([[0.]], dtype=float32), Array([[2.]], dtype=float32),
   Array([[9.357623e-14]], dtype=float32))
  >>> rs.probs(x, st, None)
  Array([[5.000000e-01, 4.678811e-14, 5.000000e-01, 0.000000e+00]], dtype=float32)
"""

from __future__ import annotations

from typing import NamedTuple, overload

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

NEG_INF = -jnp.inf


def is_zero(tangent) -> bool:
    """A tangent that is known to be zero (``symbolic_zeros=True`` rules)."""
    return tangent is None or isinstance(tangent, SymbolicZero)


@overload
def safe_t(t: None) -> None: ...
@overload
def safe_t(t: jax.Array) -> jax.Array: ...
def safe_t(t):
    """``t`` with 0 replaced by 1: hard rows never use the quotient, but it must stay finite."""
    return None if t is None else jnp.where(t == 0, 1, t)


def zdiff(x, c, t):
    """``(x - c) / t`` without an intermediate overflow; ``t`` nonzero (see :func:`safe_t`).

    ``x - c`` overflows for ``x = -3e38, c = 3e38`` although ``(x - c) / 1e6`` is representable;
    halving both first is exact (bar subnormals) and their difference cannot overflow. With
    ``t = 1`` an overflow of ``x - c`` is the true value's, so the plain difference is kept.
    """
    if t is None:
        return x - c
    return (x * 0.5 - c * 0.5) / (t * 0.5)


def finite_or_zero(m):
    """The row max as a shift: ``m`` where finite, else 0 (rows whose shifted values are unused)."""
    return jnp.where(jnp.isfinite(m), m, 0)


class RowStats(NamedTuple):
    """One row's normaliser against its max: ``sum_j exp((x_j - m) / t) = k + s``."""

    m: jax.Array  # (*batch, 1): running max
    k: jax.Array  # (*batch, 1): entries equal to m
    s: jax.Array  # (*batch, 1): sum of exp((x - m)/t) over the others; 0 on hard rows


def empty(batch: tuple[int, ...], dtype) -> RowStats:
    """The statistics of no entries (``m = -inf``, ``k = s = 0``): :func:`combine`'s identity."""
    shape = batch + (1,)
    return RowStats(
        jnp.full(shape, NEG_INF, dtype), jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
    )


def hard(m, t):
    """Rows where the maxima take all the mass: a ``+inf`` max, or ``t = 0``."""
    h = m == jnp.inf
    return h if t is None else h | (t == 0)


def block(x: jax.Array, t) -> RowStats:
    """Statistics of one block ``x: (*batch, C)`` whose excluded entries are already ``-inf``."""
    m = jnp.max(x, axis=-1, keepdims=True)
    at_max = x == m
    k = jnp.where(m == NEG_INF, 0, jnp.sum(at_max, axis=-1, keepdims=True, dtype=x.dtype))
    e = jnp.exp(zdiff(x, finite_or_zero(m), safe_t(t)))
    s = jnp.sum(jnp.where(at_max, 0, e), axis=-1, keepdims=True)
    # A NaN entry is never at the max, so s is NaN on its row; hard rows keep that NaN.
    return RowStats(m, k, jnp.where(hard(m, t) & ~jnp.isnan(s), 0, s))


def rescale(st: RowStats, m_new: jax.Array, t) -> tuple[jax.Array, jax.Array]:
    """``(k, s)`` of ``st`` expressed against the larger max ``m_new``."""
    same = st.m == m_new
    # exp((m_old - m_new) / t): 0 when m_old = -inf or m_new = +inf; NaN when m_new is NaN.
    factor = jnp.exp(zdiff(st.m, m_new, safe_t(t)))
    if t is not None:
        # At t = 0 lower maxima carry no mass, but a NaN (in s) must still reach the sum.
        factor = jnp.where((t == 0) & ~jnp.isnan(st.m), 0, factor)
    return jnp.where(same, st.k, 0), jnp.where(same, st.s, (st.k + st.s) * factor)


def combine(a: RowStats, b: RowStats, t) -> RowStats:
    """The statistics of two blocks of the same rows, taken together."""
    m = jnp.maximum(a.m, b.m)
    ka, sa = rescale(a, m, t)
    kb, sb = rescale(b, m, t)
    return RowStats(m, ka + kb, sa + sb)


def all_reduce(st: RowStats, axis_name, t, *extra):
    """Merge the statistics of the devices along ``axis_name``: one ``pmax``, one ``psum``.

    ``extra`` arrays (already expressed against the merged max, or shift-free) ride along in the
    same ``psum``; returns ``(stats, *extra)``.
    """
    m = lax.pmax(st.m, axis_name)
    k, s = rescale(st, m, t)
    k, s, *extra = lax.psum((k, s, *extra), axis_name)
    return (RowStats(m, k, s), *extra)


def log_norm(st: RowStats) -> jax.Array:
    """``log sum_j exp((x_j - m) / t) = log(k + s)``, as ``log1p(s + (k - 1))`` (SPEC 2.5).

    One formula for every row: ``log1p(s)`` with a single maximum (the small ``s`` survives);
    ``k - 1`` is an exact small integer with ties; ``log1p(k - 1) = log k`` on hard rows
    (``s = 0``); ``log1p(-1) = -inf`` on an empty row; NaN on a NaN row. No ``t`` is needed:
    hard rows are told by ``s = 0``.
    """
    return jnp.log1p(st.s + (st.k - 1))


def empty_row(st: RowStats) -> jax.Array:
    """Rows where nothing takes part (all ``-inf`` or excluded), NaN rows not included."""
    return (st.m == NEG_INF) & ~jnp.isnan(st.s)


def nan_row(st: RowStats) -> jax.Array:
    """Rows holding a NaN (in ``s``, or in ``m`` where the max kept it)."""
    return jnp.isnan(st.m) | jnp.isnan(st.s)


def lse(st: RowStats, t) -> jax.Array:
    """``m + t log(k + s)`` (SPEC 2.5): ``m`` on hard rows, ``-inf`` on empty ones, NaN on NaN."""
    ln = log_norm(st)
    out = st.m + (ln if t is None else t * ln)
    return jnp.where(empty_row(st), NEG_INF, out)


def log_weight(x: jax.Array, st: RowStats, t) -> jax.Array:
    """``z = (x - m) / t`` of entries of a row: ``p = e^z / (k + s)``, ``log p = z - log(k + s)``.

    ``x``: a block ``(*batch, C)``, or one entry per row ``(*batch, 1)`` (a label's logit).
    Soft rows: :func:`zdiff`, ``-inf`` on ``-inf`` entries. Hard rows: the limit, 0 on the maxima
    and ``-inf`` on the others. Empty rows: ``-inf``. A NaN row's values are not meaningful; the
    finishers make them NaN (:func:`nan_row`).
    """
    soft = zdiff(x, finite_or_zero(st.m), safe_t(t))
    # Per row: an empty row's "maxima" are its -inf entries, which take no part.
    at_max = jnp.where(st.k > 0, 0, NEG_INF)
    return hard_limit(x, st.m, hard(st.m, t), soft, at_max)


def hard_limit(x, m, hard_rows, soft, at_max: jax.Array | float = 0):
    """``soft`` on soft rows; on ``hard_rows`` the limit of ``z``: ``at_max`` where ``x = m``, else
    ``-inf``. For code that keeps no :class:`RowStats` (``at_max = 0``: no empty row is hard)."""
    return jnp.where(hard_rows, jnp.where(x == m, at_max, NEG_INF), soft)


def probs(x: jax.Array, st: RowStats, t) -> jax.Array:
    """softargmax of block ``x`` against the row's final statistics: ``e^z / (k + s)`` (SPEC 1).

    The gradient of :func:`lse`. Hard rows: ``1 / k`` on the maxima, 0 elsewhere; empty rows 0;
    NaN rows NaN (also where they are hard, at ``t = 0``).
    """
    p = jnp.exp(log_weight(x, st, t)) / (st.k + st.s)
    return jnp.where(empty_row(st), 0, jnp.where(nan_row(st), jnp.nan, p))


def log_probs(x: jax.Array, st: RowStats, t) -> jax.Array:
    """log softargmax of block ``x`` against the row's final statistics: ``z - log(k + s)``.

    ``(x - m) / t - log1p(s + (k - 1))`` on soft rows: a dominant entry keeps ``log p ~ -s``
    rather than the 0 that ``x - lse`` rounds to (SPEC 3.2). Hard rows: ``-log k`` on the maxima,
    ``-inf`` elsewhere; ``-inf`` on empty rows and on ``-inf`` entries; NaN on NaN rows.
    """
    lp = log_weight(x, st, t) - log_norm(st)
    return jnp.where(empty_row(st), NEG_INF, jnp.where(nan_row(st), jnp.nan, lp))


def weighted_mean(x: jax.Array, st: RowStats, t) -> jax.Array:
    """``<x, p>`` over a whole row ``x: (*batch, n)``, ``p`` from :func:`probs` (SPEC 4).

    Entries with ``p = 0`` (excluded, ``-inf``, losers of a hard row) add ``0``, not ``0 * x``
    (NaN at ``x = -inf``). ``-inf`` on an empty row, ``+inf`` on a row with a ``+inf`` entry, NaN on
    a NaN row. Not for blocks: the sum is of the whole row.
    """
    p = probs(x, st, t)
    w = jnp.sum(jnp.where(p > 0, x, 0) * p, axis=-1, keepdims=True)
    return jnp.where(empty_row(st), NEG_INF, w)


def weighted_z(x: jax.Array, w: jax.Array, st: RowStats, t) -> jax.Array:
    """``sum_j w_j (x_j - m) / t`` over a block (0 on hard rows), with ``0 * (-inf) = 0``.

    With ``w = p`` this is what the entropy needs: ``H(p) = log_norm - <p, z>``.
    """
    pz = jnp.where(w != 0, w * zdiff(x, finite_or_zero(st.m), safe_t(t)), 0)
    return jnp.where(hard(st.m, t), 0, jnp.sum(pz, axis=-1, keepdims=True))


def entropy(st: RowStats, pz: jax.Array) -> jax.Array:
    """``H(p) = log(k + s) - <p, z>`` per row, from the row's :func:`weighted_z` with ``w = p``.

    Also the derivative of :func:`lse` in ``t`` (SPEC 2.4). ``log k`` on hard rows (where
    ``<p, z> = 0``), 0 on empty rows, NaN on NaN rows.
    """
    return jnp.where(empty_row(st), 0, log_norm(st) - pz)
