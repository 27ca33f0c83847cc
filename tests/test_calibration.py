"""Tests for jaxsoft.calibration: fit_temperature and expected_calibration_error."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.special

from jaxsoft._functions import softargmax
from jaxsoft.calibration import expected_calibration_error, fit_temperature


def nll64(x, y, t):
    z = np.asarray(x, np.float64) / t
    return float(
        np.mean(scipy.special.logsumexp(z, axis=-1) - np.take_along_axis(z, y[:, None], -1)[:, 0])
    )


def fit_reference(x, y):
    return scipy.optimize.minimize_scalar(
        lambda s: nll64(x, y, s), bounds=(1e-2, 1e2), method="bounded", options={"xatol": 1e-9}
    ).x


def synthetic(seed, n=400, k=10, scale=4.0, right=0.7):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, k)) * scale).astype(np.float32)
    y = np.where(rng.random(n) < right, x.argmax(1), rng.integers(0, k, n)).astype(np.int32)
    return x, y


def ece_reference(probs, labels, n_bins):
    """Guo et al.'s ECE, written as the loop over bins (lo, hi]."""
    probs = np.asarray(probs, np.float64)
    conf, pred = probs.max(-1), probs.argmax(-1)
    correct = pred == labels
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        inside = (conf > lo) & (conf <= hi) if b else (conf >= lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("seed, scale", [(0, 4.0), (1, 0.5)])
def test_fit_temperature_matches_a_float64_scalar_minimiser(seed, scale):
    x, y = synthetic(seed, scale=scale)
    t = float(fit_temperature(x, y))
    np.testing.assert_allclose(t, fit_reference(x, y), rtol=1e-4)
    # First-order optimality, checked in float64 on both sides.
    assert nll64(x, y, t) <= min(nll64(x, y, t * 1.01), nll64(x, y, t / 1.01))


def test_fit_temperature_scales_with_the_logits():
    x, y = synthetic(2)
    t1, t3 = float(fit_temperature(x, y)), float(fit_temperature(3 * x, y))
    np.testing.assert_allclose(t3, 3 * t1, rtol=1e-4)


def test_fit_temperature_axis_and_where():
    x, y = synthetic(3)
    t = float(fit_temperature(x, y))
    np.testing.assert_allclose(float(fit_temperature(x.T, y, axis=0)), t, rtol=1e-5)
    # Masking class 9 out equals dropping its column (labels moved off it).
    y = np.where(y == 9, 0, y)
    where = np.ones_like(x, bool)
    where[:, 9] = False
    t_masked = float(fit_temperature(x, y, where=where))
    np.testing.assert_allclose(t_masked, fit_reference(x[:, :9], y), rtol=1e-4)


def test_fit_temperature_stays_in_bounds():
    x, y = synthetic(4, scale=0.01, right=1.0)  # nearly uniform yet always right
    t = float(fit_temperature(x, y, bounds=(0.05, 20.0)))
    assert 0.05 <= t <= 20.0
    assert t == pytest.approx(0.05, rel=1e-3) or nll64(x, y, t) <= nll64(x, y, 0.05)


def test_fit_temperature_rejects_bad_arguments():
    x, y = synthetic(5)
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(x, y, bounds=(1.0, 0.5))
    with pytest.raises(TypeError, match="integer"):
        fit_temperature(x, y.astype(np.float32))
    with pytest.raises(ValueError, match="labels of shape"):
        fit_temperature(x, y[:5])


@pytest.mark.parametrize("n_bins", [1, 15])
def test_ece_matches_the_loop_over_bins(n_bins):
    x, y = synthetic(6, n=300, scale=2.0)
    probs = np.asarray(softargmax(x))
    got = float(expected_calibration_error(probs, y, n_bins=n_bins))
    np.testing.assert_allclose(got, ece_reference(probs, y, n_bins), rtol=1e-5, atol=1e-7)


def test_ece_of_a_calibrated_predictor_is_small_and_of_an_overconfident_one_large():
    rng = np.random.default_rng(7)
    n, k = 20000, 4
    probs = rng.dirichlet(np.ones(k), size=n)
    labels = np.array([rng.choice(k, p=p) for p in probs])  # drawn from the predicted distribution
    assert float(expected_calibration_error(probs.astype(np.float32), labels)) < 0.02
    sharp = np.eye(k)[probs.argmax(-1)].astype(np.float32)  # always 100% sure
    acc = np.mean(probs.argmax(-1) == labels)
    np.testing.assert_allclose(float(expected_calibration_error(sharp, labels)), 1 - acc, rtol=1e-5)


def test_ece_rejects_bad_arguments():
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.ones((2, 2)) / 2, np.array([0, 1]), n_bins=0)
    with pytest.raises(ValueError, match="labels of shape"):
        expected_calibration_error(np.ones((2, 2)) / 2, np.array([0, 1, 1]))


# --------------------------------------------------------------------------------------------------
# Regression tests for issue 12 (defects 4 and 12), named for the behaviour.
# --------------------------------------------------------------------------------------------------


def _many_probs(n=50_000, k=10, seed=8):
    rng = np.random.default_rng(seed)
    probs = np.asarray(softargmax(3 * rng.normal(size=(n, k)).astype(np.float32)))
    return probs, rng.integers(0, k, n)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ece_of_low_precision_probabilities_is_accumulated_in_float32(dtype):
    """Defect 4: 50k examples gave 0.052 (bf16) and 0.369 (f16) where the float32 ECE is 0.43:
    the bins were summed in the input dtype. Reference: the loop over bins in float64 on the
    same rounded probabilities."""
    import jax.numpy as jnp

    probs, labels = _many_probs()
    low = jnp.asarray(probs, dtype)
    got = expected_calibration_error(low, labels)
    assert got.dtype == low.dtype
    want = ece_reference(np.asarray(low, np.float64), labels, 15)
    assert want > 0.3
    # Only the result's final rounding to bf16 (8 bits) / f16 (11 bits) remains.
    np.testing.assert_allclose(float(got), want, rtol=2**-7)


def test_ece_rejects_logits_and_non_distributions():
    """Defect 4: logits were silently accepted (ECE 3.84)."""
    logits, labels = synthetic(9, n=20)
    with pytest.raises(ValueError, match=r"\[0, 1\].*not logits"):
        expected_calibration_error(logits, labels)
    with pytest.raises(ValueError, match="sum to 1"):
        expected_calibration_error(np.full((20, 10), 0.5, np.float32), labels)
    with pytest.raises(ValueError, match="NaN"):
        expected_calibration_error(np.full((20, 10), np.nan, np.float32), labels)


def test_fit_temperature_with_nan_logits_raises_and_under_jit_returns_nan():
    """Defect 12: a NaN logit silently returned the starting point t = 1."""
    import jax

    x, y = synthetic(10, n=50)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(x, y)
    assert np.isnan(float(jax.jit(fit_temperature)(x, y)))
    # A NaN on a masked-out entry takes no part.
    where = np.ones_like(x, bool)
    where[3, 2] = False
    y = np.where(y == 2, 0, y)
    assert np.isfinite(float(fit_temperature(x, y, where=where)))


def test_fit_temperature_of_bf16_logits_matches_the_float64_fit_of_the_same_values():
    import jax.numpy as jnp

    x, y = synthetic(11)
    xb = jnp.asarray(x, jnp.bfloat16)
    t = fit_temperature(xb, y)
    assert t.dtype == jnp.float32  # computed in float32, as documented
    np.testing.assert_allclose(float(t), fit_reference(np.asarray(xb, np.float64), y), rtol=1e-4)
