"""Large vocabularies: fused linear cross-entropy and the vocab-sharded cross-entropy.

    python -m bench.large_vocab                  # full run (N=4096, d=512, V in {32768, 131072})
    python -m bench.large_vocab --quick --out D  # tiny shapes, 2 runs each: checks the harness

Measures, for ``jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))`` (h and W gradients):

- ``naive``: ``optax.losses.softmax_cross_entropy_with_integer_labels(h @ W, labels).sum()``;
- ``fused[C]``: ``jaxsoft.large_vocab.linear_cross_entropy(h, W, labels, chunk_size=C).sum()``,
  for the chunk sizes of the sweep;

with all candidates of one shape timed in the same interleaved rounds (median of ``--repeats``
runs, each waited on with ``block_until_ready``) and their temporary memory taken from XLA's
buffer assignment (``memory_analysis().temp_size_in_bytes``). Then, in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``, the value and logits gradient of
``jaxsoft.sharded.sharded_cross_entropy`` over 8 CPU devices against
``jaxsoft.losses.cross_entropy`` on one device (CPU "devices" share the same cores: this shows
correctness and per-device memory, not a speed-up).

Writes ``large_vocab.md`` and ``large_vocab.json`` into ``--out`` (default ``bench/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

FULL = dict(n=4096, d=512, vocabs=(32768, 131072), chunks=(1024, 2048, 4096, 8192), shard_v=32768)
QUICK = dict(n=64, d=16, vocabs=(512, 1000), chunks=(128, 256), shard_v=512)


def _timing():
    from bench import timing

    return timing


def _head_case(n, d, v, chunks, sweep, repeats, warmup, seed=0):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxsoft.large_vocab import linear_cross_entropy

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    h = jax.random.normal(k1, (n, d), jnp.float32)
    W = jax.random.normal(k2, (d, v), jnp.float32) / d**0.5
    labels = jax.random.randint(k3, (n,), 0, v)

    def naive(h, W, y):
        return optax.losses.softmax_cross_entropy_with_integer_labels(h @ W, y).sum()

    losses = {"naive": naive}
    for c in chunks if sweep else chunks[1:2]:
        losses[f"fused[{c}]"] = partial(
            lambda h, W, y, c: linear_cross_entropy(h, W, y, chunk_size=c).sum(), c=c
        )
    compiled, temp, compile_s = {}, {}, {}
    for name, f in losses.items():
        start = time.perf_counter()
        compiled[name] = (
            jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(h, W, labels).compile()
        )
        compile_s[name] = time.perf_counter() - start
        temp[name] = int(compiled[name].memory_analysis().temp_size_in_bytes)
    # The fused loss must agree with the naive one before its time means anything.
    ref = compiled["naive"](h, W, labels)
    for name, c in compiled.items():
        out = c(h, W, labels)
        err = float(jnp.abs(out[0] - ref[0]) / jnp.abs(ref[0]))
        gerr = max(
            float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(out[1], ref[1])
        )
        if err > 1e-4 or gerr > 1e-3:
            raise AssertionError(
                f"{name} disagrees with naive at V={v}: loss {err:.2e}, grads {gerr:.2e}"
            )
    samples = _timing().interleaved(
        {name: partial(c, h, W, labels) for name, c in compiled.items()}, repeats, warmup
    )
    rows = []
    for name in compiled:
        med = _timing().median(samples[name])
        rows.append(
            {
                "n": n,
                "d": d,
                "vocab": v,
                "impl": name,
                "median_s": med,
                "time_ratio_to_naive": med / _timing().median(samples["naive"]),
                "temp_bytes": temp[name],
                "temp_ratio_to_naive": temp[name] / temp["naive"],
                "compile_s": compile_s[name],
                "samples_s": samples[name],
            }
        )
    return rows


_SHARD_CHILD = r"""
import json, sys, time
from functools import partial
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxsoft.losses import cross_entropy
from jaxsoft.sharded import sharded_cross_entropy, shard_map
sys.path.insert(0, ".")
from bench import timing
n, v, repeats, warmup = (int(a) for a in sys.argv[1:5])
mesh = Mesh(jax.devices(), ("v",))
x = 3 * jax.random.normal(jax.random.PRNGKey(0), (n, v))
y = jax.random.randint(jax.random.PRNGKey(1), (n,), 0, v)
xs = jax.device_put(x, NamedSharding(mesh, P(None, "v")))
ys = jax.device_put(y, NamedSharding(mesh, P()))
local = shard_map(partial(sharded_cross_entropy, axis_name="v"), mesh=mesh,
                  in_specs=(P(None, "v"), P()), out_specs=P())
sharded = jax.jit(jax.value_and_grad(lambda x, y: local(x, y).sum()))
single = jax.jit(jax.value_and_grad(lambda x, y: cross_entropy(x, y).sum()))
a, b = sharded(xs, ys), single(x, y)
err = float(jnp.abs(a[0] - b[0]) / jnp.abs(b[0])); gerr = float(jnp.max(jnp.abs(a[1] - b[1])))
temp = {k: int(f.lower(*args).compile().memory_analysis().temp_size_in_bytes)
        for k, f, args in (("sharded8", sharded, (xs, ys)), ("single", single, (x, y)))}
s = timing.interleaved({"sharded8": partial(sharded, xs, ys), "single": partial(single, x, y)},
                       repeats, warmup)
print(json.dumps({"devices": len(jax.devices()), "n": n, "vocab": v, "loss_rel_err": err,
                  "grad_max_abs_err": gerr, "temp_bytes": temp,
                  "median_s": {k: timing.median(t) for k, t in s.items()}, "samples_s": s}))
"""


def _shard_case(n, v, repeats, warmup):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", _SHARD_CHILD, str(n), str(v), str(repeats), str(warmup)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _markdown(head_rows, shard, meta) -> str:
    lines = [
        "## Large vocabularies: fused linear cross-entropy vs naive (value_and_grad in h and W)",
        "",
        f"{meta['machine']}; jax {meta['jax']}; median of {meta['repeats']} interleaved runs.",
        "",
        "| N | d | V | impl | median time (s) | time / naive | temp memory (MiB) | memory / naive |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in head_rows:
        lines.append(
            f"| {r['n']} | {r['d']} | {r['vocab']} | {r['impl']} | {r['median_s']:.3f} | "
            f"{r['time_ratio_to_naive']:.2f} | {r['temp_bytes'] / 2**20:.1f} | "
            f"{r['temp_ratio_to_naive']:.4f} |"
        )
    if shard is not None:
        t = shard["median_s"]
        lines += [
            "",
            f"## Vocab-sharded cross-entropy ({shard['devices']} CPU devices) vs one device",
            "",
            f"N={shard['n']}, V={shard['vocab']}, value_and_grad in the logits. Loss relative error "
            f"{shard['loss_rel_err']:.1e}, max gradient error {shard['grad_max_abs_err']:.1e}.",
            "",
            "| impl | median time (s) | temp memory (MiB, whole program) |",
            "|---|---|---|",
            f"| sharded over 8 | {t['sharded8']:.4f} | {shard['temp_bytes']['sharded8'] / 2**20:.1f} |",
            f"| single device | {t['single']:.4f} | {shard['temp_bytes']['single'] / 2**20:.1f} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.large_vocab", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="tiny shapes, 2 runs: checks the harness")
    ap.add_argument("--out", default=None, help="output directory (default bench/results/)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 20)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--vocabs", type=int, nargs="*", default=None)
    ap.add_argument(
        "--sweep-vocab",
        type=int,
        default=None,
        help="the V at which all chunk sizes are timed (default: the smallest V)",
    )
    ap.add_argument("--no-shard", action="store_true")
    args = ap.parse_args(argv)
    import jax

    cfg = QUICK if args.quick else FULL
    repeats = args.repeats or (2 if args.quick else 20)
    warmup = 1 if args.quick else args.warmup
    vocabs = tuple(args.vocabs) if args.vocabs else cfg["vocabs"]
    sweep_v = args.sweep_vocab or min(vocabs)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "jax": jax.__version__,
        "repeats": repeats,
        "warmup": warmup,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    head_rows = []
    for v in vocabs:
        head_rows += _head_case(cfg["n"], cfg["d"], v, cfg["chunks"], v == sweep_v, repeats, warmup)
        print(f"V={v} done", file=sys.stderr, flush=True)
    shard = None if args.no_shard else _shard_case(cfg["n"], cfg["shard_v"], repeats, warmup)
    md = _markdown(head_rows, shard, meta)
    (out / "large_vocab.md").write_text(md)
    (out / "large_vocab.json").write_text(
        json.dumps({"meta": meta, "head": head_rows, "sharded": shard}, indent=1)
    )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
