"""Noise-conditional classifiers for classifier guidance (``python -m diffjax.classifier``)."""
