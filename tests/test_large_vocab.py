"""Chunked log-sum-exp and the fused linear cross-entropy against their unchunked references.

References: :func:`jaxsoft.logsumexp` and :func:`jaxsoft.losses.cross_entropy` on the materialised
``h @ W + bias`` (themselves tested against float64/mpmath references elsewhere), plus NumPy float64
where a value is checked directly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsoft
from jaxsoft.large_vocab import chunked_logsumexp, linear_cross_entropy
from jaxsoft.losses import cross_entropy

V = 37
# divides V? no (5, 8), equal (37), exceeds (100), one entry per step (1); 4 does not divide 37
# either, so V = 36 below adds chunk sizes that divide.
CHUNKS = [1, 5, 8, 37, 100]


def _close(a, b, rtol=2e-5, atol=2e-5):
    np.testing.assert_allclose(
        np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol
    )


# --------------------------------------------------------------------------------------------------
# chunked_logsumexp
# --------------------------------------------------------------------------------------------------


def _edge_rows():
    x = np.array(3 * np.random.default_rng(0).normal(size=(8, V)), np.float32)
    x[1, [3, 20]] = -np.inf  # some -inf
    x[2, [0, 30]] = np.inf  # two +inf
    x[3] = -np.inf  # empty row
    x[4, 17] = np.nan  # NaN row
    x[5] = 1e30  # huge ties
    x[6, :] = 0.0
    x[6, 36] = 40.0  # a dominant last entry (in the clamped last chunk)
    return jnp.asarray(x)


# One entry per step, t = 0, a chunk longer than the axis; tests/test_loss_properties.py covers
# ragged and exact chunks at other temperatures against a float64 reference.
@pytest.mark.parametrize("chunk, t", [(1, 1.0), (8, 0.0), (100, 0.5)])
def test_chunked_logsumexp_matches_logsumexp_values_and_grads(chunk, t):
    x = _edge_rows()

    # One program for both functions' values and gradients. t reaches them as in an eager call:
    # a Python 1.0 (the unit-temperature path), any other t as an array.
    def run(x, t):
        got = chunked_logsumexp(x, chunk_size=chunk, t=t)
        g_got = jax.grad(lambda x: chunked_logsumexp(x, chunk_size=chunk, t=t).sum())(x)
        want = jaxsoft.logsumexp(x, axis=-1, t=t)
        g_want = jax.grad(lambda x: jaxsoft.logsumexp(x, axis=-1, t=t).sum())(x)
        return got, want, g_got, g_want

    got, want, g_got, g_want = jax.jit(run, static_argnums=(1,) if t == 1 else ())(x, t)
    _close(got, want, rtol=1e-6, atol=0)
    _close(g_got, g_want, atol=1e-6)
    # The NaN stays on its row: every other row's gradient is finite.
    assert np.isfinite(np.delete(np.asarray(g_got), 4, axis=0)).all()


@pytest.mark.parametrize("chunk", [9])  # 9 divides 36
def test_chunked_logsumexp_temperature_derivative_and_per_row_t(chunk):
    x = jnp.asarray(3 * np.random.default_rng(1).normal(size=(3, 36)), jnp.float32)
    t = jnp.array([0.3, 1.0, 2.5])

    @jax.jit
    def run(x, t):
        got = jax.grad(lambda t: chunked_logsumexp(x, chunk_size=chunk, t=t).sum())(t)
        want = jax.grad(lambda t: jaxsoft.logsumexp(x, axis=-1, t=t).sum())(t)
        return got, want

    _close(*run(x, t))


# The reference, jitted once for the plain and jit cases (eagerly, each op compiles on its own).
@jax.jit
def _lse_axis20_reference(x, mask):
    return jaxsoft.logsumexp(x, axis=(2, 0), where=mask, keepdims=True)


@pytest.mark.parametrize("transform", ["plain", "jit", "vmap"])
def test_chunked_logsumexp_where_axis_tuple_and_transforms(transform):
    # NumPy-built inputs: eager jax.random and .at[] ops would each compile a program.
    rng = np.random.default_rng(2)
    x = 3 * rng.normal(size=(2, 4, 9)).astype(np.float32)
    mask = rng.random(x.shape) < 0.7
    mask[1, 2] = False
    x[0, 0, 0] = np.nan
    mask[0, 0, 0] = False  # a masked NaN changes nothing
    x, mask = jnp.asarray(x), jnp.asarray(mask)

    def f(x, m):
        return chunked_logsumexp(x, axis=(2, 0), chunk_size=5, where=m, keepdims=True)

    if transform == "jit":
        f = jax.jit(f)
    if transform == "vmap":
        got = jax.vmap(lambda x, m: chunked_logsumexp(x, axis=1, chunk_size=5, where=m), in_axes=1)(
            x, mask
        )
        want = jax.jit(jax.vmap(lambda x, m: jaxsoft.logsumexp(x, axis=1, where=m), in_axes=1))(
            x, mask
        )
    else:
        got, want = f(x, mask), _lse_axis20_reference(x, mask)
    _close(got, want, rtol=1e-6)


def test_chunked_logsumexp_keeps_log1p_accuracy_and_empty_axis(x64):
    x = jnp.array([0.0, -40.0, -50.0], jnp.float64)
    got = float(chunked_logsumexp(x, chunk_size=1))
    assert abs(got - (np.exp(-40.0) + np.exp(-50.0))) < 1e-30
    assert float(chunked_logsumexp(jnp.zeros((0,)), chunk_size=3)) == -np.inf


def test_chunked_logsumexp_check_grads_float64(x64):
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, 11)), jnp.float64)
    # jitted: eagerly, every scan of the forward and backward passes compiles on its own.
    check_grads(
        jax.jit(lambda x: chunked_logsumexp(x, chunk_size=4, t=0.7)),
        (x,),
        order=1,
        modes=("fwd", "rev"),
    )


def test_chunked_logsumexp_bf16_returns_bf16_accumulated_in_f32():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4096)), jnp.bfloat16)
    got, want = jax.jit(
        lambda x: (chunked_logsumexp(x, chunk_size=1000), jaxsoft.logsumexp(x, axis=-1))
    )(x)
    assert got.dtype == jnp.bfloat16
    _close(got, want, rtol=1e-2)


def test_chunked_logsumexp_rejects_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_logsumexp(jnp.ones(3), chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        chunked_logsumexp(jnp.ones(3), chunk_size=2.0)


# --------------------------------------------------------------------------------------------------
# linear_cross_entropy
# --------------------------------------------------------------------------------------------------


def _head(v=V, n=6, d=5, seed=0):
    # NumPy's generator: eager jax.random would compile its programs for every new shape.
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d)).astype(np.float32)
    W = 2 * rng.normal(size=(d, v)).astype(np.float32)
    b = rng.normal(size=(v,)).astype(np.float32)
    labels = rng.integers(0, v, size=(n,)).astype(np.int32)
    labels[0], labels[1] = v - 1, 0
    return jnp.asarray(h), jnp.asarray(W), jnp.asarray(b), jnp.asarray(labels)


OPTIONS = [
    dict(),
    dict(label_smoothing=1.0),
    dict(t=0.5),
    dict(t=2.0, label_smoothing=0.3, ignore_index=3),
]


def _both(h, W, b, labels, chunk, opts):
    opts = dict(opts)
    t = opts.pop("t", 1.0)
    if "ignore_index" in opts:
        labels = np.array(labels)
        labels[2] = 3

    def fused(h, W, b, t):
        return linear_cross_entropy(h, W, labels, bias=b, chunk_size=chunk, t=t, **opts)

    def ref(h, W, b, t):
        return cross_entropy(h @ W + b, labels, t=t, **opts)

    wts = jnp.linspace(0.5, 1.5, labels.shape[0])

    def run(f, *a):
        # A weighted sum, so that each row's gradient is checked, not just their total.
        def total(*a):
            loss = f(*a)
            return jnp.sum(wts * loss), loss

        (_, loss), grads = jax.value_and_grad(total, argnums=(0, 1, 2, 3), has_aux=True)(*a)
        return loss, grads

    # Both in one program: one compile per case.
    both = jax.jit(lambda *a: (run(fused, *a), run(ref, *a)))
    # NumPy results: indexing device arrays would compile a program per index.
    return jax.tree.map(np.asarray, both(h, W, b, jnp.float32(t)))


# The option grid at one chunk size, the full options at one entry per step and at a chunk longer
# than V; tests/test_loss_properties.py draws the rest against a float64 reference.
CASES = [(5, o) for o in OPTIONS] + [(c, OPTIONS[-1]) for c in (1, 100)]


@pytest.mark.parametrize(
    "chunk, opts",
    CASES,
    ids=[f"{c}-" + (",".join(f"{k}={v}" for k, v in o.items()) or "plain") for c, o in CASES],
)
def test_linear_cross_entropy_matches_cross_entropy_on_materialised_logits(chunk, opts):
    h, W, b, labels = _head()
    (loss, grads), (loss_ref, grads_ref) = _both(h, W, b, labels, chunk, opts)
    _close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, grads_ref):
        _close(g, r, rtol=1e-4, atol=1e-5)
    if "ignore_index" in opts:
        assert float(loss[2]) == 0.0 and float(jnp.abs(grads[0][2]).max()) == 0.0


@pytest.mark.parametrize("chunk", [4])  # divides V = 36
def test_linear_cross_entropy_with_dividing_chunks(chunk):
    h, W, b, labels = _head(v=36, seed=1)
    (loss, grads), (loss_ref, grads_ref) = _both(h, W, b, labels, chunk, dict(label_smoothing=0.2))
    _close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, grads_ref):
        _close(g, r, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunk", [8])
def test_linear_cross_entropy_masked_vocab_padding_by_minus_inf_bias(chunk):
    # A vocabulary padded from 33 to 37 columns: the padding is removed by a -inf bias.
    h, W, b, labels = _head(seed=2)
    labels = np.asarray(labels) % 33
    b = np.array(b)
    b[33:] = -np.inf
    (loss, grads), (loss_ref, grads_ref) = _both(h, W, b, labels, chunk, dict())
    _close(loss, loss_ref, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, grads_ref):
        _close(g, r, rtol=1e-4, atol=1e-5)
    assert float(jnp.abs(grads[1][:, 33:]).max()) == 0.0
    # ... and equals the loss over the 33 real columns alone.
    real = jax.jit(lambda h, W, b: cross_entropy(h @ W[:, :33] + b[:33], labels))(h, W, b)
    _close(loss, real, rtol=1e-5, atol=1e-5)


def test_linear_cross_entropy_label_on_minus_inf_column_is_inf_with_zero_grads():
    h, W, b, labels = _head(seed=3)
    b = np.array(b)
    b[int(labels[4])] = -np.inf
    f = lambda h, W, b: linear_cross_entropy(h, W, labels, bias=b, chunk_size=8)

    @jax.jit
    def run(h, W, b):
        loss = f(h, W, b)
        keep = jnp.where(jnp.isinf(loss), 0, 1)
        return loss, jax.grad(lambda *a: jnp.sum(keep * f(*a)), argnums=(0, 1, 2))(h, W, b)

    loss, (gh, gW, gb) = jax.tree.map(np.asarray, run(h, W, b))
    assert float(loss[4]) == np.inf and np.isfinite(np.delete(loss, 4)).all()
    assert float(np.abs(gh[4]).max()) == 0.0
    assert np.isfinite(np.asarray(gW)).all() and np.isfinite(np.asarray(gb)).all()


def test_linear_cross_entropy_ignored_rows_with_nan_hidden_state_give_zero_and_no_nan():
    h, W, _b, labels = _head(seed=4)
    h = h.at[2].set(jnp.nan)
    labels = labels.at[2].set(-100)
    f = lambda h, W: linear_cross_entropy(h, W, labels, chunk_size=8, ignore_index=-100).sum()
    loss, (gh, gW) = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(h, W)
    assert np.isfinite(float(loss))
    assert float(jnp.abs(gh[2]).max()) == 0.0
    assert np.isfinite(np.asarray(gW)).all()


def test_linear_cross_entropy_hard_argmax_at_zero_temperature():
    h, W, b, labels = _head(seed=5)
    logits = np.asarray(h, np.float64) @ np.asarray(W, np.float64) + np.asarray(b, np.float64)
    labels = labels.at[0].set(int(np.argmax(logits[0])))

    # One program; t = 0 passed as an array, as an eager call passes a Python 0.0 on.
    @jax.jit
    def run(h, t):
        loss = linear_cross_entropy(h, W, labels, bias=b, chunk_size=8, t=t)
        want = cross_entropy(h @ W + b, labels, t=t)
        g = jax.grad(lambda h: linear_cross_entropy(h, W, labels, bias=b, chunk_size=8, t=t)[0])(h)
        return loss, want, g

    loss, want, g = run(h, jnp.float32(0.0))
    _close(loss, want)
    assert float(jnp.abs(g).max()) == 0.0


@pytest.mark.parametrize("transform", ["jit", "vmap"])
def test_linear_cross_entropy_under_transforms_and_batch_dims(transform):
    h, W, b, labels = _head(seed=6)
    h3, lab3 = h.reshape(2, 3, -1), labels.reshape(2, 3)
    f = lambda h, y: linear_cross_entropy(h, W, y, bias=b, chunk_size=8)
    got = jax.jit(f)(h3, lab3) if transform == "jit" else jax.vmap(f)(h3, lab3)
    want = jax.jit(lambda h3, lab3: cross_entropy(h3 @ W + b, lab3))(h3, lab3)
    _close(got, want, rtol=1e-5, atol=1e-5)


def test_linear_cross_entropy_bf16_inputs_accumulate_in_float32():
    h, W, _b, labels = _head(v=300, n=16, d=64, seed=7)
    hb, Wb = h.astype(jnp.bfloat16), W.astype(jnp.bfloat16)
    f32 = jnp.float32

    @jax.jit  # one program for the values, gradients and references
    def run(hb, Wb):
        loss = linear_cross_entropy(hb, Wb, labels, chunk_size=128)
        # The reference sees the same bf16-rounded operands, multiplied exactly in float32.
        ref = cross_entropy(hb.astype(f32) @ Wb.astype(f32), labels)
        gW = jax.grad(
            lambda W: linear_cross_entropy(hb, W, labels, chunk_size=128).astype(f32).sum()
        )(Wb)
        gW_ref = jax.grad(lambda W: cross_entropy(hb.astype(f32) @ W, labels).sum())(Wb.astype(f32))
        return loss, ref, gW, gW_ref

    loss, ref, gW, gW_ref = run(hb, Wb)
    assert loss.dtype == jnp.bfloat16
    _close(loss, ref, rtol=1e-2, atol=1e-2)
    assert gW.dtype == jnp.bfloat16
    _close(gW, gW_ref, rtol=5e-2, atol=1e-2)


def test_linear_cross_entropy_never_forms_the_logits():
    n, d, v, chunk = 12, 4, 96, 16
    h, W, b, labels = _head(v=v, n=n, d=d, seed=8)
    f = lambda h, W, b: linear_cross_entropy(
        h, W, labels, bias=b, chunk_size=chunk, label_smoothing=0.1
    ).sum()
    text = str(jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1, 2)))(h, W, b))
    assert f"f32[{n},{chunk}]" in text  # the chunk's logits
    assert f"[{n},{v}]" not in text and f"[{v},{n}]" not in text


def test_linear_cross_entropy_temp_memory_is_under_a_twentieth_of_naive():
    n, d, v = 4096, 512, 65536  # compiled only, never run
    args = (
        jax.ShapeDtypeStruct((n, d), jnp.float32),
        jax.ShapeDtypeStruct((d, v), jnp.float32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )

    def temp(loss):
        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(*args).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    fused = temp(lambda h, W, y: linear_cross_entropy(h, W, y).sum())
    naive = temp(lambda h, W, y: cross_entropy(h @ W, y).sum())
    assert naive >= n * v * 4  # the naive one holds at least the float32 logits
    assert fused * 20 <= naive, (fused, naive)


def test_linear_cross_entropy_argument_errors():
    h, W, _b, labels = _head()
    with pytest.raises(ValueError, match="labels must lie"):
        linear_cross_entropy(h, W, labels.at[0].set(V))
    with pytest.raises(ValueError, match="scalar or have the rows' shape"):
        linear_cross_entropy(h, W, labels, t=jnp.ones(5))  # one t per row takes shape (6,)
    with pytest.raises(ValueError, match="shape"):
        linear_cross_entropy(h, W.T, labels)
    with pytest.raises(TypeError, match="integer"):
        linear_cross_entropy(h, W, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match="label_smoothing"):
        linear_cross_entropy(h, W, labels, label_smoothing=1.5)


# --------------------------------------------------------------------------------------------------
# Regression tests for issue 12 (defects 7, 8, 11, 13), named for the behaviour.
# --------------------------------------------------------------------------------------------------


def test_linear_cross_entropy_nan_row_at_t_zero_is_nan_like_cross_entropy():
    """Defect 7: at t = 0 a NaN row gave +inf where cross_entropy gives NaN."""
    h, W, b, labels = _head(seed=9)
    h = h.at[3, 1].set(jnp.nan)
    got = linear_cross_entropy(h, W, labels, bias=b, chunk_size=8, t=0.0)
    want = cross_entropy(h @ W + b, labels, t=0.0)
    assert np.isnan(got[3]) and np.isnan(want[3])
    np.testing.assert_array_equal(np.isinf(np.asarray(got)), np.isinf(np.asarray(want)))


def test_linear_cross_entropy_smoothing_with_huge_logits_is_exact():
    """Defect 8: the smoothing term summed unshifted logits, so four logits of 1e38 gave -inf
    (exact: log 4) and mixed signs NaN."""
    h = np.eye(4, dtype=np.float32)[:2]
    W = np.stack(
        [np.full(4, 1e38), np.array([1e38, -1e38, 1e38, -1e38]), np.zeros(4), np.zeros(4)]
    ).astype(np.float32)
    labels = np.array([0, 0], np.int32)
    got = linear_cross_entropy(h, W, labels, chunk_size=3, label_smoothing=0.5)
    # Row 0: uniform logits, loss log 4. Row 1: half the mass on two entries at 1e38, the
    # smoothing weight on the two at -1e38 costs 0.5 / 4 * 2 * 2e38 = 5e37 (float64 reference).
    np.testing.assert_allclose(
        got, [np.log(4), 0.5 * np.log(2) + 0.5 * (np.log(2) + 1e38)], rtol=1e-6
    )
    # h @ W in float64 (exact here: h selects rows of W), then cast, as the fused head sees it.
    logits = (h.astype(np.float64) @ W.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(got, cross_entropy(logits, labels, label_smoothing=0.5), rtol=1e-6)


def test_linear_cross_entropy_int64_labels_beyond_int32_raise():
    """Defect 11, for the fused head: a label of 2**32 + 1 must not wrap to class 1."""
    h, W, _b, labels = _head()
    bad = np.asarray(labels, np.int64).copy()
    bad[0] = 2**32 + 1
    with pytest.raises(ValueError, match="got 4294967297"):
        linear_cross_entropy(h, W, bad)


def test_linear_cross_entropy_is_reverse_mode_only():
    """Defect 13, documented: a custom_vjp, so forward mode raises (grad and jacrev work)."""
    h, W, _b, labels = _head()
    f = lambda h: linear_cross_entropy(h, W, labels, chunk_size=8)
    with pytest.raises(TypeError):
        jax.jvp(f, (h,), (h,))
    assert jax.jit(jax.jacrev(f))(h).shape == (6, 6, 5)


def test_linear_cross_entropy_float64_is_float64_accurate(x64):
    """Defect 13: float64 h and W gave float64 results that were only float32-accurate."""
    rng = np.random.default_rng(10)
    h, W = rng.normal(size=(4, 3)), 3 * rng.normal(size=(3, 11))
    labels = np.array([0, 4, 10, 7])

    @jax.jit
    def run(h, W):
        got = linear_cross_entropy(h, W, labels, chunk_size=4, label_smoothing=0.1)
        gW = jax.grad(lambda W: linear_cross_entropy(h, W, labels, chunk_size=4).sum())(W)
        return got, gW

    got, gW = run(jnp.asarray(h), jnp.asarray(W))
    assert got.dtype == jnp.float64
    logits = h @ W
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    q = 0.9 * np.eye(11)[labels] + 0.1 / 11
    np.testing.assert_allclose(got, -np.sum(q * logp, 1), rtol=1e-13)
    np.testing.assert_allclose(
        gW, h.T @ (np.exp(logp) - np.eye(11)[labels]), rtol=1e-12, atol=1e-14
    )
