"""The functions under test and their peers, one table per library.

Every entry reduces over the last axis of a ``(batch, n)`` array. Functions of ``x`` alone have the
signature ``f(x)``; cross-entropy entries are ``f(x, labels)`` with integer labels of shape
``(batch,)``. A library that is not installed contributes an empty table, with the reason recorded
in :data:`SKIPPED`, so the run goes on without it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

FAMILIES = ("softargmax", "log_softargmax", "logsumexp", "softargmax_mean", "cross_entropy")
# Which peer each of our functions is measured against (the "jax.nn equivalent" of the issue).
REFERENCE = {
    "softargmax": "jax.nn",
    "log_softargmax": "jax.nn",
    "logsumexp": "jax.nn",
    "softargmax_mean": "jax.nn",
    "cross_entropy": "optax",
}
OURS = "jaxsoft"

SKIPPED: dict[str, str] = {}  # library -> why it is absent from this run


def _cross_entropy() -> Callable | None:
    try:
        from jaxsoft.losses import cross_entropy
    except ImportError as e:  # written in parallel; the bench runs without it until it lands
        SKIPPED["jaxsoft.cross_entropy"] = f"not importable: {e}"
        return None
    return cross_entropy


def ours() -> dict[str, Callable]:
    import jaxsoft

    table = {
        "softargmax": jaxsoft.softargmax,
        "log_softargmax": jaxsoft.log_softargmax,
        "logsumexp": lambda x: jaxsoft.logsumexp(x, axis=-1),
        "softargmax_mean": jaxsoft.softargmax_mean,
    }
    ce = _cross_entropy()
    if ce is not None:
        table["cross_entropy"] = lambda x, labels: ce(x, labels)
    return table


def jax_nn() -> dict[str, Callable]:
    return {
        "softargmax": lambda x: jax.nn.softmax(x, axis=-1),
        "log_softargmax": lambda x: jax.nn.log_softmax(x, axis=-1),
        # jax.nn.logsumexp reduces over every axis by default.
        "logsumexp": lambda x: jax.nn.logsumexp(x, axis=-1),
        "softargmax_mean": lambda x: jnp.sum(x * jax.nn.softmax(x, axis=-1), axis=-1),
    }


def optax_losses() -> dict[str, Callable]:
    import optax

    return {"cross_entropy": optax.losses.softmax_cross_entropy_with_integer_labels}


# ---- host (NumPy-array) peers: forward only, float32 only ----------------------------------------


def _numpy_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    e /= np.sum(e, axis=-1, keepdims=True)
    return e


def numpy_host() -> dict[str, Callable]:
    return {"softargmax": _numpy_softmax}


def scipy_host() -> dict[str, Callable]:
    try:
        import scipy.special as sp
    except ImportError as e:
        SKIPPED["scipy"] = f"not installed: {e}"
        return {}
    return {
        "softargmax": lambda x: sp.softmax(x, axis=-1),
        "log_softargmax": lambda x: sp.log_softmax(x, axis=-1),
        "logsumexp": lambda x: sp.logsumexp(x, axis=-1),
    }


def torch_module():
    """PyTorch when installed (an optional extra), else ``None`` with the reason in SKIPPED."""
    try:
        import torch
    except ImportError as e:
        SKIPPED["torch"] = f"not installed: {e}"
        return None
    return torch


def torch_table(torch) -> dict[str, Callable]:
    F = torch.nn.functional
    return {
        "softargmax": lambda x: torch.softmax(x, dim=-1),
        "log_softargmax": lambda x: torch.log_softmax(x, dim=-1),
        "logsumexp": lambda x: torch.logsumexp(x, dim=-1),
        "softargmax_mean": lambda x: torch.sum(x * torch.softmax(x, dim=-1), dim=-1),
        "cross_entropy": lambda x, labels: F.cross_entropy(x, labels, reduction="none"),
    }
