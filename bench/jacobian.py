"""Cost of the full softargmax Jacobian: the analytic formula against jax.jacfwd and jax.jacrev.

``run`` is the part of ``python -m bench``. ``python -m bench.jacobian`` runs the longer study
behind bench/README.md's Jacobian notes: the same three against two floors computed from a
precomputed ``p`` (``jnp.diag(p) - jnp.outer(p, p)``, and ``p p^T`` alone, the cheapest loop that
writes an output of that size), one row at ``n = 256, 1024, 4096`` and a batch of rows, with the
spread of each ratio over the two halves of the rounds.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoft
from bench.timing import interleaved, median

IMPLS = ("analytic", "jacfwd", "jacrev")
FLOORS = ("diag_minus_outer", "outer")
# A 0.1 ms case timed 20 times on a shared machine is decided by a few scheduler hiccups: cheap
# cases get more rounds, up to about this many seconds per case (when measuring: repeats > 1).
_SECONDS_PER_CASE = 1.0
_MAX_ROUNDS = 400


def _per_row(f):
    """``f`` of one row, mapped over leading batch dimensions (jacfwd/jacrev see one row)."""

    def g(x):
        return jax.vmap(g)(x) if x.ndim > 1 else f(x)

    return g


def _bare(p: jax.Array) -> jax.Array:
    return _per_row(lambda q: jnp.diag(q) - jnp.outer(q, q))(p)


def _outer(p: jax.Array) -> jax.Array:
    return p[..., :, None] * p[..., None, :]


def _executables(x: jax.Array, floors: bool) -> dict:
    fns = {
        "analytic": jaxsoft.softargmax_jacobian,
        "jacfwd": _per_row(jax.jacfwd(jaxsoft.softargmax)),
        "jacrev": _per_row(jax.jacrev(jaxsoft.softargmax)),
    }
    exes = {name: (jax.jit(f).lower(x).compile(), x) for name, f in fns.items()}
    if floors:
        p = jaxsoft.softargmax(x)
        for name, f in zip(FLOORS, (_bare, _outer), strict=True):
            exes[name] = (jax.jit(f).lower(p).compile(), p)
    return exes


def _rounds(exes: dict, repeats: int, seconds: float) -> int:
    if repeats <= 1:
        return repeats
    times = []
    for _ in range(3):  # the first round after compiling is slow: the median of three
        start = time.perf_counter()
        for exe, arg in exes.values():
            jax.block_until_ready(exe(arg))
        times.append(time.perf_counter() - start)
    per_round = median(times)
    return max(repeats, min(_MAX_ROUNDS, int(seconds / max(per_round, 1e-9))))


def _time(
    x: jax.Array, repeats: int, warmup: int, floors: bool, seconds: float
) -> tuple[dict, int]:
    exes = _executables(x, floors)
    ref = np.asarray(exes["analytic"][0](x))
    for name in exes:
        if name in ("analytic", "outer"):
            continue
        exe, arg = exes[name]
        # A harness check, not a test of jaxsoft: a wrong Jacobian would make the timing moot.
        np.testing.assert_allclose(np.asarray(exe(arg)), ref, rtol=1e-4, atol=1e-6)
    calls = {name: (lambda e=e, a=a: e(a)) for name, (e, a) in exes.items()}
    rounds = _rounds(exes, repeats, seconds)
    return interleaved(calls, rounds, warmup), rounds


def _ratio_halves(samples: list[float], base: list[float]) -> list[float]:
    """The ratio of medians over the first and over the second half of the rounds (the rerun
    spread of bench/README.md)."""
    k = len(samples) // 2
    if k == 0:
        return []
    return [median(samples[:k]) / median(base[:k]), median(samples[k:]) / median(base[k:])]


def run(
    ns: tuple[int, ...], repeats: int, warmup: int, seconds: float = _SECONDS_PER_CASE
) -> list[dict]:
    """Time the three ways for each ``n`` (one float32 row), interleaved; check they agree."""
    rows = []
    for n in ns:
        x = 3 * jax.random.normal(jax.random.key(n), (n,), jnp.float32)
        samples, rounds = _time(x, repeats, warmup, floors=False, seconds=seconds)
        base = samples["analytic"]
        for name in IMPLS:
            med = median(samples[name])
            rows.append(
                {
                    "n": n,
                    "impl": name,
                    "rounds": rounds,
                    "median_s": med,
                    "samples_s": samples[name],
                    "time_vs_analytic": med / median(base),
                    "time_vs_analytic_halves": _ratio_halves(samples[name], base),
                }
            )
    return rows


def study(
    shapes: tuple[tuple[int, ...], ...], repeats: int, warmup: int, seconds: float
) -> list[dict]:
    """``run``'s comparison plus the two floors, for any float32 shapes ``batch + (n,)``."""
    rows = []
    for shape in shapes:
        x = 3 * jax.random.normal(jax.random.key(shape[-1]), shape, jnp.float32)
        samples, rounds = _time(x, repeats, warmup, floors=True, seconds=seconds)
        base = samples["analytic"]
        for name, s in samples.items():
            q1, q3 = np.percentile(s, [25, 75])
            rows.append(
                {
                    "shape": shape,
                    "impl": name,
                    "rounds": rounds,
                    "median_s": median(s),
                    "iqr_s": (float(q1), float(q3)),
                    "time_vs_analytic": median(s) / median(base),
                    "time_vs_analytic_halves": _ratio_halves(s, base),
                }
            )
    return rows


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.jacobian", description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="at least this many rounds")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="more rounds, up to about this long, per shape"
    )
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    shapes = ((256,), (1024,), (4096,), (64, 256))
    rows = study(shapes, args.repeats, args.warmup, args.seconds)
    print("| shape | impl | rounds | median ms | IQR ms | time / analytic [halves] |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        lo, hi = (1e3 * v for v in r["iqr_s"])
        halves = ", ".join(f"{q:.2f}" for q in r["time_vs_analytic_halves"])
        print(
            f"| {r['shape']} | {r['impl']} | {r['rounds']} | {1e3 * r['median_s']:.3f} "
            f"| {lo:.3f}-{hi:.3f} | {r['time_vs_analytic']:.2f}x [{halves}] |"
        )
    print(f"\njax {jax.__version__}; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    _main()
