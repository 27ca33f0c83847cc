"""Log-sum-exp computed in chunks along the axis: a streaming (online) max and sum.

Built on the per-row statistics of :mod:`jaxsoft._rowstats` (max, count of maxima, mass of the
others), combined chunk by chunk in a ``lax.scan`` (:mod:`jaxsoft._chunks`), so that the values,
the ``log1p`` accuracy and the edges are those of :func:`jaxsoft.logsumexp`.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft import _chunks as ch
from jaxsoft import _rowstats as rs


def _chunked_stats(x, t, mask, chunk_size) -> rs.RowStats:
    c = ch.chunking(x.shape[-1], chunk_size)

    def body(st, i):
        xc, keep = ch.chunk_of(x, c, i, mask)
        return rs.combine(st, rs.block(jnp.where(keep, xc, rs.NEG_INF), t), t), None

    return ch.scan(body, rs.empty(x.shape[:-1], x.dtype), c.count, like=(x, t, mask))


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _chunked_lse(x, t, mask, chunk_size):
    """``(*batch, 1)`` log-sum-exp of canonical ``x: (*batch, n)``, ``n >= 1``."""
    return rs.lse(_chunked_stats(x, t, mask, chunk_size), t)


def _chunked_lse_jvp(chunk_size, primals, tangents):
    """``d lse = <p, dx> + H(p) dt``, ``p`` recomputed chunk by chunk from the final statistics.

    Reverse mode transposes this scan; the residual it keeps is ``p``, the size of ``x`` itself.
    """
    x, t, mask = primals
    dx, dt, _ = tangents
    st = _chunked_stats(x, t, mask, chunk_size)
    lse = rs.lse(st, t)
    with_dx = not rs.is_zero(dx)
    with_dt = t is not None and not rs.is_zero(dt)
    c = ch.chunking(x.shape[-1], chunk_size)

    def body(carry, i):
        dot, pz = carry
        xc, keep = ch.chunk_of(x, c, i, mask)
        xc = jnp.where(keep, xc, rs.NEG_INF)
        p = rs.probs(xc, st, t)
        if with_dx:
            dxc = lax.dynamic_slice_in_dim(dx, c.start(i), c.size, axis=-1)
            # where, not p * dx: a NaN or inf tangent on an excluded entry must not reach the sum.
            dot = dot + jnp.sum(p * jnp.where(keep, dxc, 0), axis=-1, keepdims=True)
        if with_dt:
            pz = pz + rs.weighted_z(xc, p, st, t)
        return (dot, pz), None

    zero = jnp.zeros_like(lse)
    like = (x, t, mask) + tuple(d for d in (dx, dt) if not rs.is_zero(d))
    dot, pz = ch.scan(body, (zero, zero), c.count, like) if (with_dx or with_dt) else (zero, zero)
    dlse = dot
    if with_dt:
        dlse = dlse + rs.entropy(st, pz) * dt
    return lse, dlse


_chunked_lse.defjvp(_chunked_lse_jvp, symbolic_zeros=True)


@partial(jax.jit, static_argnames=("axes", "chunk_size", "keepdims"))
def _chunked_logsumexp(x, t, where, *, axes, chunk_size, keepdims):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "chunked_logsumexp")
    if layout.n == 0:
        out = jnp.full(layout.batch + (1,), rs.NEG_INF, xc.dtype)
    else:
        out = _chunked_lse(xc, tc, mc, chunk_size)
    return layout.reduced_from_canonical(out.astype(out_dtype), keepdims)


def chunked_logsumexp(
    x: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    chunk_size: int,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""Log-sum-exp computed in chunks along the axis, with an online (streaming) max and sum.

    .. math::
        \mathrm{logsumexp}_t(x) = m + t\,\mathrm{log1p}\Big(\sum_{i \ne k} e^{(x_i - m)/t}\Big),
        \qquad (m, s) \leftarrow \big(m',\ s\,e^{(m - m')/t} + s_{\text{chunk}}\big)

    The same values and edge semantics as :func:`jaxsoft.logsumexp` (SPEC 6), reading
    ``chunk_size`` entries per step of a ``lax.scan``; the gradient (``softargmax_t(x)``) and the
    derivative in ``t`` (the entropy) are computed chunk by chunk too. Useful when the reduced
    axis is produced chunk by chunk or is too long for one fused pass; see
    :func:`linear_cross_entropy` for the case where the logits should never exist at all.

    Args:
      x: input array, e.g. ``[batch, vocab]`` (dtype rules as :func:`jaxsoft.logsumexp`).
      axis: int, tuple of ints or ``None``; a tuple is flattened in the order given and chunked.
      chunk_size: entries per step, ``>= 1``; need not divide the axis length (the last chunk is
        masked), and may exceed it (one chunk).
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` gives ``max(x)``. Differentiable.
      where: optional boolean mask broadcastable to ``x.shape``; ``False`` entries are left out.
      keepdims: keep the reduced axes with size 1.

    Returns:
      Array of ``x``'s shape without ``axis`` (size-1 axes if ``keepdims``), in ``x``'s float dtype.

    Edges: ``-inf`` entries are ignored; any ``+inf`` gives ``+inf`` (gradient uniform over the
    ``+inf`` entries); an all ``-inf``/fully masked row or an empty axis gives ``-inf`` with zero
    gradient; a NaN gives NaN on its row only.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft.large_vocab import chunked_logsumexp
      >>> x = jnp.array([[0.0, -40.0, 1.0, 2.0, -jnp.inf]])
      >>> chunked_logsumexp(x, chunk_size=2)
      Array([2.407606], dtype=float32)
      >>> float(chunked_logsumexp(jnp.array([3.0, 1.0, 3.0]), chunk_size=2, t=0.0))
      3.0
    """
    name = "chunked_logsumexp"
    chunk_size = _checks.check_chunk_size(name, chunk_size)
    x, t_arr, w, axes = _checks.prepare(name, x, axis, t, where)
    return _chunked_logsumexp(x, t_arr, w, axes=axes, chunk_size=chunk_size, keepdims=keepdims)
