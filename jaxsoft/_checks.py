"""Argument validation, dtype promotion and the canonical layout shared by every public function.

Every public function of jaxsoft reduces over one or more axes. Rather than teaching each numerical
kernel about tuples of axes, masks and per-row temperatures, we validate once here and bring the
input into a canonical layout: the reduced axes moved last and flattened into one axis of length
``n``, the mask broadcast to the same shape, and the temperature broadcast to ``batch + (1,)``.
Kernels then only ever reduce over ``axis=-1`` with ``keepdims=True``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer
from jax.typing import ArrayLike

Axis = int | Sequence[int] | None


def canonicalize_axis(axis: Axis, ndim: int, *, name: str = "axis") -> tuple[int, ...]:
    """Return ``axis`` as a sorted-by-appearance tuple of non-negative ints, validating it."""
    if axis is None:
        return tuple(range(ndim))
    try:
        axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    except TypeError:
        raise TypeError(f"{name} must be an int or a tuple of ints, got {axis!r}") from None
    out = []
    for a in axes:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name} must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            raise ValueError(f"{name} {a} is out of bounds for array of dimension {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name} contains a repeated axis: {axis!r}")
    return tuple(out)


def result_dtype(x: jax.Array, name: str) -> np.dtype:
    """The dtype a function returns for ``x``: floats keep theirs, ints and bools promote."""
    if not (jnp.issubdtype(x.dtype, jnp.number) or x.dtype == jnp.bool_):
        raise TypeError(f"{name}: x must be a numeric array, got dtype {x.dtype}")
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        raise TypeError(
            f"{name}: complex input is not supported (softmax needs an ordering), got {x.dtype}"
        )
    return jnp.result_type(x.dtype, float)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """bf16/f16 are accumulated in float32; wider floats are used as they are."""
    if jnp.finfo(dtype).bits < 32:
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)


def as_array(x: ArrayLike, name: str, what: str = "x") -> jax.Array:
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"{name}: {what} must be an array-like of numbers, got {type(x).__name__}")
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{name}: {what} must be an array-like of numbers, got {type(x).__name__}"
        ) from e


def _is_concrete(v) -> bool:
    return not isinstance(v, Tracer)


def is_unit_temperature(t) -> bool:
    """True when ``t`` is the Python/NumPy scalar 1, so kernels can skip the division by ``t``."""
    return (
        isinstance(t, (int, float, np.integer, np.floating)) and not isinstance(t, bool) and t == 1
    )


def check_temperature(t: ArrayLike, name: str) -> jax.Array | None:
    """Validate ``t``; returns ``None`` for the unit temperature."""
    if is_unit_temperature(t):
        return None
    if isinstance(t, (str, bytes, bool)) or t is None:
        raise TypeError(f"{name}: t must be a non-negative real number or array, got {t!r}")
    t_arr = as_array(t, name, "t")
    if not (jnp.issubdtype(t_arr.dtype, jnp.integer) or jnp.issubdtype(t_arr.dtype, jnp.floating)):
        raise TypeError(f"{name}: t must be real, got dtype {t_arr.dtype}")
    if _is_concrete(t_arr):
        # A Python or NumPy t is checked on the host, from the value given: reading back the
        # device copy would wait for a device round trip on every eager call.
        tv = np.asarray(t_arr if isinstance(t, jax.Array) else t, dtype=np.float64)
        if np.any(np.isnan(tv)):
            raise ValueError(f"{name}: t must not be NaN")
        if np.any(tv < 0):
            raise ValueError(
                f"{name}: t must be >= 0 (t = 0 is the hard argmax), got min {tv.min()}"
            )
        if np.any(np.isinf(tv)):
            raise ValueError(f"{name}: t must be finite, got inf")
    return t_arr


def check_where(where: ArrayLike | None, shape: tuple[int, ...], name: str) -> jax.Array | None:
    if where is None:
        return None
    w = as_array(where, name, "where")
    if w.dtype != jnp.bool_:
        raise TypeError(f"{name}: where must be a boolean array, got dtype {w.dtype}")
    try:
        if np.broadcast_shapes(w.shape, shape) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ValueError(
            f"{name}: where of shape {w.shape} does not broadcast to x of shape {shape}"
        ) from None
    return w


def check_scale(b: ArrayLike, shape: tuple[int, ...], name: str) -> jax.Array:
    """Validate logsumexp's scale factors ``b``: real numbers broadcastable to ``x``'s shape."""
    b_arr = as_array(b, name, "b")
    if not (jnp.issubdtype(b_arr.dtype, jnp.number) or b_arr.dtype == jnp.bool_):
        raise TypeError(f"{name}: b must be a numeric array, got dtype {b_arr.dtype}")
    if jnp.issubdtype(b_arr.dtype, jnp.complexfloating):
        raise TypeError(f"{name}: complex b is not supported, got {b_arr.dtype}")
    try:
        ok = np.broadcast_shapes(b_arr.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: b of shape {b_arr.shape} does not broadcast to x of shape {shape}"
        )
    return b_arr


def check_flag(value, name: str, what: str) -> bool:
    """A static boolean option (``keepdims``, ``return_sign``): a Python or NumPy bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: {what} must be a bool, got {value!r}")
    return bool(value)


class Layout(NamedTuple):
    """Static description of how the canonical ``(*batch, n)`` layout maps back to the input."""

    shape: tuple[int, ...]  # input shape
    axes: tuple[int, ...]  # reduced axes, canonical
    batch: tuple[int, ...]  # shape of the non-reduced axes, in input order
    n: int  # product of reduced sizes

    @property
    def reduced_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[a] for a in self.axes)

    def keepdims_shape(self) -> tuple[int, ...]:
        return tuple(1 if i in self.axes else s for i, s in enumerate(self.shape))

    def to_canonical(self, a: jax.Array) -> jax.Array:
        """``a`` of the input's shape -> ``(*batch, n)``."""
        k = len(self.axes)
        moved = jnp.moveaxis(a, self.axes, tuple(range(-k, 0))) if k else a[..., None]
        return moved.reshape(self.batch + (self.n,))

    def from_canonical(self, a: jax.Array) -> jax.Array:
        """``(*batch, n)`` -> the input's shape."""
        k = len(self.axes)
        if not k:
            return a[..., 0]
        a = a.reshape(self.batch + self.reduced_shape)
        return jnp.moveaxis(a, tuple(range(-k, 0)), self.axes)

    def reduced_from_canonical(self, a: jax.Array, keepdims: bool) -> jax.Array:
        """``(*batch, 1)`` -> the reduced shape (with size-1 reduced axes when ``keepdims``)."""
        a = a[..., 0]
        return a.reshape(self.keepdims_shape()) if keepdims else a


def make_layout(shape: tuple[int, ...], axes: tuple[int, ...]) -> Layout:
    batch = tuple(s for i, s in enumerate(shape) if i not in axes)
    return Layout(tuple(shape), axes, batch, math.prod(shape[a] for a in axes))


def temperature_shape_error(name: str, t_shape, layout: Layout) -> ValueError:
    return ValueError(
        f"{name}: t of shape {tuple(t_shape)} must broadcast to the reduced shape {layout.batch} "
        f"(or, with the input's rank, to {layout.keepdims_shape()})"
    )


def canonical_temperature(t: jax.Array, layout: Layout) -> jax.Array:
    """Broadcast a validated ``t`` to ``(*batch, 1)``.

    ``t`` may be a scalar, an array broadcastable to the reduced shape (``batch``, the output shape
    without ``keepdims``), or an array of the input's rank with size 1 on every reduced axis.
    """
    if t.ndim == len(layout.shape) and t.ndim > len(layout.batch):
        t = t.reshape(tuple(s for i, s in enumerate(t.shape) if i not in layout.axes))
    return jnp.broadcast_to(t, layout.batch)[..., None]


def canonical_scale(b: jax.Array, layout: Layout, dtype) -> jax.Array:
    """Inside jit: ``b`` broadcast to the input's shape, in ``(*batch, n)`` layout and ``dtype``."""
    return layout.to_canonical(jnp.broadcast_to(b.astype(dtype), layout.shape))


class Prepared(NamedTuple):
    x: jax.Array
    t: jax.Array | None
    where: jax.Array | None
    axes: tuple[int, ...]


def prepare(name: str, x: ArrayLike, axis: Axis, t: ArrayLike, where: ArrayLike | None) -> Prepared:
    """Validate the arguments every public function shares. Runs eagerly, before any jit."""
    x = as_array(x, name)
    result_dtype(x, name)
    axes = canonicalize_axis(axis, x.ndim)
    t_arr = check_temperature(t, name)
    if t_arr is not None:
        layout = make_layout(x.shape, axes)
        # Fail here, with the user's shapes in the message, rather than inside a trace.
        _check_temperature_shape(t_arr.shape, layout, name)
    w = check_where(where, x.shape, name)
    return Prepared(x, t_arr, w, axes)


def _check_temperature_shape(t_shape, layout: Layout, name: str) -> None:
    shape = tuple(t_shape)
    if len(shape) == len(layout.shape) and len(shape) > len(layout.batch):
        if any(shape[a] != 1 for a in layout.axes):
            raise temperature_shape_error(name, shape, layout)
        shape = tuple(s for i, s in enumerate(shape) if i not in layout.axes)
    try:
        ok = np.broadcast_shapes(shape, layout.batch) == layout.batch
    except ValueError:
        ok = False
    if not ok:
        raise temperature_shape_error(name, t_shape, layout)


def canonicalize(
    x: jax.Array, t: jax.Array | None, where: jax.Array | None, axes: tuple[int, ...], name: str
) -> tuple[Layout, jax.Array, jax.Array | None, jax.Array | None, np.dtype]:
    """Inside jit: move to the canonical layout and cast to the compute dtype.

    Returns ``(layout, x, t, mask, out_dtype)`` with ``x``/``mask`` of shape ``(*batch, n)`` and
    ``t`` of shape ``(*batch, 1)`` (or ``None`` for ``t = 1``).
    """
    out_dtype = result_dtype(x, name)
    cdt = compute_dtype(out_dtype)
    layout = make_layout(x.shape, axes)
    xc = layout.to_canonical(x.astype(cdt))
    tc = None
    if t is not None:
        tc = canonical_temperature(t.astype(cdt), layout)
        # A traced t cannot be checked eagerly: a negative, NaN or infinite one makes its rows NaN.
        tc = jnp.where((tc >= 0) & (tc < jnp.inf), tc, jnp.nan)
    mc = None if where is None else layout.to_canonical(jnp.broadcast_to(where, x.shape))
    return layout, xc, tc, mc, out_dtype


# --------------------------------------------------------------------------------------------------
# The losses' options: labels, where, label smoothing, ignore_index, chunk_size, reduction.
# Types that cannot be right raise TypeError; values out of their range raise ValueError.
# --------------------------------------------------------------------------------------------------

REDUCTIONS = ("none", "mean", "sum")
_INT32 = (-(2**31), 2**31 - 1)


def is_concrete(v) -> bool:
    """Whether ``v`` holds values that can be checked now (not a tracer under ``jit``)."""
    return _is_concrete(v)


def labels_int32(labels: jax.Array) -> jax.Array:
    """Cast integer labels to int32, saturating: a label beyond int32 stays out of range.

    The one label cast of the library. No axis has ``2**31`` classes, so every label in range fits;
    a traced out-of-range one saturates instead of wrapping into range (and then gives NaN).
    """
    info = jnp.iinfo(labels.dtype)
    if info.min >= _INT32[0] and info.max <= _INT32[1]:
        return labels.astype(jnp.int32)
    lo = np.array(max(int(info.min), _INT32[0]), labels.dtype)
    hi = np.array(min(int(info.max), _INT32[1]), labels.dtype)
    return jnp.clip(labels, lo, hi).astype(jnp.int32)


def check_labels(
    name: str,
    labels: ArrayLike,
    batch: tuple[int, ...],
    n_classes: int | None,
    ignore_index: int | None,
    *,
    against: str = "",
) -> jax.Array:
    """Validate integer class labels of shape ``batch``; returns them as int32.

    Concrete labels are range-checked against ``[0, n_classes)`` (``ignore_index`` allowed) on their
    own values, before any cast: an int64 NumPy label of ``2**32 + 1`` must not wrap to class 1
    when float64/int64 are off. ``n_classes=None`` skips the range check (sharded: the number of
    classes is only known inside ``shard_map``). Traced labels are cast with saturation.
    """
    if isinstance(labels, (str, bytes)) or labels is None:
        raise TypeError(f"{name}: labels must be an array of integers, got {type(labels).__name__}")
    concrete = not isinstance(labels, Tracer)
    raw: Any
    if concrete and not isinstance(labels, jax.Array):
        try:
            raw = np.asarray(labels)
        except (TypeError, ValueError) as e:
            raise TypeError(
                f"{name}: labels must be an array of integers, got {type(labels).__name__}"
            ) from e
        dtype, shape = raw.dtype, raw.shape
    else:
        raw = labels
        dtype, shape = labels.dtype, labels.shape
    if not np.issubdtype(dtype, np.integer):
        raise TypeError(
            f"{name}: labels must be integer class indices, got dtype {dtype}; "
            "for one-hot or probability targets use cross_entropy_with_probs"
        )
    if tuple(shape) != tuple(batch):
        raise ValueError(
            f"{name}: labels of shape {tuple(shape)} do not match {against or 'the batch'}: "
            f"expected {tuple(batch)}"
        )
    if concrete and n_classes is not None and math.prod(shape):
        lab = np.asarray(raw)
        bad = (lab < 0) | (lab >= n_classes)
        if ignore_index is not None:
            bad &= lab != ignore_index
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{name}: labels must lie in [0, {n_classes}) or equal "
                f"ignore_index={ignore_index}; got {lab[idx]} at index {idx}"
            )
        if isinstance(raw, np.ndarray):
            # Every value is now in int32 range (ignore_index is checked to be).
            return jnp.asarray(raw.astype(np.int32))
    return labels_int32(jnp.asarray(raw))


def check_ignore_index(name: str, ignore_index) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        raise TypeError(f"{name}: ignore_index must be an int or None, got {ignore_index!r}")
    if not _INT32[0] <= ignore_index <= _INT32[1]:
        raise ValueError(f"{name}: ignore_index must fit in int32, got {ignore_index}")
    return int(ignore_index)


def check_smoothing(name: str, smoothing) -> float:
    if isinstance(smoothing, bool) or not isinstance(
        smoothing, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"{name}: label_smoothing must be a Python float, got {smoothing!r}")
    smoothing = float(smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must lie in [0, 1], got {smoothing}")
    return smoothing


def check_chunk_size(name: str, chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"{name}: chunk_size must be a positive int, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"{name}: chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


def check_reduction(name: str, reduction) -> str:
    if not isinstance(reduction, str):
        raise TypeError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_scalar_temperature(name: str, t: ArrayLike) -> jax.Array | None:
    """A scalar ``t >= 0`` (the fused and sharded heads take one temperature)."""
    t_arr = check_temperature(t, name)
    if t_arr is not None and t_arr.ndim != 0:
        raise ValueError(f"{name}: t must be a scalar, got shape {t_arr.shape}")
    return t_arr


def traced_temperature(t: jax.Array | None, dtype) -> jax.Array | None:
    """Cast ``t`` to ``dtype``; a traced negative, NaN or infinite ``t`` becomes NaN (its rows NaN)."""
    if t is None:
        return None
    t = t.astype(dtype)
    return jnp.where((t >= 0) & (t < jnp.inf), t, jnp.nan)


def check_loss_where(
    name: str, where: ArrayLike | None, shape: tuple[int, ...], axes: tuple[int, ...]
) -> jax.Array | None:
    """A loss's ``where``, as an element mask of the logits' rank.

    As in optax, ``where`` is either an element mask broadcastable to the logits (the logits'
    rank) or a per-example mask broadcastable to the batch shape (the logits' shape without
    ``axes``, the labels' rank), which leaves out whole examples. A ``where`` of any other rank
    is ambiguous and raises: a class mask is given with the logits' rank (e.g. ``[None, :]``).
    """
    if where is None:
        return None
    w = as_array(where, name, "where")
    if w.dtype != jnp.bool_:
        raise TypeError(f"{name}: where must be a boolean array, got dtype {w.dtype}")
    batch = tuple(s for i, s in enumerate(shape) if i not in axes)
    if w.ndim == len(shape):
        target, what = tuple(shape), f"the logits of shape {tuple(shape)}"
    elif w.ndim == len(batch):
        target, what = batch, f"the batch {batch} (a per-example mask)"
    else:
        raise ValueError(
            f"{name}: where of shape {w.shape} must have the logits' rank {len(shape)} (an element "
            f"mask) or the batch's rank {len(batch)} (a per-example mask, as optax); for a class "
            "mask add the batch axes, e.g. where[None, :]"
        )
    try:
        ok = np.broadcast_shapes(w.shape, target) == target
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: where of shape {w.shape} does not broadcast to {what}")
    if w.ndim == len(shape):
        return w
    w = jnp.broadcast_to(w, batch)
    return jnp.expand_dims(w, axes) if axes else w


def check_z_loss(name: str, z_loss) -> float:
    """``z_loss``: a Python float ``>= 0`` (static: 0 emits no z-loss code)."""
    if isinstance(z_loss, bool) or not isinstance(z_loss, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: z_loss must be a Python float >= 0, got {z_loss!r}")
    value = float(z_loss)
    if not (0.0 <= value < float("inf")):
        raise ValueError(f"{name}: z_loss must be a finite number >= 0, got {value}")
    return value
