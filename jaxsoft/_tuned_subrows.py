"""The tuned kernel's ``log1p`` form below :data:`FUSED_ROWS` rows, in two passes over ``x``.

Measured with jax/jaxlib 0.10.2 (XLA:CPU, YNNPACK fusions) on a 2-core AMD EPYC VM. The
``log1p`` form of ``logsumexp`` (SPEC 2.5) needs, besides the max, two row sums: the mass ``s``
off the maxima and their count. One YNNPACK loop computes both from a single read of ``x`` only
for batches of at least 4096 rows (:func:`jaxsoft._tuned_cpu.fuses_row_sums`); below, such a loop
ran 6-12x slower, so the kernel read ``x`` three times (max, mass, count).

Here each row is viewed as ``k`` consecutive sub-rows (a reshape: free in row-major order), so
that there are at least 4096 of them, and two passes do it all, as in ``jax.nn.logsumexp``:

1. the sub-rows' maxima ``m_j``, whose max is the row's ``M`` (:func:`subrow_max`);
2. one loop over the sub-rows, all shifted by their row's ``M``, giving each sub-row's mass
   ``s_j`` off the maxima and count ``c_j`` of them; with one shift, ``s = sum_j s_j`` and
   ``count = sum_j c_j`` exactly (:func:`log_total`).

The loop has one output per sub-row (:func:`encode`); which sub-rows hold a maximum is read from
the first pass. ``logsumexp`` forward, float32, median over four input buffers, 12-15
interleaved rounds, ``jax.nn``'s time = 1: ``(256, 32768)`` 1.45 (three passes: 1.80),
``(16, 262144)`` 0.85 (2.39), ``(1024, 4096)`` 1.77 (1.96), ``(64, 65536)`` 0.96 (6.08).
Only ``logsumexp``'s forward takes it (:func:`jaxsoft._tuned_cpu.core_lse`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# XLA:CPU fuses the max and the shared-exp sums into one loop from this many rows on (jax 0.10.2).
FUSED_ROWS = 4096
# Below these sizes the extra small fusions can cost more than the pass saved. The sub-row form over
# the three-pass form's time (float32 forward, jax 0.10.2): from 4 Mi entries 0.16-0.91; at 1-2 Mi
# entries 0.13-0.52 on rows of 65536 entries or more ((1, 2^20), (4, 2^18), (16, 2^16),
# (8, 2^18), (32, 2^16), (1, 2^21)) but 1.05-1.13 on shorter ones ((512, 2048), (2048, 1024),
# (64, 16384), (256, 4096)); below 1 Mi entries mixed (0.5-1.7).
MIN_ENTRIES = 1 << 22
MIN_ENTRIES_LONG_ROWS = 1 << 20
LONG_ROW = 1 << 16


def subrow_count(shape: tuple[int, ...]) -> int | None:
    """How many sub-rows ``k`` each row of an array of ``shape`` is viewed as, or None to keep
    whole rows.

    The smallest power of two with ``rows * k >= FUSED_ROWS`` that divides the row length; None
    from :data:`FUSED_ROWS` rows on (one loop computes everything there), below
    :data:`MIN_ENTRIES` entries (:data:`MIN_ENTRIES_LONG_ROWS` for rows of :data:`LONG_ROW`
    entries or more), and when no such ``k`` divides the row.
    """
    rows, n = math.prod(shape[:-1]), shape[-1]
    least = MIN_ENTRIES_LONG_ROWS if n >= LONG_ROW else MIN_ENTRIES
    if rows >= FUSED_ROWS or rows == 0 or rows * n < least:
        return None
    k = 1 << math.ceil(math.log2(FUSED_ROWS / rows))
    return None if n % k else k


def _subrows(x: jax.Array, k: int) -> jax.Array:
    """``x`` (``(*batch, n)``) as ``(rows * k, n // k)``: a bitcast, no copy."""
    return x.reshape(-1, x.shape[-1] // k)


def subrow_max(x: jax.Array, k: int) -> jax.Array:
    """The max of each sub-row, ``(*batch, k)``; their max is the row's (``-inf`` when empty)."""
    return jnp.max(_subrows(x, k), axis=-1).reshape(*x.shape[:-1], k)


def encode(s: jax.Array, c: jax.Array) -> jax.Array:
    """A sub-row's mass ``s`` off its row's maxima and count ``c`` of them, as one number.

    ``s + (c - 1)`` where the sub-row holds a maximum (``c >= 1``: the ``log1p`` form's
    ``s + (count - 1)`` of that sub-row, exact for a small ``s``), ``s`` where it holds none
    (``c = 0``): the ``(c - 1) + exp(c * -2^127)`` is ``c - 1`` for ``c >= 1`` and exactly 0 for
    ``c = 0``. The two sums meet in one ``add`` of an expression of ``s`` and one of ``c``: other
    forms tried (``s * c``, ``s - c``, ``min(s, c)``, ``c`` on both sides) made the loop 6-9x
    slower (jax 0.10.2).
    """
    return s + ((c - 1) + jnp.exp(c * -(2.0 ** (jnp.finfo(c.dtype).maxexp - 1))))


def log_total(
    x: jax.Array,
    m_sub: jax.Array,
    m: jax.Array,
    t: jax.Array | None,
    gaps: Callable[[jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, jax.Array]],
    k: int,
    not_max,
    is_max,
) -> jax.Array:
    """``log1p(s + (count - 1))`` of every row of ``x``, ``(*batch, n)`` -> ``(*batch, 1)``.

    ``m_sub`` is :func:`subrow_max`, ``m`` the row max (``(*batch, 1)``), ``t`` None, a scalar or
    ``(*batch, 1)``. ``gaps(y, m, t)`` gives the kernel's gap of ``y`` to the per-row max ``m``
    before and after the temperature, ``(u, z)``: ``u = 0`` exactly on the maxima, ``exp(z)`` the
    weight; ``not_max`` and ``is_max`` are the kernel's indicators (``u < 0``, ``u = 0``).

    ``s + count - 1 = sum_j code_j + (D - 1)`` with ``D`` the number of sub-rows holding a
    maximum: every term is ``>= 0``, so nothing cancels. Empty rows give ``log1p(-1) = -inf``; a
    NaN stays in ``s``. ``D`` is read from the sub-rows' maxima: a sub-row holds a maximum exactly
    where its own max ``m_j`` has ``m_j - M = 0`` as XLA:CPU computes it (a gap under 2^-126 is
    flushed to 0, in the loop's ``u`` too), or equals a ``+inf`` ``M``. So the loop counts on
    ``u``, not on ``z``, which a ``t`` divides (a large ``t`` flushes it) or halves first.
    """
    batch = x.shape[:-1]

    def per_subrow(a):
        return a if a is None or a.ndim == 0 else jnp.broadcast_to(a, (*batch, k)).reshape(-1, 1)

    m_rows, t_rows = per_subrow(m), per_subrow(t)
    u, z = gaps(_subrows(x, k), m_rows, t_rows)
    one = jnp.ones_like(u[:, :1])
    s = jnp.sum(jnp.exp(z) * not_max(u), axis=-1)
    c = jnp.sum(is_max(u, one, 0 * one), axis=-1)
    codes = encode(s, c).reshape(*batch, k)
    # Compares only, summed as integers, and d == -d rather than d == 0: a scalar constant shared
    # with the loop becomes an operand of its YNNPACK fusion, and with the constant 0 (or the
    # kernel's own gap here) the loop ran 4x slower (jax 0.10.2).
    d = m_sub - m
    held = (d == -d) | ((m_sub == m) & (m > -jnp.inf))
    count_held = jnp.sum(held, axis=-1).astype(x.dtype)
    return jnp.log1p(jnp.sum(codes, axis=-1) + (count_held - 1))[..., None]
