"""The public softmax functions: validate eagerly, then one jitted dispatch into the kernels.

:func:`logsumexp`, :func:`softargmax` (``softmax``), :func:`log_softargmax` (``log_softmax``) and
:func:`softargmax_mean`. Each validates its arguments (:func:`jaxsoft._checks.prepare`, outside any
trace, so errors name the function), then calls one ``jax.jit`` that moves the reduced axes last
(the canonical layout of :mod:`jaxsoft._checks`) and runs the custom-JVP kernels of
:mod:`jaxsoft._core`; ``logsumexp``'s ``b=`` goes through :mod:`jaxsoft._scaled_lse`.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, overload

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft._core import core_one, forced_kernel, wmean
from jaxsoft._scaled_lse import lse_scaled

_NEG_INF = -jnp.inf


@partial(jax.jit, static_argnames=("axes", "kind", "keepdims", "signed", "name", "kernel"))
def _apply(x, t, where, b=None, *, axes, kind, keepdims, name, kernel, signed=False):
    # ``kernel`` (the forced kernel or None) is unused here: it keys the jit cache, so that a trace
    # made under one kernel is never reused under the other (see use_kernel).
    del kernel
    if b is not None:  # the result dtype is that of x and b together, as in jax.nn.logsumexp
        x = x.astype(jnp.result_type(x, b))
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, name)
    if b is not None:
        return _scaled_result(layout, xc, tc, mc, b, out_dtype, keepdims, signed)
    if layout.n == 0:  # an empty reduction: -inf for the reductions, an empty array otherwise
        red = jnp.full(layout.batch + (1,), _NEG_INF, xc.dtype)
        out = red if kind in ("lse", "mean") else xc
    elif kind == "mean":
        out = wmean(xc, tc, mc)
    else:
        out = core_one(kind, xc, tc, mc)
    out = out.astype(out_dtype)
    if kind not in ("lse", "mean"):
        return layout.from_canonical(out)
    out = layout.reduced_from_canonical(out, keepdims)
    if not signed:
        return out
    # Without b every sum of exps is positive, or 0 on an empty row (-inf).
    sign = jnp.where(out == _NEG_INF, 0, jnp.where(jnp.isnan(out), jnp.nan, 1))
    return out, sign.astype(out_dtype)


def _scaled_result(layout, xc, tc, mc, b, out_dtype, keepdims, signed):
    """logsumexp with scale factors ``b`` from canonical inputs, in the output layout."""
    if layout.n == 0:
        out = jnp.full(layout.batch + (1,), _NEG_INF, xc.dtype)
        sign = jnp.zeros_like(out)
    else:
        out, sign = lse_scaled(xc, tc, mc, _checks.canonical_scale(b, layout, xc.dtype))
    if not signed:  # a negative sum has no real log (jax.nn.logsumexp: NaN)
        out = jnp.where(sign < 0, jnp.nan, out)
    out = layout.reduced_from_canonical(out.astype(out_dtype), keepdims)
    if not signed:
        return out
    return out, layout.reduced_from_canonical(sign.astype(out_dtype), keepdims)


def _dispatch(kind, name, x, axis, t, where, keepdims=False):
    x, t, where, axes = _checks.prepare(name, x, axis, t, where)
    return _apply(
        x, t, where, axes=axes, kind=kind, keepdims=keepdims, name=name, kernel=forced_kernel()
    )


# The return type follows return_sign, as in jax.nn.logsumexp's stubs.
@overload
def logsumexp(
    x: ArrayLike,
    axis: _checks.Axis = None,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: Literal[False] = False,
    where: ArrayLike | None = None,
    *,
    t: ArrayLike = 1.0,
) -> jax.Array: ...


@overload
def logsumexp(
    x: ArrayLike,
    axis: _checks.Axis = None,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    *,
    return_sign: Literal[True],
    where: ArrayLike | None = None,
    t: ArrayLike = 1.0,
) -> tuple[jax.Array, jax.Array]: ...


@overload
def logsumexp(
    x: ArrayLike,
    axis: _checks.Axis,
    b: ArrayLike | None,
    keepdims: bool,
    return_sign: bool,
    where: ArrayLike | None = None,
    *,
    t: ArrayLike = 1.0,
) -> jax.Array | tuple[jax.Array, jax.Array]: ...


def logsumexp(
    x: ArrayLike,
    axis: _checks.Axis = None,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
    where: ArrayLike | None = None,
    *,
    t: ArrayLike = 1.0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Log-sum-exp with temperature: the smooth maximum (the notes' "good softMax").

    .. math::
        \mathrm{logsumexp}_t(x) = t \log \sum_{i \in S} e^{x_i / t}
        = m + t\,\mathrm{log1p}\Big(\sum_{i \ne k} e^{(x_i - m)/t}\Big),\quad m = \max_S x

    A drop-in for :func:`jax.nn.logsumexp` and :func:`jax.scipy.special.logsumexp` (same
    arguments, order and defaults, ``axis=None`` reducing over every axis), with the temperature
    ``t`` added and the edges below defined. Computed in the shifted ``log1p`` form, so nothing
    overflows and small parts survive: ``logsumexp([0., -40.])`` is ``4.248e-18`` in float64,
    not 0. Its gradient is ``softargmax(x, t=t)``; its derivative in ``t`` is the entropy of that
    distribution. With ``b``, it is ``t log|sum_i b_i e^(x_i/t)|``.

    Args:
      x: input array of any shape, e.g. ``[batch, num_classes]``. Ints and bools promote like
        :mod:`jax.numpy`; bf16/f16 are accumulated in float32 and returned in their own dtype.
      axis: int, tuple of ints, or ``None`` (all axes, the default, as in ``jax.nn``) to reduce
        over. The other functions of jaxsoft default to ``-1``.
      b: optional scale factors of the exponentials, broadcastable to ``x.shape`` (e.g. ``1/n``
        for a log-mean-exp, or negative ones for a difference). Entries with ``b = 0`` are left
        out, like masked ones (their gradient in ``b`` is 0, as in ``jax.nn``).
      keepdims: keep the reduced axes with size 1.
      return_sign: also return the sign of the sum (``1``, ``-1``, ``0`` for an empty or exactly
        cancelling sum, NaN on a NaN row), the value being ``log`` of its absolute value. Without
        it a negative sum gives NaN, as in ``jax.nn``.
      where: optional boolean mask broadcastable to ``x.shape``; ``False`` entries are left out
        (their values, even NaN or inf, change nothing).
      t: keyword-only temperature ``>= 0``: a scalar, or an array broadcastable to the reduced
        shape (one per row). ``t = 0`` gives ``max(x)``. May be traced and differentiated.

    Returns:
      Array of ``x``'s shape without ``axis`` (or with size-1 axes if ``keepdims``), or the pair
      ``(value, sign)`` of such arrays when ``return_sign``. The dtype is ``x``'s (with ``b``:
      ``x``'s and ``b``'s promoted together), floats for int inputs.

    Edges: ``-inf`` entries are ignored; any ``+inf`` gives ``+inf``; an all ``-inf`` or fully
    masked row (or an empty axis) gives ``-inf`` with zero gradient (``jax.nn``: NaN gradient);
    a NaN gives NaN on its row. With ``b``, a row whose positive and negative parts are both
    ``+inf`` is NaN, and a sum that cancels exactly gives ``-inf`` with sign 0.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> float(jaxsoft.logsumexp(jnp.array([1e30, 1e30])))
      1e+30
      >>> float(jaxsoft.logsumexp(jnp.array([3.0, 1.0]), t=0.0))
      3.0
      >>> x = jnp.array([[0.0, 1.0], [2.0, 3.0]])
      >>> jaxsoft.logsumexp(x)  # every axis by default, as jax.nn.logsumexp
      Array(3.44019, dtype=float32)
      >>> jaxsoft.logsumexp(x, axis=-1, b=jnp.array([0.5, 0.5]))  # log-mean-exp of each row
      Array([0.620114, 2.620115], dtype=float32)
      >>> jaxsoft.logsumexp(jnp.array([0.0, 1.0]), b=jnp.array([1.0, -1.0]), return_sign=True)
      (Array(0.541325, dtype=float32), Array(-1., dtype=float32))

    .. seealso:: :func:`softargmax` (its gradient), :func:`softargmax_mean` (the "bad" one).
    """
    if b is None and not return_sign:  # the plain kernel, with nothing added
        return _dispatch("lse", "logsumexp", x, axis, t, where, keepdims)
    name = "logsumexp"
    xa, ta, wa, axes = _checks.prepare(name, x, axis, t, where)
    b_arr = None if b is None else _checks.check_scale(b, xa.shape, name)
    return _apply(
        xa,
        ta,
        wa,
        b_arr,
        axes=axes,
        kind="lse",
        keepdims=keepdims,
        signed=_checks.check_flag(return_sign, name, "return_sign"),
        name=name,
        kernel=forced_kernel(),
    )


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
