"""Frozen text encoders: the interface text-conditioned models consume, and two implementations.

A ``TextEncoder`` turns prompts into ``TextEmbeddings``: per-token embeddings ``(B, L, dim)`` with
their mask ``(B, L)`` (the ``context`` of cross-attention) and one pooled vector ``(B, dim)`` per
prompt. ``BertTextEncoder`` runs a Hugging Face BERT snapshot (e.g. sentence-transformers'
all-MiniLM-L6-v2; Reimers & Gurevych 2019, *Sentence-BERT*: mean pooling over the real tokens,
then L2 normalisation when the snapshot's ``modules.json`` lists a ``Normalize`` module).
``PrecomputedEncoder`` looks prompts up in an ``.npz`` written by ``save_precomputed``, so
embeddings of any other model (T5, CLIP) computed elsewhere plug in unchanged.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, NamedTuple, Optional, Protocol, Sequence, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.text.bert import BertConfig, BertEncoder, load_params


class TextEmbeddings(NamedTuple):
    """``tokens (B, L, dim)`` float32, ``mask (B, L)`` float32 in {0, 1}, ``pooled (B, dim)``."""

    tokens: np.ndarray
    mask: np.ndarray
    pooled: np.ndarray


@runtime_checkable
class TextEncoder(Protocol):
    """What a frozen text encoder provides.

    ``name``: a short identifier (recorded in configs and checkpoints); ``dim``: the embedding
    width; ``max_length``: the most tokens a prompt can have (longer ones are truncated with a
    warning); ``encode(texts, length=None)``: ``TextEmbeddings`` padded to ``length`` tokens
    (default: the encoder's ``length``), the same for every call so jitted consumers compile once.
    """

    name: str
    dim: int
    max_length: int

    def encode(self, texts: Sequence[str], length: Optional[int] = None) -> TextEmbeddings:
        ...


def check_texts(texts: Sequence[str]) -> list:
    """Reject what no encoder can embed: a bare string, an empty list, empty prompts."""
    if isinstance(texts, str):
        raise ValueError("encode expects a sequence of prompts, got a single string; "
                         "wrap it in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("encode expects at least one prompt, got an empty sequence")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"prompt {i} must be a str, got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"prompt {i} is empty; expected a non-empty string")
    return texts


def _resolve_length(length: Optional[int], default: int, max_length: int) -> int:
    length = default if length is None else int(length)
    if not 2 <= length <= max_length:
        raise ValueError(f"length must be in [2, {max_length}] (room for [CLS] and [SEP]), "
                         f"got {length}")
    return length


class BertTextEncoder:
    """A Hugging Face BERT snapshot (``config.json``, ``model.safetensors``, ``tokenizer.json``;
    optionally sentence-transformers' ``sentence_bert_config.json``, ``modules.json``,
    ``1_Pooling/config.json``) run in JAX.

    Prompts are tokenized as sentence-transformers does ([CLS] text [SEP], truncated at
    ``max_length`` = ``max_seq_length`` of ``sentence_bert_config.json``, else the model's
    ``max_position_embeddings``), padded to a fixed ``length``, and encoded in jitted batches of
    ``batch_size`` (the last batch is padded), so one compiled program serves every call.
    """

    def __init__(self, model_dir: str, name: Optional[str] = None, length: Optional[int] = None,
                 batch_size: int = 64):
        from diffjax.text import _require
        tokenizers = _require("tokenizers")
        for f in ("config.json", "model.safetensors", "tokenizer.json"):
            if not os.path.exists(os.path.join(model_dir, f)):
                raise FileNotFoundError(f"{model_dir} is not a BERT snapshot: {f} is missing "
                                        "(expected config.json, model.safetensors, tokenizer.json)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_dir = model_dir
        self.name = name or os.path.basename(os.path.normpath(model_dir))
        self.config = BertConfig.from_json(os.path.join(model_dir, "config.json"))
        self.dim = self.config.hidden_size
        self.max_length = self.config.max_position_embeddings
        st_config = _read_json(os.path.join(model_dir, "sentence_bert_config.json"))
        if "max_seq_length" in st_config:
            self.max_length = min(self.max_length, int(st_config["max_seq_length"]))
        self.pooling, self.normalize = _pooling(model_dir)
        self.length = _resolve_length(length, self.max_length, self.max_length)
        self.batch_size = batch_size

        self._tokenizer = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self._pad_id = self._tokenizer.padding["pad_id"] if self._tokenizer.padding else 0
        self._tokenizer.no_padding()
        self._variables = load_params(model_dir, self.config)
        self._forward = jax.jit(_bert_forward(self.config, self.pooling, self.normalize))

    def tokenize(self, texts: Sequence[str], length: Optional[int] = None):
        """``(ids, mask)`` int32 arrays of shape ``(B, length)``; warns when a prompt is cut."""
        texts = check_texts(texts)
        length = _resolve_length(length, self.length, self.max_length)
        self._tokenizer.enable_truncation(length)  # [CLS] text [SEP] with the text cut to fit
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.full((len(texts), length), self._pad_id, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for i, enc in enumerate(encodings):
            if enc.overflowing:
                warnings.warn(f"{self.name}: prompt {i} is longer than {length} tokens "
                              f"(the encoder's limit is max_length={self.max_length}); "
                              "it was truncated", stacklevel=2)
            ids[i, :len(enc.ids)] = enc.ids
            mask[i, :len(enc.ids)] = 1
        return ids, mask

    def encode(self, texts: Sequence[str], length: Optional[int] = None) -> TextEmbeddings:
        ids, mask = self.tokenize(texts, length)
        B, bs = ids.shape[0], self.batch_size
        pad = -B % bs
        # Padding rows get one real token so their mean pooling stays finite; they are dropped.
        ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), np.int32)])
        mask = np.concatenate([mask, np.zeros((pad, mask.shape[1]), np.int32)])
        mask[B:, 0] = 1
        tokens, pooled = [], []
        for s in range(0, B + pad, bs):
            t, p = self._forward(self._variables, ids[s:s + bs], mask[s:s + bs])
            tokens.append(np.asarray(t))
            pooled.append(np.asarray(p))
        return TextEmbeddings(np.concatenate(tokens)[:B], mask[:B].astype(np.float32),
                              np.concatenate(pooled)[:B])


def _read_json(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _pooling(model_dir: str):
    """(mode, normalize) from sentence-transformers' module files; plain BERT: mean, no norm."""
    modules = _read_json(os.path.join(model_dir, "modules.json")) or []
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    mode = "mean"
    for m in modules:
        if m.get("type", "").endswith(".Pooling"):
            cfg = _read_json(os.path.join(model_dir, m.get("path", ""), "config.json"))
            modes = [k[len("pooling_mode_"):] for k, v in cfg.items()
                     if k.startswith("pooling_mode_") and v is True]
            if modes and modes != ["mean_tokens"] and modes != ["cls_token"]:
                raise ValueError(f"{model_dir}: pooling {modes} is not supported "
                                 "(expected mean_tokens or cls_token)")
            mode = "cls" if modes == ["cls_token"] else "mean"
    return mode, normalize


def _bert_forward(config: BertConfig, pooling: str, normalize: bool):
    net = BertEncoder(config)

    def forward(variables, ids, mask):
        tokens = net.apply(variables, ids, mask)
        m = mask.astype(tokens.dtype)[..., None]
        if pooling == "cls":
            pooled = tokens[:, 0]
        else:
            pooled = jnp.sum(tokens * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
        if normalize:  # torch.nn.functional.normalize: x / max(||x||, 1e-12)
            pooled = pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return tokens, pooled

    return forward


class PrecomputedEncoder:
    """Embeddings computed elsewhere (T5, CLIP, ...), looked up by prompt.

    The ``.npz`` (see ``save_precomputed``) holds ``texts`` (N,) str, ``tokens`` (N, L, dim),
    ``mask`` (N, L), ``pooled`` (N, dim) and ``name``. ``encode`` returns rows in prompt order,
    trimmed or zero-padded to ``length`` tokens; an unknown prompt is a ``KeyError``.
    """

    def __init__(self, path: str):
        with np.load(path, allow_pickle=False) as z:
            missing = {"texts", "tokens", "mask", "pooled"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: expected arrays texts, tokens, mask, pooled; "
                                 f"missing {sorted(missing)}")
            texts = [str(t) for t in z["texts"]]
            self._tokens = np.asarray(z["tokens"], np.float32)
            self._mask = np.asarray(z["mask"], np.float32)
            self._pooled = np.asarray(z["pooled"], np.float32)
            self.name = str(z["name"]) if "name" in z.files else os.path.basename(path)
        self._index: Dict[str, int] = {t: i for i, t in enumerate(texts)}
        self.dim = self._tokens.shape[-1]
        self.max_length = self.length = self._tokens.shape[1]

    def encode(self, texts: Sequence[str], length: Optional[int] = None) -> TextEmbeddings:
        texts = check_texts(texts)
        length = self.length if length is None else int(length)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        unknown = [t for t in texts if t not in self._index]
        if unknown:
            raise KeyError(f"{self.name}: no precomputed embedding for {unknown[:3]}")
        rows = np.array([self._index[t] for t in texts])
        tokens, mask = self._tokens[rows], self._mask[rows]
        if length < self.max_length and mask[:, length:].any():
            warnings.warn(f"{self.name}: prompts are longer than {length} tokens; truncated",
                          stacklevel=2)
        n = min(length, self.max_length)
        out_t = np.zeros((len(texts), length, self.dim), np.float32)
        out_m = np.zeros((len(texts), length), np.float32)
        out_t[:, :n], out_m[:, :n] = tokens[:, :n], mask[:, :n]
        return TextEmbeddings(out_t, out_m, self._pooled[rows])


def save_precomputed(path: str, texts: Sequence[str], embeddings: TextEmbeddings,
                     name: str = "precomputed") -> None:
    """Write ``embeddings`` of ``texts`` (any encoder's output) for ``PrecomputedEncoder``."""
    texts = check_texts(texts)
    tokens, mask, pooled = (np.asarray(a, np.float32) for a in embeddings)
    B = len(texts)
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2] or pooled.shape != (B, tokens.shape[2]) \
            or tokens.shape[0] != B:
        raise ValueError(f"expected tokens (B, L, D), mask (B, L), pooled (B, D) with B={B}; got "
                         f"{tokens.shape}, {mask.shape}, {pooled.shape}")
    if len(set(texts)) != B:
        raise ValueError("texts must be distinct (they are the lookup keys)")
    np.savez(path, texts=np.array(texts), tokens=tokens, mask=mask, pooled=pooled,
             name=np.array(name))
