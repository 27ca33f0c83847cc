"""logsumexp, softargmax, log_softargmax and the softargmax-weighted mean, with their JVP rules.

Every kernel here works in the canonical layout of :mod:`jaxsoft._checks`: ``x`` and ``mask`` of
shape ``(*batch, n)``, ``t`` of shape ``(*batch, 1)`` or ``None`` (meaning ``t = 1``, so no
division is emitted), reducing over the last axis with ``keepdims``.

Edge semantics (SPEC section 6), per row:

================================  ===========  ===========  ======================  ======================
input along the axis              softargmax   logsumexp    log_softargmax          gradients
================================  ===========  ===========  ======================  ======================
finite, any magnitude             exact        exact        exact (log1p form)      finite
some ``-inf``                     0 there      ignores them ``-inf`` there          0 for those entries
one or more ``+inf``              uniform on   ``+inf``     ``-log k`` on the k     finite (limits)
                                  the ``+inf``              ``+inf``, else ``-inf``
all ``-inf`` / fully masked       all 0        ``-inf``     all ``-inf``            all 0
a NaN in the row                  NaN row      NaN          NaN row                 NaN in that row only
``t = 0``                         hard argmax  ``max(x)``   0/``-log k`` on argmax  defined (see below)
================================  ===========  ===========  ======================  ======================

At ``t = 0`` the derivative of softargmax/log_softargmax is 0 (the hard argmax is piecewise
constant); logsumexp's derivative there is the tie-split one-hot in ``x`` and ``log k`` in ``t``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxsoft import _checks

_NEG_INF = -jnp.inf


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _rowsum(a: jax.Array, mask: jax.Array | None) -> jax.Array:
    # The mask keeps garbage (NaN tangents, inf) in excluded entries out of the row sums.
    return jnp.sum(a, axis=-1, keepdims=True, where=mask)


# --------------------------------------------------------------------------------------------------
# The shared kernel: one pass structure gives all three of (lse, p, log p).
# --------------------------------------------------------------------------------------------------


@jax.custom_jvp
def _core(x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """Return ``(lse, p, logp)`` for canonical ``x``; ``lse`` has shape ``(*batch, 1)``.

    With ``m = max(x)`` and ``z = (x - m) / t``, the ``c`` entries equal to ``m`` contribute
    exactly ``1`` each to ``total = sum exp(z)``; the others add up to ``s``. Keeping ``s`` apart
    lets ``log(total) = log1p(s)`` (when ``c = 1``) keep the digits that ``log(1 + s)`` rounds away
    (SPEC 2.5, 3.2), without an argmax.

    Why the arithmetic below avoids ``where``: XLA:CPU fuses a reduction with its elementwise
    producer only when the producer is plain arithmetic (sub, mul, div, min, exp, ...); a select
    or a compare makes it write the whole ``(batch, n)`` intermediate to memory first, which
    made this kernel 3-5x slower than ``jax.nn``. So the full-size terms that feed the sums
    use arithmetic indicators, and every ``where`` acts either on per-row values or in the
    final elementwise pass that writes the output (where selects are free).
    """
    dtype = x.dtype
    big = jnp.asarray(jnp.finfo(dtype).max, dtype)
    two64 = jnp.asarray(2.0**64, dtype)
    if mask is not None:
        x = jnp.where(mask, x, _NEG_INF)  # masked entries behave exactly like -inf ones
    m = jnp.max(x, axis=-1, keepdims=True)
    # Per-row regimes. "hard": all the mass goes to the entries equal to m (t = 0, or m = +inf).
    m_pos_inf = m == jnp.inf
    empty = m == _NEG_INF
    hard = m_pos_inf if t is None else m_pos_inf | (t == 0)
    # u = (x - m) / 2 <= 0 in finite rows (halving is exact, so z below is exactly-rounded
    # (x - m) / t). In a +inf row u = x/2 - big: +inf on the +inf entries, <= -big/2 elsewhere.
    # z = u / (t/2). In hard rows z = u * 2^64, and the outer factor big pushes every non-max
    # entry below -1e4 while the maxima stay at exactly 0 (+inf, clamped): exp is then the 0/1
    # indicator of the maxima. (The minimum between the two scalings keeps XLA from folding
    # them into one inf factor, which would turn a zero gap into NaN.) The full-size terms
    # are plain arithmetic, not where(): XLA:CPU fuses a sum with its producer only then.
    # An all -inf row shifts by 0, so that u = -inf there rather than -inf - (-inf) = NaN.
    ref = jnp.where(m_pos_inf, big, jnp.where(empty, 0, m * 0.5))
    tdiv = jnp.where(hard, 1 / two64, 0.5 if t is None else t * 0.5).astype(dtype)
    outer = jnp.where(hard, big, 1).astype(dtype)
    u = x * 0.5 - ref
    z = u / tdiv
    # XLA:CPU's fused max reduction and minimum drop NaN on long rows (an all-NaN row of 4096
    # has max -inf), so a NaN is carried into e explicitly: 0 * 0.5/(0.5 + |u|) is 0 for every
    # u but NaN, +-inf included, and stays inside the fused sum (unlike isnan or sign). (Its
    # constants are the ones this sum already uses: a constant shared with the other sum's
    # terms would be written to memory as a full-size broadcast.)
    e = jnp.exp(jnp.minimum(z, 0) * outer) + 0 * (0.5 / (0.5 + jnp.abs(u)))
    total = jnp.sum(e, axis=-1, keepdims=True)
    empty = empty & ~jnp.isnan(total)  # an all-NaN row can look empty to the max reduction
    # s: the mass of the non-maximal entries, needed only in soft rows (hard rows use
    # log(total) below). v = -u > 0 off the maxima, and any positive v, even the smallest
    # normal one, scaled by 2^64 and then by big exceeds 1, so not_max is exactly 0 on the
    # maxima and 1 elsewhere. The terms are spelled with their own per-row values (-ref,
    # -2/t) on purpose: XLA:CPU fuses a sum with its elementwise producer only while no
    # full-size subexpression (a broadcast included) is shared with the other sum; a shared
    # one is written to memory first, which made this several times slower than jax.nn.
    v = x * -0.5 - (-ref)
    z2 = v * -2 if t is None else v * (-2 / t)
    not_max = jnp.minimum(1, jnp.minimum(1, v * two64) * big)
    s = jnp.sum(jnp.exp(z2) * not_max, axis=-1, keepdims=True)
    # total - s counts the maxima: with a single one log1p(s) keeps what log(1 + s) would lose;
    # with ties total >= 2 and log(total) is accurate. In hard rows total is the count and s
    # is not used.
    log_total = jnp.where(~hard & (total - s < 1.5), jnp.log1p(s), jnp.log(total))
    lse = m + log_total if t is None else m + t * log_total
    lse = jnp.where(empty, _NEG_INF, lse)
    p = jnp.where(empty, 0, e / total)
    z_out = jnp.where(hard, jnp.where(e > 0, 0, _NEG_INF), z)
    logp = jnp.where(empty, _NEG_INF, z_out - log_total)
    if mask is not None:  # a NaN row's masked entries stay 0 / -inf
        p = jnp.where(mask, p, 0)
        logp = jnp.where(mask, logp, _NEG_INF)
    return lse, p, logp


def _core_jvp(primals, tangents):
    x, t, mask = primals
    dx, dt, _ = tangents
    out = _core(x, t, mask)
    return out, _core_tangents(x, t, mask, out, dx, dt)


_core.defjvp(_core_jvp, symbolic_zeros=True)


def _core_tangents(x, t, mask, out, dx, dt):
    """Tangents of ``(lse, p, logp)``, O(n), built from the primal outputs only.

    ``d lse = <p, dx> + H(p) dt`` with ``H(p) = -<p, log p>``;
    ``d log p_i = g_i - <p, g>`` with ``g = (dx - log p * dt) / t``, and ``<p, g> = d lse / t``;
    ``d p = p * d log p``. Entries whose ``log p`` is ``-inf`` (excluded, ``-inf`` logits, losers
    of a hard argmax) are constants, so their tangents are 0; so are p's and log p's at ``t = 0``.
    """
    lse, p, logp = out
    # NaN must stay NaN (it marks a NaN row), so test for -inf rather than for finiteness.
    finite = logp != _NEG_INF
    with_dt = t is not None and not _is_zero(dt)
    logp_fin = jnp.where(finite, logp, 0) if with_dt else None
    dlse = jnp.zeros_like(lse)
    g = jnp.zeros_like(x)
    if not _is_zero(dx):
        if mask is not None:
            dx = jnp.where(mask, dx, 0)
        dlse = dlse + _rowsum(p * dx, mask)
        g = g + dx
    if with_dt:
        dlse = dlse - _rowsum(p * logp_fin, mask) * dt
        g = g - logp_fin * dt
    if t is None:
        h = g - dlse
    else:
        t_safe = jnp.where(t == 0, 1, t)
        # <p, g> is dlse / t: no second sum, and no 0 * inf where log p * dt / t overflows.
        h = jnp.where(t == 0, 0, g / t_safe - dlse / t_safe)
    # p's tangent does not need log p (p = 0 wherever log p = -inf), so softargmax's gradient
    # never pays for the log1p reduction. With a t-tangent, h may be inf where p = 0 (a huge
    # log p * dt / t), so p * h is taken as 0 there rather than NaN (NaN rows keep NaN, as
    # NaN == 0 is False); without one h is finite and the select, which would stop XLA fusing
    # the transposed sum, is left out.
    dp = jnp.where(p == 0, 0, p * h) if with_dt else p * h
    return dlse, dp, jnp.where(finite, h, 0)


# --------------------------------------------------------------------------------------------------
# The softargmax-weighted mean (the notes' "bad softMax").
# --------------------------------------------------------------------------------------------------


@jax.custom_jvp
def _wmean(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``<x, p>`` over the last axis, ``-inf`` on empty rows; shape ``(*batch, 1)``."""
    lse, p, _ = _core(x, t, mask)
    # 0 * (-inf) and 0 * NaN in excluded entries must not reach the sum.
    w = jnp.sum(jnp.where(p > 0, x, 0) * p, axis=-1, keepdims=True)
    return jnp.where(lse == _NEG_INF, _NEG_INF, w)


def _wmean_jvp(primals, tangents):
    """``d<x, p> = <p, dx> + <x - w, dp>``: centring on ``w`` keeps huge shared offsets from cancelling."""
    x, t, mask = primals
    dx, dt, _ = tangents
    w = _wmean(x, t, mask)
    out = _core(x, t, mask)
    p = out[1]
    _, dp, _ = _core_tangents(x, t, mask, out, dx, dt)
    # Centre on w computed from differences to the row max: x - w itself can carry the rounding
    # of a huge w, which dp ~ 1/t would magnify (tied maxima near float max, tiny t). In a +inf
    # row the centred term's limit is 0.
    m = jnp.max(jnp.where(p > 0, x, _NEG_INF), axis=-1, keepdims=True)
    d = jnp.where(p > 0, x - jnp.where(jnp.isfinite(m), m, 0), 0)
    centred = jnp.where((p > 0) & (w < jnp.inf), d - _rowsum(p * d, mask), 0)
    dw = _rowsum(centred * dp, mask)
    if not _is_zero(dx):
        dw = dw + _rowsum(p * (dx if mask is None else jnp.where(mask, dx, 0)), mask)
    return w, dw


_wmean.defjvp(_wmean_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# Public functions: validate eagerly, then one jitted dispatch into the canonical kernels.
# --------------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("axes", "kind", "keepdims", "name"))
def _apply(x, t, where, *, axes, kind, keepdims, name):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, name)
    if layout.n == 0:  # an empty reduction: -inf for the reductions, an empty array otherwise
        red = jnp.full(layout.batch + (1,), _NEG_INF, xc.dtype)
        out = red if kind in ("lse", "mean") else xc
    elif kind == "mean":
        out = _wmean(xc, tc, mc)
    else:
        lse, p, logp = _core(xc, tc, mc)
        out = {"lse": lse, "p": p, "logp": logp}[kind]
    out = out.astype(out_dtype)
    if kind in ("lse", "mean"):
        return layout.reduced_from_canonical(out, keepdims)
    return layout.from_canonical(out)


def _dispatch(kind, name, x, axis, t, where, keepdims=False):
    x, t, where, axes = _checks.prepare(name, x, axis, t, where)
    return _apply(x, t, where, axes=axes, kind=kind, keepdims=keepdims, name=name)


def logsumexp(
    x: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""Log-sum-exp with temperature: the smooth maximum (the notes' "good softMax").

    .. math::
        \mathrm{logsumexp}_t(x) = t \log \sum_{i \in S} e^{x_i / t}
        = m + t\,\mathrm{log1p}\Big(\sum_{i \ne k} e^{(x_i - m)/t}\Big),\quad m = \max_S x

    Computed in the shifted ``log1p`` form, so nothing overflows and small parts survive:
    ``logsumexp([0., -40.])`` is ``4.248e-18`` in float64, not 0. Its gradient is
    ``softargmax(x, t=t)``; its derivative in ``t`` is the entropy of that distribution.

    Args:
      x: input array of any shape, e.g. ``[batch, num_classes]``. Ints and bools promote like
        :mod:`jax.numpy`; bf16/f16 are accumulated in float32 and returned in their own dtype.
      axis: int, tuple of ints, or ``None`` (all axes) to reduce over. Default ``-1``.
      t: temperature ``>= 0``: a scalar, or an array broadcastable to the reduced shape (one per
        row). ``t = 0`` gives ``max(x)``. May be traced and differentiated.
      where: optional boolean mask broadcastable to ``x.shape``; ``False`` entries are left out
        (their values, even NaN or inf, change nothing).
      keepdims: keep the reduced axes with size 1.

    Returns:
      Array of ``x``'s shape without ``axis`` (or with size-1 axes if ``keepdims``).

    Edges: ``-inf`` entries are ignored; any ``+inf`` gives ``+inf``; an all ``-inf`` or fully
    masked row (or an empty axis) gives ``-inf`` with zero gradient; a NaN gives NaN on its row.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> float(jaxsoft.logsumexp(jnp.array([1e30, 1e30])))
      1e+30
      >>> float(jaxsoft.logsumexp(jnp.array([3.0, 1.0]), t=0.0))
      3.0

    .. seealso:: :func:`softargmax` (its gradient), :func:`softargmax_mean` (the "bad" one).
    """
    return _dispatch("lse", "logsumexp", x, axis, t, where, keepdims)


def softargmax(
    x: ArrayLike, axis: _checks.Axis = -1, *, t: ArrayLike = 1.0, where: ArrayLike | None = None
) -> jax.Array:
    r"""softArgMax (``softmax`` in most libraries), with temperature.

    .. math::
        \mathrm{softargmax}_t(x)_i = \frac{e^{x_i / t}}{\sum_{j \in S} e^{x_j / t}}
        = \frac{e^{(x_i - m)/t}}{\sum_{j \in S} e^{(x_j - m)/t}}

    A drop-in for :func:`jax.nn.softmax` (same ``axis``/``where`` meaning) that is also defined at
    the edges. Jacobian ``(diag(p) - p p^T) / t``; derivative in ``t``: ``-p (x - <p, x>) / t^2``.

    Args:
      x: input array, e.g. ``[batch, num_classes]`` (dtype rules as :func:`logsumexp`).
      axis: int, tuple of ints or ``None``; the output sums to 1 over these axes. Default ``-1``.
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` is the hard argmax with ties split
        evenly, and its derivative is taken as 0. Larger ``t`` is closer to uniform.
      where: optional boolean mask; masked entries get 0 and influence nothing.

    Returns:
      Array of ``x``'s shape and (floating) dtype: a distribution along ``axis``.

    Edges: ``-inf`` entries get 0; with ``k`` entries at ``+inf`` those get ``1/k`` and the rest 0;
    an all ``-inf``/fully masked row is all 0 with zero gradient; a NaN makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> jaxsoft.softargmax(jnp.array([0.0, 0.0, -jnp.inf]))
      Array([0.5, 0.5, 0. ], dtype=float32)
      >>> jaxsoft.softargmax(jnp.array([1.0, jnp.inf, jnp.inf]))
      Array([0. , 0.5, 0.5], dtype=float32)

    .. seealso:: :func:`log_softargmax` for log-probabilities without ``log(0)``.
    """
    return _dispatch("p", "softargmax", x, axis, t, where)


def log_softargmax(
    x: ArrayLike, axis: _checks.Axis = -1, *, t: ArrayLike = 1.0, where: ArrayLike | None = None
) -> jax.Array:
    r"""Log of softArgMax (``log_softmax``), accurate even for probabilities near 1.

    .. math::
        \log \mathrm{softargmax}_t(x)_i = \frac{x_i - m}{t}
          - \mathrm{log1p}\Big(\sum_{j \ne k} e^{(x_j - m)/t}\Big)

    Computing ``x_i - logsumexp(x)`` rounds ``log p`` of a dominant entry to 0 in float32; the
    ``log1p`` form keeps it: ``log_softargmax([0., -30.])[0]`` is ``-9.357623e-14``.

    Args:
      x: input array, e.g. ``[batch, num_classes]`` (dtype rules as :func:`logsumexp`).
      axis: int, tuple of ints or ``None``. Default ``-1``.
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` gives ``-log k`` on the ``k``
        argmax entries and ``-inf`` elsewhere.
      where: optional boolean mask; masked entries get ``-inf`` and influence nothing.

    Returns:
      Array of ``x``'s shape and (floating) dtype, all entries ``<= 0``.

    Edges: ``-inf`` entries stay ``-inf`` with gradient 0; ``k`` entries at ``+inf`` get
    ``-log k`` and the others ``-inf``; an all ``-inf``/fully masked row is all ``-inf`` with zero
    gradient; a NaN makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> jaxsoft.log_softargmax(jnp.array([0.0, -30.0]))
      Array([-9.357623e-14, -3.000000e+01], dtype=float32)

    .. seealso:: :func:`softargmax`; ``jaxsoft.cross_entropy`` builds on this.
    """
    return _dispatch("logp", "log_softargmax", x, axis, t, where)


def softargmax_mean(
    x: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""The softArgMax-weighted mean ``<x, softargmax_t(x)>``: the notes' "bad softMax".

    .. math::
        \mathrm{softargmax\_mean}_t(x) = \sum_i x_i\,\frac{e^{x_i/t}}{\sum_j e^{x_j/t}}

    It keeps ``f(a, a, a) = a`` and ``f(x + a) = f(x) + a``, but it is always ``<= max(x)``, which
    makes it a poor maximum (hence "bad"); :func:`logsumexp` is the good one. Gradient:
    ``p_j (1 + (x_j - <p, x>) / t)``. We name it for what it computes rather than ``bad_softmax``.

    Args:
      x: input array, e.g. ``[batch, num_classes]`` (dtype rules as :func:`logsumexp`).
      axis: int, tuple of ints or ``None``. Default ``-1``.
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` gives ``max(x)``.
      where: optional boolean mask; masked entries are left out.
      keepdims: keep the reduced axes with size 1.

    Returns:
      Array of ``x``'s shape without ``axis`` (or with size-1 axes if ``keepdims``).

    Edges: ``-inf`` entries are ignored; any ``+inf`` gives ``+inf``; an all ``-inf`` or fully
    masked row gives ``-inf`` with zero gradient; a NaN gives NaN on its row.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> float(jaxsoft.softargmax_mean(jnp.array([2.0, 2.0, 2.0])))
      2.0
    """
    return _dispatch("mean", "softargmax_mean", x, axis, t, where, keepdims)


softmax = softargmax
log_softmax = log_softargmax
