"""SPEC section 6: every row of the edge table, for values and for gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft as js
from jaxsoft import _core
from tests.conftest import thorough

# Every test here runs under each core kernel (the "kernel" fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("kernel")

INF = np.inf


def logsumexp(x, axis=-1, **kw):
    """jaxsoft.logsumexp over the last axis, as the other functions (its default is every axis)."""
    return js.logsumexp(x, axis, **kw)


FUNCS = [js.softargmax, js.log_softargmax, logsumexp, js.softargmax_mean]
DERIVS = {
    "grad": lambda f: jax.grad(lambda x: jnp.sum(f(x))),
    "jacfwd": jax.jacfwd,
    "jacrev": jax.jacrev,
    "hessian": lambda f: jax.hessian(lambda x: jnp.sum(f(x))),
}


_COMPILED: dict = {}


def _all_derivatives(x, *, t=1.0, where=None):
    """``{(function, kind): value}`` for every f in FUNCS: the value (kind "value"), every
    derivative in DERIVS, and the derivative in ``t`` of the sum (kind "dt"), of
    ``f(x, t=t, where=where)``, as one compiled program per (shape, where or not, kernel). ``t``
    and ``where`` are traced arguments, so the edge cases reuse it: one program instead of one per
    function, derivative and temperature is most of this file's compile time saved."""
    # jacrev and the hessian exercise the JVP rule transposed and applied twice, which both
    # kernels share (grad and jacfwd already read each kernel's primal values); they are the
    # costliest to compile, so CI takes them on the dispatched (tuned) kernel only and the
    # thorough profile on both.
    kinds = tuple(
        name
        for name in DERIVS
        if not (
            name in ("jacrev", "hessian")
            and _core.forced_kernel() == "reference"
            and not thorough()
        )
    )
    key = (x.shape, where is None, _core.forced_kernel(), kinds)
    if key not in _COMPILED:

        def every(x, t, w):
            out = {
                (f.__name__, name): DERIVS[name](lambda x, f=f: f(x, t=t, where=w))(x)
                for f in FUNCS
                for name in kinds
            }
            for f in FUNCS:
                out[f.__name__, "value"] = f(x, t=t, where=w)
                out[f.__name__, "dt"] = jax.grad(lambda t, f=f: jnp.sum(f(x, t=t, where=w)))(t)
            return out

        _COMPILED[key] = jax.jit(every)
    return _COMPILED[key](x, jnp.float32(t), where)


def _values(x, **kw):
    """``{function name: value}`` from :func:`_all_derivatives`'s program."""
    return {k[0]: np.asarray(v) for k, v in _all_derivatives(x, **kw).items() if k[1] == "value"}


# --- finite, any magnitude ----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1e10, 1e30, 3e38])
def test_finite_any_magnitude_is_exact_with_finite_gradients(scale):
    x = jnp.array([0.5, -0.25, 1.0], jnp.float32) * jnp.float32(scale)
    every = _all_derivatives(x)
    p = np.asarray(every["softargmax", "value"])
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(float(p.sum()), 1.0, rtol=1e-6)
    if scale > 1:
        np.testing.assert_array_equal(p, [0.0, 0.0, 1.0])
        assert float(every["logsumexp", "value"]) == float(x[2])
    for key, g in every.items():
        if key[1] != "value":  # every derivative, the t-derivative included
            assert np.all(np.isfinite(np.asarray(g))), key


# --- some -inf ----------------------------------------------------------------------------------


def test_some_neg_inf_entries_get_zero_and_zero_gradient():
    x = jnp.array([1.0, -INF, 2.0, -INF], jnp.float32)
    e = np.exp([1.0, 2.0]) / np.exp([1.0, 2.0]).sum()
    v = _values(x)
    np.testing.assert_allclose(v["softargmax"], [e[0], 0, e[1], 0], rtol=1e-6)
    np.testing.assert_allclose(v["logsumexp"], np.log(np.exp(1.0) + np.exp(2.0)), rtol=1e-6)
    assert v["log_softargmax"][1] == -INF and v["log_softargmax"][3] == -INF
    for t in [1.0, 0.5, 0.0]:
        for (fname, name), g in _all_derivatives(x, t=t).items():
            if name == "value":
                continue
            g = np.asarray(g)
            assert np.all(np.isfinite(g)), (fname, t, name)
            # Nothing flows to or from a -inf entry.
            if name in ("grad",):
                assert g[1] == 0 and g[3] == 0
            if name in ("jacfwd", "jacrev") and g.ndim == 2:
                assert np.all(g[:, [1, 3]] == 0) and np.all(g[[1, 3], :] == 0)
            if name in ("jacfwd", "jacrev") and g.ndim == 1:
                assert g[1] == 0 and g[3] == 0


# --- one or more +inf ---------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1.0, 0.3, 0.0])
def test_pos_inf_entries_share_the_mass_with_finite_gradients(t):
    x = jnp.array([INF, 1.0, INF, -INF, 3e38], jnp.float32)
    every = _all_derivatives(x, t=t)
    v = {k[0]: np.asarray(g) for k, g in every.items() if k[1] == "value"}
    np.testing.assert_array_equal(v["softargmax"], [0.5, 0, 0.5, 0, 0])
    assert float(v["logsumexp"]) == INF
    np.testing.assert_allclose(v["log_softargmax"], [-np.log(2), -INF, -np.log(2), -INF, -INF])
    assert float(v["softargmax_mean"]) == INF
    for key, g in every.items():
        if key[1] != "value":
            assert np.all(np.isfinite(np.asarray(g))), key


def test_single_pos_inf_is_one_hot():
    x = jnp.array([2.0, INF, -1.0])
    np.testing.assert_array_equal(js.softargmax(x), [0, 1, 0])
    np.testing.assert_array_equal(js.log_softargmax(x), [-INF, 0, -INF])


# --- all -inf, or every entry masked ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["all_neg_inf", "fully_masked"])
@pytest.mark.parametrize("t", [1.0, 0.0, 2.5])
def test_empty_row_is_zero_and_neg_inf_with_zero_gradients(kind, t):
    if kind == "all_neg_inf":
        x, w = jnp.full((3,), -INF), None
    else:
        x, w = jnp.array([1.0, jnp.nan, INF]), jnp.zeros((3,), bool)
    every = _all_derivatives(x, t=t, where=w)
    np.testing.assert_array_equal(every["softargmax", "value"], [0, 0, 0])
    np.testing.assert_array_equal(every["log_softargmax", "value"], [-INF] * 3)
    assert float(every["logsumexp", "value"]) == -INF
    assert float(every["softargmax_mean", "value"]) == -INF
    for (fname, name), g in every.items():
        if name != "value":  # every derivative, the t-derivative included
            np.testing.assert_array_equal(np.asarray(g), 0.0, err_msg=f"{fname} {name}")


def test_empty_row_does_not_disturb_its_neighbours():
    x = jnp.array([[1.0, 2.0, 3.0], [-INF, -INF, -INF], [0.0, 0.0, 0.0]])
    p = js.softargmax(x)
    np.testing.assert_allclose(p[0], jax.nn.softmax(x[0]), rtol=1e-6)
    np.testing.assert_array_equal(p[1], 0)
    np.testing.assert_allclose(p[2], 1 / 3, rtol=1e-6)


# --- a NaN in the row ---------------------------------------------------------------------------


def test_nan_stays_in_its_row_for_values_and_gradients():
    x = jnp.array([[1.0, jnp.nan, 2.0], [1.0, 2.0, 3.0]])

    @jax.jit  # one program for every function's value, gradient and Jacobian
    def run(x):
        out = {}
        for f in FUNCS:
            out[f.__name__] = (
                f(x),
                jax.grad(lambda x, f=f: jnp.sum(jnp.moveaxis(f(x), 0, -1)[..., 0]))(x),  # row 0
                jax.jacrev(f)(x),
            )
        return out

    for name, (y, g, jac) in run(x).items():
        y, g, jac = np.asarray(y), np.asarray(g), np.asarray(jac)
        assert np.all(np.isnan(y[0])), name
        assert not np.any(np.isnan(y[1])), name
        assert np.any(np.isnan(g[0])), name
        assert not np.any(np.isnan(g[1])), name
        # Row 1's outputs against row 1's inputs: untouched by the NaN in row 0.
        block = jac[1, 1] if y.ndim == 1 else jac[1, :, 1, :]
        assert not np.any(np.isnan(block)), name


# --- t = 0 --------------------------------------------------------------------------------------


def test_t_zero_values_and_defined_gradients():
    x = jnp.array([1.0, 4.0, 4.0, -2.0])
    every = _all_derivatives(x, t=0.0)
    np.testing.assert_array_equal(every["softargmax", "value"], [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(
        every["log_softargmax", "value"], [-INF, -np.log(2), -np.log(2), -INF], rtol=1e-7
    )
    assert float(every["logsumexp", "value"]) == 4.0
    assert float(every["softargmax_mean", "value"]) == 4.0
    for key, g in every.items():  # the t-derivatives ("dt") included
        if key[1] != "value":
            assert np.all(np.isfinite(np.asarray(g))), key
    # logsumexp_t ~ max + t log k near t = 0, so its t-derivative at 0 is log k (k = 2 here).
    np.testing.assert_allclose(every["logsumexp", "dt"], np.log(2), rtol=1e-6)
    np.testing.assert_allclose(every["logsumexp", "grad"], [0, 0.5, 0.5, 0])


@pytest.mark.parametrize("t", [0.0, 0.5])
def test_a_constant_temperature_under_jit_gives_the_eager_values(t):
    # With t a compile-time constant XLA folds what it can: a t = 0 scale factor of 2^127 applied
    # twice once became z * (2^127)^2 = z * inf, NaN on every maximum (found by H10).
    x = jnp.array([[0.5, 2.0, 2.0, -1.0], [3.0, -INF, 1.0, 0.0], [-INF] * 4, [INF, 1.0, INF, 0.0]])
    for f in FUNCS:
        jitted = jax.jit(lambda x, f=f: f(x, t=t))(x)
        np.testing.assert_array_equal(jitted, f(x, t=jnp.float32(t)), err_msg=f.__name__)


# --- empty axis ---------------------------------------------------------------------------------


def test_empty_axis():
    x = jnp.zeros((3, 0))
    assert js.softargmax(x).shape == (3, 0)
    assert js.log_softargmax(x).shape == (3, 0)
    np.testing.assert_array_equal(js.logsumexp(x, axis=-1), [-INF] * 3)
    np.testing.assert_array_equal(js.softargmax_mean(x), [-INF] * 3)


# --- masked entries are ignored -----------------------------------------------------------------


@jax.jit
def _values_and_jacobians(x, w):
    """Every function's value and Jacobian with a mask, one program per kernel for all junk."""
    return {f.__name__: (f(x, where=w), jax.jacrev(lambda x, f=f: f(x, where=w))(x)) for f in FUNCS}


@pytest.mark.parametrize("junk", [np.nan, INF, -INF, 1e30])
def test_masked_entries_change_nothing(junk):
    base = jnp.array([0.3, -1.0, 2.0, 0.0])
    w = jnp.array([True, True, True, False])
    x = base.at[3].set(junk)
    clean, dirty = _values_and_jacobians(base, w), _values_and_jacobians(x, w)
    for name in clean:
        (a, ga), (b, gb) = clean[name], dirty[name]
        np.testing.assert_array_equal(a, b, err_msg=name)
        np.testing.assert_array_equal(ga, gb, err_msg=name)
        assert np.all(np.asarray(gb)[..., 3] == 0), name
    e = np.exp([0.3, -1.0, 2.0])
    np.testing.assert_allclose(dirty["softargmax"][0][:3], e / e.sum(), rtol=1e-6)


def test_where_matches_jax_nn_on_ordinary_inputs():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(6, 7)), jnp.float32)
    w = jnp.asarray(rng.random((6, 7)) < 0.7).at[:, 0].set(True)
    np.testing.assert_allclose(
        js.softargmax(x, where=w), jax.nn.softmax(x, where=w), rtol=1e-5, atol=1e-7
    )
    lp, ref = js.log_softargmax(x, where=w), jax.nn.log_softmax(x, where=w)
    np.testing.assert_allclose(jnp.where(w, lp, 0), jnp.where(w, ref, 0), rtol=1e-5, atol=1e-6)


# --- no false alarms for jax_debug_nans / jax_debug_infs ------------------------------------------


def test_no_nan_or_inf_alarm_on_finite_inputs():
    x = jnp.asarray(np.random.default_rng(4).normal(size=(4, 5)) * 30, jnp.float32)

    # One program per temperature (the debug checks look at every jitted program's outputs, and
    # re-run it op by op on a NaN or inf): values, gradients in x and t, a Jacobian row.
    def everything(x, t):
        out = []
        for f in FUNCS:
            out += [
                f(x, t=t),
                jax.grad(lambda x: jnp.sum(f(x, t=t)))(x),
                jax.grad(lambda t: jnp.sum(f(x, t=t)))(t),
                jax.jacfwd(lambda x: f(x, t=t))(x[0]),
            ]
        return out

    with jax.debug_nans(True), jax.debug_infs(True):
        jax.block_until_ready(jax.jit(lambda x: everything(x, 1.0))(x))  # t = 1: no division
        jax.block_until_ready(jax.jit(everything)(x, jnp.float32(0.25)))


def test_nan_rows_on_long_rows():
    # XLA:CPU's fused max reduction drops NaN on long rows (an all-NaN row of 4096 has max -inf),
    # so short-row tests cannot catch a kernel that relies on it.
    x = jnp.zeros((4, 4096), jnp.float32).at[1, 5].set(jnp.nan).at[2].set(jnp.nan).at[3].set(-INF)
    for f in FUNCS:
        y = np.asarray(f(x))
        rows = y if y.ndim == 1 else y[:, 0]
        assert (
            not np.isnan(rows[0])
            and np.isnan(rows[1])
            and np.isnan(rows[2])
            and not np.isnan(rows[3])
        )
        if y.ndim == 2:
            assert np.all(np.isnan(y[1])) and np.all(np.isnan(y[2]))
    np.testing.assert_allclose(js.logsumexp(x, axis=-1)[0], np.log(4096.0), rtol=1e-6)
    assert float(js.logsumexp(x, axis=-1)[3]) == -INF
