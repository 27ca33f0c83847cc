"""The forward and the JVP rule may read a kernel's statistics in different forms (the tuned XLA:CPU
kernel computes ``logsumexp``'s forward in one fused loop and its gradient's statistics in separate
sums): the value a ``value_and_grad`` returns must be the forward's, on every edge row (SPEC 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft as js
from jaxsoft import _core, _tuned_cpu

INF = np.inf
N = 24


def _batch() -> np.ndarray:
    rng = np.random.default_rng(2)
    x = (3 * rng.standard_normal((_tuned_cpu.FUSED_ROWS, N))).astype(np.float32)
    edges = [
        [-INF] * N,
        [INF, 3.4028235e38, INF] + [0.0] * (N - 3),  # +inf rows keep finfo.max out of the count
        [np.nan] + [0.0] * (N - 1),
        [2.0] * N,
        [30.0] + [0.0] * (N - 1),
        [1e-30, 0.0] + [-5.0] * (N - 2),  # a gap whose exp rounds to 1
        [0.0, -40.0] + [-INF] * (N - 2),
    ]
    x[: len(edges)] = np.asarray(edges, np.float32)
    return x


def logsumexp(x):
    return js.logsumexp(x, -1)


@pytest.mark.parametrize("kernel", list(_core.KERNELS))
@pytest.mark.parametrize("f", [logsumexp, js.log_softargmax], ids=["logsumexp", "log_softargmax"])
def test_value_and_grad_returns_the_forward_value(f, kernel):
    x = jnp.asarray(_batch())
    with _core.use_kernel(kernel):
        forward = np.asarray(jax.jit(f)(x))

        def loss(x):
            y = f(x)
            return jnp.sum(jnp.where(jnp.isfinite(y), y, 0)), y

        (_, y), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
    # The log1p form computed twice may differ in the last bit (s and count summed in another
    # order), never more; NaN, +-inf and tiny values must match exactly.
    np.testing.assert_allclose(np.asarray(y), forward, rtol=4e-7, atol=0)
    assert np.array_equal(np.isnan(y), np.isnan(forward))
    nan_rows = np.isnan(np.asarray(x)).any(axis=-1)
    assert np.all(np.isfinite(np.asarray(g)[~nan_rows]))  # SPEC 6: finite gradients but on NaN rows
