"""Walking the class axis in chunks, and the mesh-axis typing chunked code needs in ``shard_map``.

A chunked function is a ``lax.scan`` over column blocks of ``size`` entries. The last block need not
be full: it is read from ``n - size`` (a clamped slice) and its columns already seen are masked,
which is a padded block without copying the operand (``x``, or a head ``W``) into a padded buffer.

Inside ``jax.shard_map`` with ``check_vma=True`` every value has a type that says which mesh axes
it varies over. A scan's carry must keep its type, so the initial carry is cast to vary over
every axis its operands vary over (:func:`vary_like`); a custom VJP's cotangent must have its
primal's type, so partial cotangents are summed over the axes the primal does not vary over
(:func:`reduce_cotangent`). With ``check_vma=False`` nothing is typed, and ``shard_map`` itself
divides the output cotangents and sums the input ones (:func:`typed` tells the two apart).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax


class Chunking(NamedTuple):
    n: int
    size: int  # chunk length, <= n
    count: int

    def start(self, i):
        # The last chunk is clamped to end at n; its columns below i * size were seen already.
        return jnp.minimum(i * self.size, self.n - self.size)

    def fresh(self, i, start):
        return start + jnp.arange(self.size) >= i * self.size


def chunking(n: int, chunk_size: int) -> Chunking:
    size = min(chunk_size, n)
    return Chunking(n, size, -(-n // size))


def chunk_of(x, ch: Chunking, i, mask=None, axis: int = -1):
    """Block ``i`` of ``x`` along ``axis`` and the mask of its fresh (and included) columns."""
    start = ch.start(i)
    xc = lax.dynamic_slice_in_dim(x, start, ch.size, axis=axis)
    keep = ch.fresh(i, start)
    if mask is not None:
        keep = keep & lax.dynamic_slice_in_dim(mask, start, ch.size, axis=axis)
    return xc, keep


def scan(body, init, count: int, like=()):
    """``lax.scan`` over chunk indices; a single chunk runs inline (no loop to compile).

    ``like``: the operands the body reads; inside ``shard_map`` the carry is cast to vary over
    every mesh axis they vary over.
    """
    if count == 1:
        return body(init, jnp.int32(0))[0]
    init = vary_like(init, like)
    return lax.scan(body, init, jnp.arange(count, dtype=jnp.int32))[0]


def varying_axes(a) -> frozenset:
    """The mesh axes ``a`` varies over inside ``shard_map`` (empty elsewhere, and untyped)."""
    if a is None:
        return frozenset()
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)  # jax >= 0.10; earlier versions call it vma
    return frozenset(mat.varying) if mat is not None else frozenset(getattr(aval, "vma", ()))


def vary_like(tree, like):
    """Cast every array of ``tree`` to vary over the union of the axes ``like``'s arrays vary over."""
    axes = frozenset().union(*(varying_axes(a) for a in jax.tree.leaves(like)))
    if not axes:
        return tree

    def vary(a):
        missing = tuple(sorted(axes - varying_axes(a)))
        return lax.pcast(a, missing, to="varying") if missing else a

    return jax.tree.map(vary, tree)


def axis_names(axis_name) -> tuple:
    return tuple(axis_name) if isinstance(axis_name, (tuple, list)) else (axis_name,)


def typed(x, axis_name) -> bool:
    """Whether ``shard_map`` checks types here (``check_vma=True``): ``x`` is sharded over
    ``axis_name``, so it varies over it exactly when values carry their mesh-axis types."""
    return set(axis_names(axis_name)) <= varying_axes(x)


def reduce_cotangent(ct, primal):
    """Sum a partial cotangent over the mesh axes it varies over and its primal does not."""
    if ct is None:
        return None
    extra = tuple(sorted(varying_axes(ct) - varying_axes(primal)))
    return lax.psum(ct, extra) if extra else ct
