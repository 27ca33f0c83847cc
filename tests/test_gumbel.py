"""gumbel_softargmax: the sampling distribution, its derivatives, transforms and edges."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxsoft.gumbel import gumbel_softargmax

KEY = jax.random.key(20240501)
LOGITS = np.array([1.0, 0.0, -1.0, 2.0, 0.5])
N_DRAWS = 20_000


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def _softmax64(x):
    """The categorical probabilities, in float64 NumPy: independent of jaxsoft."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


def _chi2_pvalue(counts, probs):
    """Pearson's chi-square goodness of fit; the p-value from mpmath's regularised upper gamma."""
    counts = np.asarray(counts, np.float64)
    expected = counts.sum() * np.asarray(probs, np.float64)
    stat = float(np.sum((counts - expected) ** 2 / expected))
    df = len(counts) - 1
    return float(mpmath.gammainc(df / 2, stat / 2, mpmath.inf, regularized=True))


def _draws(logits):
    """``N_DRAWS`` copies of ``logits``: one call draws them all, with independent noise per row."""
    return jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (N_DRAWS, len(logits)))


def _hard_counts(key, logits, **kw):
    y = np.asarray(gumbel_softargmax(key, _draws(logits), hard=True, **kw))
    return y.sum(axis=0), y


# ----------------------------------------------------------------------------------------------
# The sampling distribution
# ----------------------------------------------------------------------------------------------


def test_hard_samples_follow_softargmax_of_the_logits_chi_square():
    counts, y = _hard_counts(KEY, LOGITS)
    assert np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)
    assert _chi2_pvalue(counts, _softmax64(LOGITS)) > 1e-3


def test_chi_square_test_has_power_against_a_tempered_distribution():
    # Without this, a high p-value could come from a test too weak to reject anything.
    counts, _ = _hard_counts(KEY, LOGITS)
    assert _chi2_pvalue(counts, _softmax64(LOGITS / 2)) < 1e-6
    assert _chi2_pvalue(counts, _softmax64(LOGITS * 1.2)) < 1e-6


@pytest.mark.parametrize("t", [0.0, 0.1, 10.0])
def test_hard_sample_at_a_key_does_not_depend_on_t(t):
    batch = _draws(LOGITS)
    ref = gumbel_softargmax(KEY, batch, t=1.0, hard=True)
    np.testing.assert_array_equal(gumbel_softargmax(KEY, batch, t=t, hard=True), ref)


def test_soft_sample_argmax_is_the_hard_sample():
    batch = _draws(LOGITS)
    soft = gumbel_softargmax(KEY, batch, t=0.7)
    hard = gumbel_softargmax(KEY, batch, t=0.7, hard=True)
    np.testing.assert_array_equal(np.argmax(soft, axis=1), np.argmax(hard, axis=1))


def test_temperature_divides_logits_and_noise_together(x64):
    # softargmax((x + g)/t): halving t squares the unnormalised sample, at the same key.
    x = jnp.asarray(LOGITS)
    y1 = np.asarray(gumbel_softargmax(KEY, x, t=1.0))
    y_half = np.asarray(gumbel_softargmax(KEY, x, t=0.5))
    np.testing.assert_allclose(y_half, y1**2 / np.sum(y1**2), rtol=1e-12)


def test_neg_inf_logits_are_never_sampled():
    logits = np.array([0.5, -np.inf, 0.0, -np.inf, 1.0])
    counts, _ = _hard_counts(KEY, logits)
    assert counts[1] == 0 and counts[3] == 0
    keep = np.isfinite(logits)
    assert _chi2_pvalue(counts[keep], _softmax64(logits[keep])) > 1e-3
    soft = gumbel_softargmax(KEY, _draws(logits), t=5.0)
    assert np.all(soft[:, 1] == 0) and np.all(soft[:, 3] == 0)


@pytest.mark.parametrize("fill", [1e30, np.inf, np.nan, -np.inf])
def test_masked_entries_are_never_sampled_whatever_their_value(fill):
    logits = np.array([0.5, fill, 0.0, fill, 1.0])
    where = np.array([True, False, True, False, True])
    counts, y = _hard_counts(KEY, logits, where=where)
    assert not np.any(np.isnan(y))
    assert counts[1] == 0 and counts[3] == 0
    assert _chi2_pvalue(counts[where], _softmax64(logits[where])) > 1e-3
    soft = np.asarray(gumbel_softargmax(KEY, _draws(logits), t=5.0, where=where))
    assert np.all(soft[:, [1, 3]] == 0) and not np.any(np.isnan(soft))


def test_pos_inf_logits_share_the_draws_uniformly():
    logits = np.array([3.0, np.inf, 0.0, np.inf, np.inf])
    counts, y = _hard_counts(KEY, logits)
    assert counts[0] == 0 and counts[2] == 0 and not np.any(np.isnan(y))
    assert _chi2_pvalue(counts[[1, 3, 4]], np.full(3, 1 / 3)) > 1e-3
    soft = np.asarray(gumbel_softargmax(KEY, _draws(logits)))
    assert np.all(soft[:, [0, 2]] == 0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Derivatives
# ----------------------------------------------------------------------------------------------


def test_soft_sample_gradients_check_numerically(x64):
    x = jnp.asarray(LOGITS)
    w = jnp.linspace(-1.0, 2.0, 5)

    # Jitted: check_grads calls f many times, and eagerly each op would compile on its own.
    @jax.jit
    def f(x, t):
        return jnp.sum(w * gumbel_softargmax(KEY, x, t=t))

    check_grads(f, (x, 0.8), order=2, modes=("rev",))


def test_jacobians_are_softargmax_at_the_sample_and_straight_through_shares_them(x64):
    x, t = jnp.asarray(LOGITS), 0.6

    def sample(x, t, hard=False):
        return gumbel_softargmax(KEY, x, t=t, hard=hard)

    @jax.jit  # the samples and both Jacobians in one compiled program
    def samples_and_jacobians(x, t):
        jx, jt = jax.jacfwd(sample, argnums=(0, 1))(x, t)
        # Straight-through, in reverse mode (the soft sample's reverse mode is check_grads').
        hx, ht = jax.jacrev(lambda x, t: sample(x, t, True), argnums=(0, 1))(x, t)
        return sample(x, t), sample(x, t, True), jx, jt, hx, ht

    y, y_hard, jx, jt, hx, ht = samples_and_jacobians(x, t)
    y = np.asarray(y)
    jx_expected = (np.diag(y) - np.outer(y, y)) / t
    # dy/dt = -y (log y - <y, log y>) / t, as the perturbed logits are t log y up to a constant.
    log_y = np.log(y)
    jt_expected = -y * (log_y - np.dot(y, log_y)) / t

    np.testing.assert_allclose(jx, jx_expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(jt, jt_expected, rtol=1e-10, atol=1e-15)

    one_hot = np.zeros(5)
    one_hot[np.argmax(y)] = 1.0
    np.testing.assert_array_equal(y_hard, one_hot)
    np.testing.assert_allclose(hx, jx_expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(ht, jt_expected, rtol=1e-10, atol=1e-15)


# One batch of edge rows, evaluated in one call, so a NaN or an empty row is also checked not to
# leak into its neighbours' values or gradients.
EDGE_LOGITS = np.array(
    [
        [0.5, -np.inf, 0.0, 1.0, -0.5],  # 0: a -inf entry
        [0.5, np.nan, 0.0, 1.0, 1e30],  # 1: NaN and a huge value, both masked
        [-np.inf] * 5,  # 2: all -inf
        [1.0, 2.0, 3.0, 4.0, 5.0],  # 3: fully masked
        [0.0, np.nan, 1.0, 2.0, 3.0],  # 4: a NaN that takes part
        LOGITS,  # 5: t = 0
    ]
)
EDGE_WHERE = np.ones((6, 5), bool)
EDGE_WHERE[1, [1, 4]] = False
EDGE_WHERE[3] = False
EDGE_T = np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.0], np.float32)
EDGE_W = np.arange(30, dtype=np.float32).reshape(6, 5) / 10


@functools.partial(jax.jit, static_argnames="hard")
def _edge_values_and_gradients(x, t, *, hard):
    """The samples, the gradients of a weighted sum of them, and the hard samples at t = 1/2."""

    def sample(x, t):
        return gumbel_softargmax(KEY, x, t=t, hard=hard, where=EDGE_WHERE)

    gx, gt = jax.grad(lambda x, t: jnp.sum(EDGE_W * sample(x, t)), argnums=(0, 1))(x, t)
    t_half = jnp.full(6, 0.5, jnp.float32)
    hard_at_half = gumbel_softargmax(KEY, x, t=t_half, hard=True, where=EDGE_WHERE)
    return sample(x, t), gx, gt, hard_at_half


@pytest.mark.parametrize("hard", [False, True])
def test_edge_rows_values_and_gradients(hard):
    x, t = jnp.asarray(EDGE_LOGITS, jnp.float32), jnp.asarray(EDGE_T)
    y, gx, gt, hard_at_half = map(np.asarray, _edge_values_and_gradients(x, t, hard=hard))
    ok = [0, 1, 5]
    assert np.all(np.isfinite(y[ok])) and np.allclose(y[ok].sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.isfinite(gx[ok])) and np.all(np.isfinite(gt[ok]))
    # -inf and masked entries: never chosen, no gradient.
    assert y[0, 1] == 0 and gx[0, 1] == 0 and np.any(gx[0] != 0)
    assert np.all(y[1, [1, 4]] == 0) and np.all(gx[1, [1, 4]] == 0) and np.any(gx[1] != 0)
    # Nothing to sample: all 0, zero gradient.
    np.testing.assert_array_equal(y[2:4], 0)
    np.testing.assert_array_equal(gx[2:4], 0)
    np.testing.assert_array_equal(gt[2:4], 0)
    # A NaN that takes part makes its own row NaN, and only that row.
    assert np.all(np.isnan(y[4]))
    # t = 0: the one-hot of the hard sample (the same at any t), with zero gradient in x.
    np.testing.assert_array_equal(y[5], hard_at_half[5])
    assert set(y[5].tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(gx[5], 0)


X_BATCH = np.array([[1.0, 0.0, -1.0, 2.0], [0.3, -0.2, 0.1, 0.0], [5.0, 5.0, -5.0, 0.0]])


@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("transform", ["jit", "vmap"])
def test_jit_and_vmap_agree_with_plain_calls(transform, hard):
    keys = jax.random.split(KEY, len(X_BATCH))
    x = jnp.asarray(X_BATCH, jnp.float32)
    t = jnp.array([0.5, 1.0, 2.0])
    plain = np.stack([gumbel_softargmax(k, r, t=tt, hard=hard) for k, r, tt in zip(keys, x, t)])
    if transform == "jit":
        f = jax.jit(lambda k, r, tt: gumbel_softargmax(k, r, t=tt, hard=hard))
        got = np.stack([f(k, r, tt) for k, r, tt in zip(keys, x, t)])
    else:
        got = jax.vmap(lambda k, r, tt: gumbel_softargmax(k, r, t=tt, hard=hard))(keys, x, t)
    np.testing.assert_allclose(got, plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.sum(got, axis=1), 1.0, rtol=1e-6)


def test_per_row_temperature_matches_scalar_temperature_row_by_row():
    x = jnp.asarray(X_BATCH, jnp.float32)
    t = np.array([0.5, 1.0, 2.0])
    y = gumbel_softargmax(KEY, x, t=t)
    for i, ti in enumerate(t):
        np.testing.assert_allclose(y[i], gumbel_softargmax(KEY, x, t=float(ti))[i], rtol=1e-6)


@pytest.mark.parametrize("axis, hard", [(0, False), ((0, 2), True)])
def test_axis_selects_the_categories(axis, hard):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 2, 4)), jnp.float32)
    y = np.asarray(gumbel_softargmax(KEY, x, axis=axis, hard=hard))
    assert y.shape == x.shape
    np.testing.assert_allclose(np.sum(y, axis=axis), 1.0, rtol=1e-6)
    if hard:
        assert np.all((y == 0) | (y == 1))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.int32])
def test_dtypes(dtype):
    x = jnp.asarray([1, 0, 3, 2], dtype)
    soft = gumbel_softargmax(KEY, x, t=0.5)
    hard = gumbel_softargmax(KEY, x, hard=True)
    want = jnp.float32 if dtype == jnp.int32 else dtype
    assert soft.dtype == want and hard.dtype == want
    assert float(jnp.sum(hard)) == 1.0 and set(np.asarray(hard, np.float32).tolist()) == {0.0, 1.0}
    assert float(jnp.sum(soft.astype(jnp.float32))) == pytest.approx(1.0, abs=1e-2)


def test_float64_is_kept(x64):
    y = gumbel_softargmax(KEY, jnp.asarray(LOGITS), t=0.5)
    assert y.dtype == jnp.float64


def test_raw_uint32_keys_work_like_typed_keys():
    raw = jax.random.PRNGKey(3)
    typed = jax.random.wrap_key_data(raw)
    x = jnp.asarray(LOGITS, jnp.float32)
    np.testing.assert_array_equal(gumbel_softargmax(raw, x), gumbel_softargmax(typed, x))


def test_empty_axis_gives_an_empty_sample():
    assert gumbel_softargmax(KEY, jnp.zeros((3, 0))).shape == (3, 0)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(t=-1.0), ValueError),
        (dict(t=jnp.array([1.0, 2.0, 3.0])), ValueError),
        (dict(axis=2), ValueError),
        (dict(hard=1), TypeError),
        (dict(where=jnp.array([1, 0, 1, 1, 1])), TypeError),
        (dict(key=jax.random.split(KEY, 2)), ValueError),
        (dict(key=42), TypeError),
        (dict(key=jnp.zeros(2, jnp.float32)), TypeError),
    ],
)
def test_invalid_arguments_raise(kwargs, error):
    key = kwargs.pop("key", KEY)
    with pytest.raises(error):
        gumbel_softargmax(key, jnp.asarray(LOGITS, jnp.float32), **kwargs)


# ----------------------------------------------------------------------------------------------
# Large logit magnitudes (issue 12, defect 3): the noise must not be rounded away.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [2.0**20, -(2.0**20), 1e8, 1e30, -1e30])
def test_hard_samples_at_large_logit_magnitudes_follow_softargmax_chi_square(offset):
    """Noise added to unshifted logits was absorbed by rounding: at 2**20 the Gumbel noise is
    quantised to 1/8, at 1e8 to 8, at 1e30 lost. The reference is the float64 softargmax of the
    float32 logits as given (at 1e30 they collapse to one value: uniform)."""
    logits = (LOGITS + offset).astype(np.float32)
    counts, _ = _hard_counts(KEY, logits)
    probs = _softmax64(logits.astype(np.float64))
    keep = probs > 0
    assert _chi2_pvalue(counts[keep], probs[keep]) > 1e-3


@pytest.mark.parametrize("big", [1e8, 1e30, 3e38])
def test_two_equal_huge_logits_are_drawn_half_and_half(big):
    """[1e30, 1e30, 0] always gave index 0, [1e8, 1e8, 0] 98.4% / 1.6%."""
    counts, _ = _hard_counts(KEY, np.array([big, big, 0.0]))
    assert counts[2] == 0
    assert _chi2_pvalue(counts[:2], [0.5, 0.5]) > 1e-3
