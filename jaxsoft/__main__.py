"""``python -m jaxsoft``: the self-check report.

Three tables, each row checked against a stated tolerance; the exit status is 0 only when every
row passes:

1. Jacobians: the analytic ``(diag(p) - p p^T) / t`` against ``jax.jacfwd``, ``jax.jacrev`` and a
   float64 central finite difference, on random and edge inputs and several temperatures.
2. Accuracy: float32 results in ulps against a float64 reference computed independently here
   (``math.fsum``/``math.log1p`` on the float32 inputs).
3. Edges: SPEC section 6 as actually computed (values and whether any gradient is NaN).
"""

from __future__ import annotations

import argparse
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxsoft as js

F32 = jnp.float32


def _table(title, header, rows):
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print(line)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def _fmt(v):
    return f"{v:.2e}"


def jacobian_rows():
    rng = np.random.default_rng(0)
    inputs = {
        "random n=8": rng.normal(size=8),
        "shift 1e6": rng.normal(size=8) + 1e6,
        "with -inf": np.array([0.3, -np.inf, 1.2, -0.5, -np.inf, 2.0]),
        "with +inf": np.array([np.inf, 0.3, np.inf, -1.0]),
        "ties": np.array([1.0, 1.0, 0.0, -2.0]),
    }
    rows, ok = [], True
    for name, x in inputs.items():
        for t in (0.05, 1.0, 20.0):
            x64 = jnp.asarray(x, jnp.float64)
            analytic = np.asarray(js.softargmax_jacobian(x64, t=t))
            f = lambda v, t=t: js.softargmax(v, t=t)
            fwd = np.asarray(jax.jacfwd(f)(x64))
            rev = np.asarray(jax.jacrev(f)(x64))
            scale = 1.0 / t
            d_fwd = np.max(np.abs(fwd - analytic)) / scale
            d_rev = np.max(np.abs(rev - analytic)) / scale
            if np.all(np.isfinite(x)):
                h = 1e-6 * max(1.0, np.max(np.abs(x)) * 1e-9) * t
                fd = np.stack(
                    [
                        (np.asarray(f(x64.at[j].add(h))) - np.asarray(f(x64.at[j].add(-h))))
                        / (2 * h)
                        for j in range(x.size)
                    ],
                    axis=1,
                )
                d_fd = np.max(np.abs(fd - analytic)) / scale
                fd_tol = 1e-6 if x.max() < 1e3 else 5e-3  # h is rounded against x itself at 1e6
                fd_txt = _fmt(d_fd)
                fd_ok = d_fd <= fd_tol
            else:
                fd_txt, fd_ok = "n/a (inf)", True
            finite = bool(np.all(np.isfinite(fwd)) and np.all(np.isfinite(rev)))
            good = d_fwd <= 1e-12 and d_rev <= 1e-12 and fd_ok and finite
            ok &= good
            rows.append([name, t, _fmt(d_fwd), _fmt(d_rev), fd_txt, "ok" if good else "FAIL"])
    _table(
        "1. Jacobian of softargmax: max |J - J_analytic| * t (float64; tol 1e-12 for jacfwd/jacrev, 1e-6 for finite diff.)",
        ["input", "t", "jacfwd", "jacrev", "finite diff", "status"],
        rows,
    )
    return ok


def _ref_lse(row):
    m = max(row)
    terms = [math.exp(v - m) for v in row if v != m]
    c = sum(1 for v in row if v == m)
    return m + math.log1p((c - 1) + math.fsum(terms))


def _ulps(got, want):
    want32 = np.float32(want)
    spacing = (
        float(np.spacing(np.abs(want32)))
        if want32 != 0
        else float(np.finfo(np.float32).smallest_subnormal)
    )
    return abs(float(got) - want) / spacing


def accuracy_rows():
    rng = np.random.default_rng(1)
    cases = {
        "normal(0, 3) n=16": [rng.normal(size=16) * 3 for _ in range(50)],
        "dominant logit": [np.concatenate([[0.0], -25 - rng.random(5) * 10]) for _ in range(50)],
        "[0, -30, -40]": [np.array([0.0, -30.0, -40.0])],
        "huge (1e30)": [rng.normal(size=8) * 1e29 + 1e30 for _ in range(20)],
    }
    rows, ok = [], True
    for name, rows_in in cases.items():
        x = np.stack(rows_in).astype(np.float32)
        xd = x.astype(np.float64)
        lse = np.asarray(js.logsumexp(jnp.asarray(x), axis=-1))
        lsm = np.asarray(js.log_softargmax(jnp.asarray(x)))
        lse_err = max(_ulps(lse[i], _ref_lse(list(xd[i]))) for i in range(len(x)))
        lsm_err = 0.0
        for i in range(len(x)):
            ref = _ref_lse(list(xd[i]))
            for j in range(x.shape[1]):
                lsm_err = max(lsm_err, _ulps(lsm[i, j], xd[i, j] - ref))
        lsm_tol = 4.0 if name != "normal(0, 3) n=16" else 8.0  # x - m itself is rounded there
        good = lse_err <= 2.0 and lsm_err <= lsm_tol
        ok &= good
        rows.append(
            [
                name,
                f"{lse_err:.2f} (<= 2)",
                f"{lsm_err:.2f} (<= {lsm_tol:g})",
                "ok" if good else "FAIL",
            ]
        )
    naive = float(jnp.float32(0.0) - jax.nn.logsumexp(jnp.array([0.0, -30.0], F32)))
    ours = float(js.log_softargmax(jnp.array([0.0, -30.0], F32))[0])
    rows.append(
        [
            "log p_0 of [0, -30]",
            f"ours {ours:.6e}",
            f"x - logsumexp: {naive:.1e}",
            "ok" if ours != 0 else "FAIL",
        ]
    )
    ok &= ours != 0
    _table(
        "2. float32 accuracy vs a float64 reference, max error in float32 ulps",
        ["input", "logsumexp", "log_softargmax", "status"],
        rows,
    )
    return ok


def edge_rows():
    inf, nan = np.inf, np.nan
    cases = [
        ("finite 1e30", [1e30, -1e30, 5e29], 1.0, None),
        ("some -inf", [1.0, -inf, 2.0], 1.0, None),
        ("+inf x2", [inf, 1.0, inf], 1.0, None),
        ("all -inf", [-inf, -inf, -inf], 1.0, None),
        ("fully masked", [1.0, nan, inf], 1.0, [False, False, False]),
        ("NaN", [1.0, nan, 2.0], 1.0, None),
        ("t = 0, ties", [1.0, 3.0, 3.0], 0.0, None),
    ]
    expected = {
        "finite 1e30": ([1, 0, 0], 1e30),
        "some -inf": (
            list(np.asarray(jax.nn.softmax(jnp.array([1.0, -inf, 2.0])))),
            float(jax.nn.logsumexp(jnp.array([1.0, 2.0]))),
        ),
        "+inf x2": ([0.5, 0, 0.5], inf),
        "all -inf": ([0, 0, 0], -inf),
        "fully masked": ([0, 0, 0], -inf),
        "NaN": ([nan, nan, nan], nan),
        "t = 0, ties": ([0, 0.5, 0.5], 3.0),
    }
    rows, ok = [], True
    for name, x, t, w in cases:
        xa = jnp.asarray(x, F32)
        wa = None if w is None else jnp.asarray(w)
        p = np.asarray(js.softargmax(xa, t=t, where=wa))
        lse = float(js.logsumexp(xa, t=t, where=wa))
        lsm = np.asarray(js.log_softargmax(xa, t=t, where=wa))
        grads = [
            jax.grad(lambda v, f=f, t=t, wa=wa: jnp.sum(f(v, t=t, where=wa)))(xa)
            for f in (js.softargmax, js.log_softargmax, js.logsumexp, js.softargmax_mean)
        ]
        grad_nan = any(bool(jnp.any(jnp.isnan(g))) for g in grads)
        want_p, want_lse = expected[name]
        good = np.allclose(p, want_p, rtol=1e-6, equal_nan=True) and (
            (math.isnan(lse) and math.isnan(want_lse))
            or math.isclose(lse, want_lse, rel_tol=1e-6)
            or lse == want_lse
        )
        good &= grad_nan == (name == "NaN")
        ok &= good
        rows.append(
            [
                name,
                np.array2string(p, precision=3),
                f"{lse:.4g}",
                np.array2string(lsm, precision=3),
                "NaN" if grad_nan else "finite",
                "ok" if good else "FAIL",
            ]
        )
    _table(
        "3. SPEC 6 edges as computed (float32)",
        ["input", "softargmax", "logsumexp", "log_softargmax", "gradients", "status"],
        rows,
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jaxsoft",
        description="jaxsoft's self-check: Jacobians against jax.jacfwd/jacrev and finite "
        "differences, float32 accuracy in ulps against float64 references, and the SPEC 6 edge "
        "table as computed (SPEC: docs/spec.md). Exit status 0 only when every row is within its "
        "stated tolerance.",
    )
    parser.add_argument("--version", action="version", version=f"jaxsoft {js.__version__}")
    parser.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # float64 for the references; the checks pick dtypes
    print(f"jaxsoft {js.__version__} self-check (jax {jax.__version__}, {jax.default_backend()})")
    results = [jacobian_rows(), accuracy_rows(), edge_rows()]
    ok = all(results)
    print("\nALL CHECKS PASSED" if ok else "\nSOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
