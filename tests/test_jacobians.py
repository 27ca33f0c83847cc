"""Jacobians: analytic vs jax.jacfwd vs jax.jacrev vs check_grads, over shapes, axes, temperatures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsoft as js
from jaxsoft import _core
from tests.conftest import enable_x64, thorough

# The Jacobian tables run under each core kernel (the "kernel" fixture in conftest.py). The
# check_grads tests exercise the JVP rules, which every kernel shares (only the primal values they
# read differ, and those are checked on both kernels here and in test_properties.py), so they run
# once, on the kernel this backend dispatches to: they are the slowest tests of the suite.
both_kernels = pytest.mark.usefixtures("kernel")


@pytest.fixture
def dispatched():
    """The default per-platform kernel, even between the "kernel" fixture's groups."""
    with _core.use_kernel(None):
        yield


def _rng():
    """A fresh seeded generator: inputs must not depend on which tests ran before (xdist)."""
    return np.random.default_rng(0)


CASES = [  # (shape, axis)
    ((5,), -1),
    ((3, 4), 0),  # first
    ((2, 5, 3), 1),  # middle
    ((2, 3, 4), -1),  # last
    ((2, 3, 4), (0, 2)),  # tuple
]
TEMPS = {"t=0.05": 0.05, "t=1": 1.0, "t=20": 20.0, "per-row": "per-row"}


def _temperature(t, shape, axis):
    if t != "per-row":
        return t
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(a % len(shape) for a in axes)
    reduced = tuple(s for i, s in enumerate(shape) if i not in axes)
    return jnp.asarray(_rng().uniform(0.2, 3.0, size=reduced))


def _flat(jac, x):
    return np.asarray(jac).reshape(x.size, x.size)


def _scatter_blocks(blocks, shape, axis):
    """The analytic (..., n, n) blocks scattered into the full (size, size) Jacobian."""
    n_total = int(np.prod(shape))
    idx = np.arange(n_total).reshape(shape)
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(a % len(shape) for a in axes)
    k = len(axes)
    idx_c = np.moveaxis(idx, axes, tuple(range(-k, 0)))
    batch = idx_c.shape[:-k]
    idx_c = idx_c.reshape(batch + (-1,))
    full = np.zeros((n_total, n_total))
    for b in np.ndindex(*batch):
        rows = idx_c[b]
        full[np.ix_(rows, rows)] = blocks[b]
    return full


# CI: every shape/axis case at t = 1 and per-row t on both kernels; the thorough profile adds the
# extreme temperatures (which the check_grads and property tests also cover).
JAC_TEMPS = TEMPS if thorough() else {k: TEMPS[k] for k in ("t=1", "per-row")}


@pytest.fixture(scope="module")
def jacobian_tables(kernel):
    """Every (shape, axis, t) case of the table below, computed under one kernel in ONE program.

    Each case's jacfwd, jacrev, the log_softargmax jacfwd, the analytic blocks and p are traced
    exactly as a per-case ``jax.jit`` would trace them (t a Python float or a per-row array,
    closed over); one program for all cases compiles in a third of the time of a program (and
    the eager basis/reshape ops of jacfwd/jacrev) per case. Values come back as float64 NumPy.
    """
    del kernel  # selects the kernel the program below is traced under
    with enable_x64():
        cases = [(shape, axis, name) for name in JAC_TEMPS for shape, axis in CASES]
        xs = [jnp.asarray(_rng().normal(size=shape) * 2) for shape, _, _ in cases]
        ts = [_temperature(JAC_TEMPS[name], shape, axis) for shape, axis, name in cases]

        def one(x, axis, t):
            def f(x):
                return js.softargmax(x, axis=axis, t=t)

            def log_f(x):
                return js.log_softargmax(x, axis=axis, t=t)

            return (
                jax.jacfwd(f)(x),
                jax.jacrev(f)(x),
                jax.jacfwd(log_f)(x),
                js.softargmax_jacobian(x, axis=axis, t=t),
                f(x),
            )

        outs = jax.jit(lambda xs: [one(x, c[1], t) for x, c, t in zip(xs, cases, ts)])(xs)
        return {
            case: (np.asarray(x), *(np.asarray(a) for a in out))
            for case, x, out in zip(cases, xs, outs)
        }


@both_kernels
@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("t", list(JAC_TEMPS))
def test_analytic_jacobian_matches_jacfwd_and_jacrev(jacobian_tables, shape, axis, t):
    x, fwd, rev, log_fwd, blocks, p = jacobian_tables[(shape, axis, t)]
    analytic = _scatter_blocks(blocks, shape, axis)
    np.testing.assert_allclose(_flat(fwd, x), analytic, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_flat(rev, x), analytic, rtol=1e-10, atol=1e-12)
    # log_softargmax: J = (I - 1 p^T) / t blockwise, i.e. the softargmax Jacobian divided by p_i.
    lfwd = _flat(log_fwd, x)
    np.testing.assert_allclose(lfwd * p.reshape(-1)[:, None], analytic, rtol=1e-9, atol=1e-12)


def logsumexp(x, axis=-1, **kw):
    """jaxsoft.logsumexp over the last axis, as the other functions (its default is every axis)."""
    return js.logsumexp(x, axis, **kw)


FUNCS = [js.softargmax, js.log_softargmax, logsumexp, js.softargmax_mean]
# Every function meets every shape/axis case and every temperature kind at least once, without
# the full product (check_grads at order 2 is expensive to compile).
# CI: two temperatures per function (a scalar and a per-row one, each function on other shapes);
# the thorough profile adds t = 20.
GRAD_TEMPS = [0.5, 20.0, "per-row"] if thorough() else [0.5, "per-row"]
GRAD_CASES = [
    (f, CASES[(i + j) % len(CASES)], t)
    for i, f in enumerate(FUNCS)
    for j, t in enumerate(GRAD_TEMPS)
]


@pytest.mark.parametrize(
    "f,case,t", GRAD_CASES, ids=[f"{f.__name__}-{c[0]}-{c[1]}-{t}" for f, c, t in GRAD_CASES]
)
def test_check_grads_orders_1_and_2(x64, dispatched, f, case, t):
    shape, axis = case
    x = jnp.asarray(_rng().normal(size=shape))
    t = _temperature(t, shape, axis)
    check_grads(
        jax.jit(lambda x: f(x, axis=axis, t=t)), (x,), order=2, modes=("fwd", "rev"), eps=1e-5
    )
    # ... and in the temperature, scalar or per-row (order 2 in the thorough profile).
    check_grads(
        jax.jit(lambda t: f(x, axis=axis, t=t)),
        (jnp.asarray(t, jnp.float64),),
        order=2 if thorough() else 1,
        modes=("fwd", "rev"),
        eps=1e-6,
    )


@pytest.mark.parametrize("f", FUNCS, ids=lambda f: f.__name__)
def test_check_grads_with_mask(x64, dispatched, f):
    x = jnp.asarray(_rng().normal(size=(3, 5)))
    w = jnp.asarray([[1, 1, 0, 1, 1], [0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], bool)
    check_grads(
        jax.jit(lambda x: f(x, t=0.7, where=w)), (x,), order=2, modes=("fwd", "rev"), eps=1e-5
    )


FLOAT32_TEMPS = (0.05, 1.0, 20.0)


@pytest.fixture(scope="module")
def float32_jacobians(kernel):
    """Per t: the analytic float32 Jacobian, vmap(jacfwd) and vmap(jacrev), in one jitted program.

    t stays a Python float (t = 1 takes the unit-temperature path), as in a program per t.
    """
    del kernel  # selects the kernel the program below is traced under
    x = jnp.asarray(_rng().normal(size=(6, 8)), jnp.float32)

    def one(x, t):
        def f(r):
            return js.softargmax(r, t=t)

        return (
            js.softargmax_jacobian(x, t=t),
            jax.vmap(jax.jacfwd(f))(x),
            jax.vmap(jax.jacrev(f))(x),
        )

    outs = jax.jit(lambda x: [one(x, t) for t in FLOAT32_TEMPS])(x)
    return dict(zip(FLOAT32_TEMPS, outs))


@both_kernels
@pytest.mark.parametrize("t", FLOAT32_TEMPS)
def test_jacobian_float32_matches_autodiff_under_jit_and_vmap(float32_jacobians, t):
    analytic, per_row, per_row_rev = float32_jacobians[t]
    assert analytic.dtype == per_row.dtype == per_row_rev.dtype == jnp.float32
    atol = 2e-6 / min(t, 1.0)
    np.testing.assert_allclose(per_row, analytic, atol=atol)
    np.testing.assert_allclose(per_row_rev, analytic, atol=atol)


@both_kernels
def test_jacobian_matches_finite_differences(x64):
    x = _rng().normal(size=(7,))
    eps = 1e-6
    # Central differences: all 14 shifted copies of x in one batch (rows are independent), so one
    # softargmax call instead of one per shift.
    shifts = eps * np.eye(7)
    fx = np.asarray(js.softargmax(jnp.asarray(np.concatenate([x + shifts, x - shifts])), t=0.8))
    fd = ((fx[:7] - fx[7:]) / (2 * eps)).T
    np.testing.assert_allclose(js.softargmax_jacobian(jnp.asarray(x), t=0.8), fd, atol=1e-8)


@both_kernels
def test_jacobian_at_edges():
    x = jnp.array([[0.0, -jnp.inf, 1.0], [jnp.inf, 2.0, jnp.inf], [-jnp.inf] * 3])
    jac = np.asarray(js.softargmax_jacobian(x))  # indexed in NumPy: no eager compile per slice
    assert np.isfinite(jac).all()
    np.testing.assert_array_equal(jac[0, 1], 0)
    np.testing.assert_array_equal(jac[2], 0)
    np.testing.assert_allclose(jac[1], [[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]])
    np.testing.assert_array_equal(js.softargmax_jacobian(x, t=0.0), 0)


@both_kernels
def test_jvp_and_vjp_helpers_are_o_n_products():
    x = jnp.asarray(_rng().normal(size=(4, 6)), jnp.float32)
    v = jnp.asarray(_rng().normal(size=(4, 6)), jnp.float32)
    # The products with the explicit Jacobian in float64 NumPy (eager jnp ops compile one by one).
    jac, vn = np.asarray(js.softargmax_jacobian(x, t=0.5), np.float64), np.asarray(v, np.float64)
    p, jv = js.softargmax_jvp(x, v, t=0.5)
    np.testing.assert_allclose(jv, np.einsum("bij,bj->bi", jac, vn), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p, js.softargmax(x, t=0.5))
    _, uj = js.softargmax_vjp(x, v, t=0.5)
    np.testing.assert_allclose(uj, np.einsum("bi,bij->bj", vn, jac), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="v of shape"):
        js.softargmax_jvp(x, np.asarray(v)[:, :3])


@both_kernels
def test_jvp_rule_is_linear_time():
    # The rule's jaxpr must not contain an n x n intermediate.
    x = jnp.zeros((1000,), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x, v: jax.jvp(lambda x: js.softargmax(x, t=0.5), (x,), (v,)))(
        x, x
    )
    assert "1000,1000" not in str(jaxpr)
