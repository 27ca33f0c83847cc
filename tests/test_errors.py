"""Every bad call raises a clear error that names the function, the argument and what was expected.

Decided in ``jaxsoft._checks`` (one place for all public functions): complex input -> TypeError;
non-numeric input -> TypeError; ``axis`` out of range or repeated -> ValueError, not an int ->
TypeError; ``where`` not boolean -> TypeError, not broadcastable -> ValueError; a concrete ``t``
that is negative, NaN or inf -> ValueError, not real -> TypeError, of a shape that does not
broadcast to the reduced shape -> ValueError. A *traced* ``t`` cannot be checked; what a negative
one computes is pinned down at the end of this file.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft

X = jnp.array([[0.5, -1.0, 2.0], [3.0, 0.0, -2.0]])  # (2, 3)

# name -> call(x, **kwargs). Adding a public function is one entry here.
FUNCS = {
    "logsumexp": lambda x, axis=-1, **kw: jaxsoft.logsumexp(x, axis, **kw),
    "softargmax": lambda x, **kw: jaxsoft.softargmax(x, **kw),
    "log_softargmax": lambda x, **kw: jaxsoft.log_softargmax(x, **kw),
    "softargmax_mean": lambda x, **kw: jaxsoft.softargmax_mean(x, **kw),
    "softargmax_jacobian": lambda x, **kw: jaxsoft.softargmax_jacobian(x, **kw),
    "softargmax_jvp": lambda x, **kw: jaxsoft.softargmax_jvp(x, np.ones(np.shape(x)), **kw),
    "softargmax_vjp": lambda x, **kw: jaxsoft.softargmax_vjp(x, np.ones(np.shape(x)), **kw),
}

# (id, x, kwargs, exception, regex the message must match). ``{name}`` is the function's name.
BAD_CALLS = [
    ("x_string", "abc", {}, TypeError, r"{name}: x must be an array-like of numbers, got str"),
    ("x_none", None, {}, TypeError, r"{name}: x must be an array-like of numbers, got NoneType"),
    ("x_object", np.array([object(), object()]), {}, TypeError, r"{name}: x must be"),
    (
        "x_complex",
        jnp.array([1.0 + 1.0j, 2.0]),
        {},
        TypeError,
        r"{name}: complex input is not supported",
    ),
    (
        "axis_too_big",
        X,
        {"axis": 2},
        ValueError,
        r"axis 2 is out of bounds for array of dimension 2",
    ),
    (
        "axis_too_negative",
        X,
        {"axis": -3},
        ValueError,
        r"axis -3 is out of bounds for array of dimension 2",
    ),
    ("axis_tuple_out_of_range", X, {"axis": (0, 5)}, ValueError, r"axis 5 is out of bounds"),
    ("axis_repeated", X, {"axis": (1, 1)}, ValueError, r"axis contains a repeated axis: \(1, 1\)"),
    ("axis_repeated_negative", X, {"axis": (0, -2)}, ValueError, r"axis contains a repeated axis"),
    ("axis_float", X, {"axis": 1.0}, TypeError, r"axis must be an int or a tuple of ints, got 1.0"),
    ("axis_bool", X, {"axis": True}, TypeError, r"axis must be an int or a tuple of ints"),
    (
        "where_int",
        X,
        {"where": jnp.array([1, 0, 1])},
        TypeError,
        r"{name}: where must be a boolean array, got dtype int32",
    ),
    (
        "where_float",
        X,
        {"where": np.ones((2, 3))},
        TypeError,
        r"{name}: where must be a boolean array",
    ),
    (
        "where_shape",
        X,
        {"where": jnp.array([True, False])},
        ValueError,
        r"{name}: where of shape \(2,\) does not broadcast to x of shape \(2, 3\)",
    ),
    (
        "where_bigger",
        X,
        {"where": jnp.ones((4, 2, 3), bool)},
        ValueError,
        r"{name}: where of shape \(4, 2, 3\) does not broadcast",
    ),
    (
        "t_negative",
        X,
        {"t": -1.0},
        ValueError,
        r"{name}: t must be >= 0 \(t = 0 is the hard argmax\), got min -1.0",
    ),
    (
        "t_negative_row",
        X,
        {"t": jnp.array([1.0, -0.5])},
        ValueError,
        r"{name}: t must be >= 0 .*got min -0.5",
    ),
    ("t_nan", X, {"t": float("nan")}, ValueError, r"{name}: t must not be NaN"),
    ("t_nan_row", X, {"t": np.array([1.0, np.nan])}, ValueError, r"{name}: t must not be NaN"),
    ("t_inf", X, {"t": float("inf")}, ValueError, r"{name}: t must be finite, got inf"),
    (
        "t_string",
        X,
        {"t": "hot"},
        TypeError,
        r"{name}: t must be a non-negative real number or array, got 'hot'",
    ),
    ("t_none", X, {"t": None}, TypeError, r"{name}: t must be a non-negative real number"),
    ("t_bool", X, {"t": True}, TypeError, r"{name}: t must be a non-negative real number"),
    (
        "t_complex",
        X,
        {"t": jnp.array(1.0 + 0.5j)},
        TypeError,
        r"{name}: t must be real, got dtype complex64",
    ),
    (
        "t_shape",
        X,
        {"t": jnp.ones(3)},
        ValueError,
        r"{name}: t of shape \(3,\) must broadcast to the reduced shape \(2,\)",
    ),
    (
        "t_shape_keepdims",
        X,
        {"t": jnp.ones((2, 3))},
        ValueError,
        r"{name}: t of shape \(2, 3\) must broadcast",
    ),
    (
        "t_shape_rank",
        X,
        {"t": jnp.ones((1, 1, 2))},
        ValueError,
        r"{name}: t of shape \(1, 1, 2\) must broadcast",
    ),
]


@pytest.mark.parametrize("name", list(FUNCS))
@pytest.mark.parametrize(
    "x, kwargs, exc, pattern", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_call_raises_clear_error(name, x, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern.format(name=re.escape(name))):
        FUNCS[name](x, **kwargs)


@pytest.mark.parametrize("name", list(FUNCS))
def test_bad_calls_fail_before_any_compile(name):
    # Validation runs eagerly: a bad call costs no trace and leaves no cache entry behind.
    before = jaxsoft._functions._apply._cache_size() + jaxsoft._jacobian._jacobian._cache_size()
    with pytest.raises(ValueError):
        FUNCS[name](X, t=-1.0)
    with pytest.raises(ValueError):
        FUNCS[name](X, axis=(0, 0))
    after = jaxsoft._functions._apply._cache_size() + jaxsoft._jacobian._jacobian._cache_size()
    assert after == before


@pytest.mark.parametrize("which, arg", [("softargmax_jvp", "v"), ("softargmax_vjp", "u")])
def test_jvp_vjp_tangent_shape_mismatch_names_the_tangent(which, arg):
    f = getattr(jaxsoft, which)
    with pytest.raises(
        ValueError, match=rf"{which}: {arg} of shape \(3,\) must match x of shape \(2, 3\)"
    ):
        f(X, jnp.ones(3))
    with pytest.raises(TypeError, match=rf"{which}: {arg} must be an array-like of numbers"):
        f(X, "abc")


@pytest.mark.parametrize("name", list(FUNCS))
def test_good_edge_calls_are_accepted_and_give_no_nan(name):
    # The boundaries of what is accepted: t = 0, int and bool x, per-row and keepdims-shaped t,
    # a where that broadcasts, a tuple axis with a NumPy scalar t. Every input is finite, so no
    # output may hold a NaN; a keepdims-shaped t means the same as the per-row one.
    f = FUNCS[name]
    outs = [
        f(jnp.array([1, 2, 3]), t=0.0),
        f(jnp.array([True, False])),
        f(X, t=jnp.array([0.5, 2.0])),
        f(X, t=jnp.array([[0.5], [2.0]])),
        f(X, where=jnp.array([True, False, True])),
        f(X, axis=(0, 1), t=np.float32(0.5)),
    ]
    for out in outs:
        for leaf in jax.tree.leaves(out):
            assert not np.isnan(np.asarray(leaf, np.float64)).any(), name
    for a, b in zip(jax.tree.leaves(outs[2]), jax.tree.leaves(outs[3])):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# A traced t cannot be validated. What it does, pinned down so that a change is deliberate.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["softargmax", "log_softargmax", "logsumexp", "softargmax_mean"])
def test_traced_invalid_t_gives_nan_on_its_rows(name, bad):
    # Documented behaviour: a traced t that the eager check would reject (negative, NaN, inf) turns
    # its rows to NaN, like a NaN input, instead of a plausible-looking number. Before the core
    # patch in the issue-3 report, a traced negative t gave uniform / softargmin-like rows and NaN
    # only on rows holding -inf.
    f = getattr(jaxsoft, name)
    x = jnp.array([[0.5, -1.0, 2.0], [3.0, -jnp.inf, -2.0]])
    out = jax.jit(lambda x, t: f(x, t=t))(x, jnp.float32(bad))
    assert np.all(np.isnan(np.asarray(out)))


def test_traced_negative_t_never_raises_and_makes_no_nan_outside_its_rows():
    # Per-row t with one negative entry: the other rows are exact; the bad row is NaN.
    x = jnp.array([[0.5, -jnp.inf, 2.0], [3.0, 0.0, -2.0]])
    t = jnp.array([-1.0, 1.0])
    for f in (jaxsoft.softargmax, jaxsoft.log_softargmax):
        out = jax.jit(lambda x, t: f(x, t=t))(x, t)
        np.testing.assert_array_equal(out[1], f(x[1]))
        assert np.all(np.isnan(np.asarray(out[0])))
    for f in (jaxsoft.logsumexp, jaxsoft.softargmax_mean):
        out = jax.jit(lambda x, t: f(x, -1, t=t))(x, t)
        np.testing.assert_array_equal(out[1], f(x[1]))
        assert np.isnan(np.asarray(out[0]))
