"""``logsumexp``'s forward on the tuned XLA:CPU kernel below 4096 rows views each row as sub-rows
(``jaxsoft._tuned_subrows``): every edge row (SPEC 6), with its special entries spread over
different sub-rows, must give what the reference kernel gives, for every temperature regime.

The kernel takes that form from 4 Mi entries on, 1 Mi on rows of 65536 entries or more (speed
thresholds); the tests lower them so that 512 Ki entries take the same code path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsoft as js
from jaxsoft import _core, _tuned_subrows

INF = np.inf
ROWS, N = 32, 16384  # 128 sub-rows of 128 entries per row
FAR = 9000  # an entry in another sub-row than entry 0
TINY = np.finfo(np.float32).tiny


def _rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal((ROWS, N))).astype(np.float32)
    edges = {
        0: ([], -INF),  # empty
        1: ([(5, INF), (FAR, INF)], None),  # two +inf entries in two sub-rows
        2: ([(FAR, np.nan)], None),  # NaN
        3: ([], 2.0),  # all tied
        4: ([(0, 3e38), (FAR, -3e38)], 0.0),  # extreme finite
        5: ([(0, 0.0), (FAR, -40.0)], -INF),  # log1p accuracy across sub-rows
        6: ([(0, 1e-30), (FAR, 0.0)], -5.0),  # a gap whose exp rounds to 1
        7: ([(0, 1.0), (FAR, np.nextafter(np.float32(1), np.float32(0)))], -1.0),  # 1-ulp gap
        8: ([(0, 3.0), (N - 1, 3.0)], -INF),  # a tie in the first and the last sub-row
        9: ([(0, 1.5 * TINY), (FAR, 1.25 * TINY)], -INF),  # a gap XLA:CPU flushes to 0
        10: ([(0, 30.0)], 0.0),  # confident: one maximum, a tiny mass off it
        11: ([(130, 1.0), (N - 2, 0.5)], -INF),  # empty sub-rows between two that are not
        12: ([(0, 3 * TINY), (FAR, 2 * TINY)], -INF),  # a gap flushed to 0 once halved (with t)
    }
    for row, (entries, fill) in edges.items():
        if fill is not None:
            x[row] = fill
        for col, value in entries:
            x[row, col] = value
    return x


@pytest.fixture(autouse=True)
def _small_inputs_take_the_sub_rows(monkeypatch):
    monkeypatch.setattr(_tuned_subrows, "MIN_ENTRIES", 0)
    monkeypatch.setattr(_tuned_subrows, "MIN_ENTRIES_LONG_ROWS", 0)


def _lse(x, t, where):
    out = jax.jit(lambda x, t, w: js.logsumexp(x, -1, t=t, where=w))(x, t, where)
    return np.asarray(out, np.float32)  # numpy compares bfloat16 NaNs as unequal


TEMPERATURES = {
    "t=1": lambda: np.float32(1.0),
    "t=0": lambda: np.float32(0.0),
    "t=0.5": lambda: np.float32(0.5),
    "t=1e31": lambda: np.float32(1e31),  # z flushes to 0 off the maxima: the count must not
    "per-row t": lambda: np.random.default_rng(2).choice([0.0, 0.3, 1.0, 7.0], (ROWS, 1)),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("masked", [False, True], ids=["", "where"])
@pytest.mark.parametrize("t_name", list(TEMPERATURES))
def test_subrow_form_matches_the_reference_on_every_edge_row(t_name, masked, dtype):
    x = jnp.asarray(_rows(), dtype)
    assert _tuned_subrows.subrow_count(x.shape) == 128  # the shape takes the sub-row form
    t = jnp.asarray(TEMPERATURES[t_name](), jnp.float32)
    where = None
    if masked:
        where = np.random.default_rng(1).random((ROWS, N)) < 0.7
        where[:, [0, 5, FAR, N - 1]] = True  # keep the edges' special entries
        where = jnp.asarray(where)
    with _core.use_kernel("tuned_cpu"):
        got = _lse(x, t, where)
    with _core.use_kernel("reference"):
        want = _lse(x, t, where)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite], want[~finite])
    rtol = 2e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=1e-30)


def test_log1p_accuracy_survives_the_sub_rows():
    """A row whose mass off its maximum sits in other sub-rows keeps it (SPEC 2.5)."""
    x = np.full((ROWS, N), -INF, np.float32)
    x[:, 0] = 0.0
    x[:, FAR] = -40.0
    x[:, N - 1] = -41.0
    with _core.use_kernel("tuned_cpu"):
        got = _lse(jnp.asarray(x), jnp.float32(1.0), None)
    want = np.log1p(np.exp(-40.0) + np.exp(-41.0))
    np.testing.assert_allclose(got, want, rtol=2e-7)


def test_value_and_grad_returns_the_forward_value():
    """Its gradient reads the three-pass form (``core_for_tangents``): the values agree to the
    last bit or so, the gradients are finite but on NaN rows."""
    x = jnp.asarray(_rows())

    def loss(x):
        y = js.logsumexp(x, -1)
        return jnp.sum(jnp.where(jnp.isfinite(y), y, 0)), y

    with _core.use_kernel("tuned_cpu"):
        forward = np.asarray(jax.jit(lambda x: js.logsumexp(x, -1))(x))
        (_, y), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
    np.testing.assert_allclose(np.asarray(y), forward, rtol=4e-7, atol=0)
    assert np.array_equal(np.isnan(y), np.isnan(forward))
    nan_rows = np.isnan(np.asarray(x)).any(axis=-1)
    assert np.all(np.isfinite(np.asarray(g)[~nan_rows]))


def test_the_sub_row_form_is_taken_where_it_was_measured_faster(monkeypatch):
    monkeypatch.setattr(_tuned_subrows, "MIN_ENTRIES", 1 << 22)
    monkeypatch.setattr(_tuned_subrows, "MIN_ENTRIES_LONG_ROWS", 1 << 20)
    k = _tuned_subrows.subrow_count
    taken = [(256, 32768), (16, 262144), (1024, 4096), (4, 16, 65536), (16, 65536), (1, 1 << 20)]
    assert [k(s) for s in taken] == [16, 256, 4, 64, 256, 4096]
    # Small inputs (long rows from 1 Mi entries), one fused loop from 4096 rows on, and rows k does
    # not divide keep whole rows.
    kept = [(512, 2048), (64, 16384), (4, 65536), (4096, 1024), (1000, 5001)]
    assert [k(s) for s in kept] == [None] * len(kept)
