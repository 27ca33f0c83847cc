"""The sampling kernel of :mod:`jaxsoft.sampling`, on canonical ``[rows, n]`` blocks.

A block is the whole row (``sample``) or one device's columns of it (``sharded_sample``); the only
difference is :class:`Comm`, whose reductions are identities in the first case and collectives over
the vocabulary axis in the second. Every cross-column decision goes through an exact reduction
(integer counts and fixed-point masses, max, min), so both give the same indices bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsoft import _sampling_noise as _noise
from jaxsoft import _sampling_search as _search

_NEG_INF = -jnp.inf


class Params(NamedTuple):
    """Per-row options, each ``[rows, 1]`` (``None``: the filter is off and not compiled in)."""

    t: jax.Array
    top_k: jax.Array | None
    top_p: jax.Array | None
    min_p: jax.Array | None


class Comm(NamedTuple):
    """Cross-device reductions over the vocabulary axis (identities when it is not split)."""

    psum: Callable
    pmax: Callable
    pmin: Callable
    offset: jax.Array | int  # global index of this block's first column
    n: int  # global row length


def local_comm(n: int) -> Comm:
    ident = lambda v: v
    return Comm(ident, ident, ident, 0, n)


def axis_comm(axis_name, n_local: int) -> Comm:
    size = lax.axis_size(axis_name)
    return Comm(
        partial(lax.psum, axis_name=axis_name),
        partial(lax.pmax, axis_name=axis_name),
        partial(lax.pmin, axis_name=axis_name),
        lax.axis_index(axis_name) * n_local,
        n_local * size,
    )


class Rows(NamedTuple):
    xm: jax.Array  # logits with excluded entries at -inf
    m: jax.Array  # row max (global), [rows, 1]
    hard: jax.Array  # rows whose mass sits on the maxima: t = 0, or a +inf logit
    bad: jax.Array  # rows that return -1: a NaN logit, or a NaN (invalid traced) parameter
    kept: jax.Array | None  # the kept set, None when no filter is on (every entry above -inf)
    e: jax.Array | None  # p_i / max p, when computed


def _relative_probs(xm, m, hard, t):
    """``e_i = p_i / max p``: ``exp((x_i - m) / t)``, or the 0/1 indicator of the maxima."""
    m_safe = jnp.where(jnp.isfinite(m), m, 0)
    t_safe = jnp.where(t > 0, t, 1)
    return jnp.where(hard, (xm == m).astype(xm.dtype), jnp.exp((xm - m_safe) / t_safe))


def filter_rows(x, mask, prm: Params, comm: Comm, *, need_e: bool) -> Rows:
    xm = x if mask is None else jnp.where(mask, x, _NEG_INF)
    bad = jnp.zeros(xm.shape[:-1] + (1,), jnp.bool_)
    for v in (prm.t, prm.top_p, prm.min_p):
        if v is not None:
            bad = bad | jnp.isnan(v)
    m = comm.pmax(jnp.max(xm, axis=-1, keepdims=True))
    hard = (prm.t == 0) | (m == jnp.inf)
    filtering = prm.top_k is not None or prm.top_p is not None or prm.min_p is not None
    e = _relative_probs(xm, m, hard, prm.t) if (filtering or need_e) else None
    kept = None
    if filtering:
        assert e is not None
        # XLA:CPU's max reduction may drop NaN, so a NaN row is found by counting. (Without a
        # filter the draw finds it: a NaN score wins the argmax.)
        nans = jnp.sum(jnp.isnan(xm), axis=-1, keepdims=True, dtype=jnp.int32)
        bad = bad | (comm.psum(nans) > 0)
        cand = xm
        if prm.top_k is not None:
            tau_k = _search.top_k_threshold(xm, prm.top_k, comm.psum)
            cand = jnp.where(xm >= tau_k, xm, _NEG_INF)
        if prm.top_p is not None:
            tau_p = _search.top_p_threshold(cand, e, m, prm.top_p, comm.n, comm.psum)
            cand = jnp.where(cand >= tau_p, cand, _NEG_INF)
        kept = cand > _NEG_INF
        if prm.min_p is not None:
            kept = kept & (e >= jnp.minimum(prm.min_p, 1))
        kept = kept & ~bad
    return Rows(xm, m, hard, bad, kept, e)


def _max_argmax(score: jax.Array, offset) -> tuple[jax.Array, jax.Array]:
    """Row max and its lowest (global) index in one variadic reduction; a NaN wins (and shows)."""
    idx = lax.broadcasted_iota(jnp.int32, score.shape, score.ndim - 1) + offset

    def pick(a, b):
        av, ai = a
        bv, bi = b
        take_a = (av > bv) | (av != av) | ((av == bv) & (ai < bi))
        return jnp.where(take_a, av, bv), jnp.where(take_a, ai, bi)

    init = (jnp.asarray(_NEG_INF, score.dtype), jnp.asarray(np.iinfo(np.int32).max, jnp.int32))
    best, arg = lax.reduce((score, idx), init, pick, (score.ndim - 1,))
    return best[..., None], arg[..., None]


def draw(words, rows: Rows, prm: Params, comm: Comm, *, return_log_prob: bool):
    """Gumbel-max over the kept entries; ``-1`` for rows with nothing to draw or a NaN."""
    xm, m, hard, t = rows.xm, rows.m, rows.hard, prm.t
    nrows, n_local = xm.shape
    g = _noise.gumbel(words, nrows, comm.n, comm.offset, n_local, xm.dtype)
    m_safe = jnp.where(jnp.isfinite(m), m, 0)
    t_safe = jnp.where(t > 0, t, 1)
    # Hard rows: 0 on the maxima, -inf elsewhere, NaN kept (so that the argmax reports it).
    z_hard = jnp.where(xm == m, 0, jnp.where(xm != xm, jnp.nan, _NEG_INF))
    z = jnp.where(hard, z_hard, (xm - m_safe) / t_safe)
    score = z + g * (t > 0).astype(xm.dtype)  # t = 0: no noise, the lowest index wins
    if rows.kept is not None:
        score = jnp.where(rows.kept, score, _NEG_INF)
    best, arg = _max_argmax(score, comm.offset)
    bad = rows.bad | (comm.psum(jnp.isnan(best).astype(jnp.int32)) > 0)
    best = jnp.where(jnp.isnan(best), _NEG_INF, best)
    gbest = comm.pmax(best)
    big = jnp.asarray(np.iinfo(np.int32).max, jnp.int32)
    arg = comm.pmin(jnp.where(best == gbest, arg, big))
    # m = -inf: nothing to draw (at t = 0 the -inf entries would tie with m and score 0).
    ok = (gbest > _NEG_INF) & (m > _NEG_INF) & ~bad
    idx = jnp.where(ok, arg, -1)
    if not return_log_prob:
        return idx, None
    # log p = z_idx - log(sum over the kept set of e), the sum split as (count of maxima) + rest so
    # that a dominant entry keeps its log1p digits (SPEC 3.2).
    e = rows.e
    assert e is not None
    kept = xm > _NEG_INF if rows.kept is None else rows.kept
    at_max = kept & (xm == m)
    c = comm.psum(jnp.sum(at_max, axis=-1, keepdims=True, dtype=jnp.int32)).astype(xm.dtype)
    s = comm.psum(jnp.sum(jnp.where(kept & ~at_max, e, 0), axis=-1, keepdims=True))
    log_total = jnp.where(c == 1, jnp.log1p(s), jnp.log(jnp.maximum(c, 1) + s))
    local = jnp.clip(idx - comm.offset, 0, n_local - 1)
    own = (idx - comm.offset >= 0) & (idx - comm.offset < n_local)
    z_at = jnp.take_along_axis(jnp.where(jnp.isfinite(z), z, 0), local, axis=-1)
    z_idx = comm.psum(jnp.where(own, z_at, 0))
    logp = jnp.where(ok, z_idx - log_total, jnp.nan)
    return idx, logp
