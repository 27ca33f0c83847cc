"""Train a small MLP on scikit-learn's bundled digits with optax and jaxsoft's cross-entropy.

Run it::

    python -m jaxsoft.examples.train_digits            # 40 epochs, a line per epoch
    python -m jaxsoft.examples.train_digits --epochs 10 --seed 1

The 1797 8x8 images ship inside scikit-learn (no download). They are split 60/20/20 into
train/validation/test; an MLP (64 -> 64 -> 10, tanh) is trained with ``optax.adam`` in a
``jax.jit``-compiled step whose loss is :func:`jaxsoft.cross_entropy`. At the end the validation
logits are used to fit a temperature (:func:`jaxsoft.fit_temperature`), and the test NLL and
expected calibration error are reported before and after. Needs ``scikit-learn``
(``pip install jaxsoft[examples]``).
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxsoft._functions import softargmax
from jaxsoft.calibration import expected_calibration_error, fit_temperature
from jaxsoft.losses import cross_entropy

Params = list[tuple[jax.Array, jax.Array]]


class Split(NamedTuple):
    x: np.ndarray  # [num_examples, 64] float32 in [0, 1]
    y: np.ndarray  # [num_examples] int32


class Splits(NamedTuple):
    train: Split
    val: Split
    test: Split


class TrainResult(NamedTuple):
    params: Params
    losses: list[float]  # mean training loss of each epoch
    val_accuracy: list[float]  # validation accuracy after each epoch
    splits: Splits


def load_splits(seed: int = 0) -> Splits:
    """The digits data, shuffled with ``seed`` and split 1077/360/360 (60/20/20)."""
    # Imported here so that importing this module (e.g. for doctests) does not need scikit-learn.
    try:
        from sklearn.datasets import load_digits
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the digits example needs scikit-learn: pip install 'jaxsoft[examples]'"
        ) from e

    digits: Any = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    # 1077 / 360 / 360: equal validation and test sizes share every compiled function.
    b = len(y) - 360
    a = b - 360
    return Splits(Split(x[:a], y[:a]), Split(x[a:b], y[a:b]), Split(x[b:], y[b:]))


def init_mlp(key: jax.Array, sizes: tuple[int, ...]) -> Params:
    """Glorot-uniform weights and zero biases for a dense net with layer ``sizes``."""
    params = []
    for k, (n_in, n_out) in zip(jax.random.split(key, len(sizes) - 1), itertools.pairwise(sizes)):
        limit = np.sqrt(6.0 / (n_in + n_out))
        params.append(
            (jax.random.uniform(k, (n_in, n_out), jnp.float32, -limit, limit), jnp.zeros(n_out))
        )
    return params


def mlp_logits(params: Params, x: jax.typing.ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return x @ w + b


@partial(jax.jit, static_argnames="learning_rate")
def train_step(params: Params, opt_state, x, y, learning_rate: float):
    """One Adam step on the mean cross-entropy of a batch; compiled once per learning rate."""

    def loss_fn(p):
        return cross_entropy(mlp_logits(p, x), y, reduction="mean")

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optax.adam(learning_rate).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@jax.jit
def accuracy(params: Params, x: jax.typing.ArrayLike, y: jax.typing.ArrayLike) -> jax.Array:
    return jnp.mean(jnp.argmax(mlp_logits(params, x), axis=-1) == y)


def train(
    epochs: int = 40,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    hidden: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = print,
) -> TrainResult:
    """Train the MLP; ``log`` gets one line per epoch (``None`` for silence)."""
    splits = load_splits(seed)
    rng = np.random.default_rng(seed)
    params = init_mlp(jax.random.PRNGKey(seed), (64, hidden, 10))
    opt_state = optax.adam(learning_rate).init(params)
    n = len(splits.train.y)
    losses, val_acc = [], []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        # Full batches only (a fixed shape, one compilation); the shuffle varies what is left out.
        batch_losses = []
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            x, y = splits.train.x[idx], splits.train.y[idx]
            params, opt_state, loss = train_step(params, opt_state, x, y, learning_rate)
            batch_losses.append(loss)
        losses.append(float(jnp.mean(jnp.stack(batch_losses))))
        val_acc.append(float(accuracy(params, splits.val.x, splits.val.y)))
        if log is not None:
            log(
                f"epoch {epoch:3d}/{epochs}  train loss {losses[-1]:.4f}  "
                f"val acc {val_acc[-1]:.4f}  ({time.perf_counter() - start:.1f} s)"
            )
    return TrainResult(params, losses, val_acc, splits)


def calibration_report(params: Params, splits: Splits) -> dict[str, float]:
    """Fit ``t`` on the validation logits; test NLL and ECE at ``t = 1`` and at the fitted ``t``."""
    t = fit_temperature(mlp_logits(params, splits.val.x), splits.val.y)
    test_logits = mlp_logits(params, splits.test.x)
    out = {"t": float(t)}
    for tag, temp in (("before", 1.0), ("after", t)):
        nll = cross_entropy(test_logits, splits.test.y, t=temp, reduction="mean")
        assert isinstance(nll, jax.Array)  # one array: return_lse is off
        out[f"nll_{tag}"] = float(nll)
        out[f"ece_{tag}"] = float(
            expected_calibration_error(softargmax(test_logits, t=temp), splits.test.y)
        )
    return out


def main(argv: list[str] | None = None) -> TrainResult:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = train(args.epochs, args.batch_size, args.lr, args.hidden, args.seed)
    test = result.splits.test
    print(f"test accuracy {float(accuracy(result.params, test.x, test.y)):.4f}")
    cal = calibration_report(result.params, result.splits)
    print(
        f"temperature scaling: t = {cal['t']:.3f}; test NLL {cal['nll_before']:.4f} -> "
        f"{cal['nll_after']:.4f}, ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}"
    )
    print(f"total {time.perf_counter() - start:.1f} s")
    return result


if __name__ == "__main__":
    main()
