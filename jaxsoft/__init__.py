"""jaxsoft: the softmax family for JAX, exact at every edge.

softArgMax (``softmax``), log-sum-exp (the "good softMax"), log-softArgMax, the softArgMax-weighted
mean (the "bad softMax"), their Jacobians and the losses built on them.
"""

from jaxsoft._core import (
    log_softargmax,
    log_softmax,
    logsumexp,
    softargmax,
    softargmax_mean,
    softmax,
)
from jaxsoft._version import __version__
from jaxsoft._jacobian import softargmax_jacobian, softargmax_jvp, softargmax_vjp
from jaxsoft.calibration import expected_calibration_error, fit_temperature
from jaxsoft.divergences import entropy, kl_divergence
from jaxsoft.gumbel import gumbel_softargmax
from jaxsoft.large_vocab import chunked_logsumexp, linear_cross_entropy
from jaxsoft.losses import (
    cross_entropy,
    cross_entropy_with_probs,
    mean_over_valid,
    sigmoid_cross_entropy,
)
from jaxsoft.sampling import sample, sampling_mask, sharded_sample
from jaxsoft.sharded import sharded_cross_entropy, sharded_linear_cross_entropy, sharded_logsumexp


__all__ = [
    "entropy",
    "kl_divergence",
    "sample",
    "sampling_mask",
    "sharded_sample",
    "__version__",
    "chunked_logsumexp",
    "linear_cross_entropy",
    "sharded_cross_entropy",
    "sharded_linear_cross_entropy",
    "sharded_logsumexp",
    "cross_entropy",
    "cross_entropy_with_probs",
    "expected_calibration_error",
    "fit_temperature",
    "mean_over_valid",
    "sigmoid_cross_entropy",
    "gumbel_softargmax",
    "log_softargmax",
    "log_softmax",
    "logsumexp",
    "softargmax",
    "softargmax_mean",
    "softmax",
    "softargmax_jacobian",
    "softargmax_jvp",
    "softargmax_vjp",
]
