"""``jaxsoft.logsumexp`` is a drop-in for ``jax.nn.logsumexp`` / ``jax.scipy.special.logsumexp``.

Same signature (plus the keyword-only ``t``), defaults (``axis=None``), ``b``, ``return_sign``,
``keepdims`` and ``where`` (SPEC 2.6); values checked against a float64 NumPy reference (independent
of both) and against jax.nn and scipy; our edges (SPEC 6) kept, with zero gradients where jax.nn's
are NaN.

Compile time: each distinct program compiles once (this module does not switch kernels), so cases
that share inputs are computed together in one module-level ``jax.jit`` (the inputs are its
arguments, never baked-in constants), jax.nn included: eager jax.nn.logsumexp compiles every one of
its primitives separately. Checks and references are NumPy on the host.
"""

from __future__ import annotations

import functools
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


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def _both(*args, **kwargs):
    """``(jaxsoft.logsumexp(...), jax.nn.logsumexp(...))`` of the same arguments (inside a jit)."""
    return jaxsoft.logsumexp(*args, **kwargs), jax.nn.logsumexp(*args, **kwargs)


def test_signature_is_jax_nn_logsumexp_plus_keyword_only_t():
    ours = list(inspect.signature(jaxsoft.logsumexp).parameters.values())
    theirs = list(inspect.signature(jax.nn.logsumexp).parameters.values())
    # Same positional order and defaults after the array (jax names it ``a``, jaxsoft ``x``).
    assert [(p.name, p.default, p.kind) for p in ours[1 : len(theirs)]] == [
        (p.name, p.default, p.kind) for p in theirs[1:]
    ]
    assert ours[-1].name == "t" and ours[-1].kind is inspect.Parameter.KEYWORD_ONLY
    assert len(ours) == len(theirs) + 1


_AXES_KEEPDIMS = [(None, False), (None, True), (0, True), (-1, False), ((2, 0), True)]


@functools.cache
def _over_axes(kernel: str | None) -> dict:
    """Every case of the test below, ours and jax.nn's, from one compiled program (cached per
    forced kernel, in case this module ever runs under both)."""
    run = jax.jit(
        lambda x: [_both(x, axis, keepdims=keepdims) for axis, keepdims in _AXES_KEEPDIMS]
    )
    return dict(zip(_AXES_KEEPDIMS, _host(run(X)), strict=True))


@pytest.mark.parametrize(("axis", "keepdims"), _AXES_KEEPDIMS)
def test_matches_jax_nn_and_scipy_over_axes(axis, keepdims):
    got, theirs = _over_axes(_core.forced_kernel())[axis, keepdims]
    want, _ = _reference(X, axis=axis, keepdims=keepdims)
    assert got.shape == want.shape == theirs.shape
    _close(got, want)
    _close(theirs, want)  # the reference is jax.nn's value
    _close(scipy.special.logsumexp(X.astype(np.float64), axis, keepdims=keepdims), want, 1e-12)


_default_axis = jax.jit(_both)


def test_default_axis_reduces_everything_like_jax_nn():
    x = X[0]
    got, theirs = _default_axis(x)
    assert got.shape == theirs.shape == ()
    _close(got, _reference(x)[0])


_B_CASES = {
    "row_mixed_sign": (-1, B_ROW),
    "tuple_axes": ((0, 2), B_ROW),
    "full": (None, B_FULL),
    "scalar": (1, np.float32(0.5)),
    "all_negative": (-1, -B_FULL),
}


@functools.cache
def _with_b(kernel: str | None) -> dict:
    """Every case of the test below (both ``return_sign``), ours and jax.nn's, in one program;
    each case's b is an argument, as it is of the jitted kernel in an eager call (cached as above)."""

    def run(x, bs):
        return {
            (name, sign): _both(x, axis, bs[name], return_sign=sign)
            for name, (axis, _) in _B_CASES.items()
            for sign in (False, True)
        }

    return _host(jax.jit(run)(X, {name: b for name, (_, b) in _B_CASES.items()}))


@pytest.mark.parametrize("return_sign", [False, True])
@pytest.mark.parametrize("case", list(_B_CASES))
def test_b_matches_scipy_and_jax_nn(case, return_sign):
    axis, b = _B_CASES[case]
    want, want_sign = _reference(X, axis=axis, b=b)
    got, theirs = _with_b(_core.forced_kernel())[case, return_sign]
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


# The positional order (axis, b, keepdims, return_sign, where) is part of the drop-in contract.
_b_where_keepdims = jax.jit(lambda x, b, where: _both(x, (1, 2), b, True, True, where))


def test_b_with_where_and_keepdims():
    where = RNG.random(X.shape) < 0.7
    want, want_sign = _reference(X, axis=(1, 2), b=B_ROW, keepdims=True, where=where)
    (got, sign), (theirs, their_sign) = _host(_b_where_keepdims(X, B_ROW, where))
    assert got.shape == sign.shape == (3, 1, 1)
    _close(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sign, want_sign)
    _close(theirs, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(their_sign, want_sign)


_where_alone = jax.jit(lambda x, where: _both(x, -1, where=where))


def test_where_alone_matches_jax_nn():
    where = RNG.random(X.shape) < 0.5
    got, theirs = _where_alone(X, where)
    _close(got, _reference(X, axis=-1, where=where)[0])
    _close(theirs, _reference(X, axis=-1, where=where)[0])


@jax.jit
def _signs_without_b(x):
    return (
        jaxsoft.logsumexp(x, axis=-1, return_sign=True),
        jaxsoft.logsumexp(x, axis=-1),
        jax.nn.logsumexp(x, axis=-1, return_sign=True)[1],
    )


def test_return_sign_without_b_is_one_zero_or_nan():
    x = np.array([[0.0, 1.0], [-INF, -INF], [np.nan, 1.0], [INF, 0.0]], np.float32)
    (value, sign), plain, their_sign = _host(_signs_without_b(x))
    np.testing.assert_array_equal(value, plain)
    np.testing.assert_array_equal(sign, [1.0, 0.0, np.nan, 1.0])
    np.testing.assert_array_equal(their_sign, sign)
    assert sign.dtype == value.dtype == np.float32


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


@jax.jit
def _signed_rows_and_grad(x, b):
    f = lambda x: jaxsoft.logsumexp(x, axis=-1, b=b, return_sign=True)
    return f(x), jax.grad(lambda x: f(x)[0].sum())(x)


def test_nan_stays_on_its_row_with_b():
    x = np.array([[np.nan, 0.0], [1.0, 2.0]], np.float32)
    b = np.array([1.0, -0.5], np.float32)
    (value, sign), g = _host(_signed_rows_and_grad(x, b))
    assert np.isnan(value[0]) and np.isnan(sign[0])
    _close(value[1], _reference(x[1], b=b)[0])
    assert np.all(np.isnan(g[0])) and np.all(np.isfinite(g[1]))


def test_log1p_accuracy_kept_with_default_axis(x64):
    assert float(jaxsoft.logsumexp(jnp.array([0.0, -40.0]))) == pytest.approx(
        np.exp(-40.0), rel=1e-15
    )


_ROWS = np.array([[1.0, 2.0, 3.0], [0.0, 1.0, 2.0]], np.float32)


def _neg_inf_at(index):
    x = _ROWS.copy()
    x[index] = -INF
    return x


@jax.jit
def _empty_row_outputs(x, kw):
    """Ours: value and sign, and the gradient; jax.nn's gradient. ``kw`` (where or b) traced."""

    def loss(f):
        return lambda x: f(x, -1, return_sign=True, **kw)[0].sum()

    ours = jaxsoft.logsumexp(x, -1, return_sign=True, **kw)
    return ours, jax.grad(loss(jaxsoft.logsumexp))(x), jax.grad(loss(jax.nn.logsumexp))(x)


@pytest.mark.parametrize(
    ("x", "kw", "jax_nn_nan"),
    [
        (_neg_inf_at(0), {}, True),
        (_ROWS, {"where": np.array([[0, 0, 0], [1, 1, 1]], bool)}, False),
        (_ROWS, {"b": np.array([[0.0] * 3, [1.0, -2.0, 3.0]])}, False),
        (_neg_inf_at((0, slice(None, 2))), {"b": np.array([[2.0, -1.0, 0.0]] * 2)}, True),
    ],
    ids=["all_neg_inf", "fully_masked", "all_b_zero", "b_row_left_empty"],
)
def test_empty_row_is_neg_inf_with_zero_gradient(x, kw, jax_nn_nan):
    (value, sign), g, g_nn = _host(_empty_row_outputs(x, kw))
    assert (float(value[0]), float(sign[0])) == (-INF, 0.0)
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_allclose(g[1], g_nn[1], rtol=1e-5)
    assert np.any(np.isnan(g_nn[0])) == jax_nn_nan


_signed_value_grad = jax.jit(jax.grad(lambda x, b: jaxsoft.logsumexp(x, b=b, return_sign=True)[0]))


def test_exact_cancellation_has_finite_gradient():
    x = np.array([0.0, 0.0, -1.0], np.float32)
    b = np.array([1.0, -1.0, 0.0], np.float32)
    g = _signed_value_grad(x, b)
    assert np.all(np.isfinite(g))


@jax.jit
def _with_b_and_t(x, b, b_row, t):
    """Values and signs with a traced t (one program for every t), and at the same t: the second
    row alone with a b given as a list (b_row), and the gradient of the summed values."""
    return (
        jaxsoft.logsumexp(x, axis=-1, b=b, return_sign=True, t=t),
        jaxsoft.logsumexp(x[1], b=b_row, return_sign=True, t=t),
        jax.grad(lambda x: jaxsoft.logsumexp(x, -1, b, t=t).sum())(x),
    )


def test_temperature_with_b(x64):
    x = np.array([[0.3, -1.2, 2.0, 0.7], [1.0, 1.0, -3.0, 0.0]])
    b = np.array([[1.5, -0.5, 0.25, 2.0], [2.0, -1.0, 1.0, 0.0]])
    b_row = jnp.asarray([1.0, -1.0, 1.0, 0.0])  # as jaxsoft turns the list given eagerly
    for t in (0.5, 3.0):
        (value, sign), _, _ = _host(_with_b_and_t(x, b, b_row, t))
        want, want_sign = _reference(x, axis=-1, b=b, t=t)
        _close(value, want, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(sign, want_sign)
    # t = 0: the max over the entries with b != 0, signed by the sum of b over the maxima.
    (value, sign), (row_value, row_sign), g = _host(_with_b_and_t(x, b, b_row, 0.0))
    np.testing.assert_array_equal(value, [2.0, 1.0])
    np.testing.assert_array_equal(sign, [1.0, 1.0])
    assert (float(row_value), float(row_sign)) == (-INF, 0.0)
    assert np.all(np.isfinite(g))


def test_check_grads_b_path(x64):
    x = jnp.array([[0.3, -1.2, 2.0, 0.7], [1.0, 0.2, -3.0, 0.5]])
    b = jnp.array([[1.5, -0.5, 0.25, 2.0], [2.0, -1.0, 1.0, 0.5]])

    def f(x, b, t):
        return jaxsoft.logsumexp(x, -1, b, return_sign=True, t=t)[0]

    check_grads(f, (x, b, 0.7), order=1, modes=("fwd", "rev"))
    check_grads(lambda x: f(x, b, 1.0), (x,), order=2, modes=("rev",))


@jax.jit
def _bfloat16_with_b(x, b):
    return _both(x, -1, b), jaxsoft.logsumexp(x, -1, b.astype(jnp.float32))


def test_bfloat16_with_b_accumulates_in_float32():
    x = jnp.asarray(RNG.normal(size=(2, 4096)).astype(jnp.bfloat16))
    b = jnp.asarray(np.tile([1.0, -0.25], 2048).astype(jnp.bfloat16))
    (got, theirs), got_f32_b = _bfloat16_with_b(x, b)
    assert got.dtype == jnp.bfloat16 == theirs.dtype
    want, _ = _reference(np.asarray(x, np.float64), axis=-1, b=np.asarray(b, np.float64))
    _close(got, want, rtol=2**-8, atol=0)  # the final rounding only
    # Dtypes promote together, as in jax.nn: float32 b makes a float32 result.
    assert got_f32_b.dtype == jnp.float32


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
