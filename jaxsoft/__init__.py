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
from jaxsoft._jacobian import softargmax_jacobian, softargmax_jvp, softargmax_vjp

__version__ = "0.1.0"

__all__ = [
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
