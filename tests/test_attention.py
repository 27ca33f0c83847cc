"""jaxsoft.attention and merge_attention: SPEC section 10 (and the edges of 6, 7, 8.1 it inherits).

References: jax.nn.dot_product_attention(implementation="xla") on ordinary inputs, and a float64
NumPy computation (below) for temperatures, soft-caps and the edges jax.nn does differently.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxsoft import attention, merge_attention

B, T, S, N, H = 2, 5, 7, 4, 8


def _normal(seed, shape, dtype=jnp.float32):
    # NumPy draws: jax.random compiles a sampler per shape and dtype (seconds on a loaded CI box).
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _inputs(kv_heads=2, seed=0, dtype=jnp.float32, t=T, s=S, n=N, h=H):
    q = _normal(10 * seed, (B, t, n, h), dtype)
    k = _normal(10 * seed + 1, (B, s, kv_heads, h), dtype)
    v = _normal(10 * seed + 2, (B, s, kv_heads, h), dtype)
    bias = _normal(10 * seed + 3, (B, n, t, s), dtype)
    # Random keys off, but every query keeps key 0, so no row is empty (jax.nn differs there).
    keep = np.random.default_rng(10 * seed + 4).random((B, 1, t, s)) < 0.6
    keep[..., :1] = True
    return q, k, v, bias, jnp.asarray(keep)


def _reference(q, k, v, *, bias=None, mask=None, is_causal=False, scale=None, t=1.0, cap=None):
    """Float64 NumPy attention with SPEC 10.2 edges: empty rows 0 / -inf, t = 0 hard, ties split."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    g = q.shape[2] // k.shape[2]
    k, v = np.repeat(k, g, axis=2), np.repeat(v, g, axis=2)
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    s = np.einsum("btnh,bsnh->bnts", q, k) * scale
    if cap is not None:
        s = cap * np.tanh(s / cap)
    if bias is not None:
        s = s + np.asarray(bias, np.float64)
    keep = np.ones(s.shape, bool)
    if mask is not None:
        keep &= np.asarray(mask)
    if is_causal:
        keep &= np.tril(np.ones(s.shape[-2:], bool))
    s = np.where(keep, s, -np.inf)
    m = s.max(-1, keepdims=True)
    empty = m == -np.inf
    m = np.where(empty, 0, m)
    t = np.asarray(t, np.float64)
    t_rows = np.broadcast_to(t, q.shape[:3]).transpose(0, 2, 1)[..., None]  # (B, N, T, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        hard = t_rows == 0
        e = np.where(hard, (s == m).astype(float), np.exp((s - m) / np.where(hard, 1, t_rows)))
        total = e.sum(-1, keepdims=True)
        p = np.where(empty, 0, e / total)
        lse = np.where(empty, -np.inf, m + np.where(hard, 0, t_rows * np.log(total)))
    out = np.einsum("bnts,bsnh->btnh", p, v)
    return out, lse[..., 0].transpose(0, 2, 1)


@partial(jax.jit, static_argnames="is_causal")
def _nn(q, k, v, bias=None, mask=None, is_causal=False):
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias, mask=mask, is_causal=is_causal, implementation="xla"
    )


def _grad(fn, argnums=0):
    """A jitted gradient: one compilation instead of op-by-op dispatch (keeps the file fast)."""
    return jax.jit(jax.grad(fn, argnums))


def _loss(fn, w):
    return lambda *a: jnp.vdot(fn(*a), w)


# --------------------------------------------------------------------------------------------------
# 10.1: ordinary inputs, against jax.nn (values and gradients).
# --------------------------------------------------------------------------------------------------

CASES = {
    "plain-mha": (4, dict()),
    "bias-gqa": (2, dict(bias=True)),
    "mask-mha": (4, dict(mask=True)),
    "causal-mqa": (1, dict(is_causal=True)),
    "all-gqa": (2, dict(bias=True, mask=True, is_causal=True)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_jax_nn_values_and_grads(case):
    kv_heads, opts = CASES[case]
    q, k, v, bias, mask = _inputs(kv_heads)
    bias = bias if opts.get("bias") else None
    mask = mask if opts.get("mask") else None
    causal = opts.get("is_causal", False)
    w = _normal(9, q.shape)

    def ours(q, k, v, bias):
        return attention(q, k, v, bias=bias, mask=mask, is_causal=causal)

    def ref(q, k, v, bias):
        return _nn(q, k, v, bias, mask, causal)

    argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)

    # Values and gradients of both in one program (one compile per case); plain calls of
    # attention against jax.nn are the unbatched and causal tests below.
    @jax.jit
    def both(q, k, v, bias):
        return [
            (fn(q, k, v, bias), jax.grad(_loss(fn, w), argnums)(q, k, v, bias))
            for fn in (ours, ref)
        ]

    (out_ours, g_ours), (out_ref, g_ref) = both(q, k, v, bias)
    np.testing.assert_allclose(out_ours, out_ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_ours, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_unbatched_inputs_and_scale_match_jax_nn():
    q, k, v, _, _ = _inputs(4)
    out, lse = attention(q[0], k[0], v[0], scale=0.3, return_lse=True)
    nn = partial(jax.nn.dot_product_attention, scale=0.3, implementation="xla")
    ref = jax.jit(nn)(q[0], k[0], v[0])
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert lse.shape == (T, N)
    np.testing.assert_allclose(lse, _reference(q, k, v, scale=0.3)[1][0], rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# 10.2: queries with no key; -inf bias; NaN rows.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_fully_masked_row_is_zero_with_zero_grads_and_neg_inf_lse(chunk_size):
    q, k, v, _, mask = _inputs(2)
    # Inputs edited and outputs indexed in NumPy: eager jnp indexing compiles a program per shape.
    mask = np.broadcast_to(mask, (B, N, T, S)).copy()
    mask[0, 1, 2] = False  # (b=0, head 1, query 2)
    mask = jnp.asarray(mask)

    def f(q, k, v):
        return attention(q, k, v, mask=mask, chunk_size=chunk_size, return_lse=True)

    @jax.jit  # the three gradients below in one program (the values stay a plain call)
    def all_grads(q, k, v):
        row_grads = [
            jax.grad(lambda *a, i=which: f(*a)[i][0, 2, 1].sum(), (0, 1, 2))(q, k, v)
            for which in (0, 1)
        ]
        return row_grads, jax.grad(lambda *a: f(*a)[0].sum(), (0, 1, 2))(q, k, v)

    out, lse = (np.asarray(a) for a in f(q, k, v))
    row_grads, grads = all_grads(q, k, v)
    np.testing.assert_array_equal(out[0, 2, 1], 0)
    assert lse[0, 2, 1] == -np.inf
    assert np.isfinite(lse).sum() == lse.size - 1
    # Gradients of that query's output and lse are exactly zero, for every input.
    for g in jax.tree.leaves(row_grads):
        np.testing.assert_array_equal(g, 0)
    # The other queries are untouched by it: the whole loss has finite gradients.
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_no_keys_at_all_gives_zero_and_neg_inf():
    q, k, v, _, _ = _inputs(2, s=0)
    for chunk_size in (None, 4):
        out, lse = attention(q, k, v, chunk_size=chunk_size, return_lse=True)
        np.testing.assert_array_equal(out, np.zeros(q.shape))
        np.testing.assert_array_equal(lse, np.full(q.shape[:3], -np.inf))


def test_jax_nn_gives_the_mean_of_the_values_on_a_fully_masked_row():
    """The difference SPEC 10.2 makes: jax.nn's large finite negative gives a plain average."""
    q, k, v, _, _ = _inputs(4)
    mask = np.ones((1, 1, T, S), bool)
    mask[..., 2, :] = False
    mask = jnp.asarray(mask)
    theirs = np.asarray(_nn(q, k, v, mask=mask))[:, 2]  # indexed in NumPy: no eager compiles
    np.testing.assert_allclose(theirs, np.asarray(v, np.float64).mean(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(attention(q, k, v, mask=mask))[:, 2], 0)


def test_causal_with_more_keys_than_queries_is_top_left_aligned_like_jax_nn():
    q, k, v, _, _ = _inputs(4, t=3, s=S)
    np.testing.assert_allclose(
        attention(q, k, v, is_causal=True), _nn(q, k, v, is_causal=True), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_neg_inf_bias_is_a_mask(chunk_size):
    q, k, v, bias, mask = _inputs(2)
    mask = np.broadcast_to(mask, bias.shape).copy()  # edited in NumPy: no eager compiles
    mask[1, 0, 4] = False
    masked_bias = jnp.asarray(np.where(mask, bias, -np.inf))
    mask = jnp.asarray(mask)

    def with_bias(q, k, v, b):
        return attention(q, k, v, bias=b, chunk_size=chunk_size)

    def with_mask(q, k, v, b):
        return attention(q, k, v, bias=b, mask=mask, chunk_size=chunk_size)

    np.testing.assert_allclose(with_bias(q, k, v, masked_bias), with_mask(q, k, v, bias), atol=1e-6)

    @jax.jit  # both gradients in one program (the values above stay plain calls)
    def both_grads(q, k, v, bias, masked_bias):
        g1 = jax.grad(lambda *a: with_bias(*a).sum(), (0, 1, 2, 3))(q, k, v, masked_bias)
        g2 = jax.grad(lambda *a: with_mask(*a).sum(), (0, 1, 2, 3))(q, k, v, bias)
        return g1, g2

    g1, g2 = both_grads(q, k, v, bias, masked_bias)
    for a, b in zip(g1[:3], g2[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.where(mask, 0, g1[3]), 0)  # no gradient into -inf bias


@pytest.mark.parametrize("chunk_size", [None, 1000])
def test_nan_stays_in_its_row_on_long_rows(chunk_size):
    # 4100 keys: XLA:CPU's fused max drops NaN on rows this long; the row must stay NaN anyway.
    n_keys = 4100
    q, k, v, _, _ = _inputs(1, s=n_keys, n=1, h=4)
    # Edited in NumPy: an eager .at[].set on each of these shapes would be a compile of its own.
    q = np.array(q)
    q[0, 1, 0, 0] = np.nan
    bias = np.zeros((B, 1, T, n_keys), np.float32)
    bias[1, 0, 3, 17] = np.nan
    bias[0, 0, 3, 9] = np.inf  # +inf is not a weight: NaN, on its row only
    bias[1, 0, 2, 5] = np.nan  # ...but a NaN in a masked entry changes nothing
    mask = np.ones((B, 1, T, n_keys), bool)
    mask[1, 0, 2, 5] = False
    q, bias, mask = jnp.asarray(q), jnp.asarray(bias), jnp.asarray(mask)
    out, lse = attention(q, k, v, bias=bias, mask=mask, chunk_size=chunk_size, return_lse=True)
    bad = np.zeros((B, T), bool)
    bad[0, 1] = bad[1, 3] = bad[0, 3] = True
    assert np.isnan(np.asarray(out[:, :, 0])).all(axis=-1)[bad].all()
    assert np.isfinite(np.asarray(out[:, :, 0]))[~bad].all()
    assert np.isnan(np.asarray(lse[:, :, 0]))[bad].all()
    assert np.isfinite(np.asarray(lse[:, :, 0]))[~bad].all()


# --------------------------------------------------------------------------------------------------
# t, soft-cap and lse against float64 NumPy; hard attention at t = 0.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [None, 1.5])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_t_and_softcap_match_float64_reference(cap, chunk_size):
    # Edited in NumPy (an eager .at[].set compiles a program per shape).
    q, k, v, bias, mask = (np.array(a) for a in _inputs(2))
    # Ties for hard attention: keys 0 and 1 equal (key, bias, mask), and query 1 of every head
    # (which sees both, causally) scoring them highest.
    k[:, 1] = k[:, 0]
    q[:, 1] = 3.0 * np.repeat(k[:, 0], N // 2, axis=1)
    bias[..., 1, 1] = bias[..., 1, 0]
    mask[..., 1, :2] = True
    q, k, v, bias, mask = (jnp.asarray(a) for a in (q, k, v, bias, mask))
    per_row = np.linspace(0.0, 2.0, B * T * N).reshape(B, T, N)
    for t in (0.5, 3.0, 0.0, per_row):  # scalars share one compilation (t is traced)
        out, lse = attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            is_causal=True,
            t=t,
            logit_softcap=cap,
            chunk_size=chunk_size,
            return_lse=True,
        )
        ref_out, ref_lse = _reference(q, k, v, bias=bias, mask=mask, is_causal=True, t=t, cap=cap)
        np.testing.assert_allclose(out, ref_out, rtol=2e-5, atol=2e-5, err_msg=f"t={t}")
        np.testing.assert_allclose(lse, ref_lse, rtol=2e-5, atol=2e-5, err_msg=f"t={t}")


def test_hard_attention_averages_tied_keys():
    v = jnp.asarray(np.array([1.0, 3.0, 100.0], np.float32).reshape(1, 3, 1, 1))  # (1, S, 1, 1)
    k = jnp.asarray(np.array([1.0, 1.0, 0.5], np.float32).reshape(1, 3, 1, 1))
    q = jnp.ones((1, 1, 1, 1))
    for chunk_size in (None, 1, 2):
        out = attention(q, k, v, t=0.0, chunk_size=chunk_size)
        np.testing.assert_array_equal(np.asarray(out)[0, 0, 0], [2.0])


# --------------------------------------------------------------------------------------------------
# 10.3: the chunked path equals the unchunked one (values and gradients of every input).
# --------------------------------------------------------------------------------------------------


def test_chunked_matches_unchunked_values_and_grads():
    q, k, v, bias, mask = _inputs(2)
    t = jnp.linspace(0.5, 2.0, T)[None, :, None]  # per query position

    def f(q, k, v, bias, t, chunk):
        out, lse = attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            is_causal=True,
            t=t,
            logit_softcap=4.0,
            chunk_size=chunk,
            return_lse=True,
        )
        return out, lse

    args = (q, k, v, bias, t)
    w = _normal(3, q.shape)

    def loss(*a, chunk):
        out, lse = f(*a, chunk)
        return jnp.vdot(out, w) + 0.3 * jnp.sum(lse)

    # 7 chunks of 1 key; 3 chunks of 3 for 7 keys, the last padded. Values and gradients of the
    # three paths in one program (plain chunked calls: test_t_and_softcap_match_float64_reference).
    chunk_sizes = (None, 1, 3)

    @jax.jit
    def values_and_grads(*args):
        return [
            (f(*args, c), jax.grad(partial(loss, chunk=c), tuple(range(5)))(*args))
            for c in chunk_sizes
        ]

    (dense, grads_dense), *chunked = values_and_grads(*args)
    for values, grads in chunked:
        for a, b in zip(dense, values):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads_dense, grads):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_chunked_grads_with_a_bias_constant_along_the_keys():
    q, k, v, bias, _ = _inputs(4)
    key_bias = bias[:, :1, :, :1]  # (B, 1, T, 1): its gradient sums over heads and keys
    w = _normal(4, q.shape)

    def loss(q, k, v, kb, chunk):
        return jnp.vdot(attention(q, k, v, bias=kb, chunk_size=chunk), w)

    @jax.jit  # both gradients in one program
    def grads(*args):
        return [jax.grad(partial(loss, chunk=c), (0, 1, 2, 3))(*args) for c in (None, 2)]

    gd, gc = grads(q, k, v, key_bias)
    for a, b in zip(gd, gc):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_check_grads_float64(x64, chunk_size):
    q = _normal(50, (1, 3, 2, 3), jnp.float64)
    k = _normal(51, (1, 5, 1, 3), jnp.float64)
    v = _normal(52, (1, 5, 1, 3), jnp.float64)
    bias = _normal(53, (1, 2, 3, 5), jnp.float64)
    mask = jnp.ones((1, 1, 3, 5), bool).at[..., 0, :].set(False)  # query 0: no key
    t = jnp.array([[0.7], [1.3], [1.0]])  # (T, 1): per query position

    def f(q, k, v, bias, t):
        out, lse = attention(
            q,
            k,
            v,
            bias=bias,
            mask=mask,
            t=t,
            logit_softcap=2.0,
            chunk_size=chunk_size,
            return_lse=True,
        )
        return out, jnp.where(jnp.isfinite(lse), lse, 0)

    args = (q, k, v, bias, t[None])
    check_grads(jax.jit(f), args, order=2, modes=("rev",), atol=1e-5, rtol=1e-5)
    if chunk_size is None:  # forward mode exists for the dense path (its rule is a custom JVP)
        check_grads(jax.jit(f), args, order=1, modes=("fwd",), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# 10.4: merging partial results.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_merge_of_two_key_halves_equals_whole(chunk_size):
    q, k, v, bias, mask = _inputs(2)
    mask = jnp.broadcast_to(mask, bias.shape)
    split = 3

    w = _normal(6, q.shape)

    def part(q, sl, chunk):
        return attention(
            q,
            k[:, sl],
            v[:, sl],
            bias=bias[..., sl],
            mask=mask[..., sl],
            chunk_size=chunk,
            return_lse=True,
        )

    def merged_loss(q):
        # Differentiable end to end: the merged gradient is the whole one.
        pa = attention(q, k[:, :split], v[:, :split], bias=bias[..., :split], return_lse=True)
        pb = attention(q, k[:, split:], v[:, split:], bias=bias[..., split:], return_lse=True)
        return jnp.vdot(merge_attention(*pa, *pb)[0], w)

    # The parts, their merge, the whole and both gradients in one program (plain calls of
    # merge_attention: the tests below).
    @jax.jit
    def run(q):
        a, b = part(q, slice(0, split), chunk_size), part(q, slice(split, None), chunk_size)
        whole = attention(q, k, v, bias=bias, mask=mask, return_lse=True)
        g_whole = jax.grad(lambda q: jnp.vdot(attention(q, k, v, bias=bias), w))(q)
        return merge_attention(*a, *b), whole, jax.grad(merged_loss)(q), g_whole

    (out, lse), (whole_out, whole_lse), g, g_whole = run(q)
    np.testing.assert_allclose(out, whole_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lse, whole_lse, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, g_whole, rtol=1e-4, atol=1e-5)


def test_merge_with_an_empty_part_returns_the_other_with_nan_free_grads():
    out_a = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    lse_a = jnp.array([0.5, -2.0])
    out_b = jnp.array([[jnp.nan, 7.0], [0.0, 0.0]])  # an empty part's out does not matter
    lse_b = jnp.array([-jnp.inf, -jnp.inf])
    out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
    np.testing.assert_array_equal(out, out_a)
    np.testing.assert_array_equal(lse, lse_a)
    grads = _grad(lambda *a: sum(x.sum() for x in merge_attention(*a)), (0, 1, 2, 3))(
        out_a, lse_a, out_b, lse_b
    )
    np.testing.assert_array_equal(grads[0], 1.0)
    np.testing.assert_array_equal(grads[1], 1.0)
    np.testing.assert_array_equal(grads[2], 0.0)
    np.testing.assert_array_equal(grads[3], 0.0)


def test_merge_all_empty_gives_zero_and_neg_inf_with_zero_grads():
    out_a = out_b = jnp.ones((3, 2))
    lse_a = lse_b = jnp.full((3,), -jnp.inf)
    out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(lse, -jnp.inf)
    grads = _grad(lambda *a: merge_attention(*a)[0].sum(), (0, 1, 2, 3))(out_a, lse_a, out_b, lse_b)
    for g in grads:
        np.testing.assert_array_equal(g, 0)


def test_merge_is_exact_for_huge_lse_gaps_and_matches_float64():
    rng = np.random.default_rng(0)
    out_a, out_b = rng.normal(size=(2, 4, 3))
    lse_a = np.array([0.0, 80.0, -80.0, 1e30])
    lse_b = np.array([0.0, -80.0, 80.0, 1e30])
    out, lse = merge_attention(out_a, lse_a, out_b, lse_b)
    m = np.maximum(lse_a, lse_b)
    wa, wb = np.exp(lse_a - m), np.exp(lse_b - m)
    ref = (wa[:, None] * out_a + wb[:, None] * out_b) / (wa + wb)[:, None]
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    np.testing.assert_allclose(lse, m + np.log(wa + wb), rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# Dtypes and transforms.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_bf16_in_bf16_out_with_float32_softmax(chunk_size):
    q, k, v, bias, mask = _inputs(2, dtype=jnp.bfloat16)
    out, lse = attention(q, k, v, bias=bias, mask=mask, chunk_size=chunk_size, return_lse=True)
    assert out.dtype == jnp.bfloat16 and lse.dtype == jnp.float32
    ref_out, ref_lse = _reference(q, k, v, bias=bias, mask=mask)
    np.testing.assert_allclose(np.asarray(out, np.float64), ref_out, atol=3e-2, rtol=3e-2)
    np.testing.assert_allclose(lse, ref_lse, atol=1e-2, rtol=1e-3)
    grads = _grad(
        lambda q, k, v: attention(q, k, v, chunk_size=chunk_size).astype(jnp.float32).sum(),
        (0, 1, 2),
    )(q, k, v)
    assert all(
        g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all() for g in grads
    )


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_jit_and_vmap(chunk_size):
    q, k, v, _, mask = _inputs(2)

    def f(q, k, v):
        return attention(q, k, v, mask=mask, is_causal=True, chunk_size=chunk_size)

    plain = f(q, k, v)
    np.testing.assert_allclose(jax.jit(f)(q, k, v), plain, rtol=1e-6, atol=1e-7)
    stacked = jnp.stack([q, 2 * q])
    batched = jax.vmap(f, in_axes=(0, None, None))(stacked, k, v)
    np.testing.assert_allclose(batched[0], plain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(batched[1], f(2 * q, k, v), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# Memory: the chunked path keeps no (T, S) array (deterministic, from XLA's buffer assignment).
# --------------------------------------------------------------------------------------------------


def test_chunked_temp_memory_is_far_below_unchunked():
    shape_q = jax.ShapeDtypeStruct((1, 2048, 2, 16), jnp.float32)

    def temp(chunk_size):
        def loss(q, k, v):
            return attention(q, k, v, is_causal=True, chunk_size=chunk_size).sum()

        compiled = jax.jit(jax.value_and_grad(loss, (0, 1, 2))).lower(shape_q, shape_q, shape_q)
        return compiled.compile().memory_analysis().temp_size_in_bytes

    scores_bytes = 1 * 2 * 2048 * 2048 * 4
    dense, chunked = temp(None), temp(64)
    assert dense >= scores_bytes  # the dense gradient keeps the (T, S) probabilities
    assert chunked * 8 <= dense


# --------------------------------------------------------------------------------------------------
# Errors name the function and the argument.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(mask=jnp.ones((B, N, T, S), jnp.int32)), TypeError, "mask must be a boolean"),
        (dict(bias=jnp.ones((B, N, T, S + 1))), ValueError, "bias of shape"),
        (dict(t=-1.0), ValueError, "t must be >= 0"),
        (dict(t=jnp.ones((3,))), ValueError, "t of shape"),
        (dict(chunk_size=0), ValueError, "chunk_size"),
        (dict(logit_softcap=0.0), ValueError, "logit_softcap"),
        (dict(scale="x"), TypeError, "scale"),
    ],
)
def test_bad_arguments_raise(kwargs, error, match):
    q, k, v, _, _ = _inputs(2)
    with pytest.raises(error, match=match):
        attention(q, k, v, **kwargs)


def test_bad_shapes_raise():
    q, k, v, _, _ = _inputs(2)
    with pytest.raises(ValueError, match="multiple of the number of key/value heads"):
        attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="value of shape"):
        attention(q, k, v[:, :3])
    with pytest.raises(TypeError, match="query must be a floating"):
        attention(q.astype(jnp.int32), k, v)
    with pytest.raises(ValueError, match="merge_attention"):
        merge_attention(q, q[..., 0], q, q[..., :2, 0])
