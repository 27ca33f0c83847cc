"""Centred KL statistics of two heads' logits, mergeable across vocabulary chunks and devices.

``KL(q || p)`` of ``p = softargmax_t(x)`` (student) and ``q = softargmax_t(y)`` (teacher) is pure
cancellation in the textbook form when ``q ~ p``. With ``D = (y - x) / t``, ``d = D - mu`` centred
on ``mu = E_p[D]``, ``A = E_p[expm1 d]`` and ``S = E_p[(d - 1) e^d + 1] >= 0``,

    KL = S / (1 + A) + (A / (1 + A) - log1p(A)),

where the bracket is ``~ -A^2 / 2`` and ``A ~ Var_p(D) / 2``: nothing cancels (as in
:mod:`jaxsoft._divergences_fast`). A block of columns gives ``(m, T, mu, S, A)`` against its own
max ``m`` (``T = sum e^{(x - m)/t}``) and its own mean; two blocks merge exactly, re-centring each on
the merged mean ``mu`` by ``e = mu_i - mu`` (Chan et al.'s parallel variance, for these sums):

    S_i(mu) = e^e S_i + e e^e A_i + h(e),   A_i(mu) = g(e) + e^e A_i   (g(e) = expm1(e) - e),

weighted by ``T_i / T`` (the ``e`` terms of ``A`` sum to ``g`` because ``sum_i T_i e_i = 0``), so
every term stays of the size of the result. ``p e^d`` is ``exp(z + d)`` in one exponent, so a
student entry whose ``p`` underflows is not lost when the teacher puts mass on it.

Rows this form does not cover are flagged ``bad`` for the exact path (:mod:`jaxsoft._lm_head_kl`): a
teacher ``-inf`` under a finite student logit, ``+inf`` or NaN logits, ``t = 0``, and rows whose
bracket cancels ``S`` by more than 16x. A student ``-inf`` under a finite teacher logit
(``q > 0 = p``) is counted in ``inf``: the KL is ``+inf``.
"""

from __future__ import annotations

from math import factorial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsoft import _rowstats as rs

NEG_INF = rs.NEG_INF


def _series(e, start: int, weight):
    """``sum_{k >= start} weight(k) e^k / k!`` for ``|e| <= 1``, to full precision."""
    kmax = 20 if jnp.finfo(e.dtype).bits > 32 else 12
    poly = jnp.zeros_like(e)
    for k in range(kmax, start - 1, -1):
        poly = poly * e + weight(k) / factorial(k)
    return poly * e**start


def h_fn(e):
    """``(e - 1) e^e + 1 >= 0`` (a series where ``|e| <= 1``)."""
    ec = jnp.clip(e, -1, 1)
    series = _series(ec, 2, lambda k: k - 1)
    return jnp.where(jnp.abs(e) <= 1, series, (e - 1) * jnp.exp(e) + 1)


def g_fn(e):
    """``expm1(e) - e >= 0`` (a series where ``|e| <= 1``)."""
    ec = jnp.clip(e, -1, 1)
    series = _series(ec, 2, lambda k: 1)
    return jnp.where(jnp.abs(e) <= 1, series, jnp.expm1(e) - e)


class KLStats(NamedTuple):
    m: jax.Array  # (N, 1) max of the student logits
    T: jax.Array  # sum e^{(x - m)/t} over the regular entries
    mu: jax.Array  # E_p[D]
    S: jax.Array  # E_p[h(d)]
    A: jax.Array  # E_p[expm1 d]
    bad: jax.Array  # count of entries/rows the exact path must take
    inf: jax.Array  # count of entries with q > 0 = p


def empty(n: int, dtype) -> KLStats:
    z = jnp.zeros((n, 1), dtype)
    return KLStats(jnp.full((n, 1), NEG_INF, dtype), z, z, z, z, z, z)


def _sum(a):
    return jnp.sum(a, axis=-1, keepdims=True)


def block(x, y, t) -> KLStats:
    """Statistics of a block of student ``x`` and teacher ``y`` logits, excluded entries ``-inf``
    in both."""
    ts = rs.safe_t(t)
    m = jnp.max(x, axis=-1, keepdims=True)
    mf = rs.finite_or_zero(m)
    regular = jnp.isfinite(x) & jnp.isfinite(y)
    excluded = (x == NEG_INF) & (y == NEG_INF)
    inf_entry = (x == NEG_INF) & jnp.isfinite(y)
    irregular = ~(regular | excluded | inf_entry)
    zx = jnp.where(regular, rs.zdiff(x, mf, ts), NEG_INF)
    w = jnp.exp(zx)
    big_t = _sum(w)
    D = jnp.where(regular, rs.zdiff(y, x, ts), 0)
    safe_T = jnp.where(big_t > 0, big_t, 1)
    mu = _sum(w * D) / safe_T
    d = jnp.where(regular, D - mu, 0)
    small = jnp.abs(d) <= 1
    e_zd = jnp.exp(jnp.where(small, NEG_INF, zx + d))  # p e^d (unnormalised), one exponent
    s_terms = jnp.where(small, w * h_fn(jnp.where(small, d, 0)), (d - 1) * e_zd + w)
    a_terms = jnp.where(small, w * jnp.expm1(d), e_zd - w)
    S = _sum(jnp.where(regular, s_terms, 0)) / safe_T
    A = _sum(jnp.where(regular, a_terms, 0)) / safe_T
    bad = _sum(irregular.astype(x.dtype))
    if t is not None:
        bad = bad + (t == 0)
    return KLStats(m, big_t, mu, S, A, bad, _sum(inf_entry.astype(x.dtype)))


def _weight(st: KLStats, m_new, t):
    f = jnp.exp(rs.zdiff(st.m, m_new, rs.safe_t(t)))
    return jnp.where(st.T == 0, 0, st.T * f)


def _recentred(st: KLStats, e):
    ee = jnp.exp(e)
    return ee * st.S + e * ee * st.A + h_fn(e), g_fn(e) + ee * st.A


def combine(a: KLStats, b: KLStats, t) -> KLStats:
    m = jnp.maximum(a.m, b.m)
    ta, tb = _weight(a, m, t), _weight(b, m, t)
    total = ta + tb
    safe = jnp.where(total > 0, total, 1)
    wa, wb = ta / safe, tb / safe
    delta = b.mu - a.mu
    mu = jnp.where(ta == 0, b.mu, jnp.where(tb == 0, a.mu, a.mu + wb * delta))
    ea = jnp.where((ta == 0) | (tb == 0), 0, -wb * delta)
    eb = jnp.where((ta == 0) | (tb == 0), 0, wa * delta)
    sa, aa = _recentred(a, ea)
    sb, ab = _recentred(b, eb)
    return KLStats(m, total, mu, wa * sa + wb * sb, wa * aa + wb * ab, a.bad + b.bad, a.inf + b.inf)


def all_reduce(st: KLStats, axis_name, t) -> KLStats:
    """Merge the devices' statistics along ``axis_name``: one ``pmax``, two ``psum``."""
    m = lax.pmax(st.m, axis_name)
    w = _weight(st, m, t)
    total, wmu, bad, inf = lax.psum((w, w * st.mu, st.bad, st.inf), axis_name)
    safe = jnp.where(total > 0, total, 1)
    mu = wmu / safe
    e = jnp.where(w == 0, 0, st.mu - mu)
    s_i, a_i = _recentred(st, e)
    S, A = lax.psum((w * s_i, w * a_i), axis_name)
    return KLStats(m, total, mu, S / safe, A / safe, bad, inf)


def finish(st: KLStats, t):
    """``(kl, bad, inf_row)`` per row ``(N, 1)``: ``kl`` is right where ``bad`` is False."""
    A = st.A
    ok = jnp.isfinite(st.S) & jnp.isfinite(A) & (A > -0.5)
    A = jnp.where(ok, A, 0)
    first = jnp.where(ok, st.S, 0) / (1 + A)
    bracket = A / (1 + A) - jnp.log1p(A)
    kl = jnp.maximum(first + bracket, 0)
    bad = (st.bad > 0) | ~ok | (first - bracket > 16 * kl) | (st.m == jnp.inf)
    if t is not None:
        bad = bad | (t == 0)
    inf_row = st.inf > 0
    # Irregular entries (NaN, +inf, a teacher -inf) need the exact path even on a +inf row.
    bad = (st.bad > 0) | (bad & ~inf_row)
    return jnp.where(inf_row, jnp.inf, kl), bad, inf_row
