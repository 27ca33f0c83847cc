"""Entropy and KL divergence of softargmax distributions, dense, exact where they are tiny.

Both work in the canonical layout of :mod:`jaxsoft._checks` on the outputs ``(lse, p, log p)`` of
the shared kernel :func:`jaxsoft._core._core`, and have custom JVPs built from those outputs.

Edge semantics (SPEC sections 6 and 8.4), per row:

=================================  ==========================  ==================================
input along the axis               entropy                     kl_divergence(x, y) = KL(q || p)
=================================  ==========================  ==================================
one candidate                      ``0``                       ``0``
some ``-inf`` (or masked) entries  left out (``0 log 0 = 0``)  ``+inf`` where ``q_i > 0 = p_i``
``k`` entries at ``+inf``          ``log k``                   from the limits ``p``, ``q``
all ``-inf`` / fully masked        ``0``, zero gradients       ``0`` when ``q = 0``, zero grads
a NaN in the row                   NaN                         NaN
``t = 0``                          ``log k``, k tied maxima    from the hard argmaxes
=================================  ==========================  ==================================

Gradients are finite wherever the value is (zero on ``+inf`` KL rows and at ``t = 0``).
"""

from __future__ import annotations

from functools import partial
from math import factorial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft._core import _core

_NEG_INF = -jnp.inf


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _rowsum(a: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    return jnp.sum(a, axis=-1, keepdims=True, where=mask)


def _over_t(a: jax.Array, t: jax.Array | None) -> jax.Array:
    return a if t is None else a / jnp.where(t == 0, 1, t)


def _hard_rows(lse: jax.Array, t: jax.Array | None) -> jax.Array:
    """Rows whose distribution is piecewise constant in its inputs: ``t = 0`` or a ``+inf`` max."""
    hard = lse == jnp.inf
    return hard if t is None else hard | (t == 0)


# --------------------------------------------------------------------------------------------------
# Entropy.
# --------------------------------------------------------------------------------------------------


def _entropy_from(p: jax.Array, logp: jax.Array) -> jax.Array:
    # Every term -p log p is >= 0 (log p = z - log1p(s) with z <= 0), so the sum has no
    # cancellation: the log1p-accurate log p of a near-one-hot row gives H to a few ulps. The
    # log is cleaned before the product (0 log 0 = 0), so reverse mode never forms 0 * (-inf);
    # a NaN p stays NaN (NaN == 0 is False).
    return _rowsum(p * -jnp.where(p == 0, 0, logp))


@jax.custom_jvp
def _entropy(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``H(softargmax_t(x))`` for canonical ``x``; shape ``(*batch, 1)``."""
    _, p, logp = _core(x, t, mask)
    return _entropy_from(p, logp)


def _entropy_jvp(primals, tangents):
    """``dH = -<p (log p + H), dx> / t + Var_p(log p) / t * dt``.

    With ``g = log p + H`` (``log p`` centred under ``p``): ``dp_i = p_i (dx_i - <p, dx>) / t``
    and ``dH = -<dp, log p>`` give the first term; ``dp/dt = -p g / t`` gives ``<p, g^2> / t``,
    which is never negative (SPEC 1.6) and has no cancellation. Rows at ``t = 0`` or with a
    ``+inf`` maximum are piecewise constant: zero tangent.
    """
    x, t, mask = primals
    dx, dt, _ = tangents
    lse, p, logp = _core(x, t, mask)
    h = _entropy(x, t, mask)
    hard = _hard_rows(lse, t)
    g = jnp.where(p == 0, 0, logp + h)
    dh = jnp.zeros_like(h)
    if not _is_zero(dx):
        cx = jnp.where(hard, 0, _over_t(-p * g, t))
        dh = dh + _rowsum(cx * (dx if mask is None else jnp.where(mask, dx, 0)), mask)
    if t is not None and not _is_zero(dt):
        dh = dh + jnp.where(hard, 0, _over_t(_rowsum(p * g * g), t)) * dt
    return h, dh


_entropy.defjvp(_entropy_jvp, symbolic_zeros=True)


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


def _kl_parts(x: jax.Array, y: jax.Array, t: jax.Array | None, mask: jax.Array | None):
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
    h_q = _entropy_from(q, logq)

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
def _kl(x: jax.Array, y: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``KL(softargmax_t(y) || softargmax_t(x))`` for canonical ``x, y``; shape ``(*batch, 1)``."""
    return _kl_parts(x, y, t, mask).kl


def _kl_jvp(primals, tangents):
    """Tangent of ``KL(q || p)``, with ``r = log q - log p`` and ``Q = sum q``:

    ``dKL = <Q p - q, dx> / t + <q (r - KL), dy> / t - (<w, log p + H(p)> + Var_q(r)) / t * dt``,
    ``w = Q p - q + q (r - KL)``, which is ``p h(r) - KL q`` when ``Q = 1`` (``h`` as in
    :func:`_p_times_h`). The ``t`` term is ``-(<grad_u, u> + <grad_v, v>) / t`` with ``u = x / t``,
    ``v = y / t``, shifted to ``log p``, ``log q`` (the gradients sum to 0). In centred rows,
    ``q - p = p expm1(r)`` and ``p h(r)`` keep the tangents accurate when ``q ~ p``. ``+inf`` rows
    and ``t = 0`` rows have zero tangent.
    """
    x, y, t, mask = primals
    dx, dy, dt, _ = tangents
    kl = _kl(x, y, t, mask)
    parts = _kl_parts(x, y, t, mask)
    p, q, logp, r, centred = parts.p, parts.q, parts.logp, parts.r, parts.centred
    zero_row = kl == jnp.inf if t is None else (kl == jnp.inf) | (t == 0)
    # The coefficients are cleaned, not the tangent: in reverse mode a zero cotangent times an
    # infinite coefficient would still be NaN.
    kl_s = jnp.where(zero_row, 0, kl)
    rk = jnp.where((q == 0) | zero_row, 0, r - kl_s)
    r_c = jnp.where(centred, r, 0)  # -inf where only p > 0, where expm1 gives -1 and h gives 1

    def coefficient(c):
        return jnp.where(zero_row, 0, _over_t(c, t))

    qp = _rowsum(q) * p - q  # the target mass Q is 1, or 0 on a row whose target is all -inf
    dkl = jnp.zeros_like(kl)
    if not _is_zero(dx):
        # q - p = p expm1(r) keeps its digits when q ~ p; for |r| > 1 (where p may underflow
        # to 0 with r huge) q - p itself has no cancellation.
        small = jnp.abs(r_c) <= 1
        cx = coefficient(jnp.where(centred & small, -p * jnp.expm1(jnp.where(small, r_c, 0)), qp))
        dkl = dkl + _rowsum(cx * (dx if mask is None else jnp.where(mask, dx, 0)), mask)
    if not _is_zero(dy):
        cy = coefficient(q * rk)
        dkl = dkl + _rowsum(cy * (dy if mask is None else jnp.where(mask, dy, 0)), mask)
    if t is not None and not _is_zero(dt):
        w = jnp.where(centred, _p_times_h(p, r_c, q) - kl_s * q, qp + q * rk)
        centred_logp = jnp.where(p == 0, 0, logp + _entropy_from(p, logp))
        dkl = dkl - coefficient(_rowsum(w * centred_logp) + _rowsum(q * rk * rk)) * dt
    return kl, dkl


_kl.defjvp(_kl_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# Public functions.
# --------------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("axes", "keepdims"))
def _entropy_apply(x, t, where, *, axes, keepdims):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "entropy")
    out = jnp.zeros(layout.batch + (1,), xc.dtype) if layout.n == 0 else _entropy(xc, tc, mc)
    return layout.reduced_from_canonical(out.astype(out_dtype), keepdims)


@partial(jax.jit, static_argnames=("axes", "keepdims"))
def _kl_apply(x, y, t, where, *, axes, keepdims):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "kl_divergence")
    yc = layout.to_canonical(jnp.broadcast_to(y, x.shape).astype(xc.dtype))
    out = jnp.zeros(layout.batch + (1,), xc.dtype) if layout.n == 0 else _kl(xc, yc, tc, mc)
    return layout.reduced_from_canonical(out.astype(out_dtype), keepdims)


def entropy(
    logits: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""Entropy of the softargmax distribution, with ``0 log 0 = 0``.

    .. math::
        H(\mathrm{softargmax}_t(x)) = -\sum_{i \in S} p_i \log p_i
          = \frac{\partial}{\partial t}\,\mathrm{logsumexp}_t(x)

    Each term ``-p_i log p_i`` is non-negative and ``log p_i`` comes from the ``log1p``-accurate
    kernel, so a near-one-hot row keeps its tiny entropy to a few ulps (``[0., -30., -40.]`` gives
    ``2.9010373e-12`` in float32; ``-sum(p * log p)`` from :mod:`jax.nn` gives ``2.807e-12``).
    Gradient: ``-p (log p + H) / t`` in ``x``; derivative in ``t``: ``Var_p(log p) / t >= 0``.

    Args:
      logits: ``[..., num_classes]`` array (ints promote; bf16/f16 computed in float32 and
        returned in their own dtype).
      axis: int, tuple of ints or ``None``: the axes of the distribution. Default ``-1``.
      t: temperature ``>= 0``: a scalar, or one per row (broadcastable to the reduced shape);
        traced and differentiable. ``t = 0`` gives ``log k`` for ``k`` tied maxima.
      where: optional boolean mask broadcastable to ``logits.shape``; ``False`` entries are left
        out (their values, even NaN or inf, change nothing).
      keepdims: keep the reduced axes with size 1.

    Returns:
      Entropies of shape ``logits.shape`` without ``axis`` (size-1 axes if ``keepdims``), in
      ``[0, log |S|]``.

    Edges: a row with one candidate has entropy 0; ``k`` entries at ``+inf`` give ``log k``; an
    all ``-inf`` or fully masked row gives 0 with zero gradients; a NaN gives NaN on its row.
    Gradients are zero at ``t = 0`` and on ``+inf`` rows, finite everywhere else.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft.divergences import entropy
      >>> float(entropy(jnp.zeros(4)))  # log 4
      1.3862943649291992
      >>> float(entropy(jnp.array([0.0, -30.0, -40.0])))  # float32: not rounded away
      2.9010372e-12
      >>> float(entropy(jnp.array([2.0, 2.0, 1.0]), t=0.0))  # two tied maxima: log 2
      0.6931471824645996

    .. seealso:: :func:`kl_divergence`; :func:`jaxsoft.logsumexp`, whose ``t``-derivative this is.
    """
    x, t_arr, w, axes = _checks.prepare("entropy", logits, axis, t, where)
    return _entropy_apply(x, t_arr, w, axes=axes, keepdims=keepdims)


def kl_divergence(
    logits: ArrayLike,
    target_logits: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""KL divergence ``KL(q || p)`` of the model ``p = softargmax_t(logits)`` from the target
    ``q = softargmax_t(target_logits)``, accurate even when the two nearly agree.

    .. math::
        \mathrm{KL}(q \,\|\, p) = \sum_{i \in S} q_i (\log q_i - \log p_i),\qquad 0 \log 0 = 0

    The textbook sum is pure cancellation when ``q ~ p`` (distillation late in training, a PPO
    KL penalty). Rows where that matters are computed from ``d = (y - x - mu) / t`` centred under
    ``p``, as ``KL = S / (1 + a) + a / (1 + a) - log1p(a)`` with ``a = E_p[expm1(d)]`` and
    ``S = E_p[(d - 1) e^d + 1] >= 0`` (a series for small ``d``): relative error ~1e-6 at
    ``KL ~ 1e-10`` in float32. Gradients: ``(p - q) / t`` in ``logits``,
    ``q (log q - log p - KL) / t`` in ``target_logits``, and the derivative in ``t``.

    Args:
      logits: the model's ``[..., num_classes]`` logits (ints promote; bf16/f16 computed in
        float32). Differentiable.
      target_logits: the target's (teacher's) logits, broadcastable to ``logits.shape``; both
        are promoted to a common dtype. Differentiable.
      axis: int, tuple of ints or ``None``: the axes of the distributions. Default ``-1``.
      t: temperature ``>= 0`` applied to both: scalar or one per row; traced, differentiable.
      where: optional boolean mask broadcastable to ``logits.shape``, applied to both: masked
        entries are left out of both distributions.
      keepdims: keep the reduced axes with size 1.

    Returns:
      Divergences ``>= 0`` of shape ``logits.shape`` without ``axis``, in the common float dtype.

    Edges: ``+inf`` where ``q_i > 0 = p_i`` (e.g. a ``-inf`` logit under a finite target logit),
    with zero gradients on that row; ``0 log 0 = 0`` where ``q_i = 0``; a row whose every entry
    is masked (or whose target is all ``-inf``) gives 0 with zero gradients; ``+inf`` logits and
    ``t = 0`` use the limiting distributions; a NaN in either row gives NaN on that row.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft.divergences import kl_divergence
      >>> student = jnp.array([1.0, 2.0, 3.0])
      >>> round(float(kl_divergence(student, jnp.array([3.0, 2.0, 1.0]))), 5)
      1.15042
      >>> float(kl_divergence(student, student))
      0.0
      >>> near = student + 1e-3 * jnp.array([1.0, -1.0, 0.0])  # exact: 1.554261e-07
      >>> float(kl_divergence(student, near))  # the textbook sum gives 1.5137e-07 here
      1.554261e-07
      >>> float(kl_divergence(jnp.array([0.0, -jnp.inf]), jnp.array([0.0, 0.0])))
      inf

    .. seealso:: :func:`entropy`; ``KL(q || p) = cross_entropy_with_probs(logits, q) - H(q)``.
    """
    name = "kl_divergence"
    x = _checks.as_array(logits, name, "logits")
    y = _checks.as_array(target_logits, name, "target_logits")
    _checks.result_dtype(x, name)
    _checks.result_dtype(y, f"{name} (target_logits)")
    try:
        ok = np.broadcast_shapes(y.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: target_logits of shape {y.shape} do not broadcast to logits of shape "
            f"{x.shape}"
        )
    dtype = jnp.result_type(x, y)
    x, y = x.astype(dtype), y.astype(dtype)
    x, t_arr, w, axes = _checks.prepare(name, x, axis, t, where)
    return _kl_apply(x, y, t_arr, w, axes=axes, keepdims=keepdims)
