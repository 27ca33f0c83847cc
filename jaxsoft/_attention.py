"""Safe dot-product attention: zero on queries with no key, chunked over keys, exact lse merging.

:func:`attention` has the shapes of :func:`jax.nn.dot_product_attention` and the edges of
:func:`jaxsoft.softargmax` (SPEC section 10); :func:`merge_attention` combines partial results
over disjoint key sets (split-KV decoding, ring attention) by their log-sum-exp.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsoft import _attention_kernels as _kernels
from jaxsoft import _checks

__all__ = ["attention", "merge_attention"]


def _floating(a: jax.Array, name: str, what: str) -> jax.Array:
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{name}: {what} must be a floating-point array, got dtype {a.dtype}")
    return a


def _as_4d(a: jax.Array, name: str, what: str, target: tuple[int, ...]) -> jax.Array:
    """Validate that ``a`` broadcasts to ``target`` = ``(B, N, T, S)`` and give it rank 4."""
    try:
        ok = a.ndim <= 4 and np.broadcast_shapes(a.shape, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: {what} of shape {a.shape} does not broadcast to (B, N, T, S) = {target}"
        )
    return a.reshape((1,) * (4 - a.ndim) + a.shape)


def _rows(a: jax.Array | None, groups: tuple[int, int], n_q: int) -> jax.Array | None:
    """``(b, n, t, s)`` -> ``(b, k, r, s)``: query heads split into (key head, group), and the
    groups stacked along the rows (``r = g * T + t``) as in the kernels' layout."""
    if a is None:
        return None
    b, n, t, s = a.shape
    kh, g = groups
    a = a.reshape(b, 1, 1, t, s) if n == 1 else a.reshape(b, kh, g, t, s)
    if a.shape[2] == 1 and t == 1:
        return a.reshape(b, a.shape[1], 1, s)
    # Rows vary with the group or the position: spell them out (as jax.nn does for groups).
    a = jnp.broadcast_to(a, (b, a.shape[1], g, n_q, s))
    return a.reshape(b, a.shape[1], g * n_q, s)


@partial(jax.jit, static_argnames=("cfg", "chunk_size", "return_lse"))
def _apply(query, key, value, bias, mask, t, *, cfg, chunk_size, return_lse):
    b, n_q, n_heads, h = query.shape
    kh = key.shape[2]
    groups = (kh, n_heads // kh)
    g = groups[1]
    q = jnp.transpose(query.reshape(b, n_q, kh, g, h), (0, 2, 3, 1, 4)).reshape(b, kh, g * n_q, h)
    bias_r = _rows(bias, groups, n_q)
    mask_r = _rows(mask, groups, n_q)
    t_r = None
    if t is not None:  # per query row: broadcast to (B, T, N), then to the kernels' rows
        t_rows = jnp.broadcast_to(t, (b, n_q, n_heads)).reshape(b, n_q, kh, g)
        t_r = jnp.transpose(t_rows, (0, 2, 3, 1)).reshape(b, kh, g * n_q, 1)
    if key.shape[1] == 0:  # no keys at all: every query is a query with no key
        rows = q.shape[:3] + (1,)
        dtype = jnp.promote_types(query.dtype, jnp.float32)
        out = jnp.zeros(q.shape[:3] + value.shape[-1:], dtype)
        lse = jnp.full(rows, -jnp.inf, dtype)
    elif chunk_size is None:
        out, lse = _kernels.dense(q, key, value, bias_r, mask_r, t_r, cfg)
    else:
        out, lse = _kernels.chunked(q, key, value, bias_r, mask_r, t_r, cfg, chunk_size)
    hv = value.shape[-1]
    out = jnp.transpose(out.reshape(b, kh, g, n_q, hv), (0, 3, 1, 2, 4))
    out = out.reshape(b, n_q, n_heads, hv).astype(query.dtype)
    if not return_lse:
        return out
    lse = jnp.transpose(lse.reshape(b, kh, g, n_q), (0, 3, 1, 2)).reshape(b, n_q, n_heads)
    return out, lse


def attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    t: ArrayLike = 1.0,
    logit_softcap: float | None = None,
    chunk_size: int | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Scaled dot-product attention whose queries with no key output 0, not the mean of the values.

    .. math::
        s_{ij} = \mathrm{cap}(\mathrm{scale}\; q_i \cdot k_j) + \mathrm{bias}_{ij},\qquad
        \mathrm{out}_i = \sum_{j \in S_i} \mathrm{softargmax}_t(s_{i\cdot})_j\, v_j,\qquad
        \mathrm{lse}_i = t \log \sum_{j \in S_i} e^{s_{ij}/t}

    with ``S_i`` the keys query ``i`` may see (allowed by ``mask`` and causal order, with a score
    above ``-inf``) and ``cap(x) = c tanh(x / c)`` when ``logit_softcap = c``. Shapes and grouped heads
    follow :func:`jax.nn.dot_product_attention`: ``B`` batch, ``T`` queries, ``S`` keys, ``N``
    query heads, ``K`` key/value heads (``N`` a multiple of ``K``: grouped-query attention), ``H``
    head dimension.

    Args:
      query: ``(B, T, N, H)`` (or ``(T, N, H)``), floating.
      key: ``(B, S, K, H)`` (or ``(S, K, H)``).
      value: ``(B, S, K, Hv)`` (or ``(S, K, Hv)``).
      bias: optional, added to the (capped) scores; broadcastable to ``(B, N, T, S)``. ``-inf``
        entries mask, exactly like ``False`` in ``mask``.
      mask: optional boolean array broadcastable to ``(B, N, T, S)``; ``True`` takes part.
      is_causal: query ``i`` sees keys ``j <= i`` only (top-left aligned, as ``jax.nn``).
      scale: multiplies ``q . k``; default ``1 / sqrt(H)``.
      t: temperature ``>= 0``, a scalar or broadcastable to ``(B, T, N)`` (one per query row),
        may be traced and differentiated. It divides the scores after cap and bias. ``t = 0`` is
        hard attention: the mean of the values of the highest-scoring keys (ties split).
      logit_softcap: ``c > 0`` caps the scaled dot products to ``(-c, c)`` before bias and mask,
        as Gemma 2 does (SPEC 8.1); ``None`` (default) does not.
      chunk_size: process the keys ``chunk_size`` at a time with an online softmax; the backward
        pass recomputes each chunk's scores, so no ``(T, S)`` array is ever kept. Results match
        the unchunked ones within rounding; any size works (the last chunk is padded).
      return_lse: also return the per-query log-sum-exp, for :func:`merge_attention`.

    Returns:
      ``out`` ``(B, T, N, Hv)`` in the query's dtype (bf16/f16 are computed with a float32
      softmax), and with ``return_lse`` also ``lse`` ``(B, T, N)`` in float32 (float64 for
      float64 queries).

    Edges (SPEC 10.2, 6):

    ==========================================  ==============================================
    the query's row of scores                   result
    ==========================================  ==============================================
    no key takes part (masked, causal, or       ``out = 0``, ``lse = -inf``, zero gradients
    every score ``-inf``)                       (``jax.nn`` returns the mean of ``v`` there)
    some ``-inf`` (mask, ``-inf`` bias)         those keys get weight 0 and no gradient
    a NaN score                                 NaN ``out`` and ``lse`` on that query only
    a ``+inf`` score (``+inf`` bias, overflow)  NaN on that query only, like a NaN
    ``t = 0``                                   mean of ``v`` over the top-scoring keys
    ==========================================  ==============================================

    A NaN or inf in a masked-out score is ignored. The value matmul still sees every key, so a
    NaN in a padded ``value`` row reaches the outputs (as in ``jax.nn``), and a NaN query row
    makes the gradients of the keys/values it saw NaN. A ``+inf`` score is not given the limit
    value of SPEC 6 (uniform over the ``+inf`` keys): that would take a select in the fused
    kernel, which costs about 2x in speed, for inputs that are not meaningful attention scores.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft import attention
      >>> q = k = v = jnp.ones((1, 2, 1, 4))
      >>> pad = jnp.array([[True, False], [False, False]])  # query 1 sees no key
      >>> attention(q, k, v, mask=pad)[0, :, 0]
      Array([[1., 1., 1., 1.],
             [0., 0., 0., 0.]], dtype=float32)

    .. seealso:: :func:`merge_attention` to combine attention over disjoint key sets.
    """
    name = "attention"
    q = _floating(_checks.as_array(query, name, "query"), name, "query")
    k = _floating(_checks.as_array(key, name, "key"), name, "key")
    v = _floating(_checks.as_array(value, name, "value"), name, "value")
    unbatched = q.ndim == 3
    if q.ndim not in (3, 4) or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(
            f"{name}: query, key and value must all be (B, T, N, H) or all (T, N, H); "
            f"got shapes {q.shape}, {k.shape}, {v.shape}"
        )
    if unbatched:
        q, k, v = q[None], k[None], v[None]
    b, n_q, n_heads, h = q.shape
    if k.shape[0] != b or k.shape[3] != h:
        raise ValueError(f"{name}: key of shape {k.shape} does not match query of shape {q.shape}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{name}: value of shape {v.shape} does not match key of shape {k.shape}")
    if k.shape[2] == 0 or n_heads % k.shape[2]:
        raise ValueError(
            f"{name}: the number of query heads ({n_heads}) must be a multiple of the number of "
            f"key/value heads ({k.shape[2]})"
        )
    target = (b, n_heads, n_q, k.shape[1])
    bias_arr = None
    if bias is not None:
        bias_arr = _as_4d(
            _floating(_checks.as_array(bias, name, "bias"), name, "bias"), name, "bias", target
        )
    mask_arr = None
    if mask is not None:
        mask_arr = _checks.as_array(mask, name, "mask")
        if mask_arr.dtype != jnp.bool_:
            raise TypeError(f"{name}: mask must be a boolean array, got dtype {mask_arr.dtype}")
        mask_arr = _as_4d(mask_arr, name, "mask", target)
    t_arr = _checks.check_temperature(t, name)
    if t_arr is not None:
        rows = (n_q, n_heads) if unbatched else (b, n_q, n_heads)
        try:
            ok = t_arr.ndim <= len(rows) and np.broadcast_shapes(t_arr.shape, rows) == rows
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{name}: t of shape {t_arr.shape} does not broadcast to the rows {rows}"
            )
        if unbatched:
            t_arr = t_arr.reshape((1,) * (3 - t_arr.ndim) + t_arr.shape)
    if scale is None:
        scale = 1 / float(np.sqrt(h))
    elif isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: scale must be a Python float or None, got {type(scale).__name__}")
    if logit_softcap is not None:
        if isinstance(logit_softcap, bool) or not isinstance(
            logit_softcap, (int, float, np.integer, np.floating)
        ):
            raise TypeError(f"{name}: logit_softcap must be a positive float or None")
        if not 0 < logit_softcap < np.inf:
            raise ValueError(
                f"{name}: logit_softcap must be positive and finite, got {logit_softcap}"
            )
        logit_softcap = float(logit_softcap)
    if chunk_size is not None and (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size < 1
    ):
        raise ValueError(f"{name}: chunk_size must be a positive int or None, got {chunk_size!r}")
    cfg = _kernels.Config(float(scale), logit_softcap, bool(is_causal), n_q, int(k.shape[1]))
    if chunk_size is not None:
        chunk_size = min(int(chunk_size), max(int(k.shape[1]), 1))
    res = _apply(
        q,
        k,
        v,
        bias_arr,
        mask_arr,
        t_arr,
        cfg=cfg,
        chunk_size=chunk_size,
        return_lse=bool(return_lse),
    )
    if not unbatched:
        return res
    if return_lse:
        return res[0][0], res[1][0]
    return res[0]


def merge_attention(
    out_a: ArrayLike, lse_a: ArrayLike, out_b: ArrayLike, lse_b: ArrayLike
) -> tuple[jax.Array, jax.Array]:
    r"""Merge attention over two disjoint key sets, exactly, from each part's ``(out, lse)``.

    .. math::
        \mathrm{lse} = \log(e^{\mathrm{lse}_a} + e^{\mathrm{lse}_b}),\qquad
        \mathrm{out} = e^{\mathrm{lse}_a - \mathrm{lse}}\,\mathrm{out}_a
          + e^{\mathrm{lse}_b - \mathrm{lse}}\,\mathrm{out}_b

    computed with the larger ``lse`` as shift (SPEC 10.4). A part with ``lse = -inf`` (no key)
    contributes nothing, whatever its ``out``; if both are empty the result is ``0`` and ``-inf``;
    parts at ``lse = +inf`` share the weight evenly. Differentiable, with NaN-free gradients at
    all of these edges. Merging is associative, so any number of parts fold pairwise.

    The ``lse`` here is ``t * log Z``: parts merged this way must use the same temperature ``t = 1``
    (for another ``t``, pass ``lse / t``).

    Args:
      out_a: ``(..., Hv)``, e.g. ``(B, T, N, Hv)`` from ``attention(..., return_lse=True)``.
      lse_a: ``out_a.shape[:-1]``.
      out_b: like ``out_a``.
      lse_b: like ``lse_a``.

    Returns:
      ``(out, lse)``: ``out`` in the promoted dtype of ``out_a``/``out_b``, ``lse`` in that of
      the ``lse`` arguments (float32 at least).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft import merge_attention
      >>> out, lse = merge_attention(
      ...     jnp.array([[1.0, 1.0]]), jnp.array([0.0]), jnp.array([[9.0, 9.0]]), jnp.array([-jnp.inf]))
      >>> out, lse
      (Array([[1., 1.]], dtype=float32), Array([0.], dtype=float32))
    """
    name = "merge_attention"
    arrays = [
        _floating(_checks.as_array(a, name, what), name, what)
        for a, what in ((out_a, "out_a"), (lse_a, "lse_a"), (out_b, "out_b"), (lse_b, "lse_b"))
    ]
    oa, la, ob, lb = arrays
    if oa.shape != ob.shape or la.shape != lb.shape or oa.shape[:-1] != la.shape:
        raise ValueError(
            f"{name}: expected out_a, out_b of one shape (..., H) and lse_a, lse_b of shape "
            f"(...,); got {oa.shape}, {la.shape}, {ob.shape}, {lb.shape}"
        )
    return _merge(oa, la, ob, lb)


@jax.jit
def _merge(oa, la, ob, lb):
    out_dtype = jnp.promote_types(oa.dtype, ob.dtype)
    lse_dtype = jnp.promote_types(jnp.promote_types(la.dtype, lb.dtype), jnp.float32)
    cdt = jnp.promote_types(jnp.promote_types(out_dtype, lse_dtype), jnp.float32)
    la, lb = la.astype(cdt), lb.astype(cdt)
    m = jnp.maximum(la, lb)
    # The shift is a constant of the merge (the result does not depend on it), so it carries no
    # gradient; 0 when both parts are empty (-inf - -inf would be NaN) or when one is +inf.
    ref = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0))
    top = m == jnp.inf

    def weight(l):
        return jnp.where(top, (l == jnp.inf).astype(cdt), jnp.exp(jnp.where(top, 0, l) - ref))

    wa, wb = weight(la), weight(lb)
    total = wa + wb
    safe = jnp.where(total == 0, 1, total)
    # An empty part (weight 0) contributes nothing even if its out holds NaN or inf (the select
    # comes first, so that no 0 * NaN reaches the gradient of its weight either).
    wa, wb = wa[..., None], wb[..., None]
    num = wa * jnp.where(wa > 0, oa.astype(cdt), 0) + wb * jnp.where(wb > 0, ob.astype(cdt), 0)
    out = num / safe[..., None]
    out = jnp.where(total[..., None] == 0, 0, out)
    lse = jnp.where(total == 0, -jnp.inf, jnp.where(top, jnp.inf, ref + jnp.log(safe)))
    return out.astype(out_dtype), lse.astype(lse_dtype)
