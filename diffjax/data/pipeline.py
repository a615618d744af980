"""Deterministic, resumable batch iterators over the sources of ``diffjax.data.sources``.

The data stream is a function of the global example position, never of the host. With ``N``
examples in the split, global batch ``B = P * b`` (``P`` processes of ``b`` examples each) and
``K = N // B`` global batches per epoch (the last partial global batch is dropped):

- global position ``g`` lies in global batch ``k = g // B``, epoch ``e = k // K``, and reads
  record ``perm_e[g - e K B]`` of the split, where ``perm_e`` is the permutation of ``range(N)``
  drawn by ``np.random.default_rng([seed, e])``;
- its random horizontal flip is drawn from the counter-based ``Philox(key=(seed, g))``;
- with captions (text-conditioned configs), its caption, and whether it is dropped to the null
  caption, are drawn from ``(seed, record, e)`` (``diffjax.data.captions``);
- host ``p`` reads positions ``[k B + p b, k B + (p + 1) b)`` of global batch ``k``: the hosts'
  batches, concatenated in process order, are the global batch.

Toy sources draw the point at position ``g`` from ``(seed, g)`` alone. So 1 process and ``P``
processes with the same global batch see the same examples, and the whole iterator state is one
integer, the number of global batches consumed, which goes into the checkpoint: a run resumed on
any process count continues the same global stream.

The stream is a ``grain.MapDataset`` (element ``k``: this host's part of global batch ``k``), read
ahead by grain's threads and, with ``num_workers > 0``, by that many worker processes; grain's
workers take whole batches, so neither changes the stream.
"""
from __future__ import annotations

import functools
import threading
import weakref
from typing import Any, Iterator

import grain
import numpy as np
from absl import flags
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


def flip(seed: int, g: int) -> bool:
    """Whether the example at global position ``g`` is mirrored: a fair coin keyed by (seed, g)."""
    return bool(np.random.Generator(np.random.Philox(key=[seed % 2 ** 64, g])).random() < 0.5)


class GlobalOrder:
    """Which record of a ``num_records``-example split each global stream position reads."""

    def __init__(self, num_records: int, global_batch: int, seed: int):
        if num_records < global_batch:
            raise ValueError(f"the split has {num_records} examples, fewer than one global batch "
                             f"of {global_batch}")
        self.num_records, self.global_batch, self.seed = num_records, global_batch, seed
        self.batches_per_epoch = num_records // global_batch
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()  # grain's reading threads share the cache

    def __getstate__(self) -> dict:  # pickled for grain's worker processes
        return {**self.__dict__, "_permutations": {}, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

    def permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._permutations:
                if len(self._permutations) >= 2:  # keep the two latest: read-ahead crosses epochs
                    self._permutations.pop(next(iter(self._permutations)))
                self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(
                    self.num_records)
            return self._permutations[epoch]

    def epoch(self, g: int) -> int:
        """The epoch global position ``g`` falls in."""
        return g // (self.batches_per_epoch * self.global_batch)

    def record(self, g: int) -> int:
        """The record of the split that global position ``g`` reads."""
        epoch, i = divmod(g, self.batches_per_epoch * self.global_batch)
        return int(self.permutation(epoch)[i])


_ENDLESS = 2 ** 40  # global batches in the stream: no run reaches the end


def host_position(h: int, batch_size: int, process_index: int, process_count: int) -> int:
    """Global position of this host's ``h``-th example: host ``p`` reads slice ``p`` of each
    global batch."""
    k, i = divmod(h, batch_size)
    return (k * process_count + process_index) * batch_size + i


def read_batch(k: int, *, source: Any, order: GlobalOrder, seed: int, batch_size: int,
               process_index: int, process_count: int, image_size: int, num_channels: int,
               resize: str, random_flip: bool, centered: bool, captions: Any = None) -> Batch:
    """This host's part of global batch ``k``: the examples at its global positions, read from the
    source in one call (per-example reads cost 4x the throughput at 32x32), resized or padded,
    each maybe flipped by its own global-position coin, and scaled; with ``captions`` (a
    ``captions.CaptionedMNIST``) also each example's caption index and text context."""
    first = host_position(k * batch_size, batch_size, process_index, process_count)
    positions = range(first, first + batch_size)
    images = []
    records = [order.record(g) for g in positions]
    examples = source.get(records)
    for g, (image, _) in zip(positions, examples):
        image = image[..., None] if image.ndim == 2 else image
        if image.shape[-1] != num_channels:
            raise ValueError(f"dataset images have {image.shape[-1]} channels but "
                             f"data.num_channels is {num_channels}")
        image = to_size(image, image_size, resize)
        images.append(image[:, ::-1] if random_flip and flip(seed, g) else image)
    batch = {"image": scale(np.stack(images), centered),
             "label": np.asarray([label for _, label in examples], np.int32)}
    if captions is not None:
        batch.update(captions.lookup(records, [order.epoch(g) for g in positions]))
    return batch


def draw_toy(k: int, *, source: ToySource, batch_size: int, process_index: int,
             process_count: int) -> Batch:
    """This host's points of global batch ``k`` (drawn per batch: one jitted call)."""
    start = host_position(k * batch_size, batch_size, process_index, process_count)
    return {"image": source.draw(np.arange(start, start + batch_size, dtype=np.int64))}


def _stop(reading: list) -> None:
    """Close the running grain iterator and drop it, so that it never outlives the interpreter's
    modules (its own finaliser then fails noisily)."""
    while reading:
        reading.pop().close()


class Loader:
    """Iterator of this host's batches ``{"image": (b, H, W, C) float32, "label": (b,) int32}``
    (toy sources: ``{"image": (b, 2)}``; with ``captions`` also ``"caption"`` (b,) int32,
    ``"context"`` (b, L, D) float32 and ``"context_mask"`` (b, L) bool); ``batch_size`` is ``b``,
    the per-host batch.
    ``prefetch`` batches are read ahead, each by its own thread, in each of ``num_workers``
    worker processes (0: in this process)."""

    def __init__(self, source: Any, batch_size: int, seed: int, process_index: int = 0,
                 process_count: int = 1, *, image_size: int = 0, num_channels: int = 0,
                 random_flip: bool = False, resize: str = "resize", centered: bool = True,
                 prefetch: int = 2, num_workers: int = 0, captions: Any = None):
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.process_index, self.process_count = process_index, process_count
        host = dict(batch_size=batch_size, process_index=process_index, process_count=process_count)
        if isinstance(source, ToySource):
            self.order = None
            self.batches = grain.MapDataset.range(_ENDLESS).map(
                functools.partial(draw_toy, source=source, **host))
            num_workers = 0  # a jitted JAX call per batch: no worker processes
        else:
            self.order = GlobalOrder(len(source), self.global_batch, seed)
            self.batches = grain.MapDataset.range(_ENDLESS).map(functools.partial(
                read_batch, source=source, order=self.order, seed=seed, image_size=image_size,
                num_channels=num_channels, resize=resize, random_flip=random_flip,
                centered=centered, captions=captions, **host))
        self._read_options = grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch)
        self._workers = grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=prefetch)
        self.position = 0
        self._reading: list[Iterator[Batch]] = []  # the running grain iterator, if any
        self._closer: weakref.finalize | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.process_count

    @property
    def batches_per_epoch(self) -> int:
        return self.order.batches_per_epoch

    def make_batch(self, k: int) -> Batch:
        """This host's part of global batch ``k``, read now in this thread."""
        return self.batches[k]

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if not self._reading:
            stream = self.batches[self.position:].to_iter_dataset(self._read_options)
            if self._workers.num_workers:
                if not flags.FLAGS.is_parsed():  # grain's workers read its absl flags: outside
                    flags.FLAGS.mark_as_parsed()  # an absl app (tests, notebooks), the defaults
                stream = stream.mp_prefetch(self._workers)
            self._reading.append(iter(stream))
            # Stop the read-ahead when this loader goes, or at exit, if no one called close().
            self._closer = weakref.finalize(self, _stop, self._reading)
        batch = next(self._reading[0])
        if self._workers.num_workers:  # out of grain's shared memory, which it then frees
            batch = {key: np.array(value) for key, value in batch.items()}
        self.position += 1
        return batch

    def state(self) -> dict[str, int]:
        """The number of global batches consumed: valid on any process count."""
        return {"position": self.position}

    def restore(self, state: dict[str, Any]) -> None:
        self.close()
        self.position = int(state["position"])

    def close(self) -> None:
        """Stop the read-ahead (threads and worker processes); ``next`` starts it again."""
        if self._closer is not None:
            self._closer()
