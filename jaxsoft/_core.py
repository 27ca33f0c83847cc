"""logsumexp, softargmax, log_softargmax and the softargmax-weighted mean, with their JVP rules.

The values come from a kernel: :mod:`jaxsoft._reference` (the SPEC written as plainly as the math
allows; every backend but CPU) or :mod:`jaxsoft._tuned_cpu` (the same results in fewer passes on
XLA:CPU), chosen per platform at lowering time (:func:`_primal`); :func:`use_kernel` forces one.
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
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxsoft import _checks, _reference, _tuned_cpu

_NEG_INF = -jnp.inf


def _is_zero(tangent) -> bool:
    return tangent is None or isinstance(tangent, SymbolicZero)


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


def _kernel_module(name: str | None):
    return {"reference": _reference, "tuned_cpu": _tuned_cpu}.get(name)  # type: ignore[arg-type]


def _primal(fn: str, x: jax.Array, t: jax.Array | None, mask: jax.Array | None):
    """Run kernel function ``fn`` ("core", "core_for_tangents" or "wmean") of the chosen kernel."""
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
    module = _kernel_module(kernel)
    if module is not None:
        return getattr(module, fn)(x, t, mask)
    return jax.lax.platform_dependent(
        x, t, mask, cpu=getattr(_tuned_cpu, fn), default=getattr(_reference, fn)
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

    A tuned kernel computes them so that XLA recomputes ``p`` where a backward pass needs it,
    rather than storing it (see :func:`jaxsoft._tuned_cpu.core_for_tangents`).
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

    The rule is :func:`_core_tangents`; what differs is where it gets the primal values it reads,
    chosen so that a backward pass stores no more than ``jax.nn``'s does: for ``p``, ``p`` itself;
    for ``lse`` and ``log p``, the kernel's ``core_for_tangents``, whose ``p`` XLA can recompute
    where it is needed rather than store.
    """
    # softargmax: the kernel's core, which may fuse the whole row into one loop; lse and log p:
    # the kernel's core_for_tangents, which its JVP rule reads too (so the backward pass
    # recomputes rather than stores), measured to need no more scratch memory than jax.nn.
    lse, p, logp = (_core if kind == "p" else _core_recomputed)(x, t, mask)
    return {"lse": lse, "p": p, "logp": logp}[kind]


def _core_one_jvp(kind, primals, tangents):
    x, t, mask = primals
    dx, dt, _ = tangents
    # The custom_jvp functions, not the kernels: higher derivatives go through this rule again.
    if kind == "p":
        out = _core(x, t, mask)
        y = out[1]
    else:
        out = _core_recomputed(x, t, mask)  # what the primal computes, too
        y = out[0] if kind == "lse" else out[2]
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
        t_safe = jnp.where(t == 0, 1, t)
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
    """``d<x, p> = <p, dx> + <x - w, dp>``: centring on ``w`` keeps huge shared offsets from cancelling."""
    x, t, mask = primals
    dx, dt, _ = tangents
    w = _wmean(x, t, mask)
    out = _core(x, t, mask)
    p = out[1]
    _, dp, _ = _core_tangents(x, t, mask, out, dx, dt)
    # Centre on w computed from differences to the row max: x - w itself can carry the rounding
    # of a huge w, which dp ~ 1/t would magnify (tied maxima near float max, tiny t). In a +inf
    # row the centred term's limit is 0.
    m = jnp.max(jnp.where(p > 0, x, _NEG_INF), axis=-1, keepdims=True)
    d = jnp.where(p > 0, x - jnp.where(jnp.isfinite(m), m, 0), 0)
    centred = jnp.where((p > 0) & (w < jnp.inf), d - _rowsum(p * d, mask), 0)
    dw = _rowsum(centred * dp, mask)
    if not _is_zero(dx):
        dw = dw + _rowsum(p * (dx if mask is None else jnp.where(mask, dx, 0)), mask)
    return w, dw


_wmean.defjvp(_wmean_jvp, symbolic_zeros=True)


# The internal API of this (private) module for the rest of the package: the custom-JVP kernels
# over the canonical layout, and the kernel a test forced (part of jit cache keys).
core = _core
core_one = _core_one


def forced_kernel() -> str | None:
    """The kernel forced by :func:`use_kernel`, or ``None`` for the per-platform default."""
    return _forced_kernel


# --------------------------------------------------------------------------------------------------
# Public functions: validate eagerly, then one jitted dispatch into the canonical kernels.
# --------------------------------------------------------------------------------------------------


@partial(jax.jit, static_argnames=("axes", "kind", "keepdims", "signed", "name", "kernel"))
def _apply(x, t, where, b=None, *, axes, kind, keepdims, name, kernel, signed=False):
    # ``kernel`` (the forced kernel or None) is unused here: it keys the jit cache, so that a trace
    # made under one kernel is never reused under the other (see use_kernel).
    del kernel
    if b is not None:  # the result dtype is that of x and b together, as in jax.nn.logsumexp
        x = x.astype(jnp.result_type(x, b))
    layout, xc, tc, mc, out_dtype = _checks.canonicalize(x, t, where, axes, name)
    if b is not None:
        return _scaled_result(layout, xc, tc, mc, b, out_dtype, keepdims, signed)
    if layout.n == 0:  # an empty reduction: -inf for the reductions, an empty array otherwise
        red = jnp.full(layout.batch + (1,), _NEG_INF, xc.dtype)
        out = red if kind in ("lse", "mean") else xc
    elif kind == "mean":
        out = _wmean(xc, tc, mc)
    else:
        out = _core_one(kind, xc, tc, mc)
    out = out.astype(out_dtype)
    if kind not in ("lse", "mean"):
        return layout.from_canonical(out)
    out = layout.reduced_from_canonical(out, keepdims)
    if not signed:
        return out
    # Without b every sum of exps is positive, or 0 on an empty row (-inf).
    sign = jnp.where(out == _NEG_INF, 0, jnp.where(jnp.isnan(out), jnp.nan, 1))
    return out, sign.astype(out_dtype)


def _scaled_result(layout, xc, tc, mc, b, out_dtype, keepdims, signed):
    """logsumexp with scale factors ``b`` from canonical inputs, in the output layout."""
    if layout.n == 0:
        out = jnp.full(layout.batch + (1,), _NEG_INF, xc.dtype)
        sign = jnp.zeros_like(out)
    else:
        out, sign = _lse_scaled(xc, tc, mc, _checks.canonical_scale(b, layout, xc.dtype))
    if not signed:  # a negative sum has no real log (jax.nn.logsumexp: NaN)
        out = jnp.where(sign < 0, jnp.nan, out)
    out = layout.reduced_from_canonical(out.astype(out_dtype), keepdims)
    if not signed:
        return out
    return out, layout.reduced_from_canonical(sign.astype(out_dtype), keepdims)


def _dispatch(kind, name, x, axis, t, where, keepdims=False):
    x, t, where, axes = _checks.prepare(name, x, axis, t, where)
    return _apply(
        x, t, where, axes=axes, kind=kind, keepdims=keepdims, name=name, kernel=_forced_kernel
    )


# --------------------------------------------------------------------------------------------------
# logsumexp with scale factors b (jax.nn.logsumexp's ``b=``), built on the custom-JVP kernel.
# --------------------------------------------------------------------------------------------------


def _log1mexp(d: jax.Array) -> jax.Array:
    """``log(1 - e^d)`` for ``d < 0``, accurate on both sides of ``-log 2`` (Maechler, 2012).

    Each branch sees only inputs it is accurate and finite on, so neither leaks NaN tangents.
    """
    near = d > -0.6931471805599453
    close = jnp.log(-jnp.expm1(jnp.where(near, d, -1.0)))
    far = jnp.log1p(-jnp.exp(jnp.where(near, -1.0, d)))
    return jnp.where(near, close, far)


def _lse_scaled(x, t, mask, b):
    """``(t log|sum_i b_i e^(x_i/t)|, sign of the sum)`` per row, canonical layout.

    The sum splits into a positive and a negative part, ``e^(L+/t) - e^(L-/t)`` with
    ``L+- = logsumexp_t(x + t log|b|)`` over the entries with ``b > 0`` / ``b < 0`` (one call of
    the custom-JVP kernel on both parts at once), so every edge of the kernel carries over:
    ``b = 0`` entries are left out (as ``jax.nn`` does; their ``x``, even ``+inf`` or NaN, change
    nothing), an all-excluded row is ``-inf`` with sign 0 and zero gradient. The parts combine as
    ``hi + t log(1 - e^((lo - hi)/t))``; a sum that cancels exactly gives ``-inf`` with sign 0 and
    zero gradient. At ``t = 0`` the value is the max over the entries with ``b != 0`` and the sign
    that of the sum of ``b`` over those maxima (``-inf`` and 0 if it is 0).
    """
    keep = b != 0  # NaN b stays in (in the positive part), so its row is NaN
    if mask is not None:
        keep = keep & mask
    neg = b < 0
    log_b = jnp.log(jnp.abs(jnp.where(keep, b, 1)))
    xs = x + (log_b if t is None else t * log_b)
    both = _core_one(
        "lse",
        jnp.stack([xs, xs]),
        None if t is None else jnp.stack([t, t]),
        jnp.stack([keep & ~neg, keep & neg]),
    )
    lp, ln = both[0], both[1]
    take_p = jnp.isnan(lp) | (lp >= ln)  # a NaN part must become hi, so the NaN reaches the value
    hi = jnp.where(take_p, lp, ln)
    lo = jnp.where(take_p, ln, lp)
    d = lo - hi  # <= 0; NaN on NaN rows, rows with both parts +inf, and empty rows
    empty = hi == _NEG_INF
    inf_row = (hi == jnp.inf) & (lo < jnp.inf)
    cancel = d == 0
    special = empty | inf_row | cancel
    if t is None:
        value = hi + _log1mexp(jnp.where(special, -1.0, d))
    else:
        special = special | (t == 0)
        t_safe = jnp.where(t > 0, t, 1)
        value = hi + t_safe * _log1mexp(jnp.where(special, -1.0, d / t_safe))
    value = jnp.where(empty | cancel, _NEG_INF, jnp.where(inf_row, hi, value))
    sign = jnp.where(take_p, 1.0, -1.0).astype(x.dtype)
    if t is not None:
        # The t -> 0 limit: the leading term, the sum of b over the maxima times e^(max / t).
        m = jnp.where(empty | jnp.isnan(hi), 0, hi)
        b_max = _rowsum(jnp.where(keep & (x == m), b, 0), None)
        hard = (t == 0) & ~jnp.isnan(hi) & ~inf_row & ~empty
        value = jnp.where(hard, jnp.where(b_max == 0, _NEG_INF, hi), value)
        sign = jnp.where(hard, jnp.sign(b_max), sign)
    sign = jnp.where(jnp.isnan(value), jnp.nan, jnp.where(value == _NEG_INF, 0, sign))
    return value, jax.lax.stop_gradient(sign)


def logsumexp(
    x: ArrayLike,
    axis: _checks.Axis = None,
    b: ArrayLike | None = None,
    keepdims: bool = False,
    return_sign: bool = False,
    where: ArrayLike | None = None,
    *,
    t: ArrayLike = 1.0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""Log-sum-exp with temperature: the smooth maximum (the notes' "good softMax").

    .. math::
        \mathrm{logsumexp}_t(x) = t \log \sum_{i \in S} e^{x_i / t}
        = m + t\,\mathrm{log1p}\Big(\sum_{i \ne k} e^{(x_i - m)/t}\Big),\quad m = \max_S x

    A drop-in for :func:`jax.nn.logsumexp` and :func:`jax.scipy.special.logsumexp` (same
    arguments, order and defaults, ``axis=None`` reducing over every axis), with the temperature
    ``t`` added and the edges below defined. Computed in the shifted ``log1p`` form, so nothing
    overflows and small parts survive: ``logsumexp([0., -40.])`` is ``4.248e-18`` in float64,
    not 0. Its gradient is ``softargmax(x, t=t)``; its derivative in ``t`` is the entropy of that
    distribution. With ``b``, it is ``t log|sum_i b_i e^(x_i/t)|``.

    Args:
      x: input array of any shape, e.g. ``[batch, num_classes]``. Ints and bools promote like
        :mod:`jax.numpy`; bf16/f16 are accumulated in float32 and returned in their own dtype.
      axis: int, tuple of ints, or ``None`` (all axes, the default, as in ``jax.nn``) to reduce
        over. The other functions of jaxsoft default to ``-1``.
      b: optional scale factors of the exponentials, broadcastable to ``x.shape`` (e.g. ``1/n``
        for a log-mean-exp, or negative ones for a difference). Entries with ``b = 0`` are left
        out, like masked ones (their gradient in ``b`` is 0, as in ``jax.nn``).
      keepdims: keep the reduced axes with size 1.
      return_sign: also return the sign of the sum (``1``, ``-1``, ``0`` for an empty or exactly
        cancelling sum, NaN on a NaN row), the value being ``log`` of its absolute value. Without
        it a negative sum gives NaN, as in ``jax.nn``.
      where: optional boolean mask broadcastable to ``x.shape``; ``False`` entries are left out
        (their values, even NaN or inf, change nothing).
      t: keyword-only temperature ``>= 0``: a scalar, or an array broadcastable to the reduced
        shape (one per row). ``t = 0`` gives ``max(x)``. May be traced and differentiated.

    Returns:
      Array of ``x``'s shape without ``axis`` (or with size-1 axes if ``keepdims``), or the pair
      ``(value, sign)`` of such arrays when ``return_sign``. The dtype is ``x``'s (with ``b``:
      ``x``'s and ``b``'s promoted together), floats for int inputs.

    Edges: ``-inf`` entries are ignored; any ``+inf`` gives ``+inf``; an all ``-inf`` or fully
    masked row (or an empty axis) gives ``-inf`` with zero gradient (``jax.nn``: NaN gradient);
    a NaN gives NaN on its row. With ``b``, a row whose positive and negative parts are both
    ``+inf`` is NaN, and a sum that cancels exactly gives ``-inf`` with sign 0.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> float(jaxsoft.logsumexp(jnp.array([1e30, 1e30])))
      1e+30
      >>> float(jaxsoft.logsumexp(jnp.array([3.0, 1.0]), t=0.0))
      3.0
      >>> x = jnp.array([[0.0, 1.0], [2.0, 3.0]])
      >>> jaxsoft.logsumexp(x)  # every axis by default, as jax.nn.logsumexp
      Array(3.44019, dtype=float32)
      >>> jaxsoft.logsumexp(x, axis=-1, b=jnp.array([0.5, 0.5]))  # log-mean-exp of each row
      Array([0.620114, 2.620115], dtype=float32)
      >>> jaxsoft.logsumexp(jnp.array([0.0, 1.0]), b=jnp.array([1.0, -1.0]), return_sign=True)
      (Array(0.541325, dtype=float32), Array(-1., dtype=float32))

    .. seealso:: :func:`softargmax` (its gradient), :func:`softargmax_mean` (the "bad" one).
    """
    if b is None and not return_sign:  # the plain kernel, with nothing added
        return _dispatch("lse", "logsumexp", x, axis, t, where, keepdims)
    name = "logsumexp"
    xa, ta, wa, axes = _checks.prepare(name, x, axis, t, where)
    b_arr = None if b is None else _checks.check_scale(b, xa.shape, name)
    return _apply(
        xa,
        ta,
        wa,
        b_arr,
        axes=axes,
        kind="lse",
        keepdims=keepdims,
        signed=_checks.check_flag(return_sign, name, "return_sign"),
        name=name,
        kernel=_forced_kernel,
    )


def softargmax(
    x: ArrayLike, axis: _checks.Axis = -1, *, t: ArrayLike = 1.0, where: ArrayLike | None = None
) -> jax.Array:
    r"""softArgMax (``softmax`` in most libraries), with temperature.

    .. math::
        \mathrm{softargmax}_t(x)_i = \frac{e^{x_i / t}}{\sum_{j \in S} e^{x_j / t}}
        = \frac{e^{(x_i - m)/t}}{\sum_{j \in S} e^{(x_j - m)/t}}

    A drop-in for :func:`jax.nn.softmax` (same ``axis``/``where`` meaning) that is also defined at
    the edges. Jacobian ``(diag(p) - p p^T) / t``; derivative in ``t``: ``-p (x - <p, x>) / t^2``.

    Args:
      x: input array, e.g. ``[batch, num_classes]`` (dtype rules as :func:`logsumexp`).
      axis: int, tuple of ints or ``None``; the output sums to 1 over these axes. Default ``-1``.
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` is the hard argmax with ties split
        evenly, and its derivative is taken as 0. Larger ``t`` is closer to uniform.
      where: optional boolean mask; masked entries get 0 and influence nothing.

    Returns:
      Array of ``x``'s shape and (floating) dtype: a distribution along ``axis``.

    Edges: ``-inf`` entries get 0; with ``k`` entries at ``+inf`` those get ``1/k`` and the rest 0;
    an all ``-inf``/fully masked row is all 0 with zero gradient; a NaN makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> jaxsoft.softargmax(jnp.array([0.0, 0.0, -jnp.inf]))
      Array([0.5, 0.5, 0. ], dtype=float32)
      >>> jaxsoft.softargmax(jnp.array([1.0, jnp.inf, jnp.inf]))
      Array([0. , 0.5, 0.5], dtype=float32)

    .. seealso:: :func:`log_softargmax` for log-probabilities without ``log(0)``.
    """
    return _dispatch("p", "softargmax", x, axis, t, where)


def log_softargmax(
    x: ArrayLike, axis: _checks.Axis = -1, *, t: ArrayLike = 1.0, where: ArrayLike | None = None
) -> jax.Array:
    r"""Log of softArgMax (``log_softmax``), accurate even for probabilities near 1.

    .. math::
        \log \mathrm{softargmax}_t(x)_i = \frac{x_i - m}{t}
          - \mathrm{log1p}\Big(\sum_{j \ne k} e^{(x_j - m)/t}\Big)

    Computing ``x_i - logsumexp(x)`` rounds ``log p`` of a dominant entry to 0 in float32; the
    ``log1p`` form keeps it: ``log_softargmax([0., -30.])[0]`` is ``-9.357623e-14``.

    Args:
      x: input array, e.g. ``[batch, num_classes]`` (dtype rules as :func:`logsumexp`).
      axis: int, tuple of ints or ``None``. Default ``-1``.
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` gives ``-log k`` on the ``k``
        argmax entries and ``-inf`` elsewhere.
      where: optional boolean mask; masked entries get ``-inf`` and influence nothing.

    Returns:
      Array of ``x``'s shape and (floating) dtype, all entries ``<= 0``.

    Edges: ``-inf`` entries stay ``-inf`` with gradient 0; ``k`` entries at ``+inf`` get
    ``-log k`` and the others ``-inf``; an all ``-inf``/fully masked row is all ``-inf`` with zero
    gradient; a NaN makes its row NaN.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> jaxsoft.log_softargmax(jnp.array([0.0, -30.0]))
      Array([-9.357623e-14, -3.000000e+01], dtype=float32)

    .. seealso:: :func:`softargmax`; ``jaxsoft.cross_entropy`` builds on this.
    """
    return _dispatch("logp", "log_softargmax", x, axis, t, where)


def softargmax_mean(
    x: ArrayLike,
    axis: _checks.Axis = -1,
    *,
    t: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
    r"""The softArgMax-weighted mean ``<x, softargmax_t(x)>``: the notes' "bad softMax".

    .. math::
        \mathrm{softargmax\_mean}_t(x) = \sum_i x_i\,\frac{e^{x_i/t}}{\sum_j e^{x_j/t}}

    It keeps ``f(a, a, a) = a`` and ``f(x + a) = f(x) + a``, but it is always ``<= max(x)``, which
    makes it a poor maximum (hence "bad"); :func:`logsumexp` is the good one. Gradient:
    ``p_j (1 + (x_j - <p, x>) / t)``. We name it for what it computes rather than ``bad_softmax``.

    Args:
      x: input array, e.g. ``[batch, num_classes]`` (dtype rules as :func:`logsumexp`).
      axis: int, tuple of ints or ``None``. Default ``-1``.
      t: temperature ``>= 0`` (scalar or one per row); ``t = 0`` gives ``max(x)``.
      where: optional boolean mask; masked entries are left out.
      keepdims: keep the reduced axes with size 1.

    Returns:
      Array of ``x``'s shape without ``axis`` (or with size-1 axes if ``keepdims``).

    Edges: ``-inf`` entries are ignored; any ``+inf`` gives ``+inf``; an all ``-inf`` or fully
    masked row gives ``-inf`` with zero gradient; a NaN gives NaN on its row.

    Examples:
      >>> import jax.numpy as jnp, jaxsoft
      >>> float(jaxsoft.softargmax_mean(jnp.array([2.0, 2.0, 2.0])))
      2.0
    """
    return _dispatch("mean", "softargmax_mean", x, axis, t, where, keepdims)


softmax = softargmax
log_softmax = log_softargmax
