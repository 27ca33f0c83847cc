"""Jacobians: analytic vs jax.jacfwd vs jax.jacrev vs check_grads, over shapes, axes, temperatures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsoft as js
from jaxsoft import _core
from tests.conftest import thorough

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


def _flat_jacobian(f, x, mode):
    jac = mode(f)(x)
    return np.asarray(jac).reshape(x.size, x.size)


def _analytic_full(x, axis, t):
    """The analytic (..., n, n) blocks scattered into the full (size, size) Jacobian."""
    n_total = x.size
    idx = np.arange(n_total).reshape(x.shape)
    axes = (axis,) if isinstance(axis, int) else axis
    axes = tuple(a % x.ndim for a in axes)
    k = len(axes)
    idx_c = np.moveaxis(idx, axes, tuple(range(-k, 0)))
    batch = idx_c.shape[:-k]
    idx_c = idx_c.reshape(batch + (-1,))
    blocks = np.asarray(js.softargmax_jacobian(x, axis=axis, t=t))
    full = np.zeros((n_total, n_total))
    for b in np.ndindex(*batch):
        rows = idx_c[b]
        full[np.ix_(rows, rows)] = blocks[b]
    return full


# CI: every shape/axis case at t = 1 and per-row t on both kernels; the thorough profile adds the
# extreme temperatures (which the check_grads and property tests also cover).
JAC_TEMPS = TEMPS if thorough() else {k: TEMPS[k] for k in ("t=1", "per-row")}


@both_kernels
@pytest.mark.parametrize("shape,axis", CASES)
@pytest.mark.parametrize("t", JAC_TEMPS.values(), ids=JAC_TEMPS.keys())
def test_analytic_jacobian_matches_jacfwd_and_jacrev(x64, shape, axis, t):
    x = jnp.asarray(_rng().normal(size=shape) * 2)
    t = _temperature(t, shape, axis)
    f = jax.jit(lambda x: js.softargmax(x, axis=axis, t=t))
    analytic = _analytic_full(x, axis, t)
    fwd = _flat_jacobian(f, x, jax.jacfwd)
    rev = _flat_jacobian(f, x, jax.jacrev)
    np.testing.assert_allclose(fwd, analytic, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(rev, analytic, rtol=1e-10, atol=1e-12)
    # log_softargmax: J = (I - 1 p^T) / t blockwise, i.e. the softargmax Jacobian divided by p_i.
    p = np.asarray(js.softargmax(x, axis=axis, t=t)).reshape(-1)
    lfwd = _flat_jacobian(jax.jit(lambda x: js.log_softargmax(x, axis=axis, t=t)), x, jax.jacfwd)
    np.testing.assert_allclose(lfwd * p[:, None], analytic, rtol=1e-9, atol=1e-12)


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


@both_kernels
@pytest.mark.parametrize("t", [0.05, 1.0, 20.0])
def test_jacobian_float32_matches_autodiff_under_jit_and_vmap(t):
    x = jnp.asarray(_rng().normal(size=(6, 8)), jnp.float32)
    analytic = js.softargmax_jacobian(x, t=t)
    per_row = jax.vmap(jax.jacfwd(lambda r: js.softargmax(r, t=t)))(x)
    per_row_rev = jax.jit(jax.vmap(jax.jacrev(lambda r: js.softargmax(r, t=t))))(x)
    atol = 2e-6 / min(t, 1.0)
    np.testing.assert_allclose(per_row, analytic, atol=atol)
    np.testing.assert_allclose(per_row_rev, analytic, atol=atol)


@both_kernels
def test_jacobian_matches_finite_differences(x64):
    x = jnp.asarray(_rng().normal(size=(7,)))
    eps = 1e-6
    fd = np.stack(
        [
            (js.softargmax(x.at[j].add(eps), t=0.8) - js.softargmax(x.at[j].add(-eps), t=0.8))
            / (2 * eps)
            for j in range(7)
        ],
        axis=1,
    )
    np.testing.assert_allclose(js.softargmax_jacobian(x, t=0.8), fd, atol=1e-8)


@both_kernels
def test_jacobian_at_edges():
    x = jnp.array([[0.0, -jnp.inf, 1.0], [jnp.inf, 2.0, jnp.inf], [-jnp.inf] * 3])
    jac = js.softargmax_jacobian(x)
    assert bool(jnp.all(jnp.isfinite(jac)))
    np.testing.assert_array_equal(jac[0, 1], 0)
    np.testing.assert_array_equal(jac[2], 0)
    np.testing.assert_allclose(jac[1], [[0.25, 0, -0.25], [0, 0, 0], [-0.25, 0, 0.25]])
    np.testing.assert_array_equal(js.softargmax_jacobian(x, t=0.0), 0)


@both_kernels
def test_jvp_and_vjp_helpers_are_o_n_products():
    x = jnp.asarray(_rng().normal(size=(4, 6)), jnp.float32)
    v = jnp.asarray(_rng().normal(size=(4, 6)), jnp.float32)
    jac = js.softargmax_jacobian(x, t=0.5)
    p, jv = js.softargmax_jvp(x, v, t=0.5)
    np.testing.assert_allclose(jv, jnp.einsum("bij,bj->bi", jac, v), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(p, js.softargmax(x, t=0.5))
    _, uj = js.softargmax_vjp(x, v, t=0.5)
    np.testing.assert_allclose(uj, jnp.einsum("bi,bij->bj", v, jac), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="v of shape"):
        js.softargmax_jvp(x, v[:, :3])


@both_kernels
def test_jvp_rule_is_linear_time():
    # The rule's jaxpr must not contain an n x n intermediate.
    x = jnp.zeros((1000,), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x, v: jax.jvp(lambda x: js.softargmax(x, t=0.5), (x,), (v,)))(
        x, x
    )
    assert "1000,1000" not in str(jaxpr)
