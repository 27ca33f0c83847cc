"""Large vocabularies: the fused linear cross-entropy, which never forms the logits.

A language model's head computes ``logits = h @ W`` with ``h: [N, d]`` and ``W: [d, V]``; at
``N = 8192, V = 131072`` the float32 logits alone take 4 GiB, and their gradient as much again.
:func:`linear_cross_entropy` walks the vocabulary in chunks instead (the kernel is
:mod:`jaxsoft._linear_ce`, shared with :func:`jaxsoft.sharded.sharded_linear_cross_entropy`).
:func:`chunked_logsumexp` (module :mod:`jaxsoft.chunked`) is re-exported here.
"""

from __future__ import annotations

from functools import partial
from typing import cast

import jax
from jax.typing import ArrayLike

from jaxsoft import _checks, _linear_ce
from jaxsoft._softcap import check_softcap
from jaxsoft.chunked import chunked_logsumexp

__all__ = ["chunked_logsumexp", "linear_cross_entropy"]


@partial(jax.jit, static_argnames=("opts", "ignore_index", "reduction", "return_lse"))
def _linear_cross_entropy(
    h, W, labels, bias, t, where, *, opts, ignore_index, reduction, return_lse
):
    h2, W, lab, valid, t, dtype = _linear_ce.prepare_head(h, W, labels, t, ignore_index)
    out = _linear_ce.linear_ce(h2, W, bias, t, lab, valid, where, opts, None)
    # cast: jax types a custom_vjp call as returning object.
    loss, lse = cast(tuple[jax.Array, jax.Array], out)
    return _linear_ce.finish_head(loss, lse, labels, valid, where, dtype, reduction, return_lse)


def linear_cross_entropy(
    h: ArrayLike,
    W: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    chunk_size: int = 2048,
    t: ArrayLike = 1.0,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    where: ArrayLike | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    return_lse: bool = False,
    weight_layout: str = "dV",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Cross-entropy of a linear head, ``cross_entropy(h @ W + bias, labels)``, without the logits.

    .. math::
        \ell_i = \mathrm{logsumexp}_j\big(z_{ij}\big) - \big((1-\alpha) z_{i y_i}
          + \tfrac{\alpha}{V} \textstyle\sum_j z_{ij}\big),\qquad z = (h W + b) / t

    The ``[N, V]`` logits are never formed, neither forward nor backward: the forward pass is a
    ``lax.scan`` over vocabulary chunks of ``chunk_size`` columns keeping the online log-sum-exp
    statistics, the label's logit and (with smoothing) the logits' sum, per row; the backward pass
    (a custom VJP) recomputes each chunk's logits and accumulates ``dh``, ``dW`` and ``dbias``.
    Temporary memory is ``O(N * chunk_size)`` instead of ``O(N * V)``; the price is one more
    matmul (the forward's, repeated in the backward pass). Matmuls take ``h``/``W`` in their own
    dtype (bf16 stays bf16) and accumulate in float32 (float64 for float64 operands, with
    ``jax_enable_x64``: the result is then float64-accurate); the statistics use the same dtype.

    Derivatives are reverse mode only (``jax.grad``, ``jax.vjp``, ``jax.jacrev``): this is a
    ``jax.custom_vjp`` (a JVP would make reverse mode store the ``[N, V]`` probabilities), so
    ``jax.jvp`` and ``jax.jacfwd`` raise ``TypeError``. For forward mode use
    :func:`jaxsoft.cross_entropy` on ``h @ W + bias``.

    Args:
      h: ``[..., d]`` hidden states (float).
      W: ``[d, V]`` output projection (float), or ``[V, d]`` with ``weight_layout="Vd"``; ``V``
        need not be a multiple of ``chunk_size``.
      labels: integer class indices of shape ``h.shape[:-1]``; out-of-range labels raise
        ``ValueError`` when concrete and give NaN under ``jit``.
      bias: optional ``[V]``; ``-inf`` entries remove those classes (e.g. vocabulary padding).
      chunk_size: vocabulary columns per step (default 2048): temporaries are a few
        ``[N, chunk_size]`` float32 arrays.
      t: temperature ``>= 0``, a scalar or one per example (shape ``h.shape[:-1]``);
        differentiable. ``t = 0`` is the hard argmax: loss ``log k`` when the label is one of
        ``k`` tied maxima, else ``+inf``; zero gradient.
      ignore_index: examples whose label equals it get loss 0 and zero gradients.
      label_smoothing: ``alpha`` in ``[0, 1]``; the target is ``(1 - alpha) onehot + alpha / K``
        over the ``K`` classes ``where`` keeps (so a ``-inf`` class gives ``+inf`` loss when
        ``alpha > 0``: leave it out with ``where``).
      where: optional boolean vocabulary mask of shape ``[V]`` (padding, a constrained
        vocabulary): ``False`` classes leave the computation as in
        :func:`jaxsoft.cross_entropy`, a label on one gives ``+inf``. One mask for all rows:
        a per-row ``[N, V]`` mask would itself be the ``O(N V)`` array this function avoids
        (use :func:`jaxsoft.cross_entropy` on the logits for that).
      reduction: ``"none"`` (default), ``"sum"``, or ``"mean"`` over the examples that count, as
        in :func:`jaxsoft.cross_entropy`. For gradient accumulation use ``"sum"`` and divide by
        the total :func:`jaxsoft.count_valid`.
      z_loss: ``lambda >= 0``: adds ``lambda (lse / t)^2`` per example that counts (SPEC 8.2).
      logit_softcap: ``None`` or ``c > 0``: logits ``c tanh(x / c)`` before anything else (SPEC
        8.1), recomputed chunk by chunk in the backward pass too.
      return_lse: also return the per-example ``lse = logsumexp_t(x')`` (SPEC 8.3),
        differentiable.
      weight_layout: ``"dV"`` (default, ``W: [d, V]``) or ``"Vd"`` (``W: [V, d]``, e.g. a tied
        input embedding): chunks are sliced along ``V`` either way, so the embedding is used in
        place, with no transposed copy and no more temporary memory.

    Returns:
      Per-example losses of shape ``labels.shape`` in the dtype of ``h @ W`` (a scalar when
      reduced); with ``return_lse`` the pair ``(loss, lse)``, ``lse`` of shape ``labels.shape``.

    Edges, as :func:`jaxsoft.losses.cross_entropy`: a label on a ``-inf`` logit gives ``+inf``
    with zero gradients for that row; ignored rows give 0 and zero gradients even if ``h`` holds
    NaN there; a NaN in ``h`` makes its row's loss NaN (and, through the shared ``W``, ``dW``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsoft.large_vocab import linear_cross_entropy
      >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0]])
      >>> W = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
      >>> linear_cross_entropy(h, W, jnp.array([0, 2]), chunk_size=2).tolist()  # doctest: +NUMBER
      [0.16985, 2.69673]
      >>> grad_W = jax.grad(lambda W: linear_cross_entropy(h, W, jnp.array([0, 2])).sum())(W)
      >>> grad_W.shape
      (2, 3)
      >>> loss, lse = linear_cross_entropy(h, W.T, jnp.array([0, 2]), weight_layout="Vd",
      ...                                  z_loss=1e-4, logit_softcap=30.0, return_lse=True)
      >>> lse.tolist()  # doctest: +NUMBER
      [2.1674, 1.1966]

    .. seealso:: :func:`jaxsoft.sharded.sharded_linear_cross_entropy` for a vocabulary split
       over devices.
    """
    name = "linear_cross_entropy"
    va = _linear_ce.check_layout(name, weight_layout)
    opts = _linear_ce.Opts(
        _checks.check_chunk_size(name, chunk_size),
        _checks.check_smoothing(name, label_smoothing),
        _checks.check_z_loss(name, z_loss),
        check_softcap(name, logit_softcap),
        va,
    )
    h, W, bias, where = _linear_ce.check_head(name, h, W, bias, vocab_axis=va, where=where)
    ignore = _checks.check_ignore_index(name, ignore_index)
    t_arr = _linear_ce.check_row_temperature(name, t, h.shape[:-1])
    labels = _checks.check_labels(
        name, labels, h.shape[:-1], W.shape[va], ignore, against=f"h of shape {h.shape}"
    )
    return _linear_cross_entropy(
        h,
        W,
        labels,
        bias,
        t_arr,
        where,
        opts=opts,
        ignore_index=ignore,
        reduction=_checks.check_reduction(name, reduction),
        return_lse=bool(return_lse),
    )
