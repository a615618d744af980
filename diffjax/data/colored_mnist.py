"""Colourised MNIST, built offline from the bundled digits (for the colourisation demo).

Each digit's stroke is painted in one colour and its background in another, both drawn at random
per image from a small palette of saturated hues, so the grey level alone leaves the colours
ambiguous and a model must learn which colour pairs occur. ``build`` returns uint8 RGB arrays;
``write`` saves them as an image ``.npz`` that ``data.source = "npz:<path>"`` trains on.
"""
from __future__ import annotations

import numpy as np

# Stroke / background colours (RGB in [0, 1]): bright strokes on dark backgrounds of another hue.
STROKES = np.array([[1.0, 0.2, 0.2], [0.2, 1.0, 0.2], [0.3, 0.5, 1.0], [1.0, 1.0, 0.2], [1.0, 0.3, 1.0],
                    [0.2, 1.0, 1.0]])
BACKGROUNDS = np.array([[0.3, 0.0, 0.0], [0.0, 0.3, 0.0], [0.0, 0.0, 0.35], [0.25, 0.25, 0.0]])


def build(images: np.ndarray, labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Colour grey digits ``images`` (uint8 (N, H, W, 1)): ``rgb = v * stroke + (1 - v) * background``.

    ``v`` is the digit's intensity in [0, 1]; the stroke and background colours of each image are
    drawn uniformly from ``STROKES`` and ``BACKGROUNDS`` with ``seed``. Returns uint8 (N, H, W, 3)
    images and the labels.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 grey images of shape (N, H, W, 1), got {images.dtype} {images.shape}")
    rng = np.random.default_rng(seed)
    n = images.shape[0]
    stroke = STROKES[rng.integers(len(STROKES), size=n)][:, None, None, :]
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS), size=n)][:, None, None, :]
    v = images.astype(np.float64) / 255.0
    rgb = v * stroke + (1.0 - v) * background
    return np.round(255.0 * rgb).astype(np.uint8), np.asarray(labels)


def write(path: str, seed: int = 0, first: int = 0, stop: int | None = None) -> str:
    """Colourise the bundled MNIST digits ``[first, stop)`` and save them as an image ``.npz`` at ``path``."""
    from diffjax.data import sources

    images, labels = sources.load_mnist_5k()
    rgb, labels = build(images[first:stop], labels[first:stop], seed)
    return sources.save_npz(path, rgb, labels, {"source": "diffjax.data.colored_mnist", "seed": seed,
                                                 "first": first, "stop": stop})
