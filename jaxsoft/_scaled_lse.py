"""logsumexp with scale factors ``b`` (``jax.nn.logsumexp``'s ``b=``), built on the custom-JVP kernel.

SPEC 2.6: ``t log |sum_i b_i e^(x_i/t)|`` and the sign of the sum, per row, in the canonical layout
of :mod:`jaxsoft._checks`. The sum is split into its positive and negative parts, each a plain
log-sum-exp of the kernel (so every edge of SPEC 6 carries over), combined with an accurate
``log(1 - e^d)``. The public entry is :func:`jaxsoft.logsumexp`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsoft._core import core_one

_NEG_INF = -jnp.inf


def _rowsum(a: jax.Array) -> jax.Array:
    return jnp.sum(a, axis=-1, keepdims=True)


def log1mexp(d: jax.Array) -> jax.Array:
    """``log(1 - e^d)`` for ``d < 0``, accurate on both sides of ``-log 2`` (Maechler, 2012).

    Each branch sees only inputs it is accurate and finite on, so neither leaks NaN tangents.
    """
    near = d > -0.6931471805599453
    close = jnp.log(-jnp.expm1(jnp.where(near, d, -1.0)))
    far = jnp.log1p(-jnp.exp(jnp.where(near, -1.0, d)))
    return jnp.where(near, close, far)


def lse_scaled(x, t, mask, b):
    """``(t log|sum_i b_i e^(x_i/t)|, sign of the sum)`` per row, canonical layout.

    The sum splits into a positive and a negative part, ``e^(L+/t) - e^(L-/t)`` with
    ``L+- = logsumexp_t(x + t log|b|)`` over the entries with ``b > 0`` / ``b < 0`` (one call of
    the custom-JVP kernel on both parts at once), so every edge of the kernel carries over:
    ``b = 0`` entries are left out (as ``jax.nn`` does; their ``x``, even ``+inf`` or NaN, change
    nothing), an all-excluded row is ``-inf`` with sign 0 and zero gradient. The parts combine as
    ``hi + t log(1 - e^((lo - hi)/t))``; a sum that cancels exactly gives ``-inf`` with sign 0 and
    zero gradient. At ``t = 0`` the value is the max over the entries with ``b != 0`` and the sign
    that of the sum of ``b`` over those maxima (``-inf`` and 0 if it is 0).
    """
    keep = b != 0  # NaN b stays in (in the positive part), so its row is NaN
    if mask is not None:
        keep = keep & mask
    neg = b < 0
    log_b = jnp.log(jnp.abs(jnp.where(keep, b, 1)))
    xs = x + (log_b if t is None else t * log_b)
    both = core_one(
        "lse",
        jnp.stack([xs, xs]),
        None if t is None else jnp.stack([t, t]),
        jnp.stack([keep & ~neg, keep & neg]),
    )
    lp, ln = both[0], both[1]
    take_p = jnp.isnan(lp) | (lp >= ln)  # a NaN part must become hi, so the NaN reaches the value
    hi = jnp.where(take_p, lp, ln)
    lo = jnp.where(take_p, ln, lp)
    d = lo - hi  # <= 0; NaN on NaN rows, rows with both parts +inf, and empty rows
    empty = hi == _NEG_INF
    inf_row = (hi == jnp.inf) & (lo < jnp.inf)
    cancel = d == 0
    special = empty | inf_row | cancel
    if t is None:
        value = hi + log1mexp(jnp.where(special, -1.0, d))
    else:
        special = special | (t == 0)
        t_safe = jnp.where(t > 0, t, 1)
        value = hi + t_safe * log1mexp(jnp.where(special, -1.0, d / t_safe))
    value = jnp.where(empty | cancel, _NEG_INF, jnp.where(inf_row, hi, value))
    sign = jnp.where(take_p, 1.0, -1.0).astype(x.dtype)
    if t is not None:
        # The t -> 0 limit: the leading term, the sum of b over the maxima times e^(max / t).
        m = jnp.where(empty | jnp.isnan(hi), 0, hi)
        b_max = _rowsum(jnp.where(keep & (x == m), b, 0))
        hard = (t == 0) & ~jnp.isnan(hi) & ~inf_row & ~empty
        value = jnp.where(hard, jnp.where(b_max == 0, _NEG_INF, hi), value)
        sign = jnp.where(hard, jnp.sign(b_max), sign)
    sign = jnp.where(jnp.isnan(value), jnp.nan, jnp.where(value == _NEG_INF, 0, sign))
    return value, jax.lax.stop_gradient(sign)
