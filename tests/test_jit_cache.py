"""Jit-cache behaviour and thread safety.

Python floats vs arrays for ``t``, new ``where`` patterns and new values must not retrace (each
*kind* of call compiles once), must not leak tracers, and must not change results. The same jitted
function called from 8 Python threads at once returns the same results as a serial call.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft
from jaxsoft import _functions, _jacobian

FUNCS = {
    "logsumexp": lambda x, **kw: jaxsoft.logsumexp(x, -1, **kw),
    "softargmax": jaxsoft.softargmax,
    "log_softargmax": jaxsoft.log_softargmax,
    "softargmax_mean": jaxsoft.softargmax_mean,
    "softargmax_jacobian": jaxsoft.softargmax_jacobian,
}

X = jnp.array([[0.5, -1.0, 2.0, 0.0], [3.0, -jnp.inf, -2.0, 1.0], [1e30, 1e30, -1e30, 0.0]])


def _cache_size() -> int:
    return _functions._apply._cache_size() + _jacobian._jacobian._cache_size()


@pytest.mark.parametrize("name", list(FUNCS))
def test_new_t_values_and_where_patterns_do_not_retrace(name):
    f = FUNCS[name]
    rng = np.random.default_rng(0)
    kinds = [
        lambda: {"t": float(rng.uniform(0.1, 5))},  # Python float
        lambda: {"t": jnp.float32(rng.uniform(0.1, 5))},  # 0-d array
        lambda: {"t": jnp.asarray(rng.uniform(0.1, 5, size=3), jnp.float32)},  # per row
        lambda: {"where": jnp.asarray(rng.random(X.shape) < 0.6)},
        lambda: {"t": 0.0, "where": jnp.asarray(rng.random(X.shape) < 0.6)},
    ]
    for kind in kinds:  # warm up: one compile per kind of call at most
        f(X, **kind())
    before = _cache_size()
    for _ in range(3):
        for kind in kinds:
            f(X + float(rng.normal()), **kind())
    assert _cache_size() == before


def test_shapes_compile_once_each():
    shapes = [(3,), (2, 5), (4, 1, 2)]
    for s in shapes:
        jaxsoft.softargmax(jnp.ones(s))
    before = _cache_size()
    for _ in range(3):
        for s in shapes:
            jaxsoft.softargmax(jnp.asarray(np.full(s, 2.0, np.float32)), t=1.0)
    assert _cache_size() == before


def test_user_jit_traces_once_for_python_float_and_array_t():
    traces = []

    @jax.jit
    def f(x, t, w):
        traces.append(1)  # runs only when tracing
        return jaxsoft.softargmax(x, t=t, where=w), jaxsoft.logsumexp(x, -1, t=t, where=w)

    w = X > -1e29
    for t in (0.5, 1.5, 3.0, 0.0):  # Python floats: weak-typed scalars, one trace
        f(X, t, w)
    for t in (0.5, 1.5, 0.0):  # 0-d float32 arrays: at most one more trace
        f(X, jnp.float32(t), ~w)
    assert len(traces) <= 2


@pytest.mark.parametrize("name", list(FUNCS))
def test_python_float_and_array_t_give_identical_results(name):
    f = FUNCS[name]
    jf = jax.jit(lambda x, t: f(x, t=t))
    for t in (0.0, 0.7, 1.0, 3.0):
        ref = f(X, t=t)
        np.testing.assert_array_equal(f(X, t=jnp.float32(t)), ref)
        np.testing.assert_array_equal(f(X, t=np.float32(t)), ref)
        np.testing.assert_array_equal(f(X, t=jnp.full((3,), t, jnp.float32)), ref)
        np.testing.assert_array_equal(jf(X, t), ref)
    np.testing.assert_array_equal(f(X, t=1), f(X))


# Run in a fresh interpreter: checking_leaks runs the garbage collector at the end of every trace
# (and turns off the jit caches), which on the heap of a whole test session took 17-50 s in CI for
# what takes 3 s in a clean process. Each check is one jitted program (an eager transform would
# compile each primitive on its own); the transforms are still traced, which is where a leak
# would happen.
_LEAK_CHECK = """
import jax, jax.numpy as jnp, jaxsoft
x = jnp.array([[0.5, -1.0, 2.0, 0.0], [3.0, -jnp.inf, -2.0, 1.0]])
with jax.checking_leaks():
    jax.jit(lambda x, t: jaxsoft.softargmax(x, t=t, where=x > -1e29))(x, 0.5)
    jax.jit(jax.grad(lambda t: jaxsoft.logsumexp(x[0], t=t)))(0.5)
    jax.jit(jax.vmap(lambda x, t: jaxsoft.log_softargmax(x, t=t)))(x, jnp.array([0.5, 1.0]))
    jax.jit(jax.grad(lambda x: jaxsoft.softargmax_mean(x[0], t=0.5)))(x)
print("no leaks")
"""


def test_no_tracer_leaks():
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", _LEAK_CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "no leaks", proc.stderr[-4000:]


def test_results_do_not_depend_on_call_history():
    # A compiled entry reused for new values gives the same bits as a fresh process-level call.
    x2 = X[:, ::-1]
    first = jaxsoft.softargmax(x2, t=0.3)
    for t in (0.0, 5.0, 0.3):
        jaxsoft.softargmax(X, t=t, where=X > 0)
    np.testing.assert_array_equal(jaxsoft.softargmax(x2, t=0.3), first)


def test_eight_threads_share_one_jitted_function():
    f = jax.jit(
        lambda x, t, w: (
            jaxsoft.softargmax(x, t=t, where=w),
            jaxsoft.log_softargmax(x, t=t, where=w),
            jaxsoft.logsumexp(x, -1, t=t, where=w),
            jaxsoft.softargmax_mean(x, t=t, where=w),
            jax.grad(lambda x: jnp.sum(jaxsoft.softargmax(x, t=t, where=w)[..., 0]))(x),
        )
    )
    rng = np.random.default_rng(1)
    inputs = [
        (
            jnp.asarray(rng.normal(size=(16, 32)) * 10, jnp.float32),
            jnp.asarray(rng.uniform(0, 3, size=16), jnp.float32),
            jnp.asarray(rng.random((16, 32)) < 0.8),
        )
        for _ in range(8)
    ]
    serial = [jax.tree_util.tree_map(np.asarray, f(*a)) for a in inputs]
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        outs = []
        for _ in range(20):
            # thread i uses input i and the shared input 0 alternately
            for j in (i, 0):
                outs.append((j, jax.tree_util.tree_map(np.asarray, f(*inputs[j]))))
        return outs

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for outs in results:
        for j, got in outs:
            for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(serial[j])):
                np.testing.assert_array_equal(a, b)


def test_eight_threads_call_the_public_functions_eagerly():
    # The public functions validate eagerly and dispatch to a shared jit cache; first calls from
    # several threads at once (a compile race) must agree with each other.
    x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 7)), jnp.float32)
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        return [np.asarray(f(x, t=0.25 + 0.0 * i)) for f in FUNCS.values()]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for r in results[1:]:
        for a, b in zip(r, results[0]):
            np.testing.assert_array_equal(a, b)
