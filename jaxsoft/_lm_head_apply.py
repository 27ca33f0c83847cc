"""The fused language-model head on validated arrays: shared by lm_head and its sharded twins.

:func:`logprob` and :func:`kl` take the arrays the checks of :mod:`jaxsoft._lm_head_checks`
return, bring them to the kernels' ``(N, d)`` layout (:func:`jaxsoft._lm_head_checks.prepare`), run
the kernel (:mod:`jaxsoft._lm_head_logprob`, :mod:`jaxsoft._lm_head_kl`) and give the results the
batch shape of ``h`` and the dtype of ``h @ W``. With ``axis_name=None`` they are the single-device
functions (called through the jitted :data:`logprob_jit` and :data:`kl_jit`); the sharded twins
call them as they are, inside the caller's :func:`jax.shard_map`, with the vocabulary's mesh axis.
"""

from __future__ import annotations

from typing import Any, cast

import jax

from jaxsoft import _lm_head_checks as lc
from jaxsoft import _lm_head_kl as klk
from jaxsoft import _lm_head_logprob as lpk

_STATIC = ("chunk_size", "cap", "vd", "axis_name")


def logprob(h, W, bias, tokens, t, where, *, chunk_size, cap, vd, axis_name):
    """``(log p_tokens, entropy)`` of the head ``(h, W, bias)``, each of shape ``h.shape[:-1]``."""
    [hd], t2, mask, dtype = lc.prepare(lc.Head(h, W, bias), t, where, vd)
    cfg = lc.cfg_of(chunk_size, cap, vd)
    lp, ent = cast(Any, lpk.logprob_entropy)(
        hd.h, hd.W, hd.bias, t2, mask, tokens.reshape(-1), cfg, axis_name
    )
    batch = h.shape[:-1]
    return lp.reshape(batch).astype(dtype), ent.reshape(batch).astype(dtype)


logprob_jit = jax.jit(logprob, static_argnames=_STATIC)


def kl(h, W, bias, th, tW, tbias, t, where, *, chunk_size, cap, vd, axis_name):
    """``KL(teacher || student)`` per row, of shape ``h.shape[:-1]``."""
    [hd, td], t2, mask, dtype = lc.prepare(
        lc.Head(h, W, bias), t, where, vd, lc.Head(th, tW, tbias)
    )
    cfg = lc.cfg_of(chunk_size, cap, vd)
    kernel = klk.kl if axis_name is None else klk.kl_sharded
    out = cast(Any, kernel)(hd.h, hd.W, hd.bias, td.h, td.W, td.bias, t2, mask, cfg, axis_name)
    return out.reshape(h.shape[:-1]).astype(dtype)


kl_jit = jax.jit(kl, static_argnames=_STATIC)
