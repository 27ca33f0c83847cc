"""Independent high-precision references (mpmath), for finite inputs along the last axis."""

from __future__ import annotations

import mpmath
import numpy as np

mpmath.mp.dps = 50


def _rows(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(-1, x.shape[-1]), x.shape


def logsumexp(x, t=1.0):
    rows, shape = _rows(x)
    t = mpmath.mpf(float(t))
    out = [
        t * mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v)) / t) for v in r)) for r in rows
    ]
    return np.array([float(v) for v in out]).reshape(shape[:-1])


def log_softargmax(x, t=1.0):
    rows, shape = _rows(x)
    t = mpmath.mpf(float(t))
    out = []
    for r in rows:
        lse = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v)) / t) for v in r))
        out.append([float(mpmath.mpf(float(v)) / t - lse) for v in r])
    return np.array(out).reshape(shape)


def softargmax(x, t=1.0):
    return np.exp(log_softargmax(x, t))


def ulp_error(actual, expected, dtype=np.float32):
    """|actual - expected| in units of the last place of ``expected`` in ``dtype``."""
    expected = np.asarray(expected, np.float64)
    spacing = np.spacing(np.abs(expected).astype(dtype)).astype(np.float64)
    return np.abs(np.asarray(actual, np.float64) - expected) / spacing
