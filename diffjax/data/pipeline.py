"""Deterministic, resumable batch iterators over the sources of ``diffjax.data.sources``.

Batch number ``k`` is a pure function of ``(seed, host, k)``: epoch ``e = k // batches_per_epoch``
reads this host's examples in the order of a permutation seeded by ``(seed, e)``, and the flips
of batch ``k`` are seeded by ``(seed, k)``. So the whole iterator state is one integer, the number
of batches already consumed, which goes into the checkpoint; a restored iterator continues the
exact order. Batches are made ahead of time in a worker thread.
"""
from __future__ import annotations

import concurrent.futures
from typing import Any, Iterator

import numpy as np
from PIL import Image

from diffjax.data.sources import ToySource

Batch = dict[str, np.ndarray]


def to_size(image: np.ndarray, size: int, mode: str) -> np.ndarray:
    """Bring a uint8 HWC image to ``size x size``: ``"pad"`` zero-pads (centred), ``"resize"``
    centre-crops to a square then resizes with antialiasing (DDPM / score_sde preprocessing)."""
    h, w, c = image.shape
    if (h, w) == (size, size):
        return image
    if mode == "pad":
        if h > size or w > size:
            raise ValueError(f"cannot pad a {h}x{w} image to {size}x{size}")
        top, left = (size - h) // 2, (size - w) // 2
        return np.pad(image, ((top, size - h - top), (left, size - w - left), (0, 0)))
    if mode != "resize":
        raise ValueError(f"data.resize must be 'pad' or 'resize', got {mode!r}")
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(image[top:top + s, left:left + s].squeeze(-1) if c == 1 else
                           image[top:top + s, left:left + s])
    out = np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None))
    return out.reshape(size, size, c)


def scale(images_uint8: np.ndarray, centered: bool) -> np.ndarray:
    """uint8 -> float32 in [-1, 1] (``centered``) or [0, 1]."""
    x = images_uint8.astype(np.float32) / 255.0
    return 2.0 * x - 1.0 if centered else x


class Loader:
    """Iterator of per-host batches ``{"image": (B, H, W, C) float32, "label": (B,) int32}``."""

    def __init__(self, source: Any, batch_size: int, seed: int, *, image_size: int = 0,
                 num_channels: int = 0, random_flip: bool = False, resize: str = "resize",
                 centered: bool = True, prefetch: int = 2):
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.image_size, self.num_channels = image_size, num_channels
        self.random_flip, self.resize, self.centered = random_flip, resize, centered
        self.position = 0
        self._prefetch = prefetch
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: dict[int, concurrent.futures.Future] = {}
        if not self.is_toy and len(source) < batch_size:
            raise ValueError(f"this host's share of the dataset has {len(source)} examples, "
                             f"fewer than its batch of {batch_size}")

    @property
    def is_toy(self) -> bool:
        return isinstance(self.source, ToySource)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.source) // self.batch_size

    def indices(self, k: int) -> np.ndarray:
        """Positions in this host's shard that batch ``k`` reads (the last partial batch of an
        epoch is dropped)."""
        epoch, i = divmod(k, self.batches_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.source))
        return order[i * self.batch_size:(i + 1) * self.batch_size]

    def make_batch(self, k: int) -> Batch:
        if self.is_toy:
            return {"image": self.source.batch(k, self.batch_size)}
        examples = self.source.get(self.indices(k))
        images = []
        for image, _ in examples:
            image = image[..., None] if image.ndim == 2 else image
            if image.shape[-1] != self.num_channels:
                raise ValueError(f"dataset images have {image.shape[-1]} channels but "
                                 f"data.num_channels is {self.num_channels}")
            images.append(to_size(image, self.image_size, self.resize))
        images = np.stack(images)
        if self.random_flip:
            flip = np.random.default_rng([self.seed, k, 1]).random(len(images)) < 0.5
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        labels = np.asarray([label for _, label in examples], np.int32)
        return {"image": scale(images, self.centered), "label": labels}

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        k = self.position
        for j in range(k, k + self._prefetch + 1):
            if j not in self._pending:
                self._pending[j] = self._pool.submit(self.make_batch, j)
        batch = self._pending.pop(k).result()
        self.position = k + 1
        return batch

    def state(self) -> dict[str, int]:
        return {"position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self.position = int(state["position"])
