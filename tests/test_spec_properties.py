"""SPEC sections 1-4: one test (or a parametrized family) per numbered statement."""

from __future__ import annotations

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
    x = jnp.asarray(_rng().normal(size=(4,) + shape if batched else shape) * 5, jnp.float32)
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
    x = jnp.asarray(_rng().normal(size=(50, 9)), jnp.float32)
    p = js.softargmax(x, t=0.3)
    order = jnp.argsort(x, axis=-1)
    p_sorted = jnp.take_along_axis(p, order, axis=-1)
    assert bool(jnp.all(jnp.diff(p_sorted, axis=-1) >= 0))


@pytest.mark.parametrize("c", [-1e4, 3.0, 1e30])
def test_1_3_shift_invariance_and_no_overflow(c):
    x = jnp.asarray(_rng().normal(size=(6, 8)), jnp.float32) * 5
    base = js.softargmax(x)
    shifted = js.softargmax(x + jnp.float32(c))
    assert bool(jnp.all(jnp.isfinite(shifted)))
    if abs(c) < 1e5:
        np.testing.assert_allclose(shifted, base, rtol=2e-3, atol=1e-6)


def test_1_3_huge_inputs_are_exact():
    x = jnp.array([1e30, 1e30, -1e30], jnp.float32)
    np.testing.assert_array_equal(js.softargmax(x), [0.5, 0.5, 0.0])
    np.testing.assert_allclose(js.logsumexp(x), 1e30, rtol=1e-7)
    np.testing.assert_allclose(js.log_softargmax(x)[:2], -np.log(2), rtol=1e-7)


@pytest.mark.parametrize("y", [-50.0, -3.0, 0.0, 0.7, 12.0, 80.0])
def test_1_4_two_class_softargmax_is_sigmoid(y):
    p = js.softargmax(jnp.array([y, 0.0], jnp.float32))
    np.testing.assert_allclose(p[0], jax.nn.sigmoid(jnp.float32(y)), rtol=2e-7, atol=1e-30)


def test_1_5_jacobian_is_symmetric_rows_sum_zero_psd(x64):
    x = jnp.asarray(_rng().normal(size=(3, 6)))
    for t in [0.1, 1.0, 7.0]:
        jac = js.softargmax_jacobian(x, t=t)
        np.testing.assert_allclose(jac, jnp.swapaxes(jac, -1, -2), atol=1e-15)
        np.testing.assert_allclose(jac.sum(-1), 0.0, atol=1e-14)
        eig = np.linalg.eigvalsh(np.asarray(jac))
        assert eig.min() > -1e-13
        np.testing.assert_allclose(jac @ np.ones(6), 0.0, atol=1e-14)


def _distance_to_uniform(p):
    return jnp.abs(p - 1.0 / p.shape[-1]).sum(-1)


def test_1_6_larger_temperature_is_closer_to_uniform_with_limits():
    x = jnp.array([[2.0, -1.0, 0.5, 0.5, 3.0]], jnp.float32)
    ts = jnp.logspace(-3, 4, 40)
    p = jax.vmap(lambda t: js.softargmax(x, t=t))(ts)[:, 0]
    d = _distance_to_uniform(p)
    assert bool(jnp.all(jnp.diff(d) <= 1e-6))
    np.testing.assert_allclose(p[-1], 0.2, atol=1e-3)  # t -> inf: uniform
    np.testing.assert_allclose(p[0], [0, 0, 0, 0, 1], atol=1e-6)  # t -> 0: one-hot


def test_1_6_t_zero_is_hard_argmax_with_ties_split():
    x = jnp.array([[1.0, 3.0, 3.0, -2.0], [5.0, 1.0, 0.0, 4.0]])
    np.testing.assert_array_equal(js.softargmax(x, t=0.0), [[0, 0.5, 0.5, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(js.logsumexp(x, axis=-1, t=0.0), [3.0, 5.0])
    np.testing.assert_allclose(
        js.log_softargmax(x, t=0.0),
        [[-np.inf, -np.log(2), -np.log(2), -np.inf], [0, -np.inf, -np.inf, -np.inf]],
    )


def test_1_6_t_to_zero_limit_matches_t_zero():
    x = jnp.array([1.0, 3.0, 3.0, -2.0])
    np.testing.assert_allclose(js.softargmax(x, t=1e-4), js.softargmax(x, t=0.0), atol=1e-6)
    np.testing.assert_allclose(js.softargmax_mean(x, t=1e-4), 3.0, rtol=1e-6)


def test_1_6_t_to_inf_is_uniform_over_S():
    x = jnp.array([1.0, 3.0, -jnp.inf, -2.0])
    w = jnp.array([True, True, True, False])
    np.testing.assert_allclose(js.softargmax(x, t=1e6, where=w), [0.5, 0.5, 0.0, 0.0], atol=1e-5)


def test_1_6_entropy_is_non_decreasing_in_t():
    x = jnp.asarray(_rng().normal(size=(5, 10)) * 3, jnp.float32)
    ts = jnp.logspace(-2, 3, 60)

    def entropy(t):
        p = js.softargmax(x, t=t)
        return -jnp.sum(jnp.where(p > 0, p * js.log_softargmax(x, t=t), 0.0), -1)

    h = jax.vmap(entropy)(ts)
    assert bool(jnp.all(jnp.diff(h, axis=0) >= -1e-5))
    assert bool(jnp.all(h <= jnp.log(10.0) + 1e-5))


@pytest.mark.parametrize("t", [0.05, 0.7, 20.0])
def test_1_7_derivative_in_t(x64, t):
    x = jnp.asarray(_rng().normal(size=(4, 6)))
    dp_dt = jax.jacfwd(lambda t: js.softargmax(x, t=t))(t)
    p = js.softargmax(x, t=t)
    expected = -p * (x - jnp.sum(p * x, -1, keepdims=True)) / t**2
    np.testing.assert_allclose(dp_dt, expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(
        jax.jacrev(lambda t: js.softargmax(x, t=t))(t), expected, rtol=1e-10, atol=1e-14
    )


# ---------------------------------------------------------------------------------------------- 2


@pytest.mark.parametrize("t", [1e-3, 0.5, 1.0, 30.0])
def test_2_1_smooth_maximum_bounds(t):
    x = jnp.asarray(_rng().normal(size=(20, 7)) * 4, jnp.float32)
    w = jnp.asarray(_rng().random(size=(20, 7)) < 0.8).at[:, 0].set(True)
    lse = js.logsumexp(x, axis=-1, t=t, where=w)
    mx = jnp.max(jnp.where(w, x, -jnp.inf), -1)
    size = w.sum(-1)
    assert bool(jnp.all(lse >= mx))
    assert bool(jnp.all(lse <= mx + t * jnp.log(size) * (1 + 1e-6) + 1e-6))


def test_2_1_logsumexp_tends_to_max():
    x = jnp.array([0.3, 2.0, -1.0])
    np.testing.assert_allclose(js.logsumexp(x, t=1e-3), 2.0, rtol=1e-6)
    assert float(js.logsumexp(x, t=0.0)) == 2.0


def test_2_2_shift_equivariance_and_monotone():
    x = jnp.asarray(_rng().normal(size=(5, 8)), jnp.float32)
    for a in [-100.0, 2.5, 1e3]:
        np.testing.assert_allclose(
            js.logsumexp(x + a, -1), js.logsumexp(x, -1) + a, rtol=1e-6, atol=1e-4
        )
    bumped = x.at[:, 3].add(0.5)
    assert bool(jnp.all(js.logsumexp(bumped, -1) > js.logsumexp(x, -1)))


@pytest.mark.parametrize("a", [-7.0, 0.0, 1e6])
def test_2_3_logsumexp_does_not_keep_f_aaa_equal_a(a):
    x = jnp.full((3,), a, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    np.testing.assert_allclose(js.logsumexp(x), a + np.log(3.0), rtol=1e-7)


@pytest.mark.parametrize("t", [0.05, 1.0, 20.0])
def test_2_4_gradient_is_softargmax_and_hessian_is_jacobian(x64, t):
    x = jnp.asarray(_rng().normal(size=(6,)))
    p = js.softargmax(x, t=t)
    np.testing.assert_allclose(jax.grad(lambda x: js.logsumexp(x, t=t))(x), p, rtol=1e-12)
    hess = jax.hessian(lambda x: js.logsumexp(x, t=t))(x)
    np.testing.assert_allclose(hess, (jnp.diag(p) - jnp.outer(p, p)) / t, rtol=1e-10, atol=1e-14)


def test_2_5_logsumexp_keeps_the_small_part(x64):
    assert float(js.logsumexp(jnp.array([0.0, -40.0]))) == pytest.approx(
        4.248354255291589e-18, rel=1e-14
    )
    assert float(jax.nn.logsumexp(jnp.array([0.0, -40.0]))) == 0.0  # the behaviour we improve on


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
def test_3_1_log_softargmax_is_x_over_t_minus_logsumexp(t):
    x = jnp.asarray(_rng().normal(size=(6, 5)), jnp.float32)
    expected = x / t - js.logsumexp(x / t, axis=-1, keepdims=True)
    np.testing.assert_allclose(js.log_softargmax(x, t=t), expected, rtol=1e-5, atol=1e-6)


def test_3_1_gradient_finite_where_p_underflows():
    x = jnp.array([0.0, -200.0, -1e4], jnp.float32)
    assert float(js.softargmax(x)[2]) == 0.0
    g = jax.jacrev(js.log_softargmax)(x)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g[2], [-1.0, 0.0, 1.0], atol=1e-6)


def test_3_2_dominant_logit_keeps_its_log_probability():
    got = js.log_softargmax(jnp.array([0.0, -30.0], jnp.float32))
    assert float(got[0]) == pytest.approx(-np.exp(-30.0), rel=1e-6)
    naive = jnp.float32(0.0) - jax.nn.logsumexp(jnp.array([0.0, -30.0], jnp.float32))
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


def test_4_1_mean_keeps_f_aaa_and_shift_and_is_below_max():
    np.testing.assert_allclose(js.softargmax_mean(jnp.full((3,), 2.5)), 2.5, rtol=1e-7)
    x = jnp.asarray(_rng().normal(size=(10, 6)), jnp.float32)
    np.testing.assert_allclose(js.softargmax_mean(x + 3.0), js.softargmax_mean(x) + 3.0, rtol=1e-5)
    assert bool(jnp.all(js.softargmax_mean(x, t=0.5) <= x.max(-1)))
    assert bool(jnp.all(js.softargmax_mean(x) <= js.logsumexp(x, axis=-1)))


@pytest.mark.parametrize("t", [0.05, 1.0, 20.0])
def test_4_2_mean_gradient(x64, t):
    x = jnp.asarray(_rng().normal(size=(7,)))
    p = js.softargmax(x, t=t)
    expected = p * (1 + (x - jnp.dot(p, x)) / t)
    np.testing.assert_allclose(
        jax.grad(lambda x: js.softargmax_mean(x, t=t))(x), expected, rtol=1e-10, atol=1e-14
    )


def test_4_2_mean_gradient_survives_a_huge_shared_offset():
    x = jnp.array([0.0, 1.0, 2.0], jnp.float32)
    g0 = jax.grad(js.softargmax_mean)(x)
    g1 = jax.grad(js.softargmax_mean)(x + 1e6)
    np.testing.assert_allclose(g1, g0, atol=1e-6)
