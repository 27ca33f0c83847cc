"""Attention: jaxsoft.attention against jax.nn.dot_product_attention(implementation="xla").

    python -m bench.attention                   # full run (a few minutes on 2 cores)
    python -m bench.attention --quick --out D   # tiny shapes, few rounds: checks the harness

Time (median of ``--repeats`` interleaved rounds, each call jitted, warmed up and waited on with
``block_until_ready``), for the forward pass and for ``value_and_grad`` of ``<out, w>`` with respect
to ``q, k, v``:

- at ``B=4, T=S=1024, N=8, H=64`` (float32), plain and causal: ``jax.nn`` (xla), ``jaxsoft`` dense
  (``chunk_size=None``) and ``jaxsoft`` chunked (``chunk_size=256``);
- at ``B=1, T=S=4096, N=8, H=64``: ``jax.nn`` against ``jaxsoft`` chunked (``chunk_size=512``).

Temporary memory (XLA's buffer assignment, ``compile().memory_analysis().temp_size_in_bytes``;
compiled, not run) at ``B=4, T=S=8192, N=8, H=64`` for the same candidates.

Writes ``attention.json`` and ``attention.md`` into ``--out`` (default ``bench/results/``) and
prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench import machine, timing
from jaxsoft import attention

FULL = dict(
    time_cases=[
        dict(b=4, t=1024, n=8, h=64, causal=False, chunks=(256,), repeats=None),
        dict(b=4, t=1024, n=8, h=64, causal=True, chunks=(256,), repeats=None),
        dict(b=1, t=4096, n=8, h=64, causal=False, chunks=(512,), repeats=9, dense=False),
    ],
    memory=dict(b=4, t=8192, n=8, h=64, chunks=(512, 1024)),
)
QUICK = dict(
    time_cases=[
        dict(b=1, t=64, n=2, h=8, causal=False, chunks=(16,), repeats=None),
        dict(b=1, t=128, n=2, h=8, causal=True, chunks=(32,), repeats=3, dense=False),
    ],
    memory=dict(b=1, t=256, n=2, h=8, chunks=(32,)),
)
TARGET_DENSE = 1.1  # time ratio to jax.nn, dense path
TARGET_CHUNKED_TIME = 1.5
TARGET_CHUNKED_MEMORY = 1 / 8


def _candidates(causal: bool, chunks, dense: bool = True):
    def nn(q, k, v):
        return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation="xla")

    cands = {"jax.nn": nn}
    if dense:
        cands["jaxsoft"] = lambda q, k, v: attention(q, k, v, is_causal=causal)
    for c in chunks:
        cands[f"jaxsoft[chunk={c}]"] = lambda q, k, v, c=c: attention(
            q, k, v, is_causal=causal, chunk_size=c
        )
    return cands


def _modes(fn, w):
    def loss(q, k, v):
        return jnp.vdot(fn(q, k, v), w)

    return {"forward": jax.jit(fn), "value_and_grad": jax.jit(jax.value_and_grad(loss, (0, 1, 2)))}


def time_case(b, t, n, h, causal, chunks, repeats, dense=True):
    rng = np.random.default_rng(0)
    q, k, v, w = (jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32) for _ in range(4))
    fns = {}
    for name, fn in _candidates(causal, chunks, dense).items():
        for mode, compiled in _modes(fn, w).items():
            fns[(name, mode)] = lambda f=compiled: f(q, k, v)
    labels = {key: f"{key[0]}|{key[1]}" for key in fns}
    samples = timing.interleaved({labels[key]: f for key, f in fns.items()}, repeats)
    rows = []
    for (name, mode), label in labels.items():
        s = samples[label]
        ref = samples[f"jax.nn|{mode}"]
        rows.append(
            dict(
                shape=dict(B=b, T=t, S=t, N=n, H=h),
                causal=causal,
                impl=name,
                mode=mode,
                rounds=len(s),
                median_s=statistics.median(s),
                q1_s=float(np.percentile(s, 25)),
                q3_s=float(np.percentile(s, 75)),
                ratio_to_jax_nn=statistics.median(s) / statistics.median(ref),
            )
        )
    return rows


def memory_case(b, t, n, h, chunks):
    shape = jax.ShapeDtypeStruct((b, t, n, h), jnp.float32)
    rows = []
    for name, fn in _candidates(False, chunks).items():

        def loss(q, k, v, fn=fn):
            return jnp.sum(fn(q, k, v))

        for mode, f in (("forward", fn), ("value_and_grad", jax.value_and_grad(loss, (0, 1, 2)))):
            compiled = jax.jit(f).lower(shape, shape, shape).compile()
            analysis = compiled.memory_analysis()
            rows.append(
                dict(
                    shape=dict(B=b, T=t, S=t, N=n, H=h),
                    impl=name,
                    mode=mode,
                    temp_bytes=None if analysis is None else int(analysis.temp_size_in_bytes),
                )
            )
    ref = {r["mode"]: r["temp_bytes"] for r in rows if r["impl"] == "jax.nn"}
    for r in rows:
        r["ratio_to_jax_nn"] = (
            None
            if not ref.get(r["mode"]) or r["temp_bytes"] is None
            else r["temp_bytes"] / ref[r["mode"]]
        )
    return rows


def _markdown(result) -> str:
    lines = ["## Attention: jaxsoft.attention vs jax.nn.dot_product_attention (xla)", ""]
    meta = result["meta"]
    lines.append(
        f"{meta['cpu']} x{meta['cpu_count']}, jax {meta['versions']['jax']}, "
        f"load average at start {meta['load_average_1m_at_start']:.1f}; medians of interleaved "
        "rounds (IQR in brackets), float32."
    )
    lines += [
        "",
        "| shape | causal | implementation | mode | rounds | median ms [q1, q3] | ratio to jax.nn |",
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for r in result["time"]:
        s = r["shape"]
        lines.append(
            f"| B={s['B']} T=S={s['T']} N={s['N']} H={s['H']} | {r['causal']} | {r['impl']} | "
            f"{r['mode']} | {r['rounds']} | {1e3 * r['median_s']:.1f} "
            f"[{1e3 * r['q1_s']:.1f}, {1e3 * r['q3_s']:.1f}] | {r['ratio_to_jax_nn']:.2f} |"
        )
    lines += ["", "| shape | implementation | mode | temp memory MiB | ratio to jax.nn |"]
    lines.append("|---|---|---|---|---|")
    for r in result["memory"]:
        s = r["shape"]
        mib = "n/a" if r["temp_bytes"] is None else f"{r['temp_bytes'] / 2**20:.1f}"
        ratio = "n/a" if r["ratio_to_jax_nn"] is None else f"{r['ratio_to_jax_nn']:.3f}"
        lines.append(
            f"| B={s['B']} T=S={s['T']} N={s['N']} H={s['H']} | {r['impl']} | {r['mode']} | "
            f"{mib} | {ratio} |"
        )
    lines += [
        "",
        f"Targets: dense <= {TARGET_DENSE}x jax.nn's time; chunked temp memory <= "
        f"{TARGET_CHUNKED_MEMORY:.3f} of jax.nn's with time <= {TARGET_CHUNKED_TIME}x.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shapes: checks the harness")
    parser.add_argument("--repeats", type=int, default=None, help="rounds per timed case")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    default_repeats = args.repeats or (3 if args.quick else 25)
    result = {"meta": machine.info(), "time": [], "memory": []}
    for case in config["time_cases"]:
        case = dict(case)
        case["repeats"] = args.repeats or case["repeats"] or default_repeats
        result["time"] += time_case(**case)
    result["memory"] = memory_case(**config["memory"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "attention.json").write_text(json.dumps(result, indent=1) + "\n")
    md = _markdown(result)
    (args.out / "attention.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
