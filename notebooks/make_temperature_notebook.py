"""Build notebooks/temperature.ipynb from the cells below, then execute it in place to embed outputs.

Run from the repository root: ``.venv/bin/python notebooks/make_temperature_notebook.py``.
Edit the notebook by editing this file and re-running it, so the stored outputs always come from
one clean top-to-bottom run (the same run tests/test_notebook.py does).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "temperature.ipynb"

CELLS: list[tuple[str, str]] = []


def md(text: str) -> None:
    CELLS.append(("markdown", text.strip("\n")))


def code(text: str) -> None:
    CELLS.append(("code", text.strip("\n")))


# ------------------------------------------------------------------------------------------------
md(r"""
# What temperature does to softArgMax

This notebook is a tour of `jaxsoft` through one parameter, the temperature $t$:

$$\mathrm{softargmax}_t(x)_i = \frac{e^{x_i/t}}{\sum_j e^{x_j/t}}, \qquad
\mathrm{logsumexp}_t(x) = t \log \sum_j e^{x_j/t}.$$

Every claim made in a text cell is checked by an `assert` in the code cell under it, so running the
notebook top to bottom is also a test (CI does exactly that). All randomness uses fixed PRNG keys,
and every figure is also saved under `notebooks/figures/`.

We work in float64 (`jax_enable_x64`), except in section 4, which is about what float32 does.
""")

code(r"""
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import mpmath
import numpy as np
from IPython.display import Image, display

import jaxsoft
from jaxsoft.gumbel import gumbel_softargmax

FIGURES = Path("figures")
FIGURES.mkdir(exist_ok=True)
plt.rcParams.update({"figure.dpi": 90, "savefig.dpi": 90, "font.size": 10,
                     "axes.grid": True, "grid.alpha": 0.3})


def show(fig, name):
    # Save once and display that very file, so the notebook shows exactly what figures/ holds.
    path = FIGURES / f"{name}.png"
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    display(Image(filename=str(path)))


x = jnp.array([2.0, 1.0, 0.5, 0.0, -1.0])  # the logit vector used throughout
n = x.shape[0]
print("jaxsoft", jaxsoft.__version__, "| jax", jax.__version__, "| backend", jax.default_backend())
""")

# ------------------------------------------------------------------------------------------------
md(r"""
## 1. From hard argmax to uniform

Below, $\mathrm{softargmax}_t(x)$ for $t$ from $10^{-2}$ to $10^{2}$ (one temperature per row: `t`
may be an array). Every row sums to 1. As $t \to 0$ the distribution becomes the one-hot of the
argmax, and `t=0` returns that limit exactly, splitting ties evenly; as $t \to \infty$ it becomes
uniform, $1/n$ each.
""")

code(r"""
ts = jnp.logspace(-2, 2, 200)
P = jaxsoft.softargmax(jnp.broadcast_to(x, (ts.size, n)), t=ts)  # row k uses t = ts[k]

assert np.allclose(P.sum(axis=1), 1.0, atol=1e-14)
one_hot = np.eye(n)[int(jnp.argmax(x))]
assert np.array_equal(jaxsoft.softargmax(x, t=0.0), one_hot)
assert np.allclose(jaxsoft.softargmax(x, t=1e-3), one_hot, atol=1e-12)
assert np.allclose(jaxsoft.softargmax(x, t=1e4), np.full(n, 1 / n), atol=1e-3)
assert np.array_equal(jaxsoft.softargmax(jnp.array([1.0, 1.0, 0.0]), t=0.0), [0.5, 0.5, 0.0])

fig, ax = plt.subplots(figsize=(7, 3.6))
ax.stackplot(np.asarray(ts), np.asarray(P).T, labels=[f"$x_{i}$ = {float(v):+.1f}" for i, v in enumerate(x)],
             alpha=0.85)
ax.axhline(0.5, color="k", lw=0.5)
ax.set(xscale="log", xlim=(ts[0], ts[-1]), ylim=(0, 1), xlabel="temperature t",
       ylabel="cumulative probability", title="softargmax$_t$(x): one-hot at small t, uniform at large t")
ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), title="logit")
show(fig, "01_softargmax_vs_t")

print("   t     " + "  ".join(f"p_{i}    " for i in range(n)))
for t in [0.0, 0.1, 1.0, 10.0, 1e4]:
    print(f"{t:7.1f}  " + "  ".join(f"{float(p):.5f}" for p in jaxsoft.softargmax(x, t=t)))
""")

# ------------------------------------------------------------------------------------------------
md(r"""
## 2. Entropy grows with temperature

The entropy $H(p_t) = -\sum_i p_i \log p_i$ never decreases as $t$ grows, and it is bounded by
$\log n$, the entropy of the uniform distribution, which it approaches for large $t$. As $t \to 0$
it goes to $\log k$, $k$ the number of tied maxima ($0$ for a unique maximum).
We compute $p \log p$ from `log_softargmax`, which stays finite where $p$ underflows.
""")

code(r"""
def entropy(v, t):
    logp = jaxsoft.log_softargmax(jnp.broadcast_to(v, (t.size, v.shape[0])), t=t)
    return -jnp.sum(jnp.exp(logp) * logp, axis=1)


ts = jnp.logspace(-2, 2, 200)
vectors = {
    "x (n = 5)": x,
    "a tie of two maxima (n = 5)": jnp.array([1.0, 1.0, 0.0, -1.0, -2.0]),
    "random normal, scale 3 (n = 12)": 3 * jax.random.normal(jax.random.key(0), (12,)),
}
limits_at_zero = {"x (n = 5)": 0.0, "a tie of two maxima (n = 5)": np.log(2),
                  "random normal, scale 3 (n = 12)": 0.0}

fig, ax = plt.subplots(figsize=(7, 3.6))
for (name, v), color in zip(vectors.items(), ["C0", "C1", "C2"]):
    H = np.asarray(entropy(v, ts))
    log_n = np.log(v.shape[0])
    assert np.all(np.diff(H) >= -1e-12), name           # non-decreasing in t
    assert np.all(H <= log_n + 1e-12), name             # bounded by log n
    assert abs(entropy(v, jnp.array([1e4]))[0] - log_n) < 1e-3, name
    assert abs(entropy(v, jnp.array([1e-3]))[0] - limits_at_zero[name]) < 1e-9, name
    ax.plot(ts, H, color=color, label=name)
    ax.axhline(log_n, color=color, ls="--", lw=1)
ax.set(xscale="log", xlabel="temperature t", ylabel="entropy H(p$_t$) [nats]",
       title="Entropy of softargmax$_t$ rises to log n (dashed)")
ax.legend(loc="upper left")
show(fig, "02_entropy_vs_t")
""")

# ------------------------------------------------------------------------------------------------
md(r"""
## 3. The good and the bad smooth maximum

`logsumexp` with temperature is a smooth maximum that stays within a band above $\max(x)$
(SPEC 2.1): $\max(x) \le t \log\sum_i e^{x_i/t} \le \max(x) + t\log n$.
The softargmax-weighted mean $\langle x, \mathrm{softargmax}_t(x)\rangle$ (the notes' "bad
softMax", `softargmax_mean`) always stays at or below $\max(x)$ (SPEC 4.1), and at or above the plain
mean of $x$. As $t \to 0$ both tend to $\max(x)$; as $t$ grows the weighted mean falls towards the
plain mean while logsumexp keeps growing. The shaded regions are these bounds.
On a constant vector, the weighted mean returns the constant and logsumexp adds $t\log n$.
""")

code(r"""
ts = jnp.logspace(-2, 0.5, 200)
X = jnp.broadcast_to(x, (ts.size, n))
lse = np.asarray(jaxsoft.logsumexp(X, axis=-1, t=ts))
wmean = np.asarray(jaxsoft.softargmax_mean(X, t=ts))
mx, mean = float(x.max()), float(x.mean())
tsn = np.asarray(ts)

assert np.all(lse >= mx) and np.all(lse <= mx + tsn * np.log(n) + 1e-12)
assert np.all(wmean <= mx) and np.all(wmean >= mean)
assert np.all(np.diff(lse) >= 0) and np.all(np.diff(lse[tsn >= 0.1]) > 0)
assert np.all(np.diff(wmean) <= 1e-15)
assert abs(lse[0] - mx) < 1e-12 and abs(wmean[0] - mx) < 1e-12   # t = 0.01
assert abs(float(jaxsoft.softargmax_mean(x, t=1e6)) - mean) < 1e-5
a = jnp.full(3, 0.7)
assert abs(float(jaxsoft.softargmax_mean(a)) - 0.7) < 1e-15
assert abs(float(jaxsoft.logsumexp(a)) - (0.7 + np.log(3))) < 1e-15

fig, ax = plt.subplots(figsize=(7, 3.8))
ax.fill_between(tsn, mx, mx + tsn * np.log(n), color="C0", alpha=0.15,
                label="[max x, max x + t log n]  (SPEC 2.1)")
ax.fill_between(tsn, mean, mx, color="C3", alpha=0.12, label="[mean x, max x]")
ax.plot(tsn, lse, color="C0", lw=2, label="t logsumexp(x / t)  (good)")
ax.plot(tsn, wmean, color="C3", lw=2, label="<x, softargmax$_t$(x)>  (bad)")
ax.axhline(mx, color="k", lw=1, ls="--", label="max x")
ax.set(xscale="log", xlabel="temperature t", ylabel="value",
       title="Smooth maxima of x as t varies")
ax.legend(loc="upper left", fontsize=8)
show(fig, "03_smooth_max")
print(f"constant vector a = (0.7, 0.7, 0.7): softargmax_mean = {float(jaxsoft.softargmax_mean(a))}, "
      f"logsumexp = {float(jaxsoft.logsumexp(a)):.6f} = 0.7 + log 3")
""")

# ------------------------------------------------------------------------------------------------
md(r"""
## 4. Why the stable forms matter (float32)

**softArgMax of large logits.** The textbook `exp(x) / sum(exp(x))` overflows to `inf / inf = NaN`
in float32 once a logit reaches 89 ($e^{89}$ exceeds the largest float32), and underflows to
`0 / 0 = NaN` once all logits are at or below -88 ($e^{-88}$ is below the smallest normal float32,
and XLA flushes such subnormal results to 0). So every row of the table below is NaN for the naive
form. jaxsoft shifts by the maximum first, and its float32
result agrees with a 50-digit mpmath reference to about float32 precision at every magnitude.
""")

code(r"""
mpmath.mp.dps = 50


def reference_softmax(v):
    e = [mpmath.exp(mpmath.mpf(float(a))) for a in v]
    s = mpmath.fsum(e)
    return np.array([float(a / s) for a in e])


def max_rel_err(got, ref):
    got = np.asarray(got, np.float64)
    return float(np.max(np.abs(got - ref) / ref))


def naive_softmax(v):
    return jnp.exp(v) / jnp.sum(jnp.exp(v))


assert np.isinf(jnp.exp(jnp.float32(89))) and np.isfinite(jnp.exp(jnp.float32(88)))
assert jnp.exp(jnp.float32(-87)) > 0 and jnp.exp(jnp.float32(-88)) == 0

pattern = jnp.array([1.0, 0.9995, 0.999], jnp.float32)
print(f"{'logits':>26}  {'naive exp/sum':>13}  {'jaxsoft':>10}   (max relative error vs mpmath)")
for scale in [1e2, 1e3, 1e4, -1e2, -1e3, -1e4]:
    v = jnp.float32(scale) * pattern
    ref = reference_softmax(v)
    err_naive = max_rel_err(naive_softmax(v), ref)
    err_ours = max_rel_err(jaxsoft.softargmax(v), ref)
    assert jaxsoft.softargmax(v).dtype == jnp.float32
    assert err_ours < 1e-6
    assert np.isnan(err_naive)
    print(f"{scale:+7.0e} * (1, .9995, .999)  {err_naive:13.3g}  {err_ours:10.2g}")
""")

md(r"""
**log-softArgMax near 0.** When one logit dominates, $\log p_0 = -\log(1 + e^{-d})
\approx -e^{-d}$ for $x = (0, -d)$. Both naive forms, `log(softmax(x))` and the shifted
`x - m - log(sum(exp(x - m)))`, compute $1 + e^{-d}$ first, which rounds to exactly 1 in float32
once $d \gtrsim 17$: the answer becomes 0, a 100% relative error. jaxsoft's
$(x_0 - m) - \mathrm{log1p}(\sum_{j\ne k} e^{x_j - m})$ keeps a float32-accurate result for every
$d$ shown (relative error below $10^{-6}$).
""")

code(r"""
def reference_logp0(d):
    return float(-mpmath.log1p(mpmath.exp(-mpmath.mpf(d))))


def naive_log_softmax(v):
    return jnp.log(naive_softmax(v))


def shifted_log_softmax(v):
    m = jnp.max(v)
    return v - m - jnp.log(jnp.sum(jnp.exp(v - m)))


ds = np.arange(1, 61)
errs = {"log(exp(x) / sum exp(x))": [], "x - m - log(sum exp(x - m))": [], "jaxsoft.log_softargmax": []}
for d in ds:
    v = jnp.array([0.0, -float(d)], jnp.float32)
    ref = reference_logp0(d)
    for name, f in zip(errs, [naive_log_softmax, shifted_log_softmax, jaxsoft.log_softargmax]):
        errs[name].append(abs(float(f(v)[0]) - ref) / abs(ref))
errs = {k: np.array(e) for k, e in errs.items()}

assert np.all(errs["jaxsoft.log_softargmax"] < 1e-6)
big = ds >= 17
assert np.all(errs["log(exp(x) / sum exp(x))"][big] == 1.0)
assert np.all(errs["x - m - log(sum exp(x - m))"][big] == 1.0)

print(f"{'d':>3}  {'reference log p_0':>18}  " + "  ".join(f"{k:>28}" for k in errs))
for d in [5, 10, 20, 30, 40]:
    v = jnp.array([0.0, -float(d)], jnp.float32)
    row = [float(f(v)[0]) for f in (naive_log_softmax, shifted_log_softmax, jaxsoft.log_softargmax)]
    print(f"{d:3d}  {reference_logp0(d):18.6e}  " + "  ".join(f"{r:28.6e}" for r in row))

fig, ax = plt.subplots(figsize=(7, 3.6))
for (name, e), style in zip(errs.items(), ["o-", "s--", "^-"]):
    ax.plot(ds, np.maximum(e, 1e-10), style, ms=3, label=name)
ax.axhline(np.finfo(np.float32).eps, color="k", lw=0.8, ls=":", label="float32 eps")
ax.set(yscale="log", ylim=(1e-10, 3), xlabel="d  (x = (0, -d), float32)",
       ylabel="relative error of log p$_0$", title="log-softargmax of a dominant logit (0 error drawn at 1e-10)")
ax.legend(fontsize=8, loc="center right")
show(fig, "04_log_softmax_accuracy")
""")

# ------------------------------------------------------------------------------------------------
md(r"""
## 5. The derivative in temperature

`t` is differentiable. The derivative $\partial p/\partial t$ from jaxsoft's custom JVP matches the formula $-p\,(x - \langle p, x\rangle)/t^2$ (SPEC 1.7) to rounding
(relative difference below $10^{-10}$) and a central finite difference to better than $10^{-7}$
relative (the finite difference's own truncation and rounding error). The
derivative of $\mathrm{logsumexp}_t$ in $t$ is the entropy of $p_t$.
""")

code(r"""
ts = jnp.logspace(-1, 1, 60)
dp_jvp = jax.vmap(jax.jacfwd(lambda t: jaxsoft.softargmax(x, t=t)))(ts)       # (60, n)
p = jax.vmap(lambda t: jaxsoft.softargmax(x, t=t))(ts)
dp_formula = -p * (x - jnp.sum(p * x, axis=1, keepdims=True)) / ts[:, None] ** 2
h = 1e-5 * ts
dp_fd = (jax.vmap(lambda t: jaxsoft.softargmax(x, t=t))(ts + h)
         - jax.vmap(lambda t: jaxsoft.softargmax(x, t=t))(ts - h)) / (2 * h[:, None])

scale = np.max(np.abs(dp_jvp), axis=1)
err_formula = np.max(np.abs(dp_jvp - dp_formula), axis=1) / scale
err_fd = np.max(np.abs(dp_jvp - dp_fd), axis=1) / scale
assert np.all(err_formula < 1e-10)
assert np.all(err_fd < 1e-7)
dlse_dt = jax.vmap(jax.grad(lambda t: jaxsoft.logsumexp(x, t=t)))(ts)
H = -jnp.sum(p * jnp.log(p), axis=1)
assert np.allclose(dlse_dt, H, rtol=1e-12)

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
for i in range(n):
    ax0.plot(ts, dp_jvp[:, i], color=f"C{i}", label=f"$\\partial p_{i}/\\partial t$ (JVP)")
    ax0.plot(ts[::4], dp_fd[::4, i], "o", color=f"C{i}", ms=3, mfc="none")
ax0.plot([], [], "ko", mfc="none", ms=3, label="finite difference")
ax0.set(xscale="log", xlabel="temperature t", ylabel="dp$_i$/dt", title="Derivative of softargmax$_t$(x) in t")
ax0.legend(fontsize=7, ncol=2)
ax1.plot(ts, err_fd, label="JVP vs central finite difference")
ax1.plot(ts, np.maximum(err_formula, 1e-17), label="JVP vs $-p(x - \\langle p,x\\rangle)/t^2$")
ax1.set(xscale="log", yscale="log", xlabel="temperature t", ylabel="max relative difference",
        title="Agreement (float64)")
ax1.legend(fontsize=8)
show(fig, "05_dp_dt")
""")

# ------------------------------------------------------------------------------------------------
md(r"""
## 6. The Jacobian at three temperatures

$J = (\mathrm{diag}(p) - p p^\top)/t$ (SPEC 1.5). `softargmax_jacobian` builds it analytically; it
agrees with `jax.jacfwd` of `softargmax` to rounding. It is symmetric, its rows sum to 0 (the
vector of ones is in its null space) and it is positive semi-definite. At low temperature it is
concentrated on the two largest logits (their $2\times 2$ block holds over 85% of $\sum|J_{ij}|$ at
$t = 0.25$); from $t = 1$ on it shrinks as $t$ grows, approaching
$(I - \tfrac1n \mathbf{1}\mathbf{1}^\top)/(nt)$ (within 0.2% of that matrix's scale at $t = 1000$).
""")

code(r"""
temps = [0.25, 1.0, 4.0]
fig, axes = plt.subplots(2, 3, figsize=(10, 6.2))
for col, t in enumerate(temps):
    J = np.asarray(jaxsoft.softargmax_jacobian(x, t=t))
    J_ad = np.asarray(jax.jacfwd(lambda v: jaxsoft.softargmax(v, t=t))(x))
    assert np.allclose(J, J_ad, rtol=1e-12, atol=1e-15)
    assert np.allclose(J, J.T, atol=1e-15)
    assert np.allclose(J.sum(axis=1), 0.0, atol=1e-15)
    assert np.linalg.eigvalsh(J).min() > -1e-14
    lim = np.abs(J).max()
    for row, (M, how) in enumerate([(J, "softargmax_jacobian"), (J_ad, "jax.jacfwd")]):
        ax = axes[row, col]
        im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set(title=f"{how}, t = {t}", xlabel="j (logit)", ylabel="i (probability)",
               xticks=range(n), yticks=range(n))
        ax.grid(False)
        fig.colorbar(im, ax=ax, shrink=0.8, label="dp$_i$/dx$_j$")
big_t = 1e3
J_big = np.asarray(jaxsoft.softargmax_jacobian(x, t=big_t))
assert np.abs(J_big * n * big_t - (np.eye(n) - 1 / n)).max() < 2e-3
J_cold = np.abs(np.asarray(jaxsoft.softargmax_jacobian(x, t=0.25)))
assert J_cold[:2, :2].sum() / J_cold.sum() > 0.85
norms = [np.abs(np.asarray(jaxsoft.softargmax_jacobian(x, t=t))).max() for t in [1.0, 4.0, big_t]]
assert norms[0] > norms[1] > norms[2]
fig.suptitle("Jacobian (diag(p) - p p$^T$) / t: analytic (top) and autodiff (bottom)")
fig.tight_layout()
show(fig, "06_jacobians")
""")

# ------------------------------------------------------------------------------------------------
md(r"""
## 7. Gumbel-softargmax samples

`gumbel_softargmax(key, logits, t=t)` returns $\mathrm{softargmax}_t(x + g)$ with i.i.d. Gumbel noise
$g$. Its argmax, returned as a one-hot with `hard=True`, is an exact draw from the categorical
distribution $\mathrm{softargmax}(x)$, whatever $t$ is: below, 20 000 hard draws pass a chi-square
goodness-of-fit test against $\mathrm{softargmax}(x)$ (p-value above 0.001), and at a fixed key the
hard draws are the same at every $t$. The temperature only shapes the soft sample: at $t = 0.1$
the median soft sample puts over 99% of its mass on one category, while at $t = 5$ the median
largest entry is below 0.3 and no sample puts more than 75% on one category.
With `hard=True` the value is exactly one-hot and the gradient is that of the soft sample
(straight-through).
""")

code(r"""
key = jax.random.key(2024)
N = 20_000
X = jnp.broadcast_to(x, (N, n))
hard = np.asarray(gumbel_softargmax(key, X, hard=True))
counts = hard.sum(axis=0)
probs = np.asarray(jaxsoft.softargmax(x))
chi2 = float(np.sum((counts - N * probs) ** 2 / (N * probs)))
p_value = float(mpmath.gammainc((n - 1) / 2, chi2 / 2, mpmath.inf, regularized=True))
assert p_value > 1e-3
for t in [0.1, 5.0]:
    assert np.array_equal(gumbel_softargmax(key, X, t=t, hard=True), hard)

soft_t = [0.1, 0.5, 1.0, 5.0]
top = {t: np.asarray(gumbel_softargmax(key, X, t=t)).max(axis=1) for t in soft_t}
assert np.median(top[0.1]) > 0.99
assert np.median(top[5.0]) < 0.3 and np.all(top[5.0] < 0.75)

y_hard = gumbel_softargmax(key, x, t=0.5, hard=True)
assert set(np.asarray(y_hard).tolist()) == {0.0, 1.0} and float(y_hard.sum()) == 1.0
w = jnp.arange(n, dtype=x.dtype)
g_hard = jax.grad(lambda v: jnp.dot(w, gumbel_softargmax(key, v, t=0.5, hard=True)))(x)
g_soft = jax.grad(lambda v: jnp.dot(w, gumbel_softargmax(key, v, t=0.5)))(x)
assert np.allclose(g_hard, g_soft, rtol=1e-12, atol=0) and np.any(g_hard != 0)

print(f"chi-square = {chi2:.2f} on {n - 1} degrees of freedom, p-value = {p_value:.3f}")
print("category      " + "  ".join(f"{i:>7d}" for i in range(n)))
print("frequency     " + "  ".join(f"{c / N:7.4f}" for c in counts))
print("softargmax(x) " + "  ".join(f"{q:7.4f}" for q in probs))

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
ax0.bar(np.arange(n), counts / N, color="C0", alpha=0.7, label=f"hard samples (N = {N})")
ax0.plot(np.arange(n), probs, "kD", ms=6, label="softargmax(x)")
ax0.set(xticks=range(n), xlabel="category i", ylabel="probability",
        title=f"Hard samples vs softargmax(x), chi-square p = {p_value:.2f}")
ax0.legend()
bins = np.linspace(1 / n, 1, 41)
for t, color in zip(soft_t, ["C0", "C1", "C2", "C3"]):
    ax1.hist(top[t], bins=bins, histtype="step", lw=1.6, color=color, density=True, label=f"t = {t}")
ax1.set(yscale="log", xlabel="largest entry of the soft sample, max$_i$ y$_i$", ylabel="density",
        title="Soft samples: near one-hot at small t")
ax1.legend()
show(fig, "07_gumbel_samples")
""")


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.metadata["language_info"] = {"name": "python"}
    for kind, text in CELLS:
        cell = (
            nbformat.v4.new_markdown_cell(text)
            if kind == "markdown"
            else nbformat.v4.new_code_cell(text)
        )
        nb.cells.append(cell)
    # Stable cell ids keep the stored notebook's diff to what changed.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def execute(nb: nbformat.NotebookNode) -> None:
    os.environ["MPLBACKEND"] = "Agg"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # The kernel is the interpreter running this script, whatever kernelspecs are installed.
    km = AsyncKernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[])
    )
    NotebookClient(
        nb,
        km=km,
        timeout=120,
        record_timing=False,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    ).execute()


if __name__ == "__main__":
    nb = build()
    NOTEBOOK.parent.mkdir(exist_ok=True)
    if "--no-run" not in sys.argv:
        execute(nb)
    nbformat.validate(nb)
    nbformat.write(nb, NOTEBOOK)
    print(f"wrote {NOTEBOOK} ({NOTEBOOK.stat().st_size / 1e6:.2f} MB)")
