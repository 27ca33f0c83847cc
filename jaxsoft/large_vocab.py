"""Large vocabularies: streaming (chunked) log-sum-exp and a fused linear cross-entropy.

A language model's head computes ``logits = h @ W`` with ``h: [N, d]`` and ``W: [d, V]``; at
``N = 8192, V = 131072`` the float32 logits alone take 4 GiB, and their gradient as much again.
Both functions here walk the class axis in chunks of ``chunk_size`` and keep, per row, only the
online statistics of Milakov & Gimelshein (2018), refined so that the ``log1p`` accuracy of
:func:`jaxsoft.logsumexp` survives:

- ``m``: the running max (NaN once the row holds a NaN);
- ``k``: how many entries equal ``m`` (exact in float32 below 2**24 entries; 0 on an empty row);
- ``s``: ``sum exp((x_j - m) / t)`` over the other entries (0 on hard rows: ``m = +inf`` or
  ``t = 0``, where the maxima take all the mass).

When a chunk raises the max from ``m_old`` to ``m_new``, the old mass ``k + s`` is rescaled by
``exp((m_old - m_new) / t)`` and joins ``s``; ties add to ``k``. At the end
``lse = m + t * log1p(s)`` when ``k = 1`` (exact for a dominant entry) and ``m + t * log(k + s)``
otherwise. The same combine merges per-device statistics in :mod:`jaxsoft.sharded`.

The last chunk need not be full: it is read from ``V - chunk_size`` (a clamped slice) and the
columns already seen are masked to ``-inf``, which is the padded ``-inf`` chunk without copying
``W`` (or ``x``) into a padded buffer.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxsoft import _checks

_NEG_INF = -jnp.inf
_F32 = jnp.float32


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


def _safe_t(t):
    """``t`` with 0 replaced by 1: hard rows never use the quotient, but it must stay finite."""
    return None if t is None else jnp.where(t == 0, 1, t)


def _div(a, t):
    return a if t is None else a / t


# --------------------------------------------------------------------------------------------------
# Online statistics: per block, combined, finished.
# --------------------------------------------------------------------------------------------------


class _Stats(NamedTuple):
    m: jax.Array  # (*batch, 1): running max
    k: jax.Array  # (*batch, 1): entries equal to m
    s: jax.Array  # (*batch, 1): sum of exp((x - m)/t) over the others; 0 on hard rows


def _hard(m, t):
    hard = m == jnp.inf
    return hard if t is None else hard | (t == 0)


def _block_stats(x: jax.Array, t) -> _Stats:
    """Statistics of one block ``x: (*batch, C)`` whose excluded entries are already ``-inf``."""
    m = jnp.max(x, axis=-1, keepdims=True)
    at_max = x == m
    k = jnp.where(m == _NEG_INF, 0, jnp.sum(at_max, axis=-1, keepdims=True, dtype=x.dtype))
    m_fin = jnp.where(jnp.isfinite(m), m, 0)
    e = jnp.exp(_div(x - m_fin, _safe_t(t)))
    s = jnp.sum(jnp.where(at_max, 0, e), axis=-1, keepdims=True)
    # A NaN row keeps its NaN in s (no entry equals a NaN max), so it survives every combine.
    return _Stats(m, k, jnp.where(_hard(m, t), 0, s))


def _rescale(st: _Stats, m_new: jax.Array, t) -> tuple[jax.Array, jax.Array]:
    """``(k, s)`` of ``st`` expressed against the larger max ``m_new``."""
    same = st.m == m_new
    # exp((m_old - m_new) / t): 0 when m_old = -inf or m_new = +inf; NaN when m_new is NaN.
    factor = jnp.exp(_div(st.m - m_new, _safe_t(t)))
    if t is not None:
        # At t = 0 lower maxima carry no mass, but a NaN max (a NaN row) must still reach s:
        # lax.pmax need not propagate NaN, so across devices s is what carries it.
        factor = jnp.where((t == 0) & ~jnp.isnan(st.m), 0, factor)
    return jnp.where(same, st.k, 0), jnp.where(same, st.s, (st.k + st.s) * factor)


def _combine(a: _Stats, b: _Stats, t) -> _Stats:
    m = jnp.maximum(a.m, b.m)  # NaN-propagating
    ka, sa = _rescale(a, m, t)
    kb, sb = _rescale(b, m, t)
    return _Stats(m, ka + kb, sa + sb)


def _log_norm(st: _Stats, t) -> jax.Array:
    """``log(k + s)``, through ``log1p`` when the max is unique (SPEC 2.5)."""
    return jnp.where(~_hard(st.m, t) & (st.k == 1), jnp.log1p(st.s), jnp.log(st.k + st.s))


def _lse_finish(st: _Stats, t) -> jax.Array:
    log_norm = _log_norm(st, t)
    lse = st.m + (log_norm if t is None else t * log_norm)
    return jnp.where(st.m == _NEG_INF, _NEG_INF, lse)


def _block_probs(x: jax.Array, st: _Stats, t) -> jax.Array:
    """softargmax of block ``x`` against the row's final statistics: the gradient of the lse."""
    hard = _hard(st.m, t)
    m_fin = jnp.where(jnp.isfinite(st.m), st.m, 0)
    soft = jnp.exp(_div(x - m_fin, _safe_t(t))) / (st.k + st.s)
    p = jnp.where(hard, (x == st.m) / jnp.maximum(st.k, 1), soft)
    # A NaN row stays NaN, also where it is hard (t = 0), whose indicator would be all 0.
    nan_row = jnp.isnan(st.m) | jnp.isnan(st.s)
    return jnp.where(st.m == _NEG_INF, 0, jnp.where(nan_row, jnp.nan, p))


def _block_pz(x: jax.Array, p: jax.Array, st: _Stats, t) -> jax.Array:
    """``sum_j p_j (x_j - m) / t`` over a block (0 on hard rows): the entropy is ``log_norm`` minus this."""
    m_fin = jnp.where(jnp.isfinite(st.m), st.m, 0)
    pz = jnp.where(p > 0, p * _div(x - m_fin, _safe_t(t)), 0)
    return jnp.where(_hard(st.m, t), 0, jnp.sum(pz, axis=-1, keepdims=True))


# --------------------------------------------------------------------------------------------------
# Walking the class axis in chunks.
# --------------------------------------------------------------------------------------------------


class _Chunking(NamedTuple):
    n: int
    size: int  # chunk length, <= n
    count: int

    def start(self, i):
        # The last chunk is clamped to end at n; its columns below i * size were seen already.
        return jnp.minimum(i * self.size, self.n - self.size)

    def fresh(self, i, start):
        return start + jnp.arange(self.size) >= i * self.size


def _chunking(n: int, chunk_size: int) -> _Chunking:
    size = min(chunk_size, n)
    return _Chunking(n, size, -(-n // size))


def _scan(body, init, count, like=None):
    """``lax.scan`` over chunk indices; a single chunk runs inline (no loop to compile).

    Inside ``shard_map`` the carry varies over the devices that ``like`` (the sharded operand)
    varies over, so the initial carry is cast to match: scan requires equal types in and out.
    """
    if count == 1:
        return body(init, jnp.int32(0))[0]
    if like is not None:
        axes = _varying_axes(like)

        def vary(a):
            missing = tuple(sorted(axes - _varying_axes(a)))
            return lax.pcast(a, missing, to="varying") if missing else a

        init = jax.tree.map(vary, init)
    return lax.scan(body, init, jnp.arange(count, dtype=jnp.int32))[0]


def _varying_axes(a) -> frozenset:
    """The mesh axes ``a`` varies over inside ``shard_map`` (empty elsewhere)."""
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)  # jax >= 0.10; earlier versions call it vma
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def _chunk_of(x, ch: _Chunking, i, mask=None):
    start = ch.start(i)
    xc = lax.dynamic_slice_in_dim(x, start, ch.size, axis=-1)
    keep = ch.fresh(i, start)
    if mask is not None:
        keep = keep & lax.dynamic_slice_in_dim(mask, start, ch.size, axis=-1)
    return xc, keep


def _init_stats(batch, dtype) -> _Stats:
    shape = batch + (1,)
    return _Stats(jnp.full(shape, _NEG_INF, dtype), jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _chunked_stats(x, t, mask, chunk_size) -> _Stats:
    ch = _chunking(x.shape[-1], chunk_size)

    def body(st, i):
        xc, keep = _chunk_of(x, ch, i, mask)
        return _combine(st, _block_stats(jnp.where(keep, xc, _NEG_INF), t), t), None

    return _scan(body, _init_stats(x.shape[:-1], x.dtype), ch.count)


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def _chunked_lse(x, t, mask, chunk_size):
    """``(*batch, 1)`` log-sum-exp of canonical ``x: (*batch, n)``, ``n >= 1``."""
    return _lse_finish(_chunked_stats(x, t, mask, chunk_size), t)


def _chunked_lse_jvp(chunk_size, primals, tangents):
    """``d lse = <p, dx> + H(p) dt``, with ``p`` recomputed chunk by chunk from the final statistics.

    Reverse mode transposes this scan; the residual it keeps is ``p``, the size of ``x`` itself.
    """
    x, t, mask = primals
    dx, dt, _ = tangents
    st = _chunked_stats(x, t, mask, chunk_size)
    lse = _lse_finish(st, t)
    with_dx = not _is_zero(dx)
    with_dt = t is not None and not _is_zero(dt)
    ch = _chunking(x.shape[-1], chunk_size)

    def body(carry, i):
        dot, pz = carry
        xc, keep = _chunk_of(x, ch, i, mask)
        xc = jnp.where(keep, xc, _NEG_INF)
        p = _block_probs(xc, st, t)
        if with_dx:
            dxc = lax.dynamic_slice_in_dim(dx, ch.start(i), ch.size, axis=-1)
            # where, not p * dx: a NaN or inf tangent on an excluded entry must not reach the sum.
            dot = dot + jnp.sum(p * jnp.where(keep, dxc, 0), axis=-1, keepdims=True)
        if with_dt:
            pz = pz + _block_pz(xc, p, st, t)
        return (dot, pz), None

    zero = jnp.zeros_like(lse)
    dot, pz = _scan(body, (zero, zero), ch.count) if (with_dx or with_dt) else (zero, zero)
    dlse = dot
    if with_dt:
        entropy = _log_norm(st, t) - pz
        dlse = dlse + jnp.where(st.m == _NEG_INF, 0, entropy) * dt
    return lse, dlse


_chunked_lse.defjvp(_chunked_lse_jvp, symbolic_zeros=True)


def _check_chunk_size(name: str, chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"{name}: chunk_size must be a positive int, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


@partial(jax.jit, static_argnames=("axes", "chunk_size", "keepdims"))
def _chunked_logsumexp(x, t, where, *, axes, chunk_size, keepdims):
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, "chunked_logsumexp")
    if layout.n == 0:
        out = jnp.full(layout.batch + (1,), _NEG_INF, xc.dtype)
    else:
        out = _chunked_lse(xc, tc, mc, chunk_size)
    return layout.reduced_from_canonical(out.astype(out_dtype), keepdims)


def chunked_logsumexp(
    x: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    chunk_size: int,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""Log-sum-exp computed in chunks along the axis, with an online (streaming) max and sum.

    .. math::
        \mathrm{logsumexp}_t(x) = m + t\,\mathrm{log1p}\Big(\sum_{i \ne k} e^{(x_i - m)/t}\Big),
        \qquad (m, s) \leftarrow \big(m',\ s\,e^{(m - m')/t} + s_{\text{chunk}}\big)

    The same values and edge semantics as :func:`jaxsoft.logsumexp` (SPEC 6), reading
    ``chunk_size`` entries per step of a ``lax.scan``; the gradient (``softargmax_t(x)``) and the
    derivative in ``t`` (the entropy) are computed chunk by chunk too. Useful when the reduced
    axis is produced chunk by chunk or is too long for one fused pass; see
    :func:`linear_cross_entropy` for the case where the logits should never exist at all.

    Args:
      x: input array, e.g. ``[batch, vocab]`` (dtype rules as :func:`jaxsoft.logsumexp`).
      axis: int, tuple of ints or ``None``; a tuple is flattened in the order given and chunked.
      chunk_size: entries per step, ``>= 1``; need not divide the axis length (the last chunk is
        masked), and may exceed it (one chunk).
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` gives ``max(x)``. Differentiable.
      where: optional boolean mask broadcastable to ``x.shape``; ``False`` entries are left out.
      keepdims: keep the reduced axes with size 1.

    Returns:
      Array of ``x``'s shape without ``axis`` (size-1 axes if ``keepdims``), in ``x``'s float dtype.

    Edges: ``-inf`` entries are ignored; any ``+inf`` gives ``+inf`` (gradient uniform over the
    ``+inf`` entries); an all ``-inf``/fully masked row or an empty axis gives ``-inf`` with zero
    gradient; a NaN gives NaN on its row only.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft.large_vocab import chunked_logsumexp
      >>> x = jnp.array([[0.0, -40.0, 1.0, 2.0, -jnp.inf]])
      >>> chunked_logsumexp(x, chunk_size=2)
      Array([2.407606], dtype=float32)
      >>> float(chunked_logsumexp(jnp.array([3.0, 1.0, 3.0]), chunk_size=2, t=0.0))
      3.0
    """
    name = "chunked_logsumexp"
    chunk_size = _check_chunk_size(name, chunk_size)
    x, t_arr, w, axes = _checks.prepare(name, x, axis, t, where)
    return _chunked_logsumexp(x, t_arr, w, axes=axes, chunk_size=chunk_size, keepdims=keepdims)


# --------------------------------------------------------------------------------------------------
# Cross-entropy from chunked statistics (shared with jaxsoft.sharded).
# --------------------------------------------------------------------------------------------------


class _CEStats(NamedTuple):
    st: _Stats  # online lse statistics, (N, 1) each
    xy: jax.Array  # (N, 1): the label's logit (0 where the label is not in these columns)
    xsum: jax.Array | None  # (N, 1): sum of the logits (label smoothing only)


class _CERows(NamedTuple):
    """Per-row results of the forward pass that the backward pass needs."""

    live: jax.Array  # (N,): rows with a gradient (not ignored, finite loss, t > 0)
    nan_row: jax.Array  # (N,): counted rows whose label is out of range
    qz: jax.Array  # (N,): <q, (x - m)/t> for the (smoothed) target q, on live rows


def _ce_block(x, keep, cols, y, t, smoothing) -> _CEStats:
    """Statistics of a block of logits ``x: (N, C)`` (excluded columns at ``-inf``).

    ``cols``: the block's column indices in the same numbering as the labels ``y: (N,)``.
    """
    onehot = (cols == y[:, None]) & keep
    xy = jnp.sum(jnp.where(onehot, x, 0), axis=-1, keepdims=True)
    xsum = jnp.sum(jnp.where(keep, x, 0), axis=-1, keepdims=True) if smoothing else None
    return _CEStats(_block_stats(x, t), xy, xsum)


def _ce_combine(a: _CEStats, b: _CEStats, t) -> _CEStats:
    xsum = None if a.xsum is None else a.xsum + b.xsum
    return _CEStats(_combine(a.st, b.st, t), a.xy + b.xy, xsum)


def _ce_init(n_rows, smoothing) -> _CEStats:
    zero = jnp.zeros((n_rows, 1), _F32)
    return _CEStats(_init_stats((n_rows,), _F32), zero, zero if smoothing else None)


def _ce_finish(cs: _CEStats, labels, valid, t, smoothing: float, n_classes: int):
    """Per-example loss ``(N,)`` and the rows' backward data, matching ``jaxsoft.cross_entropy``."""
    st = cs.st
    m = st.m[:, 0]
    hard = _hard(st.m, t)[:, 0]
    m_fin = jnp.where(jnp.isfinite(m), m, 0)
    log_norm = _log_norm(st, t)[:, 0]
    xy = cs.xy[:, 0]
    # a = (x_y - m) / t <= 0: the label's log-weight against the max; -inf when p_y = 0.
    a = jnp.where(hard, jnp.where(xy == m, 0, _NEG_INF), _div(xy - m_fin, _safe_t(t)))
    a = jnp.where(xy == _NEG_INF, _NEG_INF, a)
    ce_y = jnp.where(a == _NEG_INF, jnp.inf, log_norm - a)
    qz = jnp.where(a == _NEG_INF, 0, a)
    if smoothing:
        mean_x = cs.xsum[:, 0] / n_classes
        mz = jnp.where(hard, 0, _div(mean_x - m_fin, _safe_t(t)))
        # mean_j -log p_j = log_norm - mean_j (x_j - m)/t, +inf once any p_j is 0.
        uniform = jnp.where(mean_x == _NEG_INF, jnp.inf, log_norm - mz)
        uniform = jnp.where(hard, jnp.where(st.k[:, 0] == n_classes, log_norm, jnp.inf), uniform)
        if smoothing == 1:
            loss = uniform
        else:
            loss = (1 - smoothing) * ce_y + smoothing * uniform
        qz = (1 - smoothing) * qz + smoothing * mz
    else:
        loss = ce_y
    zero_row = loss == jnp.inf
    if t is not None:
        zero_row = zero_row | ((t == 0) & ~jnp.isnan(loss))
    nan_row = (labels < 0) | (labels >= n_classes)
    if valid is not None:
        loss = jnp.where(valid, loss, 0)
        zero_row = zero_row | ~valid
        nan_row = nan_row & valid
    loss = jnp.where(nan_row, jnp.nan, loss)
    return loss, _CERows(~zero_row, nan_row, qz)


def _ce_row_scale(g, rows: _CERows, t):
    """``g / t`` on live rows, 0 on the others, NaN on out-of-range labels."""
    scale = _div(g.astype(_F32), _safe_t(t))
    scale = jnp.where(rows.live, scale, 0)
    return jnp.where(rows.nan_row, jnp.nan, scale)


def _ce_block_grad(x, keep, cols, y, st: _Stats, rows: _CERows, scale, t, smoothing, n_classes):
    """``d loss / d x`` for a block: ``(p - q) g / t``, 0 on rows without a gradient.

    Also returns ``sum_j p_j (x_j - m)/t`` per row for the derivative in ``t`` (``None`` if t = 1).
    """
    p = _block_probs(x, st, t)
    q = jnp.where((cols == y[:, None]) & keep, 1 - smoothing, 0)
    if smoothing:
        q = q + jnp.where(keep, smoothing / n_classes, 0)
    # A select, not a product: dead rows (ignored, +inf loss) may hold NaN or inf in p.
    gx = jnp.where(rows.live[:, None], (p - q) * scale[:, None], 0)
    pz = None if t is None else _block_pz(x, p, st, t)[:, 0]
    return gx, pz


def _ce_dt(g, rows: _CERows, pz, t):
    """``d loss / d t = -<p - q, (x - m)/t> / t``, summed over the rows: t is a scalar."""
    dt_row = -(pz - rows.qz) / _safe_t(t) * g.astype(_F32)
    return jnp.sum(jnp.where(rows.live, dt_row, 0))


def _all_reduce(cs: _CEStats, axis_name, t) -> _CEStats:
    """Merge per-device statistics: one ``pmax`` for the max, one ``psum`` for the rest."""
    m = lax.pmax(cs.st.m, axis_name)
    k, s = _rescale(cs.st, m, t)
    k, s, xy, xsum = lax.psum((k, s, cs.xy, cs.xsum), axis_name)
    return _CEStats(_Stats(m, k, s), xy, xsum)


# --------------------------------------------------------------------------------------------------
# Fused linear cross-entropy.
# --------------------------------------------------------------------------------------------------


def _dot(a, b, contract):
    return lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=_F32)


def _head_chunk(h, W, bias, ch: _Chunking, i):
    """Logits of one vocabulary chunk, ``(N, C)`` float32, with already-seen columns at ``-inf``."""
    start = ch.start(i)
    Wc = lax.dynamic_slice_in_dim(W, start, ch.size, axis=1)
    x = _dot(h, Wc, ((1,), (0,)))
    if bias is not None:
        x = x + lax.dynamic_slice_in_dim(bias, start, ch.size).astype(_F32)
    cols = start + jnp.arange(ch.size)
    keep = ch.fresh(i, start)
    return jnp.where(keep, x, _NEG_INF), keep, cols, Wc, start


def _lce_stats(h, W, bias, y, t, chunk_size, smoothing, axis_name) -> _CEStats:
    ch = _chunking(W.shape[1], chunk_size)

    def body(cs, i):
        x, keep, cols, _, _ = _head_chunk(h, W, bias, ch, i)
        return _ce_combine(cs, _ce_block(x, keep, cols, y, t, smoothing), t), None

    cs = _scan(body, _ce_init(h.shape[0], smoothing), ch.count, like=W)
    return cs if axis_name is None else _all_reduce(cs, axis_name, t)


def _n_classes(W, axis_name):
    v = W.shape[1]
    return v if axis_name is None else v * lax.axis_size(axis_name)


def _local_labels(labels, W, axis_name):
    if axis_name is None:
        return labels
    return labels - lax.axis_index(axis_name) * W.shape[1]


# Why a custom_vjp rather than a custom_jvp here: JAX derives reverse mode from a JVP by
# linearising and transposing it, and the linearised scan must save, for every chunk, whatever
# its tangent needs from the primal pass: each chunk's (N, C) probabilities, i.e. the whole (N, V)
# array this function exists to avoid (and a jax.checkpoint around the body cannot drop it, the
# transposed scan still stacks one per chunk). A custom_vjp keeps only h, W, bias and three
# numbers per row, and its backward pass recomputes each chunk's logits from them.
@partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _lce(h, W, bias, t, labels, valid, chunk_size, smoothing, axis_name):
    """Per-example loss ``(N,)`` float32 of ``h: (N, d)``, ``W: (d, V)`` (the same dtype)."""
    return _lce_fwd(h, W, bias, t, labels, valid, chunk_size, smoothing, axis_name)[0]


def _lce_fwd(h, W, bias, t, labels, valid, chunk_size, smoothing, axis_name):
    y = _local_labels(labels, W, axis_name)
    cs = _lce_stats(h, W, bias, y, t, chunk_size, smoothing, axis_name)
    loss, rows = _ce_finish(cs, labels, valid, t, smoothing, _n_classes(W, axis_name))
    return loss, (h, W, bias, t, labels, valid, cs.st, rows)


def _lce_bwd(chunk_size, smoothing, axis_name, res, g):
    h, W, bias, t, labels, valid, st, rows = res
    n_classes = _n_classes(W, axis_name)
    y = _local_labels(labels, W, axis_name)
    ch = _chunking(W.shape[1], chunk_size)
    scale = _ce_row_scale(g, rows, t)
    # Rows without a gradient must not bring a NaN or inf of theirs into dW through h^T @ 0.
    h_live = jnp.where(rows.live[:, None] | rows.nan_row[:, None], h, 0)

    def body(carry, i):
        dh, dW, dbias, pz = carry
        x, keep, cols, Wc, start = _head_chunk(h, W, bias, ch, i)
        gx, pz_c = _ce_block_grad(x, keep, cols, y, st, rows, scale, t, smoothing, n_classes)
        gx_in = gx.astype(W.dtype)
        dh = dh + _dot(gx_in, Wc, ((1,), (1,)))
        # Columns seen before (the clamped last chunk) have gx = 0, so adding is exact.
        dW_c = _dot(h_live, gx_in, ((0,), (0,))).astype(dW.dtype)
        dW = lax.dynamic_update_slice_in_dim(
            dW, lax.dynamic_slice_in_dim(dW, start, ch.size, axis=1) + dW_c, start, axis=1
        )
        if dbias is not None:
            db_c = jnp.sum(gx, axis=0).astype(dbias.dtype)
            dbias = lax.dynamic_update_slice_in_dim(
                dbias, lax.dynamic_slice_in_dim(dbias, start, ch.size) + db_c, start, axis=0
            )
        if pz is not None:
            pz = pz + pz_c
        return (dh, dW, dbias, pz), None

    init = (
        jnp.zeros(h.shape, _F32),
        jnp.zeros(W.shape, W.dtype),
        None if bias is None else jnp.zeros(bias.shape, bias.dtype),
        None if t is None else jnp.zeros(h.shape[:1], _F32),
    )
    dh, dW, dbias, pz = _scan(body, init, ch.count, like=W)
    dt = None
    if t is not None:
        if axis_name is not None:
            pz = lax.psum(pz, axis_name)  # <p, z> over the whole vocabulary, before the row terms
        dt = _ce_dt(g, rows, pz, t).astype(t.dtype)
    if axis_name is not None:
        # h is replicated over the vocabulary shards: its gradient is the sum of theirs.
        dh = lax.psum(dh, axis_name)
    return dh.astype(h.dtype), dW, dbias, dt, _int_zero(labels), _int_zero(valid)


def _int_zero(a):
    return None if a is None else np.zeros(a.shape, jax.dtypes.float0)


_lce.defvjp(_lce_fwd, _lce_bwd)


def _check_linear_args(name, h, W, labels, bias, t, ignore_index, label_smoothing):
    """Eager validation shared with :func:`jaxsoft.sharded.sharded_linear_cross_entropy`."""
    h = _checks.as_array(h, name, "h")
    W = _checks.as_array(W, name, "W")
    for what, a in (("h", h), ("W", W)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name}: {what} must be a float array, got dtype {a.dtype}")
    if h.ndim < 1 or W.ndim != 2 or h.shape[-1] != W.shape[0]:
        raise ValueError(
            f"{name}: expected h of shape [..., d] and W of shape [d, V], got {h.shape} and {W.shape}"
        )
    if W.shape[1] == 0:
        raise ValueError(f"{name}: W of shape {W.shape} has no classes")
    if bias is not None:
        bias = _checks.as_array(bias, name, "bias")
        if bias.shape != (W.shape[1],) or not jnp.issubdtype(bias.dtype, jnp.floating):
            raise ValueError(f"{name}: bias must be a float array of shape {(W.shape[1],)}, got {bias.shape}")
    labels = _checks.as_array(labels, name, "labels")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != h.shape[:-1]:
        raise ValueError(f"{name}: labels of shape {labels.shape} do not match h of shape {h.shape}")
    if ignore_index is not None and (
        isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
    ):
        raise TypeError(f"{name}: ignore_index must be an int or None, got {ignore_index!r}")
    if isinstance(label_smoothing, bool) or not isinstance(
        label_smoothing, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name}: label_smoothing must be a Python float, got {label_smoothing!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{name}: label_smoothing must lie in [0, 1], got {label_smoothing}")
    t_arr = _checks.check_temperature(t, name)
    if t_arr is not None and t_arr.ndim != 0:
        raise ValueError(f"{name}: t must be a scalar, got shape {t_arr.shape}")
    ignore = None if ignore_index is None else int(ignore_index)
    return h, W, labels, bias, t_arr, ignore, float(label_smoothing)


def _check_label_range(name, labels, n_classes, ignore_index):
    if _checks._is_concrete(labels) and labels.size:
        lab = np.asarray(labels)
        bad = (lab < 0) | (lab >= n_classes)
        if ignore_index is not None:
            bad &= lab != ignore_index
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name}: labels must lie in [0, {n_classes}) or equal ignore_index={ignore_index}; "
                f"got {lab[idx]} at index {idx}"
            )


def _prepare_head(h, W, labels, bias, t, ignore_index):
    """Inside jit: flatten the batch, cast to one matmul dtype, labels to int32, t to float32."""
    dtype = jnp.result_type(h.dtype, W.dtype)
    h2 = h.reshape(-1, h.shape[-1]).astype(dtype)
    labels = jnp.clip(labels.reshape(-1), -(2**31), 2**31 - 1).astype(jnp.int32)
    valid = None if ignore_index is None else labels != ignore_index
    if t is not None:
        t = t.astype(_F32)
        # A traced t cannot be checked eagerly: a negative, NaN or infinite one gives NaN.
        t = jnp.where((t >= 0) & (t < jnp.inf), t, jnp.nan)
    return h2, W.astype(dtype), labels, valid, bias, t, dtype


@partial(jax.jit, static_argnames=("chunk_size", "smoothing", "ignore_index"))
def _linear_cross_entropy(h, W, labels, bias, t, *, chunk_size, smoothing, ignore_index):
    h2, W, lab, valid, bias, t, dtype = _prepare_head(h, W, labels, bias, t, ignore_index)
    loss = _lce(h2, W, bias, t, lab, valid, chunk_size, smoothing, None)
    return loss.reshape(labels.shape).astype(dtype)


def linear_cross_entropy(
    h: ArrayLike,
    W: ArrayLike,
    labels: ArrayLike,
    *,
    bias: ArrayLike | None = None,
    chunk_size: int = 2048,
    t: ArrayLike = 1.0,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
    r"""Cross-entropy of a linear head, ``cross_entropy(h @ W + bias, labels)``, without the logits.

    .. math::
        \ell_i = \mathrm{logsumexp}_j\big(z_{ij}\big) - \big((1-\alpha) z_{i y_i}
          + \tfrac{\alpha}{V} \textstyle\sum_j z_{ij}\big),\qquad z = (h W + b) / t

    The ``[N, V]`` logits are never formed, neither forward nor backward: the forward pass is a
    ``lax.scan`` over vocabulary chunks of ``chunk_size`` columns keeping the online log-sum-exp
    statistics, the label's logit and (with smoothing) the logits' sum, per row; the backward pass
    (a custom VJP) recomputes each chunk's logits and accumulates ``dh``, ``dW`` and ``dbias``.
    Temporary memory is ``O(N * chunk_size)`` instead of ``O(N * V)``; the price is one more
    matmul (the forward's, repeated in the backward pass). Matmuls take ``h``/``W`` in their own
    dtype (bf16 stays bf16) and accumulate in float32; the statistics are float32.

    Args:
      h: ``[..., d]`` hidden states (float).
      W: ``[d, V]`` output projection (float); ``V`` need not be a multiple of ``chunk_size``.
      labels: integer class indices of shape ``h.shape[:-1]``; out-of-range labels raise
        ``ValueError`` when concrete and give NaN under ``jit``.
      bias: optional ``[V]``; ``-inf`` entries remove those classes (e.g. vocabulary padding).
      chunk_size: vocabulary columns per step (default 2048): temporaries are a few
        ``[N, chunk_size]`` float32 arrays.
      t: scalar temperature ``>= 0``, differentiable. ``t = 0`` is the hard argmax: loss ``log k``
        when the label is one of ``k`` tied maxima, else ``+inf``; zero gradient.
      ignore_index: examples whose label equals it get loss 0 and zero gradients.
      label_smoothing: ``alpha`` in ``[0, 1]``; the target is ``(1 - alpha) onehot + alpha / V``
        (so a ``-inf`` class gives ``+inf`` loss when ``alpha > 0``).

    Returns:
      Per-example losses of shape ``labels.shape`` in the dtype of ``h @ W``.

    Edges, as :func:`jaxsoft.losses.cross_entropy`: a label on a ``-inf`` logit gives ``+inf``
    with zero gradients for that row; ignored rows give 0 and zero gradients even if ``h`` holds
    NaN there; a NaN in ``h`` makes its row's loss NaN (and, through the shared ``W``, ``dW``).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsoft.large_vocab import linear_cross_entropy
      >>> h = jnp.array([[1.0, 0.0], [0.5, -1.0]])
      >>> W = jnp.array([[2.0, 0.0, -1.0], [0.0, 1.0, 1.0]])
      >>> linear_cross_entropy(h, W, jnp.array([0, 2]), chunk_size=2).tolist()  # doctest: +NUMBER
      [0.16985, 2.69673]
      >>> grad_W = jax.grad(lambda W: linear_cross_entropy(h, W, jnp.array([0, 2])).sum())(W)
      >>> grad_W.shape
      (2, 3)

    .. seealso:: :func:`jaxsoft.sharded.sharded_linear_cross_entropy` for a vocabulary split
       over devices.
    """
    name = "linear_cross_entropy"
    chunk_size = _check_chunk_size(name, chunk_size)
    h, W, labels, bias, t_arr, ignore, smoothing = _check_linear_args(
        name, h, W, labels, bias, t, ignore_index, label_smoothing
    )
    _check_label_range(name, labels, W.shape[1], ignore)
    return _linear_cross_entropy(
        h, W, labels, bias, t_arr, chunk_size=chunk_size, smoothing=smoothing, ignore_index=ignore
    )
