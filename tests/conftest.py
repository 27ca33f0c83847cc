"""Shared test configuration: hypothesis profiles and the float64 fixture.

Profiles (pick with ``pytest --hypothesis-profile=NAME`` or ``HYPOTHESIS_PROFILE=NAME``; default "ci"):

* ``ci``: ``CI_EXAMPLES`` examples per property, derandomized so every CI run tries the same inputs,
  no deadline (the first example of a new shape pays for a jit compile).
* ``thorough``: ``THOROUGH_EXAMPLES`` examples per property and a wider set of shapes/axes/dtypes;
  the property suite then totals well over 10,000 examples. Run it before a release.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import jax
import pytest
from hypothesis import HealthCheck, settings

# Eight CPU devices for the sharded tests, in-process. This must run before jax initialises its
# backend (the first array op), which conftest import precedes. Unsharded tests still run on
# device 0, so nothing else changes.
jax.config.update("jax_num_cpu_devices", 8)

CI_EXAMPLES = 120
THOROUGH_EXAMPLES = 5000

# Each example is cheap once its shape is compiled; hypothesis' too_slow/data_too_large checks would
# only flag the compile of a new shape or our deliberately wide arrays.
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]

settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
settings.register_profile(
    "thorough",
    max_examples=THOROUGH_EXAMPLES,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=_SUPPRESS,
)
# hypothesis' pytest plugin loads --hypothesis-profile after this, so the command line wins.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def thorough() -> bool:
    """Whether the thorough profile (or any profile at least as large) is active."""
    return settings().max_examples >= THOROUGH_EXAMPLES


@contextlib.contextmanager
def enable_x64() -> Iterator[None]:
    """Enable float64 inside the block and restore the previous setting afterwards."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def x64():
    """Enable float64 for one test (:func:`enable_x64`)."""
    with enable_x64():
        yield


@pytest.fixture(scope="module", params=["reference", "tuned_cpu"])
def kernel(request):
    """Run every test of a module under each core kernel (``jaxsoft._core.use_kernel``).

    Module-scoped, so pytest runs a module's tests for one kernel, then for the other, and the
    switch happens twice per module. Caches are cleared at each switch: a ``jax.jit`` of the test's
    own, traced under the other kernel, must not be reused.
    """
    from jaxsoft import _core

    jax.clear_caches()
    with _core.use_kernel(request.param):
        yield request.param
    jax.clear_caches()


# The longest files first: xdist (--dist loadfile) hands files to whichever worker is free, in
# collection order, so a long file collected last can leave the other worker idle at the end
# (README.md's doctests, collected after every test file, took 17 s). Seconds measured on 2 cores.
_LONGEST_FIRST = (
    "tests/test_jacobians.py",  # about 42 s
    "tests/test_lm_head.py",
    "tests/test_divergences.py",
    "tests/test_properties.py",
    "tests/test_attention.py",
    "tests/test_edges.py",
    "tests/test_large_vocab.py",
    "tests/test_lm_losses.py",
    "README.md",  # about 16 s in one test
    "tests/test_sampling.py",
    "tests/test_losses.py",
    "tests/test_spec_properties.py",
    "tests/test_memory.py",
    "tests/test_bench_quick.py",  # about 13 s in one test
    "tests/test_notebook.py",  # about 12 s in one test
)


def pytest_collection_modifyitems(items):
    def rank(item):
        path = item.nodeid.split("::", 1)[0]
        return _LONGEST_FIRST.index(path) if path in _LONGEST_FIRST else len(_LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's own order (its kernel grouping) is kept
