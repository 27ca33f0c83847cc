"""Runnable examples: ``python -m jaxsoft.examples.train_digits``."""
