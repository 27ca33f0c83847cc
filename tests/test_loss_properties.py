"""Property suites (hypothesis) for the losses, the chunked log-sum-exp and the fused linear head.

Each property draws logits of mixed scale with edge values injected (+-inf, NaN, 1e30, float32's
most negative value), labels (sometimes on an edge), a temperature (0 included), masks and ignored
rows, and compares values and gradients with the independent float64 NumPy reference of
tests/ce_reference.py. Shapes are fixed per property, so each compiles once per static option.
The "ci" profile runs a few dozen examples per property; "thorough" (conftest) runs ten times more.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxsoft
from tests import ce_reference as ref
from tests.ce_reference import ce_rows

EXAMPLES = max(15, settings().max_examples // 8)
N, V = 4, 16
WTS = np.linspace(0.25, 1.0, N)  # <= 1: a cotangent times -x = 3.4e38 stays finite


def _pullback(f):
    """Jitted ``args -> (f(*args), d(sum WTS * f)/d args)``."""

    def run(*args):
        out, vjp = jax.vjp(f, *args)
        return out, *vjp(
            jnp.asarray(
                np.broadcast_to(WTS.reshape(-1, *(1,) * (out.ndim - 1)), out.shape), out.dtype
            )
        )

    return jax.jit(run)


@functools.cache
def _ce(smoothing, masked):
    def f(x, t, y, where):
        return jaxsoft.cross_entropy(
            x, y, t=t, where=where if masked else None, label_smoothing=smoothing, ignore_index=-100
        )

    return _pullback(f)


@settings(max_examples=EXAMPLES)
@given(
    case=ce_rows(),
    smoothing=st.sampled_from([0.0, 0.3]),
    masked=st.booleans(),
    seed=st.integers(0, 2**16),
    ignore_row=st.sampled_from([None, 3]),
)
def test_cross_entropy_matches_float64_reference(case, smoothing, masked, seed, ignore_row):
    x, y, t = case
    rng = np.random.default_rng(seed)
    where = rng.random((N, V)) > 0.3 if masked else np.ones((N, V), bool)
    if masked:
        where[3] = False if seed % 4 == 0 else where[3]  # sometimes a fully masked row
    ignored = np.zeros(N, bool)
    y = y.copy()
    if ignore_row is not None:
        ignored[ignore_row] = True
        y[ignore_row] = -100
    loss, gx, gt, *_ = _ce(smoothing, masked)(x, t, y, where)
    want, g, dt = ref.cross_entropy_rows(
        x, np.where(ignored, 0, y), float(t), smoothing, mask=where, ignored=ignored
    )
    ref.assert_close(loss, want.astype(np.float32), 2e-5, what="loss")
    ref.assert_close(gx, WTS[:, None] * g, 2e-5, 2e-6, what="dx")
    ref.assert_close(gt, np.sum(WTS * dt), 1e-4, 1e-4, what="dt")


def _probs_reference(x, q, t, mask):
    """float64 ``(loss, dx, dq)`` of -sum q log p with masked entries (and their targets) left out."""
    loss, gx, gq = [], [], []
    for r in range(x.shape[0]):
        keep = mask[r]
        logp = ref.log_softargmax(x[r], t, keep)
        qr = np.where(keep, q[r], 0.0)
        if not keep.any():
            loss.append(0.0)
            gx.append(np.zeros(V))
            gq.append(np.zeros(V))
            continue
        if np.isnan(logp).any():
            loss.append(np.nan)
            gx.append(np.where(keep, np.nan, 0.0))
            gq.append(np.where(keep, np.nan, 0.0))
            continue
        with np.errstate(all="ignore"):
            val = float(np.sum(np.where(qr > 0, -qr * logp, 0.0)))
        loss.append(val)
        p = np.exp(logp)
        zero = val == np.inf or t == 0
        gx.append(np.zeros(V) if zero else np.where(keep, (qr.sum() * p - qr) / t, 0.0))
        gq.append(np.where(keep & (logp > -np.inf), -logp, 0.0))
    return np.array(loss), np.stack(gx), np.stack(gq)


@functools.cache
def _probs(masked):
    def f(x, q, t, where):
        return jaxsoft.cross_entropy_with_probs(x, q, t=t, where=where if masked else None)

    return _pullback(f)


@settings(max_examples=EXAMPLES)
@given(case=ce_rows(ts=(1.0, 2.0)), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_cross_entropy_with_probs_matches_float64_reference(case, masked, seed):
    # t >= 1: log p of float32's most negative logit at t < 1 is beyond float32's range, so
    # log_softargmax gives -inf there (a float32 limit, not tested against float64 here).
    x, _, t = case
    rng = np.random.default_rng(seed)
    q = rng.dirichlet(np.ones(V), size=N).astype(np.float32)
    q[rng.random((N, V)) < 0.3] = 0.0  # targets with zeros: 0 log 0 = 0
    if seed % 3 == 0:
        q[2] = 0.0  # an all-zero target row
    where = rng.random((N, V)) > 0.3 if masked else np.ones((N, V), bool)
    loss, gx, gq, _, _ = _probs(masked)(x, q, t, where)
    want, g, wq = _probs_reference(x, q.astype(np.float64), float(t), where)
    ref.assert_close(loss, want.astype(np.float32), 2e-5, 1e-6, what="loss")
    ref.assert_close(gx, WTS[:, None] * g, 2e-5, 2e-6, what="dx")
    ref.assert_close(gq, WTS[:, None] * wq, 2e-5, 2e-6, what="dq")


_SIGMOID = _pullback(jaxsoft.sigmoid_cross_entropy)


@settings(max_examples=EXAMPLES)
@given(case=ce_rows(), seed=st.integers(0, 2**16))
def test_sigmoid_cross_entropy_matches_float64_reference(case, seed):
    x, _, _ = case
    y = np.random.default_rng(seed).random((N, V)).astype(np.float32)
    y[:, ::3] = np.round(y[:, ::3])  # hard 0/1 labels, where x = +-inf may give 0
    loss, gx, gy = _SIGMOID(x, y)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    with np.errstate(all="ignore"):
        sp_neg = np.maximum(-xd, 0) + np.log1p(np.exp(-np.abs(xd)))  # softplus(-x)
        sp_pos = np.maximum(xd, 0) + np.log1p(np.exp(-np.abs(xd)))
        want = np.where(yd == 0, 0, yd * sp_neg) + np.where(yd == 1, 0, (1 - yd) * sp_pos)
        sig = 1 / (1 + np.exp(-xd))
    wx = np.where(want == np.inf, 0, sig - yd)
    wy = np.where(np.isinf(xd), 0, -xd)
    wx[np.isnan(xd)] = np.nan
    wy[np.isnan(xd)] = np.nan
    ref.assert_close(loss, want.astype(np.float32), 2e-6, 1e-30, what="loss")
    ref.assert_close(gx, WTS[:, None] * wx, 2e-6, 1e-7, what="dx")
    ref.assert_close(gy, WTS[:, None] * wy, 2e-6, 1e-7, what="dy")


@functools.cache
def _chunked(chunk):
    return _pullback(lambda x, t: jaxsoft.chunked_logsumexp(x, chunk_size=chunk, t=t))


def _lse_reference(r, t):
    """float64 ``(lse, p, d lse/dt)`` of one row."""
    r = np.asarray(r, np.float64)
    if np.isnan(r).any():
        return np.nan, np.full(r.shape, np.nan), np.nan
    m = r.max()
    p = np.exp(ref.log_softargmax(r, t))
    if m == -np.inf:
        return -np.inf, np.zeros(r.shape), 0.0
    if m == np.inf or t == 0:
        return m, p, np.log(np.sum(r == m))
    z = (r - m) / t
    lse = m + t * np.log(np.sum(np.exp(z)))
    with np.errstate(all="ignore"):
        entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0))
    return lse, p, entropy


@settings(max_examples=EXAMPLES)
@given(case=ce_rows(v=19, ts=(1.0, 0.7, 2.0)), chunk=st.sampled_from([4, 19]))
def test_chunked_logsumexp_matches_float64_reference(case, chunk):
    x, _, t = case
    lse, gx, gt = _chunked(chunk)(x, t)
    rows = [_lse_reference(r, float(t)) for r in x]
    want = np.array([r[0] for r in rows])
    ref.assert_close(lse, want.astype(np.float32), 2e-6, 1e-6, what="lse")
    ref.assert_close(gx, WTS[:, None] * np.stack([r[1] for r in rows]), 2e-5, 1e-6, what="dx")
    # d lse / dt is the entropy: log k on a row with k entries at +inf, 0 on an empty row.
    dt = np.array([r[2] for r in rows])
    ref.assert_close(gt, np.sum(WTS * dt), 1e-4, 1e-4, what="dt")


@functools.cache
def _linear(smoothing):
    def f(h, W, b, t, y):
        return jaxsoft.linear_cross_entropy(
            h, W, y, bias=b, t=t, chunk_size=5, label_smoothing=smoothing, ignore_index=-100
        )

    return _pullback(f)


@settings(max_examples=EXAMPLES)
@given(case=ce_rows(), smoothing=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**16))
def test_linear_cross_entropy_matches_float64_reference(case, smoothing, seed):
    x, y, t = case
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(N, 3)).astype(np.float32)
    W = rng.normal(size=(3, V)).astype(np.float32)
    b = x[3].copy()  # mixed-scale, edge-injected values as the bias
    b[np.isnan(b)] = 0.0
    # Any label may sit on a bias entry: none at float32's most negative value, where the loss at
    # t < 1 leaves float32's range (+inf, zero gradient, unlike the float64 reference).
    b[b == ref.F32_MIN] = -1e38
    y = y.copy()
    ignored = np.zeros(N, bool)
    if seed % 2:
        ignored[1], y[1] = True, -100
        h[1, 0] = np.nan  # an ignored row's NaN stays out of everything
    loss, gh, gW, gb, gt, _ = _linear(smoothing)(h, W, b, t, y)
    logits = h.astype(np.float64) @ W.astype(np.float64) + b
    want, gz, dt = ref.cross_entropy_rows(
        logits, np.where(ignored, 0, y), float(t), smoothing, ignored=ignored
    )
    ref.assert_close(loss, want.astype(np.float32), 1e-4, 1e-5, what="loss")
    gz = WTS[:, None] * gz
    ref.assert_close(gh, gz @ W.T.astype(np.float64), 1e-4, 1e-4, what="dh")
    if not np.isnan(gz).any():  # a NaN row makes the shared dW, db and dt NaN
        hz = np.where(ignored[:, None], 0, h).astype(np.float64)
        ref.assert_close(gW, hz.T @ gz, 1e-4, 1e-4, what="dW")
        ref.assert_close(gb, gz.sum(0), 1e-4, 1e-4, what="db")
        ref.assert_close(gt, np.sum(WTS * dt), 1e-3, 1e-3, what="dt")
