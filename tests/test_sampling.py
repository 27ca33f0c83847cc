"""jaxsoft.sample / sampling_mask / sharded_sample against SPEC section 9.

References are independent: the kept set from a sort-based float64 NumPy implementation of SPEC 9.1,
the sampled distribution from ``jaxsoft.softargmax`` over that set (chi-square goodness of fit over
many fixed keys), log-probabilities in float64 NumPy.
"""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from scipy import stats

import jaxsoft
from jaxsoft import sampling
from jaxsoft.sampling import sample, sampling_mask, sharded_sample

# ------------------------------------------------------------------------------------------------
# The sort-based reference of SPEC 9.1, float64, one row at a time.
# ------------------------------------------------------------------------------------------------


def _ref_probs(xr, s0, t):
    """softargmax_t over s0 (float64); the t = 0 / +inf limit splits the mass over the maxima."""
    m = xr[s0].max()
    p = np.zeros_like(xr)
    if t == 0 or m == np.inf:
        p[s0 & (xr == m)] = 1.0
    else:
        p[s0] = np.exp((xr[s0] - m) / t)
    return p / p.sum()


def ref_mask_row(xr, t, top_k, top_p, min_p, w):
    xr = np.asarray(xr, np.float64)
    if np.isnan(xr[w]).any():
        return np.zeros(xr.shape, bool)
    s0 = w & (xr > -np.inf)
    if not s0.any():
        return s0
    keep = s0.copy()
    if top_k is not None and 0 < top_k < keep.sum():
        kth = np.sort(xr[keep])[::-1][top_k - 1]
        keep &= xr >= kth
    if top_p is not None and top_p < 1:
        p = _ref_probs(xr, keep, t)
        order = np.argsort(-xr, kind="stable")
        order = order[keep[order]]
        c = np.cumsum(p[order])
        j = int(np.argmax(c >= top_p)) if top_p > 0 else 0
        keep &= xr >= xr[order[j]]
    if min_p is not None and min_p > 0:
        p = _ref_probs(xr, keep, t)
        keep &= p >= min_p * p.max()
    return keep


def ref_mask(x, t, top_k, top_p, min_p, w):
    rows = x.shape[0]

    def at(v, r):
        return None if v is None else np.broadcast_to(v, (rows,))[r].item()

    return np.stack(
        [
            ref_mask_row(x[r], at(t, r), at(top_k, r), at(top_p, r), at(min_p, r), w[r])
            for r in range(rows)
        ]
    )


def _midpoint_top_p(xr, keep, t, rng, in_tie: bool):
    """A top_p halfway between two consecutive cumulative masses (a robust, exact cut-off)."""
    p = _ref_probs(np.asarray(xr, np.float64), keep, t)
    order = np.argsort(-xr, kind="stable")
    order = order[keep[order]]
    c = np.cumsum(p[order])
    vals = xr[order]
    js = [
        j for j in range(1, len(c)) if (vals[j] == vals[j - 1]) == in_tie and c[j] - c[j - 1] > 1e-4
    ]
    if not js:
        return 1.0
    j = rng.choice(js)
    return float((c[j - 1] + c[j]) / 2)


# ------------------------------------------------------------------------------------------------
# One batch of rows covering every filter alone and combined, per-row parameters, ties at every
# cut-off, -inf and masked entries. Filters are "off" with top_k=0, top_p=1, min_p=0.
# ------------------------------------------------------------------------------------------------

ROWS, N = 16, 24


def _case(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    # Small integer grid / 2: many exact ties, probabilities spread over a few orders of magnitude.
    x = (rng.integers(-8, 9, (ROWS, N)) / 2.0).astype(np.float32)
    w = np.ones((ROWS, N), bool)
    t = np.array([0.5, 1, 2, 1, 1, 1, 0.5, 2, 1, 1, 1, 0.5, 2, 1, 1, 1], np.float32)
    k = np.zeros(ROWS, np.int32)
    tp = np.ones(ROWS, np.float32)
    mp = np.zeros(ROWS, np.float32)
    # rows 0-2: temperature only (row 2 with two +inf logits: uniform over them).
    # 3: top_k. 4: top_p. 5: min_p. 6-8: all three.
    # 9: top_k cut inside a tie. 10: top_p cut inside a tie. 11: -inf entries + where + top_p.
    # 12: min_p at a tie. 13: top_k larger than the row. 14: top_p=0 (maxima). 15: everything.
    x[11, :5] = -np.inf
    w[11, 5:9] = False
    x[2, [4, 9]] = np.inf
    w[15, ::3] = False
    x[9] = np.sort(x[9])[::-1]
    x[9, 2:6] = x[9, 2]  # the 3rd-6th largest tied
    k[[3, 6, 7, 8, 9, 13, 15]] = [5, 8, 12, 6, 4, 40, 10]
    mp[[5, 6, 7, 8, 12, 15]] = [0.05, 0.01, 0.1, 0.02, 0.0, 0.03]
    tp[14] = 0.0
    xd = x.astype(dtype).astype(np.float32)  # the values the sampler sees (bf16 rounds them)
    for r, in_tie in [(4, False), (6, False), (7, True), (8, False), (10, True), (11, False)]:
        keep = w[r] & (xd[r] > -np.inf)
        if k[r] > 0:
            keep &= ref_mask_row(xd[r], t[r], int(k[r]), None, None, w[r])
        tp[r] = _midpoint_top_p(xd[r], keep, float(t[r]), rng, in_tie)
    tp[15] = _midpoint_top_p(
        xd[15], ref_mask_row(xd[15], t[15], 10, None, None, w[15]), 1.0, rng, False
    )
    # min_p exactly at a tied probability ratio (the tied entries are kept): e = exp(-1 / 2).
    r12 = np.unique(xd[12])[::-1]
    mp[12] = np.float32(np.exp((r12[2] - r12[0]) / t[12]) * (1 - 1e-6))
    return x.astype(dtype), t, k, tp, mp, w


def _opts(t, k, tp, mp, w):
    return dict(t=t, top_k=k, top_p=tp, min_p=mp, where=w)


# ------------------------------------------------------------------------------------------------
# SPEC 9.1: the kept set.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_mask_matches_sort_based_reference(seed):
    x, t, k, tp, mp, w = _case(seed)
    got = np.asarray(sampling_mask(x, **_opts(t, k, tp, mp, w)))
    np.testing.assert_array_equal(got, ref_mask(x, t, k, tp, mp, w))


def test_sampling_mask_matches_reference_on_wide_rows():
    rng = np.random.default_rng(4)
    x = (3 * rng.normal(size=(4, 4096))).astype(np.float32)
    x[1] = x[1].astype(jnp.bfloat16).astype(np.float32)  # bf16-born logits: ties everywhere
    w = np.ones(x.shape, bool)
    w[3, ::2] = False
    t = np.array([1.0, 0.8, 0.5, 1.5], np.float32)
    k = np.array([100, 7, 0, 1000], np.int32)
    mp = np.array([0.0, 0.01, 0.001, 0.0], np.float32)
    tp = np.array(
        [
            _midpoint_top_p(
                x[r], ref_mask_row(x[r], t[r], int(k[r]), None, None, w[r]), t[r], rng, False
            )
            for r in range(4)
        ],
        np.float32,
    )
    assert (tp < 1).all()
    got = np.asarray(sampling_mask(x, **_opts(t, k, tp, mp, w)))
    want = ref_mask(x, t, k, tp, mp, w)
    np.testing.assert_array_equal(got, want)
    assert want.sum(1).min() > 1 and want.sum(1).max() < 1000


def test_sampling_mask_ties_are_kept_at_every_cut_off():
    x = np.array([4.0, 3.0, 3.0, 3.0, 1.0, 0.0], np.float32)
    # top_k=2: the 2nd largest is 3.0, tied three times: all kept.
    assert sampling_mask(x, top_k=2).tolist() == [True] * 4 + [False] * 2
    # top_p cut lands inside the tie group: the whole group is kept.
    p = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    assert sampling_mask(x, top_p=float(p[0] + p[1] / 2)).tolist() == [True] * 4 + [False] * 2
    # min_p exactly at the tied ratio keeps the group (>=).
    assert (
        sampling_mask(x, min_p=float(np.float32(np.exp(-1.0)))).tolist() == [True] * 4 + [False] * 2
    )


def test_sampling_mask_edges():
    x = np.array(
        [
            [0.0, -np.inf, 1.0, 1.0],
            [-np.inf] * 4,
            [0.0, np.nan, 1.0, 2.0],
            [np.inf, 0.0, np.inf, 5.0],
            [np.nan, 0.0, 1.0, 2.0],
        ],
        np.float32,
    )
    w = np.ones(x.shape, bool)
    w[4, 0] = False  # a masked NaN is ignored
    got = np.asarray(sampling_mask(x, top_k=3, top_p=0.95, where=w))
    np.testing.assert_array_equal(got, ref_mask(x, 1.0, 3, 0.95, None, w))
    assert not got[1].any() and not got[2].any()
    assert got[3].tolist() == [True, False, True, False]  # +inf: only those
    # The plain path (no filter): every unmasked finite entry.
    plain = np.asarray(sampling_mask(x, where=w))
    np.testing.assert_array_equal(plain, ref_mask(x, 1.0, None, None, None, w))
    # t = 0: the filters act on the hard argmax (the maxima, ties whole).
    hard = np.asarray(sampling_mask(x, t=0.0, top_k=3, top_p=0.5, min_p=0.1, where=w))
    np.testing.assert_array_equal(hard, ref_mask(x, 0.0, 3, 0.5, 0.1, w))
    assert hard[0].tolist() == [False, False, True, True]


def test_sampling_mask_float64(x64):
    rng = np.random.default_rng(5)
    x = rng.integers(-6, 7, (6, 20)) / 3.0  # ties in float64 that float32 would not separate
    x[0, 3] = x[0, 2] + 1e-12  # distinct only in float64
    w = np.ones(x.shape, bool)
    got = np.asarray(sampling_mask(jnp.asarray(x), t=0.7, top_k=4, min_p=0.01))
    assert got.dtype == bool
    np.testing.assert_array_equal(got, ref_mask(x, 0.7, 4, None, 0.01, w))


# ------------------------------------------------------------------------------------------------
# SPEC 9.1/9.2: the sampled distribution (chi-square goodness of fit over fixed keys).
# ------------------------------------------------------------------------------------------------

DRAWS = 20000


@partial(jax.jit, static_argnames=("filters",))
def _draw_many(keys, x, t, k, tp, mp, w, filters=True):
    opts = dict(t=t, where=w)
    if filters:
        opts.update(top_k=k, top_p=tp, min_p=mp)
    return jax.vmap(lambda key: sample(key, x, **opts))(keys)


def _counts(idx, n):
    idx = np.asarray(idx)
    return np.stack([np.bincount(idx[:, r], minlength=n) for r in range(idx.shape[1])])


def _chi2_pvalue(observed, expected_p):
    """Goodness of fit; bins expected below 5 draws are pooled. Draws where p = 0 fail at once."""
    n = observed.sum()
    expected = expected_p * n
    assert observed[expected_p == 0].sum() == 0, "drew an entry outside the kept set"
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    if len(obs) < 2:
        return 1.0
    exp = exp * obs.sum() / exp.sum()
    return stats.chisquare(obs, exp).pvalue


def _expected(x, t, k, tp, mp, w, filters=True):
    """softargmax over sampling_mask, the mask itself checked against the sort-based reference."""
    opts = dict(top_k=k, top_p=tp, min_p=mp) if filters else {}
    mask = sampling_mask(x, t=t, where=w, **opts)
    xf = np.asarray(jnp.asarray(x).astype(jnp.float32))  # the values the sampler sees
    ref = ref_mask(xf, t, *((k, tp, mp) if filters else (None, None, None)), w)
    np.testing.assert_array_equal(np.asarray(mask), ref)
    return np.asarray(jaxsoft.softargmax(xf, t=jnp.asarray(t)[:, None], where=mask), np.float64)


KEYS = jax.random.split(jax.random.key(2024), DRAWS)


@functools.cache
def _case_counts(seed, dtype, filters):
    """Counts of the DRAWS draws per row of _case(seed, dtype), shared by the tests that need them
    (the draws are a pure function of these arguments; each set is drawn once per process)."""
    x, t, k, tp, mp, w = _case(seed, dtype)
    idx = _draw_many(KEYS, jnp.asarray(x), t, k, tp, mp, w, filters=filters)
    counts = _counts(idx, N)
    counts.flags.writeable = False
    return counts


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_sample_fits_filtered_softargmax(dtype):
    x, t, k, tp, mp, w = _case(0, dtype)
    counts = _case_counts(0, dtype, True)
    p = _expected(x, t, k, tp, mp, w)
    pvals = [_chi2_pvalue(counts[r], p[r]) for r in range(ROWS)]
    assert min(pvals) > 1e-4, pvals
    # The filters bite (the check is not vacuous): rows 3-15 keep fewer entries than the row has,
    # except row 13 whose top_k exceeds the row length.
    assert np.delete((p > 0).sum(1), 13)[3:].max() < N and (p[13] > 0).sum() == N


def test_sample_fits_softargmax_without_filters():
    x, t, k, tp, mp, w = _case(1)
    counts = _case_counts(1, np.float32, False)
    p = _expected(x, t, k, tp, mp, w, filters=False)
    pvals = [_chi2_pvalue(counts[r], p[r]) for r in range(ROWS)]
    assert min(pvals) > 1e-4, pvals


def test_chi_square_check_rejects_a_wrong_distribution():
    x, t, k, tp, mp, w = _case(0)
    counts = _case_counts(0, np.float32, True)
    p = _expected(x, t, k, tp, mp, w)
    # Unfiltered draws against the filtered distribution: a draw outside the kept set is caught.
    plain = _case_counts(0, np.float32, False)
    with pytest.raises(AssertionError, match="outside the kept set"):
        _chi2_pvalue(plain[3], p[3])
    # A wrong temperature (row 1, t = 1 against t = 1.25) and a 10% reweighting are rejected.
    p_hot = np.asarray(jaxsoft.softargmax(jnp.asarray(x[1]), t=1.25), np.float64)
    assert _chi2_pvalue(counts[1], p_hot) < 1e-6
    q = p[0].copy()
    q[np.argmax(q)] *= 1.1
    assert _chi2_pvalue(counts[0], q / q.sum()) < 1e-6


# ------------------------------------------------------------------------------------------------
# SPEC 9.2: t = 0, traced parameters, no recompilation.
# ------------------------------------------------------------------------------------------------


def test_t0_is_the_lowest_unmasked_argmax_whatever_the_key_and_filters():
    x = np.array(
        [
            [1.0, 3.0, 0.0, 3.0],
            [5.0, 2.0, 2.0, -1.0],
            [np.inf, 0.0, np.inf, 1.0],
            [7.0, 7.0, 7.0, 7.0],
        ],
        np.float32,
    )
    w = np.ones(x.shape, bool)
    w[1, 0] = False  # the masked maximum does not count: ties 1, 2 -> 1
    want = [1, 1, 0, 0]
    keys = KEYS[:64]
    # The plain path, then every filter on (per-row values, some rows "off").
    filters = dict(
        top_k=np.array([1, 3, 0, 2]),
        top_p=np.array([0.3, 1.0, 0.5, 0.9], np.float32),
        min_p=np.array([0.5, 0.0, 0.0, 0.1], np.float32),
    )
    for opts in [{}, filters]:
        one = partial(sample, logits=x, where=w, **opts)
        draw = jax.jit(jax.vmap(lambda key, t, one=one: one(key, t=t), in_axes=(0, None)))
        idx = np.asarray(draw(keys, np.zeros(4, np.float32)))
        assert (idx == np.array(want)).all(), opts
        # Per row: greedy rows among sampled ones, in the same compiled program.
        idx = np.asarray(draw(keys, np.array([0.0, 1.0, 0.0, 1.0], np.float32)))
        assert (idx[:, 0] == 1).all() and (idx[:, 2] == 0).all()
    assert len(np.unique(idx[:, 3])) > 1  # row 3 really is sampled


def test_new_parameter_values_never_recompile():
    traces = []
    original = sampling._canonical

    def counting(*args):
        traces.append(1)
        return original(*args)

    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 37)).astype(np.float32))
    key = jax.random.key(0)
    sampling._sample_jit.clear_cache()  # so that the first call below really traces
    sampling._canonical = counting
    try:
        for t, k, tp, mp in [(1.0, 5, 0.9, 0.0), (0.0, 1, 1.0, 0.2), (0.7, 0, 0.5, 0.05)]:
            sample(key, x, t=t, top_k=k, top_p=tp, min_p=mp)
        per_row = np.array([0.5, 0.0, 2.0], np.float32)
        sample(key, x, t=per_row, top_k=np.array([3, 0, 9]), top_p=per_row / 3, min_p=0.1)
        sample(key, x, t=per_row * 2, top_k=np.array([1, 2, 3]), top_p=per_row / 4, min_p=0.2)

        @jax.jit
        def decode(key, t, k, tp, mp):
            return sample(key, x, t=t, top_k=k, top_p=tp, min_p=mp)

        for t in (0.0, 0.5, 1.5):
            decode(key, t, 4, 0.8, 0.01)
    finally:
        sampling._canonical = original
    # One trace for scalars, one for per-row arrays; the user's jit (traced scalars of the same
    # dtype) reuses the scalar one.
    assert len(traces) == 2


# ------------------------------------------------------------------------------------------------
# SPEC 9.3: rows with nothing to draw or a NaN.
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filters", [False, True])
def test_empty_and_nan_rows_return_minus_one(filters):
    x = np.array(
        [
            [-np.inf, -np.inf, -np.inf],
            [0.0, 1.0, 2.0],  # fully masked below
            [0.0, np.nan, 1.0],
            [np.nan, 1.0, 2.0],  # NaN masked: a normal row
            [1.0, 2.0, 3.0],
        ],
        np.float32,
    )
    w = np.ones(x.shape, bool)
    w[1] = False
    w[3, 0] = False
    opts = dict(top_k=2, top_p=0.9, min_p=0.01) if filters else {}
    for t in (1.0, 0.0):
        idx, logp = sample(jax.random.key(1), x, t=t, where=w, return_log_prob=True, **opts)
        idx = np.asarray(idx)
        assert idx.dtype == np.int32
        assert idx[:3].tolist() == [-1, -1, -1]
        assert idx[3] in (1, 2) and idx[4] in (0, 1, 2)
        assert np.isnan(np.asarray(logp)[:3]).all() and np.isfinite(np.asarray(logp)[3:]).all()
    # A traced NaN temperature makes its row -1.
    idx = jax.jit(lambda t: sample(jax.random.key(1), x[3:], t=t, where=w[3:], **opts))(
        jnp.array([np.nan, 1.0])
    )
    assert np.asarray(idx)[0] == -1 and np.asarray(idx)[1] >= 0
    # Empty vocabulary axis.
    assert sample(jax.random.key(1), np.zeros((2, 0), np.float32)).tolist() == [-1, -1]


# ------------------------------------------------------------------------------------------------
# SPEC 9.4: log-probability of the drawn index under the filtered distribution.
# ------------------------------------------------------------------------------------------------


def test_return_log_prob_matches_float64_reference():
    x, t, k, tp, mp, w = _case(2)
    x[0, 5] = 30.0  # a dominant entry: log p ~ -1e-12, kept by the log1p form
    keys = KEYS[:32]
    idx, logp = jax.vmap(
        lambda key: sample(key, x, return_log_prob=True, **_opts(t, k, tp, mp, w))
    )(keys)
    idx, logp = np.asarray(idx), np.asarray(logp)
    keep = ref_mask(x, t, k, tp, mp, w)
    xd = x.astype(np.float64)
    for r in range(ROWS):
        m = xd[r][keep[r]].max()
        z = (
            np.where(keep[r], xd[r] - m, -np.inf)
            if m < np.inf
            else np.where(xd[r] == m, 0, -np.inf)
        )
        if t[r] > 0 and m < np.inf:
            z = z / np.float64(t[r])
            lp = z - np.log(np.exp(z).sum())
        else:
            lp = np.where(z == 0, -np.log((z == 0).sum()), -np.inf)
        np.testing.assert_allclose(logp[:, r], lp[idx[:, r]], rtol=2e-5, atol=1e-6)
    assert logp[:, 0].max() > -1e-9 and logp[:, 0].max() < 0


# ------------------------------------------------------------------------------------------------
# The noise: jax.random's own; axis handling.
# ------------------------------------------------------------------------------------------------


def test_unfiltered_draw_is_jax_random_categorical_of_the_scaled_logits():
    x = jnp.asarray(3 * np.random.default_rng(7).normal(size=(5, 300)).astype(np.float32))
    for seed, t in [(0, 1.0), (1, 0.6), (2, 2.0)]:
        key = jax.random.key(seed)
        want = jax.random.categorical(key, (x - x.max(-1, keepdims=True)) / t)
        np.testing.assert_array_equal(sample(key, x, t=t), want)
    raw = jax.random.PRNGKey(4)
    np.testing.assert_array_equal(
        sample(raw, x), jax.random.categorical(raw, x - x.max(-1, keepdims=True))
    )


def test_axis_moves_the_categories():
    x = np.random.default_rng(8).normal(size=(7, 3)).astype(np.float32)
    key = jax.random.key(3)
    np.testing.assert_array_equal(sample(key, x, axis=0, top_p=0.9), sample(key, x.T, top_p=0.9))


# ------------------------------------------------------------------------------------------------
# SPEC 9.5: sharded == unsharded, bit for bit, on 8 CPU devices.
# ------------------------------------------------------------------------------------------------


def _sharded(keys, x, t, k, tp, mp, w, log_prob):
    mesh = jax.sharding.Mesh(jax.devices(), ("v",))
    ndev = len(jax.devices())
    assert x.shape[1] % ndev == 0

    def local(keys, x, w, t, k, tp, mp):
        return jax.vmap(
            lambda key: sharded_sample(
                key, x, "v", t=t, top_k=k, top_p=tp, min_p=mp, where=w, return_log_prob=log_prob
            )
        )(keys)

    f = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(None, "v"), P(None, "v"), P(), P(), P(), P()),
        out_specs=P(),
    )
    return jax.jit(f)(keys, x, w, t, k, tp, mp)


def test_sharded_sample_equals_sample_bit_for_bit():
    rng = np.random.default_rng(11)
    x = (3 * rng.normal(size=(6, 64))).astype(np.float32)
    x[1] = np.round(x[1])  # ties
    x[2, :40] = -np.inf
    x[3, 7] = np.nan
    x[4, [3, 50]] = np.inf
    w = np.ones(x.shape, bool)
    w[5, 20:] = False
    t = np.array([1.0, 0.7, 2.0, 1.0, 1.0, 0.0], np.float32)
    k = np.array([10, 0, 5, 3, 2, 4], np.int32)
    tp = np.array([0.8, 0.95, 1.0, 0.5, 0.9, 0.3], np.float32)
    mp = np.array([0.0, 0.02, 0.1, 0.0, 0.0, 0.05], np.float32)
    keys = KEYS[:64]
    idx_s, logp_s = _sharded(keys, x, t, k, tp, mp, w, True)
    idx_u, logp_u = jax.vmap(
        lambda key: sample(key, x, return_log_prob=True, **_opts(t, k, tp, mp, w))
    )(keys)
    np.testing.assert_array_equal(idx_s, idx_u)
    np.testing.assert_allclose(logp_s, logp_u, rtol=1e-6, atol=1e-7)
    assert (np.asarray(idx_u)[:, 3] == -1).all()
    assert len(np.unique(np.asarray(idx_u)[:, 0])) > 3  # draws really vary with the key
    # A larger vocabulary (512 columns per device), plain temperature sampling (no filter).
    x = (3 * rng.normal(size=(4, 8 * 512))).astype(np.float32)
    t = np.array([1.0, 0.5, 1.5, 0.0], np.float32)
    mesh = jax.sharding.Mesh(jax.devices(), ("v",))
    local = jax.vmap(lambda key, x, t: sharded_sample(key, x, "v", t=t), in_axes=(0, None, None))
    f = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, "v"), P()), out_specs=P()))
    idx_u = jax.jit(jax.vmap(lambda key: sample(key, x, t=t)))(keys[:16])
    np.testing.assert_array_equal(f(keys[:16], x, t), idx_u)


# ------------------------------------------------------------------------------------------------
# Argument errors.
# ------------------------------------------------------------------------------------------------


def test_argument_errors_name_the_function_and_argument():
    x = np.zeros((2, 5), np.float32)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="sample: top_p must lie in"):
        sample(key, x, top_p=1.5)
    with pytest.raises(ValueError, match="sampling_mask: min_p must lie in"):
        sampling_mask(x, min_p=-0.1)
    with pytest.raises(TypeError, match="sample: top_k must be an integer"):
        sample(key, x, top_k=2.0)
    with pytest.raises(ValueError, match="sample: top_k of shape"):
        sample(key, x, top_k=np.array([1, 2, 3]))
    with pytest.raises(TypeError, match="sample: key must be"):
        sample(0, x)
    with pytest.raises(ValueError, match="single PRNG key"):
        sample(jax.random.split(key, 2), x)
    with pytest.raises(TypeError, match="sample: axis must be an int"):
        sample(key, x, axis=(0, 1))
    with pytest.raises(ValueError, match="sample: t must be >= 0"):
        sample(key, x, t=-1.0)
