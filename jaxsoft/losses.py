"""Cross-entropy losses: integer labels, probability targets, the binary (sigmoid) case.

Every loss returns per-example values (no hidden reduction, like optax); ``reduction="mean"`` or
:func:`jaxsoft.reductions.mean_over_valid` (re-exported here) averages over the examples that
count. The kernels live in :mod:`jaxsoft._dense_ce` and end in the cross-entropy finisher of
:mod:`jaxsoft._ce` shared with the chunked and sharded losses; the edge semantics are tabled there
(SPEC 5 and 6).

``where`` follows optax: an element mask with the logits' rank, or a per-example mask with the
labels' rank (batch shape) that leaves whole examples out (loss 0, zero gradient, not counted by
``reduction="mean"``). Any other rank raises, so a per-example mask is never read as a class mask.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft._core import forced_kernel
from jaxsoft._dense_ce import ce_labels, ce_probs, lse_rows, z_term
from jaxsoft._softcap import check_softcap, softcap
from jaxsoft.reductions import count_valid, mean_over_valid, reduce

__all__ = [
    "count_valid",
    "cross_entropy",
    "cross_entropy_with_probs",
    "mean_over_valid",
    "sigmoid_cross_entropy",
]


def _with_lm_terms(loss, xc, tc, mc, valid, z_loss, return_lse, out_dtype, reduction):
    """Add the z-loss (SPEC 8.2), reduce, and append the per-row lse (SPEC 8.3) if asked for."""
    alive = None if mc is None else jnp.any(mc, axis=-1)
    dead = None if valid is None else ~valid
    if alive is not None:
        dead = ~alive if dead is None else dead | ~alive
    lse = lse_rows(xc, tc, mc) if (z_loss or return_lse) else None
    if z_loss:
        assert lse is not None
        lse_z = lse
        if valid is not None:
            # Ignored rows may hold NaN logits, whose (unused) softargmax must not reach dx.
            lse_z = lse_rows(jnp.where(valid[..., None], xc, 0), tc, mc)
        loss = loss + z_term(xc, tc, mc, lse_z, loss, dead, z_loss)
    loss = reduce(loss.astype(out_dtype), None if dead is None else ~dead, reduction)
    if not return_lse:
        return loss
    assert lse is not None
    return loss, lse.astype(out_dtype)


@partial(
    jax.jit,
    static_argnames=(
        "axes",
        "smoothing",
        "ignore_index",
        "reduction",
        "z_loss",
        "cap",
        "return_lse",
        "kernel",
    ),
)
def _cross_entropy(
    x,
    labels,
    t,
    where,
    *,
    axes,
    smoothing,
    ignore_index,
    reduction,
    z_loss,
    cap,
    return_lse,
    kernel,
):
    # ``kernel`` (the core kernel a test forced, or None) only keys the jit cache: edge rows read
    # the core's log p, so a trace made under one kernel must not serve the other.
    del kernel
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "cross_entropy")
    xc = softcap(xc, cap)
    # The kernel upcasts bf16/f16 inside its own fusions: a float32 copy of x made here would be
    # written to memory, as it feeds more than one pass.
    xk = xc if cap is not None else layout.to_canonical(x.astype(out_dtype))
    valid = None if ignore_index is None else labels != ignore_index
    loss = ce_labels(xk, labels, tc, mc, valid, smoothing)
    return _with_lm_terms(loss, xc, tc, mc, valid, z_loss, return_lse, out_dtype, reduction)


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    axis: _checks.Axis = -1,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy with integer labels, exact for confident predictions.

    .. math::
        \mathrm{CE}(x, y) = -\log \mathrm{softargmax}_t(x)_y
        = \mathrm{log1p}\Big(\mathrm{expm1}(a) + \sum_{j \ne y} e^{(x_j - m)/t}\Big) - a,
        \quad a = \frac{x_y - m}{t},\ m = \max x

    With label smoothing ``alpha`` the target is ``(1 - alpha) onehot(y) + alpha / K`` over the
    ``K`` entries that ``where`` includes. The gradient in the logits is ``(softargmax_t(x) -
    target) / t``; the derivative in ``t`` is ``(H(p) - CE) / t`` (``H`` the entropy of ``p``).
    For a confident correct prediction the loss is tiny and kept to a few ulps (``log1p`` of the
    other terms), where ``logsumexp(x) - x_y`` (optax) rounds it to 0 in float32.

    Args:
      logits: ``[..., num_classes]`` floats (ints promote; bf16/f16 computed in float32).
      labels: integer class indices of shape ``logits.shape`` without ``axis``, e.g.
        ``[batch_size]``. With a tuple ``axis`` a label is the flat index over those axes in the
        order given (as optax). Float labels raise ``TypeError`` (see
        :func:`cross_entropy_with_probs`); out-of-range labels raise ``ValueError`` when concrete.
        Under ``jit`` they cannot be checked: such a row's loss and gradient are NaN.
      axis: int or tuple of ints: the class axes. Default ``-1``.
      t: temperature ``>= 0``: scalar or one per example; differentiable. ``t = 0`` is the hard
        argmax (loss ``log k`` on one of ``k`` tied maxima, else ``+inf``; zero gradient).
      where: optional boolean mask, as in optax: either an element mask with the logits' rank
        (broadcastable to ``logits.shape``; masked classes are left out), or a per-example mask
        with the labels' rank (broadcastable to ``labels.shape``; masked examples are left out).
        Any other rank raises ``ValueError``. A row with no class left has loss 0 and zero
        gradient, and ``reduction="mean"`` does not count it.
      label_smoothing: ``alpha`` in ``[0, 1]`` (a Python float). Non-zero smoothing puts weight on
        every included class, so a ``-inf`` logit gives ``+inf``: exclude such classes with
        ``where``.
      ignore_index: examples whose label equals it get loss 0 and zero gradient (NaN logits
        included), and ``reduction="mean"`` leaves them out.
      reduction: ``"none"`` (default: per-example losses), ``"sum"``, or ``"mean"`` over the
        examples that are neither ignored nor fully masked (:func:`mean_over_valid`; 0 when no
        example counts, an empty batch included). For gradient accumulation over micro-batches
        use ``"sum"`` and divide by the total :func:`jaxsoft.count_valid`.
      z_loss: ``lambda >= 0`` (a Python float): adds ``lambda * (log Z)^2`` per example, ``log Z =
        logsumexp(x', t=t) / t`` the log-normaliser of the probabilities the loss uses (SPEC
        8.2); ignored and fully masked examples add 0. Where ``log Z`` is infinite (``+-inf``
        logits, ``t = 0`` with a nonzero max) the term is ``+inf`` with a zero gradient.
      logit_softcap: ``None`` or ``c > 0``: the logits become ``c * tanh(x / c)`` before anything
        else (SPEC 8.1); ``-inf`` stays ``-inf``, ``+inf`` becomes ``c``.
      return_lse: also return each example's ``lse = t log Z`` (``logsumexp(x', t=t)``, ``-inf`` on
        a fully masked row), differentiable (SPEC 8.3).

    Returns:
      Losses of shape ``labels.shape`` (a scalar when reduced), in the logits' float dtype; with
      ``return_lse`` the pair ``(loss, lse)``, ``lse`` of shape ``labels.shape`` (never reduced).

    Edges: a label on a ``-inf`` or masked logit (or on a loser of a ``+inf`` row) gives ``+inf``
    with a zero gradient for the whole row: the loss is ``+inf`` for all nearby logits, so no
    direction changes it, and nothing is NaN. A NaN logit makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> [round(float(v), 4) for v in jaxsoft.cross_entropy(logits, jnp.array([0, 1]))]
      [0.2761, 2.9518]
      >>> float(jaxsoft.cross_entropy(jnp.array([20.0, 0.0]), jnp.array(0)))  # optax: 0.0
      2.0611536e-09
      >>> [round(float(v), 4) for v in jaxsoft.cross_entropy(logits, jnp.array([0, -100]),
      ...                                                     ignore_index=-100)]
      [0.2761, 0.0]
      >>> loss, lse = jaxsoft.cross_entropy(logits, jnp.array([0, 1]), z_loss=1e-4,
      ...                                   logit_softcap=30.0, return_lse=True)
      >>> [round(float(v), 4) for v in lse]
      [1.4757, 1.7515]

    .. seealso:: :func:`cross_entropy_with_probs` for probability (or one-hot) targets,
       :func:`sigmoid_cross_entropy` for independent binary labels.
    """
    name = "cross_entropy"
    x, t_arr, _, axes = _checks.prepare(name, logits, axis, t, None)
    w = _checks.check_loss_where(name, where, x.shape, axes)
    n = int(np.prod([x.shape[a] for a in axes]))
    if n == 0:
        raise ValueError(f"{name}: logits of shape {x.shape} have no classes along {axes}")
    ignore = _checks.check_ignore_index(name, ignore_index)
    batch = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    labels = _checks.check_labels(
        name, labels, batch, n, ignore, against=f"logits of shape {x.shape} without axis {axes}"
    )
    smoothing = _checks.check_smoothing(name, label_smoothing)
    _checks.check_reduction(name, reduction)
    return _cross_entropy(
        x,
        labels,
        t_arr,
        w,
        axes=axes,
        smoothing=smoothing,
        ignore_index=ignore,
        reduction=reduction,
        z_loss=_checks.check_z_loss(name, z_loss),
        cap=check_softcap(name, logit_softcap),
        return_lse=bool(return_lse),
        kernel=forced_kernel(),
    )


@partial(jax.jit, static_argnames=("axes", "reduction", "z_loss", "cap", "return_lse", "kernel"))
def _cross_entropy_with_probs(x, q, t, where, *, axes, reduction, z_loss, cap, return_lse, kernel):
    del kernel  # keys the jit cache only, as in _cross_entropy
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(
        x, t, where, axes, "cross_entropy_with_probs"
    )
    qc = layout.to_canonical(jnp.broadcast_to(q, x.shape).astype(xc.dtype))
    if layout.n == 0:
        loss = jnp.zeros(layout.batch, out_dtype)
        valid = None if mc is None else jnp.any(mc, axis=-1)
        out = reduce(loss, valid, reduction)
        return (out, jnp.full(layout.batch, -jnp.inf, out_dtype)) if return_lse else out
    xc = softcap(xc, cap)
    loss = ce_probs(xc, qc, tc, mc)
    return _with_lm_terms(loss, xc, tc, mc, None, z_loss, return_lse, out_dtype, reduction)


def cross_entropy_with_probs(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    axis: _checks.Axis = -1,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    reduction: str = "none",
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    return_lse: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Softmax cross-entropy against probability (or one-hot) targets, with ``0 log 0 = 0``.

    .. math::
        \mathrm{CE}(x, q) = -\sum_i q_i \log \mathrm{softargmax}_t(x)_i

    ``log p`` comes from the ``log1p``-accurate :func:`log_softargmax`, so one-hot targets give the
    same exact tiny losses as :func:`cross_entropy`. Gradients: ``(Q p - q) / t`` in the logits
    (``Q = sum_i q_i``, 1 for a distribution), ``-log p_i`` in the targets (SPEC 5.3: finite
    wherever ``p_i > 0``; the ``0 log 0 = 0`` convention does not zero it), and
    ``(Q H(p) - CE) / t`` in ``t``.

    Args:
      logits: ``[..., num_classes]`` floats (ints promote; bf16/f16 computed in float32).
      targets: weights broadcastable to ``logits.shape``, usually rows that sum to 1 over
        ``axis``. Differentiable.
      axis: int or tuple of ints: the class axes. Default ``-1``.
      t: temperature ``>= 0``: scalar or one per example; differentiable.
      where: optional boolean mask as in :func:`cross_entropy` (an element mask with the logits'
        rank, or a per-example one with the batch's rank). Masked entries leave the computation
        with their target weight (SPEC 5.4, as optax). A row with no entry left has loss 0 and
        zero gradients.
      reduction: ``"none"`` (default), ``"sum"``, or ``"mean"`` over the rows that are not fully
        masked.
      z_loss, logit_softcap, return_lse: as in :func:`cross_entropy` (SPEC 8.1-8.3); fully
        masked rows add no z-loss.

    Returns:
      Losses of shape ``logits.shape`` without ``axis``, in the logits' float dtype; with
      ``return_lse`` the pair ``(loss, lse)``.

    Edges: a positive weight on a ``-inf`` or masked logit gives ``+inf`` with a zero logits
    gradient for the row. Where ``p_i = 0`` (masked or ``-inf`` logits) the target gradient is 0,
    as ``log_softargmax`` treats those entries as constants, so a target that is itself 0 there
    (a teacher's softargmax with the same mask) backpropagates without NaN; the true one-sided
    derivative there is ``+inf``. A NaN logit makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> targets = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
      >>> [round(float(v), 4) for v in jaxsoft.cross_entropy_with_probs(logits, targets)]
      [0.2761, 2.9518]
      >>> float(jaxsoft.cross_entropy_with_probs(jnp.array([0.0, -jnp.inf]), jnp.array([1.0, 0.0])))
      0.0

    .. seealso:: :func:`cross_entropy` for integer labels (faster: no ``[batch, n]`` targets).
    """
    name = "cross_entropy_with_probs"
    x, t_arr, _, axes = _checks.prepare(name, logits, axis, t, None)
    w = _checks.check_loss_where(name, where, x.shape, axes)
    q = _checks.as_array(targets, name, "targets")
    if not (jnp.issubdtype(q.dtype, jnp.number) or q.dtype == jnp.bool_) or jnp.issubdtype(
        q.dtype, jnp.complexfloating
    ):
        raise TypeError(f"{name}: targets must be real numbers, got dtype {q.dtype}")
    try:
        ok = np.broadcast_shapes(q.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: targets of shape {q.shape} do not broadcast to logits of shape {x.shape}"
        )
    _checks.check_reduction(name, reduction)
    return _cross_entropy_with_probs(
        x,
        q,
        t_arr,
        w,
        axes=axes,
        reduction=reduction,
        z_loss=_checks.check_z_loss(name, z_loss),
        cap=check_softcap(name, logit_softcap),
        return_lse=bool(return_lse),
        kernel=forced_kernel(),
    )


# --------------------------------------------------------------------------------------------------
# The binary case.
# --------------------------------------------------------------------------------------------------


def _softplus(x: jax.Array) -> jax.Array:
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, and exact for large negative x.
    return jnp.maximum(x, 0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


@jax.custom_jvp
def _sigmoid_ce(x, y):
    # 0 * inf = 0: a zero weight on an impossible outcome costs nothing.
    pos = jnp.where(y == 0, 0, y * _softplus(-x))
    neg = jnp.where(y == 1, 0, (1 - y) * _softplus(x))
    return pos + neg


def _sigmoid_ce_jvp(primals, tangents):
    """``d loss = (sigmoid(x) - y) dx - x dy``: 2-class ``(p - q)`` and ``-log p_0 + log p_1``."""
    x, y = primals
    dx, dy = tangents
    loss = _sigmoid_ce(x, y)
    # The same conventions as the softargmax CE: no logits gradient on a +inf loss, and the target
    # derivative is finite (0 at x = +-inf, where one of the two probabilities is 0).
    w = jnp.where(loss == jnp.inf, 0, jax.nn.sigmoid(x) - y)
    return loss, w * dx - jnp.where(jnp.isinf(x), 0, x) * dy


_sigmoid_ce.defjvp(_sigmoid_ce_jvp)


def sigmoid_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""Element-wise binary cross-entropy on logits: the 2-class softargmax CE (SPEC 1.4).

    .. math::
        \ell(x, y) = -y \log \sigma(x) - (1 - y) \log(1 - \sigma(x))
        = y\,\mathrm{softplus}(-x) + (1 - y)\,\mathrm{softplus}(x)

    Equal to ``cross_entropy_with_probs([x, 0], [y, 1 - y])`` (``softargmax([x, 0])_0 =
    sigmoid(x)``), in values and gradients: ``sigmoid(x) - y`` in the logits, ``-x`` in the
    labels. Stable for any ``|x|``: ``softplus`` never overflows and a confident correct
    prediction keeps its tiny loss (``softplus(-20) = 2.06e-9``, not 0).

    Args:
      logits: float array of any shape (ints promote).
      labels: targets in ``[0, 1]`` (bool, int or float) of the logits' shape, or a scalar;
        size-1 axes broadcast, but labels of another rank raise ``ValueError`` (``[3]`` labels
        for ``[2, 3]`` logits are more often a bug than a shared target: write ``labels[None]``).

    Returns:
      Losses of the logits' shape (the broadcast shape), in the logits' float dtype.

    Edges: ``x = +-inf`` gives 0 when the label agrees (``y = 1`` resp. ``0``), ``+inf`` (zero
    gradient) when a positive weight sits on the impossible side; NaN stays NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> jaxsoft.sigmoid_cross_entropy(jnp.array([20.0, 0.0, -jnp.inf]), jnp.array([1, 1, 0]))
      Array([2.0611537e-09, 6.9314718e-01, 0.0000000e+00], dtype=float32)
    """
    name = "sigmoid_cross_entropy"
    x = _checks.as_array(logits, name)
    dtype = _checks.result_dtype(x, name)
    y = _checks.as_array(labels, name, "labels")
    if not (jnp.issubdtype(y.dtype, jnp.number) or y.dtype == jnp.bool_) or jnp.issubdtype(
        y.dtype, jnp.complexfloating
    ):
        raise TypeError(f"{name}: labels must be real numbers in [0, 1], got dtype {y.dtype}")
    try:
        shape = np.broadcast_shapes(x.shape, y.shape)
        if y.ndim not in (0, x.ndim):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name}: labels of shape {y.shape} must have the shape of logits {x.shape} "
            "(size-1 axes broadcast) or be a scalar"
        ) from None
    return _sigmoid_apply(x, y, shape=tuple(shape), dtype=np.dtype(dtype))


@partial(jax.jit, static_argnames=("shape", "dtype"))
def _sigmoid_apply(x, y, *, shape, dtype):
    cdt = _checks.compute_dtype(dtype)
    xb = jnp.broadcast_to(x.astype(cdt), shape)
    yb = jnp.broadcast_to(y.astype(cdt), shape)
    return _sigmoid_ce(xb, yb).astype(dtype)
