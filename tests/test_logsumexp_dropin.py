"""``jaxsoft.logsumexp`` is a drop-in for ``jax.nn.logsumexp`` / ``jax.scipy.special.logsumexp``.

Same signature (plus the keyword-only ``t``), defaults (``axis=None``), ``b``, ``return_sign``,
``keepdims`` and ``where`` (SPEC 2.6); values checked against a float64 NumPy reference (independent
of both) and against jax.nn and scipy; our edges (SPEC 6) kept, with zero gradients where jax.nn's
are NaN.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from jax.test_util import check_grads

import jaxsoft
from jaxsoft import _core

INF = np.inf
RNG = np.random.default_rng(0)
X = RNG.normal(size=(3, 4, 5)).astype(np.float32) * 3
B_ROW = np.array(
    [1.0, 0.0, -0.5, 2.0, 0.25], np.float32
)  # zeros and negatives, broadcast over rows
B_FULL = RNG.uniform(0.1, 2.0, size=X.shape).astype(np.float32)


def _reference(x, axis=None, b=None, keepdims=False, where=None, t=1.0):
    """``(t log|sum b e^(x/t)|, sign)`` in float64 NumPy, the sum taken by hand (no max shift needed
    for these moderate inputs); ``b = 0`` and masked entries are left out."""
    x = np.asarray(x, np.float64)
    b = np.ones_like(x) if b is None else np.broadcast_to(np.asarray(b, np.float64), x.shape)
    keep = b != 0
    if where is not None:
        keep = keep & np.broadcast_to(where, x.shape)
    terms = np.where(keep, b * np.exp(np.where(keep, x, 0) / t), 0)
    s = np.sum(terms, axis=axis, keepdims=keepdims)
    with np.errstate(divide="ignore"):
        return t * np.log(np.abs(s)), np.sign(s)


def _close(got, want, rtol=2e-6, atol=2e-6):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


def test_signature_is_jax_nn_logsumexp_plus_keyword_only_t():
    ours = list(inspect.signature(jaxsoft.logsumexp).parameters.values())
    theirs = list(inspect.signature(jax.nn.logsumexp).parameters.values())
    # Same positional order and defaults after the array (jax names it ``a``, jaxsoft ``x``).
    assert [(p.name, p.default, p.kind) for p in ours[1 : len(theirs)]] == [
        (p.name, p.default, p.kind) for p in theirs[1:]
    ]
    assert ours[-1].name == "t" and ours[-1].kind is inspect.Parameter.KEYWORD_ONLY
    assert len(ours) == len(theirs) + 1


@pytest.mark.parametrize(
    ("axis", "keepdims"), [(None, False), (None, True), (0, True), (-1, False), ((2, 0), True)]
)
def test_matches_jax_nn_and_scipy_over_axes(axis, keepdims):
    got = jaxsoft.logsumexp(X, axis, keepdims=keepdims)
    want, _ = _reference(X, axis=axis, keepdims=keepdims)
    assert got.shape == want.shape == jax.nn.logsumexp(X, axis, keepdims=keepdims).shape
    _close(got, want)
    _close(jax.nn.logsumexp(X, axis, keepdims=keepdims), want)  # the reference is jax.nn's value
    _close(scipy.special.logsumexp(X.astype(np.float64), axis, keepdims=keepdims), want, 1e-12)


def test_default_axis_reduces_everything_like_jax_nn():
    x = X[0]
    assert jaxsoft.logsumexp(x).shape == jax.nn.logsumexp(x).shape == ()
    _close(jaxsoft.logsumexp(x), _reference(x)[0])


@pytest.mark.parametrize("return_sign", [False, True])
@pytest.mark.parametrize(
    ("axis", "b"),
    [(-1, B_ROW), ((0, 2), B_ROW), (None, B_FULL), (1, np.float32(0.5)), (-1, -B_FULL)],
    ids=["row_mixed_sign", "tuple_axes", "full", "scalar", "all_negative"],
)
def test_b_matches_scipy_and_jax_nn(axis, b, return_sign):
    want, want_sign = _reference(X, axis=axis, b=b)
    got = jaxsoft.logsumexp(X, axis, b, return_sign=return_sign)
    theirs = jax.nn.logsumexp(X, axis, b, return_sign=return_sign)
    scipy_out = scipy.special.logsumexp(
        X.astype(np.float64), axis, np.asarray(b, np.float64), return_sign=True
    )
    _close(scipy_out[0], want, 1e-12)
    if return_sign:
        (got, sign), (theirs, their_sign) = got, theirs
        np.testing.assert_array_equal(sign, want_sign)
        np.testing.assert_array_equal(their_sign, want_sign)
    else:  # a negative sum has no real log: NaN, as jax.nn
        want = np.where(want_sign < 0, np.nan, want)
    _close(got, want, rtol=1e-5, atol=1e-5)
    _close(theirs, want, rtol=1e-5, atol=1e-5)


def test_b_with_where_and_keepdims():
    where = RNG.random(X.shape) < 0.7
    want, want_sign = _reference(X, axis=(1, 2), b=B_ROW, keepdims=True, where=where)
    got, sign = jaxsoft.logsumexp(X, (1, 2), B_ROW, True, True, where)
    assert got.shape == sign.shape == (3, 1, 1)
    _close(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sign, want_sign)
    theirs, their_sign = jax.nn.logsumexp(X, (1, 2), B_ROW, True, True, where)
    _close(theirs, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(their_sign, want_sign)


def test_where_alone_matches_jax_nn():
    where = RNG.random(X.shape) < 0.5
    _close(jaxsoft.logsumexp(X, -1, where=where), _reference(X, axis=-1, where=where)[0])
    _close(jax.nn.logsumexp(X, -1, where=where), _reference(X, axis=-1, where=where)[0])


def test_return_sign_without_b_is_one_zero_or_nan():
    x = jnp.array([[0.0, 1.0], [-INF, -INF], [np.nan, 1.0], [INF, 0.0]])
    value, sign = jaxsoft.logsumexp(x, axis=-1, return_sign=True)
    np.testing.assert_array_equal(value, jaxsoft.logsumexp(x, axis=-1))
    np.testing.assert_array_equal(sign, [1.0, 0.0, np.nan, 1.0])
    np.testing.assert_array_equal(jax.nn.logsumexp(x, axis=-1, return_sign=True)[1], sign)
    assert sign.dtype == value.dtype == jnp.float32


@pytest.mark.parametrize("kernel", _core.KERNELS)
def test_b_edges_values_and_signs(kernel):
    x = jnp.array(
        [
            [0.0, 0.0, 2.0],  # cancels exactly: 1 e^0 - 1 e^0 (b below)
            [-INF, -INF, 5.0],  # the only finite entry has b = 0: nothing left
            [INF, 0.0, 1.0],  # +inf in the positive part
            [INF, INF, 0.0],  # +inf in both parts: inf - inf
            [np.nan, 0.0, 1.0],  # NaN with b = 0: left out
            [1.0, np.nan, 0.0],  # NaN with b != 0: NaN row
        ]
    )
    b = jnp.array(
        [
            [1.0, -1.0, 0.0],
            [1.0, 1.0, 0.0],
            [1.0, -1.0, 1.0],
            [1.0, -2.0, 1.0],
            [0.0, 1.0, -1.0],
            [1.0, 1.0, 1.0],
        ]
    )
    with _core.use_kernel(kernel):
        value, sign = jaxsoft.logsumexp(x, axis=-1, b=b, return_sign=True)
    want_value = [-INF, -INF, INF, np.nan, np.log(np.e - 1.0), np.nan]
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_array_equal(sign, [0.0, 0.0, 1.0, np.nan, -1.0, np.nan])


def test_nan_stays_on_its_row_with_b():
    x = jnp.array([[np.nan, 0.0], [1.0, 2.0]])
    b = jnp.array([1.0, -0.5])
    value, sign = jaxsoft.logsumexp(x, axis=-1, b=b, return_sign=True)
    assert np.isnan(value[0]) and np.isnan(sign[0])
    _close(value[1], _reference(x[1], b=b)[0])
    g = jax.grad(lambda x: jaxsoft.logsumexp(x, axis=-1, b=b, return_sign=True)[0].sum())(x)
    assert np.all(np.isnan(g[0])) and np.all(np.isfinite(g[1]))


def test_log1p_accuracy_kept_with_default_axis(x64):
    assert float(jaxsoft.logsumexp(jnp.array([0.0, -40.0]))) == pytest.approx(
        np.exp(-40.0), rel=1e-15
    )


_ROWS = jnp.array([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]])


@pytest.mark.parametrize(
    ("x", "kw", "jax_nn_nan"),
    [
        (_ROWS.at[0].set(-INF), {}, True),
        (_ROWS, {"where": np.array([[0, 0, 0], [1, 1, 1]], bool)}, False),
        (_ROWS, {"b": np.array([[0.0] * 3, [1.0, -2.0, 3.0]])}, False),
        (_ROWS.at[0, :2].set(-INF), {"b": np.array([[2.0, -1.0, 0.0]] * 2)}, True),
    ],
    ids=["all_neg_inf", "fully_masked", "all_b_zero", "b_row_left_empty"],
)
def test_empty_row_is_neg_inf_with_zero_gradient(x, kw, jax_nn_nan):
    def loss(f):
        return lambda x: f(x, -1, return_sign=True, **kw)[0].sum()

    value, sign = jaxsoft.logsumexp(x, -1, return_sign=True, **kw)
    assert (float(value[0]), float(sign[0])) == (-INF, 0.0)
    g = jax.grad(loss(jaxsoft.logsumexp))(x)
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_allclose(g[1], jax.grad(loss(jax.nn.logsumexp))(x)[1], rtol=1e-5)
    assert np.any(np.isnan(jax.grad(loss(jax.nn.logsumexp))(x)[0])) == jax_nn_nan


def test_exact_cancellation_has_finite_gradient():
    x = jnp.array([0.0, 0.0, -1.0])
    b = jnp.array([1.0, -1.0, 0.0])
    g = jax.grad(lambda x: jaxsoft.logsumexp(x, b=b, return_sign=True)[0])(x)
    assert np.all(np.isfinite(g))


def test_temperature_with_b(x64):
    x = np.array([[0.3, -1.2, 2.0, 0.7], [1.0, 1.0, -3.0, 0.0]])
    b = np.array([[1.5, -0.5, 0.25, 2.0], [2.0, -1.0, 1.0, 0.0]])
    for t in (0.5, 3.0):
        value, sign = jaxsoft.logsumexp(x, axis=-1, b=b, return_sign=True, t=t)
        want, want_sign = _reference(x, axis=-1, b=b, t=t)
        _close(value, want, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(sign, want_sign)
    # t = 0: the max over the entries with b != 0, signed by the sum of b over the maxima.
    value, sign = jaxsoft.logsumexp(x, axis=-1, b=b, return_sign=True, t=0.0)
    np.testing.assert_array_equal(value, [2.0, 1.0])
    np.testing.assert_array_equal(sign, [1.0, 1.0])
    value, sign = jaxsoft.logsumexp(x[1], b=[1.0, -1.0, 1.0, 0.0], return_sign=True, t=0.0)
    assert (float(value), float(sign)) == (-INF, 0.0)
    g = jax.grad(lambda x: jaxsoft.logsumexp(x, -1, b, t=0.0).sum())(jnp.asarray(x))
    assert np.all(np.isfinite(g))


def test_check_grads_b_path(x64):
    x = jnp.array([[0.3, -1.2, 2.0, 0.7], [1.0, 0.2, -3.0, 0.5]])
    b = jnp.array([[1.5, -0.5, 0.25, 2.0], [2.0, -1.0, 1.0, 0.5]])

    def f(x, b, t):
        return jaxsoft.logsumexp(x, -1, b, return_sign=True, t=t)[0]

    check_grads(f, (x, b, 0.7), order=1, modes=("fwd", "rev"))
    check_grads(lambda x: f(x, b, 1.0), (x,), order=2, modes=("rev",))


def test_bfloat16_with_b_accumulates_in_float32():
    x = jnp.asarray(RNG.normal(size=(2, 4096)), jnp.bfloat16)
    b = jnp.asarray(np.tile([1.0, -0.25], 2048), jnp.bfloat16)
    got = jaxsoft.logsumexp(x, -1, b)
    assert got.dtype == jnp.bfloat16 == jax.nn.logsumexp(x, -1, b).dtype
    want, _ = _reference(np.asarray(x, np.float64), axis=-1, b=np.asarray(b, np.float64))
    _close(got, want, rtol=2**-8, atol=0)  # the final rounding only
    # Dtypes promote together, as in jax.nn: float32 b makes a float32 result.
    assert jaxsoft.logsumexp(x, -1, b.astype(jnp.float32)).dtype == jnp.float32


@pytest.mark.parametrize("transform", ["jit", "vmap"])
def test_jit_and_vmap_agree_with_eager(transform):
    where = RNG.random(X.shape) < 0.8

    def f(x, w):
        return jaxsoft.logsumexp(x, -1, B_ROW, return_sign=True, where=w)

    eager = f(X, where)
    got = jax.jit(f)(X, where) if transform == "jit" else jax.vmap(f)(X, where)
    for a, e in zip(got, eager, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-6)


def test_bad_b_and_return_sign_raise_naming_the_function():
    with pytest.raises(ValueError, match=r"logsumexp: b of shape \(4,\) does not broadcast"):
        jaxsoft.logsumexp(X, b=np.ones(4))
    with pytest.raises(TypeError, match=r"logsumexp: complex b is not supported"):
        jaxsoft.logsumexp(X, b=np.ones(5, np.complex64))
    with pytest.raises(TypeError, match=r"logsumexp: return_sign must be a bool"):
        jaxsoft.logsumexp(X, return_sign="yes")
