"""SPEC sections 1-4: one test (or a parametrized family) per numbered statement.

Compile time: the kernel fixture runs this module twice and clears jax's caches in between, so every
distinct program compiles twice. A test's derivatives and transforms go through one module-level
``jax.jit`` (``t`` an argument, so parametrized temperatures share it) and its checks and references
are NumPy on the host, never eager ``jnp`` ops (each compiles on a new shape). The eager path of the
public functions keeps its own tests (the "plain" transform of 1.1 and the single calls below).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft as js
from tests import reference as ref

# Every test here runs under each core kernel (the "kernel" fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("kernel")


def _rng():
    """A fresh seeded generator: inputs must not depend on which tests ran before (xdist)."""
    return np.random.default_rng(0)


def _identity(f):
    return f


def _vmapped(f):
    """Map over a leading batch dimension, exercising batching rules of the custom JVPs."""

    def g(x, *args, **kwargs):
        return jax.vmap(lambda r: f(r, *args, **kwargs))(x)

    return g


def _t_jit(fn):
    """``jax.jit`` of ``fn(*args, t)`` with ``t`` traced, so one program serves every ``t``, except
    ``t = 1.0``: that one stays a Python 1.0, which the public functions take as "t not passed"
    (the unit-temperature path), exactly as an eager call with ``t=1.0`` does."""
    traced = jax.jit(fn)
    unit = jax.jit(lambda *args: fn(*args, 1.0))

    @functools.wraps(fn)
    def call(*args, t):
        return unit(*args) if t == 1.0 else traced(*args, t)

    return call


def _f32(a):
    """A float32 device array made on the host (no convert program compiled)."""
    return jnp.asarray(np.asarray(a, np.float32))


TRANSFORMS = pytest.mark.parametrize(
    "transform", [_identity, jax.jit, _vmapped], ids=["plain", "jit", "vmap"]
)


# ---------------------------------------------------------------------------------------------- 1


@TRANSFORMS
@pytest.mark.parametrize(
    "shape,axis", [((7,), -1), ((3, 5), 0), ((2, 3, 4), 1), ((2, 3, 4), (0, 2))]
)
def test_1_1_softargmax_is_a_distribution(transform, shape, axis):
    batched = transform is _vmapped
    x = _f32(_rng().normal(size=(4,) + shape if batched else shape) * 5)
    # t is an argument (a weak-typed Python float), so one compiled program serves every t.
    f = transform(lambda x, t: js.softargmax(x, axis=axis, t=t))
    for t in [0.05, 1.0, 20.0]:
        p = f(x, t)
        assert p.shape == x.shape and p.dtype == jnp.float32
        p = np.asarray(p)
        assert np.all((p >= 0) & (p <= 1)), t
        # Under vmap the per-example axis a >= 0 is axis a + 1 of the batch.
        axes = axis if isinstance(axis, tuple) else (axis,)
        red = tuple(a + 1 if batched and a >= 0 else a for a in axes)
        np.testing.assert_allclose(p.sum(axis=red), 1.0, rtol=2e-6, err_msg=f"t={t}")


def test_1_2_softargmax_is_monotone():
    x = _f32(_rng().normal(size=(50, 9)))
    p = np.asarray(js.softargmax(x, t=0.3))
    order = np.argsort(np.asarray(x), axis=-1)
    p_sorted = np.take_along_axis(p, order, axis=-1)
    assert np.all(np.diff(p_sorted, axis=-1) >= 0)


@pytest.mark.parametrize("c", [-1e4, 3.0, 1e30])
def test_1_3_shift_invariance_and_no_overflow(c):
    x = np.asarray(_rng().normal(size=(6, 8)), np.float32) * np.float32(5)
    base = js.softargmax(x)
    shifted = np.asarray(js.softargmax(x + np.float32(c)))  # the shift rounded in float32
    assert np.all(np.isfinite(shifted))
    if abs(c) < 1e5:
        np.testing.assert_allclose(shifted, base, rtol=2e-3, atol=1e-6)


@jax.jit
def _p_lse_logp(x):
    return js.softargmax(x), js.logsumexp(x), js.log_softargmax(x)


def test_1_3_huge_inputs_are_exact():
    p, lse, logp = _p_lse_logp(_f32([1e30, 1e30, -1e30]))
    np.testing.assert_array_equal(p, [0.5, 0.5, 0.0])
    np.testing.assert_allclose(lse, 1e30, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(logp)[:2], -np.log(2), rtol=1e-7)


_sigmoid = jax.jit(jax.nn.sigmoid)


@pytest.mark.parametrize("y", [-50.0, -3.0, 0.0, 0.7, 12.0, 80.0])
def test_1_4_two_class_softargmax_is_sigmoid(y):
    p = np.asarray(js.softargmax(_f32([y, 0.0])))
    np.testing.assert_allclose(p[0], _sigmoid(np.float32(y)), rtol=2e-7, atol=1e-30)


def test_1_5_jacobian_is_symmetric_rows_sum_zero_psd(x64):
    x = jnp.asarray(_rng().normal(size=(3, 6)))
    for t in [0.1, 1.0, 7.0]:
        jac = np.asarray(js.softargmax_jacobian(x, t=t))
        np.testing.assert_allclose(jac, np.swapaxes(jac, -1, -2), atol=1e-15)
        np.testing.assert_allclose(jac.sum(-1), 0.0, atol=1e-14)
        eig = np.linalg.eigvalsh(jac)
        assert eig.min() > -1e-13
        np.testing.assert_allclose(jac @ np.ones(6), 0.0, atol=1e-14)


def _distance_to_uniform(p):
    return np.abs(p - 1.0 / p.shape[-1]).sum(-1)


def test_1_6_larger_temperature_is_closer_to_uniform_with_limits():
    x = _f32([[2.0, -1.0, 0.5, 0.5, 3.0]])
    ts = _f32(np.logspace(-3, 4, 40))
    p = np.asarray(jax.vmap(lambda t: js.softargmax(x, t=t))(ts))[:, 0]
    d = _distance_to_uniform(p)
    assert np.all(np.diff(d) <= 1e-6)
    np.testing.assert_allclose(p[-1], 0.2, atol=1e-3)  # t -> inf: uniform
    np.testing.assert_allclose(p[0], [0, 0, 0, 0, 1], atol=1e-6)  # t -> 0: one-hot


@jax.jit
def _at_t(x, t):
    # t an argument, as it is of the jitted kernel in an eager call (never a folded constant)
    return (
        js.softargmax(x, t=t),
        js.logsumexp(x, axis=-1, t=t),
        js.log_softargmax(x, t=t),
    )


def test_1_6_t_zero_is_hard_argmax_with_ties_split():
    p, lse, logp = _at_t(_f32([[1.0, 3.0, 3.0, -2.0], [5.0, 1.0, 0.0, 4.0]]), 0.0)
    np.testing.assert_array_equal(p, [[0, 0.5, 0.5, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(lse, [3.0, 5.0])
    np.testing.assert_allclose(
        logp,
        [[-np.inf, -np.log(2), -np.log(2), -np.inf], [0, -np.inf, -np.inf, -np.inf]],
    )


@jax.jit
def _near_and_at_t_zero(x, t_small, t_zero):
    return (
        js.softargmax(x, t=t_small),
        js.softargmax(x, t=t_zero),
        js.softargmax_mean(x, t=t_small),
    )


def test_1_6_t_to_zero_limit_matches_t_zero():
    p_small, p_zero, mean_small = _near_and_at_t_zero(_f32([1.0, 3.0, 3.0, -2.0]), 1e-4, 0.0)
    np.testing.assert_allclose(p_small, p_zero, atol=1e-6)
    np.testing.assert_allclose(mean_small, 3.0, rtol=1e-6)


def test_1_6_t_to_inf_is_uniform_over_S():
    x = _f32([1.0, 3.0, -np.inf, -2.0])
    w = np.array([True, True, True, False])
    np.testing.assert_allclose(js.softargmax(x, t=1e6, where=w), [0.5, 0.5, 0.0, 0.0], atol=1e-5)


def _entropy(x, t):
    p = js.softargmax(x, t=t)
    return -jnp.sum(jnp.where(p > 0, p * js.log_softargmax(x, t=t), 0.0), -1)


_entropies = jax.jit(jax.vmap(_entropy, in_axes=(None, 0)))


def test_1_6_entropy_is_non_decreasing_in_t():
    x = _f32(_rng().normal(size=(5, 10)) * 3)
    h = np.asarray(_entropies(x, _f32(np.logspace(-2, 3, 60))))
    assert np.all(np.diff(h, axis=0) >= -1e-5)
    assert np.all(h <= np.log(10.0) + 1e-5)


@jax.jit
def _p_and_dp_dt(x, t):
    p_of_t = lambda t: js.softargmax(x, t=t)
    return p_of_t(t), jax.jacfwd(p_of_t)(t), jax.jacrev(p_of_t)(t)


@pytest.mark.parametrize("t", [0.05, 0.7, 20.0])
def test_1_7_derivative_in_t(x64, t):
    x = _rng().normal(size=(4, 6))
    p, dp_dt_fwd, dp_dt_rev = (np.asarray(a) for a in _p_and_dp_dt(jnp.asarray(x), t))
    expected = -p * (x - np.sum(p * x, -1, keepdims=True)) / t**2
    np.testing.assert_allclose(dp_dt_fwd, expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(dp_dt_rev, expected, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------- 2


@pytest.mark.parametrize("t", [1e-3, 0.5, 1.0, 30.0])
def test_2_1_smooth_maximum_bounds(t):
    x = np.asarray(_rng().normal(size=(20, 7)) * 4, np.float32)
    w = _rng().random(size=(20, 7)) < 0.8
    w[:, 0] = True
    lse = np.asarray(js.logsumexp(x, axis=-1, t=t, where=w))
    mx = np.max(np.where(w, x, -np.inf), -1)
    size = w.sum(-1)
    assert np.all(lse >= mx)
    # the bound in float32, as the result it bounds
    bound = mx + np.float32(t) * np.log(size, dtype=np.float32) * np.float32(1 + 1e-6)
    assert np.all(lse <= bound + np.float32(1e-6))


def test_2_1_logsumexp_tends_to_max():
    x = _f32([0.3, 2.0, -1.0])
    np.testing.assert_allclose(js.logsumexp(x, t=1e-3), 2.0, rtol=1e-6)
    assert float(js.logsumexp(x, t=0.0)) == 2.0


def test_2_2_shift_equivariance_and_monotone():
    x = np.asarray(_rng().normal(size=(5, 8)), np.float32)
    base = np.asarray(js.logsumexp(x, -1))
    for a in [-100.0, 2.5, 1e3]:
        np.testing.assert_allclose(
            js.logsumexp(x + np.float32(a), -1), base + np.float32(a), rtol=1e-6, atol=1e-4
        )
    bumped = x.copy()
    bumped[:, 3] += np.float32(0.5)
    assert np.all(np.asarray(js.logsumexp(bumped, -1)) > base)


@pytest.mark.parametrize("a", [-7.0, 0.0, 1e6])
def test_2_3_logsumexp_does_not_keep_f_aaa_equal_a(a):
    x = np.full((3,), a, np.float64 if jax.config.jax_enable_x64 else np.float32)
    np.testing.assert_allclose(js.logsumexp(x), a + np.log(3.0), rtol=1e-7)


@_t_jit
def _lse_grad_hessian_p(x, t):
    lse = lambda x: js.logsumexp(x, t=t)
    return jax.grad(lse)(x), jax.hessian(lse)(x), js.softargmax(x, t=t)


@pytest.mark.parametrize("t", [0.05, 1.0, 20.0])
def test_2_4_gradient_is_softargmax_and_hessian_is_jacobian(x64, t):
    x = jnp.asarray(_rng().normal(size=(6,)))
    grad, hess, p = (np.asarray(a) for a in _lse_grad_hessian_p(x, t=t))
    np.testing.assert_allclose(grad, p, rtol=1e-12)
    np.testing.assert_allclose(hess, (np.diag(p) - np.outer(p, p)) / t, rtol=1e-10, atol=1e-14)


_jax_nn_logsumexp = jax.jit(jax.nn.logsumexp, static_argnames=("axis", "keepdims", "return_sign"))


def test_2_5_logsumexp_keeps_the_small_part(x64):
    x = np.array([0.0, -40.0])
    assert float(js.logsumexp(x)) == pytest.approx(4.248354255291589e-18, rel=1e-14)
    assert float(_jax_nn_logsumexp(x)) == 0.0  # the behaviour we improve on


def test_2_5_float32_logsumexp_within_2_ulp():
    x = np.concatenate(
        [
            _rng().normal(size=(40, 16)) * 3,
            _rng().normal(size=(20, 16)) * 30 - 50,
            np.tile([[0.0, -20.0]], (1, 8)),
        ]
    ).astype(np.float32)
    got = np.asarray(js.logsumexp(jnp.asarray(x), axis=-1))
    err = ref.ulp_error(got, ref.logsumexp(x))
    assert err.max() <= 2.0, err.max()


# ---------------------------------------------------------------------------------------------- 3


@pytest.mark.parametrize("t", [0.3, 1.0, 4.0])
@_t_jit
def _logp_and_lse_of_scaled(x, t):
    # logsumexp of x / t at the unit temperature: the right-hand side of the identity
    return js.log_softargmax(x, t=t), js.logsumexp(x / t, axis=-1, keepdims=True)


@pytest.mark.parametrize("t", [0.3, 1.0, 4.0])
def test_3_1_log_softargmax_is_x_over_t_minus_logsumexp(t):
    x = np.asarray(_rng().normal(size=(6, 5)), np.float32)
    logp, lse = (np.asarray(a) for a in _logp_and_lse_of_scaled(x, t=t))
    expected = x / np.float32(t) - lse
    np.testing.assert_allclose(logp, expected, rtol=1e-5, atol=1e-6)


@jax.jit
def _p_and_logp_jacobian(x):
    return js.softargmax(x), jax.jacrev(js.log_softargmax)(x)


def test_3_1_gradient_finite_where_p_underflows():
    p, g = (np.asarray(a) for a in _p_and_logp_jacobian(_f32([0.0, -200.0, -1e4])))
    assert float(p[2]) == 0.0
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g[2], [-1.0, 0.0, 1.0], atol=1e-6)


def test_3_2_dominant_logit_keeps_its_log_probability():
    x = np.array([0.0, -30.0], np.float32)
    got = np.asarray(js.log_softargmax(x))
    assert float(got[0]) == pytest.approx(-np.exp(-30.0), rel=1e-6)
    naive = np.float32(0.0) - np.asarray(_jax_nn_logsumexp(x))
    assert float(naive) == 0.0  # 100% relative error in the naive form


def test_3_2_log_softargmax_within_4_ulp_relative():
    # Logits on a 2^-12 grid: every difference x_j - m is exact in float32, so the error
    # measured is the algorithm's own (exp, the sum, log1p), including log p near -1e-13.
    grid = np.round(_rng().normal(size=(200, 3)) * 4 * 4096) / 4096
    x = np.concatenate(
        [
            np.array(
                [[0.0, -30.0, -40.0], [0.0, -25.0, -31.0], [5.0, -20.0, 4.0], [1.0, 1.0, -28.0]]
            ),
            grid,
            grid - 25.0 * (np.arange(3) > 0),  # one dominant logit per row: log p_0 ~ -1e-11
        ]
    ).astype(np.float32)
    got = np.asarray(js.log_softargmax(jnp.asarray(x)))
    err = ref.ulp_error(got, ref.log_softargmax(x))
    assert err.max() <= 4.0, err.max()


def test_3_2_log_softargmax_arbitrary_float32_within_8_ulp():
    # For arbitrary float32 logits x_j - m is itself rounded (half an ulp of |x_j - m|), and
    # exp turns that into a relative error of |x_j - m| * 2^-25 in the dominant log p: the
    # float64 reference sees the exact difference. That costs up to ~4 more ulp.
    x = (_rng().normal(size=(2000, 3)) * 4).astype(np.float32)
    got = np.asarray(js.log_softargmax(jnp.asarray(x)))
    err = ref.ulp_error(got, ref.log_softargmax(x))
    assert err.max() <= 8.0, err.max()


# ---------------------------------------------------------------------------------------------- 4


@jax.jit
def _means(aaa, x, x_shifted, t):
    return (
        js.softargmax_mean(aaa),
        js.softargmax_mean(x_shifted),
        js.softargmax_mean(x),
        js.softargmax_mean(x, t=t),
        js.logsumexp(x, axis=-1),
    )


def test_4_1_mean_keeps_f_aaa_and_shift_and_is_below_max():
    x = np.asarray(_rng().normal(size=(10, 6)), np.float32)
    aaa, shifted, mean, mean_half, lse = (
        np.asarray(a) for a in _means(_f32(np.full((3,), 2.5)), x, x + np.float32(3.0), 0.5)
    )
    np.testing.assert_allclose(aaa, 2.5, rtol=1e-7)
    np.testing.assert_allclose(shifted, mean + np.float32(3.0), rtol=1e-5)
    assert np.all(mean_half <= x.max(-1))
    assert np.all(mean <= lse)


@_t_jit
def _mean_grad_and_p(x, t):
    return jax.grad(lambda x: js.softargmax_mean(x, t=t))(x), js.softargmax(x, t=t)


@pytest.mark.parametrize("t", [0.05, 1.0, 20.0])
def test_4_2_mean_gradient(x64, t):
    x = _rng().normal(size=(7,))
    grad, p = (np.asarray(a) for a in _mean_grad_and_p(jnp.asarray(x), t=t))
    expected = p * (1 + (x - np.dot(p, x)) / t)
    np.testing.assert_allclose(grad, expected, rtol=1e-10, atol=1e-14)


_mean_grad = jax.jit(jax.grad(js.softargmax_mean))


def test_4_2_mean_gradient_survives_a_huge_shared_offset():
    x = np.array([0.0, 1.0, 2.0], np.float32)
    g0 = _mean_grad(x)
    g1 = _mean_grad(x + np.float32(1e6))
    np.testing.assert_allclose(g1, g0, atol=1e-6)
