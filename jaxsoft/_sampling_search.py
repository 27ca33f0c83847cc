"""Sort-free top-k and top-p thresholds for :mod:`jaxsoft.sampling`: bisection on float bit patterns.

Both filters keep ``{x_i >= tau}`` for a per-row threshold ``tau`` (SPEC 9.1's tie rule: every entry
tied with the k-th, or with the last entry of the nucleus, is kept, which is exactly what a
threshold on the value does). We find ``tau`` without sorting:

* Map every float to an unsigned integer ``u(x)`` that orders like the float (the sign bit set for
  positives, all bits flipped for negatives). The threshold is the largest ``u`` whose count (top-k)
  or mass (top-p) of entries ``>= from_u(u)`` still reaches the target. It is built from the most
  significant bit down, two bits per step: one pass over the row scores three candidates at once
  (a 4-ary search). ``bits / 2`` steps (16 for float32) are exact: the result is an entry's
  value, not an approximation, and the step count is fixed, so the search is one compiled loop
  whatever the data or the parameters.
* Each step reduces a row to three numbers per candidate set (counts, or masses in three
  integer limbs), so a vocabulary split over devices needs one ``psum`` of ``O(batch)`` numbers
  per step.

Masses are summed in fixed point: ``q_i = round(e_i * 2^(3L))``, ``e_i = p_i / max p`` in
``[0, 1]``, split into three ``L``-bit limbs summed as int32 (``L`` chosen from the row length so
that no sum overflows). Integer sums are exact and associative, so the mass of a candidate set,
and every decision of the search, is the same bit for bit however the row is split or reduced; a
float32 sum is not, and a sharded nucleus could then differ from the unsharded one at a boundary.
The resolution is ``2^-3L`` of the largest probability (``2^-39`` for a 131072-wide row).

Why not a sort: a full sort is ``O(n log n)`` per row with data-dependent memory traffic; 16
fused compare-and-sum passes are ``O(16 n)`` streaming work, several times faster on CPU at LLM
vocabulary sizes (``bench/sampling.py``), and they split over devices with ``O(batch)`` traffic.
(A partial sort such as ``lax.top_k`` is faster still for top-k, but needs a static ``k``.)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

Reduce = Callable[[Any], Any]  # lax.psum over the vocabulary axis, or the identity


def _uint(dtype) -> jnp.dtype:
    return jnp.dtype(jnp.uint64 if jnp.finfo(dtype).bits == 64 else jnp.uint32)


def to_u(x: jax.Array) -> jax.Array:
    """An unsigned integer that orders like ``x`` (``-0.0`` just below ``+0.0``)."""
    udt = _uint(x.dtype)
    nbits = jnp.finfo(x.dtype).bits
    b = lax.bitcast_convert_type(x, udt)
    sign = jnp.asarray(1 << (nbits - 1), udt)
    return jnp.where((b & sign) != 0, ~b, b | sign)


def from_u(u: jax.Array, dtype) -> jax.Array:
    """Inverse of :func:`to_u` (NaN for the patterns below ``-inf`` and above ``+inf``)."""
    udt = _uint(dtype)
    nbits = jnp.finfo(dtype).bits
    sign = jnp.asarray(1 << (nbits - 1), udt)
    b = jnp.where((u & sign) != 0, u & ~sign, ~u)
    return lax.bitcast_convert_type(b, dtype)


def _row_sums(terms: list[jax.Array]) -> list[jax.Array]:
    """Row sums of several ``[rows, n]`` int32 arrays in one variadic reduction, as ``[rows, 1]``.

    One reduction makes XLA:CPU compute every sum in a single vectorised pass; separate
    ``jnp.sum`` calls (of a compare, in particular) each make their own, several times slower.
    """
    zeros = tuple(jnp.asarray(0, a.dtype) for a in terms)
    sums = lax.reduce(tuple(terms), zeros, lambda a, b: tuple(u + v for u, v in zip(a, b)), (1,))
    return [v[:, None] for v in sums]


def _bisect(scores: Callable[[list[jax.Array]], list[jax.Array]], target, dtype) -> jax.Array:
    """The largest ``u`` (over all bit patterns) with ``score(from_u(u)) >= target``, per row.

    Built two bits per step from the most significant: each step scores the three candidates
    ``ans | j << shift`` (``j = 1, 2, 3``) in one pass (``scores`` maps a list of thresholds to
    their scores) and keeps the largest that qualifies. The score must be non-increasing in the
    threshold and 0 at NaN thresholds (every comparison False). Returns 0 when no pattern
    qualifies. Always ``bits / 2`` steps: an early exit would need the data to separate the
    cut-off from its neighbours, which ties (common in bf16-born logits) prevent, and a fixed
    count keeps the cost independent of the data.
    """
    udt = _uint(dtype)
    nbits = jnp.finfo(dtype).bits

    def step(i, ans):
        shift = (nbits - 2 - 2 * i).astype(udt)
        cands = [ans | lax.shift_left(jnp.asarray(j, udt), shift) for j in (1, 2, 3)]
        ok = [s >= target for s in scores([from_u(c, dtype) for c in cands])]
        # A prefix AND, so that a rounding wobble in a mass can never skip a failing candidate.
        digit = (
            ok[0].astype(udt) + (ok[0] & ok[1]).astype(udt) + (ok[0] & ok[1] & ok[2]).astype(udt)
        )
        return ans | lax.shift_left(digit, shift)

    return lax.fori_loop(0, nbits // 2, step, jnp.zeros(target.shape, udt))


def _threshold_from_u(ans: jax.Array, dtype) -> jax.Array:
    """``from_u(ans)``, or ``-inf`` where ``ans`` lies below ``u(-inf)`` (nothing qualified)."""
    neg_inf = jnp.asarray(-jnp.inf, dtype)
    return jnp.where(ans >= to_u(neg_inf), from_u(ans, dtype), neg_inf)


def top_k_threshold(x: jax.Array, k: jax.Array, psum: Reduce) -> jax.Array:
    """Per-row ``tau`` with ``{x >= tau}`` = the ``k`` largest entries of ``x`` and their ties.

    ``x`` is ``[rows, n]`` with excluded entries at ``-inf``; ``k`` is ``[rows, 1]`` int32. Rows
    with ``k <= 0`` or fewer than ``k`` entries above ``-inf`` get ``-inf`` (keep everything).
    """

    def counts(taus):
        return psum(_row_sums([(x >= tau).astype(jnp.int32) for tau in taus]))

    tau = _threshold_from_u(_bisect(counts, k, x.dtype), x.dtype)
    return jnp.where(k > 0, tau, -jnp.inf)


def limb_bits(n: int) -> int:
    """Bits per limb such that ``n`` limbs of up to ``2^L`` sum below ``2^31``."""
    return max(4, min(20, 30 - math.ceil(math.log2(max(n, 2)))))


def fixed_point_limbs(e: jax.Array, n_global: int) -> tuple[tuple[jax.Array, ...], int]:
    """``round(e * 2^(3L))`` (``e`` in ``[0, 1]``) as three int32 limbs, high to low, and ``L``."""
    lb = limb_bits(n_global)
    q = jnp.round(e * 2.0 ** (3 * lb))  # an integer < 2^(3L) + 1, exact in e's dtype
    hi = jnp.floor(q * 2.0 ** (-2 * lb))
    rest = q - hi * 2.0 ** (2 * lb)  # the low bits of q: exact
    mid = jnp.floor(rest * 2.0**-lb)
    lo = rest - mid * 2.0**lb
    return tuple(v.astype(jnp.int32) for v in (hi, mid, lo)), lb


def combine_limbs(sums: tuple[jax.Array, ...], lb: int, dtype) -> jax.Array:
    """The mass ``sum q_i / 2^(3L)`` from exact limb sums, rounded the same way on every device."""
    hi, mid, lo = (s.astype(dtype) for s in sums)
    return ((hi * 2.0**lb + mid) * 2.0**lb + lo) * 2.0 ** (-3 * lb)


def limb_masses(x, limbs, taus, lb, psum: Reduce) -> list[jax.Array]:
    """The fixed-point masses of the entries with ``x >= tau``, for each ``tau``: exact integer
    sums (one pass for all of them), then combined."""
    terms = [jnp.where(x >= tau, q, 0) for tau in taus for q in limbs]
    sums = psum(_row_sums(terms))
    return [combine_limbs(tuple(sums[3 * i : 3 * i + 3]), lb, x.dtype) for i in range(len(taus))]


def top_p_threshold(
    x: jax.Array, e: jax.Array, m: jax.Array, top_p: jax.Array, n_global: int, psum: Reduce
) -> jax.Array:
    """Per-row ``tau`` with ``{x >= tau}`` = the top-p nucleus of ``e`` (and its ties).

    ``x`` is ``[rows, n]`` with entries outside the candidate set at ``-inf``; ``e`` their relative
    probabilities in ``[0, 1]`` (0 outside the set, 1 at the maximum ``m``). The nucleus is
    ``{x >= tau}`` for the largest ``tau`` whose mass reaches ``top_p`` times the total; it always
    holds the maximum (``top_p <= 0`` keeps the maxima only), and ``top_p >= 1`` keeps everything.
    """
    limbs, lb = fixed_point_limbs(jnp.where(x > -jnp.inf, e, 0), n_global)
    (total,) = limb_masses(x, limbs, [jnp.asarray(-jnp.inf, x.dtype)], lb, psum)
    target = top_p * total
    ans = _bisect(lambda taus: limb_masses(x, limbs, taus, lb, psum), target, x.dtype)
    # Candidates above the maximum have mass 0, which "reaches" top_p <= 0: cap at the maximum.
    tau = jnp.where(ans >= to_u(m), m, _threshold_from_u(ans, x.dtype))
    return jnp.where(top_p < 1, tau, -jnp.inf)
