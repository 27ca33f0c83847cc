"""Validation and preparation shared by the fused language-model head functions and their twins."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsoft import _checks
from jaxsoft import _lm_head_chunk as hc
from jaxsoft._softcap import check_softcap

LAYOUTS = ("dV", "Vd")


class Head(NamedTuple):
    h: jax.Array
    W: jax.Array
    bias: jax.Array | None


def check_layout(name: str, weight_layout) -> bool:
    """``True`` for ``"Vd"`` (``W: [V, d]``), ``False`` for ``"dV"``."""
    if weight_layout not in LAYOUTS:
        raise ValueError(f"{name}: weight_layout must be one of {LAYOUTS}, got {weight_layout!r}")
    return weight_layout == "Vd"


def check_head(name: str, h, W, bias, vd: bool, what: str = "") -> Head:
    """Eager shape/dtype checks of ``h: [..., d]``, ``W`` (``[d, V]`` or ``[V, d]``), ``bias: [V]``."""
    wh, ww, wb = f"{what}h", f"{what}W", f"{what}bias"
    h = _checks.as_array(h, name, wh)
    W = _checks.as_array(W, name, ww)
    for label, a in ((wh, h), (ww, W)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise TypeError(f"{name}: {label} must be a float array, got dtype {a.dtype}")
    d_axis = 1 if vd else 0
    if h.ndim < 1 or W.ndim != 2 or h.shape[-1] != W.shape[d_axis]:
        layout = "[V, d]" if vd else "[d, V]"
        raise ValueError(
            f"{name}: expected {wh} of shape [..., d] and {ww} of shape {layout}, "
            f"got {h.shape} and {W.shape}"
        )
    v = W.shape[1 - d_axis]
    if v == 0:
        raise ValueError(f"{name}: {ww} of shape {W.shape} has no vocabulary entries")
    if bias is not None:
        bias = _checks.as_array(bias, name, wb)
        if bias.shape != (v,) or not jnp.issubdtype(bias.dtype, jnp.floating):
            raise ValueError(
                f"{name}: {wb} must be a float array of shape {(v,)}, "
                f"got {bias.dtype}{list(bias.shape)}"
            )
    return Head(h, W, bias)


# Vocabulary entries per step unless the caller says otherwise: the default of every function.
DEFAULT_CHUNK = 2048


def check_options(
    name: str, chunk_size, logit_softcap, weight_layout
) -> tuple[int, float | None, bool]:
    """``(chunk_size, cap, vd)``: the static options, validated."""
    return (
        _checks.check_chunk_size(name, chunk_size),
        check_softcap(name, logit_softcap),
        check_layout(name, weight_layout),
    )


def cfg_of(chunk_size: int, cap: float | None, vd: bool) -> hc.Cfg:
    return hc.Cfg(chunk_size, vd, cap)


def check_t(name: str, t, batch: tuple[int, ...]):
    """``t``: ``None`` (the unit temperature), a scalar, or one per row (shape ``batch``)."""
    t_arr = _checks.check_temperature(t, name)
    if t_arr is not None and t_arr.ndim and t_arr.shape != batch:
        raise ValueError(
            f"{name}: t must be a scalar or have the batch shape {batch}, got shape {t_arr.shape}"
        )
    return t_arr


def check_mask(name: str, where, batch: tuple[int, ...], v: int):
    """``where``: ``None``, a ``[V]`` vocabulary mask, or one per row (``batch + (V,)``)."""
    if where is None:
        return None
    w = _checks.as_array(where, name, "where")
    if w.dtype != jnp.bool_:
        raise TypeError(f"{name}: where must be a boolean array, got dtype {w.dtype}")
    if w.shape not in ((v,), batch + (v,)):
        raise ValueError(f"{name}: where must have shape {(v,)} or {batch + (v,)}, got {w.shape}")
    return w


def prepare(head: Head, t, where, vd: bool, other: Head | None = None):
    """Inside jit: flatten the batch, cast to one matmul dtype, ``t`` to ``(N, 1)`` or ``None``.

    Returns ``(h2, W, bias, t, mask, dtype)`` and, with ``other`` (a teacher head), its
    ``(h2, W, bias)`` in the same dtype.
    """
    parts = [head] if other is None else [head, other]
    dtype = jnp.result_type(*(a.dtype for p in parts for a in (p.h, p.W)))
    cdt = _checks.compute_dtype(dtype)
    n = 1
    for s in head.h.shape[:-1]:
        n *= s
    out = [
        Head(p.h.reshape(n, p.h.shape[-1]).astype(dtype), p.W.astype(dtype), p.bias) for p in parts
    ]
    t = _checks.traced_temperature(t, cdt)
    if t is not None:
        t = jnp.broadcast_to(t, head.h.shape[:-1]).reshape(n, 1)
    v = head.W.shape[0 if vd else 1]
    mask = None if where is None else where.reshape(-1, v) if where.ndim > 1 else where
    return out, t, mask, dtype


def check_logprob_args(
    name, h, W, bias, tokens, t, where, chunk_size, logit_softcap, weight_layout, sharded: bool
):
    """Eager checks of :func:`jaxsoft.lm_head.linear_log_probs`'s arguments (``tokens=None`` for
    the entropy alone). Sharded: ``W`` is the local slice, so ``tokens`` (global ids) are checked
    for being integers of the batch shape but not against the local vocabulary size.

    Returns ``(head, tokens, t, where, opts)``, ``opts`` the static keyword arguments of
    :func:`jaxsoft._lm_head_apply.logprob`.
    """
    chunk_size, cap, vd = check_options(name, chunk_size, logit_softcap, weight_layout)
    head = check_head(name, h, W, bias, vd)
    batch = head.h.shape[:-1]
    v = head.W.shape[0 if vd else 1]
    tok = None
    if tokens is not None:
        tok = _checks.check_labels(
            name, tokens, batch, None if sharded else v, None, against=f"h of shape {head.h.shape}"
        )
    t_arr = check_t(name, t, batch)
    mask = check_mask(name, where, batch, v)
    return head, tok, t_arr, mask, dict(chunk_size=chunk_size, cap=cap, vd=vd)


def check_kl_args(
    name, h, W, th, tW, bias, tbias, t, where, chunk_size, logit_softcap, weight_layout
):
    """Eager checks of :func:`jaxsoft.lm_head.linear_kl_divergence`'s arguments: both heads, of
    one batch and one vocabulary.

    Returns ``(head, teacher, t, where, opts)``, ``opts`` the static keyword arguments of
    :func:`jaxsoft._lm_head_apply.kl`.
    """
    chunk_size, cap, vd = check_options(name, chunk_size, logit_softcap, weight_layout)
    head = check_head(name, h, W, bias, vd)
    teacher = check_head(name, th, tW, tbias, vd, what="target_")
    if teacher.h.shape[:-1] != head.h.shape[:-1] or teacher.W.shape[1 - vd] != head.W.shape[1 - vd]:
        raise ValueError(
            f"{name}: the teacher (target_h {teacher.h.shape}, target_W {teacher.W.shape}) must "
            f"have the student's batch and vocabulary (h {head.h.shape}, W {head.W.shape})"
        )
    batch = head.h.shape[:-1]
    v = head.W.shape[0 if vd else 1]
    t_arr = check_t(name, t, batch)
    mask = check_mask(name, where, batch, v)
    return head, teacher, t_arr, mask, dict(chunk_size=chunk_size, cap=cap, vd=vd)
