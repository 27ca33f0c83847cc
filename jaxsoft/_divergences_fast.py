"""The fast path of :mod:`jaxsoft.divergences`: entropy and KL from a few fused row sums.

XLA:CPU runs a row reduction and its elementwise producers as one vectorised YNNPACK loop only when
every full-size op is plain float arithmetic (no compare, no select, no clamp); a max, a sum that
depends on it and one more sum that depends on both still form one loop (as in ``jax.nn``'s
entropy), while two sibling sums that share full-size terms do not. So every formula here is
arithmetic on full-size values, with at most one dependent sum per chain; a second sibling sum
recomputes its terms from ``x`` with its own per-row operands behind
:func:`jax.lax.optimization_barrier`.

The formulas are exact on *regular* rows: finite maximum, ``t > 0``, no NaN (and, for KL, every
entry finite in both rows or masked). Each kernel also returns a per-row flag of the rows it may
have got wrong; :mod:`jaxsoft.divergences` sends a batch holding one to
:mod:`jaxsoft._divergences_exact` through a :func:`jax.lax.cond` on per-row values only.

Canonical layout (:mod:`jaxsoft._checks`): ``x`` of shape ``(*batch, n)``, ``t`` of shape
``(*batch, 1)`` or ``None`` (``t = 1``), ``mask`` boolean or ``None``; reductions keep dims.
"""

from __future__ import annotations

import math
from math import factorial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _rowstats as rs

_NEG_INF = -jnp.inf


def _sum(a: jax.Array) -> jax.Array:
    return jnp.sum(a, axis=-1, keepdims=True)


def _copies(*values, tag: float = 0.0) -> tuple[Any, ...]:
    """Per-row operands that XLA cannot share between two sums (see the module docstring).

    ``tag`` makes barriers over the same values distinct: XLA merges identical ones.
    """
    first = values[0]
    return jax.lax.optimization_barrier((*values, jnp.full_like(first, tag)))[:-1]


def widen(x: jax.Array) -> jax.Array:
    """``x`` in float32 if it is bf16/f16 (SPEC 7), converted inside each pass that reads it.

    (XLA:CPU still writes the conversion to memory once when several passes read it: it
    computes bf16 arithmetic in float32, so any per-pass variant shares the same conversion.)
    """
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _mask_x(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    x = widen(x)
    return x if mask is None else jnp.where(mask, x, _NEG_INF)


def _not_max(z: jax.Array, one: jax.Array | float) -> jax.Array:
    """1 where ``z < 0``, 0 where ``z = 0`` (``z <= 0``), as ``min(1, z * -2^127)``: arithmetic.

    Any gap ``z <= -2^-126`` scales to at least 2 (XLA:CPU flushes subnormal gaps to 0, which then
    count as maxima, consistently with ``exp(z) = 1`` there).
    """
    return jnp.minimum(one, z * -(2.0 ** (jnp.finfo(z.dtype).maxexp - 1)))


def _neg(z: jax.Array) -> jax.Array:
    """``-z`` with ``-inf`` mapped to ``finfo.max``, so that ``exp(z) * -z`` is 0, not NaN, there."""
    return -jnp.maximum(z, -jnp.finfo(z.dtype).max)


# --------------------------------------------------------------------------------------------------
# Entropy.
# --------------------------------------------------------------------------------------------------


class EntropyStats(NamedTuple):
    h: jax.Array  # (*batch, 1), right on regular rows
    m: jax.Array  # row max
    log_total: jax.Array  # log sum exp(z), accurate (log1p form) where the total is near 1
    total: jax.Array
    bad: jax.Array  # (*batch, 1) bool: rows the exact path must compute


def entropy_stats(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> EntropyStats:
    """``H = log T + W / T`` with ``T = sum e^z``, ``W = sum e^z (-z)``, ``z = (x - max) / t``.

    Both terms are non-negative. Where ``T < 2`` the row has a single maximum and ``log T`` must
    be ``log1p(s)`` of the non-maximal mass ``s`` (a near-one-hot row has ``s`` below ``eps``): the
    dependent sum is then ``Y = sum e^z (1[z < 0] - z) / T = (s + W) / T``, and
    ``H = (log1p(s) - s / T) + Y``, where the bracket (``~ s^2 / 2``) tolerates ``s = T - 1``.
    Where ``T >= 2``, ``Y = W / T`` and ``H = log T + Y``. One max and two dependent sums.
    """
    x0 = _mask_x(x, mask)
    ts = rs.safe_t(t)  # t = 0 rows take the exact path
    m = jnp.max(x0, axis=-1, keepdims=True)
    total = _sum(jnp.exp(rs.zdiff(x0, m, ts)))
    # alpha = 1 where total < 2, else 0, in arithmetic: a compare here would split the loop.
    alpha = jnp.minimum(1.0, jnp.maximum(2.0 - total, 0.0) * 2.0**100)
    m2, ts2, alpha, total2 = _copies(m, ts, alpha, total)
    z = rs.zdiff(_mask_x(x, mask), m2, ts2)
    y = _sum(jnp.exp(z) * (alpha * _not_max(z, 1.0) + _neg(z)) / total2)
    near_one = total < 2
    s = total - 1
    log_total = jnp.where(near_one, jnp.log1p(s), jnp.log(total))
    h = jnp.where(near_one, log_total - s / total, log_total) + y
    bad = ~jnp.isfinite(m) | jnp.isnan(h)
    if t is not None:
        bad |= t == 0
    return EntropyStats(h, m, log_total, total, bad)


def entropy_value(x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """``(H, bad)`` as :func:`entropy_stats`, in one fused loop (the forward pass).

    A YNNPACK loop has one output, so the per-row part joins the sum: with
    ``beta = log1p(T - 1) - alpha (T - 1) / T`` (``log T``, or the bracket where ``T < 2``),
    ``H = sum e^z (alpha 1[z < 0] - z + beta) / T``, every term non-negative. NaN, ``+-inf``
    maxima and empty rows make ``H`` NaN (so ``bad``) without a separate flag.
    """
    x = _mask_x(x, mask)
    ts = rs.safe_t(t)  # t = 0 rows take the exact path
    m = jnp.max(x, axis=-1, keepdims=True)
    z = rs.zdiff(x, m, ts)
    total = _sum(jnp.exp(z))
    s = total - 1
    alpha = jnp.minimum(1.0, jnp.maximum(1.0 - s, 0.0) * 2.0**100)
    beta = jnp.log1p(s) - alpha * s / total
    h = _sum(jnp.exp(z) * (alpha * _not_max(z, 1.0) + _neg(z) + beta) / total)
    bad = jnp.isnan(h)
    if t is not None:
        bad |= t == 0
    return h, bad


# From this many rows on, XLA:CPU keeps the max and both sums of :func:`entropy_value` in one loop
# (as it does ``jax.nn``'s entropy); with fewer rows it splits them and writes ``(batch, n)``
# temporaries, where :func:`entropy_stats`'s two loops over ``x`` are faster and need none
# (jax 0.10.2: one loop at 4096 x 256..2048 and 8192 x 1024; split at 64..2048 x 512..2048 and
# 256 x 32768, for jax.nn's entropy alike).
ONE_LOOP_MIN_ROWS = 4096


def entropy_forward(x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """``(H, bad)`` by whichever kernel is faster for this shape."""
    if math.prod(x.shape[:-1]) >= ONE_LOOP_MIN_ROWS:
        return entropy_value(x, t, mask)
    st = entropy_stats(x, t, mask)
    return st.h, st.bad


def entropy_cx(x: jax.Array, t: jax.Array | None, mask: jax.Array | None, st: EntropyStats):
    """``-p (log p + H) / t``, ``p = e^z / T``, ``log p = z - log T``: one elementwise pass."""
    x = _mask_x(x, mask)
    ts = rs.safe_t(t)  # t = 0 rows take the exact path
    z = rs.zdiff(x, st.m, ts)
    c = jnp.exp(z) * (_neg(z) + (st.log_total - st.h)) / st.total
    return c if ts is None else c / ts


# --------------------------------------------------------------------------------------------------
# KL divergence.
# --------------------------------------------------------------------------------------------------


def _h_series(d: jax.Array) -> jax.Array:
    """``h(d) = (d - 1) e^d + 1 = sum_{k>=2} (k - 1) d^k / k!`` for ``|d| <= 1``, to full precision."""
    kmax = 20 if jnp.finfo(d.dtype).bits > 32 else 12
    poly = jnp.zeros_like(d)
    for k in range(kmax, 1, -1):
        poly = poly * d + (k - 1) / factorial(k)
    return d * d * poly


class KLStats(NamedTuple):
    kl: jax.Array  # (*batch, 1)
    m: jax.Array
    total: jax.Array
    mu: jax.Array  # E_p[y - x]
    log1p_a: jax.Array  # log E_p[e^d]
    bad: jax.Array


def _delta(x, y, mask, variant: int):
    """``(x masked to -inf, y - x masked to 0)``, written differently for each sum that needs it.

    The forms are equal (halving and negation are exact), but XLA does not see it: one shared
    ``y - x`` would be written to memory (barriers do not stop XLA merging it after they are gone).
    """
    x, y = widen(x), widen(y)
    if variant == 0:
        delta = y - x
    elif variant == 1:
        delta = -(x - y)
    else:
        k = 0.5**variant
        delta = (y * k - x * k) * (1 / k)
    if mask is None:
        return x, delta
    return jnp.where(mask, x, _NEG_INF), jnp.where(mask, delta, 0)


def _kl_terms(x_delta: tuple[jax.Array, jax.Array], row: tuple[Any, ...], which: str):
    """``p h(d)`` or ``p expm1(d)``, ``p = e^z / T``, ``d = (delta - mu) / t``, from
    ``x_delta = (x, delta)`` and the per-row ``row = (m, total, mu, t, 1, 0, 2^60)``."""
    x, delta = x_delta
    m, total, mu, ts, one, zero, big = row
    z = rs.zdiff(x, m, ts)
    d = rs.zdiff(delta, mu, ts)
    # `outside` is 1 where |d| > 1, else 0, in plain arithmetic (a compare or a clamp would split
    # the loop). Inside, p = e^z / T times a function of small d: the series of h, or expm1.
    # Outside, the terms are written with q-like factors e^(z + d) / T, never p * e^d: p may
    # underflow to 0 where q = p e^d / A does not (x far below the max, y far above x).
    outside = jnp.minimum(one, jnp.maximum(jnp.maximum(d, -d) - one, zero) * big)
    inside = one - outside
    ez = jnp.exp(z)
    ezd = jnp.exp(z + d) * outside  # the product is 0 inside, where z + d cannot overflow
    if which == "a":
        return (ez * jnp.expm1(d * inside) * inside + (ezd - ez * outside)) / total
    # h(d) = (d - 1) e^d + 1, so p h(d) = ((d - 1) e^(z + d) + e^z) / T outside; the series
    # sees d * inside, which is d or 0, so that it never overflows.
    return (ez * _h_series(d * inside) + ((d - one) * ezd + ez * outside)) / total


def kl_stats(x: jax.Array, y: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> KLStats:
    """``KL(q || p) = S / (1 + a) + a / (1 + a) - log1p(a)`` in the centred form.

    ``delta = y - x`` (exact when the logits are close), ``mu = E_p[delta]``,
    ``d = (delta - mu) / t``, ``a = E_p[expm1 d]``, ``S = E_p[(d - 1) e^d + 1]``: ``S`` sums
    non-negative terms (a series for ``|d| <= 1``) and the bracket is ``~ -a^2 / 2``, so nothing
    cancels when ``q ~ p``. Rows whose bracket cancels ``S`` by more than 16x, or that are not
    regular (an infinite ``delta`` included), are flagged for the exact path.
    """
    xm = _mask_x(x, mask)
    ts = rs.safe_t(t)  # t = 0 rows take the exact path
    m = jnp.max(xm, axis=-1, keepdims=True)
    total = _sum(jnp.exp(rs.zdiff(xm, m, ts)))
    xm, delta = _delta(x, y, mask, 0)
    m2, ts2 = _copies(m, ts)
    mu = _sum(jnp.exp(rs.zdiff(xm, m2, ts2)) * delta) / total
    # Each sum gets its own per-row copies, constants included: XLA writes a broadcast constant
    # that two loops share to memory as a full-size array.
    consts = (jnp.ones_like(m), jnp.zeros_like(m), jnp.full_like(m, 2.0**60))
    s_sum = _sum(_kl_terms(_delta(x, y, mask, 1), _copies(m, total, mu, ts, *consts, tag=1), "s"))
    a = _sum(_kl_terms(_delta(x, y, mask, 2), _copies(m, total, mu, ts, *consts, tag=2), "a"))
    ok = jnp.isfinite(m) & jnp.isfinite(s_sum) & jnp.isfinite(a) & (a > -0.5)
    a = jnp.where(ok, a, 0)
    first = jnp.where(ok, s_sum, 0) / (1 + a)
    log1p_a = jnp.log1p(a)
    bracket = a / (1 + a) - log1p_a
    kl = jnp.maximum(first + bracket, 0)
    bad = ~ok | (first - bracket > 16 * kl)
    if t is not None:
        bad |= t == 0
    return KLStats(kl, m, total, mu, log1p_a, bad)


def kl_cx_cy(x, y, t, mask, st: KLStats, with_x: bool, with_y: bool):
    """``cx = (p - q) / t = -p expm1(r) / t`` and ``cy = q (r - KL) / t``, ``r = d - log1p(a)``."""
    xm, delta = _delta(x, y, mask, 3)
    ts = rs.safe_t(t)  # t = 0 rows take the exact path
    z = rs.zdiff(xm, st.m, ts)
    r = rs.zdiff(delta, st.mu, ts) - st.log1p_a
    # As in _kl_terms: q = e^(z + r) / T where |r| > 1 (p may underflow there), and
    # q - p = p expm1(r) where |r| <= 1 (it keeps its digits when q ~ p).
    outside = jnp.minimum(1.0, jnp.maximum(jnp.maximum(r, -r) - 1.0, 0.0) * 2.0**60)
    inside = 1 - outside
    p = jnp.exp(z) / st.total
    q_out = jnp.exp(z + r) * outside / st.total
    cx = cy = None
    if with_x:
        cx = -p * jnp.expm1(r * inside) * inside + (p * outside - q_out)
        cx = cx if ts is None else cx / ts
    if with_y:
        cy = (p * jnp.exp(r * inside) * inside + q_out) * (r - st.kl)
        cy = cy if ts is None else cy / ts
    return cx, cy
