"""Sampling for batch inference: temperature, top-k, top-p, min-p, sharded; sort-free and jit-stable.

``sample`` draws one index per row from ``softargmax_t(x)`` restricted to SPEC 9.1's kept set,
which ``sampling_mask`` returns, so that ``softargmax(x, t=t, where=sampling_mask(x, ...))`` is
exactly the distribution drawn from. ``sharded_sample`` does the same inside ``jax.shard_map``
with the vocabulary split over a mesh axis and returns the very same indices.

How (the kernel is :mod:`jaxsoft._sampling_kernel`; see also :mod:`jaxsoft._sampling_search` and
:mod:`jaxsoft._sampling_noise`):

* thresholds: top-k and top-p keep ``{x >= tau}``; ``tau`` is found by a fixed 16-step 4-ary
  search over float32 bit patterns (one compare-and-reduce pass per step, exact, no sort);
  masses are summed in fixed point so that every decision is associative and split-invariant;
* draw: the Gumbel-max trick, ``argmax_i (x_i - max x) / t + g_i`` over the kept entries (lowest
  index among ties), with ``g`` the counter-based noise of the entry's global flat index: bit for
  bit ``jax.random.gumbel(key, x.shape)``, and sliceable per device.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxsoft import _checks
from jaxsoft import _sampling_kernel as _kernel
from jaxsoft import _sampling_noise as _noise

_NEG_INF = -jnp.inf


# --------------------------------------------------------------------------------------------------
# Validation (eager, before any jit) and the jitted entry points.
# --------------------------------------------------------------------------------------------------


def _check_param(name: str, what: str, value, layout: _checks.Layout, cdt) -> jax.Array | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: {what} must be a number or an array, got {type(value).__name__}")
    arr = _checks.as_array(value, name, what)
    if what == "top_k":
        if arr.dtype == jnp.bool_ or not jnp.issubdtype(arr.dtype, jnp.integer):
            raise TypeError(f"{name}: top_k must be an integer (or integer array), got {arr.dtype}")
        arr = arr.astype(jnp.int32)
    else:
        if arr.dtype == jnp.bool_ or not (
            jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)
        ):
            raise TypeError(f"{name}: {what} must be real, got dtype {arr.dtype}")
        try:
            v = np.asarray(arr, np.float64)
        except jax.errors.TracerArrayConversionError:
            v = None  # traced: a NaN makes its row -1 (see _filter)
        if v is not None and (np.any(np.isnan(v)) or np.any(v < 0) or np.any(v > 1)):
            raise ValueError(f"{name}: {what} must lie in [0, 1], got {v.min()}..{v.max()}")
        arr = arr.astype(cdt)
    shape = tuple(arr.shape)
    if len(shape) == len(layout.shape) and len(shape) > len(layout.batch):
        if any(shape[a] != 1 for a in layout.axes):
            shape = None
        else:
            shape = tuple(s for i, s in enumerate(shape) if i not in layout.axes)
    try:
        ok = shape is not None and np.broadcast_shapes(shape, layout.batch) == layout.batch
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: {what} of shape {tuple(arr.shape)} must be a scalar or broadcast to one "
            f"value per row, shape {layout.batch}"
        )
    return arr


def _prepare(name, logits, axis, t, top_k, top_p, min_p, where):
    x, t_arr, w, axes = _checks.prepare(name, logits, axis, t, where)
    layout = _checks.make_layout(x.shape, axes)
    cdt = _checks.compute_dtype(_checks.result_dtype(x, name))
    # t always travels as an array, so that t = 1 and any other value share one compiled program.
    t_arr = jnp.ones((), cdt) if t_arr is None else t_arr.astype(cdt)
    extra = tuple(
        _check_param(name, what, v, layout, cdt)
        for what, v in (("top_k", top_k), ("top_p", top_p), ("min_p", min_p))
    )
    return x, w, axes, (t_arr,) + extra


def _canonical(name, x, where, axes, params):
    layout, xc, tc, mc, _ = _checks.canonicalize(x, params[0], where, axes, name)
    rows = int(np.prod(layout.batch, dtype=np.int64))
    x2 = xc.reshape(rows, layout.n)
    m2 = None if mc is None else mc.reshape(rows, layout.n)

    def per_row(v):
        return None if v is None else _checks.canonical_temperature(v, layout).reshape(rows, 1)

    assert tc is not None
    prm = _kernel.Params(tc.reshape(rows, 1), *(per_row(v) for v in params[1:]))
    return layout, x2, m2, prm


@partial(jax.jit, static_argnames=("axes", "return_log_prob"))
def _sample_jit(key_words, x, where, params, *, axes, return_log_prob):
    layout, x2, m2, prm = _canonical("sample", x, where, axes, params)
    if layout.n == 0:
        idx = jnp.full(layout.batch, -1, jnp.int32)
        return idx, (jnp.full(layout.batch, jnp.nan, x2.dtype) if return_log_prob else None)
    comm = _kernel.local_comm(layout.n)
    rows = _kernel.filter_rows(x2, m2, prm, comm, need_e=return_log_prob)
    idx, logp = _kernel.draw(key_words, rows, prm, comm, return_log_prob=return_log_prob)
    idx = idx.reshape(layout.batch)
    return idx, (None if logp is None else logp.reshape(layout.batch))


@partial(jax.jit, static_argnames=("axes",))
def _mask_jit(x, where, params, *, axes):
    layout, x2, m2, prm = _canonical("sampling_mask", x, where, axes, params)
    if layout.n == 0:
        return jnp.zeros(x.shape, jnp.bool_)
    rows = _kernel.filter_rows(x2, m2, prm, _kernel.local_comm(layout.n), need_e=False)
    kept = rows.kept
    if kept is None:  # no filter: the draw's NaN check did not run, so look for NaN here
        nan_row = jnp.any(jnp.isnan(rows.xm), axis=-1, keepdims=True)
        kept = (rows.xm > _NEG_INF) & ~(rows.bad | nan_row)
    if m2 is not None:
        kept = kept & m2
    return layout.from_canonical(kept.reshape(layout.batch + (layout.n,)))


def _log_prob_dtype(x: jax.Array, name: str):
    return _checks.result_dtype(x, name)


def sample(
    key: ArrayLike,
    logits: ArrayLike,
    *,
    axis: int = -1,
    t: ArrayLike = 1.0,
    top_k: ArrayLike | None = None,
    top_p: ArrayLike | None = None,
    min_p: ArrayLike | None = None,
    where: ArrayLike | None = None,
    return_log_prob: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Draw one index per row from the temperature-scaled, filtered softargmax of ``logits``.

    .. math::
        i \sim \mathrm{softargmax}_t(x)\ \text{restricted to } K \text{ and renormalised},\qquad
        i = \arg\max_{j \in K}\ \frac{x_j - \max x}{t} + g_j,\quad g_j \sim \mathrm{Gumbel}(0, 1)

    The kept set ``K`` (SPEC 9.1, returned by :func:`sampling_mask`) is built in order: the entries
    not masked by ``where`` and above ``-inf``; the ``top_k`` largest of those, with every entry
    tied with the k-th; the top-p nucleus of the distribution renormalised over them (the fewest
    entries by decreasing probability whose mass reaches ``top_p``, with every entry tied with the
    last); then the entries with ``p_i >= min_p * max_j p_j``.

    Algorithm: the top-k and top-p cut-offs are thresholds on the logit, found by a fixed 16-step
    4-ary bisection over the float32 bit patterns (one compare-and-sum pass over the row per step,
    two bits at a time; masses in exact fixed point). It is exact, needs no sort (faster than
    ``jnp.sort`` + ``cumsum`` on CPU at vocabulary sizes), compiles to one loop whatever the
    parameters, and splits over devices with ``O(batch)`` traffic (:func:`sharded_sample`). The
    draw is the Gumbel-max trick with ``jax.random.gumbel(key, logits.shape)``'s own noise, so an
    unfiltered draw equals ``jax.random.categorical(key, (x - max x) / t)``.

    Args:
      key: a single PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``, threefry). The rows
        of one call get independent noise; a ``jax.vmap`` that shares one key across mapped calls
        gives them all the same noise (as ``jax.random.categorical`` does), so split the key.
      logits: array, e.g. ``[batch, vocab]``; bf16/f16 are computed in float32.
      axis: the axis the categories run along (an int). Default ``-1``.
      t: temperature ``>= 0``, a scalar or one per row. ``t = 0`` returns the argmax of the
        unmasked entries, the lowest index among ties, whatever the key and the filters.
      top_k: int, scalar or one per row; ``<= 0`` turns the filter off for that row.
      top_p: in ``[0, 1]``, scalar or one per row; ``1`` turns it off, ``0`` keeps the maxima.
      min_p: in ``[0, 1]``, scalar or one per row; ``0`` turns it off.
      where: optional boolean mask broadcastable to ``logits``; ``False`` entries are never drawn.
      return_log_prob: also return ``log softargmax_t(x, where=K)`` at the drawn index (SPEC 9.4).
        At ``t = 0`` that is ``-log k`` for ``k`` tied maxima, though the draw is deterministic.

    ``t``, ``top_k``, ``top_p`` and ``min_p`` may be traced; new values never recompile (new
    shapes do, and so does switching a filter between ``None`` and a value: to mix rows with and
    without a filter pass the "off" value, ``top_k=0``, ``top_p=1``, ``min_p=0``, for those rows).

    Returns:
      int32 indices of ``logits``' shape without ``axis``; with ``return_log_prob`` also their
      log-probabilities (float32, or ``logits``' dtype when wider).

    Edges: a row with nothing to draw (every entry masked or ``-inf``) or holding an unmasked NaN
    returns ``-1`` (log-probability NaN); so does a row whose traced ``t``, ``top_p`` or ``min_p``
    is NaN or a negative ``t``. With ``+inf`` logits only those are drawn, uniformly.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxsoft.sampling import sample
      >>> x = jnp.array([[2.0, 1.0, 1.0, 0.0], [0.0, 5.0, 5.0, -jnp.inf]])
      >>> sample(jax.random.key(0), x, t=jnp.array([1.0, 0.0]), top_k=2).shape
      (2,)
      >>> sample(jax.random.key(0), x, t=0.0)  # greedy: the lowest index among tied maxima
      Array([0, 1], dtype=int32)
      >>> sample(jax.random.key(0), jnp.full((1, 3), -jnp.inf))  # nothing to draw
      Array([-1], dtype=int32)

    .. seealso:: :func:`sampling_mask` (the kept set), :func:`sharded_sample`.
    """
    name = "sample"
    if not isinstance(return_log_prob, (bool, np.bool_)):
        raise TypeError(f"{name}: return_log_prob must be a bool")
    words = _noise.key_words(key, name)
    _check_int_axis(name, axis)
    x, w, axes, params = _prepare(name, logits, axis, t, top_k, top_p, min_p, where)
    idx, logp = _sample_jit(words, x, w, params, axes=axes, return_log_prob=bool(return_log_prob))
    if return_log_prob:
        assert logp is not None
        return idx, logp.astype(jnp.promote_types(logp.dtype, _log_prob_dtype(x, name)))
    return idx


def _check_int_axis(name: str, axis) -> None:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise TypeError(f"{name}: axis must be an int, got {axis!r}")


def sampling_mask(
    logits: ArrayLike,
    *,
    axis: int = -1,
    t: ArrayLike = 1.0,
    top_k: ArrayLike | None = None,
    top_p: ArrayLike | None = None,
    min_p: ArrayLike | None = None,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The kept set of SPEC 9.1: the entries :func:`sample` may draw, as a boolean mask.

    ``softargmax(logits, t=t, where=sampling_mask(logits, ...))`` is exactly the distribution
    :func:`sample` draws from (at ``t = 0`` sample takes the lowest index of the tied maxima).
    Same arguments and algorithm as :func:`sample`.

    Returns:
      bool array of ``logits``' shape. Entries masked by ``where`` or at ``-inf`` are ``False``;
      rows with nothing to draw or holding a NaN are all ``False``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxsoft.sampling import sampling_mask
      >>> x = jnp.array([3.0, 2.0, 2.0, 1.0, 0.0])
      >>> sampling_mask(x, top_k=2)  # the entry tied with the 2nd is kept too
      Array([ True,  True,  True, False, False], dtype=bool)
      >>> sampling_mask(x, top_p=0.6)  # 3.0 alone has mass 0.52
      Array([ True,  True,  True, False, False], dtype=bool)
    """
    name = "sampling_mask"
    _check_int_axis(name, axis)
    x, w, axes, params = _prepare(name, logits, axis, t, top_k, top_p, min_p, where)
    return _mask_jit(x, w, params, axes=axes)


def sharded_sample(
    key: ArrayLike,
    logits_local: ArrayLike,
    axis_name,
    *,
    axis: int = -1,
    t: ArrayLike = 1.0,
    top_k: ArrayLike | None = None,
    top_p: ArrayLike | None = None,
    min_p: ArrayLike | None = None,
    where: ArrayLike | None = None,
    return_log_prob: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r""":func:`sample` inside :func:`jax.shard_map`, with the vocabulary split over ``axis_name``.

    Device ``i`` of ``axis_name`` holds the columns ``[i * V_local, (i + 1) * V_local)`` of the
    ``axis``; the other axes (the rows) and the options are replicated. Returns, on every device,
    bit for bit the indices that :func:`sample` returns for the same key on the gathered logits
    (SPEC 9.5): each device generates the noise of its own columns from their global indices, the
    threshold searches psum integer counts and fixed-point masses (exact, hence order-free), and
    the winner is a ``pmax`` of the best score and a ``pmin`` of its global index. Each search step
    communicates ``O(rows)`` numbers; no device ever holds more than its own block.

    Args:
      key: the same (replicated) key that :func:`sample` would get.
      logits_local: this device's block, e.g. ``[batch, V_local]``.
      axis_name: the mesh axis (or tuple of axes) the vocabulary is split over.
      axis, t, top_k, top_p, min_p, where, return_log_prob: as :func:`sample` (``where`` is this
        device's block of the mask; log-probabilities agree with :func:`sample`'s to rounding).

    Returns:
      Global int32 indices (replicated), and log-probabilities with ``return_log_prob``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from functools import partial
      >>> from jax.sharding import PartitionSpec as P
      >>> from jaxsoft.sampling import sample, sharded_sample
      >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("v",))
      >>> f = jax.jit(jax.shard_map(partial(sharded_sample, axis_name="v", top_k=2),
      ...                           mesh=mesh, in_specs=(P(), P(None, "v")), out_specs=P()))
      >>> x = jnp.array([[0.0, 3.0, 1.0, 3.0]])
      >>> bool((f(jax.random.key(1), x) == sample(jax.random.key(1), x, top_k=2)).all())
      True
    """
    name = "sharded_sample"
    if not isinstance(return_log_prob, (bool, np.bool_)):
        raise TypeError(f"{name}: return_log_prob must be a bool")
    words = _noise.key_words(key, name)
    _check_int_axis(name, axis)
    x, w, axes, params = _prepare(name, logits_local, axis, t, top_k, top_p, min_p, where)
    layout, x2, m2, prm = _canonical(name, x, w, axes, params)
    comm = _kernel.axis_comm(axis_name, layout.n)
    rows = _kernel.filter_rows(x2, m2, prm, comm, need_e=bool(return_log_prob))
    idx, logp = _kernel.draw(words, rows, prm, comm, return_log_prob=bool(return_log_prob))
    idx = idx.reshape(layout.batch)
    if return_log_prob:
        assert logp is not None
        out_dtype = jnp.promote_types(logp.dtype, _log_prob_dtype(x, name))
        return idx, logp.reshape(layout.batch).astype(out_dtype)
    return idx
