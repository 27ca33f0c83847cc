"""jaxsoft: the softmax family for JAX, exact at every edge.

softArgMax (``softmax``), log-sum-exp (the "good softMax"), log-softArgMax, the softArgMax-weighted
mean (the "bad softMax"), their Jacobians and the losses built on them.
"""

from jaxsoft._attention import attention, merge_attention
from jaxsoft._functions import (
    log_softargmax,
    log_softmax,
    logsumexp,
    softargmax,
    softargmax_mean,
    softmax,
)
from jaxsoft._jacobian import softargmax_jacobian, softargmax_jvp, softargmax_vjp
from jaxsoft._version import __version__
from jaxsoft.calibration import expected_calibration_error, fit_temperature
from jaxsoft.divergences import entropy, kl_divergence
from jaxsoft.gumbel import gumbel_softargmax
from jaxsoft.large_vocab import chunked_logsumexp, linear_cross_entropy
from jaxsoft.lm_head import linear_entropy, linear_kl_divergence, linear_log_probs
from jaxsoft.losses import (
    cross_entropy,
    cross_entropy_with_probs,
    mean_over_valid,
    sigmoid_cross_entropy,
)
from jaxsoft.reductions import count_valid
from jaxsoft.sampling import sample, sampling_mask, sharded_sample
from jaxsoft.sharded import sharded_cross_entropy, sharded_linear_cross_entropy, sharded_logsumexp
from jaxsoft.sharded_lm_head import (
    sharded_linear_entropy,
    sharded_linear_kl_divergence,
    sharded_linear_log_probs,
)

__all__ = [
    "__version__",
    "attention",
    "chunked_logsumexp",
    "count_valid",
    "cross_entropy",
    "cross_entropy_with_probs",
    "entropy",
    "expected_calibration_error",
    "fit_temperature",
    "gumbel_softargmax",
    "kl_divergence",
    "linear_cross_entropy",
    "linear_entropy",
    "linear_kl_divergence",
    "linear_log_probs",
    "log_softargmax",
    "log_softmax",
    "logsumexp",
    "mean_over_valid",
    "merge_attention",
    "sample",
    "sampling_mask",
    "sharded_cross_entropy",
    "sharded_linear_cross_entropy",
    "sharded_linear_entropy",
    "sharded_linear_kl_divergence",
    "sharded_linear_log_probs",
    "sharded_logsumexp",
    "sharded_sample",
    "sigmoid_cross_entropy",
    "softargmax",
    "softargmax_jacobian",
    "softargmax_jvp",
    "softargmax_mean",
    "softargmax_vjp",
    "softmax",
]
