"""The custom-JVP kernels of logsumexp, softargmax, log_softargmax and the weighted mean.

The public functions (:mod:`jaxsoft._functions`) validate and canonicalise, then call the internal
API at the end of this module: :data:`core`, :data:`core_one`, :data:`wmean`, :func:`forced_kernel`.

The values come from a kernel: :mod:`jaxsoft._reference` (the SPEC written as plainly as the math
allows; every backend but CPU) or :mod:`jaxsoft._tuned_cpu` and :mod:`jaxsoft._tuned_wmean` (the
same results in fewer passes on XLA:CPU), chosen per platform at lowering time (:func:`_primal`);
:func:`use_kernel` forces one.
The derivatives are defined here, once for every kernel (:func:`_core_tangents`): O(n) custom JVP
rules that reuse the primal's outputs.

Kernels work in the canonical layout of :mod:`jaxsoft._checks`: ``x`` and ``mask`` of shape
``(*batch, n)``, ``t`` of shape ``(*batch, 1)`` or ``None`` (meaning ``t = 1``, so no division is
emitted), reducing over the last axis with ``keepdims``.

Edge semantics (SPEC section 6), per row:

================================  ===========  ===========  ======================  ======================
input along the axis              softargmax   logsumexp    log_softargmax          gradients
================================  ===========  ===========  ======================  ======================
finite, any magnitude             exact        exact        exact (log1p form)      finite
some ``-inf``                     0 there      ignores them ``-inf`` there          0 for those entries
one or more ``+inf``              uniform on   ``+inf``     ``-log k`` on the k     finite (limits)
                                  the ``+inf``              ``+inf``, else ``-inf``
all ``-inf`` / fully masked       all 0        ``-inf``     all ``-inf``            all 0
a NaN in the row                  NaN row      NaN          NaN row                 NaN in that row only
``t = 0``                         hard argmax  ``max(x)``   0/``-log k`` on argmax  defined (see below)
================================  ===========  ===========  ======================  ======================

At ``t = 0`` the derivative of softargmax/log_softargmax is 0 (the hard argmax is piecewise
constant); logsumexp's derivative there is the tie-split one-hot in ``x`` and ``log k`` in ``t``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp

from jaxsoft import _reference, _tuned_cpu, _tuned_wmean
from jaxsoft._rowstats import is_zero as _is_zero
from jaxsoft._rowstats import safe_t

_NEG_INF = -jnp.inf


def _rowsum(a: jax.Array, mask: jax.Array | None) -> jax.Array:
    # The mask keeps garbage (NaN tangents, inf) in excluded entries out of the row sums.
    return jnp.sum(a, axis=-1, keepdims=True, where=mask)


# --------------------------------------------------------------------------------------------------
# Kernels and dispatch. Every kernel computes the same (lse, p, log p) (SPEC 1-7, tested against
# each other); the derivatives are defined once, below, for all of them.
# --------------------------------------------------------------------------------------------------

KERNELS = ("reference", "tuned_cpu")
_forced_kernel: str | None = None  # None: dispatch by platform (see _primal)


@contextlib.contextmanager
def use_kernel(name: str | None) -> Iterator[None]:
    """Force one kernel for every function traced inside the block (tests run both this way).

    ``name`` is one of :data:`KERNELS`, or ``None`` for the default per-platform dispatch. The
    choice is part of the public functions' jit cache key, so switching never reuses a trace of the
    other kernel; a ``jax.jit`` of the caller's own, traced before the switch, does keep its kernel.
    """
    global _forced_kernel
    if name is not None and name not in KERNELS:
        raise ValueError(f"use_kernel: name must be one of {KERNELS} or None, got {name!r}")
    previous, _forced_kernel = _forced_kernel, name
    try:
        yield
    finally:
        _forced_kernel = previous


def _kernel_module(name: str | None, fn: str):
    """The module holding kernel ``name``'s function ``fn``; ``None`` for per-platform dispatch."""
    if name == "tuned_cpu":
        return _tuned_module(fn)
    return {"reference": _reference}.get(name)  # type: ignore[arg-type]


def _tuned_module(fn: str):
    # The tuned weighted mean has a module of its own; the tuned core's functions are the rest.
    return _tuned_wmean if fn == "wmean" else _tuned_cpu


def _primal(fn: str, x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """Run kernel function ``fn`` ("core", "core_lse", "core_for_tangents" or "wmean") of the
    chosen kernel."""
    # jit's trace cache keys on the abstract-mesh context, which is unset (None) at the top of a
    # trace but the empty mesh inside a JVP rule (jax 0.10.2): pinning it to the current mesh,
    # the same one, lets the rule reuse the primal's trace.
    with jax.sharding.use_abstract_mesh(jax.sharding.get_abstract_mesh()):
        return _kernel_call(x, t, mask, fn=fn, kernel=_forced_kernel)


@partial(jax.jit, static_argnames=("fn", "kernel"))
def _kernel_call(x, t, mask, *, fn: str, kernel: str | None):
    """:func:`_primal`'s work, behind a ``jit`` so that each kernel is traced once per shape.

    A custom JVP rule calls its primal again (:func:`_core_one_jvp`), and a backward pass traces
    that rule: without the cache every kernel (both platform branches) was traced twice, about
    half of the Python time of compiling a ``value_and_grad`` (jax 0.10.2). XLA inlines the call,
    so the compiled program is the same.

    XLA:CPU gets the tuned kernel, every other backend the reference one: the tuned kernel's
    arithmetic indicators are there to keep XLA:CPU's reductions fused, which other compilers
    do not need, so there they would only add work. The choice is made at lowering time
    (:func:`jax.lax.platform_dependent`); the compiler never sees the other branch.
    """
    module = _kernel_module(kernel, fn)
    if module is not None:
        return getattr(module, fn)(x, t, mask)
    return jax.lax.platform_dependent(
        x, t, mask, cpu=getattr(_tuned_module(fn), fn), default=getattr(_reference, fn)
    )


@jax.custom_jvp
def _core(x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """Return ``(lse, p, logp)`` for canonical ``x``; ``lse`` has shape ``(*batch, 1)``.

    The values come from the kernel chosen by :func:`_primal` (:func:`jaxsoft._reference.core`
    states the math); the tangents from :func:`_core_tangents`, the same for every kernel.
    """
    return _primal("core", x, t, mask)


def _core_jvp(primals, tangents):
    x, t, mask = primals
    dx, dt, _ = tangents
    out = _core(x, t, mask)
    return out, _core_tangents(x, t, mask, out, dx, dt)


_core.defjvp(_core_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _core_recomputed(x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """:func:`_core`'s values from the kernel's ``core_for_tangents``, with the same JVP rule.

    What ``logsumexp``'s JVP rule reads (``lse``, and ``p`` for the backward pass). A tuned kernel
    computes them in the form a backward pass fuses best: ``p`` recomputed from ``x`` where it is
    needed rather than stored (see :func:`jaxsoft._tuned_cpu.core_for_tangents`).
    """
    return _primal("core_for_tangents", x, t, mask)


def _core_recomputed_jvp(primals, tangents):
    x, t, mask = primals
    dx, dt, _ = tangents
    out = _core_recomputed(x, t, mask)
    return out, _core_tangents(x, t, mask, out, dx, dt)


_core_recomputed.defjvp(_core_recomputed_jvp, symbolic_zeros=True)


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _core_one(kind: str, x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """One output of :func:`_core` (``kind``: "lse", "p" or "logp"), with the same JVP rule.

    The primal is the kernel's ``core`` (XLA drops the outputs that are not used), ``core_lse`` for
    ``lse``.
    The rule is :func:`_core_tangents`; what differs is where it gets the primal values it reads,
    chosen so that a backward pass stores no more than ``jax.nn``'s does and reads ``x`` as few
    times: for ``p``, the kernel's ``p``; for ``log p``, ``p = exp(log p)`` (the kernel's
    normaliser sum is then unused, and XLA writes ``log p`` once, in the loop that computes the
    row statistics, as ``jax.nn`` does); for ``lse``, the kernel's ``core_for_tangents``, whose
    ``p`` XLA recomputes in the backward pass.
    """
    if kind == "lse":  # the forward value: see jaxsoft._tuned_cpu.core_lse
        return _primal("core_lse", x, t, mask)[0]
    lse, p, logp = _core(x, t, mask)
    return {"lse": lse, "p": p, "logp": logp}[kind]


def _core_one_jvp(kind, primals, tangents):
    x, t, mask = primals
    dx, dt, _ = tangents
    # The custom_jvp functions, not the kernels: higher derivatives go through this rule again.
    if kind == "lse":
        out = _core_recomputed(x, t, mask)
    else:
        out = _core(x, t, mask)
        if kind == "logp":  # p from log p: the kernel's normaliser sum is then left unused
            out = (out[0], jnp.exp(out[2]), out[2])
    y = {"lse": out[0], "p": out[1], "logp": out[2]}[kind]
    dlse, dp, dlogp = _core_tangents(x, t, mask, out, dx, dt)
    return y, {"lse": dlse, "p": dp, "logp": dlogp}[kind]


_core_one.defjvp(_core_one_jvp, symbolic_zeros=True)


def _core_tangents(x, t, mask, out, dx, dt):
    """Tangents of ``(lse, p, logp)``, O(n), built from the primal outputs only.

    ``d lse = <p, dx> + H(p) dt`` with ``H(p) = -<p, log p>``;
    ``d log p_i = g_i - <p, g>`` with ``g = (dx - log p * dt) / t``, and ``<p, g> = d lse / t``;
    ``d p = p * d log p``. Entries whose ``log p`` is ``-inf`` (excluded, ``-inf`` logits, losers
    of a hard argmax) are constants, so their tangents are 0; so are p's and log p's at ``t = 0``.
    """
    lse, p, logp = out
    with_dt = t is not None and not _is_zero(dt)
    # NaN must stay NaN (it marks a NaN row), so test for -inf rather than for finiteness.
    finite = logp != _NEG_INF
    logp_fin = jnp.where(finite, logp, 0) if with_dt else None
    dlse = jnp.zeros_like(lse)
    g = jnp.zeros_like(x)
    if not _is_zero(dx):
        if mask is not None:
            dx = jnp.where(mask, dx, 0)
        dlse = dlse + _rowsum(p * dx, mask)
        g = g + dx
    if with_dt:
        dlse = dlse - _rowsum(p * logp_fin, mask) * dt
        g = g - logp_fin * dt
    if t is None:
        h = g - dlse
    else:
        t_safe = safe_t(t)
        # <p, g> is dlse / t: no second sum, and no 0 * inf where log p * dt / t overflows.
        h = jnp.where(t == 0, 0, g / t_safe - dlse / t_safe)
    # p's tangent does not need log p (p = 0 wherever log p = -inf), so softargmax's gradient
    # never pays for the log1p reduction. With a t-tangent, h may be inf where p = 0 (a huge
    # log p * dt / t), so p * h is taken as 0 there rather than NaN (NaN rows keep NaN, as
    # NaN == 0 is False); without one h is finite and the select, which would stop XLA fusing
    # the transposed sum, is left out.
    dp = jnp.where(p == 0, 0, p * h) if with_dt else p * h
    if with_dt:
        return dlse, dp, jnp.where(finite, h, 0)
    # Without a t-tangent h is finite, so the -inf entries can be zeroed by a factor that is 1
    # where log p is finite and 0 where it is -inf (NaN stays NaN): big / (tiny - log p) is at
    # least 1 for every finite log p <= 0 and 0 at -inf. Plain arithmetic keeps the transposed
    # row sum fused on XLA:CPU, where a select would write a (batch, n) temporary first. The bound
    # 1 is a per-row array behind a barrier: XLA:CPU writes a broadcast constant shared with the
    # forward pass's fusions (its 1s) to memory as a full-size array (jax 0.10.2).
    big, tiny = jnp.finfo(logp.dtype).max, jnp.finfo(logp.dtype).tiny
    # The factor is piecewise constant, so higher derivatives must not see its (huge) slope.
    one = jax.lax.optimization_barrier(jnp.ones_like(lse))
    finite_factor = jax.lax.stop_gradient(jnp.minimum(one, big / (tiny - logp)))
    return dlse, dp, h * finite_factor


# --------------------------------------------------------------------------------------------------
# The softargmax-weighted mean (the notes' "bad softMax").
# --------------------------------------------------------------------------------------------------


@jax.custom_jvp
def _wmean(x: jax.Array, t: jax.Array | None, mask: jax.Array | None) -> jax.Array:
    """``<x, p>`` over the last axis, ``-inf`` on empty rows; shape ``(*batch, 1)``."""
    return _primal("wmean", x, t, mask)


def _wmean_jvp(primals, tangents):
    """``d<x, p> = <p (1 + (x - w) / t), dx> - <p ((x - w) / t)^2> dt`` (SPEC 4.2, 1.7).

    ``(x - w) / t`` is :func:`jaxsoft._tuned_wmean.centred_gap`'s ``u / s``: centred on ``w``
    through differences to the row max, so that a huge shared offset (tied maxima near float max)
    does not cancel under a tiny ``t``, and bounded on every entry, so ``p * u`` is 0 wherever
    ``p`` is with no full-size select (which XLA:CPU would write to memory, jax 0.10.2), also in
    higher derivatives. On ``+inf`` rows ``u`` is 0 where ``p > 0`` (the limit), as at ``t = 0``
    (the hard argmax). Plain arithmetic for every kernel: it is what the rule must compute.
    """
    x, t, mask = primals
    dx, dt, _ = tangents
    w = _wmean(x, t, mask)
    p = _core(x, t, mask)[1]
    u, s = _tuned_wmean.centred_gap(x, t, mask, p)
    pu = p * u if s is None else (p / s) * u  # p (x - w) / t: 0 where p = 0
    dw = jnp.zeros_like(w)
    if not _is_zero(dx):
        dw = dw + _rowsum((p + pu) * (dx if mask is None else jnp.where(mask, dx, 0)), mask)
    if s is not None and not _is_zero(dt):
        dw = dw - _rowsum(pu * u / s, mask) * dt  # <p ((x - w) / t)^2>
    return w, dw


_wmean.defjvp(_wmean_jvp, symbolic_zeros=True)


# The internal API of this (private) module for the rest of the package: the custom-JVP kernels
# over the canonical layout, and the kernel a test forced (part of jit cache keys).
core = _core
core_one = _core_one
wmean = _wmean


def forced_kernel() -> str | None:
    """The kernel forced by :func:`use_kernel`, or ``None`` for the per-platform default."""
    return _forced_kernel
