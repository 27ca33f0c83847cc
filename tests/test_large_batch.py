"""The tuned XLA:CPU kernel has two forms, chosen by the number of rows (``_tuned_cpu.FUSED_ROWS``):
the same edge rows (SPEC 6) must give the same values and gradients in a batch above that size as
in a small batch, and as the reference kernel, which the property suite checks independently."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft as js
from jaxsoft import _core, _tuned_cpu

INF = np.inf
N = 24  # entries per row


def _edge_rows() -> np.ndarray:
    """One row per regime of SPEC 6, and the near-ties the large-batch form counts by rounding."""
    rows = [
        [-INF] * N,  # empty
        [INF] + [0.0] * (N - 1),  # one +inf
        [INF, 1.0, INF] + [-INF] * (N - 3),  # two +inf and -inf entries
        [np.nan] + [0.0] * (N - 1),  # NaN
        [2.0] * N,  # all tied
        [3e38, -3e38] + [0.0] * (N - 2),  # extreme finite
        [30.0] + [0.0] * (N - 1),  # confident: log p of the max is -N e^-30
        [1e-30, 0.0] + [-5.0] * (N - 2),  # a gap whose exp rounds to 1
        [1.0, np.nextafter(np.float32(1.0), np.float32(0.0))] + [-1.0] * (N - 2),  # 1-ulp gap
        [0.0, -40.0] + [-INF] * (N - 2),  # log1p accuracy
    ]
    return np.asarray(rows, np.float32)


def _batch(rows: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((rows, N))).astype(np.float32)
    edges = _edge_rows()
    x[: len(edges)] = edges
    x[-len(edges) :] = edges  # also at the end, where a blocked loop ends
    return x


def logsumexp(x, **kw):
    return js.logsumexp(x, -1, **kw)


FUNCS = [js.softargmax, js.log_softargmax, logsumexp, js.softargmax_mean]


def _outputs(x, t, w):
    """Each function's value and the gradient of a weighted sum of it, jitted."""

    def one(f):
        def loss(x):
            y = f(x, t=t, where=w)
            y = jnp.where(jnp.isfinite(y), y, 0)  # the edges' inf values, not their gradients
            # Weights by column only, so a row's gradient does not depend on the batch it is in.
            wts = jnp.linspace(0.5, 1.5, N) if y.ndim == 2 else 1.0
            return jnp.sum(y * wts), f(x, t=t, where=w)

        (_, y), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
        return np.asarray(y, np.float32), np.asarray(g, np.float32)

    return [one(f) for f in FUNCS]


def _assert_same(a, b, rtol):
    for (ya, ga), (yb, gb) in zip(a, b, strict=True):
        np.testing.assert_allclose(ya, yb, rtol=rtol, atol=1e-30)
        np.testing.assert_allclose(ga, gb, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "with_t_and_mask"),
    [(jnp.float32, False), (jnp.float32, True), (jnp.bfloat16, False)],
    ids=["float32", "float32-t-and-where", "bfloat16"],
)
def test_large_and_small_batch_forms_agree_on_every_edge_row(dtype, with_t_and_mask):
    big = _tuned_cpu.FUSED_ROWS
    x = _batch(big)
    k = len(_edge_rows())
    small = np.concatenate([x[:k], x[-k:]])
    if with_t_and_mask:
        rng = np.random.default_rng(1)
        t_big = rng.uniform(0.3, 3.0, (big,)).astype(np.float32)
        w_big = rng.random((big, N)) < 0.8
        w_big[:, 0] = True
        t_small = np.concatenate([t_big[:k], t_big[-k:]])
        w_small = np.concatenate([w_big[:k], w_big[-k:]])
    else:
        t_big = t_small = 1.0
        w_big = w_small = None
    with _core.use_kernel("tuned_cpu"):
        got = _outputs(jnp.asarray(x, dtype), t_big, w_big)
        small_out = _outputs(jnp.asarray(small, dtype), t_small, w_small)
    with _core.use_kernel("reference"):
        ref = _outputs(jnp.asarray(x, dtype), t_big, w_big)
    rtol = 2e-6 if dtype == jnp.float32 else 1e-2
    _assert_same(got, ref, rtol)
    picked = [(y[np.r_[:k, -k:0]], g[np.r_[:k, -k:0]]) for y, g in got]
    _assert_same(picked, small_out, rtol)
