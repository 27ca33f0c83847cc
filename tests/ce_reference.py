"""An independent float64 NumPy reference for the cross-entropy losses, edges included (SPEC 5, 6).

Written from the definitions, row by row, without any jaxsoft code: ``log p`` by the max shift in
float64, the limits for ``+inf`` entries and ``t = 0`` spelled out, and the gradient conventions of
SPEC 5.4 (a ``+inf`` loss and ``t = 0`` have zero gradients, a NaN row NaN ones, masked entries and
ignored or fully masked rows none).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

INF = np.inf
F32_MIN = float(np.finfo(np.float32).min)
EDGE_VALUES = [-INF, INF, np.nan, 1e30, -1e30, F32_MIN, 0.0]


def log_softargmax(x, t=1.0, mask=None):
    """float64 ``log p`` of one row over the entries ``mask`` keeps (``-inf`` elsewhere)."""
    with np.errstate(all="ignore"):
        return _log_softargmax(x, t, mask)


def _log_softargmax(x, t, mask):
    x = np.asarray(x, np.float64)
    keep = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    out = np.full(x.shape, -INF)
    xs = x[keep]
    if xs.size == 0:
        return out
    if np.isnan(xs).any():
        out[keep] = np.nan
        return out
    m = xs.max()
    if m == -INF:
        return out
    if m == INF or t == 0:
        at = xs == m
        v = np.where(at, -np.log(at.sum()), -INF)
    else:
        z = (xs - m) / t  # in float64 no finite float32 difference overflows
        # log(1 + s), s the mass of all but one maximum: log1p keeps a tiny s (SPEC 2.5).
        s = (
            np.sum(np.exp(z)) - 1.0
            if (z == 0).sum() > 1
            else np.sum(np.exp(np.delete(z, np.argmax(z))))
        )
        v = z - np.log1p(s)
    out[keep] = v
    return out


def cross_entropy(x, y, t=1.0, smoothing=0.0, mask=None, ignored=False):
    """``(loss, dloss/dx, dloss/dt)`` of one row; float64."""
    with np.errstate(all="ignore"):  # 0 * inf and inf - inf are resolved by the selects
        return _cross_entropy(x, y, t, smoothing, mask, ignored)


def _cross_entropy(x, y, t, smoothing, mask, ignored):
    x = np.asarray(x, np.float64)
    n = x.size
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    if ignored or not keep.any():
        return 0.0, np.zeros(n), 0.0
    logp = log_softargmax(x, t, keep)
    if np.isnan(logp).any():  # masked entries never get a gradient, not even on a NaN row
        return np.nan, np.where(keep, np.nan, 0.0), np.nan
    q = np.zeros(n)
    q[y] = 1 - smoothing
    q[keep] += smoothing / keep.sum()
    terms = np.where(q > 0, -q * logp, 0.0)
    loss = float(np.sum(terms))
    if loss == INF or t == 0:
        return loss, np.zeros(n), 0.0
    p = np.exp(logp)
    g = (p - q) / t
    # d/dt: (H(p) - CE) / t, H the entropy of p.
    h = -np.sum(np.where(p > 0, p * logp, 0.0))
    return loss, np.where(keep, g, 0.0), (h - loss) / t


def cross_entropy_rows(x, y, t=1.0, smoothing=0.0, mask=None, ignored=None):
    """Row-wise :func:`cross_entropy` over a ``[N, n]`` batch; ``t`` a scalar or one per row."""
    x = np.asarray(x, np.float64)
    t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:1])
    out = [
        cross_entropy(
            x[i],
            int(y[i]),
            float(t[i]),
            smoothing,
            None if mask is None else mask[i],
            False if ignored is None else bool(ignored[i]),
        )
        for i in range(x.shape[0])
    ]
    loss = np.array([o[0] for o in out])
    return loss, np.stack([o[1] for o in out]), np.array([o[2] for o in out])


def assert_close(got, want, rtol, atol=0.0, what=""):
    """``got`` (any float dtype) equals ``want`` within tolerance, with the same NaN and inf."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN pattern")
    inf = np.isinf(want)
    np.testing.assert_array_equal(got[inf], want[inf], err_msg=f"{what}: inf pattern")
    fin = np.isfinite(want)
    assert np.isfinite(got[fin]).all(), (what, got[fin])
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=atol, err_msg=what)


@st.composite
def ce_rows(draw, n=4, v=16, ts=(1.0, 0.7, 2.0, 0.0)):
    """Logits of mixed scale with edge values injected, labels (sometimes on an edge), t."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 3.0, 30.0]))
    x = (rng.normal(size=(n, v)) * scale).astype(np.float32)
    y = rng.integers(0, v, size=n).astype(np.int32)
    hits = draw(
        st.lists(
            st.tuples(st.integers(0, n - 1), st.integers(0, v - 1), st.sampled_from(EDGE_VALUES)),
            max_size=5,
        )
    )
    for r, c, val in hits:
        x[r, c] = val
    if draw(st.booleans()):
        x[0] = -np.inf  # an empty row
    if draw(st.booleans()):
        x[1, : v // 2] = 1e30  # huge ties across devices
    if draw(st.booleans()):
        y[2] = int(np.argmax(np.nan_to_num(x[2], nan=-np.inf)))
    # No label on the most negative finite values at t < 1: a loss beyond float32's range is +inf
    # there, whose zero gradient the float64 reference (finite) would not share.
    t = draw(st.sampled_from(ts))
    for r in range(n):
        if x[r, y[r]] == F32_MIN:
            x[r, y[r]] = 0.0
    return x, y, np.float32(t)


# --------------------------------------------------------------------------------------------------
# The language-model head options (SPEC 8.1-8.3): soft-cap, z-loss, the returned log-sum-exp.
# --------------------------------------------------------------------------------------------------


def softcap(x, cap):
    """``(c tanh(x / c), d/dx)`` in float64; ``-inf`` stays ``-inf`` with derivative 0."""
    x = np.asarray(x, np.float64)
    if cap is None:
        return x, np.ones_like(x)
    with np.errstate(all="ignore"):
        th = np.tanh(x / cap)
        return np.where(x == -INF, -INF, cap * th), np.where(np.isinf(x), 0.0, 1 - th**2)


def lse_row(x, t=1.0, mask=None):
    """``(lse, dlse/dx, dlse/dt)`` of one row over the entries ``mask`` keeps; float64."""
    x = np.asarray(x, np.float64)
    keep = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    logp = log_softargmax(x, t, keep)
    with np.errstate(all="ignore"):
        xs = x[keep]
        if xs.size == 0 or (not np.isnan(xs).any() and xs.max() == -INF):
            return -INF, np.zeros(x.shape), 0.0
        if np.isnan(xs).any():
            return np.nan, np.where(keep, np.nan, 0.0), np.nan
        m = xs.max()
        p = np.where(keep, np.exp(logp), 0.0)
        if m == INF or t == 0:
            # lse = m + t log k + o(t): the one-sided derivative in t is log k (the entropy).
            return m, p, float(np.log(np.sum(xs == m)))
        lse = m + t * np.log(np.sum(np.exp((xs - m) / t)))
        h = -np.sum(np.where(p > 0, p * logp, 0.0))
        return lse, p, h


def lm_terms(x, t, mask, dead, ce_loss, z_loss):
    """``(z-term, d/dx, d/dt)`` of one row: ``z_loss (lse / t)^2`` with the SPEC 8.2 edges."""
    x = np.asarray(x, np.float64)
    n = x.size
    if dead:
        return 0.0, np.zeros(n), 0.0
    lse, p, h = lse_row(x, t, mask)
    if np.isnan(lse) or np.isnan(ce_loss):
        return np.nan, np.zeros(n), 0.0
    if t == 0:
        keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
        k = np.sum((x == lse) & keep)
        return (z_loss * np.log(k) ** 2 if lse == 0 else INF), np.zeros(n), 0.0
    if not np.isfinite(lse) or ce_loss == INF:
        return INF, np.zeros(n), 0.0
    log_z = lse / t
    return z_loss * log_z**2, 2 * z_loss * log_z * p / t, 2 * z_loss * log_z * (h - log_z) / t


def lm_cross_entropy_rows(
    x, y=None, t=1.0, smoothing=0.0, mask=None, ignored=None, z_loss=0.0, cap=None, q=None
):
    """Per-row ``(loss, dloss/dx, dloss/dt, lse, dlse/dx, dlse/dt)`` of the capped, z-lossed CE;
    float64.

    Integer labels ``y`` or probability targets ``q`` (``[N, n]``, masked entries' weights
    dropped as SPEC 5.4 says).
    """
    x = np.asarray(x, np.float64)
    t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:1])
    out = []
    for i in range(x.shape[0]):
        xi, dcap = softcap(x[i], cap)
        mi = None if mask is None else np.asarray(mask[i], bool)
        ign = False if ignored is None else bool(ignored[i])
        ti = float(t[i])
        if q is None:
            loss, gx, gt = cross_entropy(xi, int(y[i]), ti, smoothing, mi, ign)
        else:
            loss, gx, gt = probs_cross_entropy(xi, q[i], ti, mi)
        dead = ign or (mi is not None and not mi.any())
        zt, zx, zdt = lm_terms(xi, ti, mi, dead, loss, z_loss) if z_loss else (0.0, 0.0, 0.0)
        lse, lx, lt = lse_row(xi, ti, mi)
        with np.errstate(all="ignore"):
            out.append((loss + zt, (gx + zx) * dcap, gt + zdt, lse, lx * dcap, lt))
    return tuple(np.array([o[j] for o in out]) for j in range(6))


def probs_cross_entropy(x, q, t=1.0, mask=None):
    """``(loss, dloss/dx, dloss/dt)`` of ``-sum q log p`` over one row; float64."""
    x = np.asarray(x, np.float64)
    n = x.size
    keep = np.ones(n, bool) if mask is None else np.asarray(mask, bool)
    if not keep.any():
        return 0.0, np.zeros(n), 0.0
    q = np.where(keep, np.asarray(q, np.float64), 0.0)
    logp = log_softargmax(x, t, keep)
    if np.isnan(logp).any():
        return np.nan, np.where(keep, np.nan, 0.0), np.nan
    with np.errstate(all="ignore"):
        loss = float(np.sum(np.where(q > 0, -q * logp, 0.0)))
        if loss == INF or t == 0:
            return loss, np.zeros(n), 0.0
        p = np.exp(logp)
        mass = q.sum()
        h = -np.sum(np.where(p > 0, p * logp, 0.0))
        return loss, np.where(keep, (mass * p - q) / t, 0.0), (mass * h - loss) / t
