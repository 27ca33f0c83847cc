"""The language-model head options of the losses (SPEC 8.1-8.3, 8.5): soft-cap, z-loss,
``return_lse``, per-row ``t``, ``reduction`` and gradient accumulation, dense, fused and sharded,
against the float64 reference of :mod:`tests.ce_reference`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from jax.test_util import check_grads

import jaxsoft
from jaxsoft.large_vocab import linear_cross_entropy
from jaxsoft.losses import cross_entropy, cross_entropy_with_probs
from jaxsoft.sharded import sharded_cross_entropy, sharded_linear_cross_entropy
from tests import ce_reference as ref

INF = np.inf
IGNORE = -100


def _edge_batch():
    """8 rows x 6 classes: plain, -inf entry, +inf label, partial mask, fully masked, ignored NaN,
    label on -inf (+inf loss), t = 0 with two maxima at 0; per-row t."""
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 6)) * 2).astype(np.float32)
    y = np.array([1, 2, 3, 0, 4, 5, 2, 1], np.int32)
    x[1, 4] = -INF
    x[2, 3] = INF
    x[5, 0] = np.nan
    x[6, 2] = -INF
    x[7] = [-1.0, 0.0, 0.0, -3.0, -0.5, -2.0]
    mask = np.ones((8, 6), bool)
    mask[3, 4:] = False
    mask[4] = False
    ignored = np.zeros(8, bool)
    ignored[5] = True
    t = np.array([1.0, 0.7, 1.0, 2.0, 1.0, 1.0, 1.0, 0.0], np.float32)
    return x, y, mask, ignored, t


OPTIONS = [
    dict(z_loss=0.0, cap=None),
    dict(z_loss=1e-2, cap=None),
    dict(z_loss=0.3, cap=5.0),
]


def _dense_loss_and_lse(x, t, y, mask, opts, probs=None):
    kw = dict(where=mask, t=t, z_loss=opts["z_loss"], logit_softcap=opts["cap"], return_lse=True)
    if probs is None:
        labels = np.where(np.arange(len(y)) == 5, IGNORE, y)
        return cross_entropy(x, labels, ignore_index=IGNORE, **kw)
    return cross_entropy_with_probs(x, probs, **kw)


def _check_against_reference(f, x, t, opts, ref_out, what, rtol=2e-5, atol=2e-6):
    loss_r, gx_r, gt_r, lse_r, lx_r, _ = ref_out
    w = np.where(np.isfinite(lse_r), np.linspace(0.5, 1.5, len(lse_r)), 0.0)

    @jax.jit
    def run(x, t):
        (loss, lse), vjp = jax.vjp(f, x, t)
        # The loss alone (lse unused): an ignored row's NaN lse must not reach its gradient.
        gx, gt = jax.grad(lambda x, t: jnp.sum(f(x, t)[0]), argnums=(0, 1))(x, t)
        gl, _ = vjp((jnp.zeros_like(loss), jnp.asarray(w, lse.dtype)))
        return loss, lse, gx, gt, gl

    loss, lse, gx, gt, gl = run(x, t)
    ref.assert_close(loss, loss_r, rtol, atol, f"{what} loss")
    ref.assert_close(lse, lse_r, rtol, atol, f"{what} lse")
    ref.assert_close(gx, gx_r, rtol, atol, f"{what} dloss/dx")
    ref.assert_close(gt, gt_r, rtol, atol, f"{what} dloss/dt")
    with np.errstate(invalid="ignore"):
        ref.assert_close(gl, lx_r * w[:, None], rtol, atol, f"{what} dlse/dx")


@pytest.mark.parametrize("opts", OPTIONS, ids=["plain", "z", "z+cap"])
def test_cross_entropy_z_loss_softcap_and_lse_match_float64_reference(opts):
    x, y, mask, ignored, t = _edge_batch()
    want = ref.lm_cross_entropy_rows(
        x, y, t, mask=mask, ignored=ignored, z_loss=opts["z_loss"], cap=opts["cap"]
    )
    f = lambda x, t: _dense_loss_and_lse(x, t, y, mask, opts)
    _check_against_reference(f, jnp.asarray(x), jnp.asarray(t), opts, want, "cross_entropy")


@pytest.mark.parametrize("opts", OPTIONS[1:], ids=["z", "z+cap"])
def test_cross_entropy_with_probs_z_loss_softcap_and_lse_match_float64_reference(opts):
    x, y, mask, _ignored, t = _edge_batch()
    rng = np.random.default_rng(1)
    q = rng.dirichlet(np.ones(6), size=8).astype(np.float32)
    q[6] = np.eye(6)[2]  # all weight on the -inf logit: +inf loss
    mask[5] = np.arange(6) > 0  # the NaN entry masked out instead of ignoring the row
    want = ref.lm_cross_entropy_rows(x, t=t, mask=mask, z_loss=opts["z_loss"], cap=opts["cap"], q=q)
    f = lambda x, t: _dense_loss_and_lse(x, t, y, mask, opts, probs=q)
    _check_against_reference(
        f, jnp.asarray(x), jnp.asarray(t), opts, want, "cross_entropy_with_probs"
    )


def test_lm_options_check_grads_float64(x64):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 5)) * 3)
    t = jnp.asarray([0.8, 1.0, 1.7])
    y = jnp.asarray([0, 3, 4])
    q = jnp.asarray(rng.dirichlet(np.ones(5), size=3))

    def f(x, t):
        loss, lse = cross_entropy(x, y, t=t, z_loss=0.1, logit_softcap=4.0, return_lse=True)
        return loss + 0.3 * lse

    def g(x, t):
        loss, lse = cross_entropy_with_probs(
            x, q, t=t, z_loss=0.1, logit_softcap=4.0, return_lse=True
        )
        return loss + 0.3 * lse

    f, g = jax.jit(f), jax.jit(g)
    check_grads(f, (x, t), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
    check_grads(g, (x, t), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_lm_options_bf16_logits_accumulate_in_float32():
    x, y, mask, _ignored, t = _edge_batch()
    xb = jnp.asarray(x[:4], jnp.bfloat16)
    loss, lse = cross_entropy(
        xb, y[:4], t=t[:4], where=mask[:4], z_loss=1e-2, logit_softcap=5.0, return_lse=True
    )
    assert loss.dtype == lse.dtype == jnp.bfloat16
    want = ref.lm_cross_entropy_rows(
        np.asarray(xb, np.float32), y[:4], t[:4], mask=mask[:4], z_loss=1e-2, cap=5.0
    )
    ref.assert_close(loss, want[0], 1e-2, 1e-2, "bf16 loss")
    ref.assert_close(lse, want[3], 1e-2, 1e-2, "bf16 lse")


def test_softcap_keeps_minus_inf_as_padding_and_caps_plus_inf():
    x = np.array([[2.0, -INF, 100.0], [INF, 0.0, -INF]], np.float32)
    y = np.array([2, 0], np.int32)

    @jax.jit  # values and gradient in one program
    def run(x):
        loss, lse = cross_entropy(x, y, logit_softcap=3.0, return_lse=True)
        return loss, lse, jax.grad(lambda x: cross_entropy(x, y, logit_softcap=3.0).sum())(x)

    loss, lse, grad = run(x)
    want = ref.lm_cross_entropy_rows(x, y, cap=3.0)
    ref.assert_close(loss, want[0], 1e-6, 1e-6, "loss")
    ref.assert_close(lse, want[3], 1e-6, 1e-6, "lse")
    assert np.isfinite(np.asarray(grad)).all()


def test_lm_option_errors():
    x = jnp.zeros((2, 3))
    y = jnp.array([0, 1])
    with pytest.raises(ValueError, match="cross_entropy: z_loss"):
        cross_entropy(x, y, z_loss=-1.0)
    with pytest.raises(TypeError, match="cross_entropy: z_loss"):
        cross_entropy(x, y, z_loss=jnp.array(0.1))
    with pytest.raises(ValueError, match="cross_entropy_with_probs: logit_softcap"):
        cross_entropy_with_probs(x, jnp.ones((2, 3)) / 3, logit_softcap=0.0)


# --------------------------------------------------------------------------------------------------
# The fused head (SPEC 8.5): every option against the float64 reference on h @ W + b.
# --------------------------------------------------------------------------------------------------


def _head_case():
    """8 rows, d = 5, V = 12: a -inf bias column (padding), a vocabulary mask, an ignored row with
    NaN h, a label on a masked class (+inf loss), per-row t with a t = 0 row."""
    rng = np.random.default_rng(3)
    h = rng.normal(size=(8, 5)).astype(np.float32)
    W = (1.5 * rng.normal(size=(5, 12))).astype(np.float32)
    b = rng.normal(size=12).astype(np.float32)
    b[11] = -INF
    vmask = np.ones(12, bool)
    vmask[[3, 7]] = False
    y = np.array([0, 5, 9, 2, 3, 10, 1, 4], np.int32)  # row 4: label on masked class 3
    h[5, 1] = np.nan
    y_in = y.copy()
    y_in[5] = IGNORE
    ignored = np.arange(8) == 5
    t = np.array([1.0, 0.6, 1.5, 1.0, 1.0, 1.0, 0.0, 2.0], np.float32)
    return h, W, b, vmask, y, y_in, ignored, t


def _head_reference(h, W, b, vmask, y, ignored, t, g, g_lse, smoothing, z_loss, cap):
    x = h.astype(np.float64) @ W.astype(np.float64) + b
    mask = np.broadcast_to(vmask, x.shape)
    loss, dx, dt, lse, lx, lt = ref.lm_cross_entropy_rows(
        x, y, t, smoothing, mask, ignored, z_loss, cap
    )
    gx = g[:, None] * dx + g_lse[:, None] * np.where(g_lse[:, None] != 0, lx, 0)
    gx = np.where(mask, gx, 0)
    h0 = np.nan_to_num(h.astype(np.float64))
    return loss, lse, gx @ W.T, h0.T @ gx, gx.sum(0), g * dt + np.where(g_lse != 0, g_lse * lt, 0)


HEAD_OPTS = [
    dict(smoothing=0.0, z_loss=0.0, cap=None, layout="dV"),
    dict(smoothing=0.2, z_loss=0.05, cap=4.0, layout="dV"),
    dict(smoothing=0.2, z_loss=0.05, cap=4.0, layout="Vd"),
]


def _head_weights(n):
    g = np.linspace(0.5, 1.5, n).astype(np.float32)
    g_lse = np.linspace(-0.7, 0.4, n).astype(np.float32)
    g_lse[5] = 0  # the ignored row's lse is NaN (its h is): no cotangent there
    return g, g_lse


def _assert_head(got, want, what):
    names = ("loss", "lse", "dh", "dW", "dbias", "dt")
    for name, a, b in zip(names, got, want):
        ref.assert_close(a, b, 2e-5, 2e-5, f"{what} {name}")


@pytest.mark.parametrize("o", HEAD_OPTS, ids=["plain", "all-dV", "all-Vd"])
def test_linear_cross_entropy_every_option_matches_float64_reference(o):
    h, W, b, vmask, y, y_in, ignored, t = _head_case()
    g, g_lse = _head_weights(len(y))
    want = _head_reference(
        h, W, b, vmask, y, ignored, t, g, g_lse, o["smoothing"], o["z_loss"], o["cap"]
    )
    vd = o["layout"] == "Vd"

    def f(h, W, b, t):
        return linear_cross_entropy(
            h,
            W.T if vd else W,
            y_in,
            bias=b,
            t=t,
            where=vmask,
            chunk_size=5,
            ignore_index=IGNORE,
            label_smoothing=o["smoothing"],
            z_loss=o["z_loss"],
            logit_softcap=o["cap"],
            return_lse=True,
            weight_layout=o["layout"],
        )

    def run(h, W, b, t):
        (loss, lse), vjp = jax.vjp(f, h, W, b, t)
        return (loss, lse, *vjp((jnp.asarray(g), jnp.asarray(g_lse))))

    got = jax.jit(run)(h, W, b, t)
    _assert_head(got, want, f"linear_cross_entropy {o}")


def test_linear_cross_entropy_reduction_and_bf16():
    h, W, b, vmask, y, _y_in, _ignored, t = _head_case()
    kw = dict(bias=b, where=vmask, t=t[:5], z_loss=0.05, logit_softcap=4.0, chunk_size=5)
    # Row 4's label is on a masked class (+inf loss); the sum is taken over the finite rows 0-3.
    finite = np.arange(5) < 4
    hb, Wb = jnp.asarray(h[:5], jnp.bfloat16), jnp.asarray(W, jnp.bfloat16)

    @jax.jit  # every call in one program
    def run(h, W, hb, Wb):
        per_row = linear_cross_entropy(h[:5], W, y[:5], **kw)
        total = linear_cross_entropy(
            h[finite.nonzero()],
            W,
            y[finite.nonzero()],
            **(kw | dict(t=t[finite.nonzero()])),
            reduction="sum",
        )
        mean = linear_cross_entropy(h[:4], W, y[:4], reduction="mean", chunk_size=5, ignore_index=0)
        rows_1_3 = linear_cross_entropy(h[1:4], W, y[1:4])
        lb = linear_cross_entropy(hb, Wb, y[:5], **kw)
        return per_row, total, mean, rows_1_3, lb

    per_row, total, mean, rows_1_3, lb = jax.tree.map(np.asarray, run(h, W, hb, Wb))
    np.testing.assert_array_equal(np.isfinite(per_row), finite)
    np.testing.assert_allclose(total, np.sum(per_row[finite]), rtol=1e-6)
    np.testing.assert_allclose(mean, np.mean(rows_1_3), rtol=1e-6)
    assert lb.dtype == jnp.bfloat16
    hb = np.asarray(hb, np.float32)
    Wb = np.asarray(Wb, np.float32)
    x = hb.astype(np.float64) @ Wb + b
    want = ref.lm_cross_entropy_rows(
        x, y[:5], t[:5], mask=np.broadcast_to(vmask, x.shape), z_loss=0.05, cap=4.0
    )[0]
    ref.assert_close(lb, want, 2e-2, 2e-2, "bf16 loss")


def test_linear_cross_entropy_check_grads_float64(x64):
    rng = np.random.default_rng(4)
    h = jnp.asarray(rng.normal(size=(3, 4)))
    E = jnp.asarray(rng.normal(size=(7, 4)))  # a tied embedding, [V, d]
    b = jnp.asarray(rng.normal(size=7))
    t = jnp.asarray([0.8, 1.0, 1.7])
    y = jnp.asarray([0, 3, 6])

    def f(h, E, b, t):
        loss, lse = linear_cross_entropy(
            h,
            E,
            y,
            bias=b,
            t=t,
            chunk_size=3,
            z_loss=0.1,
            logit_softcap=3.0,
            label_smoothing=0.1,
            return_lse=True,
            weight_layout="Vd",
        )
        return loss + 0.3 * lse

    # jitted: eagerly, every scan of the forward and backward passes compiles on its own.
    check_grads(jax.jit(f), (h, E, b, t), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_linear_cross_entropy_tied_embedding_needs_no_more_memory():
    n, d, v = 2048, 256, 32768
    h = jax.ShapeDtypeStruct((n, d), jnp.float32)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)

    def temp(layout, shape):
        def loss(h, W, y):
            return linear_cross_entropy(h, W, y, weight_layout=layout, reduction="sum")

        f = jax.jit(jax.grad(loss, argnums=(0, 1)))
        w = jax.ShapeDtypeStruct(shape, jnp.float32)
        return f.lower(h, w, y).compile().memory_analysis().temp_size_in_bytes

    dv, vd = temp("dV", (d, v)), temp("Vd", (v, d))
    assert vd <= dv, (vd, dv)


# --------------------------------------------------------------------------------------------------
# The sharded twins (SPEC 8.5): 8 CPU devices, 1-D and 2-D meshes, check_vma True and False.
# --------------------------------------------------------------------------------------------------

SHARDED = [("1d", True, "dV"), ("2d", False, "Vd")]


def _mesh(kind):
    devices = np.array(jax.devices())
    if kind == "1d":
        return Mesh(devices, ("v",)), P()
    return Mesh(devices.reshape(2, 4), ("d", "v")), P("d")


def _sharded_head_case():
    """As :func:`_head_case` with V = 16 (divisible over the devices)."""
    h, W, b, vmask, y, y_in, ignored, t = _head_case()
    rng = np.random.default_rng(5)
    W = np.concatenate([W, (1.5 * rng.normal(size=(5, 4))).astype(np.float32)], axis=1)
    b = np.concatenate([b[:11], rng.normal(size=4).astype(np.float32), b[11:]])
    vmask = np.concatenate([vmask, np.ones(4, bool)])
    return h, W, b, vmask, y, y_in, ignored, t


@pytest.mark.parametrize("kind, check_vma, layout", SHARDED)
def test_sharded_linear_cross_entropy_every_option_matches_float64_reference(
    kind, check_vma, layout
):
    h, W, b, vmask, y, y_in, ignored, t = _sharded_head_case()
    g, g_lse = _head_weights(len(y))
    o = dict(smoothing=0.2, z_loss=0.05, cap=4.0)
    want = _head_reference(
        h, W, b, vmask, y, ignored, t, g, g_lse, o["smoothing"], o["z_loss"], o["cap"]
    )
    mesh, rows = _mesh(kind)
    vd = layout == "Vd"
    f = jax.shard_map(
        lambda h, W, b, m, y, t: sharded_linear_cross_entropy(
            h,
            W,
            y,
            "v",
            bias_local=b,
            where_local=m,
            t=t,
            chunk_size=3,
            ignore_index=IGNORE,
            label_smoothing=o["smoothing"],
            z_loss=o["z_loss"],
            logit_softcap=o["cap"],
            return_lse=True,
            weight_layout=layout,
        ),
        mesh=mesh,
        in_specs=(rows, P("v", None) if vd else P(None, "v"), P("v"), P("v"), rows, rows),
        out_specs=(rows, rows),
        check_vma=check_vma,
    )

    def run(h, W, b, t):
        (loss, lse), vjp = jax.vjp(lambda h, W, b, t: f(h, W, b, vmask, y_in, t), h, W, b, t)
        return (loss, lse, *vjp((jnp.asarray(g), jnp.asarray(g_lse))))

    got = list(jax.jit(run)(h, W.T if vd else W, b, t))
    if vd:
        got[3] = got[3].T
    _assert_head(got, want, f"sharded_linear_cross_entropy {kind} {check_vma}")


@pytest.mark.parametrize("kind, check_vma", [s[:2] for s in SHARDED])
def test_sharded_cross_entropy_every_option_matches_float64_reference(kind, check_vma):
    h, W, b, vmask, y, y_in, ignored, t = _sharded_head_case()
    x = (h.astype(np.float64) @ W + b).astype(np.float32)
    mask = np.broadcast_to(vmask, x.shape).copy()
    mask[2, :] = False  # a fully masked row
    g, g_lse = _head_weights(len(y))
    g_lse[2] = 0  # its lse is -inf
    o = dict(smoothing=0.2, z_loss=0.05, cap=4.0)
    loss_r, dx, dt, lse_r, lx, lt = ref.lm_cross_entropy_rows(
        x, y, t, o["smoothing"], mask, ignored, o["z_loss"], o["cap"]
    )
    gx_r = np.where(
        mask, g[:, None] * dx + g_lse[:, None] * np.where(g_lse[:, None] != 0, lx, 0), 0
    )
    dt_r = g * dt + np.where(g_lse != 0, g_lse * lt, 0)
    mesh, rows = _mesh(kind)
    xs = P(*rows, "v") if rows != P() else P(None, "v")
    f = jax.shard_map(
        lambda x, m, y, t: sharded_cross_entropy(
            x,
            y,
            "v",
            where=m,
            t=t,
            ignore_index=IGNORE,
            label_smoothing=o["smoothing"],
            z_loss=o["z_loss"],
            logit_softcap=o["cap"],
            return_lse=True,
        ),
        mesh=mesh,
        in_specs=(xs, xs, rows, rows),
        out_specs=(rows, rows),
        check_vma=check_vma,
    )

    def run(x, t):
        (loss, lse), vjp = jax.vjp(lambda x, t: f(x, mask, y_in, t), x, t)
        return (loss, lse, *vjp((jnp.asarray(g), jnp.asarray(g_lse))))

    got = jax.jit(run)(x, t)
    for name, a, b in zip(("loss", "lse", "dx", "dt"), got, (loss_r, lse_r, gx_r, dt_r)):
        ref.assert_close(a, b, 2e-5, 2e-5, f"sharded_cross_entropy {kind} {name}")


# --------------------------------------------------------------------------------------------------
# Gradient accumulation (issue 14 item 7) and memory.
# --------------------------------------------------------------------------------------------------


def test_micro_batched_sum_over_count_equals_full_batch_mean_values_and_grads():
    h, W, b, _vmask, _y, y_in, _ignored, _t = _head_case()
    h = np.nan_to_num(h)
    y_in = y_in.copy()
    y_in[[1, 2]] = IGNORE  # micro-batches with unequal numbers of rows that count
    y_in[4] = 0  # no +inf row: the mean must be finite

    def full(h, W):
        return linear_cross_entropy(
            h, W, y_in, ignore_index=IGNORE, reduction="mean", z_loss=0.01, chunk_size=5
        )

    def micro(h, W):
        total, count = 0.0, 0
        for sl in (slice(0, 3), slice(3, 8)):
            total = total + linear_cross_entropy(
                h[sl], W, y_in[sl], ignore_index=IGNORE, reduction="sum", z_loss=0.01, chunk_size=5
            )
            count = count + jaxsoft.reductions.count_valid(y_in[sl], ignore_index=IGNORE)
        return total / count

    def naive(h, W):
        # The mean of micro-batch means, which differs: 1 of 3 rows counts in the first.
        means = [
            linear_cross_entropy(
                h[sl], W, y_in[sl], ignore_index=IGNORE, reduction="mean", z_loss=0.01, chunk_size=5
            )
            for sl in (slice(0, 3), slice(3, 8))
        ]
        return (means[0] + means[1]) / 2

    @jax.jit  # the three in one program
    def run(h, W):
        grad = jax.value_and_grad
        return grad(full, argnums=(0, 1))(h, W), grad(micro, argnums=(0, 1))(h, W), naive(h, W)

    (v_full, g_full), (v_micro, g_micro), v_naive = run(h, W)
    np.testing.assert_allclose(v_micro, v_full, rtol=1e-6)
    for a, b in zip(g_micro, g_full):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert abs(float(v_naive) - float(v_full)) > 1e-3


def test_count_valid_counts_ignored_and_fully_masked_rows_out():
    labels = np.array([[0, -100, 2], [1, 1, -100]], np.int32)
    where = np.array([[True, True, False], [True, True, True]])
    class_mask = np.zeros((2, 3, 4), bool)
    class_mask[0, 0, 1] = True
    count_valid = jaxsoft.reductions.count_valid
    # the four counts in one program (eagerly, each op of each call compiles on its own)
    counts = jax.jit(
        lambda labels, where, class_mask: (
            count_valid(labels),
            count_valid(labels, ignore_index=-100),
            count_valid(labels, ignore_index=-100, where=where),
            count_valid(labels, where=class_mask),
        )
    )(labels, where, class_mask)
    assert [int(c) for c in counts] == [6, 4, 3, 1]


def test_fused_head_with_every_option_holds_a_twentieth_of_naive_temp_memory():
    n, d, v = 4096, 512, 65536
    h = jax.ShapeDtypeStruct((n, d), jnp.float32)
    W = jax.ShapeDtypeStruct((d, v), jnp.float32)
    b = jax.ShapeDtypeStruct((v,), jnp.float32)
    m = jax.ShapeDtypeStruct((v,), jnp.bool_)
    y = jax.ShapeDtypeStruct((n,), jnp.int32)
    t = jax.ShapeDtypeStruct((n,), jnp.float32)
    kw = dict(
        ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-4, logit_softcap=30.0, return_lse=True
    )

    def fused(h, W, b, m, y, t):
        loss, lse = linear_cross_entropy(h, W, y, bias=b, where=m, t=t, reduction="mean", **kw)
        return loss + jnp.mean(lse)

    def naive(h, W, b, m, y, t):
        loss, lse = cross_entropy(h @ W + b, y, where=m[None, :], t=t, reduction="mean", **kw)
        return loss + jnp.mean(lse)

    def temp(f):
        g = jax.jit(jax.grad(f, argnums=(0, 1, 2, 5)))
        return g.lower(h, W, b, m, y, t).compile().memory_analysis().temp_size_in_bytes

    tf, tn = temp(fused), temp(naive)
    assert tn >= n * v * 4  # the naive one holds at least the float32 logits
    assert tf * 20 <= tn, (tf, tn)


def test_sharded_reductions_match_dense_over_the_rows_that_count():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4, 16)).astype(np.float32)
    y = np.array([1, IGNORE, 7, 12], np.int32)
    where = np.ones((4, 16), bool)
    where[3] = False  # a fully masked row does not count either
    mesh, _ = _mesh("1d")
    reductions = ("mean", "sum")

    @jax.jit  # both reductions, sharded and dense, in one program
    def run(x, where, y):
        out = []
        for reduction in reductions:
            f = jax.shard_map(
                lambda x, m, y, r=reduction: sharded_cross_entropy(
                    x, y, "v", where=m, ignore_index=IGNORE, reduction=r, z_loss=0.01
                ),
                mesh=mesh,
                in_specs=(P(None, "v"), P(None, "v"), P()),
                out_specs=P(),
            )
            want = cross_entropy(
                x, y, where=where, ignore_index=IGNORE, reduction=reduction, z_loss=0.01
            )
            out.append((f(x, where, y), want))
        return out

    for reduction, (got, want) in zip(reductions, run(x, where, y), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=reduction)
