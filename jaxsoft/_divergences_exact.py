"""The exact, general path of :mod:`jaxsoft.divergences`: every row, every SPEC 6 edge.

Built on :func:`jaxsoft._core._core`'s ``(lse, p, log p)`` with ``jnp.where`` for each edge. The
public functions take the fast arithmetic path of :mod:`jaxsoft._divergences_fast` and come here
(through one :func:`jax.lax.cond` per batch) only for batches holding a row that path cannot do,
and for derivatives in ``t``.
"""

from __future__ import annotations

from math import factorial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _rowstats as rs
from jaxsoft._core import core as _core
from jaxsoft._rowstats import is_zero

_NEG_INF = -jnp.inf


def _rowsum(a: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return jnp.sum(a, axis=-1, keepdims=True, where=mask)


def _over_t(a: jax.Array, t: jax.Array | None) -> jax.Array:
    return a if t is None else a / rs.safe_t(t)


def _hard_rows(lse: jax.Array, t: jax.Array | None) -> jax.Array:
    """Rows whose distribution is piecewise constant in its inputs: ``t = 0`` or a ``+inf`` max."""
    hard = lse == jnp.inf
    return hard if t is None else hard | (t == 0)


# --------------------------------------------------------------------------------------------------
# Entropy.
# --------------------------------------------------------------------------------------------------


def entropy_from(p: jax.Array, logp: jax.Array) -> jax.Array:
    # Every term -p log p is >= 0 (log p = z - log1p(s) with z <= 0), so the sum has no
    # cancellation: the log1p-accurate log p of a near-one-hot row gives H to a few ulps. The
    # log is cleaned before the product (0 log 0 = 0), so reverse mode never forms 0 * (-inf);
    # a NaN p stays NaN (NaN == 0 is False).
    return _rowsum(p * -jnp.where(p == 0, 0, logp))


@jax.custom_jvp
def entropy(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``H(softargmax_t(x))`` for canonical ``x``; shape ``(*batch, 1)``."""
    _, p, logp = _core(x, t, mask)
    return entropy_from(p, logp)


def _entropy_coefficients(x, t, mask):
    """``(H, cx, ct)``: the value and the coefficients of ``dx`` (full size) and ``dt`` (per row)."""
    lse, p, logp = _core(x, t, mask)
    h = entropy(x, t, mask)
    hard = _hard_rows(lse, t)
    g = jnp.where(p == 0, 0, logp + h)
    cx = jnp.where(hard, 0, _over_t(-p * g, t))
    ct = None if t is None else jnp.where(hard, 0, _over_t(_rowsum(p * g * g), t))
    return h, cx, ct


def entropy_cx(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """The coefficient ``-p (log p + H) / t`` of ``dx`` in ``dH`` (0 on hard rows)."""
    return _entropy_coefficients(x, t, mask)[1]


def _entropy_jvp(primals, tangents):
    """``dH = -<p (log p + H), dx> / t + Var_p(log p) / t * dt``.

    With ``g = log p + H`` (``log p`` centred under ``p``): ``dp_i = p_i (dx_i - <p, dx>) / t``
    and ``dH = -<dp, log p>`` give the first term; ``dp/dt = -p g / t`` gives ``<p, g^2> / t``,
    which is never negative (SPEC 1.6) and has no cancellation. Rows at ``t = 0`` or with a
    ``+inf`` maximum are piecewise constant: zero tangent.
    """
    x, t, mask = primals
    dx, dt, _ = tangents
    h, cx, ct = _entropy_coefficients(x, t, mask)
    dh = jnp.zeros_like(h)
    if not is_zero(dx):
        dh = dh + _rowsum(cx * (dx if mask is None else jnp.where(mask, dx, 0)), mask)
    if ct is not None and not is_zero(dt):
        dh = dh + ct * dt
    return h, dh


entropy_jvp = _entropy_jvp
entropy.defjvp(_entropy_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# KL divergence.
# --------------------------------------------------------------------------------------------------


def _series_coeffs(dtype) -> tuple[float, ...]:
    # h(d) = (d - 1) e^d + 1 = sum_{k>=2} (k - 1) d^k / k!; on |d| <= 1 the first dropped term
    # is below the dtype's eps relative to h (h(-1) = 0.264 is the smallest ratio).
    kmax = 20 if jnp.finfo(dtype).bits > 32 else 12
    return tuple((k - 1) / factorial(k) for k in range(2, kmax + 1))


def _p_times_h(p: jax.Array, d: jax.Array, pe: jax.Array) -> jax.Array:
    """``p * h(d)``, ``h(d) = (d - 1) e^d + 1 >= 0``, given ``pe = p e^d`` (never overflowing).

    The series keeps ``h ~ d^2 / 2`` to full relative accuracy where the closed form cancels.
    ``d = -inf`` (``q = 0``) gives ``p``.
    """
    small = jnp.abs(d) <= 1
    ds = jnp.where(small, d, 0)
    poly = jnp.zeros_like(ds)
    for c in reversed(_series_coeffs(d.dtype)):
        poly = poly * ds + c
    dl = jnp.where(small | (d == _NEG_INF), 0, d)
    closed = jnp.where(d == _NEG_INF, p, (dl - 1) * pe + p)
    return jnp.where(small, p * (ds * ds * poly), closed)


class _KLParts(NamedTuple):
    kl: jax.Array  # (*batch, 1)
    p: jax.Array
    q: jax.Array
    logp: jax.Array
    r: jax.Array  # log q - log p where q, p > 0 (-inf where only p > 0 in centred rows)
    centred: jax.Array  # (*batch, 1) bool: r and the value come from the centred form


def kl_parts(x: jax.Array, y: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """``KL(q || p)``, choosing per row between two forms by their error bounds.

    Textbook: ``sum q (log q - log p)``; its error is about ``eps * (2 H(q) + KL)``, which is
    far above KL when the distributions nearly agree (the terms cancel). Centred: with
    ``d = (delta - mu) / t``, ``delta = y - x`` (exact in floating point when the logits are
    close) and ``mu`` its mean under ``p``, ``q_i = p_i e^{d_i} / A``, ``A = E_p[e^d] = 1 + a``,
    and for any ``d``

        KL = E_q[d] - log A = S / (1 + a) + (a / (1 + a) - log1p(a)),  S = E_p[(d - 1) e^d + 1].

    ``S`` sums non-negative terms (computed by a series for ``|d| <= 1``) and the bracket is
    ``~ -a^2 / 2``, with ``a = KL(p || q)``-sized: no cancellation when ``q ~ p``. Its error is
    about ``eps * (S / (1 + a) - bracket)``; the row takes whichever bound is smaller. Rows at
    ``t = 0``, with ``+inf``/NaN, or with ``q_i > 0 = p_i`` use the textbook form.
    """
    dtype = x.dtype
    lse_x, p, logp = _core(x, t, mask)
    lse_y, q, logq = _core(y, t, mask)
    live_p = logp != _NEG_INF
    live_q = logq != _NEG_INF
    # q_i > 0 = p_i makes KL infinite even where q_i underflows to 0 (log q_i is finite).
    no_p_mass = jnp.any(live_q & ~live_p, axis=-1, keepdims=True)
    r_text = jnp.where((q == 0) | ~live_p, 0, logq - logp)
    kl_text = jnp.where(no_p_mass, jnp.inf, _rowsum(q * r_text))
    h_q = entropy_from(q, logq)

    both = live_p & live_q
    only_p = live_p & ~live_q
    regular = jnp.isfinite(lse_x) & jnp.isfinite(lse_y) & ~no_p_mass
    if t is not None:
        regular &= t > 0
    # Halves keep y - x finite for logits near the float maximum; centring twice makes the
    # residual shift E_p[d] a rounding of the small differences, not of a large common offset.
    pb = jnp.where(both, p, 0)
    mass = _rowsum(pb)
    mass = jnp.where(mass > 0, mass, 1)
    hd = jnp.where(both, y * 0.5 - x * 0.5, 0)
    e1 = jnp.where(both, hd - _rowsum(pb * hd) / mass, 0)
    e2 = (e1 - _rowsum(pb * e1) / mass) * 2
    d = jnp.where(both, e2 if t is None else e2 / jnp.where(regular, t, 1), 0)
    # pe = p e^d = A q. Beyond dmax, e^d alone could overflow though p e^d does not (entries
    # where p and q both underflow), so it is exp(log p + d) there. Rows where A q exceeds
    # e^lmax are far apart (KL(p || q) = log A > lmax) and take the textbook form.
    big = jnp.finfo(dtype).bits > 32
    dmax, lmax = (512.0, 300.0) if big else (64.0, 40.0)
    lpd = jnp.where(both, logp + d, _NEG_INF)
    regular &= ~jnp.any(lpd > lmax, axis=-1, keepdims=True)
    pe = jnp.where(d <= dmax, pb * jnp.exp(jnp.minimum(d, dmax)), jnp.exp(jnp.minimum(lpd, lmax)))
    d_full = jnp.where(only_p, _NEG_INF, d)
    s = _rowsum(jnp.where(both | only_p, _p_times_h(p, d_full, pe), 0))
    small = jnp.abs(d) <= 1
    pa = jnp.where(small, pb * jnp.expm1(jnp.where(small, d, 0)), pe - pb)
    a = _rowsum(jnp.where(only_p, -p, pa))
    regular &= jnp.isfinite(s) & (a > -0.5)
    a = jnp.where(regular, a, 0)
    s = jnp.where(regular, s, 0)
    first = s / (1 + a)
    bracket = a / (1 + a) - jnp.log1p(a)
    centred = regular & (first - bracket <= 2 * h_q + kl_text)
    kl = jnp.where(centred, first + bracket, kl_text)
    r_cent = jnp.where(both, d - jnp.log1p(a), jnp.where(only_p, _NEG_INF, 0))
    r = jnp.where(centred, r_cent, r_text)
    # max(., 0): rounding must not make KL negative; NaN stays NaN.
    return _KLParts(jnp.maximum(kl, 0), p, q, logp, r, centred)


@jax.custom_jvp
def kl(x: jax.Array, y: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``KL(softargmax_t(y) || softargmax_t(x))`` for canonical ``x, y``; shape ``(*batch, 1)``."""
    return kl_parts(x, y, t, mask).kl


def _kl_coefficients(x, y, t, mask, with_x=True, with_y=True, with_t=False):
    """``(KL, cx, cy, ct)``: the coefficients of the tangent of ``KL(q || p)``, with ``r = log q - log p`` and ``Q = sum q``:

    ``dKL = <Q p - q, dx> / t + <q (r - KL), dy> / t - (<w, log p + H(p)> + Var_q(r)) / t * dt``,
    ``w = Q p - q + q (r - KL)``, which is ``p h(r) - KL q`` when ``Q = 1`` (``h`` as in
    :func:`_p_times_h`). The ``t`` term is ``-(<grad_u, u> + <grad_v, v>) / t`` with ``u = x / t``,
    ``v = y / t``, shifted to ``log p``, ``log q`` (the gradients sum to 0). In centred rows,
    ``q - p = p expm1(r)`` and ``p h(r)`` keep the tangents accurate when ``q ~ p``. ``+inf`` rows
    and ``t = 0`` rows have zero tangent.
    """
    kl_v = kl(x, y, t, mask)
    parts = kl_parts(x, y, t, mask)
    p, q, logp, r, centred = parts.p, parts.q, parts.logp, parts.r, parts.centred
    zero_row = kl_v == jnp.inf if t is None else (kl_v == jnp.inf) | (t == 0)
    # The coefficients are cleaned, not the tangent: in reverse mode a zero cotangent times an
    # infinite coefficient would still be NaN.
    kl_s = jnp.where(zero_row, 0, kl_v)
    rk = jnp.where((q == 0) | zero_row, 0, r - kl_s)
    r_c = jnp.where(centred, r, 0)  # -inf where only p > 0, where expm1 gives -1 and h gives 1

    def coefficient(c):
        return jnp.where(zero_row, 0, _over_t(c, t))

    qp = _rowsum(q) * p - q  # the target mass Q is 1, or 0 on a row whose target is all -inf
    cx = cy = ct = None
    if with_x:
        # q - p = p expm1(r) keeps its digits when q ~ p; for |r| > 1 (where p may underflow
        # to 0 with r huge) q - p itself has no cancellation.
        small = jnp.abs(r_c) <= 1
        cx = coefficient(jnp.where(centred & small, -p * jnp.expm1(jnp.where(small, r_c, 0)), qp))
    if with_y:
        cy = coefficient(q * rk)
    if with_t and t is not None:
        w = jnp.where(centred, _p_times_h(p, r_c, q) - kl_s * q, qp + q * rk)
        centred_logp = jnp.where(p == 0, 0, logp + entropy_from(p, logp))
        ct = -coefficient(_rowsum(w * centred_logp) + _rowsum(q * rk * rk))
    return kl_v, cx, cy, ct


def kl_cx_cy(x, y, t, mask, with_x: bool, with_y: bool):
    """The full-size coefficients of ``dx`` and ``dy`` (``None`` where not asked for)."""
    _, cx, cy, _ = _kl_coefficients(x, y, t, mask, with_x, with_y)
    return cx, cy


def _kl_jvp(primals, tangents):
    """Tangent of ``KL(q || p)`` from the coefficients of :func:`_kl_coefficients` (its formula)."""
    x, y, t, mask = primals
    dx, dy, dt, _ = tangents
    with_t = t is not None and not is_zero(dt)
    kl_v, cx, cy, ct = _kl_coefficients(x, y, t, mask, not is_zero(dx), not is_zero(dy), with_t)
    dkl = jnp.zeros_like(kl_v)
    if cx is not None:
        dkl = dkl + _rowsum(cx * (dx if mask is None else jnp.where(mask, dx, 0)), mask)
    if cy is not None:
        dkl = dkl + _rowsum(cy * (dy if mask is None else jnp.where(mask, dy, 0)), mask)
    if ct is not None:
        dkl = dkl + ct * dt
    return kl_v, dkl


kl_jvp = _kl_jvp
kl.defjvp(_kl_jvp, symbolic_zeros=True)
