"""The softargmax-weighted mean ``<x, p>`` tuned for XLA:CPU, and the centred gap of its JVP rule.

:func:`wmean` gives the results of :func:`jaxsoft._reference.wmean` (SPEC 4, 6) in the passes of
``sum(x * jax.nn.softmax(x))``: the row max and two row sums, all plain arithmetic, so that no
select or ``lax.cond`` splits them (measured with jax/jaxlib 0.10.2 on XLA:CPU; the facts it builds
on are those of :mod:`jaxsoft._tuned_cpu` and bench/README.md). :func:`centred_gap` is what
:func:`jaxsoft._core._wmean_jvp` reads to differentiate it without full-size selects.

Every row, for every kernel: ``w = m + <x - m, p>`` with ``m`` the row max, the form that stays
exact for huge shared offsets (``x - m`` is exact near the max, ``<x - m, p>`` is small). The edges
come out of the same arithmetic rather than out of a branch:

* ``+inf`` rows: the gap is capped to 0 (:func:`gap`), so ``<x - m, p>`` is finite and
  ``w = m + <x - m, p> = +inf``;
* empty rows (all ``-inf`` or masked): both sums are 0, and ``w = m + 0 / (0 + tiny) = -inf``;
* NaN rows: ``exp(NaN)`` makes both sums NaN (the max may drop a NaN on long rows, the sums never);
* ``t = 0`` rows: the hard limit is the max, ``m + 0 * <x - m, p>`` (NaN rows stay NaN), with the
  soft sums computed at ``t = 1``: decided per row by arithmetic on ``t``, no ``lax.cond``;
* ``-inf`` entries: their gap is raised to a finite floor (a ``max``, one op per entry), so they
  weigh ``0 * floor = 0`` rather than ``0 * -inf = NaN``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _rowstats
from jaxsoft._tuned_cpu import clamp_max, fuses_row_sums, masked, row_one

# Per-row 1s of this module's full-size terms, sign(|m| + j), with j unused elsewhere (the tuned
# core takes 1 to 3): see jaxsoft._tuned_cpu.row_one.
_TOTAL_ONE = 4
_NUM_ONE = 5
_CENTRED_ONE = 6


# The weight factor's floor in units of tau: exp(-2048) is 0 in float64 and every narrower float,
# so no weight is lost by raising a gap below it; the bound keeps every (x - w) / t of the JVP rule
# where p = 0 within about 2048 + log n (see floored).
GAP_FLOOR = 2048.0


class Gap(NamedTuple):
    """Per-row parameters of :func:`gap`: ``lo = -GAP_FLOOR * tau``, ``hi = 0``, the shift ``c``,
    and the weights' divisor ``tau = t / 2`` (``None`` without ``t``)."""

    lo: jax.Array
    hi: jax.Array
    c: jax.Array
    tau: jax.Array | None


def gap_params(m: jax.Array, t: jax.Array | None, j: int) -> Gap:
    """The :class:`Gap` of rows with max ``m`` and temperature ``t`` (no zeros; ``None`` for 1).

    The shift ``c`` is ``m`` clamped to ``[-finfo.max, finfo.max]``
    (:func:`jaxsoft._tuned_cpu.clamp_max`), halved with ``t``; ``tau = t / 2`` (the halving of
    :func:`jaxsoft._rowstats.zdiff`), or 1. All per-row arithmetic on ``row_one(m, j)``
    (:func:`jaxsoft._tuned_cpu.row_one`): constant bounds would make XLA turn the min/max pair
    into a ``clamp``, which YNNPACK does not fuse (jax 0.10.2). The bounds carry no derivative.
    """
    one = row_one(m, j)
    c = clamp_max(m, one)
    if t is None:
        lo = -GAP_FLOOR * one
    else:  # not below -finfo.max: -1024 t overflows for t > 3e35 (float32)
        lo = jnp.maximum(-jnp.finfo(m.dtype).max * one, (-GAP_FLOOR * 0.5) * t * one)
    hi = 0 * one
    # tau on this sum's own 1 too: a per-row t / 2 that two separate sums share is written to memory
    # as a full-size broadcast (jax 0.10.2: 2 MiB more at (256, 2048) float32).
    tau = None if t is None else t * 0.5 * one
    return Gap(*jax.lax.stop_gradient((lo, hi)), c if t is None else c * 0.5, tau)


def gap(x: jax.Array, prm: Gap, t: jax.Array | None) -> jax.Array:
    """``d = min(0, x - c)`` (``x/2 - c`` with ``t``): the gap ``x - m``, capped at 0 for ``+inf``.

    On rows with a finite max this is ``x - m`` (halved with ``t``, so that it never overflows:
    :func:`jaxsoft._rowstats.zdiff`); the weights are ``exp(d / tau)``. On a ``+inf`` row the
    shift is ``finfo.max`` and the ``+inf`` entries' ``+inf`` is lowered to 0, so the weights
    are finite: the row's mean is ``+inf + <d, p> = +inf`` for any finite ``<d, p>``, and the JVP
    rule needs the gap only where ``p > 0``, on the ``+inf`` entries (:func:`centred_gap`). An
    empty row's shift ``-finfo.max`` keeps ``-inf - c`` from being NaN. One op per entry more than
    ``x - m`` (:func:`jaxsoft._tuned_cpu.capped_gap` takes two for the exact weights of ``+inf``
    rows, which the mean does not need). NaN entries stay NaN: they are the *second* operand of
    the min (XLA:CPU's returns its second operand when one of them is NaN, jax 0.10.2).
    """
    d = x - prm.c if t is None else x * 0.5 - prm.c
    return jnp.minimum(prm.hi, d)


def floored(d: jax.Array, prm: Gap) -> jax.Array:
    """``max(lo, d)``: the gap :func:`gap` as a weight's factor, raised to ``lo = -2048 tau``.

    ``lo`` is :data:`GAP_FLOOR` in units of ``tau`` (at least ``-finfo.max``), below which
    ``exp(d / tau)`` is 0, so the weighted sum loses nothing, and a ``-inf`` entry's weight 0
    times ``lo`` is 0 rather than NaN. Every ``max(lo, d) / tau`` lies in ``[-2048, 0]``, so the
    JVP rule's ``(x - w) / t`` is bounded where ``p = 0``: its higher derivatives pass cotangents
    through those entries (times ``p = 0``), which must stay finite (an ``inf`` there gave NaN
    Hessians with a mask). NaN stays NaN (second operand, see :func:`gap`).
    """
    return jnp.maximum(prm.lo, d)


def _mean_gap(x: jax.Array, m: jax.Array, t: jax.Array | None) -> jax.Array:
    """``<d, p>`` per row (:func:`gap`, :func:`floored`): ``sum(max(lo, d) * e) / sum(e)``,
    ``e = exp(d / tau)``, ``tau = t / 2`` (the halving) or 1.

    Where XLA:CPU runs the max and the sums as one YNNPACK loop (from 4096 rows on,
    :func:`jaxsoft._tuned_cpu.fuses_row_sums`) the two sums share ``e`` and the second reads the
    first, ``sum(max(lo, d) * (e * (1 / (total + tiny))))``, as in ``sum(x * jax.nn.softmax(x))``:
    with two independent sums of the same ``e`` that loop took 9-11x ``jax.nn``'s time at
    ``(4096, 1024)``, the chained form 1.0x for the plain ``x - m`` gap (jax 0.10.2). Elsewhere the
    sums are separate loops, each computing its terms from its own per-row operands
    (:func:`jaxsoft._tuned_cpu.row_one`), and independent (5% faster at ``(16, 262144)``, one
    multiply less).
    """
    prm = gap_params(m, t, _TOTAL_ONE)
    d = gap(x, prm, t)
    e = jnp.exp(d if prm.tau is None else d / prm.tau)
    total = jnp.sum(e, axis=-1, keepdims=True)
    tiny = jnp.finfo(x.dtype).tiny  # 0 / tiny = 0 on empty rows
    if fuses_row_sums(x):
        # The 1 is this sum's own: XLA rewrites the tuned core's p = e / den as e * (1 / den), and a
        # full-size broadcast of one per-row value shared with a backward pass is written to memory
        # (jax 0.10.2).
        r = row_one(m, _NUM_ONE) / (total + tiny)
        return jnp.sum(floored(d, prm) * (e * r), axis=-1, keepdims=True)
    prm = gap_params(m, t, _NUM_ONE)
    d = gap(x, prm, t)
    e = jnp.exp(d if prm.tau is None else d / prm.tau)
    return jnp.sum(floored(d, prm) * e, axis=-1, keepdims=True) / (total + tiny)


def wmean(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``<x, p>`` per row, as :func:`jaxsoft._reference.wmean`: the max and two row sums.

    ``w = m + <x - m, p>`` (with ``t``: ``2 (m/2 + <(x - m)/2, p>)``, exact in the halving), the
    mean gap from :func:`_mean_gap`. On every row (module docstring) the same formula, with no
    select on ``x`` but the mask's and no :func:`jax.lax.cond`: the previous kernel decided an
    exact path on the row max (``any(m == +inf)``), which split the max out of the fused loop and
    made XLA write the float32 copy of a bfloat16 ``x`` (jax 0.10.2).

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[2.0, 2.0, -jnp.inf], [1.0, jnp.inf, 3.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
      >>> wmean(x, None, None).ravel()
      Array([  2.,  inf, -inf], dtype=float32)
      >>> wmean(jnp.array([[1.0, 3.0, 3.0]]), jnp.zeros((1, 1)), None)  # t = 0: the max
      Array([[3.]], dtype=float32)
    """
    x = masked(x, mask)
    m = jnp.max(x, axis=-1, keepdims=True)
    q = _mean_gap(x, m, _rowstats.safe_t(t))  # <x - m, p>, halved with t
    if t is None:
        return m + q
    # sign(t) is 0 on t = 0 rows (their limit is the max; 0 * NaN keeps a NaN row NaN), else 1.
    return 2 * (m * 0.5 + jnp.sign(t) * q)


def centred_gap(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None, p: jax.Array
) -> tuple[jax.Array, jax.Array | None]:
    """``(u, s)`` with ``u / s = (x - <x, p>) / t`` wherever ``p > 0``, bounded everywhere.

    What the JVP rule of the weighted mean needs: ``d<x, p> = <p (1 + (x - w) / t), dx>`` (SPEC
    4.2). ``x - w`` itself would carry the rounding of a huge ``w`` (tied maxima near
    ``finfo.max``), which ``1 / t`` magnifies for a tiny ``t``; so ``u = g - <g, p>`` with ``g``
    the :func:`floored` :func:`gap` ``x - m`` (exact near the max; halved, with ``s = t / 2``,
    when ``t`` is given, so that it never overflows). ``p`` is the row's softargmax. Where
    ``p = 0`` (``-inf`` and masked entries, underflow, the finite entries of a ``+inf`` row)
    ``u / s`` is not the true gap but lies in ``[-2048, log n]`` (``-<g, p> / s`` is at most the
    entropy of ``p``), so ``p * u`` is 0 there with no select, and so are the cotangents that
    higher derivatives send through those entries. On ``+inf`` rows
    ``u`` is 0 on the ``+inf`` entries (the limit). ``s`` is ``None`` for ``t = 1``; at ``t = 0``
    ``u`` is 0 on the maxima, the only entries with ``p > 0``.

    Plain arithmetic on full-size values: the previous rule's ``where`` on ``(batch, n)`` arrays
    made XLA:CPU write them to memory (jax 0.10.2). Differentiable: the max's derivative cancels
    out of ``g - <g, p>``.
    """
    x = masked(x, mask)
    m = jnp.max(x, axis=-1, keepdims=True)
    t = _rowstats.safe_t(t)
    prm = gap_params(m, t, _CENTRED_ONE)
    g = floored(gap(x, prm, t), prm)
    u = g - jnp.sum(p * g, axis=-1, keepdims=True)
    return u, (None if t is None else t * 0.5)
