"""Fused language-model head vs the naive ``h @ W`` version, and linear CE vs tokamax.

Run: ``python -m bench.lm_head [--n 4096 --d 512 --v 65536 --rounds 5]``. Prints a markdown table
and writes ``bench/results/lm_head.json``. Every candidate is jitted and warmed up; the forward
pass and ``value_and_grad`` (in ``h`` and ``W``) are timed interleaved (``bench.timing``), the
median of ``--rounds`` rounds reported; temporary memory is XLA's ``memory_analysis()`` of the
compiled program. The naive versions are what one writes with :mod:`jax.nn` on the ``[N, V]``
logits; tokamax runs its ``implementation="xla"`` (the only one on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing
from jaxsoft.large_vocab import linear_cross_entropy
from jaxsoft.lm_head import linear_entropy, linear_kl_divergence, linear_log_probs


def _pairs(tok):
    def naive_lp(h, W, th, tW):
        x = h @ W
        lp = jnp.take_along_axis(jax.nn.log_softmax(x), tok[:, None], -1)[:, 0]
        ent = -jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), -1)
        return jnp.sum(lp) + jnp.sum(ent)

    def fused_lp(h, W, th, tW):
        lp, ent = linear_log_probs(h, W, tok, return_entropy=True)
        return jnp.sum(lp) + jnp.sum(ent)

    def naive_ent(h, W, th, tW):
        x = h @ W
        return jnp.sum(-jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), -1))

    def fused_ent(h, W, th, tW):
        return jnp.sum(linear_entropy(h, W))

    def naive_kl(h, W, th, tW):
        x, y = h @ W, th @ tW
        lq = jax.nn.log_softmax(y)
        return jnp.sum(jnp.exp(lq) * (lq - jax.nn.log_softmax(x)))

    def fused_kl(h, W, th, tW):
        return jnp.sum(linear_kl_divergence(h, W, th, tW))

    def tokamax_ce(h, W, th, tW):
        import tokamax

        return tokamax.linear_softmax_cross_entropy_loss(
            h, tok, W, reduction="mean", implementation="xla"
        )

    def jaxsoft_ce(h, W, th, tW):
        return jnp.mean(linear_cross_entropy(h, W, tok))

    return {
        "linear_log_probs (+entropy)": (naive_lp, fused_lp),
        "linear_entropy": (naive_ent, fused_ent),
        "linear_kl_divergence": (naive_kl, fused_kl),
        "linear_cross_entropy vs tokamax": (tokamax_ce, jaxsoft_ce),
    }


def _temp(fn, args) -> int:
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def run(n: int, d: int, v: int, rounds: int) -> dict:
    key = jax.random.split(jax.random.key(0), 5)
    h = jax.random.normal(key[0], (n, d), jnp.float32)
    W = jax.random.normal(key[1], (d, v), jnp.float32) / np.sqrt(d)
    th = h + 0.1 * jax.random.normal(key[2], (n, d), jnp.float32)
    tW = W + 0.01 * jax.random.normal(key[3], (d, v), jnp.float32)
    tok = jax.random.randint(key[4], (n,), 0, v)
    args = (h, W, th, tW)
    rows = {}
    for name, (ref, fused) in _pairs(tok).items():
        fns = {}
        for kind, f in (("ref", ref), ("fused", fused)):
            fns[f"{kind} fwd"] = jax.jit(f)
            fns[f"{kind} vg"] = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
        mem = {k: _temp(f, args) for k, f in fns.items()}
        samples = timing.interleaved({k: (lambda f=f: f(*args)) for k, f in fns.items()}, rounds, 1)
        med = {k: timing.median(s) for k, s in samples.items()}
        rows[name] = {
            "seconds": med,
            "temp_bytes": mem,
            "time_ratio_fwd": med["fused fwd"] / med["ref fwd"],
            "time_ratio_vg": med["fused vg"] / med["ref vg"],
            "mem_ratio_fwd": mem["fused fwd"] / max(mem["ref fwd"], 1),
            "mem_ratio_vg": mem["fused vg"] / max(mem["ref vg"], 1),
        }
        print(f"measured {name}", flush=True)
    return rows


def markdown(rows: dict, n: int, d: int, v: int, rounds: int) -> str:
    mib = 2.0**20
    out = [
        f"N={n}, d={d}, V={v}, float32, CPU ({os.cpu_count()} cores, {platform.machine()}), "
        f"median of {rounds} interleaved rounds. Reference: the naive `h @ W` version "
        "(tokamax's xla implementation for the last row).",
        "",
        "| function | fwd s (ref / fused) | fwd time ratio | vg s (ref / fused) | vg time ratio "
        "| vg temp MiB (ref / fused) | vg memory ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        s, m = r["seconds"], r["temp_bytes"]
        out.append(
            f"| {name} | {s['ref fwd']:.3f} / {s['fused fwd']:.3f} | {r['time_ratio_fwd']:.2f} "
            f"| {s['ref vg']:.3f} / {s['fused vg']:.3f} | {r['time_ratio_vg']:.2f} "
            f"| {m['ref vg'] / mib:.0f} / {m['fused vg'] / mib:.1f} | {r['mem_ratio_vg']:.4f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--v", type=int, default=65536)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lm_head.json"))
    a = parser.parse_args()
    sys.argv = sys.argv[:1]  # tokamax parses sys.argv with absl flags, which reject ours
    rows = run(a.n, a.d, a.v, a.rounds)
    text = markdown(rows, a.n, a.d, a.v, a.rounds)
    print(text)
    path = Path(a.out)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[f"N={a.n},d={a.d},V={a.v}"] = {"rounds": a.rounds, "rows": rows, "markdown": text}
    path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
