"""``python -m bench``: time, memory and Jacobian cost of jaxsoft against its peers, in one run."""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jax.numpy as jnp

from bench import cases, compile_time, jacobian, machine, memory, peers, plot, report
from bench.timing import interleaved

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Config:
    quick: bool
    dtypes: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]
    repeats: int
    warmup: int
    jacobian_ns: tuple[int, ...]
    variant_shapes: tuple[tuple[int, int], ...]  # where the input variants are timed too
    variant_dtypes: tuple[str, ...]  # ... and in which dtypes
    compile_repeats: int


FULL = Config(
    quick=False,
    dtypes=("float32", "bfloat16"),
    shapes=((4096, 1024), (256, 32768), (16, 262144)),
    repeats=20,
    warmup=3,
    jacobian_ns=(256, 1024, 4096),
    variant_shapes=((4096, 1024),),
    variant_dtypes=("float32", "bfloat16"),
    compile_repeats=5,
)
# Each case once on small shapes: checks the harness end to end, measures nothing.
QUICK = Config(
    quick=True,
    dtypes=("float32", "bfloat16"),
    shapes=((16, 1024),),
    repeats=1,
    warmup=1,
    jacobian_ns=(16,),
    variant_shapes=((16, 1024),),
    variant_dtypes=("float32",),  # the variants change the values, not the code paths per dtype
    compile_repeats=1,
)


def _log(msg: str, start: float) -> None:
    print(f"[bench {time.perf_counter() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)


def measure(cfg: Config) -> dict:
    start = time.perf_counter()
    results = {
        "meta": machine.info(),
        "config": asdict(cfg),
        "timings": [],
        "memory": [],
        "jacobian": [],
        "compile": [],
        "variants": dict(cases.VARIANTS),
    }
    notes: list[str] = []
    groups = [
        (dtype, shape, variant)
        for dtype in cfg.dtypes
        for shape in cfg.shapes
        for variant in cases.VARIANTS
        if variant == "normal" or (shape in cfg.variant_shapes and dtype in cfg.variant_dtypes)
    ]
    for dtype, shape, variant in groups:
        inp = cases.make_inputs(shape, jnp.dtype(dtype), variant=variant)
        cands, group_notes = cases.build(inp, all_peers=variant == "normal")
        notes += [n for n in group_notes if n not in notes]
        _log(f"{dtype} {shape} {variant}: {len(cands)} candidates, {cfg.repeats} rounds", start)
        calls = {(c.family, c.impl, c.mode): c.call for c in cands}
        samples = interleaved(calls, cfg.repeats, cfg.warmup)
        results["timings"] += report.timing_rows(samples, dtype, shape, variant)
        if variant == "normal":
            results["memory"] += memory.compare(cands, dtype, shape)
        del cands, calls, inp
        gc.collect()  # drop the executables and arrays of this group before the next
    _log(f"compile time of value_and_grad, {cfg.compile_repeats} rounds", start)
    results["compile"] = compile_time.run(cfg.compile_repeats)
    _log(f"Jacobian, n = {cfg.jacobian_ns}", start)
    results["jacobian"] = jacobian.run(cfg.jacobian_ns, cfg.repeats, cfg.warmup)
    notes += [f"{lib} skipped: {why}" for lib, why in peers.SKIPPED.items()]
    results["notes"] = notes
    results["targets"] = report.targets(
        results["timings"], results["jacobian"], results["memory"], results["compile"]
    )
    results["meta"]["wall_s"] = time.perf_counter() - start
    _log("done", start)
    return results


def write(results: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    title = (
        f"jaxsoft / jax.nn (optax for cross_entropy), {meta['cpu']}, "
        f"jax {meta['versions']['jax']}, {meta['date']}"
    )
    png = plot.ratios_png(results["timings"], out / "ratios.png", title)
    if png is None:
        results["notes"].append(
            "plot skipped: matplotlib is not installed (pip install 'jaxsoft[bench]')"
        )
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    paths["json"].write_text(json.dumps(results, indent=1) + "\n")
    paths["markdown"].write_text(report.markdown(results))
    if png is not None:
        paths["plot"] = png
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="each case once on small shapes (CI harness check)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output directory (default {RESULTS_DIR}; a fresh temporary directory with --quick)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per figure (full run: >= 20)"
    )
    parser.add_argument(
        "--strict-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit 1 when jaxsoft needs more temporary memory than its peer (default: on for a "
        "full run, off for --quick, whose job is to check the harness, not the targets)",
    )
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    if args.repeats is not None:
        if not args.quick and args.repeats < 20:
            parser.error("a full run needs --repeats >= 20 (the issue's floor for a median)")
        cfg = Config(**{**asdict(cfg), "repeats": args.repeats})
    out = args.out or (
        Path(tempfile.mkdtemp(prefix="jaxsoft-bench-")) if args.quick else RESULTS_DIR
    )
    results = measure(cfg)
    paths = write(results, out)
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    memory_failed = [
        t for t in results["targets"] if t["id"] == "temp_memory" and t["met"] is False
    ]
    strict = (not args.quick) if args.strict_memory is None else args.strict_memory
    if memory_failed:
        label = "FAIL" if strict else "TARGET MISSED"
        print(
            f"{label}: jaxsoft needs more temporary memory than its reference peer:",
            file=sys.stderr,
        )
        for miss in memory_failed[0]["misses"]:
            print(f"  {miss}", file=sys.stderr)
        return 1 if strict else 0
    return 0
