"""Benchmarks of jaxsoft against jax.nn, optax, SciPy, NumPy and (when installed) PyTorch.

Run ``python -m bench`` from the repository root; ``python -m bench --quick --out DIR`` checks the
harness in seconds. See ``bench/README.md`` for what each figure means.
"""
