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

__all__ = ["mean_over_valid"]


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


def reduce(loss: jax.Array, valid: jax.Array | None, reduction: str) -> jax.Array:
    """``"none"``: ``loss``; ``"sum"``: its sum; ``"mean"``: :func:`mean_over_valid`."""
    if reduction == "none":
        return loss
    if reduction == "sum":
        return jnp.sum(loss)
    return _mean_over_valid(loss, valid)
