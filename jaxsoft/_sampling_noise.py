"""Counter-based Gumbel noise for :mod:`jaxsoft.sampling`: one value per (row, global column).

The noise of entry ``(r, j)`` of a canonical ``[rows, n]`` block is a pure function of the key and
of its flat index ``r * n + j``: ``threefry2x32(key, (hi, lo))`` of that 64-bit counter, the two
output words XOR-ed and turned into a Gumbel variate exactly as ``jax.random.gumbel`` does it. So

* it is, bit for bit, ``jax.random.gumbel(key, (rows, n))`` (with ``jax_threefry_partitionable``,
  the default since jax 0.5), which makes an unfiltered draw at ``t = 1`` the same index as
  ``jax.random.categorical(key, x - max(x))``;
* a device that holds the columns ``[offset, offset + n_local)`` of the row computes exactly its
  slice of that array, without generating the rest: the vocabulary-sharded sampler needs this to
  draw the same index as the unsharded one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p


def key_words(key, name: str) -> tuple[jax.Array, jax.Array]:
    """The two uint32 words of a single threefry key (typed ``jax.random.key`` or raw ``PRNGKey``)."""
    if not isinstance(key, (jax.Array, np.ndarray)):
        raise TypeError(
            f"{name}: key must be a PRNG key from jax.random.key or jax.random.PRNGKey, "
            f"got {type(key).__name__}"
        )
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim != 0:
            raise ValueError(
                f"{name}: key must be a single PRNG key, got shape {key.shape}; "
                "jax.vmap over a batch of keys to draw independent samples"
            )
        impl = str(jax.random.key_impl(key))
        if "threefry" not in impl:
            raise TypeError(f"{name}: key must be a threefry key (jax's default), got {impl}")
        data = jax.random.key_data(key)
    elif key.dtype == jnp.uint32:
        if key.shape != (2,):
            raise ValueError(
                f"{name}: key must be a single threefry key of shape (2,), got shape {key.shape}; "
                "jax.vmap over a batch of keys to draw independent samples"
            )
        data = key
    else:
        raise TypeError(f"{name}: key must be a PRNG key, got an array of dtype {key.dtype}")
    data = jnp.asarray(data)
    return data[0], data[1]


def _counters(rows: int, n: int, cols: jax.Array) -> tuple[jax.Array, jax.Array]:
    """High and low uint32 words of the flat index ``r * n + cols`` for ``r < rows``."""
    # r * n is static: form it exactly in NumPy's uint64 and add the (traced) column with a carry.
    base = np.arange(rows, dtype=np.uint64)[:, None] * np.uint64(n)
    base_hi = jnp.asarray((base >> np.uint64(32)).astype(np.uint32))
    base_lo = jnp.asarray((base & np.uint64(0xFFFFFFFF)).astype(np.uint32))
    lo = base_lo + cols.astype(jnp.uint32)[None, :]
    hi = base_hi + (lo < base_lo).astype(jnp.uint32)
    return hi, lo


def gumbel(
    words: tuple[jax.Array, jax.Array],
    rows: int,
    n: int,
    offset: jax.Array | int,
    n_local: int,
    dtype,
) -> jax.Array:
    """Columns ``[offset, offset + n_local)`` of ``jax.random.gumbel(key, (rows, n), dtype)``.

    ``dtype`` is float32 or float64 (the compute dtypes); the arithmetic mirrors jax's "low" mode:
    ``-log(-log(u))`` with ``u`` uniform on ``[tiny, 1)`` from the top mantissa bits.
    """
    cols = jnp.asarray(offset, jnp.uint32) + jnp.arange(n_local, dtype=jnp.uint32)
    hi, lo = _counters(rows, n, cols)
    # Scalar key words, as jax.random passes them: broadcast ones would be materialised.
    b1, b2 = threefry2x32_p.bind(words[0], words[1], hi, lo)
    finfo = jnp.finfo(dtype)
    if finfo.bits == 64:
        bits = (b1.astype(jnp.uint64) << jnp.uint64(32)) | b2.astype(jnp.uint64)
        one = np.array(1.0, np.float64).view(np.uint64)
    else:
        bits = b1 ^ b2
        one = np.array(1.0, np.float32).view(np.uint32)
    uint = bits.dtype
    mant = jax.lax.shift_right_logical(bits, jnp.asarray(finfo.bits - finfo.nmant, uint))
    floats = jax.lax.bitcast_convert_type(mant | jnp.asarray(one, uint), dtype) - jnp.asarray(
        1.0, dtype
    )
    tiny = jnp.asarray(finfo.tiny, dtype)
    u = jnp.maximum(tiny, floats * (jnp.asarray(1.0, dtype) - tiny) + tiny)
    return -jnp.log(-jnp.log(u))
