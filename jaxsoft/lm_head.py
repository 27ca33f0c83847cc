"""The language-model head, fused: log-probabilities, entropy and KL without the ``[N, V]`` logits.

Reinforcement-learning fine-tuning (PPO, GRPO) needs, per token, the log-probability of the sampled
token at a temperature and the entropy of that distribution; distillation needs the KL divergence to
a teacher. With ``logits = softcap(h @ W + b)`` over a vocabulary of 100k+ entries, each of these
would materialise an ``[N, V]`` array (and its gradient). The functions here walk the vocabulary in
chunks of ``chunk_size`` columns instead: the forward pass keeps a few numbers per row, the backward
pass (a ``jax.custom_vjp``) recomputes each chunk's logits, so temporary memory is
``O(N * chunk_size)``. Derivatives are reverse mode only (``jax.grad``, ``jax.vjp``).

Common options: ``bias`` (``[V]``, ``-inf`` entries remove tokens), ``t`` (temperature ``>= 0``,
a scalar or one per row, differentiable), ``logit_softcap`` (SPEC 8.1: ``c tanh(x / c)`` before
the temperature; ``-inf`` stays ``-inf``), ``where`` (a ``[V]`` or per-row ``[..., V]`` boolean
vocabulary mask), ``weight_layout`` (``"dV"`` for ``W: [d, V]``, ``"Vd"`` for a tied embedding
``E: [V, d]`` passed as is) and ``chunk_size``.

Their twins with the vocabulary split over devices are in :mod:`jaxsoft.sharded_lm_head` (and,
as before, importable from here too).
"""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from jaxsoft import _lm_head_apply as la
from jaxsoft import _lm_head_checks as lc

# The sharded twins lived here before they had a module of their own; ``from jaxsoft.lm_head
# import sharded_linear_log_probs`` keeps working.
from jaxsoft.sharded_lm_head import (
    sharded_linear_entropy,
    sharded_linear_kl_divergence,
    sharded_linear_log_probs,
)

__all__ = [
    "linear_entropy",
    "linear_kl_divergence",
    "linear_log_probs",
    "sharded_linear_entropy",
    "sharded_linear_kl_divergence",
    "sharded_linear_log_probs",
]


def linear_log_probs(
    h: ArrayLike,
    W: ArrayLike,
    tokens: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    t: ArrayLike = 1.0,
    logit_softcap: float | None = None,
    where: ArrayLike | None = None,
    weight_layout: str = "dV",
    chunk_size: int = lc.DEFAULT_CHUNK,
    return_entropy: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Log-probability of given tokens under a linear head, without forming the logits.

    .. math::
        \log \mathrm{softargmax}_t(x)_{y},\qquad x = \mathrm{softcap}(h W + b)

    What PPO/GRPO need: the log-probabilities of the sampled tokens at the sampling temperature
    (the importance ratio is ``exp(new - old)``), and, with ``return_entropy=True``, the entropy
    of the same distribution (the entropy bonus), both from one pass over the vocabulary.
    ``log p_y = (x_y - m) / t - log1p(s)`` keeps its digits for a dominant token (SPEC 3.2).

    Args:
      h: ``[..., d]`` hidden states (float; bf16 matmuls accumulate in float32).
      W: the head, ``[d, V]`` (``weight_layout="dV"``) or ``[V, d]`` (``"Vd"``, e.g. a tied
        embedding; no transpose is made).
      tokens: integer token ids of shape ``h.shape[:-1]`` in ``[0, V)`` (concrete out-of-range
        ids raise ``ValueError``; traced ones give NaN).
      bias: optional ``[V]``; ``-inf`` entries remove tokens.
      t: temperature ``>= 0``: a scalar or one per row (shape ``h.shape[:-1]``); differentiable.
        ``t = 0`` is the hard argmax (``-log k`` on ``k`` tied maxima, ``-inf`` elsewhere).
      logit_softcap: ``None`` or ``c > 0``: logits become ``c tanh(x / c)`` first (SPEC 8.1).
      where: optional boolean ``[V]`` or ``[..., V]`` mask; ``False`` tokens take no part.
      weight_layout: ``"dV"`` or ``"Vd"``.
      chunk_size: vocabulary entries per step; temporaries are a few ``[N, chunk_size]`` arrays.
      return_entropy: also return the entropy of each row's distribution.

    Returns:
      Log-probabilities of shape ``h.shape[:-1]`` in the dtype of ``h @ W`` (and the entropies,
      same shape, when ``return_entropy``). Edges: a token that takes no part (masked, ``-inf``
      bias) gives ``-inf`` with zero gradient; a row with no candidate gives ``-inf`` and entropy
      0; ``t = 0`` or a ``+inf`` logit give the limits with zero gradients; NaN stays in its row.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsoft.lm_head import linear_log_probs
      >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0]])
      >>> W = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
      >>> lp, ent = linear_log_probs(h, W, jnp.array([0, 2]), return_entropy=True, chunk_size=2)
      >>> lp.tolist(), ent.tolist()  # doctest: +NUMBER
      ([-0.16985, -2.69673], [0.52427, 0.58763])
      >>> linear_log_probs(h, W.T, jnp.array([0, 2]), weight_layout="Vd").tolist()  # doctest: +NUMBER
      [-0.16985, -2.69673]
    """
    name = "linear_log_probs"
    head, tok, t_arr, mask, opts = lc.check_logprob_args(
        name, h, W, bias, tokens, t, where, chunk_size, logit_softcap, weight_layout, False
    )
    lp, ent = la.logprob_jit(head.h, head.W, head.bias, tok, t_arr, mask, axis_name=None, **opts)
    return (lp, ent) if return_entropy else lp


def linear_entropy(
    h: ArrayLike,
    W: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    t: ArrayLike = 1.0,
    logit_softcap: float | None = None,
    where: ArrayLike | None = None,
    weight_layout: str = "dV",
    chunk_size: int = lc.DEFAULT_CHUNK,
) -> jax.Array:
    r"""Entropy of a linear head's softargmax distribution, without forming the logits.

    .. math::
        H = -\sum_{j \in S} p_j \log p_j = \log Z + \tfrac{1}{Z}\textstyle\sum_j e^{z_j}(-z_j),
        \qquad z = (x - \max x) / t,\quad x = \mathrm{softcap}(h W + b)

    Both terms are non-negative, so a near-one-hot row keeps its tiny entropy to a few ulps.
    Gradient ``-p (\log p + H) / t`` in the logits; derivative in ``t``: ``Var_p(log p) / t``.

    Args:
      h, W, bias, t, logit_softcap, where, weight_layout, chunk_size: as in
        :func:`linear_log_probs`.

    Returns:
      Entropies of shape ``h.shape[:-1]`` in the dtype of ``h @ W``: ``log k`` at ``t = 0`` (``k``
      tied maxima) or with ``k`` logits at ``+inf`` (zero gradients there); 0 on a row with one
      candidate or none; NaN on a NaN row.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft.lm_head import linear_entropy
      >>> h = jnp.ones((1, 2))
      >>> float(linear_entropy(h, jnp.zeros((2, 4)))[0])  # uniform over 4: log 4
      1.3862943649291992
    """
    name = "linear_entropy"
    head, _, t_arr, mask, opts = lc.check_logprob_args(
        name, h, W, bias, None, t, where, chunk_size, logit_softcap, weight_layout, False
    )
    tok = jax.numpy.zeros(head.h.shape[:-1], jax.numpy.int32)
    return la.logprob_jit(head.h, head.W, head.bias, tok, t_arr, mask, axis_name=None, **opts)[1]


def linear_kl_divergence(
    h: ArrayLike,
    W: ArrayLike,
    target_h: ArrayLike,
    target_W: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    target_bias: ArrayLike | None = None,
    t: ArrayLike = 1.0,
    logit_softcap: float | None = None,
    where: ArrayLike | None = None,
    weight_layout: str = "dV",
    chunk_size: int = lc.DEFAULT_CHUNK,
) -> jax.Array:
    r"""KL divergence of a student head from a teacher head, ``KL(q || p)``, without the logits.

    .. math::
        \mathrm{KL}(q \,\|\, p) = \sum_{j \in S} q_j (\log q_j - \log p_j),\quad
        p = \mathrm{softargmax}_t(\mathrm{softcap}(h W + b)),\
        q = \mathrm{softargmax}_t(\mathrm{softcap}(h' W' + b'))

    Both heads are computed chunk by chunk (distillation with a 100k+ vocabulary never holds an
    ``[N, V]`` array). The value uses the centred ``expm1``/``log1p`` form of
    :func:`jaxsoft.kl_divergence`, merged exactly across chunks and devices, so nearly equal
    distributions keep their relative accuracy (below ``1e-6`` at ``KL ~ 1e-10`` in float32).
    Gradients: ``(p - q) / t`` in the student's logits, ``q (log q - log p - KL) / t`` in the
    teacher's (computed only when the teacher is differentiated; wrap it in
    ``jax.lax.stop_gradient`` or leave it out of ``jax.grad``'s arguments to skip its matmuls),
    and the derivative in ``t``.

    Args:
      h: the student's ``[..., d]`` hidden states; W: its head (``weight_layout``).
      target_h: the teacher's ``[..., d']`` hidden states (same batch); target_W: its head, same
        layout and vocabulary (``d'`` may differ from ``d``).
      bias, target_bias: optional ``[V]`` biases.
      t, logit_softcap, where, weight_layout, chunk_size: as in :func:`linear_log_probs`, applied
        to both heads.

    Returns:
      Divergences ``>= 0`` of shape ``h.shape[:-1]`` in the dtype of ``h @ W``. Edges as
      :func:`jaxsoft.kl_divergence`: ``+inf`` where the teacher puts mass on a token the student
      cannot produce (zero gradients on that row); a row with no teacher mass gives 0; ``t = 0`` and
      ``+inf`` logits use the limits (zero gradients); NaN stays in its row. A batch with such a row
      (or a teacher ``-inf`` under a finite student logit) takes a slower exact path.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft.lm_head import linear_kl_divergence
      >>> h = jnp.array([[1.0, 0.0]])
      >>> W = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
      >>> round(float(linear_kl_divergence(h, W, h, W[:, ::-1])[0]), 5)
      1.15042
      >>> float(linear_kl_divergence(h, W, h, W)[0])
      0.0
    """
    name = "linear_kl_divergence"
    head, teacher, t_arr, mask, opts = lc.check_kl_args(
        name,
        h,
        W,
        target_h,
        target_W,
        bias,
        target_bias,
        t,
        where,
        chunk_size,
        logit_softcap,
        weight_layout,
    )
    return la.kl_jit(
        head.h,
        head.W,
        head.bias,
        teacher.h,
        teacher.W,
        teacher.bias,
        t_arr,
        mask,
        axis_name=None,
        **opts,
    )
