"""The digits example: a short training run learns, and temperature scaling calibrates it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("sklearn")

from jaxsoft._functions import softargmax
from jaxsoft.calibration import expected_calibration_error, fit_temperature
from jaxsoft.examples import train_digits
from jaxsoft.losses import cross_entropy


@pytest.fixture(scope="module")
def trained():
    """8 epochs of the example (about a fifth of the default run)."""
    return train_digits.train(epochs=8, learning_rate=1e-2, seed=0, log=None)


def test_short_training_run_loss_falls(trained):
    assert len(trained.losses) == 8
    # Cross-entropy of a uniform guess over 10 classes is log 10 = 2.30.
    assert trained.losses[0] < 2.3
    assert trained.losses[-1] < 0.25 * trained.losses[0]
    assert all(b < a for a, b in zip(trained.losses[:4], trained.losses[1:5]))


def test_short_training_run_reaches_real_test_accuracy(trained):
    test = trained.splits.test
    acc = float(train_digits.accuracy(trained.params, test.x, test.y))
    assert acc >= 0.93, acc  # chance is 0.1; the full 40-epoch run reaches 0.975
    assert len(test.y) == 360 and set(trained.splits.train.y.tolist()) == set(range(10))


def test_temperature_scaling_on_held_out_digits_logits(trained):
    """Fit t on the validation logits: NLL falls and ECE does not rise there and on the test set."""
    val, test = trained.splits.val, trained.splits.test
    val_logits = train_digits.mlp_logits(trained.params, val.x)
    test_logits = train_digits.mlp_logits(trained.params, test.x)
    t = fit_temperature(val_logits, val.y)
    assert abs(float(t) - 1) > 0.05  # a real correction, not a no-op

    def nll(logits, y, temp):
        return float(cross_entropy(logits, y, t=temp, reduction="mean"))

    def ece(logits, y, temp):
        return float(expected_calibration_error(softargmax(logits, t=temp), y))

    one = jnp.float32(1.0)  # an array, as the fitted t: the same compiled code
    assert nll(val_logits, val.y, t) < nll(val_logits, val.y, one)
    assert ece(val_logits, val.y, t) <= ece(val_logits, val.y, one)
    assert nll(test_logits, test.y, t) < nll(test_logits, test.y, one)
    assert ece(test_logits, test.y, t) <= ece(test_logits, test.y, one)
    # The accuracy is unchanged: t > 0 keeps the argmax.
    probs_t = np.asarray(softargmax(test_logits, t=t))
    np.testing.assert_array_equal(probs_t.argmax(-1), np.asarray(test_logits).argmax(-1))


def test_main_prints_a_line_per_epoch(capsys):
    # The fixture's learning rate and sizes: the compiled step is reused.
    train_digits.main(["--epochs", "2", "--seed", "1", "--lr", "1e-2"])
    out = capsys.readouterr().out.splitlines()
    epochs = [line for line in out if line.startswith("epoch")]
    assert len(epochs) == 2 and "train loss" in epochs[0] and "val acc" in epochs[0]
    assert any(line.startswith("test accuracy") for line in out)
    assert any(line.startswith("temperature scaling: t =") for line in out)
