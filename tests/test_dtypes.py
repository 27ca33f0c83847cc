"""SPEC section 7 (dtypes) and agreement with jax.nn on ordinary inputs."""

from __future__ import annotations

from functools import partial

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


def logsumexp(x, axis=-1, **kw):
    """jaxsoft.logsumexp over the last axis, as the other functions (its default is every axis)."""
    return js.logsumexp(x, axis, **kw)


FUNCS = [js.softargmax, js.log_softargmax, logsumexp, js.softargmax_mean]


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.bool_])
@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_ints_and_bools_promote_like_jax_numpy(f, dtype):
    x = jnp.asarray([[0, 1, 1], [1, 0, 0]]).astype(dtype)
    y = f(x)
    assert y.dtype == jnp.result_type(dtype, float) == jnp.float32
    np.testing.assert_allclose(y, f(x.astype(jnp.float32)))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_low_precision_returns_input_dtype_from_float32_math(f, dtype):
    x = jnp.asarray(_rng().normal(size=(4, 9)) * 3).astype(dtype)
    y = f(x, t=0.7)
    assert y.dtype == dtype
    # Computed in float32 from the same (rounded) inputs, then rounded once.
    expected = f(x.astype(jnp.float32), t=0.7).astype(dtype)
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(expected, np.float32))


def _bf16_ulp(v):
    v = np.abs(np.asarray(v, np.float64))
    exponent = np.floor(np.log2(np.maximum(v, 2.0**-126)))
    return 2.0 ** (exponent - 7)  # bfloat16 keeps 8 significant bits


def test_bf16_row_of_32768_within_one_bf16_ulp():
    x = jnp.asarray(_rng().normal(size=(2, 32768)) * 2).astype(jnp.bfloat16)
    x64 = np.asarray(x, np.float64)
    lse_ref = ref.logsumexp(x64)
    lse = np.asarray(js.logsumexp(x, axis=-1), np.float64)
    assert np.all(np.abs(lse - lse_ref) <= _bf16_ulp(lse_ref))
    # Probabilities and log-probabilities, against a float64 NumPy reference.
    lp_ref = (
        x64
        - np.log(np.exp(x64 - x64.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - x64.max(-1, keepdims=True)
    )
    lp = np.asarray(js.log_softargmax(x), np.float64)
    assert np.all(np.abs(lp - lp_ref) <= _bf16_ulp(lp_ref))
    p = np.asarray(js.softargmax(x), np.float64)
    assert np.all(np.abs(p - np.exp(lp_ref)) <= _bf16_ulp(np.exp(lp_ref)))
    # jax.nn accumulates the sum in bf16 and loses far more than that on the same row.
    nn = np.asarray(jax.nn.logsumexp(x, axis=-1), np.float64)
    assert np.max(np.abs(nn - lse_ref)) >= np.max(np.abs(lse - lse_ref))


@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_float64_when_enabled(x64, f):
    x = jnp.asarray(_rng().normal(size=(3, 5)))
    assert x.dtype == jnp.float64
    y = f(x, t=0.3)
    assert y.dtype == jnp.float64


def test_float64_values_against_mpmath(x64):
    x = _rng().normal(size=(20, 6)) * 5
    np.testing.assert_allclose(js.logsumexp(jnp.asarray(x), -1), ref.logsumexp(x), rtol=4e-16)
    np.testing.assert_allclose(
        js.log_softargmax(jnp.asarray(x), t=2.0), ref.log_softargmax(x, 2.0), rtol=1e-14
    )


@pytest.mark.parametrize(
    "shape,axis", [((4, 7), -1), ((3, 4, 5), 1), ((3, 4, 5), (0, 2)), ((6,), None)]
)
def test_agrees_with_jax_nn_on_ordinary_inputs(shape, axis):
    x = jnp.asarray(_rng().normal(size=shape) * 4, jnp.float32)
    ours, nn = _ours_and_jax_nn(x, axis)
    for name, rtol, atol in [
        ("softmax", 2e-6, 1e-7),
        ("log_softmax", 2e-6, 2e-6),
        ("logsumexp", 2e-6, 2e-6),
        ("logsumexp_keepdims", 2e-6, 2e-6),
        ("grad", 1e-4, 1e-5),
    ]:
        np.testing.assert_allclose(ours[name], nn[name], rtol=rtol, atol=atol, err_msg=name)


@partial(jax.jit, static_argnames="axis")
def _ours_and_jax_nn(x, axis):
    """Ours and jax.nn's values and a gradient, in one compiled program per case."""

    def evaluate(lib):
        return {
            "softmax": lib.softmax(x, axis=axis),
            "log_softmax": lib.log_softmax(x, axis=axis),
            "logsumexp": lib.logsumexp(x, axis=axis),
            "logsumexp_keepdims": lib.logsumexp(x, axis=axis, keepdims=True),
            "grad": jax.grad(lambda x: jnp.sum(lib.log_softmax(x, axis=axis) * x))(x),
        }

    return evaluate(js), evaluate(jax.nn)


def test_keepdims_and_per_row_temperature_shapes():
    x = jnp.asarray(_rng().normal(size=(2, 3, 4)), jnp.float32)
    t_rows = jnp.array([[0.5, 1.0, 2.0], [1.0, 3.0, 0.1]])
    assert js.logsumexp(x, -1, t=t_rows).shape == (2, 3)
    assert js.logsumexp(x, -1, t=t_rows, keepdims=True).shape == (2, 3, 1)
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(
                js.softargmax(x, t=t_rows)[i, j],
                js.softargmax(x[i, j], t=float(t_rows[i, j])),
                rtol=1e-6,
            )
    # The keepdims form of t is accepted too.
    np.testing.assert_allclose(js.softargmax(x, t=t_rows[..., None]), js.softargmax(x, t=t_rows))
