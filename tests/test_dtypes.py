"""SPEC section 7 (dtypes) and agreement with jax.nn on ordinary inputs.

Compiling dominates, and the kernel fixture compiles everything twice, so each check below reads
its values from one jitted program per kernel (a module-scoped fixture) rather than from eager
calls, each of which compiles its operations one by one for every new shape and dtype. Array inputs
are arguments of those programs, as they would be of eager calls; Python temperatures are passed as
(weakly typed) arguments too, as an eager call turns them into arrays.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft as js
from tests import reference as ref
from tests.conftest import enable_x64

# Every test here runs under each core kernel (the "kernel" fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("kernel")


def _rng():
    """A fresh seeded generator: inputs must not depend on which tests ran before (xdist)."""
    return np.random.default_rng(0)


def logsumexp(x, axis=-1, **kw):
    """jaxsoft.logsumexp over the last axis, as the other functions (its default is every axis)."""
    return js.logsumexp(x, axis, **kw)


FUNCS = [js.softargmax, js.log_softargmax, logsumexp, js.softargmax_mean]
NAMES = [f.__name__ for f in FUNCS]
INT_DTYPES = [jnp.int32, jnp.int8, jnp.bool_]
LOW_DTYPES = [jnp.bfloat16, jnp.float16]


@pytest.fixture(scope="module")
def promoted(kernel):
    """``{(name, dtype): (f(x of dtype), f(x as float32))}`` for every function and integer or
    bool dtype, from one program."""
    x = np.array([[0, 1, 1], [1, 0, 0]])
    inputs = {jnp.dtype(d).name: x.astype(d) for d in INT_DTYPES}

    @jax.jit
    def run(inputs):
        return {
            (f.__name__, name): (f(a), f(a.astype(jnp.float32)))
            for f in FUNCS
            for name, a in inputs.items()
        }

    return run(inputs)


@pytest.mark.parametrize("dtype", INT_DTYPES)
@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_ints_and_bools_promote_like_jax_numpy(promoted, f, dtype):
    y, from_float32 = promoted[f.__name__, jnp.dtype(dtype).name]
    assert y.dtype == jnp.result_type(dtype, float) == jnp.float32
    np.testing.assert_allclose(y, from_float32)


@pytest.fixture(scope="module")
def low_precision(kernel):
    """``{(name, dtype): (f(x, t=0.7), f(x as float32, t=0.7))}``, x of shape (4, 9), from one
    program; t = 0.7 a weakly typed argument, as an eager call's Python number becomes."""
    # NumPy rounds as jnp does (float64 -> float32 -> dtype), without an eager program.
    x = (_rng().normal(size=(4, 9)) * 3).astype(np.float32)
    inputs = {jnp.dtype(d).name: x.astype(d) for d in LOW_DTYPES}

    @jax.jit
    def run(inputs, t):
        # The float32 result rounded once to the input's dtype.
        return {
            (f.__name__, name): (f(a, t=t), f(a.astype(jnp.float32), t=t).astype(a.dtype))
            for f in FUNCS
            for name, a in inputs.items()
        }

    return run(inputs, 0.7)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_low_precision_returns_input_dtype_from_float32_math(low_precision, f, dtype):
    y, expected = low_precision[f.__name__, jnp.dtype(dtype).name]
    assert y.dtype == dtype
    # Computed in float32 from the same (rounded) inputs, then rounded once.
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))


def _bf16_ulp(v):
    v = np.abs(np.asarray(v, np.float64))
    exponent = np.floor(np.log2(np.maximum(v, 2.0**-126)))
    return 2.0 ** (exponent - 7)  # bfloat16 keeps 8 significant bits


@jax.jit
def _bf16_row(x):
    return js.logsumexp(x, axis=-1), js.log_softargmax(x), js.softargmax(x), jax.nn.logsumexp(x, -1)


def test_bf16_row_of_32768_within_one_bf16_ulp():
    x = (_rng().normal(size=(2, 32768)) * 2).astype(np.float32).astype(jnp.bfloat16)
    x64 = np.asarray(x, np.float64)
    lse_ref = ref.logsumexp(x64)
    lse, lp, p, nn = (np.asarray(a, np.float64) for a in _bf16_row(x))
    assert np.all(np.abs(lse - lse_ref) <= _bf16_ulp(lse_ref))
    # Probabilities and log-probabilities, against a float64 NumPy reference.
    lp_ref = (
        x64
        - np.log(np.exp(x64 - x64.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x64.max(-1, keepdims=True)
    )
    assert np.all(np.abs(lp - lp_ref) <= _bf16_ulp(lp_ref))
    assert np.all(np.abs(p - np.exp(lp_ref)) <= _bf16_ulp(np.exp(lp_ref)))
    # jax.nn accumulates the sum in bf16 and loses far more than that on the same row.
    assert np.max(np.abs(nn - lse_ref)) >= np.max(np.abs(lse - lse_ref))


@pytest.fixture(scope="module")
def float64_results(kernel):
    """With float64 enabled, one program: every function at t = 0.3 on a (3, 5) input, and
    logsumexp and log_softargmax (t = 2) on the (20, 6) input of the mpmath check."""
    with enable_x64():
        x = jnp.asarray(_rng().normal(size=(3, 5)))
        x_mp = _rng().normal(size=(20, 6)) * 5

        @jax.jit
        def run(x, x_mp, t, t_mp):
            return (
                {f.__name__: f(x, t=t) for f in FUNCS},
                (js.logsumexp(x_mp, -1), js.log_softargmax(x_mp, t=t_mp)),
            )

        funcs, mp = jax.tree.map(np.asarray, run(x, jnp.asarray(x_mp), 0.3, 2.0))
        return x.dtype, funcs, x_mp, mp


@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_float64_when_enabled(float64_results, f):
    x_dtype, funcs, _, _ = float64_results
    assert x_dtype == jnp.float64
    assert funcs[f.__name__].dtype == jnp.float64


def test_float64_values_against_mpmath(float64_results):
    _, _, x, (lse, log_p) = float64_results
    np.testing.assert_allclose(lse, ref.logsumexp(x), rtol=4e-16)
    np.testing.assert_allclose(log_p, ref.log_softargmax(x, 2.0), rtol=1e-14)


AGREE_CASES = [((4, 7), -1), ((3, 4, 5), 1), ((3, 4, 5), (0, 2)), ((6,), None)]
AGREE_IDS = ["shape0--1", "shape1-1", "shape2-axis2", "shape3-None"]


@pytest.fixture(scope="module")
def ours_and_jax_nn(kernel):
    """Every case's values and gradient, ours and jax.nn's, from one compiled program."""
    xs = [jnp.asarray(_rng().normal(size=shape) * 4, jnp.float32) for shape, _ in AGREE_CASES]

    @jax.jit
    def run(xs):
        return [_ours_and_jax_nn(x, axis) for x, (_, axis) in zip(xs, AGREE_CASES, strict=True)]

    return dict(zip(AGREE_IDS, run(xs), strict=True))


@pytest.mark.parametrize("case", AGREE_IDS)
def test_agrees_with_jax_nn_on_ordinary_inputs(ours_and_jax_nn, case):
    ours, nn = ours_and_jax_nn[case]
    for name, rtol, atol in [
        ("softmax", 2e-6, 1e-7),
        ("log_softmax", 2e-6, 2e-6),
        ("logsumexp", 2e-6, 2e-6),
        ("logsumexp_keepdims", 2e-6, 2e-6),
        ("grad", 1e-4, 1e-5),
    ]:
        np.testing.assert_allclose(ours[name], nn[name], rtol=rtol, atol=atol, err_msg=name)


def _ours_and_jax_nn(x, axis):
    """Ours and jax.nn's values and a gradient."""

    def evaluate(lib):
        return {
            "softmax": lib.softmax(x, axis=axis),
            "log_softmax": lib.log_softmax(x, axis=axis),
            "logsumexp": lib.logsumexp(x, axis=axis),
            "logsumexp_keepdims": lib.logsumexp(x, axis=axis, keepdims=True),
            "grad": jax.grad(lambda x: jnp.sum(lib.log_softmax(x, axis=axis) * x))(x),
        }

    return evaluate(js), evaluate(jax.nn)


T_ROWS = [[0.5, 1.0, 2.0], [1.0, 3.0, 0.1]]


@jax.jit
def _per_row_temperature(x, t_rows, t_scalars):
    def scalar_t(i, j):
        # As an eager call with a Python float: t = 1.0 takes the t-free path, any other t is a
        # (weakly typed) array argument.
        return 1.0 if T_ROWS[i][j] == 1.0 else t_scalars[i][j]

    return (
        js.logsumexp(x, -1, t=t_rows),
        js.logsumexp(x, -1, t=t_rows, keepdims=True),
        js.softargmax(x, t=t_rows),
        # One row at a time with its scalar t, and the keepdims form of t.
        [[js.softargmax(x[i, j], t=scalar_t(i, j)) for j in range(3)] for i in range(2)],
        js.softargmax(x, t=t_rows[..., None]),
    )


def test_keepdims_and_per_row_temperature_shapes():
    x = _rng().normal(size=(2, 3, 4)).astype(np.float32)
    t_rows = np.array(T_ROWS, np.float32)
    lse, lse_keep, p, p_rows, p_keep = _per_row_temperature(x, t_rows, T_ROWS)
    assert lse.shape == (2, 3)
    assert lse_keep.shape == (2, 3, 1)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(p[i, j], p_rows[i][j], rtol=1e-6)
    # The keepdims form of t is accepted too.
    np.testing.assert_allclose(p_keep, p)
