"""Measurement tools that run the training code on synthetic data."""
