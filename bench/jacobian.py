"""Cost of the full softargmax Jacobian: the analytic formula against jax.jacfwd and jax.jacrev."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoft
from bench.timing import interleaved, median

IMPLS = ("analytic", "jacfwd", "jacrev")


def _executables(x: jax.Array) -> dict:
    fns = {
        "analytic": jaxsoft.softargmax_jacobian,
        "jacfwd": jax.jacfwd(jaxsoft.softargmax),
        "jacrev": jax.jacrev(jaxsoft.softargmax),
    }
    return {name: jax.jit(f).lower(x).compile() for name, f in fns.items()}


def run(ns: tuple[int, ...], repeats: int, warmup: int) -> list[dict]:
    """Time the three ways for each ``n`` (one float32 row), interleaved; check they agree."""
    rows = []
    for n in ns:
        x = 3 * jax.random.normal(jax.random.key(n), (n,), jnp.float32)
        exes = _executables(x)
        ref = np.asarray(exes["analytic"](x))
        for name in ("jacfwd", "jacrev"):
            # A harness check, not a test of jaxsoft: a wrong Jacobian would make the timing moot.
            np.testing.assert_allclose(np.asarray(exes[name](x)), ref, rtol=1e-4, atol=1e-6)
        samples = interleaved(
            {k: (lambda e=e, x=x: e(x)) for k, e in exes.items()}, repeats, warmup
        )
        base = median(samples["analytic"])
        for name in IMPLS:
            med = median(samples[name])
            rows.append(
                {
                    "n": n,
                    "impl": name,
                    "median_s": med,
                    "samples_s": samples[name],
                    "time_vs_analytic": med / base,
                }
            )
    return rows
