"""Wall-clock timing of several callables, interleaved so that drift hits all of them alike."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

import jax


def _once(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def interleaved(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2, seed: int = 0
) -> dict[str, list[float]]:
    """Time each zero-argument callable ``repeats`` times, round-robin, after ``warmup`` calls each.

    A round visits every callable once, in a fresh random order (seeded), so a slow spell on a
    shared machine lands on every candidate rather than on whichever happened to run then, and a
    candidate's predecessor (whose cache footprint and freed buffers it inherits) changes from
    round to round. A rotated order would keep it the same in all but one round in ``k``: an
    executable timed twice under two names measured 0.93-0.95x of itself that way, 0.97-1.00x in
    a random order (jax 0.10.2, bench/jacobian.py's cases).

    Returns:
      ``{name: [seconds, ...]}`` with ``repeats`` samples each. Results are NumPy or JAX values
      and are waited on with :func:`jax.block_until_ready` (a no-op for NumPy and PyTorch).
    """
    names = list(fns)
    for name in names:  # compile, fill caches, let allocators settle
        for _ in range(warmup):
            jax.block_until_ready(fns[name]())
    samples: dict[str, list[float]] = {name: [] for name in names}
    rng = random.Random(seed)
    order = list(names)
    for _ in range(repeats):
        rng.shuffle(order)
        for name in order:
            samples[name].append(_once(fns[name]))
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)
