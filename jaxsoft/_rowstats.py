"""Per-row softmax statistics: computed on a block, combined, finished.

One row's log-normaliser ``log sum_j exp(x_j / t)`` is carried as three numbers against the
running max ``m`` (Milakov & Gimelshein 2018, refined so the ``log1p`` accuracy of SPEC 2.5 is
kept):

- ``m``: the max of the entries seen (``-inf`` when none takes part);
- ``k``: how many entries equal ``m`` (exact in float32 below 2**24 entries; 0 on an empty row);
- ``s``: ``sum exp((x_j - m) / t)`` over the other entries; 0 on hard rows (``m = +inf`` or
  ``t = 0``, where the maxima take all the mass), NaN on a row holding a NaN.

A block of columns gives its statistics (:func:`block`); two blocks' merge by rescaling the
smaller max's mass (:func:`combine`); the blocks on the devices of a mesh axis merge with one
``pmax`` and one ``psum`` (:func:`all_reduce`); :func:`log_norm` and :func:`lse` finish. The chunked
functions (a ``lax.scan`` over column blocks), the sharded ones (one block per device) and the
losses built on them all use these, so that they agree on every edge of SPEC 6.

A NaN is carried by ``s``, not by ``m``: XLA:CPU's fused max may drop a NaN on long rows, and
``lax.pmax`` need not propagate one, while sums and products keep it.

Conventions: statistics have shape ``(*batch, 1)``; ``t`` is ``(*batch, 1)``, a scalar, or
``None`` for ``t = 1`` (no division emitted).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

NEG_INF = -jnp.inf


def is_zero(tangent) -> bool:
    """A tangent that is known to be zero (``symbolic_zeros=True`` rules)."""
    return tangent is None or isinstance(tangent, SymbolicZero)


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
    return jnp.where(jnp.isfinite(m), m, 0)


class RowStats(NamedTuple):
    m: jax.Array  # (*batch, 1): running max
    k: jax.Array  # (*batch, 1): entries equal to m
    s: jax.Array  # (*batch, 1): sum of exp((x - m)/t) over the others; 0 on hard rows


def empty(batch: tuple[int, ...], dtype) -> RowStats:
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


def log_norm(st: RowStats, t) -> jax.Array:
    """``log(k + s)``, through ``log1p`` when the max is unique (SPEC 2.5)."""
    return jnp.where(~hard(st.m, t) & (st.k == 1), jnp.log1p(st.s), jnp.log(st.k + st.s))


def lse(st: RowStats, t) -> jax.Array:
    """``m + t log(k + s)``: ``-inf`` on an empty row, NaN on a NaN row."""
    ln = log_norm(st, t)
    out = st.m + (ln if t is None else t * ln)
    return jnp.where((st.m == NEG_INF) & ~jnp.isnan(st.s), NEG_INF, out)


def nan_row(st: RowStats) -> jax.Array:
    return jnp.isnan(st.m) | jnp.isnan(st.s)


def probs(x: jax.Array, st: RowStats, t) -> jax.Array:
    """softargmax of block ``x`` against the row's final statistics (the gradient of the lse)."""
    h = hard(st.m, t)
    soft = jnp.exp(zdiff(x, finite_or_zero(st.m), safe_t(t))) / (st.k + st.s)
    p = jnp.where(h, (x == st.m) / jnp.maximum(st.k, 1), soft)
    # A NaN row stays NaN, also where it is hard (t = 0), whose indicator would be all 0.
    return jnp.where((st.m == NEG_INF) & ~jnp.isnan(st.s), 0, jnp.where(nan_row(st), jnp.nan, p))


def weighted_z(x: jax.Array, w: jax.Array, st: RowStats, t) -> jax.Array:
    """``sum_j w_j (x_j - m) / t`` over a block (0 on hard rows), with ``0 * (-inf) = 0``.

    With ``w = p`` this is what the entropy needs: ``H(p) = log_norm - <p, z>``.
    """
    pz = jnp.where(w != 0, w * zdiff(x, finite_or_zero(st.m), safe_t(t)), 0)
    return jnp.where(hard(st.m, t), 0, jnp.sum(pz, axis=-1, keepdims=True))
