"""Fused language-model head: linear_log_probs, linear_entropy, linear_kl_divergence (SPEC 8).

Every option is checked against the dense functions (jaxsoft.log_softargmax, jaxsoft.entropy,
jaxsoft.kl_divergence) on the materialised logits in float64, values and gradients (h, W, bias,
t and the teacher's), plus float64 NumPy for the edges; the sharded twins against the unsharded
functions on 8 CPU devices (1-D and 2-D meshes, check_vma True and False).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import jaxsoft
from jaxsoft.lm_head import linear_entropy, linear_kl_divergence, linear_log_probs
from jaxsoft.sharded_lm_head import (
    sharded_linear_entropy,
    sharded_linear_kl_divergence,
    sharded_linear_log_probs,
)
from tests.conftest import enable_x64

BATCH, D, V = (2, 3), 5, 13
N = 6
FUNCS = ["log_probs", "entropy", "kl"]

# (bias, logit_softcap, t, where, weight_layout, chunk_size): every option at least twice, chunk
# sizes that do (13, 32 > V) and do not (4, 5) divide V.
CASES = [
    (False, None, "one", None, "dV", 4),
    (True, None, "scalar", "vocab", "Vd", 5),
    (True, 3.0, "row", "row", "dV", 32),
    (True, 3.0, "scalar", None, "Vd", 13),
]
CASE_IDS = [
    "plain-chunk4",
    "bias-t-vocabmask-Vd-chunk5",
    "cap-rowt-rowmask-chunk32",
    "cap-Vd-chunk13",
]


def _inputs(seed, dtype=np.float64, v=V, batch=BATCH, d=D):
    rng = np.random.default_rng(seed)
    n = int(np.prod(batch))
    h = rng.normal(size=batch + (d,)) * 1.5
    W = rng.normal(size=(d, v))
    b = rng.normal(size=(v,))
    th = h + 0.5 * rng.normal(size=h.shape)
    tW = W + 0.5 * rng.normal(size=W.shape)
    tb = rng.normal(size=(v,))
    vocab_mask = rng.random(v) < 0.75
    vocab_mask[:2] = True
    row_mask = rng.random((n, v)) < 0.7
    row_mask[:, 0] = True
    # Tokens the vocabulary mask keeps (masked tokens are an edge, tested on their own); the
    # per-row mask is widened to keep each row's token in _options.
    tokens = rng.integers(0, v, size=batch)
    tokens = np.where(vocab_mask[tokens], tokens, 0)
    cast = partial(jnp.asarray, dtype=dtype)
    return dict(
        h=cast(h),
        W=cast(W),
        b=cast(b),
        th=cast(th),
        tW=cast(tW),
        tb=cast(tb),
        vocab_mask=jnp.asarray(vocab_mask),
        row_mask=jnp.asarray(row_mask.reshape(batch + (v,))),
        tokens=jnp.asarray(tokens, jnp.int32),
        t_row=cast(rng.uniform(0.5, 2.0, size=batch)),
    )


def _options(inp, case):
    bias, cap, t, where, layout, chunk = case
    tv = {"one": 1.0, "scalar": jnp.asarray(0.7, inp["h"].dtype), "row": inp["t_row"]}[t]
    wh = {None: None, "vocab": inp["vocab_mask"], "row": inp["row_mask"]}[where]
    if where == "row":
        # a per-row mask must keep each row's token
        tok = inp["tokens"]
        wh = wh | (jnp.arange(V) == tok[..., None])
    return bias, cap, tv, wh, layout, chunk


def _capped(x, cap):
    return x if cap is None else jnp.where(x == -jnp.inf, x, cap * jnp.tanh(x / cap))


def _ref_log_probs(x, t, where):
    """Textbook float64 log-softargmax (masked entries at -1e30: exp gives 0, no -inf to guard)."""
    z = x / (jnp.asarray(t)[..., None] if jnp.ndim(t) else t)
    if where is not None:
        z = jnp.where(where, z, -1e30)
    return z - jax.scipy.special.logsumexp(z, axis=-1, keepdims=True)


def _dense(func, params, tokens, t, where, cap):
    """The naive reference: materialise the logits, then a float64 formula on them."""
    h, W, b, th, tW, tb = params
    x = _capped(h @ W + (0 if b is None else b), cap)
    if func == "log_probs":
        lp = jaxsoft.log_softargmax(
            x, t=jnp.asarray(t)[..., None] if jnp.ndim(t) else t, where=where
        )
        return jnp.take_along_axis(lp, tokens[..., None], -1)[..., 0]
    keep = True if where is None else where
    lp = _ref_log_probs(x, t, where)
    if func == "entropy":
        return -jnp.sum(jnp.where(keep, jnp.exp(lp) * lp, 0), axis=-1)
    y = _capped(th @ tW + (0 if tb is None else tb), cap)
    lq = _ref_log_probs(y, t, where)
    return jnp.sum(jnp.where(keep, jnp.exp(lq) * (lq - lp), 0), axis=-1)


def _fused(func, params, tokens, t, where, cap, layout, chunk):
    h, W, b, th, tW, tb = params
    if layout == "Vd":
        W, tW = W.T, tW.T
    kw = dict(bias=b, t=t, logit_softcap=cap, where=where, weight_layout=layout, chunk_size=chunk)
    if func == "log_probs":
        return linear_log_probs(h, W, tokens, **kw)
    if func == "entropy":
        return linear_entropy(h, W, **kw)
    return linear_kl_divergence(h, W, th, tW, target_bias=tb, **kw)


def _params(inp, bias):
    return (
        inp["h"],
        inp["W"],
        inp["b"] if bias else None,
        inp["th"],
        inp["tW"],
        inp["tb"] if bias else None,
    )


@pytest.fixture(scope="module")
def fused_and_dense():
    """Every case's and function's fused and dense values and gradients, float64, from one program.

    Compiling dominates: the twelve pairs as one jitted program compile in about two thirds of the
    time of twelve programs (the fused log-probability and entropy of a case share their forward
    pass, which XLA computes once).
    Each pair is what the test below used to compile on its own: the loss ``sum(cot * f)`` and its
    gradient in the parameters (h, W, bias, teacher's) and an array t.
    """
    with enable_x64():
        inp = _inputs(1)
        tokens = inp["tokens"]
        cot = jnp.asarray(np.random.default_rng(2).normal(size=BATCH))

        def loss(fn, params, t):
            return jnp.sum(cot * fn(params, t))

        pairs, args = {}, {}
        for case, case_id in zip(CASES, CASE_IDS, strict=True):
            bias, cap, t, where, layout, chunk = _options(inp, case)
            for func in FUNCS:
                dense = partial(_dense_of, func, tokens, where, cap)
                fused = partial(_fused_of, func, tokens, where, cap, layout, chunk)
                key = f"{case_id}-{func}"
                pairs[key] = (partial(loss, fused), partial(loss, dense))
                # A Python t = 1.0 stays a Python number, as a caller's would (the t-free path):
                # then only the parameters are arguments.
                args[key] = (_params(inp, bias), t if isinstance(t, jax.Array) else None)

        @jax.jit
        def run(args):
            out = {}
            for key, (params, t) in args.items():
                if t is None:
                    grad = jax.value_and_grad
                    out[key] = [grad(partial(f, t=1.0))(params) for f in pairs[key]]
                else:
                    grad = partial(jax.value_and_grad, argnums=(0, 1))
                    out[key] = [grad(f)(params, t) for f in pairs[key]]
            return out

        return jax.tree.map(np.asarray, run(args))


def _dense_of(func, tokens, where, cap, p, t):
    return _dense(func, p, tokens, t, where, cap)


def _fused_of(func, tokens, where, cap, layout, chunk, p, t):
    return _fused(func, p, tokens, t, where, cap, layout, chunk)


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_fused_matches_dense_float64_values_and_gradients(fused_and_dense, func, case):
    (v_fused, g_fused), (v_dense, g_dense) = fused_and_dense[f"{case}-{func}"]
    assert v_fused.dtype == v_dense.dtype == np.float64
    np.testing.assert_allclose(v_fused, v_dense, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_dense), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("func", ["log_probs", "kl"])  # log_probs checks the entropy too
def test_fused_gradients_pass_check_grads(x64, func):
    inp = _inputs(3, v=7, batch=(3,), d=2)
    h, W, b, th, tW, tb = _params(inp, True)
    tokens, t, where = inp["tokens"], inp["t_row"], inp["vocab_mask"] | (jnp.arange(7) < 3)
    kw = dict(t=t, logit_softcap=2.0, where=where, weight_layout="Vd", chunk_size=3)
    if func == "log_probs":

        def f(h, W, b):
            lp, ent = linear_log_probs(h, W, tokens, bias=b, return_entropy=True, **kw)
            return lp + 0.5 * ent
    else:

        def f(h, W, b):
            return linear_kl_divergence(h, W, th * 0.5, tW.T, bias=b, target_bias=tb, **kw)

    # jitted: eagerly, every scan of the forward and backward passes compiles on its own.
    check_grads(jax.jit(f), (h, W.T, b), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def _np_log_probs(x, t):
    """float64 NumPy log-softargmax of one row, at t = 0 the hard limit."""
    x = np.asarray(x, np.float64)
    if t == 0:
        at = x == x.max()
        return np.where(at, -np.log(at.sum()), -np.inf)
    z = x / t
    m = z[np.isfinite(z)].max() if np.isfinite(z).any() else 0.0
    return z - m - np.log(np.sum(np.exp(z - m)))


# --------------------------------------------------------------------------------------------------
# Edges and precision in float32 and bfloat16. Compiling dominates, so the jitted programs of the
# tests below (each registered with its inputs) are compiled together as one program, in the module
# fixture float32_runs, in less time than five programs. Each program takes its arrays as arguments
# and its constants (tokens, masks) as closure constants, as it did as a test's own jit; inputs are
# NumPy arrays (each eager jnp op on a new shape would compile a program).
# --------------------------------------------------------------------------------------------------

_FLOAT32 = {}  # name -> (inputs() -> dict, program(inputs) -> (function, its arguments))


def _float32_program(name, inputs):
    def register(program):
        assert name not in _FLOAT32, name
        _FLOAT32[name] = (inputs, program)
        return program

    return register


@pytest.fixture(scope="module")
def float32_runs():
    """``{name: (inputs, outputs as NumPy)}`` for every registered program, from one jit."""
    inputs = {name: make() for name, (make, _) in _FLOAT32.items()}
    programs = {name: program(inputs[name]) for name, (_, program) in _FLOAT32.items()}

    @jax.jit
    def run(args):
        return {name: programs[name][0](*args[name]) for name in programs}

    out = run({name: args for name, (_, args) in programs.items()})
    return {name: (inputs[name], jax.tree.map(np.asarray, out[name])) for name in programs}


def _lp_edges_inputs():
    inp = _inputs(4, dtype=np.float32)
    h, W, b = np.array(inp["h"]).reshape(N, D), np.asarray(inp["W"]), np.array(inp["b"])
    b[3] = -np.inf  # token 3 removed everywhere
    tokens = np.array([0, 5, 1, 2, 4, 3], np.int32)  # row 5: the -inf token
    where = np.ones((N, V), bool)
    where[1, 5] = where[2] = False
    t = np.array([1.0, 0.8, 1.0, 0.0, 1.0, 1.3], np.float32)
    h[4, 1] = np.nan
    return dict(h=h, W=W, b=b, tokens=tokens, where=where, t=t)


@_float32_program("lp_edges", _lp_edges_inputs)
def _lp_edges_program(s):
    tokens, where = s["tokens"], s["where"]

    def f(h, W, b, t):
        return linear_log_probs(
            h, W, tokens, bias=b, t=t, where=where, chunk_size=4, return_entropy=True
        )

    def run(h, W, b, t):
        (lp, ent), vjp = jax.vjp(f, h, W, b, t)
        # Both outputs' cotangents, then the entropy's alone (for the rows whose lp is -inf).
        return lp, ent, vjp((jnp.ones(N), jnp.ones(N))), vjp((jnp.zeros(N), jnp.ones(N)))[0]

    return run, (s["h"], s["W"], s["b"], s["t"])


def test_log_probs_and_entropy_at_the_edges_of_spec_6(float32_runs):
    """-inf bias, a masked token, a fully masked row, t = 0, a NaN row: values and gradients."""
    s, (lp, ent, (dh, dW, db, dt), dh_ent) = float32_runs["lp_edges"]
    h, W, b, tokens, where, t = (s[k] for k in ("h", "W", "b", "tokens", "where", "t"))
    x = h.astype(np.float64) @ W.astype(np.float64) + b.astype(np.float64)
    for i in range(N):
        if i == 4:
            assert np.isnan(lp[i]) and np.isnan(ent[i])
            continue
        keep = np.asarray(where[i]) & np.isfinite(x[i])
        if not keep.any():
            assert lp[i] == -np.inf and ent[i] == 0
            continue
        lps = _np_log_probs(x[i][keep], float(t[i]))
        p = np.exp(lps)
        want_ent = -np.sum(p * np.where(p > 0, lps, 0))
        col = int(tokens[i])
        want_lp = lps[np.cumsum(keep)[col] - 1] if keep[col] else -np.inf
        np.testing.assert_allclose(lp[i], want_lp, rtol=2e-6)
        np.testing.assert_allclose(ent[i], want_ent, rtol=2e-6, atol=1e-7)
    assert np.isnan(dh[4]).all() and np.isfinite(np.delete(np.asarray(dh), 4, 0)).all()
    np.testing.assert_array_equal(dh[2], 0)  # fully masked row
    np.testing.assert_array_equal(dh[3], 0)  # t = 0
    # The NaN row reaches the shared W and bias (as in linear_cross_entropy), not other rows or t.
    assert np.isnan(db).all() and np.isnan(dW).all()
    assert np.isfinite(np.asarray(dt)[[0, 1, 2, 3, 5]]).all() and dt[3] == 0 and np.isnan(dt[4])
    # Row 1 (token masked: lp = -inf) keeps the entropy's gradient only; row 5 likewise.
    np.testing.assert_allclose(dh[1], dh_ent[1], rtol=1e-6)
    np.testing.assert_allclose(dh[5], dh_ent[5], rtol=1e-6)


def _np_kl(x, y, t, keep):
    lp, lq = _np_log_probs(x[keep], t), _np_log_probs(y[keep], t)
    q = np.exp(lq)
    if np.any((q > 0) & (lp == -np.inf)):
        return np.inf
    return float(np.sum(q * np.where(q > 0, lq - lp, 0)))


def _kl_edges_inputs():
    inp = _inputs(5, dtype=np.float32)
    h, W, th, tW = (np.array(inp[k]).reshape(-1, inp[k].shape[-1]) for k in ("h", "W", "th", "tW"))
    tb = np.array(inp["tb"])
    tb[3] = -np.inf
    where = np.ones((N, V), bool)
    where[2] = False
    t = np.array([1.0, 0.7, 1.0, 0.0, 1.0, 1.3], np.float32)
    h[4, 0] = np.nan
    return dict(h=h, W=W, th=th, tW=tW, tb=tb, where=where, t=t)


@_float32_program("kl_edges", _kl_edges_inputs)
def _kl_edges_program(s):
    th, tW, tb, where = s["th"], s["tW"], s["tb"], s["where"]

    def f(h, W, t):
        return linear_kl_divergence(h, W, th, tW, target_bias=tb, t=t, where=where, chunk_size=4)

    def run(h, W, t):
        kl, vjp = jax.vjp(f, h, W, t)
        dh, _, dt = vjp(jnp.ones(N))
        # The regular rows' gradients from the dense function (float32).
        dense = jax.grad(
            lambda h: jnp.sum(
                jaxsoft.kl_divergence(h @ W, th @ tW + tb, t=t, where=where)[jnp.array([0, 1, 5])]
            )
        )(h)
        return kl, dh, dt, dense

    return run, (s["h"], s["W"], s["t"])


def test_kl_at_the_edges_of_spec_6_takes_the_exact_path(float32_runs):
    """A teacher -inf under a finite student logit, t = 0, a NaN row, a fully masked row."""
    s, (kl, dh, dt, dense) = float32_runs["kl_edges"]
    h, W, th, tW, tb, t = (s[k] for k in ("h", "W", "th", "tW", "tb", "t"))
    x = h.astype(np.float64) @ W.astype(np.float64)
    y = th.astype(np.float64) @ tW.astype(np.float64) + tb.astype(np.float64)
    for i in (0, 1, 3, 5):
        want = _np_kl(x[i], y[i], float(t[i]), np.ones(V, bool))
        np.testing.assert_allclose(kl[i], want, rtol=1e-5)
    assert kl[2] == 0 and np.isnan(kl[4])
    np.testing.assert_array_equal(dh[[2, 3]], 0)
    assert np.isnan(dh[4]).all() and np.isfinite(dh[[0, 1, 5]]).all() and dt[3] == 0
    # The regular rows' gradients equal the dense function's (float32).
    np.testing.assert_allclose(dh[[0, 1, 5]], dense[[0, 1, 5]], rtol=2e-5, atol=1e-6)


def _kl_inf_inputs():
    inp = _inputs(6, dtype=np.float32)
    b = np.zeros(V, np.float32)
    b[7] = -np.inf
    return dict(h=inp["h"], W=inp["W"], th=inp["th"], tW=inp["tW"], b=b)


@_float32_program("kl_inf", _kl_inf_inputs)
def _kl_inf_program(s):
    th, tW, b = s["th"], s["tW"], s["b"]

    def run(h, W):
        return jax.value_and_grad(
            lambda h, W: linear_kl_divergence(h, W, th, tW, bias=b).sum(), (0, 1)
        )(h, W)

    return run, (s["h"], s["W"])


def test_kl_is_inf_with_zero_gradients_where_the_student_cannot_produce_a_teacher_token(
    float32_runs,
):
    _, (kl, grads) = float32_runs["kl_inf"]
    assert kl == np.inf
    for g in grads:
        np.testing.assert_array_equal(g, 0)


def test_kl_is_inf_at_zero_temperature_when_the_student_row_is_empty():
    # SPEC 8.4: +inf wherever the teacher has mass that the student (all -inf here) cannot give.
    # A plain call: the fused KL's one test outside jit (the others run in float32_runs).
    inp = _inputs(6, dtype=np.float32)
    kl = linear_kl_divergence(
        inp["h"], inp["W"], inp["th"], inp["tW"], bias=np.full(V, -np.inf, np.float32), t=0.0
    )
    assert bool((kl == jnp.inf).all())


def _bf16_inputs():
    inp = _inputs(7, dtype=np.float32)
    bf16 = {k: np.asarray(inp[k]).astype(jnp.bfloat16) for k in ("h", "W", "th", "tW")}
    return dict(bf16, tokens=np.asarray(inp["tokens"]))


@_float32_program("bf16", _bf16_inputs)
def _bf16_program(s):
    tokens = s["tokens"]

    def run(h, W, th, tW):
        lp, ent = linear_log_probs(h, W, tokens, chunk_size=4, return_entropy=True)
        kl = linear_kl_divergence(h, W, th, tW, chunk_size=4)
        f32 = partial(jnp.asarray, dtype=jnp.float32)
        x, y = f32(h) @ f32(W), f32(th) @ f32(tW)
        want_lp = jnp.take_along_axis(jaxsoft.log_softargmax(x), tokens[..., None], -1)[..., 0]
        return (lp, ent, kl), (want_lp, jaxsoft.entropy(x), jaxsoft.kl_divergence(x, y))

    return run, (s["h"], s["W"], s["th"], s["tW"])


def test_bf16_inputs_accumulate_in_float32(float32_runs):
    _, ((lp, ent, kl), (want_lp, want_ent, want_kl)) = float32_runs["bf16"]
    assert lp.dtype == ent.dtype == kl.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(lp), want_lp, rtol=8e-3)
    np.testing.assert_allclose(np.float32(ent), want_ent, rtol=8e-3)
    np.testing.assert_allclose(np.float32(kl), want_kl, rtol=8e-3)


def test_near_one_hot_row_keeps_log_prob_and_entropy_digits():
    """SPEC 3.2 / 8.4: logits [0, -30, -40] in float32."""
    W = jnp.array([[0.0, -30.0, -40.0]])
    lp, ent = linear_log_probs(jnp.ones((1, 1)), W, jnp.array([0]), return_entropy=True)
    s = np.exp(-30.0) + np.exp(-40.0)
    log_p = np.array([0.0, -30.0, -40.0]) - np.log1p(s)  # not log(p): log(1 - 1e-13) is inexact
    np.testing.assert_allclose(lp[0], log_p[0], rtol=1e-6)
    np.testing.assert_allclose(ent[0], -np.sum(np.exp(log_p) * log_p), rtol=4 * 2.0**-23)


def _nearly_equal_inputs():
    rng = np.random.default_rng(8)
    x = rng.normal(size=1000).astype(np.float32) * 2
    y = (x + rng.normal(size=1000).astype(np.float32) * 1.5e-5).astype(np.float32)
    return dict(x=x, y=y)


@_float32_program("nearly_equal", _nearly_equal_inputs)
def _nearly_equal_program(s):
    h = jnp.ones((1, 1), jnp.float32)

    # with the textbook float32 sum below
    def run(x, y):
        kl = linear_kl_divergence(h, x[None], h, y[None], chunk_size=128)
        naive = jnp.sum(jax.nn.softmax(y) * (jax.nn.log_softmax(y) - jax.nn.log_softmax(x)))
        return kl, naive

    return run, (s["x"], s["y"])


def test_kl_of_nearly_equal_heads_is_accurate_to_1e_4_relative(float32_runs):
    """SPEC 8.4: KL ~ 1e-10 over 1000 float32 logits, chunked, against a float64 reference."""
    s, (kl, naive) = float32_runs["nearly_equal"]
    x64_, y64 = s["x"].astype(np.float64), s["y"].astype(np.float64)
    lp = x64_ - np.log(np.sum(np.exp(x64_ - x64_.max()))) - x64_.max()
    lq = y64 - np.log(np.sum(np.exp(y64 - y64.max()))) - y64.max()
    want = np.sum(np.exp(lq) * (lq - lp))
    assert 1e-11 < want < 1e-9
    np.testing.assert_allclose(float(kl[0]), want, rtol=1e-4)
    assert abs(float(naive) - want) > 1e-3 * want  # the textbook sum in float32 is far off


def test_vmap_and_jit_match_the_plain_call():
    inp = _inputs(9, dtype=np.float32)
    h, W, tokens = inp["h"], inp["W"], inp["tokens"]
    plain = linear_log_probs(h, W, tokens, chunk_size=4)
    vmapped = jax.vmap(lambda hh, tt: linear_log_probs(hh, W, tt, chunk_size=4))(h, tokens)
    jitted = jax.jit(lambda hh: linear_log_probs(hh, W, tokens, chunk_size=4))(h)
    np.testing.assert_allclose(vmapped, plain, rtol=1e-6)
    np.testing.assert_allclose(jitted, plain, rtol=1e-6)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda h, W, tok: linear_log_probs(h, W, tok, weight_layout="VD"), "weight_layout"),
        (lambda h, W, tok: linear_log_probs(h, W.T, tok), "shape"),
        (lambda h, W, tok: linear_log_probs(h, W, tok + 100), "labels must lie"),
        (lambda h, W, tok: linear_entropy(h, W, t=jnp.ones(4)), "batch shape"),
        (lambda h, W, tok: linear_entropy(h, W, where=jnp.ones(4, bool)), "where"),
        (lambda h, W, tok: linear_entropy(h, W, logit_softcap=-1.0), "logit_softcap"),
        (lambda h, W, tok: linear_kl_divergence(h, W, h[:1], W), "teacher"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, match):
    inp = _inputs(10, dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        call(inp["h"], inp["W"], inp["tokens"])


# --------------------------------------------------------------------------------------------------
# Sharded twins: the vocabulary split over "v" (8 devices, or 2 x 4 with rows over "d").
# --------------------------------------------------------------------------------------------------

SV = 16  # divisible by 8; two local entries per device on the 1-D mesh, chunks of 3 do not divide
KINDS = ["1d", "2d"]
VMA_SETTINGS = (True, False)


def _mesh(kind):
    devices = np.array(jax.devices()[:8])
    if kind == "1d":
        return Mesh(devices, ("v",))
    return Mesh(devices.reshape(2, 4), ("d", "v"))


def _sharded_inputs():
    inp = _inputs(11, dtype=np.float32, v=SV, batch=(8,), d=4)
    where = np.array(inp["vocab_mask"])
    where[0] = True
    return inp, where


def _all_three(lp_fn, ent_fn, kl_fn, h, W, th, tW, t, tokens, extra):
    kw = dict(t=t, logit_softcap=4.0, weight_layout="Vd", chunk_size=3, **extra)
    lp, ent = lp_fn(h, W, tokens, return_entropy=True, **kw)
    ent2 = ent_fn(h, W, **kw)
    kl = kl_fn(h, W, th, tW, **kw)
    return lp, ent, ent2, kl


def _loss_of(outs):
    lp, ent, ent2, kl = outs
    return jnp.sum(lp * 0.3 + ent * 0.2 + ent2 * 0.1 + kl)


def _grad_with_outputs(f):
    return jax.grad(
        lambda *a: (_loss_of(out := f(*a)), out), argnums=(0, 1, 2, 3, 4, 5), has_aux=True
    )


def _unsharded(tokens, where, h, W, b, th, tW, t):
    return _all_three(
        linear_log_probs,
        linear_entropy,
        linear_kl_divergence,
        h,
        W,
        th,
        tW,
        t,
        tokens,
        dict(bias=b, where=where),
    )


def _sharded(kind, check_vma, tokens, where):
    """The twins under ``shard_map`` on the ``kind`` mesh, as a function of (h, W, b, th, tW, t)."""
    rows = P() if kind == "1d" else P("d")
    rows2 = P() if kind == "1d" else P("d", None)

    def local(h, W, b, th, tW, t, tokens, where):
        return _all_three(
            partial(sharded_linear_log_probs, axis_name="v"),
            partial(sharded_linear_entropy, axis_name="v"),
            partial(sharded_linear_kl_divergence, axis_name="v"),
            h,
            W,
            th,
            tW,
            t,
            tokens,
            dict(bias_local=b, where_local=where),
        )

    f = jax.shard_map(
        local,
        mesh=_mesh(kind),
        in_specs=(rows2, P("v", None), P("v"), rows2, P("v", None), rows, rows, P("v")),
        out_specs=(rows, rows, rows, rows),
        check_vma=check_vma,
    )

    def g(h, W, b, th, tW, t):
        return f(h, W, b, th, tW, t, tokens, where)

    return g


@pytest.fixture(scope="module")
def sharded_and_unsharded():
    """Values and gradients of the unsharded functions and of their twins on both meshes, with
    check_vma True and False, from one jitted program.

    Compiling dominates: XLA merges the near-identical computations of the two check_vma
    settings, so each pair compiles in about the time of one, and one program for the reference
    and both meshes compiles faster than three.
    """
    inp, where = _sharded_inputs()
    tokens = inp["tokens"]
    args = (inp["h"], np.asarray(inp["W"]).T, inp["b"], inp["th"], np.asarray(inp["tW"]).T)
    args += (inp["t_row"],)
    reference = _grad_with_outputs(partial(_unsharded, tokens, where))
    twins = {
        f"{kind} check_vma={vma}": _grad_with_outputs(_sharded(kind, vma, tokens, where))
        for kind in KINDS
        for vma in VMA_SETTINGS
    }

    # Replicated outputs: jax cannot name an output's sharding when the program holds two meshes.
    @partial(jax.jit, out_shardings=NamedSharding(_mesh("1d"), P()))
    def run(*a):
        return reference(*a), {name: twin(*a) for name, twin in twins.items()}

    return jax.tree.map(np.asarray, run(*args))


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_twins_match_unsharded_values_and_gradients(sharded_and_unsharded, kind):
    """Values and gradients on each mesh, with check_vma True and with check_vma False."""
    (want_grads, want), twins = sharded_and_unsharded
    for check_vma in VMA_SETTINGS:
        msg = f"{kind} check_vma={check_vma}"
        grads, got = twins[msg]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6, err_msg=msg)
        for a, b in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6, err_msg=msg)


# --------------------------------------------------------------------------------------------------
# Memory: temp buffers of the compiled value-and-gradient, fused vs naive (lower + compile only).
# --------------------------------------------------------------------------------------------------


def _temp_bytes(f, *shapes):
    return jax.jit(f).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("func", FUNCS)
def test_fused_temp_memory_is_under_a_twentieth_of_naive(func):
    n, d, v = 4096, 512, 65536
    f32 = jnp.float32
    hs, ws = jax.ShapeDtypeStruct((n, d), f32), jax.ShapeDtypeStruct((d, v), f32)
    tok = jnp.zeros((n,), jnp.int32)

    def naive(h, W, th, tW):
        x = h @ W
        if func == "log_probs":
            lp = jnp.take_along_axis(jax.nn.log_softmax(x), tok[:, None], -1)
            return jnp.sum(lp) + jnp.sum(jaxsoft.entropy(x))
        if func == "entropy":
            return jnp.sum(jaxsoft.entropy(x))
        return jnp.sum(jaxsoft.kl_divergence(x, th @ tW))

    def fused(h, W, th, tW):
        if func == "log_probs":
            lp, ent = linear_log_probs(h, W, tok, return_entropy=True)
            return jnp.sum(lp) + jnp.sum(ent)
        if func == "entropy":
            return jnp.sum(linear_entropy(h, W))
        return jnp.sum(linear_kl_divergence(h, W, th, tW))

    grad = partial(jax.value_and_grad, argnums=(0, 1))
    fused_b = _temp_bytes(grad(fused), hs, ws, hs, ws)
    naive_b = _temp_bytes(grad(naive), hs, ws, hs, ws)
    assert fused_b * 20 <= naive_b, (fused_b, naive_b)
