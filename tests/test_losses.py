"""Tests for jaxsoft.losses: cross_entropy, cross_entropy_with_probs, sigmoid_cross_entropy.

Compilation dominates the run time, so most tests register the function they evaluate (its value,
or its value and gradients) with its inputs, and one compiled program evaluates them all (the
module-scoped loss_and_grads and values fixtures); the edge behaviours are computed once per code
path there and asserted row by row in small tests. Plain calls, the jit and vmap transforms, the
eager argument checks and check_grads stay in their own tests.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxsoft
from jaxsoft.losses import (
    cross_entropy,
    cross_entropy_with_probs,
    mean_over_valid,
    sigmoid_cross_entropy,
)

F32_EPS = float(np.finfo(np.float32).eps)

# The references, jitted: one compilation each instead of one per eager operation.
OPTAX_INT = jax.jit(optax.softmax_cross_entropy_with_integer_labels, static_argnames="axis")
OPTAX_PROBS = jax.jit(optax.softmax_cross_entropy)


@pytest.fixture
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


# name -> build() -> (f, args): for the loss_and_grads fixture (f's value and gradients) and the
# values fixture (f's value alone).
_PROGRAMS = {}
_VALUE_PROGRAMS = {}


def program(build):
    """Register ``build`` (named ``_name``), which returns ``(f, args)``: the ``loss_and_grads``
    fixture gives ``f(*args)`` and the gradients of its sum in every argument as ``name``."""
    name = build.__name__.removeprefix("_")
    assert name not in _PROGRAMS, name
    _PROGRAMS[name] = build
    return build


def value_program(build):
    """Register ``build`` (named ``_name``), which returns ``(f, args)``: the ``values`` fixture
    gives ``f(*args)`` as ``name``. What an eager call would pass to the function's own jit (arrays,
    Python temperatures) is an argument, so it stays an argument."""
    name = build.__name__.removeprefix("_")
    assert name not in _VALUE_PROGRAMS, name
    _VALUE_PROGRAMS[name] = build
    return build


@pytest.fixture(scope="module")
def _compiled():
    """Every registered program's results, as NumPy arrays, from ONE compiled program.

    Compiling dominates this file: small programs compile together in less time than one by
    one (eight cross_entropy value-and-gradient programs: about half). Each keeps its arguments as arguments (Python numbers weakly typed) and
    its constants as closure constants, as its own jit (or eager call) did.
    """
    built = {name: build() for name, build in _PROGRAMS.items()}
    built_values = {name: build() for name, build in _VALUE_PROGRAMS.items()}

    @jax.jit
    def run(args, value_args):
        out = {}
        for name, (f, _) in built.items():
            loss, pullback = jax.vjp(f, *args[name])
            out[name] = (loss, pullback(jnp.ones_like(loss)))
        values = {name: f(*value_args[name]) for name, (f, _) in built_values.items()}
        return out, values

    results, values = run(
        {name: args for name, (_, args) in built.items()},
        {name: args for name, (_, args) in built_values.items()},
    )
    grads = {
        name: (np.asarray(loss), [np.asarray(g) for g in grads])
        for name, (loss, grads) in results.items()
    }
    return grads, jax.tree.map(np.asarray, values)


@pytest.fixture(scope="module")
def loss_and_grads(_compiled):
    """``{name: (f(*args), [gradients of its sum in every argument])}`` (``program``)."""
    return _compiled[0]


@pytest.fixture(scope="module")
def values(_compiled):
    """``{name: f(*args)}`` (``value_program``)."""
    return _compiled[1]


def rand(shape, seed=0, scale=3.0, dtype=np.float32):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(dtype)


def labels_for(shape, n, seed=1):
    return np.random.default_rng(seed).integers(0, n, size=shape).astype(np.int32)


def np_log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def ce_vmapped(x, y):
    return jax.vmap(lambda a, b: cross_entropy(a, b))(x, y)


# --------------------------------------------------------------------------------------------------
# Agreement with optax and a float64 NumPy reference on ordinary inputs (plain, jit, vmap).
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, transform",
    [((6, 5), lambda f: f), ((4, 3, 6), jax.jit), ((6, 5), lambda f: ce_vmapped)],
    ids=["plain", "jit", "vmap"],
)
def test_cross_entropy_matches_optax_and_numpy(shape, transform):
    x, y = rand(shape), labels_for(shape[:-1], shape[-1])
    got = transform(lambda a, b: cross_entropy(a, b))(x, y)
    want = OPTAX_INT(x, y)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    ref = -np.take_along_axis(np_log_softmax(x), y[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("transform", [lambda f: f, jax.jit], ids=["plain", "jit"])
def test_cross_entropy_with_probs_matches_optax_and_numpy(transform):
    x = rand((6, 5))
    q = np.random.default_rng(2).dirichlet(np.ones(5), size=6).astype(np.float32)
    got = transform(lambda a, b: cross_entropy_with_probs(a, b))(x, q)
    np.testing.assert_allclose(got, OPTAX_PROBS(x, q), rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got, -np.sum(q * np_log_softmax(x), -1), rtol=2e-6, atol=1e-6)


def _gradient_inputs():
    x, y = rand((6, 5)), labels_for((6,), 5)
    q = np.random.default_rng(3).dirichlet(np.ones(5), size=6).astype(np.float32)
    return x, y, q


@program
def _gradient_labels():
    x, y, _ = _gradient_inputs()
    return (lambda a: cross_entropy(a, y)), (x,)


@program
def _gradient_probs():
    x, _, q = _gradient_inputs()
    return (lambda a: cross_entropy_with_probs(a, q)), (x,)


def test_gradients_are_softargmax_minus_target(loss_and_grads):
    x, y, q = _gradient_inputs()
    p = np.exp(np_log_softmax(x))
    _, (g,) = loss_and_grads["gradient_labels"]
    np.testing.assert_allclose(g, p - np.eye(5)[y], atol=1e-6)
    _, (gq,) = loss_and_grads["gradient_probs"]
    np.testing.assert_allclose(gq, p - q, atol=1e-6)


@pytest.mark.parametrize("axis", [(2, 1), (0, 2)])
def test_tuple_axis_label_is_flat_index_in_given_order(axis):
    x = rand((3, 4, 5))
    batch = tuple(s for i, s in enumerate(x.shape) if i not in axis)
    n = int(np.prod([x.shape[a] for a in axis]))
    y = labels_for(batch, n)
    got = cross_entropy(x, y, axis=axis)
    want = OPTAX_INT(x, y, axis=axis)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    # Independently: move the class axes last in the given order and flatten.
    rest = [i for i in range(3) if i not in axis]
    flat = np.transpose(x, rest + list(axis)).reshape(batch + (n,))
    ref = -np.take_along_axis(np_log_softmax(flat), y[..., None], -1)[..., 0]
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=1e-6)
    onehot = np.eye(n)[y].reshape(batch + tuple(x.shape[a] for a in axis))
    q = np.moveaxis(onehot, tuple(range(len(batch), 3)), axis)
    np.testing.assert_allclose(cross_entropy_with_probs(x, q, axis=axis), ref, rtol=2e-6, atol=1e-6)


def _where_mask_inputs():
    x, y = rand((6, 5)), labels_for((6,), 5)
    where = np.random.default_rng(4).random((6, 5)) > 0.4
    where[np.arange(6), y] = True
    return x, y, np.eye(5)[y], where


@value_program
def _where_mask():
    def f(x, y, q, where):
        return (
            (
                cross_entropy(x, y, where=where),
                optax.softmax_cross_entropy_with_integer_labels(x, y, where=where),
            ),
            (
                cross_entropy_with_probs(x, q, where=where),
                optax.softmax_cross_entropy(x, q, where=where),
            ),
        )

    return f, _where_mask_inputs()


def test_where_mask_matches_optax_when_labels_are_included(values):
    (got, want), (got_q, want_q) = values["where_mask"]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(got_q, want_q, rtol=2e-6, atol=1e-6)


@program
def _label_smoothing():
    x, y = rand((6, 5)), labels_for((6,), 5)
    return (lambda a: cross_entropy(a, y, label_smoothing=0.1)), (x,)


def test_label_smoothing_matches_optax_smooth_labels(loss_and_grads):
    x, y = rand((6, 5)), labels_for((6,), 5)
    got, (g,) = loss_and_grads["label_smoothing"]
    want = OPTAX_PROBS(x, np.asarray(optax.smooth_labels(np.eye(5)[y], 0.1)))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)
    q = 0.9 * np.eye(5)[y] + 0.1 / 5
    np.testing.assert_allclose(g, np.exp(np_log_softmax(x)) - q, atol=1e-6)


def _smoothing_spread_inputs():
    x, y = rand((6, 5)), labels_for((6,), 3)
    where = np.ones((6, 5), bool)
    where[:, 3:] = False
    return x, y, where


@value_program
def _smoothing_spread():
    return (lambda x, y, where: cross_entropy(x, y, where=where, label_smoothing=0.2)), (
        _smoothing_spread_inputs()
    )


def test_label_smoothing_spreads_over_included_classes_only(values):
    x, y, _ = _smoothing_spread_inputs()
    q = 0.8 * np.eye(3)[y] + 0.2 / 3
    got = values["smoothing_spread"]
    np.testing.assert_allclose(got, -np.sum(q * np_log_softmax(x[:, :3]), -1), rtol=2e-6)


ROW_T = np.array([0.5, 1.0, 2.0, 3.0, 0.25, 1.5], np.float32)


@value_program
def _row_temperature():
    return (lambda x, y, t: cross_entropy(x, y, t=t)), (rand((6, 5)), labels_for((6,), 5), ROW_T)


def test_temperature_divides_the_logits(values):
    x, y, t = rand((6, 5)), labels_for((6,), 5), ROW_T
    ref = -np.take_along_axis(np_log_softmax(x / t[:, None]), y[:, None], -1)[:, 0]
    np.testing.assert_allclose(values["row_temperature"], ref, rtol=2e-6)


# --------------------------------------------------------------------------------------------------
# Precision: tiny losses of confident correct predictions (mpmath reference).
# --------------------------------------------------------------------------------------------------

CONFIDENT = np.array(
    [
        [0.0, -20.0, -25.0],
        [10.0, -20.0, -15.0],
        [0.0, -40.0, -50.0],
        [3.0, -60.0, -60.0],
        [0.0, -80.0, -85.0],  # exp(-90) would be subnormal, which XLA:CPU flushes to 0
        [1e4, 1e4 - 30.0, 0.0],
    ],
    np.float32,
)


def mp_cross_entropy(x, y):
    """-log softargmax(x)_y = log1p(sum_{j != y} exp(x_j - x_y)) with 60 digits."""
    mpmath.mp.dps = 60
    out = []
    for row, label in zip(np.asarray(x, np.float64), y):
        xy = mpmath.mpf(float(row[label]))
        s = mpmath.fsum(
            mpmath.exp(mpmath.mpf(float(v)) - xy) for j, v in enumerate(row) if j != label
        )
        out.append(float(mpmath.log1p(s)))
    return np.array(out)


def rel_err(got, want):
    return np.abs(np.asarray(got, np.float64) - want) / np.abs(want)


@value_program
def _tiny_losses():
    def f(x, y, q):
        return (
            cross_entropy(x, y),
            optax.softmax_cross_entropy_with_integer_labels(x, y),
            cross_entropy_with_probs(x, q),
        )

    y = np.zeros(len(CONFIDENT), np.int32)
    return f, (CONFIDENT, y, np.eye(3)[y])


def test_tiny_losses_are_exact_where_optax_rounds_to_zero(values):
    y = np.zeros(len(CONFIDENT), np.int32)
    want = mp_cross_entropy(CONFIDENT, y)
    assert np.all(want > 0) and np.all(want < 1e-8)
    got, got_optax, probs = values["tiny_losses"]
    ours = rel_err(got, want)
    theirs = rel_err(got_optax, want)
    print("\ntiny CE: mpmath value, jaxsoft rel err, optax rel err")
    for w, a, b in zip(want, ours, theirs):
        print(f"  {w:.6e}  {a:.2e}  {b:.2e}")
    assert np.all(ours < 4 * F32_EPS)
    assert np.all(theirs > 0.5)  # optax's logsumexp(x) - x_y rounds every one of them to 0
    assert np.all(rel_err(probs, want) < 4 * F32_EPS)


def test_tiny_losses_float64(x64):
    x = np.array([[0.0, -40.0, -45.0], [5.0, -700.0, -30.0]])
    y = np.array([0, 0])
    want = mp_cross_entropy(x, y)
    got = np.asarray(cross_entropy(jnp.asarray(x), y))
    assert got.dtype == np.float64
    assert np.all(rel_err(got, want) < 4 * np.finfo(np.float64).eps)


def test_ordinary_losses_match_mpmath_to_a_few_ulps():
    x, y = rand((6, 5), seed=5, scale=5.0), labels_for((6,), 5, seed=6)
    assert np.all(rel_err(cross_entropy(x, y), mp_cross_entropy(x, y)) < 8 * F32_EPS)


# --------------------------------------------------------------------------------------------------
# Derivatives (float64, jax.test_util.check_grads).
# --------------------------------------------------------------------------------------------------


def test_check_grads_integer_labels_in_logits_and_temperature(x64):
    x = jnp.asarray(rand((3, 4), dtype=np.float64))
    y = np.array([0, 3, 1])
    t = jnp.array([0.7, 1.3, 2.0])
    check_grads(lambda a, s: cross_entropy(a, y, t=s), (x, t), order=1, modes=("rev",))
    # Second order as forward-over-reverse (Hessian-vector products), in the logits and in t.
    grads = jax.grad(lambda a, s: cross_entropy(a, y, t=s).sum(), argnums=(0, 1))
    check_grads(grads, (x, t), order=1, modes=("fwd",))


def test_check_grads_with_mask_smoothing_and_probs(x64):
    x = jnp.asarray(rand((3, 4), dtype=np.float64))
    y = np.array([0, 3, 1])
    where = np.array([[True, True, False, True]] * 3)
    check_grads(
        lambda a, s: cross_entropy(a, y, t=s, where=where, label_smoothing=0.2),
        (x, 1.3),
        order=1,
        modes=("rev",),
    )
    q = jnp.asarray(np.random.default_rng(7).dirichlet(np.ones(4), size=3))
    check_grads(
        lambda a, b, s: cross_entropy_with_probs(a, b, t=s), (x, q, 1.3), order=1, modes=("rev",)
    )


def test_temperature_derivative_is_entropy_minus_loss_over_t(x64):
    x = jnp.asarray(rand((4, 5), dtype=np.float64))
    y = np.array([0, 1, 2, 4])
    t = 1.7
    got = jax.grad(lambda s: cross_entropy(x, y, t=s).sum())(t)
    p = np.exp(np_log_softmax(np.asarray(x) / t))
    ce = -np.log(p[np.arange(4), y])
    entropy = -np.sum(p * np.log(p), axis=-1)
    np.testing.assert_allclose(got, np.sum((entropy - ce) / t), rtol=1e-12)


@program
def _target_gradient():
    x = np.array([[2.0, 0.0, -3.0, -np.inf]], np.float32)
    q = np.array([[1.0, 0.0, 0.0, 0.0]], np.float32)
    return cross_entropy_with_probs, (x, q)


def test_target_gradient_is_minus_log_p_even_where_q_is_zero(loss_and_grads):
    """SPEC 5.3: 0 * log 0 = 0 must not zero the target gradient."""
    x = np.array([[2.0, 0.0, -3.0, -np.inf]], np.float32)
    _, (_, gq) = loss_and_grads["target_gradient"]
    logp = np_log_softmax(x[:, :3])
    np.testing.assert_allclose(gq[0, :3], -logp[0], rtol=1e-6)
    assert np.all(gq[0, 1:3] > 0)
    # p = 0 on the -inf logit: a constant there, as log_softargmax treats it; finite, not NaN.
    assert gq[0, 3] == 0


MASKED_STUDENT = np.array([[1.0, 0.5, -np.inf], [0.0, 2.0, -np.inf]], np.float32)
MASKED_TEACHER = np.array([[0.3, 0.1, -np.inf], [1.0, -1.0, -np.inf]], np.float32)


@program
def _masked_teacher():
    student = MASKED_STUDENT
    return (lambda tl: cross_entropy_with_probs(student, jaxsoft.softargmax(tl))), (MASKED_TEACHER,)


def test_target_gradient_through_a_masked_teacher_has_no_nan(loss_and_grads):
    """A teacher's softargmax with the same -inf entries as the student backpropagates cleanly."""
    student, teacher = MASKED_STUDENT, MASKED_TEACHER
    _, (g,) = loss_and_grads["masked_teacher"]
    assert np.all(np.isfinite(g)) and np.all(g[:, 2] == 0)
    # The same composite with the -inf column removed, by hand: d/dz_j = p_j (c_j - <p, c>),
    # c = -log softargmax(student) the target gradient, p = softargmax(teacher).
    p = np.exp(np_log_softmax(teacher[:, :2]))
    c = -np_log_softmax(student[:, :2])
    np.testing.assert_allclose(g[:, :2], p * (c - np.sum(p * c, -1, keepdims=True)), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Edges (SPEC 5.4, 6), computed once per code path: unmasked with t = 1 (the fast path),
# unmasked with a per-row t, and masked with a per-row t.
# --------------------------------------------------------------------------------------------------

NAN = np.nan
INF = np.inf
# name: (logits, label, t, where)
EDGE_CASES = {
    "finite": ([1.0, -0.5, 2.0, 0.0], 0, 0.7, None),
    "label_on_neg_inf": ([0.0, -INF, 1.0, 0.5], 1, 1.0, None),
    "other_neg_inf": ([0.0, -INF, 1.0, 0.5], 2, 1.0, None),
    "all_neg_inf": ([-INF] * 4, 0, 1.0, None),
    "plus_inf_label": ([INF, 0.0, INF, -INF], 0, 1.0, None),
    "plus_inf_other": ([INF, 0.0, INF, -INF], 1, 1.0, None),
    "huge": ([3e38, 3e38, -3e38, 0.0], 1, 1.0, None),
    "ties": ([2.0, 2.0, 0.0, 2.0], 3, 1.0, None),
    "nan": ([NAN, 0.0, 1.0, 2.0], 3, 1.0, None),
    "t0_tie": ([3.0, 3.0, 1.0, 0.0], 0, 0.0, None),
    "t0_loser": ([3.0, 1.0, 0.0, 0.0], 1, 0.0, None),
    "masked_label": ([1.0, 2.0, 0.5, 0.0], 1, 1.0, [True, False, True, True]),
    "fully_masked": ([NAN, INF, -INF, 1.0], 2, 1.0, [False] * 4),
    "masked_garbage": ([0.5, NAN, -1.0, INF], 0, 0.6, [True, False, True, False]),
}
NAMES = list(EDGE_CASES)
ROW = {name: i for i, name in enumerate(NAMES)}


def _edge_arrays():
    x = np.array([c[0] for c in EDGE_CASES.values()], np.float32)
    y = np.array([c[1] for c in EDGE_CASES.values()], np.int32)
    t = np.array([c[2] for c in EDGE_CASES.values()], np.float32)
    where = np.array([c[3] if c[3] is not None else [True] * 4 for c in EDGE_CASES.values()])
    return x, y, t, where


EDGE_MODES = ["fast", "per_row_t", "masked"]
EDGE_FUNCTIONS = ["ours", "probs", "ref"]


def _edge_mode(mode):
    """The rows of one code path, and its cross_entropy, cross_entropy_with_probs with one-hot
    targets and reference -log_softargmax(x)[y]. Rows a path cannot express (t != 1 without
    per-row t, masks without where) are left out of that path."""
    x, y, t, where = _edge_arrays()
    if mode == "fast":
        rows = (t == 1) & where.all(axis=1)
        t_arg, w_arg = 1.0, None
    elif mode == "per_row_t":
        rows = where.all(axis=1)
        t_arg, w_arg = t[rows], None
    else:
        rows = np.ones(len(y), bool)
        t_arg, w_arg = t, where
    x, y, q = x[rows], y[rows], np.eye(4, dtype=np.float32)[y[rows]]
    t_ref = t_arg if np.ndim(t_arg) == 0 else t_arg[:, None]

    def ref(a):
        logp = jaxsoft.log_softargmax(a, t=t_ref, where=w_arg)
        return -jnp.take_along_axis(logp, y[:, None], -1)[:, 0]

    fns = {
        "ours": lambda a: cross_entropy(a, y, t=t_arg, where=w_arg),
        "probs": lambda a: cross_entropy_with_probs(a, q, t=t_arg, where=w_arg),
        "ref": ref,
    }
    return rows, x, fns


def _edge_program(mode, which):
    def build():
        _, x, fns = _edge_mode(mode)
        return fns[which], (x,)

    build.__name__ = f"_edges_{mode}_{which}"
    return program(build)


for _mode in EDGE_MODES:
    for _which in EDGE_FUNCTIONS:
        _edge_program(_mode, _which)


@pytest.fixture(scope="module", params=EDGE_MODES)
def edges(request, loss_and_grads):
    """Loss and gradients of cross_entropy, of cross_entropy_with_probs with one-hot targets,
    and of the reference -log_softargmax(x)[y], on every edge row of one code path (from the
    loss_and_grads program)."""
    mode = request.param
    rows, x, _ = _edge_mode(mode)
    results = {which: loss_and_grads[f"edges_{mode}_{which}"] for which in EDGE_FUNCTIONS}
    names = [n for n, r in zip(NAMES, rows) if r]
    return {"names": names, "x": x, **results}


def pick(edges, name, which="ours"):
    """(loss, grad in the logits) of one row, or None when this code path does not have it."""
    if name not in edges["names"]:
        return None
    i = edges["names"].index(name)
    loss, grads = edges[which]
    return loss[i], grads[0][i]


def test_edge_rows_agree_with_log_softargmax_in_values_and_grads(edges):
    """Except fully masked rows, where the loss is 0 rather than -log 0 (SPEC 5.4), and, for
    probability targets, a target on a masked entry, which leaves the computation with it."""
    ref_loss, (ref_g,) = edges["ref"]
    for which in ("ours", "probs"):
        skip = {"fully_masked"} | ({"masked_label"} if which == "probs" else set())
        keep = [i for i, n in enumerate(edges["names"]) if n not in skip]
        loss, grads = edges[which]
        np.testing.assert_allclose(loss[keep], ref_loss[keep], rtol=1e-6)
        # Rows with a +inf loss: our convention is a zero gradient; the reference agrees.
        np.testing.assert_allclose(grads[0][keep], ref_g[keep], rtol=1e-6, atol=1e-7)


def test_gradients_are_never_nan_outside_nan_rows(edges):
    for which in ("ours", "probs"):
        loss, grads = edges[which]
        for i, name in enumerate(edges["names"]):
            if name != "nan":
                assert not np.any(np.isnan(grads[0][i])), (which, name)
                assert not np.isnan(loss[i]), (which, name)


def test_nan_row_stays_nan(edges):
    loss, g = pick(edges, "nan")
    assert np.isnan(loss) and np.all(np.isnan(g))


@pytest.mark.parametrize(
    "name", ["label_on_neg_inf", "all_neg_inf", "plus_inf_other", "t0_loser", "masked_label"]
)
def test_label_with_zero_probability_gives_inf_and_zero_grad(edges, name):
    for which in ("ours", "probs"):
        if which == "probs" and name == "masked_label":
            continue  # a target weight on a masked entry is ignored: see the test below
        got = pick(edges, name, which)
        if got is not None:
            assert got[0] == np.inf and np.all(got[1] == 0), which


def test_probs_target_weight_on_masked_entry_is_ignored(edges):
    """SPEC 5.4 (defect 6 of issue 12): the one-hot target sits on a masked entry, so no weight
    is left: loss 0 and zero gradient (optax gives 0 too; we used to give +inf)."""
    got = pick(edges, "masked_label", "probs")
    if got is not None:
        assert got[0] == 0 and np.all(got[1] == 0)


def test_fully_masked_row_has_zero_loss_and_zero_grads(edges):
    for which in ("ours", "probs"):
        got = pick(edges, "fully_masked", which)
        if got is not None:
            assert got[0] == 0 and np.all(got[1] == 0)


def test_neg_inf_logit_elsewhere_is_ignored(edges):
    got = pick(edges, "other_neg_inf")
    if got is not None:
        p = np.exp(np_log_softmax([0.0, 1.0, 0.5]))
        np.testing.assert_allclose(got[0], -np.log(p[1]), rtol=1e-6)
        np.testing.assert_allclose(got[1], [p[0], 0.0, p[1] - 1, p[2]], atol=1e-7)


def test_plus_inf_logits_share_the_mass(edges):
    got = pick(edges, "plus_inf_label")
    if got is not None:
        np.testing.assert_allclose(got[0], np.log(2), rtol=1e-6)
        np.testing.assert_allclose(got[1], [-0.5, 0.0, 0.5, 0.0])


def test_huge_finite_logits_do_not_overflow(edges):
    got = pick(edges, "huge")
    if got is not None:
        np.testing.assert_allclose(got[0], np.log(2), rtol=1e-6)
        np.testing.assert_allclose(got[1], [0.5, -0.5, 0.0, 0.0], atol=1e-7)


def test_ties_at_the_max(edges):
    got = pick(edges, "ties")
    if got is not None:
        np.testing.assert_allclose(got[0], np.log(3 + np.exp(-2.0)), rtol=1e-6)


def test_hard_argmax_at_t_zero_splits_ties_with_zero_grad(edges):
    got = pick(edges, "t0_tie")
    if got is not None:
        np.testing.assert_allclose(got[0], np.log(2), rtol=1e-6)
        assert np.all(got[1] == 0)


def test_masked_entries_are_ignored_even_when_nan_or_inf(edges):
    got = pick(edges, "masked_garbage")
    if got is not None:
        logp = np_log_softmax(np.array([0.5, -1.0]) / 0.6)
        np.testing.assert_allclose(got[0], -logp[0], rtol=1e-6)
        p = np.exp(logp)
        np.testing.assert_allclose(got[1], [(p[0] - 1) / 0.6, 0, p[1] / 0.6, 0], rtol=1e-6)


@program
def _target_on_neg_inf():
    x = np.array([[0.0, -np.inf, 1.0], [0.0, -np.inf, 1.0]], np.float32)
    q = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5]], np.float32)
    return cross_entropy_with_probs, (x, q)


def test_positive_target_weight_on_neg_inf_logit_is_inf_zero_weight_is_not(loss_and_grads):
    loss, (g, gq) = loss_and_grads["target_on_neg_inf"]
    assert loss[0] == np.inf and np.all(g[0] == 0)
    np.testing.assert_allclose(loss[1], -0.5 * np.sum(np_log_softmax([0.0, 1.0])), rtol=1e-6)
    assert not np.any(np.isnan(gq))


LOW_DTYPES = [jnp.bfloat16, jnp.float16]


def _low_precision_program(dtype):
    def build():
        # NumPy rounds float32 to the dtype as jnp.asarray does.
        return (lambda x, y: cross_entropy(x, y)), (rand((6, 5)).astype(dtype), labels_for((6,), 5))

    build.__name__ = f"_low_precision_{jnp.dtype(dtype).name}"
    return value_program(build)


for _dtype in LOW_DTYPES:
    _low_precision_program(_dtype)


@pytest.mark.parametrize("dtype", LOW_DTYPES)
def test_low_precision_inputs_return_their_dtype(values, dtype):
    x = rand((6, 5)).astype(dtype)
    y = labels_for((6,), 5)
    got = values[f"low_precision_{jnp.dtype(dtype).name}"]
    assert got.dtype == dtype
    want = -np.take_along_axis(np_log_softmax(np.asarray(x, np.float32)), y[:, None], -1)[:, 0]
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)


def test_low_precision_gradient_keeps_dtype():
    x = jnp.asarray(rand((6, 5)), jnp.bfloat16)
    g = jax.grad(lambda a: cross_entropy(a, labels_for((6,), 5)).astype(jnp.float32).sum())(x)
    assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))


# --------------------------------------------------------------------------------------------------
# ignore_index and reductions.
# --------------------------------------------------------------------------------------------------


def _ignored_inputs():
    x = rand((6, 5))
    x[2] = np.nan
    return x, np.array([1, -100, -100, 4, 0, 2])


@program
def _ignored_rows():
    x, y = _ignored_inputs()
    return (lambda a: cross_entropy(a, y, ignore_index=-100)), (x,)


def test_ignored_rows_have_zero_loss_and_zero_grad_even_with_nan(loss_and_grads):
    x, y = _ignored_inputs()
    loss, (g,) = loss_and_grads["ignored_rows"]
    assert loss[1] == 0 and loss[2] == 0
    assert np.all(g[1:3] == 0)
    keep = np.array([0, 3, 4, 5])
    ref = -np.take_along_axis(np_log_softmax(x[keep]), y[keep, None], -1)[:, 0]
    np.testing.assert_allclose(loss[keep], ref, rtol=1e-6)


MEAN_LABELS = np.array([0, -1, 2, -1, 1, 4])


@program
def _mean_ignoring():
    y = MEAN_LABELS
    return (lambda a: cross_entropy(a, y, ignore_index=-1, reduction="mean")), (rand((6, 5)),)


def test_reduction_mean_averages_over_non_ignored_examples(loss_and_grads):
    x = rand((6, 5))
    y = MEAN_LABELS
    keep = np.array([0, 2, 4, 5])
    per = -np.take_along_axis(np_log_softmax(x[keep]), y[keep, None], -1)[:, 0]
    mean, (g,) = loss_and_grads["mean_ignoring"]
    np.testing.assert_allclose(mean, per.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        cross_entropy(x, y, ignore_index=-1, reduction="sum"), per.sum(), rtol=1e-6
    )
    want = np.zeros_like(x)
    want[keep] = (np.exp(np_log_softmax(x[keep])) - np.eye(5)[y[keep]]) / len(keep)
    np.testing.assert_allclose(g, want, atol=1e-6)


@value_program
def _mean_masked_rows():
    def f(x, y, q, where):
        return (
            cross_entropy(x, y, where=where, reduction="mean"),
            cross_entropy_with_probs(x, q, where=where, reduction="mean"),
        )

    x, y = rand((6, 5)), labels_for((6,), 5)
    where = np.ones((6, 5), bool)
    where[0] = False
    return f, (x, y, np.eye(5)[y], where)


def test_reduction_mean_leaves_out_fully_masked_rows(values):
    x, y = rand((6, 5)), labels_for((6,), 5)
    ref = -np.take_along_axis(np_log_softmax(x[1:]), y[1:, None], -1)[:, 0]
    got, got_q = values["mean_masked_rows"]
    np.testing.assert_allclose(got, ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(got_q, ref.mean(), rtol=1e-6)


def test_mean_over_valid():
    losses = jnp.array([1.0, jnp.nan, 3.0, jnp.inf])
    valid = jnp.array([True, False, True, False])
    assert float(mean_over_valid(losses, valid)) == 2.0
    g = jax.grad(lambda v: mean_over_valid(v, valid))(losses)
    np.testing.assert_array_equal(g, [0.5, 0.0, 0.5, 0.0])
    assert float(mean_over_valid(losses, jnp.zeros(4, bool))) == 0.0
    assert float(mean_over_valid(jnp.array([1.0, 2.0]))) == 1.5


# --------------------------------------------------------------------------------------------------
# Bad input.
# --------------------------------------------------------------------------------------------------


def test_float_labels_raise_type_error():
    with pytest.raises(TypeError, match="cross_entropy_with_probs"):
        cross_entropy(rand((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(TypeError):
        cross_entropy(rand((2, 3)), np.array([True, False]))


def test_out_of_range_labels_raise_when_concrete():
    with pytest.raises(ValueError, match=r"\[0, 3\).*got 3 at index \(1,\)"):
        cross_entropy(rand((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="got -1"):
        cross_entropy(rand((2, 3)), np.array([-1, 0]))
    with pytest.raises(ValueError):
        cross_entropy(rand((2, 3)), np.array([-100, 0]), ignore_index=-1)


@program
def _out_of_range_traced():
    # The labels are an argument: traced, so not checked on the host.
    return (lambda a, b: cross_entropy(a, b)), (rand((6, 5)), np.array([0, 7, -2, 1, 2, 3]))


def test_out_of_range_labels_under_jit_give_nan_on_that_row_only(loss_and_grads):
    loss, (g, _) = loss_and_grads["out_of_range_traced"]
    assert np.all(np.isnan(loss[1:3])) and np.all(np.isnan(g[1:3]))
    assert np.all(np.isfinite(loss[[0, 3, 4, 5]])) and np.all(np.isfinite(g[[0, 3, 4, 5]]))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 5\).*\(2,\)"):
        cross_entropy(rand((2, 5)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5\)"):
        cross_entropy_with_probs(rand((2, 5)), np.ones((2, 4)) / 4)
    with pytest.raises(ValueError, match=r"\(3,\).*\(2,\)"):
        sigmoid_cross_entropy(np.zeros(2), np.zeros(3))
    # Issue 13: labels of another rank are not broadcast silently.
    with pytest.raises(ValueError, match=r"labels of shape \(3,\) must have the shape"):
        sigmoid_cross_entropy(np.zeros((2, 3)), np.zeros(3))
    assert sigmoid_cross_entropy(np.zeros((2, 3)), np.zeros((1, 3))).shape == (2, 3)
    with pytest.raises(ValueError, match="axis 2 is out of bounds"):
        cross_entropy(rand((2, 5)), np.array([0, 1]), axis=2)
    with pytest.raises(ValueError, match="where of shape"):
        cross_entropy(rand((2, 5)), np.array([0, 1]), where=np.ones((3,), bool))


def test_bad_options_raise():
    x, y = rand((2, 3)), np.array([0, 1])
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(x, y, label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, y, reduction="avg")
    with pytest.raises(TypeError, match="ignore_index"):
        cross_entropy(x, y, ignore_index=1.0)
    with pytest.raises(ValueError, match="t must be >= 0"):
        cross_entropy(x, y, t=-1.0)


# --------------------------------------------------------------------------------------------------
# The binary case (SPEC 1.4).
# --------------------------------------------------------------------------------------------------


def _two_class(a, b):
    logits = jnp.stack([a, jnp.zeros_like(a)], axis=-1)
    return cross_entropy_with_probs(logits, jnp.stack([b, 1 - b], axis=-1))


SIGMOID_X = np.array([-30.0, -3.0, -0.5, 0.0, 0.7, 4.0, 50.0, np.inf, -np.inf], np.float32)
SIGMOID_Y = np.array([1.0, 0.0, 0.3, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0], np.float32)


@program
def _sigmoid():
    return sigmoid_cross_entropy, (SIGMOID_X, SIGMOID_Y)


@program
def _sigmoid_two_class():
    return _two_class, (SIGMOID_X, SIGMOID_Y)


def test_sigmoid_ce_equals_two_class_softargmax_ce_in_values_and_grads(loss_and_grads):
    x, y = SIGMOID_X, SIGMOID_Y
    loss, (gx, gy) = loss_and_grads["sigmoid"]
    ref, (rx, ry) = loss_and_grads["sigmoid_two_class"]
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(gx, rx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gy, ry, rtol=1e-6, atol=1e-7)
    # Integer labels through the integer-label CE: class 0 is the positive one.
    yi = y.round().astype(np.int32)
    logits = np.stack([x, np.zeros_like(x)], axis=-1)
    np.testing.assert_allclose(
        sigmoid_cross_entropy(x, yi), cross_entropy(logits, 1 - yi), rtol=1e-6
    )


@value_program
def _sigmoid_optax():
    x = rand((6, 5))
    y = (np.random.default_rng(8).random((6, 5)) > 0.5).astype(np.float32)
    return (lambda x, y: (sigmoid_cross_entropy(x, y), optax.sigmoid_binary_cross_entropy(x, y))), (
        x,
        y,
    )


def test_sigmoid_ce_matches_optax_on_ordinary_inputs(values):
    got, want = values["sigmoid_optax"]
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6)


SIGMOID_LARGE_X = np.array([20.0, 40.0, 80.0, -80.0, 60.0, 1e30, -1e30, 1e4, -1e4], np.float32)


@value_program
def _sigmoid_large():
    y = np.array([1, 1, 1, 0, 1, 1, 0, 0, 1], np.float32)
    return sigmoid_cross_entropy, (SIGMOID_LARGE_X, y)


def test_sigmoid_ce_is_stable_for_large_logits(values):
    mpmath.mp.dps = 50
    # Losses down to 1.8e-35; below ~1e-38 float32 is subnormal, which XLA:CPU flushes to 0.
    x = SIGMOID_LARGE_X
    got = values["sigmoid_large"]
    want = [float(mpmath.log1p(mpmath.exp(-abs(mpmath.mpf(float(v)))))) for v in x[:5]]
    np.testing.assert_allclose(got[:5], want, rtol=4 * F32_EPS, atol=0)
    np.testing.assert_array_equal(got[5:7], 0)
    np.testing.assert_allclose(got[7:], 1e4, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Regression tests for issue 12 (defects 5-12), named for the behaviour.
# --------------------------------------------------------------------------------------------------


PER_EXAMPLE = np.array([True, False, True, True, False, True])


@program
def _per_example_where():
    x, y, keep = rand((6, 5)), labels_for((6,), 5), PER_EXAMPLE
    return (lambda a: cross_entropy(a, y, where=keep)), (x,)


def test_per_example_where_leaves_whole_examples_out_like_optax(loss_and_grads):
    """Defect 5: a where of shape [batch] is a per-example mask (as optax), not a class mask."""
    x, y = rand((6, 5)), labels_for((6,), 5)
    keep = PER_EXAMPLE
    loss, (g,) = loss_and_grads["per_example_where"]
    full = -np.take_along_axis(np_log_softmax(x), y[:, None], -1)[:, 0]
    np.testing.assert_allclose(loss, np.where(keep, full, 0), rtol=1e-6)
    np.testing.assert_allclose(loss, OPTAX_INT(x, y, where=keep), rtol=1e-6)
    assert np.all(g[~keep] == 0)
    mean = cross_entropy(x, y, where=keep, reduction="mean")
    np.testing.assert_allclose(mean, full[keep].mean(), rtol=1e-6)
    q = np.eye(5, dtype=np.float32)[y]
    np.testing.assert_allclose(cross_entropy_with_probs(x, q, where=keep), loss, rtol=1e-6)


def test_where_of_batch_rank_is_never_read_as_a_class_mask_when_batch_equals_classes():
    """Defect 5: with batch == n_classes a [batch] where used to mask classes (wrong or +inf)."""
    x, y = rand((5, 5)), labels_for((5,), 5)
    keep = np.array([True, True, False, True, True])
    got = cross_entropy(x, y, where=keep)
    full = -np.take_along_axis(np_log_softmax(x), y[:, None], -1)[:, 0]
    np.testing.assert_allclose(got, np.where(keep, full, 0), rtol=1e-6)
    # A class mask is written with the logits' rank; any other rank is ambiguous and raises.
    by_class = cross_entropy(x, y, where=keep[None, :] | (np.arange(5) == y[:, None]))
    assert np.all(np.isfinite(by_class)) and not np.allclose(by_class, got)
    with pytest.raises(ValueError, match="rank"):
        cross_entropy(rand((2, 3, 4)), labels_for((2, 3), 4), where=np.ones(4, bool))
    with pytest.raises(ValueError, match="per-example"):
        cross_entropy(x, y, where=np.ones(4, bool))


PROBS_X = np.array([[1.0, 2.0, 0.5, -1.0]], np.float32)
PROBS_Q = np.array([[0.25, 0.25, 0.25, 0.25]], np.float32)
PROBS_WHERE = np.array([[True, False, True, True]])


@program
def _probs_where():
    where = PROBS_WHERE
    return (lambda a, b: cross_entropy_with_probs(a, b, where=where)), (PROBS_X, PROBS_Q)


def test_cross_entropy_with_probs_where_ignores_targets_on_masked_entries(loss_and_grads):
    """Defect 6 (SPEC 5.4): masked entries leave the computation with their target weight; optax
    gives the same, we gave +inf with a zero gradient."""
    x, q, where = PROBS_X, PROBS_Q, PROBS_WHERE
    loss, (g, gq) = loss_and_grads["probs_where"]
    np.testing.assert_allclose(loss, OPTAX_PROBS(x, q, where=where), rtol=1e-6)
    logp = np_log_softmax(x[:, [0, 2, 3]])
    np.testing.assert_allclose(loss, -np.sum(0.25 * logp, -1), rtol=1e-6)
    np.testing.assert_allclose(g[0, [0, 2, 3]], 0.75 * np.exp(logp[0]) - 0.25, atol=1e-6)
    assert g[0, 1] == 0 and gq[0, 1] == 0


NAN_ROW_N = [4, 8192]  # XLA:CPU's fused max drops a NaN on long rows
NAN_ROW_T = [1.0, 0.0, 0.5]


def _nan_row_smoothings(t):
    return (0.0, 0.1) if t else (0.0,)  # at t = 0 smoothing weighs p = 0 entries


def _nan_row_program(n, t, smoothing):
    def build():
        x = np.tile(np.linspace(-1, 1, n, dtype=np.float32), (3, 1))
        x[0, 1], x[0, 2] = np.nan, -np.inf
        x[1, 3] = np.nan
        y = np.array([2, 0, n - 1])  # row 2: the label on the max, finite at t = 0 too
        return (lambda a: cross_entropy(a, y, t=t, label_smoothing=smoothing)), (x,)

    build.__name__ = f"_nan_row_{n}_{t}_{smoothing}"
    return program(build)


for _n in NAN_ROW_N:
    for _t in NAN_ROW_T:
        for _s in _nan_row_smoothings(_t):
            _nan_row_program(_n, _t, _s)


@pytest.mark.parametrize("n", NAN_ROW_N)
@pytest.mark.parametrize("t", NAN_ROW_T)
def test_nan_row_is_nan_even_when_the_label_sits_on_a_neg_inf_logit(loss_and_grads, n, t):
    """Defect 7: the label on a -inf logit of a row holding a NaN gave +inf (and, on long rows,
    a NaN row gave a finite loss)."""
    for smoothing in _nan_row_smoothings(t):
        loss, (g,) = loss_and_grads[f"nan_row_{n}_{t}_{smoothing}"]
        assert np.all(np.isnan(loss[:2])) and np.isfinite(loss[2]), smoothing
        assert np.all(np.isnan(g[:2])) and np.all(np.isfinite(g[2]))


LO = np.finfo(np.float32).min
FINFO_X = np.array([[0.0, 1.0, LO, LO]], np.float32)


@program
def _finfo_min():
    y = np.array([1])
    return (lambda a: cross_entropy(a, y, label_smoothing=0.1)), (FINFO_X,)


def test_finfo_min_logits_with_label_smoothing_are_finite_like_optax(loss_and_grads):
    """Defect 8: two logits at finfo(float32).min (a common mask value) with label smoothing gave
    +inf and a zero gradient; the exact loss is 1.7e37, which optax gets."""
    x, y = FINFO_X, np.array([1])
    loss, (g,) = loss_and_grads["finfo_min"]
    q = np.asarray(optax.smooth_labels(np.eye(4)[y], 0.1))
    np.testing.assert_allclose(loss, OPTAX_PROBS(x, q), rtol=1e-6)
    logp = np_log_softmax(x)  # float64: the exact value, 0.1 / 4 * 2 * 3.4e38 + ...
    np.testing.assert_allclose(loss, -np.sum(q * logp, -1), rtol=1e-6)
    np.testing.assert_allclose(g, np.exp(logp) - q, atol=1e-7)


@program
def _huge_opposite():
    x = np.array([[3e38, -3e38, 0.0]], np.float32)
    return (lambda a, s: cross_entropy(a, np.array([1]), t=s)), (x, 1e6)


def test_huge_opposite_logits_at_large_t_give_the_exact_loss(loss_and_grads):
    """Defect 8: [3e38, -3e38, 0] at t = 1e6 gave +inf; the exact loss 6e32 is representable."""
    loss, (g, gt) = loss_and_grads["huge_opposite"]
    np.testing.assert_allclose(loss, (3e38 - -3e38) / 1e6, rtol=1e-6)
    np.testing.assert_allclose(g, [[1e-6, -1e-6, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(gt, -6e32 / 1e6, rtol=1e-5)  # d/dt of (x_m - x_y)/t


PROBS_NAN_CASES = {"t0": (0.0, np.eye(3)[[2, 2]]), "zero_targets": (1.0, np.zeros((2, 3)))}


def _probs_nan_program(name, t, q):
    def build():
        x = np.array([[np.nan, 0.0, 1.0], [0.5, 0.0, 1.0]], np.float32)
        f = lambda a, b, s: cross_entropy_with_probs(a, b, t=s)
        return f, (x, np.asarray(q, np.float32), np.float32(t))

    build.__name__ = f"_probs_nan_{name}"
    return program(build)


for _name, (_t, _q) in PROBS_NAN_CASES.items():
    _probs_nan_program(_name, _t, _q)


def test_probs_nan_row_is_nan_in_loss_and_gradient_at_t_zero_and_with_zero_targets(
    loss_and_grads,
):
    """Defect 9: at t = 0 the loss was NaN but the gradient 0; with all-zero targets the loss was
    0 but the gradient NaN. A NaN row is NaN in both (SPEC 6), its neighbours untouched."""
    for name, (t, _) in PROBS_NAN_CASES.items():
        loss, (g, gq, _) = loss_and_grads[f"probs_nan_{name}"]
        assert np.isnan(loss[0]) and np.all(np.isnan(g[0])) and np.all(np.isnan(gq[0])), t
        assert np.isfinite(loss[1]) and np.all(np.isfinite(g[1])), t


EMPTY_KWARGS = {"plain": {}, "ignore_index": {"ignore_index": -1}}


def _empty_mean_program(name, kw):
    def build():
        x, y = np.zeros((0, 3), np.float32), np.zeros((0,), np.int32)
        return (lambda a: cross_entropy(a, y, reduction="mean", **kw)), (x,)

    build.__name__ = f"_empty_mean_{name}"
    return program(build)


for _name, _kw in EMPTY_KWARGS.items():
    _empty_mean_program(_name, _kw)


def test_mean_reduction_of_an_empty_batch_is_zero(loss_and_grads):
    """Defect 10: reduction="mean" of an empty batch was NaN (0 with ignore_index); now 0, as a
    batch with no example that counts (the convention of mean_over_valid)."""
    x = np.zeros((0, 3), np.float32)
    for name in EMPTY_KWARGS:
        got, (g,) = loss_and_grads[f"empty_mean_{name}"]
        assert float(got) == 0.0 and g.shape == (0, 3)
    assert float(cross_entropy_with_probs(x, x, reduction="mean")) == 0.0
    assert float(mean_over_valid(jnp.zeros((0,)))) == 0.0
    assert float(mean_over_valid(jnp.zeros((0,)), jnp.zeros((0,), bool))) == 0.0


def test_int64_labels_beyond_int32_raise_instead_of_wrapping():
    """Defect 11: an int64 NumPy label of 2**32 + 1 (x64 off) wrapped to class 1."""
    x = rand((2, 3))
    for bad in (2**32 + 1, -(2**32) + 1, 2**40):
        with pytest.raises(ValueError, match=f"got {bad}"):
            cross_entropy(x, np.array([0, bad], np.int64))
    np.testing.assert_allclose(
        cross_entropy(x, np.array([0, 2], np.int64)), cross_entropy(x, np.array([0, 2])), rtol=0
    )
