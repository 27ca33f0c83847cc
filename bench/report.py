"""Ratios, target verdicts and the markdown tables, from the raw medians."""

from __future__ import annotations

from bench import peers
from bench.cases import FORWARD, MODES, X2
from bench.timing import median

# Issue targets (issue 11): the most each function may take, as a multiple of its reference peer.
# These are the floor found so far on XLA:CPU; the goal stays 1.0x everywhere.
SPEED_TARGETS = {
    ("softargmax", "forward"): 1.05,
    ("softargmax", "value_and_grad"): 1.0,
    ("log_softargmax", "forward"): 1.25,
    ("log_softargmax", "value_and_grad"): 1.25,
    ("logsumexp", "forward"): 1.5,
    ("logsumexp", "value_and_grad"): 1.5,
    ("softargmax_mean", "forward"): 1.5,
    ("softargmax_mean", "value_and_grad"): 1.5,
    ("cross_entropy", "forward"): 1.0,
    ("cross_entropy", "value_and_grad"): 1.0,
}
MAX_COMPILE_RATIO = 1.5
MAX_LARGE_ROW_RATIO_TO_X2 = 1.5
MIN_JACFWD_SPEEDUP = 10.0
JACOBIAN_TARGET_N = 1024


def _halves_ratio(ours: list[float], ref: list[float]) -> list[float]:
    """The ratio of medians over the first and over the second half of the rounds: how much a
    rerun of half the length would move the figure."""
    k = len(ours) // 2
    if k == 0:
        return []
    return [median(ours[:k]) / median(ref[:k]), median(ours[k:]) / median(ref[k:])]


def timing_rows(
    samples: dict, dtype: str, shape: tuple[int, int], case: str = "normal"
) -> list[dict]:
    """One row per candidate: median and its ratios to the reference peer and to ``x * 2.0``."""
    meds = {key: median(s) for key, s in samples.items()}
    x2 = meds[(X2, X2, FORWARD)]
    rows = []
    for (family, impl, mode), med in meds.items():
        ref_key = (family, peers.REFERENCE.get(family), mode)
        ref = meds.get(ref_key)
        rows.append(
            {
                "dtype": dtype,
                "shape": list(shape),
                "case": case,
                "family": family,
                "impl": impl,
                "mode": mode,
                "median_s": med,
                "samples_s": samples[(family, impl, mode)],
                "ratio_to_reference": None if ref is None else med / ref,
                "ratio_halves": []
                if ref is None
                else _halves_ratio(samples[(family, impl, mode)], samples[ref_key]),
                "ratio_to_x2": med / x2,
            }
        )
    return rows


def _target(r: dict) -> float | None:
    return SPEED_TARGETS.get((r["family"], r["mode"]))


def targets(
    timings: list[dict], jacobian: list[dict], memory: list[dict], compile_rows=()
) -> list[dict]:
    """Each issue target with ``met`` (True/False, or None when this run did not measure it)."""
    ours = [
        r
        for r in timings
        if r["impl"] == peers.OURS
        and r["ratio_to_reference"] is not None
        and r.get("case", "normal") == "normal"
    ]
    out = []
    for (family, mode), limit in SPEED_TARGETS.items():
        rows = [r for r in ours if (r["family"], r["mode"]) == (family, mode)]
        slow = [
            _label(r) + f" {r['ratio_to_reference']:.2f}x"
            for r in rows
            if r["ratio_to_reference"] > limit
        ]
        out.append(
            {
                "id": f"speed_{family}_{mode}",
                "target": f"{family} {mode} <= {limit}x {peers.REFERENCE[family]}",
                "met": (not slow) if rows else None,
                "misses": slow,
            }
        )
    slow_all = [
        _label(r) + f" {r['ratio_to_reference']:.2f}x" for r in ours if r["ratio_to_reference"] > 1
    ]
    out.append(
        {
            "id": "speed_vs_reference",
            "target": "the goal: forward and value_and_grad <= 1.0x the jax.nn/optax equivalent",
            "met": (not slow_all) if ours else None,
            "misses": slow_all,
        }
    )
    slow_compile = [
        f"{r['family']} {r['ratio_to_reference']:.2f}x"
        for r in compile_rows
        if r["ratio_to_reference"] > MAX_COMPILE_RATIO
    ]
    out.append(
        {
            "id": "compile_time",
            "target": f"compile time of a jitted value_and_grad <= {MAX_COMPILE_RATIO}x "
            "jax.nn/optax's",
            "met": (not slow_compile) if compile_rows else None,
            "misses": slow_compile,
        }
    )
    f32_fwd = [
        r
        for r in ours
        if r["family"] == "softargmax" and r["mode"] == FORWARD and r["dtype"] == "float32"
    ]
    if f32_fwd:
        large = max(f32_fwd, key=lambda r: r["shape"][-1])
        out.append(
            {
                "id": "large_rows_vs_x2",
                "target": f"forward softargmax float32, largest rows {tuple(large['shape'])}: "
                f"<= {MAX_LARGE_ROW_RATIO_TO_X2}x x*2.0",
                "met": large["ratio_to_x2"] <= MAX_LARGE_ROW_RATIO_TO_X2,
                "misses": []
                if large["ratio_to_x2"] <= MAX_LARGE_ROW_RATIO_TO_X2
                else [f"{large['ratio_to_x2']:.2f}x"],
            }
        )
    jf = [r for r in jacobian if r["n"] == JACOBIAN_TARGET_N and r["impl"] == "jacfwd"]
    speedup = jf[0]["time_vs_analytic"] if jf else None
    out.append(
        {
            "id": "jacobian_vs_jacfwd",
            "target": (
                f"analytic Jacobian >= {MIN_JACFWD_SPEEDUP:g}x faster than jax.jacfwd "
                f"at n = {JACOBIAN_TARGET_N}"
            ),
            "met": None if speedup is None else speedup >= MIN_JACFWD_SPEEDUP,
            "misses": []
            if speedup is None or speedup >= MIN_JACFWD_SPEEDUP
            else [f"{speedup:.1f}x"],
        }
    )
    bad = [
        _label(r) + f" {r['ours_temp_bytes']} > {r['reference_temp_bytes']} + {r['slack_bytes']} B"
        for r in memory
        if r["ok"] is False
    ]
    out.append(
        {
            "id": "temp_memory",
            "target": "temp memory no larger than the jax.nn/optax equivalent (+96 B per row)",
            "met": (not bad) if memory else None,
            "misses": bad,
        }
    )
    return out


def _label(r: dict) -> str:
    return f"{r['family']} {r['mode']} {r['dtype']} {tuple(r['shape'])}"


def _load(meta: dict) -> str:
    load = meta.get("load_average_1m_at_start")
    return "n/a" if load is None else f"{load:.1f}"


def summary(results: dict) -> str:
    """The jaxsoft/reference ratios as one compact table: (function, mode) by (dtype, shape)."""
    ours = [
        r
        for r in results["timings"]
        if r["impl"] == peers.OURS
        and r["ratio_to_reference"] is not None
        and r.get("case", "normal") == "normal"
    ]
    cases = sorted(
        {(r["dtype"], tuple(r["shape"])) for r in ours}, key=lambda c: (c[0] != "float32", c[1][-1])
    )
    ratio = {(r["family"], r["mode"], r["dtype"], tuple(r["shape"])): r for r in ours}
    head = " | ".join(f"{d} {s[0]}x{s[1]}" for d, s in cases)
    lines = [f"| function | mode | target | {head} |", "|---|---|---|" + "---|" * len(cases)]
    for family in peers.FAMILIES:
        for mode in MODES:
            cells = [_cell(ratio.get((family, mode) + c)) for c in cases]
            if any(cells):
                limit = SPEED_TARGETS.get((family, mode))
                t = "" if limit is None else f"<= {limit:g}x"
                lines.append(f"| {family} | {mode} | {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(r: dict | None) -> str:
    """``1.02x [0.98-1.05]``: the median ratio, and the ratios over each half of the rounds."""
    if r is None:
        return ""
    halves = r.get("ratio_halves") or []
    spread = f" [{min(halves):.2f}-{max(halves):.2f}]" if halves else ""
    return f"{r['ratio_to_reference']:.2f}x{spread}"


def variants_summary(results: dict) -> str:
    """The ratios on the input variants (masked vocabulary, confident rows, +inf rows)."""
    rows = [
        r
        for r in results["timings"]
        if r["impl"] == peers.OURS
        and r["ratio_to_reference"] is not None
        and r.get("case", "normal") != "normal"
    ]
    if not rows:
        return ""
    cols = sorted({(r["dtype"], tuple(r["shape"]), r["case"]) for r in rows})
    index = {(r["family"], r["mode"], r["dtype"], tuple(r["shape"]), r["case"]): r for r in rows}
    head = " | ".join(f"{d} {s[0]}x{s[1]} {c}" for d, s, c in cols)
    lines = [f"| function | mode | {head} |", "|---|---|" + "---|" * len(cols)]
    for family in peers.FAMILIES:
        for mode in MODES:
            cells = [_cell(index.get((family, mode) + c)) for c in cols]
            if any(cells):
                lines.append(f"| {family} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1e3:.2f}"


def _ratio(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}x"


def _mib(b: int | None) -> str:
    return "n/a" if b is None else f"{b / 2**20:.2f}"


def markdown(results: dict) -> str:
    meta = results["meta"]
    quick = " [--quick: a harness check, not a measurement]" if results["config"]["quick"] else ""
    lines = [
        (
            f"Measured {meta['date']} on {meta['cpu']} ({meta['cpu_count']} cores, "
            f"1-min load average {_load(meta)} at start), jax {meta['versions']['jax']} "
            f"({meta['jax_backend']}), {results['config']['repeats']} timed runs per figure "
            f"(median, interleaved){quick}."
        ),
        "",
        (
            "Median time of jaxsoft / its reference peer (jax.nn; optax for cross_entropy), "
            "with the ratio over each half of the rounds in brackets (how much a rerun moves it):"
        ),
        "",
        summary(results),
        (
            "| dtype | shape | function | mode | jaxsoft ms | reference | ref ms | jaxsoft/ref "
            "| jaxsoft/(x*2.0) | x*2.0 ms | other peers ms |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [r for r in results["timings"] if r.get("case", "normal") == "normal"]
    index = {(r["dtype"], tuple(r["shape"]), r["family"], r["impl"], r["mode"]): r for r in rows}
    for r in rows:
        if r["impl"] != peers.OURS:
            continue
        key = (r["dtype"], tuple(r["shape"]))
        ref_impl = peers.REFERENCE[r["family"]]
        ref = index.get(key + (r["family"], ref_impl, r["mode"]))
        x2 = index[key + (X2, X2, FORWARD)]
        others = [
            f"{o['impl']} {_ms(o['median_s'])}"
            for o in rows
            if (o["dtype"], tuple(o["shape"]), o["family"], o["mode"])
            == key + (r["family"], r["mode"])
            and o["impl"] not in (peers.OURS, ref_impl)
        ]
        lines.append(
            f"| {r['dtype']} | {tuple(r['shape'])} | {r['family']} | {r['mode']} "
            f"| {_ms(r['median_s'])} "
            f"| {ref_impl} | {_ms(ref and ref['median_s'])} | {_ratio(r['ratio_to_reference'])} "
            f"| {_ratio(r['ratio_to_x2'])} | {_ms(x2['median_s'])} | {', '.join(others)} |"
        )
    variants = variants_summary(results)
    if variants:
        lines += [
            "",
            "The same ratios on inputs that no fast path can hide from ("
            + "; ".join(
                f"{k}: {v}" for k, v in results.get("variants", {}).items() if k != "normal"
            )
            + "):",
            "",
            variants.rstrip("\n"),
        ]
    if results.get("compile"):
        lines += [
            "",
            "| function | compile value_and_grad: jaxsoft s | reference | reference s | ratio |",
            "|---|---|---|---|---|",
        ]
        for c in results["compile"]:
            lines.append(
                f"| {c['family']} | {c['ours_median_s']:.3f} | {c['reference']} "
                f"| {c['reference_median_s']:.3f} | {c['ratio_to_reference']:.2f}x |"
            )
    if results["jacobian"]:
        lines += [
            "",
            "| n | analytic ms | jacfwd ms | jacrev ms | jacfwd/analytic | jacrev/analytic |",
            "|---|---|---|---|---|---|",
        ]
        jac = {(r["n"], r["impl"]): r for r in results["jacobian"]}
        for n in sorted({r["n"] for r in results["jacobian"]}):
            a, f, v = jac[(n, "analytic")], jac[(n, "jacfwd")], jac[(n, "jacrev")]
            lines.append(
                f"| {n} | {_ms(a['median_s'])} | {_ms(f['median_s'])} | {_ms(v['median_s'])} "
                f"| {_ratio(f['time_vs_analytic'])} | {_ratio(v['time_vs_analytic'])} |"
            )
    lines += [
        "",
        "| dtype | shape | function | mode | jaxsoft temp MiB | reference temp MiB | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in results["memory"]:
        lines.append(
            f"| {m['dtype']} | {tuple(m['shape'])} | {m['family']} | {m['mode']} "
            f"| {_mib(m['ours_temp_bytes'])} | {_mib(m['reference_temp_bytes'])} "
            f"| {'yes' if m['ok'] else 'NO' if m['ok'] is False else 'n/a'} |"
        )
    lines += ["", "Targets:"]
    for t in results["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        miss = f" ({'; '.join(t['misses'])})" if t["misses"] else ""
        lines.append(f"- {verdict}: {t['target']}{miss}")
    if results["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"
