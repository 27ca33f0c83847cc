"""The fused language-model head with the vocabulary split over devices, inside ``jax.shard_map``.

The twins of :func:`jaxsoft.linear_log_probs`, :func:`jaxsoft.linear_entropy` and
:func:`jaxsoft.linear_kl_divergence` (:mod:`jaxsoft.lm_head`, whose module docstring describes the
common options) for a head whose vocabulary (``W``'s ``V`` axis and ``bias``, ``where``) is split
over the mesh axis ``axis_name``: each device walks its own slice in chunks, and the per-row
statistics merge with one ``pmax`` and one ``psum``; ``h`` may be sharded over a data axis.
Results are replicated over ``axis_name`` and equal the unsharded ones, values and gradients.
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from jaxsoft import _lm_head_apply as la
from jaxsoft import _lm_head_checks as lc

__all__ = [
    "sharded_linear_entropy",
    "sharded_linear_kl_divergence",
    "sharded_linear_log_probs",
]


def sharded_linear_log_probs(
    h: ArrayLike,
    W_local: ArrayLike,
    tokens: ArrayLike,
    axis_name,
    *,
    bias_local: ArrayLike | None = None,
    t: ArrayLike = 1.0,
    logit_softcap: float | None = None,
    where_local: ArrayLike | None = None,
    weight_layout: str = "dV",
    chunk_size: int = lc.DEFAULT_CHUNK,
    return_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """:func:`jaxsoft.linear_log_probs` with the vocabulary split over the mesh axis ``axis_name``.

    Call inside :func:`jax.shard_map`: ``W_local`` is this device's ``V / P`` consecutive
    vocabulary entries (``[d, V_local]`` or, with ``weight_layout="Vd"``, ``[V_local, d]``),
    ``bias_local: [V_local]`` and ``where_local: [V_local]`` or ``[..., V_local]`` the matching
    slices; ``h``, ``tokens`` (global ids) and ``t`` are replicated over ``axis_name`` (and may be
    sharded over a data axis). Results are replicated over ``axis_name`` and equal the unsharded
    ones, values and gradients, under ``check_vma`` True and False.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from jax.sharding import Mesh, PartitionSpec as P
      >>> from jaxsoft.sharded_lm_head import sharded_linear_log_probs
      >>> mesh = Mesh(np.array(jax.devices()[:1]), ("vocab",))  # as many devices as divide V
      >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0]])
      >>> W = jnp.array([[2.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
      >>> f = jax.jit(jax.shard_map(
      ...     lambda h, W, y: sharded_linear_log_probs(h, W, y, "vocab"),
      ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P()), out_specs=P(),
      ... ))
      >>> f(h, W, jnp.array([0, 2])).tolist()  # doctest: +NUMBER
      [-0.27798, -2.96077]
    """
    name = "sharded_linear_log_probs"
    head, tok, t_arr, mask, opts = lc.check_logprob_args(
        name,
        h,
        W_local,
        bias_local,
        tokens,
        t,
        where_local,
        chunk_size,
        logit_softcap,
        weight_layout,
        True,
    )
    lp, ent = la.logprob(head.h, head.W, head.bias, tok, t_arr, mask, axis_name=axis_name, **opts)
    return (lp, ent) if return_entropy else lp


def sharded_linear_entropy(
    h: ArrayLike,
    W_local: ArrayLike,
    axis_name,
    *,
    bias_local: ArrayLike | None = None,
    t: ArrayLike = 1.0,
    logit_softcap: float | None = None,
    where_local: ArrayLike | None = None,
    weight_layout: str = "dV",
    chunk_size: int = lc.DEFAULT_CHUNK,
) -> jax.Array:
    """:func:`jaxsoft.linear_entropy` with the vocabulary split over ``axis_name`` (as
    :func:`sharded_linear_log_probs`)."""
    name = "sharded_linear_entropy"
    head, _, t_arr, mask, opts = lc.check_logprob_args(
        name,
        h,
        W_local,
        bias_local,
        None,
        t,
        where_local,
        chunk_size,
        logit_softcap,
        weight_layout,
        True,
    )
    tok = jax.numpy.zeros(head.h.shape[:-1], jax.numpy.int32)
    return la.logprob(head.h, head.W, head.bias, tok, t_arr, mask, axis_name=axis_name, **opts)[1]


def sharded_linear_kl_divergence(
    h: ArrayLike,
    W_local: ArrayLike,
    target_h: ArrayLike,
    target_W_local: ArrayLike,
    axis_name,
    *,
    bias_local: ArrayLike | None = None,
    target_bias_local: ArrayLike | None = None,
    t: ArrayLike = 1.0,
    logit_softcap: float | None = None,
    where_local: ArrayLike | None = None,
    weight_layout: str = "dV",
    chunk_size: int = lc.DEFAULT_CHUNK,
) -> jax.Array:
    """:func:`jaxsoft.linear_kl_divergence` with both heads' vocabulary split over ``axis_name`` (inside
    :func:`jax.shard_map`, as :func:`sharded_linear_log_probs`)."""
    name = "sharded_linear_kl_divergence"
    head, teacher, t_arr, mask, opts = lc.check_kl_args(
        name,
        h,
        W_local,
        target_h,
        target_W_local,
        bias_local,
        target_bias_local,
        t,
        where_local,
        chunk_size,
        logit_softcap,
        weight_layout,
    )
    return la.kl(
        head.h,
        head.W,
        head.bias,
        teacher.h,
        teacher.W,
        teacher.bias,
        t_arr,
        mask,
        axis_name=axis_name,
        **opts,
    )
