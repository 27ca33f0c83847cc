"""The reference kernel: SPEC sections 1-7 written as plainly as the math allows.

This is the definition every faster kernel is tested against (both run under the same suites) and
the kernel used on backends without a tuned one. It favours reading like the SPEC over speed.

A row is summarised by the statistics of :mod:`jaxsoft._rowstats`, the same that the chunked,
sharded and loss code carry: its max ``m``, the count ``k`` of entries equal to ``m``, and the mass
``s = sum_{x_i != m} exp((x_i - m) / t)`` of the others, so that ``sum_i exp((x_i - m) / t) =
k + s``. The outputs are finished from those by :mod:`jaxsoft._rowstats` too, which states each
regime of the edge table (SPEC 6) once, for every kernel and loss built on it.

Canonical layout (:mod:`jaxsoft._checks`): ``x`` and ``mask`` of shape ``(*batch, n)``, ``t`` of
shape ``(*batch, 1)`` or ``None`` for ``t = 1``; reductions over the last axis with ``keepdims``.
The derivatives are not defined here: :mod:`jaxsoft._core` wraps every kernel in one custom JVP.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsoft import _rowstats as rs


def _stats(x: jax.Array, mask: jax.Array | None, t: jax.Array | None):
    """``(x, stats)``, a masked entry made ``-inf``: it then takes no part, as a ``-inf`` logit."""
    if mask is not None:
        x = jnp.where(mask, x, rs.NEG_INF)
    return x, rs.block(x, t)


def core(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lse, p, log p)`` of every row; ``lse`` has shape ``(*batch, 1)``.

    Soft rows (finite max, ``t > 0``), with ``z = (x - m) / t``:

    - ``lse = m + t log(k + s) = m + t log1p(s + (k - 1))`` (SPEC 2.5);
    - ``p_i = exp(z_i) / (k + s)`` (SPEC 1);
    - ``log p_i = z_i - log1p(s + (k - 1))`` (SPEC 3).

    With a single maximum the ``log1p`` keeps what ``log(1 + s)`` rounds away (SPEC 2.5, 3.2).
    Hard rows (``t = 0``, or an entry at ``+inf``): the limit, the mass split evenly over the ``k``
    maxima: ``lse = m``, ``p = 1 / k`` and ``log p = -log k`` there, ``0`` and ``-inf`` elsewhere.
    Empty rows (all ``-inf`` or masked): ``-inf`` / 0 / ``-inf``. NaN rows: NaN throughout, but
    for masked entries, which stay 0 / ``-inf`` as with ``jax.nn``'s ``where=``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft import _reference
      >>> lse, p, logp = _reference.core(jnp.array([[0.0, -30.0], [1.0, jnp.inf]]), None, None)
      >>> lse
      Array([[9.357623e-14],
             [         inf]], dtype=float32)
      >>> p
      Array([[1.000000e+00, 9.357623e-14],
             [0.000000e+00, 1.000000e+00]], dtype=float32)
      >>> logp
      Array([[-9.357623e-14, -3.000000e+01],
             [         -inf,  0.000000e+00]], dtype=float32)
    """
    x, st = _stats(x, mask, t)
    lse = rs.lse(st, t)
    p = rs.probs(x, st, t)
    logp = rs.log_probs(x, st, t)
    if mask is not None:
        p = jnp.where(mask, p, 0)
        logp = jnp.where(mask, logp, rs.NEG_INF)
    return lse, p, logp


def core_for_tangents(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`core`: a tuned kernel may compute the values a JVP rule reads differently."""
    return core(x, t, mask)


def core_lse(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`core`: a tuned kernel may compute ``logsumexp``'s forward value differently."""
    return core(x, t, mask)


def wmean(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``<x, p>`` per row (SPEC 4); ``-inf`` on empty rows, ``+inf`` on rows with a ``+inf`` entry.

    Entries with ``p = 0`` (masked, ``-inf``, losers of a hard argmax) contribute ``0`` rather
    than ``0 * x``, which would be NaN for ``x = -inf`` or a masked NaN; a NaN row's mean is NaN.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft import _reference
      >>> x = jnp.array([[2.0, 2.0, -jnp.inf], [1.0, 3.0, 3.0]])
      >>> _reference.wmean(x, jnp.zeros((2, 1)), None)  # t = 0: the max
      Array([[2.],
             [3.]], dtype=float32)
    """
    x, st = _stats(x, mask, t)
    return rs.weighted_mean(x, st, t)
