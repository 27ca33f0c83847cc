"""Gumbel-softargmax: differentiable samples from the categorical distribution softargmax(x)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft._functions import softargmax

_NAME = "gumbel_softargmax"


@jax.custom_jvp
def _straight_through(soft: jax.Array, value: jax.Array) -> jax.Array:
    """Return ``value`` with the derivative of ``soft``.

    A custom JVP rather than ``value + (soft - stop_gradient(soft))``: that sum is not exactly
    ``value`` in floating point once ``soft`` carries rounding, and the one-hot must be exact.
    """
    return value


@_straight_through.defjvp
def _straight_through_jvp(primals, tangents):
    _, value = primals
    dsoft, _ = tangents
    return value, dsoft


def _check_key(key) -> jax.Array:
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise TypeError(
            f"{_NAME}: key must be a PRNG key from jax.random.key or jax.random.PRNGKey, "
            f"got {type(key).__name__}"
        )
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        single = key.ndim == 0
    elif key.dtype == jnp.uint32:
        single = key.ndim == 1  # a raw key: (2,) for threefry, other widths for other impls
    else:
        raise TypeError(f"{_NAME}: key must be a PRNG key, got an array of dtype {key.dtype}")
    if not single:
        raise ValueError(
            f"{_NAME}: key must be a single PRNG key, got shape {key.shape}; "
            "jax.vmap over a batch of keys to draw independent samples"
        )
    return jnp.asarray(key)


# The noise is drawn in the logits' own shape, so one key gives the same noise whatever the axis.
# Jitted on its own because compiling the PRNG is most of the compile time: the relaxation below
# then recompiles for a new axis, mask or `hard` without compiling the PRNG again.
_gumbel_noise = jax.jit(jax.random.gumbel, static_argnums=(1, 2))


@partial(jax.jit, static_argnames=("axes", "hard"))
def _relax(x, g, t, where, *, axes, hard):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, _NAME)
    if layout.n == 0:
        return jnp.zeros(x.shape, out_dtype)
    g = layout.to_canonical(g)
    included = jnp.ones(xc.shape, jnp.bool_) if mc is None else mc
    pos_inf = included & (xc == jnp.inf)
    # With k logits at +inf the others never win, and the race among the k is decided by the noise
    # alone: the limit of all k logits growing together. x + g would tie them at +inf instead.
    # Shift by the row max before adding the noise: x + g would round the noise away once |x| is
    # large ([1e30, 1e30, 0] would always pick index 0). softargmax is shift invariant, so the
    # sample's value and derivative are unchanged; the max is a constant to differentiation.
    m = jnp.max(jnp.where(included, xc, -jnp.inf), axis=-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))
    y = jnp.where(
        jnp.any(pos_inf, axis=-1, keepdims=True),
        jnp.where(pos_inf, g, -jnp.inf),
        (xc - m) + g,
    )
    soft = softargmax(y, axis=-1, t=1.0 if tc is None else tc, where=mc)
    if hard:
        scores = y if mc is None else jnp.where(mc, y, -jnp.inf)
        winner = jnp.argmax(scores, axis=-1, keepdims=True)
        # An all -inf or fully masked row has nothing to sample; a NaN row (where max is NaN) is
        # neither here: it gets NaN from `soft` below.
        sampled = jnp.max(scores, axis=-1, keepdims=True) > -jnp.inf
        onehot = (jnp.arange(layout.n) == winner) & sampled
        value = jnp.where(jnp.isnan(soft), jnp.nan, onehot.astype(soft.dtype))
        soft = _straight_through(soft, value)
    return layout.from_canonical(soft.astype(out_dtype))


def gumbel_softargmax(
    key: ArrayLike,
    logits: ArrayLike,
    *,
    t: ArrayLike = 1.0,
    hard: bool = False,
    axis: _checks.Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""A Gumbel-softargmax sample: a differentiable relaxation of a draw from softargmax(logits).

    .. math::
        y = \mathrm{softargmax}_t(x + g),\qquad g_i \sim \mathrm{Gumbel}(0, 1)\ \text{i.i.d.}

    ``argmax(x + g)`` is an exact draw from the categorical distribution ``softargmax(x)`` (the
    Gumbel-max trick), whatever ``t`` is; ``t`` only sets how close the soft sample ``y`` is to that
    one-hot: near it as ``t -> 0``, near uniform for large ``t``. With ``hard=True`` the value is
    the one-hot of ``argmax(x + g)`` and the derivative is that of the soft sample ``y`` (the
    straight-through estimator): ``dy/dx = (diag(y) - y y^T) / t``.

    Args:
      key: a single PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``); ``jax.vmap`` over a
        batch of keys for independent samples.
      logits: array of unnormalised log-probabilities, e.g. ``[batch, num_classes]``; one
        independent sample is drawn for every position of the non-reduced axes. Ints and bools
        promote like :mod:`jax.numpy`; bf16/f16 are computed in float32 (noise included) and
        returned in their own dtype.
      t: temperature ``>= 0``: a scalar or one per row (broadcastable to the reduced shape), may be
        traced and differentiated. ``t = 0`` returns the one-hot with zero derivative.
      hard: if ``True``, return the exact one-hot with the straight-through derivative. Static.
      axis: int, tuple of ints or ``None``: the axes the categories run along. Default ``-1``.
      where: optional boolean mask broadcastable to ``logits.shape``; ``False`` entries are never
        sampled and get 0.

    Returns:
      Array of ``logits``' shape and (floating) dtype that sums to 1 along ``axis``: the soft
      sample, or with ``hard=True`` a one-hot.

    Exact for logits of any magnitude: the noise is added to ``x - max(x)`` (the same
    distribution), so ``[1e30, 1e30, 0]`` draws its first two entries half the time each.

    Edges: ``-inf`` and masked entries are never sampled (value 0, derivative 0). If some logits
    are ``+inf`` only those are sampled, uniformly (the limit of equal logits growing together).
    An all ``-inf`` or fully masked row is all 0 with zero derivative; a NaN makes its row NaN.
    The same key gives the same noise, so at one key the hard sample is the same for every ``t``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsoft.gumbel import gumbel_softargmax
      >>> y = gumbel_softargmax(jax.random.key(0), jnp.array([1.0, 2.0, -jnp.inf]), hard=True)
      >>> float(y.sum()), float(y.max()), float(y[2])
      (1.0, 1.0, 0.0)

    References:
      Jang, Gu, Poole (2017), *Categorical Reparameterization with Gumbel-Softmax*;
      Maddison, Mnih, Teh (2017), *The Concrete Distribution*.

    .. seealso:: :func:`softargmax`, the distribution these samples are drawn from.
    """
    if isinstance(hard, (bool, np.bool_)):
        hard = bool(hard)
    else:
        raise TypeError(f"{_NAME}: hard must be a Python bool, got {type(hard).__name__}")
    key = _check_key(key)
    x, t_arr, w, axes = _checks.prepare(_NAME, logits, axis, t, where)
    g = _gumbel_noise(key, x.shape, _checks.compute_dtype(_checks.result_dtype(x, _NAME)))
    return _relax(x, g, t_arr, w, axes=axes, hard=hard)
