"""Wall-clock timing of several callables, interleaved so that drift hits all of them alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2
) -> dict[str, list[float]]:
    """Time each zero-argument callable ``repeats`` times, round-robin, after ``warmup`` calls each.

    A round visits every callable once, in an order rotated by one each round, so a slow spell on
    a shared machine lands on every candidate rather than on whichever happened to run then, and
    no candidate always runs straight after the same neighbour (whose cache footprint it inherits).

    Returns:
      ``{name: [seconds, ...]}`` with ``repeats`` samples each. Results are NumPy or JAX values
      and are waited on with :func:`jax.block_until_ready` (a no-op for NumPy and PyTorch).
    """
    names = list(fns)
    for name in names:  # compile, fill caches, let allocators settle
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            samples[name].append(_once(fns[name]))
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)
