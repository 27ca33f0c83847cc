"""The reference kernel: SPEC sections 1-7 written as plainly as the math allows.

This is the definition every faster kernel is tested against (both run under the same suites) and
the kernel used on backends without a tuned one. It favours reading like the SPEC over speed: each
regime of the edge table (SPEC 6) is its own ``jnp.where``.

Canonical layout (:mod:`jaxsoft._checks`): ``x`` and ``mask`` of shape ``(*batch, n)``, ``t`` of
shape ``(*batch, 1)`` or ``None`` for ``t = 1``; reductions over the last axis with ``keepdims``.
The derivatives are not defined here: :mod:`jaxsoft._core` wraps every kernel in one custom JVP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def scaled_gap(x: jax.Array, m: jax.Array, t: jax.Array | None) -> jax.Array:
    """``(x - m) / t`` without overflowing where ``x - m`` alone would.

    ``x / 2 - m / 2`` is exact (halving is), so ``(x/2 - m/2) / (t/2)`` is the correctly rounded
    ``(x - m) / t`` whenever that is finite, even when ``x - m`` exceeds the float range
    (``x = -3e38, m = 3e38, t = 1e6``). With ``t = 1`` an overflow of ``x - m`` is the correctly
    rounded answer (``-inf``), so the plain difference is used.
    """
    if t is None:
        return x - m
    return (x * 0.5 - m * 0.5) / (t * 0.5)


def core(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lse, p, log p)`` of every row; ``lse`` has shape ``(*batch, 1)``.

    Soft rows (finite max, ``t > 0``): with ``m = max x``, ``z = (x - m) / t`` and ``k`` entries
    equal to ``m``, ``sum exp(z) = k + s`` where ``s`` is the mass of the other entries, so
    ``log sum exp(z) = log1p(s + (k - 1))``: with a single maximum that is ``log1p(s)``, which keeps
    what ``log(1 + s)`` rounds away (SPEC 2.5, 3.2).
    Hard rows (``t = 0``, or an entry at ``+inf``): the mass goes to the ``k`` maxima evenly.
    Empty rows (all ``-inf`` or masked): ``-inf`` / 0 / ``-inf``. NaN rows: NaN throughout.
    """
    if mask is not None:
        x = jnp.where(mask, x, _NEG_INF)  # a masked entry behaves exactly like a -inf one
    m = jnp.max(x, axis=-1, keepdims=True)
    nan_row = jnp.any(jnp.isnan(x), axis=-1, keepdims=True)
    empty = (m == _NEG_INF) & ~nan_row
    hard = m == jnp.inf
    if t is not None:
        hard = hard | (t == 0)
    is_max = x == m
    count = jnp.sum(is_max, axis=-1, keepdims=True).astype(x.dtype)

    # Soft rows; the other rows get harmless stand-ins (m = 0, t = 1) and are overwritten below.
    m_soft = jnp.where(jnp.isfinite(m), m, 0)
    t_soft = None if t is None else jnp.where(hard, 1, t)
    z = scaled_gap(x, m_soft, t_soft)
    s = jnp.sum(jnp.where(is_max, 0, jnp.exp(z)), axis=-1, keepdims=True)
    log_total = jnp.log1p(s + (count - 1))
    lse_soft = m + (log_total if t is None else t * log_total)
    p_soft = jnp.exp(z) / (s + count)
    logp_soft = z - log_total

    # Hard rows: the limit t -> 0+ (or the limit of x_i -> +inf): uniform over the maxima.
    lse_hard = m
    p_hard = jnp.where(is_max, 1 / count, 0)
    logp_hard = jnp.where(is_max, -jnp.log(count), _NEG_INF)

    lse = jnp.where(hard, lse_hard, lse_soft)
    p = jnp.where(hard, p_hard, p_soft)
    logp = jnp.where(hard, logp_hard, logp_soft)

    lse = jnp.where(empty, _NEG_INF, jnp.where(nan_row, jnp.nan, lse))
    p = jnp.where(empty, 0, jnp.where(nan_row, jnp.nan, p))
    logp = jnp.where(empty, _NEG_INF, jnp.where(nan_row, jnp.nan, logp))
    if mask is not None:  # a NaN row's masked entries stay 0 / -inf, as with jax.nn's where=
        p = jnp.where(mask, p, 0)
        logp = jnp.where(mask, logp, _NEG_INF)
    return lse, p, logp


def core_for_tangents(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`core`: a tuned kernel may compute the values a JVP rule reads differently."""
    return core(x, t, mask)


def wmean(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``<x, p>`` per row; ``-inf`` on empty rows, ``+inf`` on rows with a ``+inf`` entry.

    Entries with ``p = 0`` (masked, ``-inf``, losers of a hard argmax) contribute ``0 * 0``
    rather than ``0 * x``, which would be NaN for ``x = -inf`` or a masked NaN; a NaN row's
    ``p`` is NaN, so its mean is NaN too.
    """
    lse, p, _ = core(x, t, mask)
    w = jnp.sum(jnp.where(p > 0, x, 0) * p, axis=-1, keepdims=True)
    return jnp.where(lse == _NEG_INF, _NEG_INF, w)
