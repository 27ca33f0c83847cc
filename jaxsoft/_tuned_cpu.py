"""A kernel tuned for XLA:CPU: the results of :mod:`jaxsoft._reference` in fewer passes over ``x``.

Measured with jax/jaxlib 0.10.2 (XLA:CPU with YNNPACK fusions) on a 2-core AMD EPYC VM; the
profiles are in bench/README.md. What it builds on:

* XLA:CPU runs a row reduction and its elementwise producers as one vectorised YNNPACK loop only
  when every op is plain float arithmetic (add, sub, mul, div, min, max, exp, log, log1p, floor,
  ...). A compare or a select (``jnp.where``), or a clamp (which XLA makes of ``min(1, max(0, .))``
  with constant bounds), becomes an XLA loop fusion of its own. On a full-size value that writes
  the whole ``(batch, n)`` intermediate to memory first; on a per-row value it splits the max out
  of the loop, so ``x`` is read again, and a bfloat16 ``x`` (converted to float32 by the caller,
  SPEC 7) has its float32 copy written to memory because two fusions read it. ``jax.nn.softmax``
  is a single such loop with no temporary memory. So every op here, per-row ones included, is
  arithmetic; selects act on the mask only.
* A :func:`jax.lax.cond` whose operand is the float32 copy of a bfloat16 ``x``, or whose result is
  a full-size float32 array that is then converted to bfloat16, costs that copy too (the previous
  kernel's ``+inf`` check: bfloat16 ``softargmax`` 7-8x ``jax.nn``'s time). ``+inf`` rows are
  therefore exact in the arithmetic itself (:func:`capped_gap`), and so are ``t = 0`` rows
  (:func:`hard_scale`): the kernel has no ``cond``. A ``cond`` on ``t`` alone used to take
  ``t = 0`` batches to a second copy of the statistics, which doubled the size of every program
  with a ``t`` (compile time: the divergences' test file 28% shorter without it).
* XLA:CPU flushes subnormals to zero, which the indicators below rely on; its ``min`` and ``max``
  return the second operand when one is NaN, so NaN-carrying values go second.

Structure: :func:`_stats` computes every row's statistics (max, normaliser, the ``log1p``
form's mass off the maxima and count of maxima) in plain arithmetic, exact on every row, ``t = 0``
ones included, with no branch. It gives per-row parameters (:class:`RowStats`) of one elementwise
formula (:func:`_outputs`), which yields the soft and the hard results alike; XLA drops the
outputs nobody uses and recomputes ``p`` in the backward pass rather than store it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _rowstats, _tuned_subrows

_NEG_INF = -jnp.inf


def big_power(dtype, down: int = 0) -> float:
    """``2^(maxexp - 1 - down)``: the largest power of two of ``dtype`` (``2^127`` in float32,
    ``2^1023`` in float64), so that it scales the smallest normal gap ``2^(1 - maxexp)`` to 2."""
    return 2.0 ** (jnp.finfo(dtype).maxexp - 1 - down)


def row_one(m: jax.Array, j: int = 1) -> jax.Array:
    """A per-row 1 (NaN on NaN rows), ``sign(|m| + j)``, that XLA can neither fold nor merge.

    XLA:CPU (jax 0.10.2) writes a broadcast constant or per-row value that two fusions share to
    memory as a full-size array whenever those fusions are not one loop (which depends on the
    shape), and it merges identical constants even behind :func:`jax.lax.optimization_barrier`.
    Being data, ``sign(|m| + j)`` stays each use's own per-row operand; a different ``j`` gives a
    different one (:func:`distinct_ones`; the weighted mean's sums take ``j`` of their own).
    """
    return jnp.sign(jnp.abs(m) + j)


def finite_max_rows(m: jax.Array, one: jax.Array) -> jax.Array:
    """Per-row ``exp(min(0, finfo.max - m))``: 1 where the row max is below ``+inf``, else 0.

    ``finfo.max - m`` is ``>= 0`` for every finite max (and ``+inf`` for an empty row's ``-inf``),
    so the ``min`` is 0 and its ``exp`` exactly 1; only ``m = +inf`` gives ``exp(-inf) = 0``; NaN
    stays NaN. A per-row compare or select would be a separate XLA loop fusion, which splits the max
    out of the single YNNPACK fusion and, for bfloat16 inputs, makes XLA write the float32 copy of
    ``x`` to memory (jax 0.10.2); this is plain arithmetic, so the whole row stays one fusion.

    Examples:
      >>> import jax.numpy as jnp
      >>> m = jnp.array([[2.0], [jnp.inf], [-jnp.inf]])
      >>> finite_max_rows(m, jnp.ones_like(m)).ravel()
      Array([1., 0., 1.], dtype=float32)
    """
    return jnp.exp(jnp.minimum(0 * one, jnp.finfo(m.dtype).max * one - m))


def clamp_max(m: jax.Array, one: jax.Array) -> jax.Array:
    """The row max clamped to ``[-finfo.max, finfo.max]``, with per-row bounds.

    The shift of a row: ``m`` itself on every row with finite entries; ``-finfo.max`` on an empty
    row (so that ``-inf - (-finfo.max) = -inf`` rather than ``-inf - (-inf) = NaN``, no select
    needed); ``finfo.max`` on a ``+inf`` row (see :func:`capped_gap`). The bounds are per-row
    data (``one``, a data-derived 1: :func:`distinct_ones`): with constant bounds XLA makes the
    min/max pair a ``clamp``, which YNNPACK does not fuse (jax 0.10.2).
    """
    big = jnp.finfo(m.dtype).max
    return jnp.minimum(jnp.maximum(m, -big * one), big * one)


def capped_gap(
    x: jax.Array, h: jax.Array | float, b: jax.Array, c: jax.Array, tau: jax.Array | None = None
) -> jax.Array:
    """``z = (min(x * h, b) - c) / tau``, ``b = finfo.max``: the scaled gap to the max, exact on
    ``+inf`` rows too.

    Soft rows take ``h = 1, c = max`` (with ``t``: ``h = 1/2, c = max/2, tau = t/2``, the halving of
    :func:`jaxsoft._rowstats.zdiff`), so the cap is a no-op and ``z = (x - max) / t``. A
    ``+inf`` row takes ``h = 1/2, c = finfo.max``: its ``+inf`` entries are capped to ``finfo.max``
    and get ``z = 0``, every finite one (``finfo.max`` itself included) ``z <= -finfo.max / 2``,
    whose ``exp`` is 0. So ``+inf`` rows need no separate exact path (and no ``lax.cond``, whose
    operand would make XLA write the float32 copy of a bfloat16 ``x`` to memory, jax 0.10.2), at
    the price of a multiply and a min per entry. NaN entries must stay NaN: XLA:CPU's min returns
    its *second* operand when one of them is NaN (x86 ``minps``; ``min(x, b)`` gave ``b`` for a
    NaN ``x`` at some shapes, jax 0.10.2), so ``x`` goes second. The cap ``b`` is a per-row array
    (``finfo.max`` times a data-derived 1): as a broadcast constant, XLA wrote it to memory as a
    full-size array when the forward and the backward fusions both used it (jax 0.10.2).

    Examples:
      A ``+inf`` row's parameters: ``exp(z)`` is 1 on the ``+inf`` entries only.

      >>> import jax.numpy as jnp
      >>> x = jnp.array([[jnp.inf, 3e38, 1.0, jnp.inf]])
      >>> b = jnp.full((1, 1), jnp.finfo(jnp.float32).max)
      >>> jnp.exp(capped_gap(x, 0.5, b, b))
      Array([[1., 0., 0., 1.]], dtype=float32)
    """
    z = jnp.minimum(b, x * h) - c  # in this order: see above
    return z if tau is None else z / tau


class RowStats(NamedTuple):
    """Per-row values from which :func:`_outputs` writes every output in one elementwise pass.

    ``z = capped_gap(x, h, b, c, tau)`` (``b = finfo.max``), ``p = exp(z') / den``,
    ``log p = z' - log_den``. Without ``t`` (``tau`` is None): ``z' = z`` for ``p`` and ``z * k``
    for ``log p``, with ``k = 2^127`` on ``+inf`` rows (their finite entries' ``z <= -finfo.max/2``
    becomes ``-inf``) and 1 elsewhere. With ``t``: ``z' = (z * k) * k``, ``k = 1`` on soft rows
    and ``2^127`` on ``t = 0`` rows (:func:`hard_scale`); ``+inf`` rows reach ``-inf`` through
    ``tau = finfo.tiny``.
    """

    lse: jax.Array
    h: jax.Array
    b: jax.Array
    c: jax.Array
    tau: jax.Array | None
    k: jax.Array | None
    den: jax.Array
    log_den: jax.Array


# The batch size from which one loop takes the max and every sum (fuses_row_sums); shared with the
# sub-row form, which views smaller batches as at least this many rows.
FUSED_ROWS = _tuned_subrows.FUSED_ROWS


def fuses_row_sums(x: jax.Array) -> bool:
    """Whether XLA:CPU compiles the max, the per-row arithmetic and the row sums into one loop.

    Measured with jax 0.10.2: from 4096 rows on (4097 and 8192 too, rows of 512 to 4096 entries)
    the whole of :func:`_stats` is one YNNPACK fusion, so its sums can share ``exp(z)``;
    below (4000 rows, 256, 16) the per-row arithmetic runs as separate XLA loops, the sums land in
    separate fusions, and a shared full-size term (``exp(z)``, ``floor(exp(z))``) is written to
    memory first (a ``(batch, n)`` temporary, 4-5x the time of ``logsumexp``). A static choice on
    the shape: both forms give the same results. Only where nothing but a per-row result leaves
    the loop: a backward pass that reads the per-row statistics too splits the max out at any
    batch size (:func:`core_for_tangents`).
    """
    return math.prod(x.shape[:-1]) >= FUSED_ROWS


def distinct_ones(m: jax.Array, count: int) -> list[jax.Array]:
    """``count`` per-row arrays of 1 (NaN on NaN rows), ``sign(|m| + j)``, that XLA cannot merge.

    Each row sum gets its own per-row operands built from its own 1 where the sums are not fused
    (:func:`fuses_row_sums`): two sums whose terms XLA can prove equal share them, and the shared
    full-size term is then written to memory (jax 0.10.2).
    """
    return [row_one(m, j) for j in range(1, count + 1)]


def not_max(z: jax.Array) -> jax.Array:
    """An arithmetic indicator of the non-maximal entries: 0 where ``z = 0``, else 1 (``z <= 0``).

    ``min(1, z * -2^127)`` (float32; :func:`big_power` in general): any ``z <= -2^-126`` (every
    non-zero gap: XLA:CPU flushes subnormal ones to 0) scales to at least 2, and ``-inf`` to
    ``+inf``, both clamped to 1; NaN stays NaN (it is the second operand of the min, see
    :func:`capped_gap`). A multiply and a min keep the sum of ``exp(z) * not_max(z)`` inside the
    YNNPACK fusion, where ``jnp.where(z == 0, 0, exp(z))`` would write a temporary (jax 0.10.2).
    """
    return jnp.minimum(1, z * -big_power(z.dtype))


def is_max(z: jax.Array, one: jax.Array, zero: jax.Array) -> jax.Array:
    """An arithmetic indicator of the maxima: 1 where ``z = 0``, else 0 (``z <= 0``).

    ``max(0, 1 + z * 2^126)`` (float32): the complement of :func:`not_max`, for the count of maxima
    without an ``exp``. ``one`` and ``zero`` are per-row arrays of 1 and 0 (constant bounds would
    make XLA merge them with other sums' constants, jax 0.10.2).
    """
    return jnp.maximum(zero, one + z * big_power(z.dtype, 1))


def _row_params(m: jax.Array, t: jax.Array | None, one: jax.Array):
    """``(h, b, c, tau, k)`` of :func:`capped_gap` and :func:`hard_scale` for every row, per row.

    Soft rows: ``(1, finfo.max, max)`` (``t``: ``(1/2, finfo.max, max/2, t/2)``); ``+inf`` rows:
    ``(1/2, finfo.max, finfo.max)`` and ``k = 2^127`` (``t``: ``tau = finfo.tiny``, which sends the
    finite entries to ``-inf`` already); empty rows shift by ``-finfo.max``. ``t = 0`` rows:
    ``(1, finfo.max, max, 1)`` and ``k = 2^127`` (the hard limit, :func:`hard_scale`); ``k = 1`` on
    the other rows with a ``t``. Arithmetic only (:func:`finite_max_rows`, :func:`clamp_max`; which
    rows have ``t = 0`` is read from ``t`` alone, before the loop over ``x``), so none of it splits
    the fusion.
    """
    dtype = m.dtype
    below = finite_max_rows(m, one)
    c = clamp_max(m, one)
    b = jnp.finfo(dtype).max * one
    if t is None:
        h = 0.5 + 0.5 * below
        return h, b, c, None, 1 + big_power(dtype) * (1 - below)
    # 1 on t = 0 rows, else 0, in arithmetic (a compare on a value that meets the max splits the
    # loop) and times this sum's own 1 (a per-row value two sums share is written as a full-size
    # broadcast where they are separate loops, see distinct_ones; jax 0.10.2). Being data, the 1
    # also keeps XLA from folding hard_scale's (z * k) * k into z * inf when t is a constant.
    hard = (1 - jnp.abs(jnp.sign(t))) * one
    soft_below = below * (1 - hard)
    h = 0.5 * one + 0.5 * (below - soft_below)  # 1 on finite t = 0 rows, else 1/2
    c = c * (1 - 0.5 * soft_below)  # max/2 on soft rows, max on t = 0 ones, finfo.max on +inf
    tau = (t * 0.5 + hard) * below + jnp.finfo(dtype).tiny * (1 - below)
    return h, b, c, tau, 1 + (big_power(dtype) - 1) * hard


def hard_scale(z: jax.Array, k: jax.Array | None) -> jax.Array:
    """``(z * k) * k``: with ``k = 2^127``, a ``t = 0`` row's gap is ``-inf`` off its maxima.

    Every non-zero gap of a ``t = 0`` row is at least ``2^-126`` in size (the smallest normal:
    XLA:CPU flushes subnormals), which ``2^254`` takes past ``finfo.max``; a maximum's ``z = 0``
    stays 0, NaN stays NaN, so ``exp`` gives the hard argmax's indicator and the row sums count
    the maxima, with no branch. Two factors, as their product would overflow. ``k = 1`` on rows
    with ``t > 0``; without ``t`` (``k`` None) there is nothing to do.
    """
    return z if k is None else (z * k) * k


def _scaled_gap(x: jax.Array, params: tuple, t: jax.Array | None) -> jax.Array:
    """:func:`hard_scale` of :func:`capped_gap` with :func:`_row_params`' ``params``; ``k`` only
    with ``t`` (without it, ``k`` is the ``+inf`` rows' factor for ``log p``: :class:`RowStats`)."""
    h, b, c, tau, k = params
    return hard_scale(capped_gap(x, h, b, c, tau), None if t is None else k)


def _subrow_gaps(y: jax.Array, m: jax.Array, t: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """``(u, z)`` of ``y`` against the per-row max ``m``, for
    :func:`jaxsoft._tuned_subrows.log_total`: ``z`` is :func:`_scaled_gap` (``exp(z)`` the
    weight), ``u`` the gap without ``t`` (:func:`capped_gap` with ``t = 1``'s parameters: ``y - m``
    on rows with a finite max), 0 exactly where ``y = m`` or XLA:CPU flushes ``y - m`` to 0, as the
    sub-rows' own maxima are compared there. ``z``'s halving (with a ``t``) flushes other gaps."""
    one = row_one(m, 2)
    z = _scaled_gap(y, _row_params(m, t, one), t)
    return (z if t is None else capped_gap(y, *_row_params(m, None, one)[:3])), z


def _stats(x: jax.Array, t: jax.Array | None, one_loop: bool, subrows: bool = False) -> RowStats:
    """Row statistics of every row, in plain arithmetic, max included.

    Exact on rows of finite entries, ``-inf`` entries, all ``-inf`` rows, ``+inf`` rows and NaN
    rows, for any ``t >= 0``, with no select and no ``lax.cond``: every full-size op (the max,
    :func:`capped_gap`, ``exp``, ``floor``, the sums) and every per-row one is arithmetic, so
    XLA:CPU keeps ``softargmax``'s max, sum and output in one YNNPACK loop that reads ``x`` once
    with no temporary, as ``jax.nn.softmax`` (jax 0.10.2), for bfloat16 inputs too.

    Three sums: ``total = sum(exp(z))`` (``softargmax``'s normaliser), and, for the ``log1p`` form
    of ``logsumexp`` and ``log_softargmax`` (SPEC 2.5, 3.2), ``s``, the mass off the maxima, and
    ``count``, the number of maxima. XLA computes only the ones that are used. With ``one_loop``
    (where XLA fuses them into one loop: :func:`fuses_row_sums`) they share ``e = exp(z)``:
    ``s = sum(e - floor(e))``, ``count = sum(floor(e))`` (three ops per entry more than
    ``sum(e)``); otherwise each computes its own terms (:func:`distinct_ones`), ``count`` without
    an ``exp`` (:func:`is_max`), or, with ``subrows`` (:func:`core_lse`) where the shape allows,
    the ``log1p`` form comes from one loop over sub-rows (:mod:`jaxsoft._tuned_subrows`).

    Empty rows (``total = s = count = 0``): ``lse = -finfo.max + log1p(-1) = -inf`` (with ``t``,
    ``-inf + t * max(-finfo.max, log1p(-1))``, also at ``t = 0``); ``p``
    divides ``exp(-inf) = 0`` by ``total + tiny``; ``log p = -inf - log_den`` with ``log_den`` taken
    as 0 there. ``(m, count, s)`` are :class:`jaxsoft._rowstats.RowStats`, finished by
    :func:`jaxsoft._rowstats.log_norm`, as in the chunked and sharded functions. ``+inf`` rows:
    ``lse = +inf`` (their shift), ``den`` and ``exp(log_den)`` the count of ``+inf`` entries.
    """
    dtype = x.dtype
    k = None if one_loop or not subrows else _tuned_subrows.subrow_count(x.shape)
    if k:  # the row max from its sub-rows' maxima, which the log1p form reads too
        m_sub = _tuned_subrows.subrow_max(x, k)
        m = jnp.max(m_sub, axis=-1, keepdims=True)
    else:
        m = jnp.max(x, axis=-1, keepdims=True)
    if one_loop:
        # One loop: the sums share exp(z), and the maxima are where it rounds to 1 (floor(e) = 1,
        # which includes gaps under 2^-25, whose exp is 1 in float32 anyway); so
        # s = sum(e - floor(e)) and count = sum(floor(e)) split sum(e) exactly as rounded.
        one = row_one(m)
        params = _row_params(m, t, one)
        e = jnp.exp(_scaled_gap(x, params, t))
        f = jnp.floor(e)
        total = jnp.sum(e, axis=-1, keepdims=True)
        s = jnp.sum(e - f, axis=-1, keepdims=True)
        count = jnp.sum(f, axis=-1, keepdims=True)
    else:
        # Separate loops: each sum computes its terms from x and its own per-row operands; the
        # count of maxima needs no exp (is_max/not_max agree on which entries are maxima).
        one, one_s, one_c = distinct_ones(m, 3)
        params = _row_params(m, t, one)
        total = jnp.sum(jnp.exp(_scaled_gap(x, params, t)), axis=-1, keepdims=True)
        if k:  # the log1p form in one more pass over x (see _tuned_subrows)
            log_total = _tuned_subrows.log_total(x, m_sub, m, t, _subrow_gaps, k, not_max, is_max)
        else:
            z_s = _scaled_gap(x, _row_params(m, t, one_s), t)
            s = jnp.sum(jnp.exp(z_s) * not_max(z_s), axis=-1, keepdims=True)
            z_c = _scaled_gap(x, _row_params(m, t, one_c), t)
            count = jnp.sum(is_max(z_c, one_c, 0 * one_c), axis=-1, keepdims=True)
    if not k:
        # The shared finisher (SPEC 2.5): log1p(s + (count - 1)), plain arithmetic, so it stays
        # in the loop. Both per-row results below come from this one value: two expressions of s
        # and count (log_den as log_norm with the count of an empty row raised to 1) cost
        # logsumexp's value_and_grad a (batch, n) temporary at (4096, 1024) (jax 0.10.2).
        log_total = _rowstats.log_norm(_rowstats.RowStats(m, count, s))
    if t is None:
        lse = jnp.maximum(m, -jnp.finfo(dtype).max * one) + log_total  # -finfo.max on empty rows
    else:
        # log_total is -inf on an empty row only, and 0 * -inf would be NaN at t = 0: bounded
        # (NaN second, see capped_gap), times t, added to the raw max, it gives -inf there, the
        # max on t = 0 rows (NaN on NaN rows) and m + t * log_total elsewhere. A select here
        # split the statistics into XLA loops that wrote exp(z) to memory (jax 0.10.2).
        lse = m + t * jnp.maximum(-jnp.finfo(dtype).max * one, log_total)
    den = total + jnp.finfo(dtype).tiny
    # log_total >= 0 on every row with an entry; 0 instead of -inf on an empty row, so that its
    # log p is -inf - 0; NaN stays NaN (the second operand of the max: see capped_gap).
    log_den = jnp.maximum(0 * one, log_total)
    return RowStats(lse, *params, den, log_den)


def _outputs(x: jax.Array, st: RowStats, mask: jax.Array | None):
    """``(lse, p, log p)`` from the row statistics, in one elementwise pass of plain arithmetic.

    XLA computes only the outputs that are used, and in a backward pass recomputes ``p`` from ``x``
    and these per-row values inside the fusion that needs it, as it does for ``jax.nn``.
    """
    z = capped_gap(x, st.h, st.b, st.c, st.tau)
    if st.tau is None:  # t = 1: k only sends the finite entries of +inf rows to -inf in log p
        p = jnp.exp(z) / st.den
        logp = (z if st.k is None else z * st.k) - st.log_den
    else:
        z = hard_scale(z, st.k)
        p = jnp.exp(z) / st.den
        logp = z - st.log_den
    if mask is not None:  # a NaN row's masked entries stay 0 / -inf
        p = jnp.where(mask, p, 0)
        logp = jnp.where(mask, logp, _NEG_INF)
    return st.lse, p, logp


def masked(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """``x`` with its masked entries at ``-inf``: a masked entry behaves exactly like ``-inf``."""
    return x if mask is None else jnp.where(mask, x, _NEG_INF)


def core(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lse, p, log p)``, as :func:`jaxsoft._reference.core`.

    Without ``t`` (and a mask), softargmax compiles, like ``jax.nn.softmax``, to one YNNPACK loop:
    max, ``sum(exp(z))`` and ``p = exp(z) / den`` while the row is in cache, no temporary; XLA
    drops the outputs that are not used. The forwards of ``logsumexp`` and ``log_softargmax``, and
    ``log_softargmax``'s JVP rule, use it too: from :data:`FUSED_ROWS` rows their max, sums and
    output are one such loop (:func:`fuses_row_sums`).
    """
    xm = masked(x, mask)
    return _outputs(xm, _stats(xm, t, fuses_row_sums(xm)), mask)


def core_lse(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`core` for ``logsumexp``'s forward value: below :data:`FUSED_ROWS` rows, where the
    row lengths allow, its ``log1p`` form reads ``x`` twice rather than three times
    (:mod:`jaxsoft._tuned_subrows`).

    Only there: ``log_softargmax``'s forward and every gradient were slower with it (its output
    pass or the backward pass beside the sub-row loop, jax 0.10.2; see bench/README.md).
    """
    xm = masked(x, mask)
    return _outputs(xm, _stats(xm, t, fuses_row_sums(xm), subrows=True), mask)


def core_for_tangents(
    x: jax.Array, t: jax.Array | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(lse, p, log p)`` for ``logsumexp``'s JVP rule: ``lse``, and ``p`` for its backward pass.

    ``p`` is an elementwise formula of ``x`` and per-row statistics (:func:`_outputs`), which XLA
    recomputes inside the backward fusion instead of storing a ``(batch, n)`` array (``jax.nn``
    stores ``exp(x - max)``). ``p`` is ``exp(log p)``, so no normaliser sum is needed (a few ulp, as
    a tangent needs). The sums take the separate-loop form of :func:`_stats` at every batch
    size: the backward fusion reads the per-row statistics too, so XLA compiles the max as a
    fusion of its own, and the one-loop form's shared ``exp(z)`` then had its gap ``z`` written to
    memory by a loop fusion first (jax 0.10.2, ``(4096, 1024)`` float32: ``value_and_grad``
    about half the time with the separate form, at 16 B per row more scratch).
    """
    xm = masked(x, mask)
    lse, _, logp = _outputs(xm, _stats(xm, t, False), mask)
    return lse, jnp.exp(logp), logp
