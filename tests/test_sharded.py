"""Vocabulary-parallel log-sum-exp and cross-entropies on 8 CPU devices, in-process.

tests/conftest.py gives jax 8 CPU devices. Every sharded function runs under a 1-D mesh ("v": the
vocabulary over 8 devices) and a 2-D one ("d" x "v" = 2 x 4: rows over "d", vocabulary over "v",
the layout of real training), with ``check_vma`` True and False, and its values and gradients are
checked against the float64 reference of tests/ce_reference.py (hypothesis, edge rows included)
and against the unsharded functions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxsoft
from jaxsoft.sharded import sharded_cross_entropy, sharded_linear_cross_entropy, sharded_logsumexp
from tests import ce_reference as ref
from tests.ce_reference import ce_rows

EXAMPLES = max(12, settings().max_examples // 10)
N, V, D = 4, 16, 3
WTS = np.linspace(0.5, 1.5, N)  # a weighted sum: each row's gradient is checked, not their total


def _mesh(kind):
    devices = np.array(jax.devices())
    assert devices.size == 8
    if kind == "1d":
        return Mesh(devices, ("v",))
    return Mesh(devices.reshape(2, 4), ("d", "v"))


def _specs(kind):
    """(rows, rows x vocabulary, vocabulary columns of W, vocabulary vector) partition specs."""
    if kind == "1d":
        return P(), P(None, "v"), P(None, "v"), P("v")
    return P("d"), P("d", "v"), P(None, "v"), P("v")


LAYOUTS = [(k, c) for k in ("1d", "2d") for c in (True, False)]
LAYOUT_IDS = [f"{k}-check_vma={c}" for k, c in LAYOUTS]
# Label smoothing (a code path of its own: the shifted mean crosses devices too) is static, so
# each property runs one value per layout, the two values alternating over the four layouts.
SMOOTHING = {layout: s for layout, s in zip(LAYOUTS, (0.0, 0.25, 0.25, 0.0))}


@functools.cache
def _ce_program(kind, check_vma, smoothing, ignore):
    """Jitted ``(x, y, t) -> (loss, d(sum w loss)/dx, .../dt)`` of sharded_cross_entropy."""
    rows, xs, _, _ = _specs(kind)
    f = jax.shard_map(
        lambda x, y, t: sharded_cross_entropy(
            x, y, "v", t=t, label_smoothing=smoothing, ignore_index=ignore
        ),
        mesh=_mesh(kind),
        in_specs=(xs, rows, P()),
        out_specs=rows,
        check_vma=check_vma,
    )

    def run(x, y, t):
        loss, vjp = jax.vjp(lambda x, t: f(x, y, t), x, t)
        return loss, *vjp(jnp.asarray(WTS, loss.dtype))

    return jax.jit(run)


@functools.cache
def _lce_program(kind, check_vma, smoothing, ignore, chunk):
    rows, _, ws, bs = _specs(kind)
    f = jax.shard_map(
        lambda h, W, b, y, t: sharded_linear_cross_entropy(
            h,
            W,
            y,
            "v",
            bias_local=b,
            t=t,
            chunk_size=chunk,
            label_smoothing=smoothing,
            ignore_index=ignore,
        ),
        mesh=_mesh(kind),
        in_specs=(rows, ws, bs, rows, P()),
        out_specs=rows,
        check_vma=check_vma,
    )

    def run(h, W, b, y, t):
        loss, vjp = jax.vjp(lambda h, W, b, t: f(h, W, b, y, t), h, W, b, t)
        return loss, *vjp(jnp.asarray(WTS, loss.dtype))

    return jax.jit(run)


def _check_ce(loss, gx, gt, x, y, t, smoothing, ignored, what, rtol=2e-5, atol=2e-5):
    want, gwant, dtwant = ref.cross_entropy_rows(x, y, t, smoothing, ignored=ignored)
    ref.assert_close(loss, want.astype(np.float32), rtol, what=f"{what} loss")
    ref.assert_close(gx, WTS[:, None] * gwant, rtol, atol, what=f"{what} dx")
    nan_rows = np.isnan(dtwant)
    dt = np.nan if nan_rows.any() else float(np.sum(WTS * dtwant))
    ref.assert_close(gt, dt, 1e-4, 1e-4, what=f"{what} dt")


@pytest.mark.parametrize("kind, check_vma", LAYOUTS, ids=LAYOUT_IDS)
@settings(max_examples=EXAMPLES)
@given(case=ce_rows(), ignore_some=st.booleans())
def test_sharded_cross_entropy_matches_float64_reference(kind, check_vma, case, ignore_some):
    smoothing = SMOOTHING[kind, check_vma]
    x, y, t = case
    ignored = np.zeros(N, bool)
    if ignore_some:
        ignored[3] = True
        y = y.copy()
        y[3] = -100
    f = _ce_program(kind, check_vma, smoothing, -100)
    loss, gx, gt = f(x, y, t)
    _check_ce(
        loss,
        gx,
        gt,
        x,
        np.where(ignored, 0, y),
        float(t),
        smoothing,
        ignored,
        f"{kind} vma={check_vma}",
    )


@pytest.mark.parametrize("kind, check_vma", LAYOUTS, ids=LAYOUT_IDS)
@settings(max_examples=EXAMPLES)
@given(case=ce_rows(), seed=st.integers(0, 2**16))
def test_sharded_linear_cross_entropy_matches_float64_reference(kind, check_vma, case, seed):
    # The logits are h @ W + b: edge values come in through the bias (a column at -inf, huge
    # offsets) and the hidden states (a NaN row). Smoothing alternates against the CE property.
    smoothing = 0.25 - SMOOTHING[kind, check_vma]
    x, y, t = case
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(N, D)).astype(np.float32)
    W = rng.normal(size=(D, V)).astype(np.float32)
    b = x[3].copy()  # one row of mixed-scale, edge-injected values as the bias
    b[np.isnan(b)] = 0.0
    # Any label may sit on a bias entry: none at float32's most negative value, where the loss at
    # t < 1 leaves float32's range (+inf, zero gradient, unlike the float64 reference).
    b[b == ref.F32_MIN] = -1e38
    if seed % 3 == 0:
        h[1, 0] = np.nan
    f = _lce_program(kind, check_vma, smoothing, None, 3)  # 2 or 4 local columns, chunks of 3
    loss, gh, gW, gb, gt = f(h, W, b, y, t)
    logits = h.astype(np.float64) @ W.astype(np.float64) + b
    want, gz, dtw = ref.cross_entropy_rows(logits, y, float(t), smoothing)
    what = f"{kind} vma={check_vma}"
    ref.assert_close(loss, want.astype(np.float32), 1e-4, 1e-5, what=f"{what} loss")
    gz = WTS[:, None] * gz
    # Rows with a NaN loss bring NaN into dW and db (they are shared); dh stays per row.
    ref.assert_close(gh, gz @ W.T, 1e-4, 1e-4, what=f"{what} dh")
    if not np.isnan(gz).any():
        ref.assert_close(gW, h.T @ gz, 1e-4, 1e-4, what=f"{what} dW")
        ref.assert_close(gb, gz.sum(0), 1e-4, 1e-4, what=f"{what} db")
        ref.assert_close(gt, float(np.sum(WTS * dtw)), 1e-3, 1e-3, what=f"{what} dt")


@functools.cache
def _lse_program(check_vma):
    """Jitted ``(x, t) -> (lse, d(sum lse)/dx, d(sum lse)/dt)``, NaN rows left out of the sum."""
    f = jax.shard_map(
        lambda x, t: sharded_logsumexp(x, "v", t=t),
        mesh=_mesh("1d"),
        in_specs=(P(None, "v"), P()),
        out_specs=P(),
        check_vma=check_vma,
    )

    def run(x, t):
        val = f(x, t)
        total = lambda x, t: jnp.sum(jnp.where(jnp.isnan(val), 0, f(x, t)))
        return val, *jax.grad(total, argnums=(0, 1))(x, t)

    return jax.jit(run)


@jax.jit
def _lse_reference(x, t):
    """The unsharded ``(lse, d(sum lse)/dx, d(sum lse)/dt)``, NaN rows left out of the sum."""
    lse = jaxsoft.logsumexp(x, axis=-1, t=t)
    total = lambda x, t: jnp.sum(jnp.where(jnp.isnan(lse), 0, jaxsoft.logsumexp(x, axis=-1, t=t)))
    return lse, *jax.grad(total, argnums=(0, 1))(x, t)


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("t", [1.0, 0.7, 0.0])
def test_sharded_logsumexp_matches_logsumexp_values_and_grads(check_vma, t):
    x = 3 * np.random.default_rng(0).normal(size=(6, 64)).astype(np.float32)
    x[1, 3] = -np.inf
    x[2] = -np.inf
    x[3, 40] = np.inf
    x[4, 9] = np.nan
    x[5, :32] = 1e30
    val, gx, gt = _lse_program(check_vma)(x, np.float32(t))

    want, gwant, gtwant = _lse_reference(x, np.float32(t))
    ref.assert_close(val, want, 1e-6, what="lse")
    ref.assert_close(gx, gwant, 1e-5, 1e-6, what="lse grad")
    ref.assert_close(gt, gtwant, 1e-5, 1e-5, what="lse dt")


# --------------------------------------------------------------------------------------------------
# Regression tests for issue 12 (defects 1 and 2), named for the behaviour.
# --------------------------------------------------------------------------------------------------


def _linear_ce_reference(h, W, b, y, t, smoothing):
    """The float64 ``(loss, d(sum w loss)/d(h, W, b, t))`` of ``cross_entropy(h @ W + b, y)``,
    from tests/ce_reference.py (independent of jaxsoft, and no compile)."""
    h64, W64 = h.astype(np.float64), W.astype(np.float64)
    loss, gz, dt = ref.cross_entropy_rows(h64 @ W64 + b, y, float(t), smoothing)
    gz = WTS[:, None] * gz
    return loss, (gz @ W64.T, h64.T @ gz, gz.sum(0), float(np.sum(WTS * dt)))


@pytest.mark.parametrize("check_vma", [True, False])
def test_sharded_gradients_are_not_divided_by_the_device_count_without_check_vma(check_vma):
    """Defect 1: under check_vma=False the logits' (and W's, bias's) gradient was 1/8 of the
    true one. Compared with the float64 reference on the same inputs.

    The sharded programs are those of the 1-D properties above, compiled once for both tests:
    their smoothing, and for the cross-entropy ignore_index -100 (no label here is ignored)."""
    smoothing = SMOOTHING["1d", check_vma]
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, V)).astype(np.float32)
    y = rng.integers(0, V, N).astype(np.int32)
    _, gx, _ = _ce_program("1d", check_vma, smoothing, -100)(x, y, np.float32(0.8))
    want = WTS[:, None] * ref.cross_entropy_rows(x, y, float(np.float32(0.8)), smoothing)[1]
    np.testing.assert_allclose(gx, want, rtol=1e-5, atol=1e-7)
    h = rng.normal(size=(N, D)).astype(np.float32)
    W = rng.normal(size=(D, V)).astype(np.float32)
    b = rng.normal(size=V).astype(np.float32)
    lce_smoothing = 0.25 - smoothing  # as in the linear cross-entropy property
    _, gh, gW, gb, _ = _lce_program("1d", check_vma, lce_smoothing, None, 3)(
        h, W, b, y, np.float32(0.8)
    )
    _, (wh, wW, wb, _) = _linear_ce_reference(h, W, b, y, np.float32(0.8), lce_smoothing)
    for g, w in ((gh, wh), (gW, wW), (gb, wb)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("check_vma", [True, False])
@pytest.mark.parametrize("chunk", [3, 8])  # several chunks per device, and one
def test_sharded_linear_cross_entropy_runs_on_a_data_by_vocab_mesh(check_vma, chunk):
    """Defect 2: h and labels sharded over "d", W over "v" raised (scan carry / dW types).

    With chunks of 3 the smoothing is that of the 2-D linear cross-entropy property (0 or 0.25),
    so that both tests share one compiled program; with chunks of 8 it is 0.1."""
    smoothing = 0.1 if chunk == 8 else 0.25 - SMOOTHING["2d", check_vma]
    rng = np.random.default_rng(2)
    h = rng.normal(size=(N, D)).astype(np.float32)
    W = rng.normal(size=(D, V)).astype(np.float32)
    b = rng.normal(size=V).astype(np.float32)
    y = rng.integers(0, V, N).astype(np.int32)
    loss, gh, gW, gb, gt = _lce_program("2d", check_vma, smoothing, None, chunk)(
        h, W, b, y, np.float32(1.3)
    )
    want_loss, want = _linear_ce_reference(h, W, b, y, np.float32(1.3), smoothing)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    for g, w in zip((gh, gW, gb, gt), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_sharded_losses_at_t_zero_keep_nan_rows_nan():
    """Defect 7: at t = 0 a NaN row gave +inf (cross_entropy gives NaN)."""
    x = np.zeros((N, V), np.float32)
    x[1, 5] = np.nan
    y = np.zeros(N, np.int32)
    y[1] = 6
    # The program of the 1-D check_vma property (smoothing 0, ignore_index -100; none ignored).
    loss, _, _ = _ce_program("1d", True, SMOOTHING["1d", True], -100)(x, y, np.float32(0.0))
    assert np.isnan(loss[1]) and np.isnan(jaxsoft.cross_entropy(x, y, t=0.0)[1])
    assert np.all(np.isfinite(np.delete(np.asarray(loss), 1)))


def test_sharded_smoothing_with_huge_logits_does_not_overflow():
    """Defect 8: the smoothing term summed unshifted logits; 16 logits of 1e38 gave -inf."""
    x = np.full((N, V), 1e38, np.float32)
    x[2, ::2] = -1e38  # mixed signs gave NaN
    y = np.zeros(N, np.int32)
    loss, gx, _ = _ce_program("2d", True, 0.25, None)(x, y, np.float32(1.0))
    want, gwant, _ = ref.cross_entropy_rows(x, y, 1.0, 0.25)
    ref.assert_close(loss, want.astype(np.float32), 1e-5, what="loss")
    ref.assert_close(gx, WTS[:, None] * gwant, 1e-5, 1e-6, what="dx")


def test_plain_jit_of_cross_entropy_on_vocab_sharded_logits_does_not_gather():
    """What XLA:CPU's SPMD partitioner does with NamedSharding P(None, "v") logits: local
    reductions plus all-reduces of per-row values; no all-gather, no full-size buffer."""
    mesh = _mesh("1d")
    n, v = 16, 1024
    xs = jax.device_put(jnp.zeros((n, v)), NamedSharding(mesh, P(None, "v")))
    ys = jax.device_put(jnp.zeros((n,), jnp.int32), NamedSharding(mesh, P()))
    for fn in (
        lambda x, y: jaxsoft.cross_entropy(x, y),
        jax.value_and_grad(lambda x, y: jaxsoft.cross_entropy(x, y).sum()),
    ):
        text = jax.jit(fn).lower(xs, ys).compile().as_text()
        lines = text.splitlines()
        assert sum("all-gather" in line and "=" in line for line in lines) == 0
        assert sum("all-reduce(" in line or "all-reduce-start(" in line for line in lines) >= 1
        assert f"f32[{n},{v}]" not in text and f"f32[{n},{v // 8}]" in text


def test_sharded_losses_are_reverse_mode_only():
    """Defect 13 (documented): the sharded and fused losses are custom_vjp; jvp raises."""
    x = np.zeros((N, V), np.float32)
    y = np.zeros(N, np.int32)
    f = jax.shard_map(
        lambda x: sharded_cross_entropy(x, y, "v"),
        mesh=_mesh("1d"),
        in_specs=P(None, "v"),
        out_specs=P(),
    )
    with pytest.raises(TypeError):
        jax.jit(lambda x: jax.jvp(f, (x,), (x,)))(x)
