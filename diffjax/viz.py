"""Pictures of samples: image grids, and 2D samples drawn beside the data they model."""
from __future__ import annotations

import io
import math
import os

import numpy as np
from PIL import Image

from diffjax import fileio


def to_uint8(images: np.ndarray, centered: bool = True) -> np.ndarray:
    """Float images in [-1, 1] (``centered``) or [0, 1] -> uint8, clipped."""
    x = np.asarray(images, np.float32)
    x = (x + 1.0) / 2.0 if centered else x
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile uint8 ``(N, H, W, C)`` images into one ``(rows*(H+pad)+pad, ...)`` uint8 image."""
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.zeros((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.uint8)
    for i, image in enumerate(images):
        r, k = divmod(i, ncols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        grid[top:top + h, left:left + w] = image
    return grid


def save_image_grid(path: str, images: np.ndarray, centered: bool = True, scale: int = 1) -> str:
    grid = image_grid(to_uint8(images, centered))
    picture = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format=Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG"))
    fileio.write_atomic(path, buffer.getvalue())
    return path


def save_scatter(path: str, samples: np.ndarray, data: np.ndarray | None = None,
                 title: str = "samples", lim: float | None = None) -> str:
    """2D samples, beside the data when given, on the same axes limits."""
    # A bare Figure draws off-screen without touching pyplot's global backend, so saving a
    # picture from a notebook does not stop the notebook's own plots from showing.
    from matplotlib.figure import Figure

    panels = [("data", data), (title, samples)] if data is not None else [(title, samples)]
    reference = np.asarray(data if data is not None else samples)
    lim = lim or float(np.max(np.abs(reference))) * 1.25
    fig = Figure(figsize=(4 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, p) in zip(axes[0], panels):
        p = np.asarray(p)
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.5)
        ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=f"{name} (n={len(p)})")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format=os.path.splitext(path)[1][1:] or "png")
    fileio.write_atomic(path, buffer.getvalue())
    return path
