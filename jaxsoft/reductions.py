"""Reducing per-example losses: the mean over the examples that count.

Every loss of the library returns per-example values (like optax); ``reduction="mean"`` and
:func:`mean_over_valid` average over the examples that are neither ignored nor fully masked.
An empty mean (no example, or none that counts) is 0 with a zero gradient, not NaN: a batch
whose every token is padding contributes nothing to a training step, and ``sum / count`` with
``count = max(count, 1)`` is what training loops write by hand (torch's ``mean`` gives NaN).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxsoft import _checks

__all__ = ["count_valid", "mean_over_valid"]


def mean_over_valid(losses: ArrayLike, valid: ArrayLike | None = None) -> jax.Array:
    r"""Mean of ``losses`` over the entries where ``valid`` is true; 0 when none is.

    .. math::
        \frac{\sum_i [v_i]\,\ell_i}{\max(1, \sum_i [v_i])}

    Invalid entries are left out of both sums, so a NaN or ``inf`` there changes nothing and gets a
    zero gradient. Use it with ``labels != ignore_index`` (what ``reduction="mean"`` does).

    Args:
      losses: per-example losses of any shape, e.g. ``[batch_size]``.
      valid: boolean array broadcastable to ``losses.shape``, or ``None`` for a plain mean.

    Returns:
      A scalar array in ``losses``' dtype: 0 for an empty array or when no entry is valid.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> float(jaxsoft.mean_over_valid(jnp.array([1.0, jnp.nan, 3.0]),
      ...                               jnp.array([True, False, True])))
      2.0
      >>> float(jaxsoft.mean_over_valid(jnp.zeros((0,))))
      0.0
    """
    losses = _checks.as_array(losses, "mean_over_valid", "losses")
    if valid is not None:
        valid = _checks.check_where(valid, losses.shape, "mean_over_valid")
    return _mean_over_valid(losses, valid)


@jax.jit
def _mean_over_valid(losses, valid):
    if valid is None:
        return jnp.sum(losses) / max(losses.size, 1)
    valid = jnp.broadcast_to(valid, losses.shape)
    n = jnp.sum(valid, dtype=losses.dtype)
    return jnp.sum(losses, where=valid) / jnp.maximum(n, 1)


def count_valid(
    labels: ArrayLike, *, ignore_index: int | None = None, where: ArrayLike | None = None
) -> jax.Array:
    r"""The number of examples that count: not ignored, and with a class left by ``where``.

    .. math::
        n = \sum_i [y_i \ne \text{ignore\_index}]\,[\exists j: w_{ij}]

    It is the denominator of ``reduction="mean"``, for gradient accumulation: summing
    ``reduction="sum"`` losses over micro-batches and dividing by the summed counts gives the
    full batch's mean exactly, where averaging per-micro-batch means weighs a token of a short
    micro-batch more (the gradient-accumulation bug of many training loops).

    Args:
      labels: integer labels of any shape, e.g. ``[batch, seq]``.
      ignore_index: examples whose label equals it do not count.
      where: optional boolean mask: per example (``labels``' shape, broadcastable) or per class
        (one more, last, axis: an example counts if any of its classes is kept; a ``[V]``
        vocabulary mask of ``linear_cross_entropy`` is ``where[None, :]`` for flat labels).

    Returns:
      An int32 scalar.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxsoft
      >>> from jaxsoft.reductions import count_valid
      >>> logits = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
      >>> labels = jnp.array([0, 3, -100, 1, -100, 4])
      >>> full = jaxsoft.cross_entropy(logits, labels, ignore_index=-100, reduction="mean")
      >>> total = count = 0
      >>> for sl in (slice(0, 2), slice(2, 6)):  # two micro-batches of unequal valid counts
      ...     total += jaxsoft.cross_entropy(logits[sl], labels[sl], ignore_index=-100,
      ...                                    reduction="sum")
      ...     count += count_valid(labels[sl], ignore_index=-100)
      >>> bool(jnp.allclose(total / count, full))
      True
    """
    name = "count_valid"
    y = _checks.as_array(labels, name, "labels")
    ok = jnp.ones(y.shape, bool)
    if ignore_index is not None:
        ok = y != _checks.check_ignore_index(name, ignore_index)
    if where is not None:
        w = _checks.as_array(where, name, "where")
        if w.dtype != jnp.bool_:
            raise TypeError(f"{name}: where must be a boolean array, got dtype {w.dtype}")
        if w.ndim == y.ndim + 1:
            w = jnp.any(w, axis=-1)
        try:
            w = jnp.broadcast_to(w, y.shape)
        except ValueError:
            raise ValueError(
                f"{name}: where of shape {w.shape} does not broadcast to the labels' shape "
                f"{y.shape} (with or without a class axis last)"
            ) from None
        ok = ok & w
    return jnp.sum(ok, dtype=jnp.int32)


def reduce(loss: jax.Array, valid: jax.Array | None, reduction: str) -> jax.Array:
    """``"none"``: ``loss``; ``"sum"``: its sum; ``"mean"``: :func:`mean_over_valid`."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    return _mean_over_valid(loss, valid)
