"""Entropy and KL divergence: ``jaxsoft.entropy`` / ``jaxsoft.kl_divergence`` against the textbook
:mod:`jax.nn` formulations (and optax's KL on log-probabilities).

    python -m bench.divergences                 # both shapes, float32 and bf16, 15 rounds
    python -m bench.divergences --rounds 31     # more rounds on a noisy machine
    python -m bench.divergences --quick --out D # tiny shapes, 2 rounds: checks the harness

Candidates, each ``jax.jit``-ed, compiled ahead of time and waited on with ``block_until_ready``:

- entropy: ``jaxsoft.entropy(x)`` against ``textbook``: ``-sum(softmax(x) * log_softmax(x))``.
- KL(q || p) with ``p = softmax(x)`` (the model) and ``q = softmax(y)`` (the target):
  ``jaxsoft.kl_divergence(x, y)`` against ``textbook``:
  ``sum(softmax(y) * (log_softmax(y) - log_softmax(x)))`` and ``optax``:
  ``optax.losses.kl_divergence_with_log_targets(log_softmax(x), log_softmax(y))``.

Modes: ``fwd`` (the per-row values) and ``vag`` (``jax.value_and_grad`` of the sum, in ``x`` for
entropy and in both logits for KL). The peers get the input dtype as given (bf16 computed in bf16,
as a user's code would); ours accumulates bf16 in float32.

All candidates of one (shape, dtype) are timed in the same rounds, each round calling every
candidate once in an order rotated by one per round (so a slow spell of the shared machine hits them
alike); a figure is the median of the rounds, with the quartiles as its spread. Temp memory is
``compile().memory_analysis().temp_size_in_bytes``. Writes ``divergences.json`` into ``--out``
(default ``bench/results/``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from bench.timing import interleaved

FULL_SHAPES = [(4096, 1024), (256, 32768)]
QUICK_SHAPES = [(8, 128)]
DTYPES = ["float32", "bfloat16"]


def _functions():
    import jax
    import jax.numpy as jnp
    import optax

    import jaxsoft.divergences as dv

    def tb_entropy(x):
        return -jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), axis=-1)

    def tb_kl(x, y):
        return jnp.sum(jax.nn.softmax(y) * (jax.nn.log_softmax(y) - jax.nn.log_softmax(x)), axis=-1)

    def optax_kl(x, y):
        return optax.losses.kl_divergence_with_log_targets(
            jax.nn.log_softmax(x), jax.nn.log_softmax(y)
        )

    return {
        "entropy": {"jaxsoft": dv.entropy, "textbook": tb_entropy},
        "kl": {"jaxsoft": dv.kl_divergence, "textbook": tb_kl, "optax": optax_kl},
    }


def _inputs(family: str, shape, dtype):
    import jax
    import jax.numpy as jnp

    kx, ky = jax.random.split(jax.random.key(0))
    x = (jax.random.normal(kx, shape, jnp.float32) * 3).astype(dtype)
    if family == "entropy":
        return (x,)
    # A target near the model (distillation late in training): the regime KL must be exact in.
    y = (x.astype(jnp.float32) + jax.random.normal(ky, shape, jnp.float32) * 0.1).astype(dtype)
    return (x, y)


def _program(fn, mode: str, n_args: int):
    import jax
    import jax.numpy as jnp

    if mode == "fwd":
        return fn

    def loss(*a):
        return jnp.sum(fn(*a).astype(jnp.float32))

    return jax.value_and_grad(loss, argnums=tuple(range(n_args)))


def run(shapes, rounds: int, families=("entropy", "kl"), dtypes=tuple(DTYPES)) -> list[dict]:
    import jax

    funcs = _functions()
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            for family in families:
                args = _inputs(family, shape, dtype)
                for mode in ("fwd", "vag"):
                    compiled, mem = {}, {}
                    for impl, fn in funcs[family].items():
                        c = jax.jit(_program(fn, mode, len(args))).lower(*args).compile()
                        compiled[impl] = c
                        analysis = c.memory_analysis()
                        mem[impl] = None if analysis is None else int(analysis.temp_size_in_bytes)
                    calls = {impl: (lambda c=c, a=args: c(*a)) for impl, c in compiled.items()}
                    samples = interleaved(calls, rounds)
                    med = {k: statistics.median(v) for k, v in samples.items()}
                    for impl, s in samples.items():
                        q = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
                        rows.append(
                            {
                                "family": family,
                                "mode": mode,
                                "dtype": dtype,
                                "shape": list(shape),
                                "impl": impl,
                                "rounds": len(s),
                                "median_ms": med[impl] * 1e3,
                                "q1_ms": q[0] * 1e3,
                                "q3_ms": q[2] * 1e3,
                                "ratio_to_textbook": med[impl] / med["textbook"],
                                "temp_bytes": mem[impl],
                                "temp_ratio_to_textbook": (
                                    None
                                    if mem[impl] is None or not mem["textbook"]
                                    else mem[impl] / mem["textbook"]
                                ),
                            }
                        )
                    print(
                        _table(
                            [
                                r
                                for r in rows
                                if r["family"] == family
                                and r["mode"] == mode
                                and r["dtype"] == dtype
                                and r["shape"] == list(shape)
                            ],
                            header=False,
                        ),
                        flush=True,
                    )
    return rows


def _table(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| family | mode | dtype | shape | impl | median ms | [q1, q3] ms | x textbook | temp MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        mem = "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.1f}"
        lines.append(
            f"| {r['family']} | {r['mode']} | {r['dtype']} | {r['shape'][0]}x{r['shape'][1]} "
            f"| {r['impl']} | {r['median_ms']:.1f} | [{r['q1_ms']:.1f}, {r['q3_ms']:.1f}] "
            f"| {r['ratio_to_textbook']:.2f} | {mem} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 rounds")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--family", choices=["entropy", "kl"], action="append")
    parser.add_argument("--dtype", choices=DTYPES, action="append")
    parser.add_argument(
        "--shape",
        type=lambda s: tuple(int(v) for v in s.split("x")),
        action="append",
        help="e.g. 256x32768",
    )
    args = parser.parse_args(argv)
    import jax

    shapes = args.shape or (QUICK_SHAPES if args.quick else FULL_SHAPES)
    rounds = 2 if args.quick else args.rounds
    start = time.time()
    print(_table([]))
    rows = run(shapes, rounds, tuple(args.family or ("entropy", "kl")), tuple(args.dtype or DTYPES))
    result = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "machine": platform.platform(),
        "processor": platform.processor(),
        "rounds": rounds,
        "seconds": round(time.time() - start, 1),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "divergences.json").write_text(json.dumps(result, indent=1))
    print(f"\nwrote {args.out / 'divergences.json'} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
