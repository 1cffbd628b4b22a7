"""SUTRA-style multilingual mixture-of-experts language models in JAX."""

__version__ = "0.1.0"
