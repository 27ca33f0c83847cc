"""Turn the peer tables into ready-to-time candidates for one (dtype, shape).

A candidate is one (function family, implementation, mode) with a zero-argument callable that runs
it once on fixed inputs. JAX candidates are compiled ahead of time with
``jax.jit(f).lower(...).compile()``, so the same executable is timed and has its memory analysed.
Each call takes the next of :data:`INPUT_COPIES` copies of its inputs, the same copies for every
candidate: on the 2-core CI machine one compiled program ran 5x slower on some input buffers
than on others (``logsumexp`` at (16, 262144), jax 0.10.2), so a figure from one buffer could be
that buffer's.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench import peers

FORWARD = "forward"
VALUE_AND_GRAD = "value_and_grad"
MODES = (FORWARD, VALUE_AND_GRAD)
X2 = "x*2.0"  # the memory-bound reference: one read and one write of x


@dataclass(frozen=True)
class Inputs:
    x: jax.Array  # (batch, n) logits
    g: jax.Array  # (batch, n) fixed cotangent weights for vector-valued functions
    g_row: jax.Array  # (batch,) the same for row reductions
    labels: jax.Array  # (batch,) int32 class indices


@dataclass
class Candidate:
    family: str  # one of peers.FAMILIES, or X2
    impl: str  # "jaxsoft", "jax.nn", "optax", "scipy", "numpy", "torch", or X2
    mode: str  # FORWARD or VALUE_AND_GRAD
    call: Callable[[], Any]
    compiled: Any = None  # jax.stages.Compiled for JAX candidates


# Input variants that no fast path can hide from. "normal" is the main table; the others are
# timed against the reference peer only (at the shapes of Config.variant_shapes).
VARIANTS = {
    "normal": "x = 3 * normal(shape)",
    "masked_vocab": "a quarter of the columns at -inf (a masked vocabulary)",
    "confident": "one logit per row 30 above the rest (a confident model, late in training)",
    "pos_inf": "two rows holding a +inf logit (the exact slow path)",
}


def make_inputs(shape: tuple[int, int], dtype, seed: int = 0, variant: str = "normal") -> Inputs:
    _COPIES.clear()  # the previous inputs' copies stay with the calls that use them
    kx, kg, kr, kl = jax.random.split(jax.random.key(seed), 4)
    batch, n = shape
    # Scale 3 gives softmax outputs spread over many orders of magnitude, as trained logits do.
    x = 3 * jax.random.normal(kx, shape, jnp.float32)
    if variant == "masked_vocab":
        x = x.at[:, (n * 3) // 4 :].set(-jnp.inf)
    elif variant == "confident":
        x = x.at[jnp.arange(batch), jnp.arange(batch) % n].add(30.0)
    elif variant == "pos_inf":
        x = x.at[: min(2, batch), 1].set(jnp.inf)
    elif variant != "normal":
        raise ValueError(f"unknown input variant {variant!r}; known: {sorted(VARIANTS)}")
    x = x.astype(dtype)
    g = jax.random.normal(kg, shape, jnp.float32).astype(dtype)
    g_row = jax.random.normal(kr, (batch,), jnp.float32).astype(dtype)
    labels = jax.random.randint(kl, (batch,), 0, n, jnp.int32)
    return Inputs(*jax.block_until_ready((x, g, g_row, labels)))


# Executables of the latest inputs' shape and dtype: the input variants (same shapes, other
# values) reuse the normal inputs' ones rather than compile them again.
_EXECUTABLES: dict[tuple, Any] = {}

INPUT_COPIES = 4
# The copies of the latest inputs, by id (the original is kept in the list, so the id stays its).
_COPIES: dict[int, list[jax.Array]] = {}


def _copies(a: jax.Array) -> list[jax.Array]:
    """``a`` and ``INPUT_COPIES - 1`` copies of it in buffers of their own."""
    if id(a) not in _COPIES:
        _COPIES[id(a)] = [a, *jax.block_until_ready([jnp.copy(a) for _ in range(INPUT_COPIES - 1)])]
    return _COPIES[id(a)]


def _rotating(compiled, args: tuple) -> Callable[[], Any]:
    """A zero-argument call of ``compiled`` on the next copy of ``args`` each time."""
    sets = itertools.cycle(list(zip(*(_copies(a) for a in args), strict=True)))
    return lambda: compiled(*next(sets))


def _compiled(fn: Callable, args: tuple, key: tuple) -> tuple[Callable[[], Any], Any]:
    """``fn`` compiled ahead of time for ``args``; ``key`` names it among the latest inputs'."""
    group = tuple((a.shape, a.dtype.name) for a in args[:1])
    if any(k[0] != group for k in _EXECUTABLES):
        _EXECUTABLES.clear()  # new inputs: drop the previous group's executables
    full_key = (group, *key, tuple((a.shape, a.dtype.name) for a in args))
    if full_key not in _EXECUTABLES:
        _EXECUTABLES[full_key] = jax.jit(fn).lower(*args).compile()
    compiled = _EXECUTABLES[full_key]
    return _rotating(compiled, args), compiled


def _jax_candidates(family: str, impl: str, f: Callable, inp: Inputs) -> list[Candidate]:
    if family == "cross_entropy":
        fwd_args = (inp.x, inp.labels)

        def loss(x, labels):
            return jnp.mean(f(x, labels))

        vg_args = (inp.x, inp.labels)
    else:
        fwd_args = (inp.x,)
        g = inp.g_row if family in ("logsumexp", "softargmax_mean") else inp.g

        def loss(x, g):
            return jnp.sum(f(x) * g)

        vg_args = (inp.x, g)
    out = []
    for mode, fn, args in (
        (FORWARD, f, fwd_args),
        (VALUE_AND_GRAD, jax.value_and_grad(loss), vg_args),
    ):
        call, compiled = _compiled(fn, args, (family, impl, mode))
        out.append(Candidate(family, impl, mode, call, compiled))
    return out


def _torch_candidates(torch, inp: Inputs) -> list[Candidate]:
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[inp.x.dtype.name]

    def tensor(a):
        return torch.from_numpy(np.asarray(a, np.float32)).to(dtype)

    x, g, g_row = tensor(inp.x), tensor(inp.g), tensor(inp.g_row)
    labels = torch.from_numpy(np.asarray(inp.labels).astype(np.int64))
    out = []
    for family, f in peers.torch_table(torch).items():
        if family == "cross_entropy":
            fwd = lambda f=f: f(x, labels)

            def vg(f=f):
                xg = x.detach().requires_grad_(True)
                value = torch.mean(f(xg, labels))
                value.backward()
                return value.detach(), xg.grad
        else:
            w = g_row if family in ("logsumexp", "softargmax_mean") else g
            fwd = lambda f=f: f(x)

            def vg(f=f, w=w):
                xg = x.detach().requires_grad_(True)
                value = torch.sum(f(xg) * w)
                value.backward()
                return value.detach(), xg.grad

        fwd = _no_grad(torch, fwd)
        fwd(), vg()  # fail here, at setup, if this torch build lacks an op for this dtype
        out.append(Candidate(family, "torch", FORWARD, fwd))
        out.append(Candidate(family, "torch", VALUE_AND_GRAD, vg))
    return out


def _no_grad(torch, fn):
    def call():
        with torch.no_grad():
            return fn()

    return call


def build(inp: Inputs, all_peers: bool = True) -> tuple[list[Candidate], list[str]]:
    """Every candidate for these inputs, and notes on what was left out and why.

    ``all_peers=False`` (the input variants): only jaxsoft, its reference peers and ``x * 2.0``.
    """
    notes = []
    cands = []
    call, compiled = _compiled(lambda x: x * 2.0, (inp.x,), (X2, X2, FORWARD))
    cands.append(Candidate(X2, X2, FORWARD, call, compiled))
    for impl, table in (
        (peers.OURS, peers.ours()),
        ("jax.nn", peers.jax_nn()),
        ("optax", peers.optax_losses()),
    ):
        for family, f in table.items():
            cands += _jax_candidates(family, impl, f, inp)
    if not all_peers:
        return cands, notes
    if inp.x.dtype == jnp.float32:
        x_host = np.asarray(inp.x)
        for impl, table in (("scipy", peers.scipy_host()), ("numpy", peers.numpy_host())):
            for family, f in table.items():
                cands.append(Candidate(family, impl, FORWARD, (lambda f=f: f(x_host))))
    else:
        notes.append(
            f"scipy/numpy peers skipped for {inp.x.dtype}: NumPy has no native {inp.x.dtype}"
        )
    torch = peers.torch_module()
    if torch is not None:
        try:
            cands += _torch_candidates(torch, inp)
        except (RuntimeError, TypeError, ValueError, KeyError) as e:  # optional: note and go on
            notes.append(f"torch peers skipped for {inp.x.dtype}: {e!r}")
    return cands, notes
