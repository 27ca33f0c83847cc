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
    """``{(function, derivative): value}``: every derivative of ``f(x, t=t, where=where)`` in
    DERIVS for every f in FUNCS, as one compiled program per (shape, where or not, kernel). ``t``
    and ``where`` are traced arguments, so the edge cases reuse it; one program instead of sixteen
    costs about a third of the compile time."""
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
            return {
                (f.__name__, name): DERIVS[name](lambda x, f=f: f(x, t=t, where=w))(x)
                for f in FUNCS
                for name in kinds
            }

        _COMPILED[key] = jax.jit(every)
    return _COMPILED[key](x, jnp.float32(t), where)


# --- finite, any magnitude ----------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 1e10, 1e30, 3e38])
def test_finite_any_magnitude_is_exact_with_finite_gradients(scale):
    x = jnp.array([0.5, -0.25, 1.0], jnp.float32) * jnp.float32(scale)
    p = js.softargmax(x)
    assert bool(jnp.all(jnp.isfinite(p)))
    np.testing.assert_allclose(float(p.sum()), 1.0, rtol=1e-6)
    if scale > 1:
        np.testing.assert_array_equal(p, [0.0, 0.0, 1.0])
        assert float(js.logsumexp(x)) == float(x[2])
    for key, g in _all_derivatives(x).items():
        assert bool(jnp.all(jnp.isfinite(g))), key


# --- some -inf ----------------------------------------------------------------------------------


def test_some_neg_inf_entries_get_zero_and_zero_gradient():
    x = jnp.array([1.0, -INF, 2.0, -INF], jnp.float32)
    ref = jax.nn.softmax(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(js.softargmax(x), [ref[0], 0, ref[1], 0], rtol=1e-6)
    np.testing.assert_allclose(js.logsumexp(x), jax.nn.logsumexp(jnp.array([1.0, 2.0])), rtol=1e-6)
    lp = js.log_softargmax(x)
    assert lp[1] == -INF and lp[3] == -INF
    for t in [1.0, 0.5, 0.0]:
        for (fname, name), g in _all_derivatives(x, t=t).items():
            assert bool(jnp.all(jnp.isfinite(g))), (fname, t, name)
            g = np.asarray(g)
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
    np.testing.assert_array_equal(js.softargmax(x, t=t), [0.5, 0, 0.5, 0, 0])
    assert float(js.logsumexp(x, t=t)) == INF
    np.testing.assert_allclose(
        js.log_softargmax(x, t=t), [-np.log(2), -INF, -np.log(2), -INF, -INF]
    )
    assert float(js.softargmax_mean(x, t=t)) == INF
    for key, g in _all_derivatives(x, t=t).items():
        assert not bool(jnp.any(jnp.isnan(g))), key
        assert bool(jnp.all(jnp.isfinite(g))), key


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
    np.testing.assert_array_equal(js.softargmax(x, t=t, where=w), [0, 0, 0])
    np.testing.assert_array_equal(js.log_softargmax(x, t=t, where=w), [-INF] * 3)
    assert float(js.logsumexp(x, t=t, where=w)) == -INF
    assert float(js.softargmax_mean(x, t=t, where=w)) == -INF
    for (fname, name), g in _all_derivatives(x, t=t, where=w).items():
        np.testing.assert_array_equal(np.asarray(g), 0.0, err_msg=f"{fname} {name}")
    for f in FUNCS:
        dt = jax.grad(lambda tt: jnp.sum(f(x, t=tt, where=w)))(jnp.float32(t))
        assert float(dt) == 0.0


def test_empty_row_does_not_disturb_its_neighbours():
    x = jnp.array([[1.0, 2.0, 3.0], [-INF, -INF, -INF], [0.0, 0.0, 0.0]])
    p = js.softargmax(x)
    np.testing.assert_allclose(p[0], jax.nn.softmax(x[0]), rtol=1e-6)
    np.testing.assert_array_equal(p[1], 0)
    np.testing.assert_allclose(p[2], 1 / 3, rtol=1e-6)


# --- a NaN in the row ---------------------------------------------------------------------------


def test_nan_stays_in_its_row_for_values_and_gradients():
    x = jnp.array([[1.0, jnp.nan, 2.0], [1.0, 2.0, 3.0]])
    for f in FUNCS:
        y = f(x)
        assert bool(jnp.all(jnp.isnan(y[0])))
        assert not bool(jnp.any(jnp.isnan(y[1])))
        g = jax.grad(
            lambda x: (
                jnp.sum(f(x) * jnp.array([1.0, 0.0])[:, None]) if y.ndim == 2 else jnp.sum(f(x)[0])
            )
        )(x)
        assert bool(jnp.any(jnp.isnan(g[0])))
        assert not bool(jnp.any(jnp.isnan(g[1])))
        # Row 1's outputs against row 1's inputs: untouched by the NaN in row 0.
        jac = np.asarray(jax.jacrev(f)(x))
        block = jac[1, 1] if y.ndim == 1 else jac[1, :, 1, :]
        assert not np.any(np.isnan(block))


# --- t = 0 --------------------------------------------------------------------------------------


def test_t_zero_values_and_defined_gradients():
    x = jnp.array([1.0, 4.0, 4.0, -2.0])
    np.testing.assert_array_equal(js.softargmax(x, t=0.0), [0, 0.5, 0.5, 0])
    assert float(js.logsumexp(x, t=0.0)) == 4.0
    assert float(js.softargmax_mean(x, t=0.0)) == 4.0
    for key, g in _all_derivatives(x, t=0.0).items():
        assert bool(jnp.all(jnp.isfinite(g))), key
    for f in FUNCS:
        dt = jax.grad(lambda t: jnp.sum(f(x, t=t)))(0.0)
        assert bool(jnp.isfinite(dt))
    # logsumexp_t ~ max + t log k near t = 0, so its t-derivative at 0 is log k (k = 2 here).
    np.testing.assert_allclose(jax.grad(lambda t: js.logsumexp(x, t=t))(0.0), np.log(2), rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda x: js.logsumexp(x, t=0.0))(x), [0, 0.5, 0.5, 0])


# --- empty axis ---------------------------------------------------------------------------------


def test_empty_axis():
    x = jnp.zeros((3, 0))
    assert js.softargmax(x).shape == (3, 0)
    assert js.log_softargmax(x).shape == (3, 0)
    np.testing.assert_array_equal(js.logsumexp(x, axis=-1), [-INF] * 3)
    np.testing.assert_array_equal(js.softargmax_mean(x), [-INF] * 3)


# --- masked entries are ignored -----------------------------------------------------------------


@pytest.mark.parametrize("junk", [np.nan, INF, -INF, 1e30])
def test_masked_entries_change_nothing(junk):
    base = jnp.array([0.3, -1.0, 2.0, 0.0])
    w = jnp.array([True, True, True, False])
    x = base.at[3].set(junk)
    for f in FUNCS:
        a = f(base, where=w)
        b = f(x, where=w)
        np.testing.assert_array_equal(a, b)
        ga = jax.jacrev(lambda x: f(x, where=w))(base)
        gb = jax.jacrev(lambda x: f(x, where=w))(x)
        np.testing.assert_array_equal(ga, gb)
        assert bool(jnp.all(gb[..., 3] == 0))
    np.testing.assert_allclose(js.softargmax(x, where=w)[:3], jax.nn.softmax(base[:3]), rtol=1e-6)


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
