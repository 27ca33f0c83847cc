"""Entropy and KL divergence of softargmax distributions, dense, exact where they are tiny.

Both work in the canonical layout of :mod:`jaxsoft._checks` and have custom JVPs. Values and
``dx``/``dy`` coefficients come from the fused arithmetic of :mod:`jaxsoft._divergences_fast`;
a batch holding a row it cannot do (``t = 0``, ``+inf``, NaN, empty rows, KL rows with an
infinite ``y - x`` or far-apart rows) takes :mod:`jaxsoft._divergences_exact` instead, through
one :func:`jax.lax.cond` on per-row flags, as do derivatives in ``t``.

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

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft import _divergences_exact as exact
from jaxsoft import _divergences_fast as fast
from jaxsoft._rowstats import is_zero


def _rowsum(a: jax.Array, mask: jax.Array | None) -> jax.Array:
    return jnp.sum(a, axis=-1, keepdims=True, where=mask)


def _masked(dx: jax.Array, mask: jax.Array | None) -> jax.Array:
    return dx if mask is None else jnp.where(mask, dx, 0)


def _f32(x: jax.Array) -> jax.Array:
    """bf16/f16 logits in float32 (SPEC 7), for the exact path; the public functions pass them
    in their own dtype, and each fast pass converts for itself (:func:`_divergences_fast.widen`),
    so that a single-pass kernel keeps the conversion inside its loop."""
    return fast.widen(x)


def _pick(bad: jax.Array, exact_fn, fast_value):
    """``fast_value``, or ``exact_fn()`` when any row is ``bad``: only per-row flags decide, so
    XLA never computes the exact path on a regular batch."""
    return jax.lax.cond(jnp.any(bad), exact_fn, lambda: fast_value)


# --------------------------------------------------------------------------------------------------
# Entropy.
# --------------------------------------------------------------------------------------------------


@jax.custom_jvp
def _entropy(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``H(softargmax_t(x))`` for canonical ``x``; shape ``(*batch, 1)``."""
    h, bad = fast.entropy_forward(x, t, mask)
    return _pick(bad, lambda: exact.entropy(_f32(x), t, mask), h)


def _entropy_jvp(primals, tangents):
    """``dH = -<p (log p + H), dx> / t`` (+ ``Var_p(log p) / t * dt``, from the exact path)."""
    x, t, mask = primals
    dx, dt, _ = tangents
    if t is not None and not is_zero(dt):
        return exact.entropy_jvp((_f32(x), t, mask), tangents)
    st = fast.entropy_stats(x, t, mask)
    h = _pick(st.bad, lambda: exact.entropy(_f32(x), t, mask), st.h)
    if is_zero(dx):
        return h, jnp.zeros_like(h)
    cx = jax.lax.cond(
        jnp.any(st.bad),
        lambda: exact.entropy_cx(_f32(x), t, mask),
        lambda: fast.entropy_cx(x, t, mask, st),
    )
    return h, _rowsum(cx * _masked(dx, mask), mask)


_entropy.defjvp(_entropy_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# KL divergence.
# --------------------------------------------------------------------------------------------------


@jax.custom_jvp
def _kl(x: jax.Array, y: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``KL(softargmax_t(y) || softargmax_t(x))`` for canonical ``x, y``; shape ``(*batch, 1)``."""
    st = fast.kl_stats(x, y, t, mask)
    return _pick(st.bad, lambda: exact.kl(_f32(x), _f32(y), t, mask), st.kl)


def _kl_jvp(primals, tangents):
    """``dKL = <p - q, dx> / t + <q (log q - log p - KL), dy> / t`` (+ the ``t`` term, from the
    exact path); ``p - q = -p expm1(r)`` keeps its digits when ``q ~ p``."""
    x, y, t, mask = primals
    dx, dy, dt, _ = tangents
    if t is not None and not is_zero(dt):
        return exact.kl_jvp((_f32(x), _f32(y), t, mask), tangents)
    st = fast.kl_stats(x, y, t, mask)
    kl = _pick(st.bad, lambda: exact.kl(_f32(x), _f32(y), t, mask), st.kl)
    with_x, with_y = not is_zero(dx), not is_zero(dy)
    dkl = jnp.zeros_like(kl)
    if not (with_x or with_y):
        return kl, dkl
    cx, cy = jax.lax.cond(
        jnp.any(st.bad),
        lambda: exact.kl_cx_cy(_f32(x), _f32(y), t, mask, with_x, with_y),
        lambda: fast.kl_cx_cy(x, y, t, mask, st, with_x, with_y),
    )
    if cx is not None:
        dkl = dkl + _rowsum(cx * _masked(dx, mask), mask)
    if cy is not None:
        dkl = dkl + _rowsum(cy * _masked(dy, mask), mask)
    return kl, dkl


_kl.defjvp(_kl_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------------------------------
# Public functions.
# --------------------------------------------------------------------------------------------------


def _own_dtype(layout: _checks.Layout, x: jax.Array, xc: jax.Array) -> jax.Array:
    """Half-precision logits stay in their dtype (see :func:`_f32`); others as canonicalised."""
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits < 32:
        return layout.to_canonical(x)
    return xc


def _compute_dtype(xc: jax.Array):
    return _f32(xc).dtype


@partial(jax.jit, static_argnames=("axes", "keepdims"))
def _entropy_apply(x, t, where, *, axes, keepdims):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "entropy")
    xc = _own_dtype(layout, x, xc)
    out = (
        jnp.zeros(layout.batch + (1,), _compute_dtype(xc))
        if layout.n == 0
        else _entropy(xc, tc, mc)
    )
    return layout.reduced_from_canonical(out.astype(out_dtype), keepdims)


@partial(jax.jit, static_argnames=("axes", "keepdims"))
def _kl_apply(x, y, t, where, *, axes, keepdims):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "kl_divergence")
    yc = layout.to_canonical(jnp.broadcast_to(y, x.shape).astype(xc.dtype))
    xc, yc = _own_dtype(layout, x, xc), _own_dtype(layout, jnp.broadcast_to(y, x.shape), yc)
    out = (
        jnp.zeros(layout.batch + (1,), _compute_dtype(xc)) if layout.n == 0 else _kl(xc, yc, tc, mc)
    )
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
