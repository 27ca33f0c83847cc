"""softargmax_mean (SPEC 4, 6): the tuned XLA:CPU kernel against the reference kernel and float64 NumPy.

Edge-heavy batches (``+-inf``, NaN, empty and masked rows, ties, magnitudes near ``finfo.max``,
``t = 0``, per-row ``t``), below and at 4096 rows (XLA:CPU fuses the row sums into one loop from
4096 rows on, and the tuned kernel then computes them differently), in float32 and bfloat16; the
gradient against ``p (1 + (x - w) / t)`` (SPEC 4.2) computed in float64 NumPy, and
``check_grads`` under x64.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsoft as js
from jaxsoft import _core

F32_MAX = float(np.finfo(np.float32).max)
N = 16
# Per-row temperatures cycled over the rows: soft, hard, tiny, huge.
TEMPS = np.array([1.0, 0.0, 0.5, 1e-6, 20.0, 1e30, 0.0, 3.0])


def _edge_rows(rng) -> np.ndarray:
    """One row of each kind (float32 values), N entries each."""
    rows = []

    def row(values):
        r = np.asarray(values, np.float64)
        rows.append(np.concatenate([r, 3 * rng.standard_normal(N - len(r))]))

    row([])  # ordinary
    row([-np.inf, -np.inf, -np.inf])  # some -inf entries
    rows.append(np.full(N, -np.inf))  # empty
    row([np.inf])  # one +inf
    row([np.inf, np.inf, -np.inf, F32_MAX])  # two +inf, a -inf and float max
    row([np.nan])  # NaN
    row([np.nan, np.inf, -np.inf])  # NaN with infinities
    row([9.0, 9.0, 9.0])  # tied maxima
    row([F32_MAX, F32_MAX, -F32_MAX, 1e38, -3e38])  # magnitudes near float max
    rows.append(1e6 + rng.standard_normal(N))  # a large shared offset
    rows.append(np.full(N, 2.5))  # all equal
    row([40.0])  # one dominant entry
    rows.append(np.concatenate([[7.0], np.full(N - 1, -np.inf)]))  # a single finite entry
    rows.append(1 + 1e-6 * rng.standard_normal(N))  # a tiny spread
    return np.stack(rows).astype(np.float32)


def _batch(rows: int, seed: int = 0):
    """``(x, mask)``: the edge rows, then ordinary rows, ``rows`` in all; the mask leaves out a few
    entries (some of them NaN or +inf), and every entry of one row."""
    rng = np.random.default_rng(seed)
    edges = _edge_rows(rng)
    x = (3 * rng.standard_normal((rows, N))).astype(np.float32)
    x[: len(edges)] = edges
    x[rows - len(edges) :] = edges  # the same rows at the end (another chunk of the batch)
    mask = rng.random((rows, N)) > 0.2
    mask[5, 0] = False  # the NaN entry of the NaN row: ignored
    mask[3, 0] = False  # the +inf entry: the row becomes ordinary
    mask[0] = False  # a fully masked row
    return x, mask


def _numpy_wmean_and_grad(x, t, mask):
    """float64 NumPy: ``<x, p>`` per row (SPEC 4, 6) and its gradient ``p (1 + (x - w) / t)``."""
    x = np.asarray(x, np.float64)
    w = np.empty(x.shape[0])
    grad = np.zeros_like(x)
    for i, xi in enumerate(x):
        keep = np.ones(x.shape[1], bool) if mask is None else np.asarray(mask[i])
        xi = np.where(keep, xi, -np.inf)
        ti = 1.0 if t is None else float(t[i])
        if np.isnan(xi).any():
            w[i], grad[i] = np.nan, np.where(keep, np.nan, 0)
        elif (xi == -np.inf).all():
            w[i] = -np.inf
        elif (xi == np.inf).any():
            w[i] = np.inf
            grad[i] = (xi == np.inf) / (xi == np.inf).sum()
        elif ti == 0:
            w[i] = xi.max()
            grad[i] = (xi == w[i]) / (xi == w[i]).sum()
        else:
            m = xi.max()
            d = xi - m  # exact for float32 inputs; -inf stays -inf
            e = np.exp(d / ti)
            p = e / e.sum()
            q = np.sum(np.where(p > 0, d, 0) * p)
            w[i] = m + q
            grad[i] = np.where(p > 0, p * (1 + (np.where(p > 0, d, 0) - q) / ti), 0)
    return w, grad


def _assert_close(got, want, x, mask, rtol):
    """Equal special values; finite values within ``rtol`` of the row's largest magnitude."""
    got = np.asarray(got, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    xs = np.where(np.isfinite(x) & (True if mask is None else mask), np.abs(x), 0)
    scale = np.maximum(xs.max(axis=-1), 1.0)
    fin = np.isfinite(want)
    np.testing.assert_array_less(np.abs(got[fin] - want[fin]), rtol * scale[fin] + 1e-30)


def _mean(x, t, mask, kernel):
    with _core.use_kernel(kernel):
        return js.softargmax_mean(x, t=1.0 if t is None else t, where=mask)


@pytest.mark.parametrize("rows", [42, 4104], ids=["below-4096-rows", "fused-4104-rows"])
@pytest.mark.parametrize("case", ["t=1", "per-row-t-and-mask"])
def test_tuned_kernel_matches_reference_kernel_and_float64(rows, case):
    x, mask = _batch(rows)
    mask = None if case == "t=1" else mask
    t = None if case == "t=1" else np.resize(TEMPS, rows).astype(np.float32)
    want, _ = _numpy_wmean_and_grad(x, t, mask)
    tuned = _mean(x, t, mask, "tuned_cpu")
    ref = _mean(x, t, mask, "reference")
    _assert_close(tuned, want, x, mask, rtol=3e-7)
    _assert_close(ref, want, x, mask, rtol=3e-7)


@pytest.mark.parametrize("rows", [42, 4104], ids=["below-4096-rows", "fused-4104-rows"])
def test_tuned_kernel_bfloat16_matches_float64(rows):
    x, mask = _batch(rows)
    x = x.astype(jnp.bfloat16)
    t = np.resize(TEMPS, rows).astype(np.float32)
    want, _ = _numpy_wmean_and_grad(np.asarray(x, np.float32), t, mask)
    got = _mean(jnp.asarray(x), t, mask, "tuned_cpu")
    assert got.dtype == jnp.bfloat16
    # float32 accumulation, then one bfloat16 rounding (SPEC 7); bfloat16's max is float32's.
    _assert_close(got, want, np.asarray(x, np.float32), mask, rtol=2**-8)


def test_long_rows_keep_nan_and_infinities():
    # XLA:CPU's fused max drops NaN on rows of 1024 or more: the sums must carry it.
    x = np.random.default_rng(1).standard_normal((4, 2048)).astype(np.float32)
    x[0, 100] = np.nan
    x[1, 7] = x[1, 2000] = np.inf
    x[2] = np.nan
    x[3, :] = -np.inf
    got = np.asarray(_mean(x, None, None, "tuned_cpu"))
    assert np.isnan(got[0]) and np.isnan(got[2])
    assert got[1] == np.inf and got[3] == -np.inf


@pytest.mark.parametrize(
    ("rows", "temp"), [(42, "t=1"), (42, "per-row-t"), (4104, "per-row-t")], ids=lambda v: str(v)
)
def test_gradient_matches_float64_formula_at_the_edges(rows, temp):
    x, mask = _batch(rows)
    t = None if temp == "t=1" else np.resize(TEMPS, rows).astype(np.float32)
    _, want = _numpy_wmean_and_grad(x, t, mask)
    with _core.use_kernel("tuned_cpu"):
        got = jax.jit(
            jax.grad(lambda x, t: jnp.sum(js.softargmax_mean(x, t=t, where=mask)), argnums=0)
        )(x, 1.0 if t is None else t)
    got = np.asarray(got, np.float64)
    nan_rows = np.isnan(want).any(axis=-1)
    # NaN stays in its row, and only there.
    assert not np.isnan(got[~nan_rows]).any()
    assert np.isnan(got[nan_rows]).any(axis=-1).all()
    np.testing.assert_allclose(got[~nan_rows], want[~nan_rows], rtol=2e-4, atol=2e-6)


def test_temperature_gradient_is_finite_at_the_edges():
    # d<x, p>/dt = -<p, ((x - w) / t)^2> (SPEC 1.7): finite on every row without a NaN (rows 5 and
    # 6, where it is NaN), 0 on hard rows (t = 0, +inf rows 3 and 4) and on the empty row 2.
    x = _batch(42)[0][:14]
    t = np.resize(TEMPS, 14).astype(np.float32)
    with _core.use_kernel("tuned_cpu"):
        g = np.asarray(jax.jit(jax.grad(lambda t: jnp.sum(js.softargmax_mean(x, t=t))))(t))
    nan_rows = np.isin(np.arange(14), [5, 6])
    assert np.isnan(g[nan_rows]).all() and np.isfinite(g[~nan_rows]).all()
    assert (g[(t == 0) & ~nan_rows] == 0).all() and (g[2:5] == 0).all()
    assert (g[~nan_rows] <= 0).all() and (g[[0, 7]] < 0).all()  # soft rows with a spread


def test_gradient_with_tied_maxima_near_float_max_and_tiny_t():
    # The centring on w through differences to the max: x - w would carry w's rounding (ulp of
    # 3e38 is 2e31), which 1 / t magnifies.
    x = np.array([[0.0, F32_MAX, F32_MAX, np.nextafter(F32_MAX, 0, dtype=np.float32)]], np.float32)
    t = 2.0**104  # the gap between the two top values (the ulp of float32's max)
    _, want = _numpy_wmean_and_grad(x, [t], None)
    with _core.use_kernel("tuned_cpu"):
        got = jax.grad(lambda x: js.softargmax_mean(x, t=t)[0])(x)
        np.testing.assert_allclose(np.asarray(got)[0], want[0], rtol=1e-5, atol=1e-7)


def test_check_grads_with_masked_entries_and_per_row_t(x64):
    # Reverse over reverse: a cotangent through a masked entry's weight factor overflowed to inf,
    # and inf * 0 = NaN in the transposed rule of p (a select-free rule must bound it). Forward
    # mode and t = 1 are tests/test_jacobians.py's.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 6)))
    mask = jnp.asarray(rng.random((3, 6)) > 0.3).at[:, 0].set(True)
    t = jnp.asarray([0.7, 0.05, 3.0])
    with _core.use_kernel("tuned_cpu"):
        f = jax.jit(lambda x: js.softargmax_mean(x, t=t, where=mask))
        check_grads(f, (x,), order=2, modes=("rev",), eps=1e-5)
        g = jax.jit(lambda t: js.softargmax_mean(x, t=t, where=mask))
        check_grads(g, (t,), order=1, modes=("rev",), eps=1e-6)


@pytest.mark.parametrize("transform", ["plain", "jit", "vmap"])
def test_transforms_agree(transform):
    x, mask = _batch(42)
    t = np.resize(TEMPS, 42).astype(np.float32)
    want, _ = _numpy_wmean_and_grad(x, t, mask)
    with _core.use_kernel("tuned_cpu"):
        f = lambda x, t, w: js.softargmax_mean(x, t=t, where=w)
        if transform == "jit":
            f = jax.jit(f)
        elif transform == "vmap":
            f = jax.vmap(f)
        got = f(x, t, mask)
    _assert_close(got, want, x, mask, rtol=3e-7)


def _peer(x):
    return jnp.sum(x * jax.nn.softmax(x, axis=-1), axis=-1)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tuned_kernel_has_no_branch_and_no_more_scratch_than_peer_at_4096_rows(dtype):
    # The +inf check used to be a lax.cond on the row max: a bfloat16 batch then had its float32
    # copy written to memory (16 MiB at (4096, 1024)). Memory as in tests/test_memory.py.
    x = jax.ShapeDtypeStruct((4096, 256), jnp.dtype(dtype))
    g = jax.ShapeDtypeStruct((4096,), jnp.dtype(dtype))
    with _core.use_kernel("tuned_cpu"):
        ours = jax.jit(js.softargmax_mean).lower(x).compile()
        ours_vg = (
            jax.jit(jax.value_and_grad(lambda x, g: jnp.sum(js.softargmax_mean(x) * g)))
            .lower(x, g)
            .compile()
        )
    peer = jax.jit(_peer).lower(x).compile()
    peer_vg = jax.jit(jax.value_and_grad(lambda x, g: jnp.sum(_peer(x) * g))).lower(x, g).compile()
    assert not re.search(r"\bconditional\b", ours.as_text())
    slack = 96 * 4096
    assert (
        ours.memory_analysis().temp_size_in_bytes
        <= peer.memory_analysis().temp_size_in_bytes + slack
    )
    assert (
        ours_vg.memory_analysis().temp_size_in_bytes
        <= peer_vg.memory_analysis().temp_size_in_bytes + slack
    )
