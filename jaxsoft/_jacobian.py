"""The analytic Jacobian of softargmax, and O(n) Jacobian-vector products."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxsoft import _checks, _core
from jaxsoft._functions import softargmax


def _from_p(p: jax.Array, t: jax.Array | None) -> jax.Array:
    """``(diag(p) - p p^T) / t`` per row of ``p`` (``(*batch, n)``), ``t`` of shape ``(*batch, 1)``.

    Everything but the ``(*batch, n, n)`` output is O(n) per row: the diagonal
    ``p_i (1 - p_i) / t`` and the handling of ``t = 0`` are done on the vectors, so the one loop
    that writes the output holds a product, the division by ``t`` (if any) and a select on the
    diagonal. With jax 0.10.2 on XLA:CPU that loop runs as fast as writing ``p p^T`` alone; the
    former ``p_i ([i = j] - p_j)`` in the loop, and a ``t = 0`` select over the whole output,
    took about 1.2x as long at ``n = 1024`` (bench/README.md). The arithmetic is unchanged
    (``p_i (0 - p_j) = p_i (-p_j)`` off the diagonal, ``p_i (1 - p_i)`` on it, then ``/ t``), so
    ``J`` is exactly symmetric and its diagonal keeps ``1 - p_i`` exact where ``p_i`` is near 1.
    """
    n = p.shape[-1]
    if t is not None:
        # At t = 0 the hard argmax is piecewise constant: its derivative is 0 (as in the JVP
        # rule), even on a NaN row. With p = 0 and t = 1 on those rows every entry is 0.
        hard = t == 0
        p = jnp.where(hard, 0, p)
        t = jnp.where(hard, 1, t)
    diag = p * (1 - p)
    off = p[..., :, None] * -p[..., None, :]
    if t is not None:
        diag = diag / t
        off = off / t[..., None]
    on_diag = lax.broadcasted_iota(jnp.int32, (n, n), 0) == lax.broadcasted_iota(
        jnp.int32, (n, n), 1
    )
    return jnp.where(on_diag, diag[..., :, None], off)


@partial(jax.jit, static_argnames=("axes", "kernel"))
def _jacobian(x, t, where, *, axes, kernel):
    del kernel  # keys the jit cache only (see jaxsoft._core.use_kernel)
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "softargmax_jacobian")
    if layout.n == 0:
        return jnp.zeros(layout.batch + (0, 0), out_dtype)
    p = _core.core_one("p", xc, tc, mc)
    # Masked entries are 0 in p, so their rows and columns come out 0 with no mask in the loop.
    return _from_p(p, tc).astype(out_dtype)


def softargmax_jacobian(
    x: ArrayLike, axis: _checks.Axis = -1, *, t: ArrayLike = 1.0, where: ArrayLike | None = None
) -> jax.Array:
    r"""The analytic Jacobian of :func:`softargmax`, batched.

    .. math::
        J_{ij} = \frac{\partial p_i}{\partial x_j} = \frac{p_i([i = j] - p_j)}{t},\qquad
        J = \frac{\mathrm{diag}(p) - p p^\top}{t}

    ``J`` is symmetric, its rows sum to 0 and it is positive semi-definite with null vector ``1``.
    It costs O(n^2) memory by nature; for products with a vector use :func:`softargmax_jvp`.
    Besides writing it (once, in the output dtype), the work is O(n) per row: one softargmax.

    Args:
      x: input array of shape ``[..., n]`` (or any shape with ``axis`` selecting the reduced axes).
      axis: int or tuple of ints. The reduced axes are moved last and, if several, flattened in
        the order given in ``axis`` into one axis of length ``n`` (as for a tuple ``axis`` in losses).
      t: temperature ``>= 0`` (scalar or one per row). At ``t = 0`` the Jacobian is 0.
      where: optional boolean mask; masked rows and columns are 0.

    Returns:
      Array of shape ``batch + (n, n)``, ``batch`` being ``x``'s non-reduced dimensions in order.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> jaxsoft.softargmax_jacobian(jnp.array([0.0, 0.0]))
      Array([[ 0.25, -0.25],
             [-0.25,  0.25]], dtype=float32)
    """
    prepared = _checks.prepare("softargmax_jacobian", x, axis, t, where)
    return _jacobian(
        prepared.x, prepared.t, prepared.where, axes=prepared.axes, kernel=_core.forced_kernel()
    )


def softargmax_jvp(
    x: ArrayLike,
    v: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""``(p, J v)`` for ``p = softargmax(x)``, in O(n): ``J v = p * (v - <p, v>) / t``.

    Args:
      x: input array; ``v``: tangent of the same shape; other arguments as :func:`softargmax`.

    Returns:
      ``(p, jv)``, both of ``x``'s shape.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> p, jv = jaxsoft.softargmax_jvp(jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0]))
      >>> jv
      Array([ 0.25, -0.25], dtype=float32)
    """
    # Validate under this function's name, so errors name the function that was called.
    x = _checks.prepare("softargmax_jvp", x, axis, t, where).x
    x = x.astype(_checks.result_dtype(x, "softargmax_jvp"))  # int/bool x: jvp needs a float primal
    v = _checks.as_array(v, "softargmax_jvp", "v")
    if v.shape != x.shape:
        raise ValueError(f"softargmax_jvp: v of shape {v.shape} must match x of shape {x.shape}")
    f = partial(softargmax, axis=axis, t=t, where=where)
    return jax.jvp(f, (x,), (v.astype(jnp.result_type(x.dtype, float)),))


def softargmax_vjp(
    x: ArrayLike,
    u: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""``(p, u^T J)`` for ``p = softargmax(x)``, in O(n). ``J`` is symmetric, so this equals
    :func:`softargmax_jvp` with ``v = u``; it is computed by reverse mode.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> p, uj = jaxsoft.softargmax_vjp(jnp.array([0.0, 0.0]), jnp.array([1.0, 0.0]))
      >>> uj
      Array([ 0.25, -0.25], dtype=float32)
    """
    # Validate under this function's name, so errors name the function that was called.
    x = _checks.prepare("softargmax_vjp", x, axis, t, where).x
    x = x.astype(_checks.result_dtype(x, "softargmax_vjp"))  # int/bool x: jvp needs a float primal
    u = _checks.as_array(u, "softargmax_vjp", "u")
    if u.shape != x.shape:
        raise ValueError(f"softargmax_vjp: u of shape {u.shape} must match x of shape {x.shape}")
    p, pullback = jax.vjp(partial(softargmax, axis=axis, t=t, where=where), x)
    (uj,) = pullback(u.astype(p.dtype))
    return p, uj
