"""Compile time of a jitted ``value_and_grad``: what a user waits for before the first step.

For each function family, ours and its reference peer are traced, lowered and compiled from
scratch (``jax.clear_caches()`` first, and a fresh Python function each time, so nothing is reused),
interleaved round by round like the run-time figures. A figure is the median over the rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bench import peers
from bench.timing import median

SHAPE = (4096, 1024)  # compile time hardly depends on the shape; this is the main table's first


def _vag(family: str, f: Callable) -> Callable:
    if family == "cross_entropy":
        return jax.value_and_grad(lambda x, y: jnp.mean(f(x, y)))
    return jax.value_and_grad(lambda x, g: jnp.sum(f(x) * g))


def _args(family: str, dtype) -> tuple:
    x = jax.ShapeDtypeStruct(SHAPE, dtype)
    if family == "cross_entropy":
        return x, jax.ShapeDtypeStruct(SHAPE[:1], jnp.int32)
    if family in ("logsumexp", "softargmax_mean"):
        return x, jax.ShapeDtypeStruct(SHAPE[:1], dtype)
    return x, jax.ShapeDtypeStruct(SHAPE, dtype)


def _once(family: str, f: Callable, dtype) -> float:
    jax.clear_caches()
    fn = _vag(family, f)  # a new function object: no trace or executable to reuse
    start = time.perf_counter()
    jax.jit(fn).lower(*_args(family, dtype)).compile()
    return time.perf_counter() - start


def run(repeats: int, dtype=jnp.float32) -> list[dict]:
    """One row per (family, impl): median seconds to trace, lower and compile, and the ratio."""
    tables = {peers.OURS: peers.ours(), "jax.nn": peers.jax_nn(), "optax": peers.optax_losses()}
    pairs = []
    for family in peers.FAMILIES:
        ref_impl = peers.REFERENCE[family]
        if family in tables[peers.OURS] and family in tables[ref_impl]:
            pairs.append((family, tables[peers.OURS][family], ref_impl, tables[ref_impl][family]))
    samples: dict[tuple[str, str], list[float]] = {}
    for r in range(repeats):
        for family, ours, ref_impl, ref in pairs:
            order = [(peers.OURS, ours), (ref_impl, ref)]
            for impl, f in order if r % 2 == 0 else order[::-1]:
                samples.setdefault((family, impl), []).append(_once(family, f, dtype))
    rows = []
    for family, _, ref_impl, _ in pairs:
        ours_s, ref_s = samples[(family, peers.OURS)], samples[(family, ref_impl)]
        rows.append(
            {
                "family": family,
                "reference": ref_impl,
                "dtype": jnp.dtype(dtype).name,
                "shape": list(SHAPE),
                "ours_median_s": median(ours_s),
                "reference_median_s": median(ref_s),
                "ours_samples_s": ours_s,
                "reference_samples_s": ref_s,
                "ratio_to_reference": median(ours_s) / median(ref_s),
            }
        )
    return rows
