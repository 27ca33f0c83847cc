"""A kernel tuned for XLA:CPU: the results of :mod:`jaxsoft._reference` in fewer passes over ``x``.

Measured with jax/jaxlib 0.10.2 (XLA:CPU with YNNPACK fusions) on a 2-core AMD EPYC VM; the
profiles are in bench/README.md. What it builds on:

* XLA:CPU runs a row reduction and its elementwise producers as one vectorised YNNPACK loop only
  when every op is plain float arithmetic (add, sub, mul, div, min, max, exp, log, log1p, ...).
  A compare or a select (``jnp.where``) on a full-size value, or a clamp (which XLA makes of
  ``min(1, max(0, .))`` with constant bounds), turns the producer into an XLA loop fusion that
  writes the whole ``(batch, n)`` intermediate to memory first. ``jax.nn.softmax`` is a single
  such fusion with no temporary memory. So every full-size op here is arithmetic; selects act on
  per-row values only (or on the mask, which needs one).
* XLA:CPU flushes subnormals to zero, which the indicators below rely on.

Structure: :func:`_row_stats` computes the per-row statistics (max, normaliser, ``log1p`` form) with
plain arithmetic that is exact on every regular row (finite entries, ``-inf`` entries, all ``-inf``
rows, NaN rows, any ``t > 0``). Hard rows (a ``+inf`` entry, or ``t = 0``) are the only ones it gets
wrong; a batch holding one takes :func:`_hard_stats` instead (one :func:`jax.lax.cond` on per-row
values). Both give per-row parameters of one elementwise formula (:func:`_outputs`), which yields
the soft and the hard results alike. Nothing full-size crosses the ``cond``, so XLA can drop the
outputs nobody uses and recompute ``p`` in the backward pass rather than store it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def shift(m: jax.Array) -> jax.Array:
    """The per-row shift ``max(m, -finfo.max)``: ``m`` itself, except ``-finfo.max`` on empty rows.

    Why: an all ``-inf`` row shifted by its own max computes ``-inf - (-inf) = NaN``; shifted by the
    finite ``-finfo.max`` every entry stays ``-inf``, so its ``exp`` is 0 and the sums are 0 with
    no select on the full-size array (jax 0.10.2: a per-row ``max`` costs nothing measurable).
    """
    return jnp.maximum(m, -jnp.finfo(m.dtype).max)


def big_power(dtype, down: int = 0) -> float:
    """``2^(maxexp - 1 - down)``: the largest power of two of ``dtype`` (``2^127`` in float32,
    ``2^1023`` in float64), so that it scales the smallest normal gap ``2^(1 - maxexp)`` to 2."""
    return 2.0 ** (jnp.finfo(dtype).maxexp - 1 - down)


def not_max(d: jax.Array) -> jax.Array:
    """An arithmetic indicator of the non-maximal entries: 0 where ``d = x - max = 0``, else 1.

    ``min(1, d * -2^127)`` (float32; :func:`big_power` in general): any ``d <= -2^-126`` (every
    non-zero gap: XLA:CPU flushes subnormal ones to 0) scales to at least 2, and ``-inf`` to ``+inf``, both clamped to 1. A multiply and a
    min keep the sum of ``exp(z) * not_max(d)`` inside the YNNPACK fusion, where
    ``jnp.where(x == m, 0, exp(z))`` would write a ``(batch, n)`` temporary first (jax 0.10.2).
    """
    return jnp.minimum(1, d * -big_power(d.dtype))


def is_max(d: jax.Array, one: jax.Array | float, zero: jax.Array | float) -> jax.Array:
    """An arithmetic indicator of the maxima: 1 where ``d = x - max = 0``, else 0.

    ``max(0, 1 + d * 2^126)`` (float32): the complement of :func:`not_max`, for the count of maxima.
    ``one`` and ``zero`` are per-row arrays of 1 and 0 (:func:`row_constants`).
    """
    return jnp.maximum(zero, one + d * big_power(d.dtype, 1))


def row_constants(m: jax.Array, *values: float) -> tuple[jax.Array, ...]:
    """Per-row arrays holding ``values``, computed from ``m`` so that XLA cannot fold or merge them.

    XLA:CPU (jax 0.10.2) writes a broadcast constant that two fusions share (the 1 in
    :func:`not_max` and in :func:`is_max`, say) to memory as a full-size array, whenever those
    sums are not fused together (which depends on the shape); it merges identical constants even
    behind :func:`jax.lax.optimization_barrier`. ``sign(|m| + 1)`` is 1 on every row (NaN on a
    NaN row, whose results are NaN anyway) and is data, so each use stays its own per-row operand.
    """
    one = jnp.sign(jnp.abs(m) + 1)
    return tuple(one * v for v in values)


def log_norm(s: jax.Array, count: jax.Array) -> jax.Array:
    """``log sum exp(z) = log1p(s + (count - 1))`` from the non-maximal mass and the count of maxima.

    With a single maximum this is ``log1p(s)``, accurate when ``s`` is tiny (SPEC 2.5, 3.2); with
    ties ``count - 1`` is an exact small integer. On an empty row (``s = count = 0``) it is
    ``log1p(-1) = -inf``, which makes ``lse = shift + t * (-inf) = -inf`` without a select.
    """
    return jnp.log1p(s + (count - 1))


def halved(x: jax.Array, c: jax.Array, t: jax.Array | None) -> jax.Array:
    """``z = (x - c) / t``, as ``(x/2 - c/2) / (t/2)`` when ``t`` is given (no overflow, same
    rounding: see :func:`jaxsoft._reference.scaled_gap`)."""
    if t is None:
        return x - c
    return (x * 0.5 - c * 0.5) / (t * 0.5)


class RowStats(NamedTuple):
    """Per-row values from which :func:`_outputs` writes every output in one elementwise pass.

    ``z = ((min(x * h, b) - c) / tau) * k * k``, ``p = exp(z) / den``, ``log p = z - log_den``. On a
    soft row ``(h, b, c, tau, k) = (1, inf, max, 1, 1)`` (with ``t``: ``(1/2, inf, max/2, t/2, 1)``)
    makes ``z`` the usual ``(x - max) / t``; hard rows use other values (:func:`_hard_stats`).
    """

    lse: jax.Array
    h: jax.Array | None  # None: 1 (no multiply)
    b: jax.Array | None  # None: +inf (no min)
    c: jax.Array
    tau: jax.Array | None  # None: 1 (no division)
    k: jax.Array | None  # None: 1 (no multiply)
    den: jax.Array
    log_den: jax.Array


def _soft_sums(x: jax.Array, t: jax.Array | None, m: jax.Array, apart: bool = True):
    """``(shift, total, s, count)``: three sums of plain arithmetic.

    ``total = sum exp(z)`` (all softargmax needs), ``s`` = the same without the maxima, and the
    count of maxima. Exact on every row without a ``+inf`` entry or ``t = 0``; NaN entries make
    ``total`` and ``s`` NaN, which is the right answer for a NaN row.

    ``apart=True`` gives each sum its own copies of the per-row values and constants
    (:func:`row_constants`): whether XLA fuses the sums into one loop depends on the shape
    (jax 0.10.2), and where it does not, any full-size term or broadcast constant they share is
    written to memory first. ``apart=False`` (:func:`core`) lets XLA fuse everything, the output
    included, into one loop as in ``jax.nn.softmax``.
    """
    ms = shift(m)
    total = jnp.sum(jnp.exp(halved(x, ms, t)), axis=-1, keepdims=True)
    if apart:
        ms2, t2, ms3 = jax.lax.optimization_barrier((ms, t, ms))
        one, zero = row_constants(m, 1.0, 0.0)
    else:
        ms2, t2, ms3 = ms, t, ms
        one, zero = 1.0, 0.0
    # The indicators depend on x == m only, not on t.
    s = jnp.sum(jnp.exp(halved(x, ms2, t2)) * not_max(x - ms2), axis=-1, keepdims=True)
    count = jnp.sum(is_max(x - ms3, one, zero), axis=-1, keepdims=True)
    return ms, total, s, count


def _soft_stats(x: jax.Array, t: jax.Array | None, m: jax.Array, apart: bool = True) -> RowStats:
    """Row statistics of the soft rows, in per-row arithmetic (a per-row select between the sums
    and the output would split the forward pass's single fusion, jax 0.10.2).

    Empty rows (``total = s = count = 0``): ``lse = -finfo.max + t * log1p(-1) = -inf``; ``p``
    divides ``exp(-inf) = 0`` by ``total + tiny`` (exactly ``total`` on every other row, where
    ``total >= 1``); ``log p = -inf - log_den`` with ``log_den`` taken at ``count = 1`` there,
    ``count + 1 - min(1, count)``, which is ``count`` on every other row.
    """
    ms, total, s, count = _soft_sums(x, t, m, apart)
    log_total = log_norm(s, count)
    lse = ms + (log_total if t is None else t * log_total)
    den = total + jnp.finfo(x.dtype).tiny
    log_den = log_norm(s, count + (1 - jnp.minimum(1, count)))
    if t is None:
        return RowStats(lse, None, None, ms, None, None, den, log_den)
    return RowStats(lse, jnp.full_like(ms, 0.5), None, ms * 0.5, t * 0.5, None, den, log_den)


def hard_max(x: jax.Array, m: jax.Array) -> jax.Array:
    """An arithmetic indicator of the maxima of hard rows, finite or ``+inf``: 1 there, else 0.

    ``min(1, max(0, (x - c) * a + o))`` with per-row ``(c, a, o)``: ``(max, 2^126, 1)`` on a row
    with a finite max (as :func:`is_max`), ``(finfo.max, 1, 0)`` on a ``+inf`` row, where
    ``x - finfo.max`` is ``+inf`` on the ``+inf`` entries and ``<= 0`` on every other one (the usual
    ``x - m`` would be ``inf - inf = NaN`` there). The bounds are per-row arrays: with constant
    bounds XLA rewrites the min/max pair into a clamp, which YNNPACK does not fuse (jax 0.10.2).
    """
    pos_inf = m == jnp.inf
    c = jnp.where(pos_inf, jnp.finfo(x.dtype).max, shift(m))
    a = jnp.where(pos_inf, 1, big_power(x.dtype, 1)).astype(x.dtype)
    o = jnp.where(pos_inf, 0, 1).astype(x.dtype)
    c, a, o = jax.lax.optimization_barrier((c, a, o))  # keep their selects out of the sum
    one, zero = row_constants(m, 1.0, 0.0)
    return jnp.minimum(one, jnp.maximum(zero, (x - c) * a + o))


def nan_rows(x: jax.Array) -> jax.Array:
    """Per-row flag: True where the row holds a NaN (``+-inf`` do not count).

    ``isnan(sum(exp(-|x|) * 0))``: the term is 0 for every ``x`` but NaN, infinities included, and
    stays a fused sum. The max reduction cannot tell: XLA:CPU's fused max drops NaN on rows of 1024
    or more (jax 0.10.2: an all-NaN row of 4096 has max ``-inf``). The 0 is a per-row array hidden
    behind :func:`jax.lax.optimization_barrier`: a broadcast constant 0 shared with another sum's
    terms (``is_max``'s) is written to memory as a full-size array (jax 0.10.2).
    """
    (zero,) = row_constants(jnp.zeros(x.shape[:-1] + (1,), x.dtype), 0.0)
    return jnp.isnan(jnp.sum(jnp.exp(-jnp.abs(x)) * zero, axis=-1, keepdims=True))


def _hard_stats(x: jax.Array, t: jax.Array | None, m: jax.Array) -> RowStats:
    """Row statistics for a batch holding hard rows (``t = 0`` or a ``+inf`` entry).

    Soft rows as in :func:`_soft_stats`. A hard row's limit is uniform over its ``c`` maxima:
    ``z = 0`` there and ``-inf`` elsewhere, from ``k = 2^127`` (:func:`big_power`) applied twice
    to a gap that is ``<= -2^-126`` off the maxima; on a ``+inf`` row the gap is
    ``min(x/2, finfo.max) - finfo.max``, 0 on the ``+inf`` entries only. Then ``den = c``,
    ``log_den = log c``, ``lse = max``. The soft sums run on hard rows with stand-ins (shift 0,
    ``t = 1``) and are not used there.
    """
    dtype = x.dtype
    big = jnp.finfo(dtype).max
    pos_inf = m == jnp.inf
    hard = pos_inf if t is None else pos_inf | (t == 0)
    t_soft = None if t is None else jnp.where(hard, 1, t)
    # Behind a barrier, so that these per-row selects are not fused into full-size producers.
    m_soft, t_soft = jax.lax.optimization_barrier((jnp.where(pos_inf, 0, m), t_soft))
    soft = _soft_stats(x, t_soft, m_soft)
    count = jnp.sum(hard_max(x, m), axis=-1, keepdims=True)
    nan = nan_rows(x)
    empty = m == _NEG_INF

    def pick(hard_value, soft_value):
        if soft_value is None:
            soft_value = jnp.ones_like(m)
        return jnp.where(hard, jnp.asarray(hard_value, dtype), soft_value)

    one = jnp.ones_like(m)
    return RowStats(
        lse=jnp.where(nan, jnp.nan, jnp.where(hard, m, soft.lse)),
        h=pick(jnp.where(pos_inf, 0.5, 1), soft.h),
        b=jnp.where(pos_inf, big, jnp.inf),
        c=pick(jnp.where(pos_inf, big, shift(m)), soft.c),
        tau=pick(one, soft.tau),
        k=pick(big_power(dtype), None),
        den=jnp.where(nan, jnp.nan, pick(jnp.where(empty, 1, count), soft.den)),
        log_den=jnp.where(nan, jnp.nan, pick(jnp.where(empty, 0, jnp.log(count)), soft.log_den)),
    )


def _outputs(x: jax.Array, st: RowStats, mask: jax.Array | None):
    """``(lse, p, log p)`` from the row statistics, in one elementwise pass of plain arithmetic.

    XLA computes only the outputs that are used, and in a backward pass recomputes ``p`` from ``x``
    and these per-row values inside the fusion that needs it, as it does for ``jax.nn``.
    """
    u = x if st.h is None else x * st.h
    if st.b is not None:
        u = jnp.minimum(u, st.b)  # +inf rows only; NaN rows are NaN through den and log_den
    z = u - st.c
    if st.tau is not None:
        z = z / st.tau
    if st.k is not None:
        z = (z * st.k) * st.k  # two per-row factors: their product would overflow
    p = jnp.exp(z) / st.den
    logp = z - st.log_den
    if mask is not None:  # a NaN row's masked entries stay 0 / -inf
        p = jnp.where(mask, p, 0)
        logp = jnp.where(mask, logp, _NEG_INF)
    return st.lse, p, logp


def _prepare(x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """``(x, t_soft, m, any_hard)``: masked ``x``, a ``t`` without zeros, the row max, and whether
    any row is hard (a reduction over per-row values).

    ``t_soft`` has 1 in place of ``t = 0``: such rows only occur in hard batches, where the soft
    values are not used, and it keeps ``(x - m) / 0`` out of the computation (SPEC 6: no
    intermediate NaN or inf on finite inputs).
    """
    if mask is not None:
        x = jnp.where(mask, x, _NEG_INF)  # a masked entry behaves exactly like a -inf one
    m = jnp.max(x, axis=-1, keepdims=True)
    hard = m == jnp.inf
    t_soft = None
    if t is not None:
        hard = hard | (t == 0)
        t_soft = jnp.where(t == 0, 1, t)
    return x, t_soft, m, jnp.any(hard)


def core(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lse, p, log p)``, as :func:`jaxsoft._reference.core`, for the forward pass.

    The soft formulas (no select anywhere on the full-size arrays but the mask) compile, like
    ``jax.nn.softmax``, to one YNNPACK loop that reads each row once from memory; a batch holding
    a hard row then takes :func:`_hard_stats`'s results instead, through a :func:`jax.lax.cond`
    after the fact. XLA drops the outputs that are not used, the cond's included.
    """
    xm, t_soft, m, any_hard = _prepare(x, t, mask)
    fast = _outputs(xm, _soft_stats(xm, t_soft, m, apart=False), mask)
    return jax.lax.cond(any_hard, lambda: _outputs(xm, _hard_stats(xm, t, m), mask), lambda: fast)


def core_for_tangents(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lse, p, log p)`` for ``logsumexp`` and ``log_softargmax`` and the JVP rules that read them.

    The branch is taken on per-row statistics only, and ``p`` and ``log p`` are then elementwise
    formulas of ``x`` and those (:func:`_outputs`), which XLA recomputes inside the backward fusion
    that needs them instead of storing a ``(batch, n)`` array (as it does for ``jax.nn``). ``p`` is
    ``exp(log p)``, so no normaliser sum is needed (a few ulp, as a tangent needs).
    """
    xm, t_soft, m, any_hard = _prepare(x, t, mask)
    soft = _soft_stats(xm, t_soft, m)
    ones = jnp.ones_like(m)
    # The soft branch's None fields as the identity values of the hard branch's structure.
    soft_full = RowStats(
        soft.lse,
        ones if soft.h is None else soft.h,
        jnp.full_like(m, jnp.inf),
        soft.c,
        ones if soft.tau is None else soft.tau,
        ones,
        soft.den,
        soft.log_den,
    )
    st = jax.lax.cond(any_hard, lambda: _hard_stats(xm, t, m), lambda: soft_full)
    lse, _, logp = _outputs(xm, st, mask)
    # p = exp(log p) needs no normaliser, so the sum of exp(z) is not computed at all (jax.nn's
    # logsumexp gradient is exp(x - lse) likewise); exact to a few ulp, as a tangent needs.
    return lse, jnp.exp(logp), logp


def _soft_wmean(x: jax.Array, t: jax.Array | None, m: jax.Array) -> jax.Array:
    """``<x, p>`` on rows that are not hard: ``m + <x - m, p>``, exactly ``m`` when all are equal.

    Two sums, fused with the max like ``sum(x * jax.nn.softmax(x))``. ``-inf`` entries (and gaps
    that overflow, where ``exp`` is 0 anyway) are clamped to ``-finfo.max``, so they weigh
    ``0 * -finfo.max = 0`` rather than ``0 * -inf = NaN``; halving keeps the gaps finite with ``t``.
    """
    big = jnp.finfo(x.dtype).max
    ms = shift(m)
    total = jnp.sum(jnp.exp(halved(x, ms, t)), axis=-1, keepdims=True)
    # The weighted sum recomputes exp from its own copies of the per-row values: XLA:CPU writes a
    # full-size term shared by two sums in different fusions to memory (jax 0.10.2).
    ms, t = jax.lax.optimization_barrier((ms, t))
    if t is None:
        d = x - ms
        num = jnp.sum(jnp.maximum(d, -big) * jnp.exp(d), axis=-1, keepdims=True)
        w = ms + num / total
    else:
        dh = x * 0.5 - ms * 0.5
        num = jnp.sum(jnp.maximum(dh, -big) * jnp.exp(dh / (t * 0.5)), axis=-1, keepdims=True)
        w = 2 * (ms * 0.5 + num / total)  # exact in the halving
    return jnp.where(total == 0, _NEG_INF, w)


def wmean(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``<x, p>`` per row, as :func:`jaxsoft._reference.wmean`: the max and two fused sums.

    Hard batches (as in :func:`core`) take the same sums with stand-ins, then the limit per row:
    the max (``+inf`` on a ``+inf`` row), and NaN on NaN rows.
    """
    x, t_soft, m, any_hard = _prepare(x, t, mask)
    pos_inf = m == jnp.inf
    hard = pos_inf if t is None else pos_inf | (t == 0)
    soft = _soft_wmean(x, t_soft, m)

    def hard_branch():
        w = _soft_wmean(x, t_soft, jnp.where(pos_inf, 0, m))
        return jnp.where(nan_rows(x), jnp.nan, jnp.where(hard, m, w))

    return jax.lax.cond(any_hard, hard_branch, lambda: soft)
