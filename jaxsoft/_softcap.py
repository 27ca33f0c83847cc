"""Logit soft-capping (SPEC 8.1), shared by the losses, the language-model head and attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def check_softcap(name: str, cap) -> float | None:
    """Validate ``logit_softcap``: ``None`` (no cap) or a concrete finite number ``> 0``."""
    if cap is None:
        return None
    if (
        isinstance(cap, bool)
        or not isinstance(cap, (int, float))
        and not (hasattr(cap, "ndim") and cap.ndim == 0 and not isinstance(cap, jax.core.Tracer))
    ):
        raise TypeError(f"{name}: logit_softcap must be None or a positive number, got {cap!r}")
    value = float(cap)
    if not (value > 0 and value < float("inf")):
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
