"""Tests for jaxsoft.divergences: entropy and kl_divergence (SPEC 8.4, with the edges of SPEC 6).

References are mpmath (50 digits) or float64 NumPy, computed from the exact values of the inputs.
Compilation dominates the run time, so the shapes are few and repeated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

import jaxsoft
from jaxsoft.divergences import entropy, kl_divergence

mpmath.mp.dps = 50
INF, NAN = np.inf, np.nan
F32_EPS = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------------------------------
# Independent references: one row at a time in mpmath, entries with x = -inf (or masked) left out.
# --------------------------------------------------------------------------------------------------


def _mp_log_probs(row, t):
    t = mpmath.mpf(float(t))
    z = [None if v == -INF else mpmath.mpf(float(v)) / t for v in row]
    lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in z if v is not None))
    return [None if v is None else v - lse for v in z]


def mp_entropy_row(row, t=1.0):
    logp = _mp_log_probs(row, t)
    return float(-mpmath.fsum(mpmath.exp(v) * v for v in logp if v is not None))


def mp_kl_row(x_row, y_row, t=1.0):
    logp, logq = _mp_log_probs(x_row, t), _mp_log_probs(y_row, t)
    terms = []
    for lp, lq in zip(logp, logq):
        if lq is None:
            continue
        if lp is None:
            return INF
        terms.append(mpmath.exp(lq) * (lq - lp))
    return float(mpmath.fsum(terms))


def rows_of(a, axis):
    """``a`` (float64) with the reduced axes moved last and flattened, and the batch shape."""
    a = np.asarray(a, np.float64)
    axes = tuple(range(a.ndim)) if axis is None else (axis,) if isinstance(axis, int) else axis
    axes = tuple(ax % a.ndim for ax in axes)
    moved = np.moveaxis(a, axes, tuple(range(-len(axes), 0)))
    batch = moved.shape[: a.ndim - len(axes)]
    return moved.reshape(-1, int(np.prod([a.shape[ax] for ax in axes]))), batch


def ref_entropy(x, axis=-1, t=1.0):
    rows, batch = rows_of(x, axis)
    ts = np.broadcast_to(np.asarray(t, np.float64), batch).ravel()
    return np.array([mp_entropy_row(r, s) for r, s in zip(rows, ts)]).reshape(batch)


def ref_kl(x, y, axis=-1, t=1.0):
    rows_x, batch = rows_of(x, axis)
    rows_y, _ = rows_of(np.broadcast_to(y, np.shape(x)), axis)
    ts = np.broadcast_to(np.asarray(t, np.float64), batch).ravel()
    out = [mp_kl_row(a, b, s) for a, b, s in zip(rows_x, rows_y, ts)]
    return np.array(out).reshape(batch)


def ulps(actual, expected, dtype=np.float32):
    expected = np.asarray(expected, np.float64)
    spacing = np.spacing(np.abs(expected).astype(dtype)).astype(np.float64)
    return np.abs(np.asarray(actual, np.float64) - expected) / spacing


def rand(shape, seed=0, scale=2.0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


@functools.cache
def _values_and_grads_program(f, n_diff):
    """One jitted program per module-level ``f``, shared by every test that calls it."""

    @jax.jit
    def run(*args):
        diff, rest = args[:n_diff], args[n_diff:]
        out, pullback = jax.vjp(lambda *d: f(*d, *rest), *diff)
        return out, pullback(jnp.where(jnp.isfinite(out), 1.0, 0.0).astype(out.dtype))

    return run


def values_and_grads(f, *args, n_diff=None):
    """``f(*args)`` and the gradients of the sum of its finite values in its first ``n_diff``
    arguments (default all), in one compiled program. ``f`` must be a module-level function:
    the program is cached on it, so tests calling it at the same shapes share one compile."""
    run = _values_and_grads_program(f, len(args) if n_diff is None else n_diff)
    out, grads = run(*args)
    return np.asarray(out), [np.asarray(g) for g in grads]


# The functions values_and_grads differentiates (module-level, so their programs are shared).
def _entropy_at_t(a, s):
    return entropy(a, t=s)


def _entropy_where(a, m):
    return entropy(a, where=m)


def _kl_at_t(a, b, s):
    return kl_divergence(a, b, t=s)


def _kl_where(a, b, m):
    return kl_divergence(a, b, where=m)


def pad_to(a, shape, fill):
    """``a`` in the top-left corner of a ``shape`` array of ``fill``: tests of one function at
    different sizes then share one compiled program."""
    out = np.full(shape, fill, np.asarray(a).dtype)
    out[tuple(slice(0, k) for k in np.shape(a))] = a
    return out


# The shared shapes of values_and_grads(kl_divergence, ...) (t = 1: the fast path's coefficients
# on regular rows) and of values_and_grads(_kl_at_t, ...) (a traced per-row t: the exact path).
KL_XY_SHAPE = (3, 1000)
KL_T_SHAPE = (13, 100)


# --------------------------------------------------------------------------------------------------
# Values against mpmath: shapes, axes and transforms.
# --------------------------------------------------------------------------------------------------

# (shape, axis, transform): every shape/axis and every transform at least once, few compiles.
CASES = [
    ((5, 7), -1, "plain"),
    ((3, 4, 5), (0, 2), "plain"),
    ((6, 3), 0, "jit"),
    ((3, 4, 5), (0, 2), "vmap"),
]


def _transformed(f, transform):
    if transform == "jit":
        return jax.jit(f)
    if transform == "vmap":
        return jax.vmap(f)
    return f


@pytest.mark.parametrize("shape,axis,transform", CASES)
def test_entropy_matches_mpmath(shape, axis, transform):
    x = rand((2, *shape) if transform == "vmap" else shape, seed=1)
    t = np.float32(0.7)  # the reference uses the float32 temperature the function sees
    got = _transformed(lambda a: entropy(a, axis, t=t), transform)(x)
    if transform == "vmap":
        expected = np.stack([ref_entropy(a, axis, t) for a in x])
    else:
        expected = ref_entropy(x, axis, t)
    assert got.shape == expected.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=4 * F32_EPS, atol=0)


@pytest.mark.parametrize("shape,axis,transform", CASES)
def test_kl_matches_mpmath(shape, axis, transform):
    x = rand((2, *shape) if transform == "vmap" else shape, seed=2)
    y = x + rand(x.shape, seed=3, scale=1.0)
    t = np.float32(1.3)
    got = _transformed(lambda a, b: kl_divergence(a, b, axis, t=t), transform)(x, y)
    if transform == "vmap":
        expected = np.stack([ref_kl(a, b, axis, t) for a, b in zip(x, y)])
    else:
        expected = ref_kl(x, y, axis, t)
    assert got.shape == expected.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=8 * F32_EPS, atol=0)


@jax.jit
def _entropy_and_kl_over_all_axes(x, y):
    return entropy(x, None), kl_divergence(x, y, None)


def test_axis_none_and_keepdims():
    x, y = rand((2, 3, 4), seed=4), rand((2, 3, 4), seed=5)
    h, kl = _entropy_and_kl_over_all_axes(x, y)
    np.testing.assert_allclose(h, ref_entropy(x, None), rtol=1e-6)
    np.testing.assert_allclose(kl, ref_kl(x, y, None), rtol=1e-6)
    # Shapes only: eval_shape traces without compiling.
    assert jax.eval_shape(lambda a: entropy(a, (0, 2), keepdims=True), x).shape == (1, 3, 1)
    kl_shape = jax.eval_shape(lambda a, b: kl_divergence(a, b, 1, keepdims=True), x, y).shape
    assert kl_shape == (2, 1, 4)


@jax.jit
def _entropy_and_kl_at_traced_t(x, y, t):
    return entropy(x, t=t), kl_divergence(x, y, t=t[:, None])


def test_per_row_temperature_traced_under_jit():
    # The shapes of test_kl_of_ordinary_distributions_to_float32_accuracy: one compiled program.
    x, y = rand((6, 64), seed=6), rand((6, 64), seed=7)
    t = np.array([0.25, 0.5, 1.0, 4.0, 2.0, 0.7], np.float32)
    h, kl = _entropy_and_kl_at_traced_t(x, y, t)  # t of shape (6,) for one, (6, 1) for the other
    np.testing.assert_allclose(h, ref_entropy(x, -1, t), rtol=4 * F32_EPS)
    np.testing.assert_allclose(kl, ref_kl(x, y, -1, t), rtol=8 * F32_EPS)


def test_target_broadcasts_against_logits():
    x, y = rand((3, 6), seed=8), rand((6,), seed=9)
    np.testing.assert_allclose(kl_divergence(x, y), ref_kl(x, y), rtol=8 * F32_EPS)


def test_empty_axis_gives_zero():
    assert np.array_equal(entropy(jnp.zeros((3, 0))), np.zeros(3))
    assert np.array_equal(kl_divergence(jnp.zeros((3, 0)), jnp.zeros((3, 0))), np.zeros(3))


# --------------------------------------------------------------------------------------------------
# Dtypes (SPEC 7).
# --------------------------------------------------------------------------------------------------


@jax.jit
def _entropy_and_kl(x, y):
    return entropy(x), kl_divergence(x, y)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_is_accumulated_in_float32(dtype):
    x = jnp.asarray(rand((3, 4096), seed=10), dtype)
    y = jnp.asarray(np.asarray(x, np.float32) + rand((3, 4096), seed=11, scale=0.5), dtype)
    h, kl = _entropy_and_kl(x, y)
    assert h.dtype == dtype and kl.dtype == dtype
    grads = jax.eval_shape(jax.grad(lambda a, b: kl_divergence(a, b).sum(), (0, 1)), x, y)
    assert all(g.dtype == dtype for g in grads)
    x64, y64 = np.asarray(x, np.float64), np.asarray(y, np.float64)
    # Only the final rounding to the half dtype: a long row summed in half would be far off.
    # (References in float64 NumPy: ~1e-15 relative here, and mpmath on 2 x 12288 logits is slow.)
    rtol = float(jnp.finfo(dtype).eps)
    logp = x64 - x64.max(-1, keepdims=True)
    logp -= np.log(np.sum(np.exp(logp), -1, keepdims=True))
    logq = y64 - y64.max(-1, keepdims=True)
    logq -= np.log(np.sum(np.exp(logq), -1, keepdims=True))
    expected_h = -np.sum(np.exp(logp) * logp, -1)
    expected_kl = np.sum(np.exp(logq) * (logq - logp), -1)
    np.testing.assert_allclose(np.asarray(h, np.float64), expected_h, rtol=rtol)
    np.testing.assert_allclose(np.asarray(kl, np.float64), expected_kl, rtol=rtol)


def test_mixed_dtypes_promote():
    x = jnp.asarray(rand((2, 5), seed=12), jnp.bfloat16)
    y = rand((2, 5), seed=13)
    # Dtypes only: eval_shape traces without compiling.
    assert jax.eval_shape(kl_divergence, x, y).dtype == jnp.float32
    assert jax.eval_shape(entropy, jnp.arange(4)).dtype == jnp.float32


@jax.jit
def _entropy_and_kl_at_0_8(x, y):
    return entropy(x, t=0.8), kl_divergence(x, y, t=0.8)


def test_float64(x64):
    x = rand((3, 6), seed=14, dtype=np.float64)
    y = x + rand((3, 6), seed=15, scale=0.1, dtype=np.float64)
    h, kl = _entropy_and_kl_at_0_8(x, y)
    assert h.dtype == jnp.float64 and kl.dtype == jnp.float64
    np.testing.assert_allclose(h, ref_entropy(x, -1, 0.8), rtol=1e-14)
    np.testing.assert_allclose(kl, ref_kl(x, y, -1, 0.8), rtol=1e-13)


# --------------------------------------------------------------------------------------------------
# SPEC 8.4 accuracy: near-one-hot entropy to a few ulps; KL of nearly equal distributions.
# --------------------------------------------------------------------------------------------------


def test_entropy_of_near_one_hot_rows_to_a_few_ulps():
    # One batch (rows padded with -inf, which are left out): one compile.
    rows = [
        ([0.0, -30.0, -40.0], 1.0),
        ([0.0, -20.0, -21.0], 1.0),
        ([5.0, -60.0, -70.0, -80.0], 1.0),
        ([0.0, -87.0], 1.0),
        ([1e4, 1e4 - 25.0, 1e4 - 35.0], 1.0),
        ([0.0, -15.0, -20.0], 0.5),
    ]
    x = np.full((len(rows), 4), -INF, np.float32)
    for i, (row, _) in enumerate(rows):
        x[i, : len(row)] = row
    t = np.array([s for _, s in rows], np.float32)
    # Padded with more -inf to the (6, 64) program of test_per_row_temperature_traced_under_jit.
    got, _ = _entropy_and_kl_at_traced_t(pad_to(x, (6, 64), -INF), pad_to(x, (6, 64), -INF), t)
    got = np.asarray(got)
    for g, row, s in zip(got, x, t):
        expected = mp_entropy_row(row, s)
        assert g > 0
        assert ulps(g, expected) <= 4, (row, g, expected)


@pytest.mark.parametrize("target_kl", [1e-10, 5e-11])
@pytest.mark.parametrize("t", [1.0, 0.7])
def test_kl_of_nearly_equal_distributions_keeps_relative_accuracy(target_kl, t):
    t = np.float32(t)
    # The textbook sum q (log q - log p) is ~5000x too large here in float32 (issue 14, item 6).
    rng = np.random.default_rng(16)
    x = (rng.normal(size=1000) * 2).astype(np.float32)
    # KL ~ Var_p(delta) / (2 t^2), so this scale of perturbation lands near target_kl.
    y = (x + rng.normal(size=1000) * t * np.sqrt(2 * target_kl)).astype(np.float32)
    expected = mp_kl_row(x, y, t)
    assert target_kl / 10 < expected < target_kl * 10
    got = float(kl_divergence(x, y, t=t))
    assert abs(got - expected) <= 1e-4 * expected


def test_kl_of_nearly_equal_near_one_hot_rows():
    x = np.array([[0.0, -30.0, -40.0, -35.0], [3.0, -1.0, -25.0, -28.0]], np.float32)
    y = (x + np.array([[0, 1e-3, -2e-3, 1e-3], [0, 1e-6, -1e-5, 2e-5]])).astype(np.float32)
    expected = ref_kl(x, y)
    # Row by row, padded to the 1000 logits of test_kl_of_nearly_equal_distributions_keeps_...
    # (its t = 1 program): the padding (-1e4 in both) has p = q = 0 in float32, and both rows
    # are regular, as in one batch, so each takes the fast path either way.
    got = [kl_divergence(pad_to(a, (1000,), -1e4), pad_to(b, (1000,), -1e4)) for a, b in zip(x, y)]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_kl_where_model_probabilities_underflow_but_target_ones_do_not():
    # p_1 = e^-95 underflows in float32 while q_1 = e^-10 / (1 + e^-10) does not: its term
    # q_1 (log q_1 - log p_1) ~ 3.8e-3 must not vanish with p_1, nor must q_1 in the gradients.
    x = np.array([[0.0, -95.0, -3.0], [0.0, -90.0, -1.0]], np.float32)
    y = np.array([[0.0, -10.0, -3.0], [0.0, -20.0, -1.0]], np.float32)
    # Padded to the KL_XY_SHAPE program (of test_gradients_of_nearly_equal_distributions_...): the
    # padding (-1e4 in both, a third row all -1e4) has p = q = 0 in float32 and changes no value,
    # and every row is regular, so the batch stays on the fast path, as unpadded.
    kl, (gx, gy) = values_and_grads(
        kl_divergence, pad_to(x, KL_XY_SHAPE, -1e4), pad_to(y, KL_XY_SHAPE, -1e4)
    )
    assert kl[2] == 0 and np.all(gx[:, 3:] == 0) and np.all(gy[:, 3:] == 0)
    kl, gx, gy = kl[:2], gx[:2, :3], gy[:2, :3]
    np.testing.assert_allclose(kl, ref_kl(x, y), rtol=1e-5)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    p = np.exp(xd) / np.exp(xd).sum(-1, keepdims=True)
    q = np.exp(yd) / np.exp(yd).sum(-1, keepdims=True)
    np.testing.assert_allclose(gx, p - q, rtol=1e-5, atol=1e-12)
    lr = np.log(q) - np.log(p)
    np.testing.assert_allclose(gy, q * (lr - ref_kl(x, y)[:, None]), rtol=1e-4, atol=1e-12)


def test_kl_of_ordinary_distributions_to_float32_accuracy():
    x = rand((6, 64), seed=17, scale=3.0)
    y = x + rand((6, 64), seed=18, scale=1.0) * np.arange(1, 7)[:, None].astype(np.float32)
    t = np.array([0.5, 1.0, 3.0, 0.5, 1.0, 3.0], np.float32)
    h, kl = _entropy_and_kl_at_traced_t(x, y, t)  # the program of the per-row temperature test
    np.testing.assert_allclose(kl, ref_kl(x, y, -1, t), rtol=1e-5)
    np.testing.assert_allclose(h, ref_entropy(x, -1, t), rtol=4 * F32_EPS)


def test_gradients_of_nearly_equal_distributions_are_accurate():
    rng = np.random.default_rng(19)
    x = (rng.normal(size=1000) * 2).astype(np.float32)
    y = (x + rng.normal(size=1000) * 1e-5).astype(np.float32)
    xs, ys = x[:100], y[:100]
    # Rows 1 and 2 are padding (all -1e4: uniform, KL 0, regular rows: the fast path holds).
    _, (gx, gy) = values_and_grads(
        kl_divergence, pad_to(x[None], KL_XY_SHAPE, -1e4), pad_to(y[None], KL_XY_SHAPE, -1e4)
    )
    gx, gy = gx[0], gy[0]
    # d KL / dt of (xs, ys) at t = 1 is row 0 of the KL edges' program: the other rows all -inf
    # in both (no target mass, zero KL); each row's t is its own, so only row 0 counts.
    _, (_, _, gts) = values_and_grads(
        _kl_at_t,
        pad_to(xs[None], KL_T_SHAPE, -INF),
        pad_to(ys[None], KL_T_SHAPE, -INF),
        np.ones(KL_T_SHAPE[0], np.float32),
    )
    gt = gts[0]
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    lp = xd - xd.max() - np.log(np.sum(np.exp(xd - xd.max())))
    lq = yd - yd.max() - np.log(np.sum(np.exp(yd - yd.max())))
    p, q = np.exp(lp), np.exp(lq)
    kl = np.sum(q * (lq - lp))
    # Both gradients are O(delta): p - q computed as two rounded probabilities would be ~1% off.
    ex, ey = p - q, q * (lq - lp - kl)
    assert np.max(np.abs(gx - ex)) <= 1e-5 * np.max(np.abs(ex))
    assert np.max(np.abs(gy - ey)) <= 1e-5 * np.max(np.abs(ey))
    # d KL / dt against mpmath's numerical derivative of the exact KL (100 logits: mpmath speed).
    gt = float(gt)
    xm, ym = [mpmath.mpf(float(v)) for v in xs], [mpmath.mpf(float(v)) for v in ys]

    def kl_at(s):
        lx = mpmath.log(mpmath.fsum(mpmath.exp(v / s) for v in xm))
        ly = mpmath.log(mpmath.fsum(mpmath.exp(v / s) for v in ym))
        return mpmath.fsum(
            mpmath.exp(b / s - ly) * (b / s - ly - a / s + lx) for a, b in zip(xm, ym)
        )

    expected = float(mpmath.diff(kl_at, mpmath.mpf(1)))
    assert abs(gt - expected) <= 1e-3 * abs(expected)


# --------------------------------------------------------------------------------------------------
# Identities: H = d logsumexp_t / dt; KL = CE(x, q) - H(q); H and KL at t = 1 of the notes.
# --------------------------------------------------------------------------------------------------


# Entropies and KLs come from the (6, 64) program of test_per_row_temperature_traced_under_jit;
# the other side of each identity is jitted whole (eagerly, its glue compiles op by op).
@jax.jit
def _dlse_dt(x, t):
    return jax.vmap(jax.grad(lambda a, s: jaxsoft.logsumexp(a, t=s), argnums=1))(x, t)


@jax.jit
def _cross_entropy_with_target_probs(x, y, t):
    q = jaxsoft.softargmax(y, t=t[:, None])
    return jaxsoft.cross_entropy_with_probs(x, q, t=t)


def test_entropy_is_the_temperature_derivative_of_logsumexp():
    x = rand((6, 64), seed=20)
    t = np.array([0.3, 0.8, 1.0, 2.0, 5.0, 0.5], np.float32)
    h, kl_self = _entropy_and_kl_at_traced_t(x, x, t)
    np.testing.assert_allclose(h, _dlse_dt(x, t), rtol=1e-5)
    assert np.all(np.asarray(kl_self) == 0)


def test_kl_is_cross_entropy_minus_target_entropy():
    x, y = rand((6, 64), seed=21), rand((6, 64), seed=22)
    t = np.array([0.5, 1.0, 2.0, 3.0, 0.7, 1.5], np.float32)
    _, kl = _entropy_and_kl_at_traced_t(x, y, t)
    h_target, _ = _entropy_and_kl_at_traced_t(y, y, t)
    ce = _cross_entropy_with_target_probs(x, y, t)
    np.testing.assert_allclose(kl, ce - h_target, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Derivatives (float64, check_grads).
# --------------------------------------------------------------------------------------------------


def test_entropy_derivatives_in_logits_and_temperature(x64):
    x = rand((3, 5), seed=23, dtype=np.float64)
    t = np.array([0.7, 1.3, 2.0])
    # Order 2 in forward mode (reverse mode is checked at order 1: fwd-over-rev compiles slowly).
    # Jitted: check_grads calls f many times, and eagerly each call would trace both paths.
    f = jax.jit(lambda a, s: entropy(a, t=s))
    check_grads(f, (x, t), order=2, modes=("fwd",))
    check_grads(f, (x, t), order=1, modes=("rev",))
    mask = np.array([[1, 1, 0, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]], bool)
    g = jax.jit(lambda a: entropy(a, 0, where=mask.T))
    check_grads(g, (x.T,), order=1, modes=("fwd", "rev"))


# Module-level, so that both cases below reuse its compiled programs.
_KL_AT_T = jax.jit(lambda a, b, s: kl_divergence(a, b, t=s))


@pytest.mark.parametrize("scale,order", [(1.0, 2), (1e-4, 1)])
def test_kl_derivatives_in_both_logits_and_temperature(x64, scale, order):
    x = rand((3, 5), seed=25, dtype=np.float64)
    y = x + rand((3, 5), seed=26, scale=scale, dtype=np.float64)
    t = np.array([0.7, 1.3, 2.0])
    check_grads(_KL_AT_T, (x, y, t), order=order, modes=("fwd",) if order == 2 else ("fwd", "rev"))


def test_kl_derivatives_with_mask_and_minus_inf_targets(x64):
    x = rand((3, 5), seed=27, dtype=np.float64)
    y = rand((3, 5), seed=28, dtype=np.float64)
    y[0, 1] = -INF  # q_1 = 0 < p_1: finite KL, a 0 log 0 term
    mask = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 1], [0, 1, 1, 0, 1]], bool)
    f = jax.jit(lambda a, b: kl_divergence(a, b, where=mask))
    check_grads(f, (x, y), order=1, modes=("rev",))


# --------------------------------------------------------------------------------------------------
# SPEC 6 edges: values and gradients.
# --------------------------------------------------------------------------------------------------

ENTROPY_EDGES = [
    # (row, t, expected entropy); gradients must be finite, zero where the row is constant.
    ([0.0, -INF, 0.0, -INF], 1.0, np.log(2)),
    ([0.0, -INF, 1.0, 2.0], 0.5, None),  # mpmath
    ([INF, 0.0, 1.0, 2.0], 1.0, 0.0),
    ([INF, INF, 1.0, 2.0], 1.0, np.log(2)),
    ([-INF, -INF, -INF, -INF], 1.0, 0.0),
    ([5.0, -INF, -INF, -INF], 1.0, 0.0),
    ([2.0, 2.0, 1.0, 2.0], 0.0, np.log(3)),
    ([3.0, 1.0, 2.0, 0.0], 0.0, 0.0),
    ([1e30, 1e30, -1e30, 3e38], 1.0, 0.0),
    ([1e30, 1e30, -1e30, 0.0], 1.0, np.log(2)),
]


def test_entropy_edges_values_and_gradients():
    x = np.array([r for r, _, _ in ENTROPY_EDGES], np.float32)
    t = np.array([s for _, s, _ in ENTROPY_EDGES], np.float32)
    expected = [mp_entropy_row(r, s) if e is None else e for r, s, e in ENTROPY_EDGES]
    h, (gx, gt) = values_and_grads(_entropy_at_t, x, t)
    np.testing.assert_allclose(h, expected, rtol=1e-6, atol=0)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gt))
    assert np.all(gx[np.isneginf(x)] == 0)  # -inf entries are constants
    # Symmetric ties, one candidate, +inf maxima, t = 0 and one-hot rows: zero gradients.
    constant_rows = [0, 2, 3, 4, 5, 6, 7, 8]
    assert np.all(gx[constant_rows] == 0) and np.all(gt[constant_rows] == 0)
    # Row 1 has the analytic gradients -p (log p + H) / t and Var_p(log p) / t.
    logp = np.array([0.0, 1.0, 2.0]) / 0.5
    logp = logp - np.log(np.sum(np.exp(logp)))
    p, ent = np.exp(logp), expected[1]
    np.testing.assert_allclose(gx[1, [0, 2, 3]], -p * (logp + ent) / 0.5, rtol=1e-5)
    np.testing.assert_allclose(gt[1], np.sum(p * (logp + ent) ** 2) / 0.5, rtol=1e-5)


def test_entropy_nan_stays_in_its_row_and_masks_hide_everything():
    x = np.array([[NAN, 0.0, 1.0], [0.0, 1.0, 2.0], [0.0, 1.0, NAN]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0]], bool)
    # Rows 3 and 4: a fully masked row (holding inf and NaN) and row 1 again, in the same batch.
    x = np.concatenate([x, np.array([[INF, NAN, -INF], [0.0, 1.0, 2.0]], np.float32)])
    mask = np.concatenate([mask, np.array([[0, 0, 0], [1, 1, 1]], bool)])
    h, (gx,) = values_and_grads(_entropy_where, x, mask, n_diff=1)
    assert np.isnan(h[0]) and np.all(np.isnan(gx[0]))
    np.testing.assert_allclose(h[1:3], ref_entropy(np.array([[0, 1, 2], [0, 1, -INF]])), rtol=1e-6)
    assert np.all(np.isfinite(gx[1:])) and gx[2, 2] == 0
    # A fully masked row (holding inf and NaN) is 0 with zero gradients.
    assert h[3] == 0 and np.all(gx[3] == 0)
    assert np.isclose(h[4], h[1])


def test_entropy_of_one_candidate_is_zero():
    assert float(entropy(jnp.array([3.0]))) == 0.0
    assert np.array_equal(entropy(jnp.array([[1.0, 2.0]]), where=jnp.array([[True, False]])), [0])


KL_EDGES = [
    # (logits row, target row, t, expected KL(q || p))
    ([0.0, -INF, 1.0], [0.0, 0.0, 1.0], 1.0, INF),  # q_1 > 0 = p_1
    ([0.0, -INF, 1.0], [0.0, -200.0, 1.0], 1.0, INF),  # q_1 = e^-200 > 0 = p_1, q_1 underflows
    ([0.0, 0.0, 1.0], [0.0, -INF, 1.0], 1.0, None),  # q_1 = 0: 0 log 0, finite (mpmath)
    ([-INF, -INF, -INF], [0.0, 1.0, 2.0], 1.0, INF),  # no model mass at all
    ([0.0, 1.0, 2.0], [-INF, -INF, -INF], 1.0, 0.0),  # no target mass: q = 0
    ([INF, 0.0, 1.0], [INF, 2.0, 3.0], 1.0, 0.0),  # both one-hot at the +inf entry
    ([INF, INF, 0.0], [INF, 0.0, 0.0], 1.0, np.log(2)),  # q one-hot, p half-half
    ([INF, 0.0, 0.0], [INF, INF, 0.0], 1.0, INF),
    ([3.0, 1.0, 2.0], [5.0, 0.0, 0.0], 0.0, 0.0),  # t = 0: same argmax
    ([3.0, 1.0, 2.0], [0.0, 5.0, 0.0], 0.0, INF),  # t = 0: different argmax
    ([3.0, 3.0, 0.0], [3.0, 0.0, 0.0], 0.0, np.log(2)),  # t = 0, tied model maxima
    ([1e30, -1e30, 3e38], [1e30, 1e30, 3e38], 1.0, 0.0),
    ([1e30, -1e30, 0.0], [-1e30, 1e30, 0.0], 1.0, 2e30),
]


def test_kl_edges_values_and_gradients():
    x = np.array([r for r, _, _, _ in KL_EDGES], np.float32)
    y = np.array([r for _, r, _, _ in KL_EDGES], np.float32)
    t = np.array([s for _, _, s, _ in KL_EDGES], np.float32)
    expected = np.array([mp_kl_row(a, b) if e is None else e for a, b, _, e in KL_EDGES])
    # Padded with entries -inf in both rows (q = p = 0: left out) to the KL_T_SHAPE program.
    kl, (gx, gy, gt) = values_and_grads(
        _kl_at_t, pad_to(x, KL_T_SHAPE, -INF), pad_to(y, KL_T_SHAPE, -INF), t
    )
    assert np.all(gx[:, 3:] == 0) and np.all(gy[:, 3:] == 0)
    gx, gy = gx[:, :3], gy[:, :3]
    np.testing.assert_allclose(kl, expected, rtol=1e-6, atol=0)
    for g in (gx, gy, gt):
        assert np.all(np.isfinite(g))
    inf_rows = np.isinf(expected)
    assert np.all(gx[inf_rows] == 0) and np.all(gy[inf_rows] == 0) and np.all(gt[inf_rows] == 0)
    at_zero_t = t == 0
    assert np.all(gx[at_zero_t] == 0) and np.all(gy[at_zero_t] == 0) and np.all(gt[at_zero_t] == 0)
    # A finite row with a 0 log 0 target term has the analytic gradients.
    p = np.exp(np.array([0.0, 0.0, 1.0]) - np.log(2 + np.e))
    q = np.array([1.0, 0.0, np.e]) / (1 + np.e)
    np.testing.assert_allclose(gx[2], p - q, rtol=1e-5)
    assert gy[2, 1] == 0


def test_kl_nan_stays_in_its_row_and_masks_hide_everything():
    x = np.array([[NAN, 0.0, 1.0], [0.0, 1.0, 2.0], [0.0, 1.0, INF], [0.0, 1.0, 2.0]], np.float32)
    y = np.array([[0.0, 0.0, 1.0], [0.0, NAN, 1.0], [1.0, 0.0, NAN], [0.0, 2.0, 1.0]], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]], bool)
    # Rows 4 and 5: a fully masked row (x holding NaN, y holding NaN) and row 3 again, in the same
    # batch (one compiled program; a NaN row must not leak into its neighbours either way).
    x = np.concatenate([x, x[[0, 3]]])
    y = np.concatenate([y, y[[1, 3]]])
    mask = np.concatenate([mask, np.array([[0, 0, 0], [1, 1, 1]], bool)])
    kl, (gx, gy) = values_and_grads(_kl_where, x, y, mask, n_diff=2)
    assert np.isnan(kl[0]) and np.isnan(kl[1])
    assert np.all(np.isnan(gx[:2]).any(axis=1)) and np.all(np.isnan(gy[:2]).any(axis=1))
    expected = ref_kl(np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(kl[2], expected[0], rtol=1e-6)  # masked inf/NaN change nothing
    assert np.all(np.isfinite(gx[2:])) and np.all(np.isfinite(gy[2:]))
    assert gx[2, 2] == 0 and gy[2, 2] == 0
    # A fully masked row is 0 with zero gradients.
    assert kl[4] == 0 and np.all(gx[4] == 0) and np.all(gy[4] == 0)
    np.testing.assert_allclose(kl[5], kl[3], rtol=1e-6)
    np.testing.assert_allclose(kl[3], ref_kl(x[3], y[3]), rtol=8 * F32_EPS)


def test_same_distribution_has_zero_kl_and_zero_gradients():
    x = pad_to(rand((3, 8), seed=29), KL_XY_SHAPE, -1e4)  # the padding: p = q = 0 in float32
    kl, (gx, gy) = values_and_grads(kl_divergence, x, x)
    assert np.all(kl == 0) and np.all(gx == 0) and np.all(gy == 0)


def test_debug_nans_and_infs_see_nothing_on_finite_inputs():
    x = rand((3, 16), seed=30, scale=3.0)
    x[0, :3] = 1e30
    x[1, :2] = [3e38, -3e38]
    y = x + rand((3, 16), seed=31, scale=1e-3)
    t = np.array([[0.5], [1.0], [2.0]], np.float32)
    f = lambda a, b, s: jnp.sum(kl_divergence(a, b, t=s)) + jnp.sum(entropy(a, t=s))
    with jax.debug_nans(True), jax.debug_infs(True):
        value, grads = jax.value_and_grad(f, argnums=(0, 1, 2))(x, y, t)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


# --------------------------------------------------------------------------------------------------
# Properties.
# --------------------------------------------------------------------------------------------------

_FINITE = st.floats(-50, 50, width=32)


@st.composite
def _logit_pairs(draw):
    n = draw(st.sampled_from([1, 7]))
    # 5 rows: at n = 7 the programs are those of test_*_matches_mpmath's first case (one compile).
    x = draw(hnp.arrays(np.float32, (5, n), elements=_FINITE))
    y = draw(hnp.arrays(np.float32, (5, n), elements=_FINITE))
    t = draw(st.sampled_from([0.1, 0.9, 7.0]))  # t = 1 takes another path, tested above
    return x, y, np.float32(t)


@given(_logit_pairs())
def test_property_kl_is_nonnegative_and_zero_on_itself(pair):
    x, y, t = pair
    kl = np.asarray(kl_divergence(x, y, t=t))
    assert np.all(kl >= 0) and np.all(np.isfinite(kl))
    assert np.all(np.asarray(kl_divergence(x, x, t=t)) == 0)


@given(_logit_pairs())
def test_property_entropy_between_zero_and_log_n(pair):
    x, _, t = pair
    h = np.asarray(entropy(x, t=t))
    assert np.all(h >= 0)
    assert np.all(h <= np.log(x.shape[-1]) * (1 + 4 * F32_EPS))


# --------------------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------------------


def test_errors_name_the_function_and_argument():
    with pytest.raises(ValueError, match="kl_divergence: target_logits of shape"):
        kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(TypeError, match="kl_divergence: target_logits"):
        kl_divergence(jnp.zeros(3), "abc")
    with pytest.raises(ValueError, match="entropy: t must be >= 0"):
        entropy(jnp.zeros(3), t=-1.0)
    with pytest.raises(ValueError, match="kl_divergence: where of shape"):
        kl_divergence(jnp.zeros((2, 3)), jnp.zeros((2, 3)), where=jnp.ones((3, 3), bool))
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        entropy(jnp.zeros((2, 3)), 2)


# --------------------------------------------------------------------------------------------------
# The fast path (jaxsoft._divergences_fast): taken on regular rows, exact there, no scratch memory.
# --------------------------------------------------------------------------------------------------


def test_fast_path_takes_regular_rows_and_is_exact_there():
    from jaxsoft import _divergences_fast as fast

    # Near-one-hot rows (entropy to a few ulps) and nearly equal distributions (KL ~ 1e-10):
    # the accuracy targets must hold on the fast path itself, not only through the exact one.
    rows = np.array([[0.0, -30.0, -40.0, -35.0], [0.0, -20.0, -21.0, -50.0]], np.float32)
    rng = np.random.default_rng(32)
    x = (rng.normal(size=(2, 1000)) * 2).astype(np.float32)
    y = (x + rng.normal(size=(2, 1000)) * np.sqrt(2e-10)).astype(np.float32)
    edge = np.array([[INF, 0.0], [-INF, -INF], [NAN, 0.0], [0.0, 1.0]], np.float32)

    @jax.jit  # every kernel below in one compiled program
    def kernels(rows, x, y, edge):
        return (
            fast.entropy_stats(rows, None, None),
            fast.entropy_value(rows, None, None),
            fast.kl_stats(x, y, None, None),
            fast.entropy_stats(edge, None, None),
        )

    st, (h_fwd, bad_fwd), kst, edge_stats = kernels(rows, x, y, edge)
    assert not np.any(st.bad)
    assert not np.any(bad_fwd)
    for got, fwd, row in zip(np.asarray(st.h)[:, 0], np.asarray(h_fwd)[:, 0], rows):
        assert ulps(got, mp_entropy_row(row)) <= 4
        assert ulps(fwd, mp_entropy_row(row)) <= 4
    assert not np.any(kst.bad)
    expected = ref_kl(x, y)
    np.testing.assert_allclose(np.asarray(kst.kl)[:, 0], expected, rtol=1e-4)
    # Edge rows are flagged for the exact path.
    assert list(np.asarray(edge_stats.bad)[:, 0]) == [
        True,
        True,
        True,
        False,
    ]


def test_fast_kernels_need_no_full_size_scratch():
    from jaxsoft import _divergences_fast as fast

    def temp_bytes(f, *args):
        return jax.jit(f).lower(*args).compile().memory_analysis().temp_size_in_bytes

    batch, n = 64, 2048
    x = jax.ShapeDtypeStruct((batch, n), jnp.float32)
    # Per-row bookkeeping only (max, sums, flags): no (batch, n) temporary, which would be 512 KiB.
    allowance = 64 * batch
    assert temp_bytes(lambda a: fast.entropy_forward(a, None, None)[0], x) <= allowance
    many_rows = jax.ShapeDtypeStruct((4096, 256), jnp.float32)  # the one-loop kernel
    assert temp_bytes(lambda a: fast.entropy_forward(a, None, None)[0], many_rows) <= 64 * 4096
    assert temp_bytes(lambda a, b: fast.kl_stats(a, b, None, None).kl, x, x) <= allowance
