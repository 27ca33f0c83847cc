"""Logit soft-capping (SPEC 8.1), shared by the losses, the language-model head and attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_softcap(name: str, cap) -> float | None:
    """Validate ``logit_softcap``: ``None`` (no cap) or a concrete finite number ``> 0``.

    It must be concrete (a Python number or a concrete 0-d array): it is a compile-time constant.
    """
    if cap is None:
        return None
    if isinstance(cap, (bool, str, bytes)) or getattr(cap, "ndim", 0) != 0:
        raise TypeError(f"{name}: logit_softcap must be None or a positive number, got {cap!r}")
    try:
        value = float(cap)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"{name}: logit_softcap must be None or a concrete positive number, got {cap!r}"
        ) from None
    if not 0 < value < float("inf"):
        raise ValueError(f"{name}: logit_softcap must be a finite number > 0, got {value}")
    return value


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """``cap * tanh(x / cap)``, keeping ``-inf`` as ``-inf``; ``cap=None`` returns ``x``.

    ``-inf`` is how a logit says "not a candidate" (SPEC 6: vocabulary padding, a masked bias), so it
    stays ``-inf`` rather than becoming the finite ``-cap`` the formula's limit would give; ``+inf``
    becomes ``cap`` (the limit) and NaN stays NaN. The derivative is ``1 - tanh(x / cap)^2``, 0 at
    ``-inf``.
    """
    if cap is None:
        return x
    capped = cap * jnp.tanh(x / cap)
    return jnp.where(x == -jnp.inf, x, capped)
