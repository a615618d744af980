"""A BERT encoder in Flax (Devlin et al. 2019, *BERT*; Vaswani et al. 2017, Sec. 3), for frozen
text conditioning.

The layout follows the original post-LN Transformer encoder that Hugging Face's ``BertModel``
implements, so its checkpoints load unchanged:

    h_0 = LayerNorm(word[ids] + position[0..L-1] + token_type[type_ids])
    a   = LayerNorm(h + Dense(MultiHeadAttention(h, mask)))        (attention, then add & norm)
    h'  = LayerNorm(a + Dense(GELU(Dense(a))))                       (feed-forward, then add & norm)

Attention is ``softmax(Q K^T / sqrt(d_head) + bias) V`` with ``bias = finfo.min`` on padded keys.
``load_params`` maps a Hugging Face ``model.safetensors`` to the Flax parameter tree (torch's
``Linear`` stores ``(out, in)``; Flax's ``Dense`` kernel is ``(in, out)``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Hugging Face ``hidden_act`` names: "gelu" is the exact erf form; "gelu_new"/"gelu_pytorch_tanh"
# the tanh approximation (Hendrycks & Gimpel 2016, eq. 2 and its approximation).
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the forward pass uses."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: str) -> "BertConfig":
        with open(path) as f:
            raw = json.load(f)
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported, got "
                             f"{raw['position_embedding_type']!r}")
        if raw.get("hidden_act", "gelu") not in _ACTIVATIONS:
            raise ValueError(f"{path}: hidden_act must be one of {sorted(_ACTIVATIONS)}, "
                             f"got {raw['hidden_act']!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in fields})


class _Layer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, h: Array, bias: Array) -> Array:
        c = self.config
        B, L, D = h.shape
        n, d = c.num_attention_heads, D // c.num_attention_heads

        def heads(name):
            return nn.Dense(D, name=name)(h).reshape(B, L, n, d)

        q, k, v = heads("query"), heads("key"), heads("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.float32(d)) + bias
        attn = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
        a = nn.Dense(D, name="attention_out")(attn.reshape(B, L, D))
        a = nn.LayerNorm(epsilon=c.layer_norm_eps, name="attention_norm")(h + a)
        f = _ACTIVATIONS[c.hidden_act](nn.Dense(c.intermediate_size, name="intermediate")(a))
        f = nn.Dense(D, name="output")(f)
        return nn.LayerNorm(epsilon=c.layer_norm_eps, name="output_norm")(a + f)


class BertEncoder(nn.Module):
    """``ids (B, L) int, mask (B, L) {0,1} -> last hidden states (B, L, hidden_size)``.

    ``type_ids`` defaults to zeros (single-sentence inputs). Hidden states at padded positions
    are computed but meaningless; use ``mask``.
    """

    config: BertConfig

    @nn.compact
    def __call__(self, ids: Array, mask: Array, type_ids: Array | None = None) -> Array:
        c = self.config
        L = ids.shape[1]
        if L > c.max_position_embeddings:
            raise ValueError(f"BertEncoder: sequence length must be <= "
                             f"{c.max_position_embeddings}, got {L}")
        if type_ids is None:
            type_ids = jnp.zeros_like(ids)
        h = (nn.Embed(c.vocab_size, c.hidden_size, name="word")(ids)
             + nn.Embed(c.max_position_embeddings, c.hidden_size, name="position")(
                 jnp.arange(L)[None])
             + nn.Embed(c.type_vocab_size, c.hidden_size, name="token_type")(type_ids))
        h = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embed_norm")(h)
        bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(jnp.float32).min)
        for i in range(c.num_hidden_layers):
            h = _Layer(c, name=f"layer_{i}")(h, bias)
        return h


def _dense(w: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    return {"kernel": w[prefix + ".weight"].T, "bias": w[prefix + ".bias"]}


def _norm(w: Mapping[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    return {"scale": w[prefix + ".weight"], "bias": w[prefix + ".bias"]}


def convert_hf_weights(w: Mapping[str, np.ndarray], config: BertConfig) -> Dict[str, Any]:
    """Hugging Face ``BertModel`` state dict (numpy) -> ``{"params": ...}`` of ``BertEncoder``.

    Keys may carry a ``bert.`` prefix (``BertForMaskedLM`` etc.); the pooler is not used.
    """
    w = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in w.items()}
    try:
        p: Dict[str, Any] = {
            "word": {"embedding": w["embeddings.word_embeddings.weight"]},
            "position": {"embedding": w["embeddings.position_embeddings.weight"]},
            "token_type": {"embedding": w["embeddings.token_type_embeddings.weight"]},
            "embed_norm": _norm(w, "embeddings.LayerNorm"),
        }
        for i in range(config.num_hidden_layers):
            s = f"encoder.layer.{i}."
            p[f"layer_{i}"] = {
                "query": _dense(w, s + "attention.self.query"),
                "key": _dense(w, s + "attention.self.key"),
                "value": _dense(w, s + "attention.self.value"),
                "attention_out": _dense(w, s + "attention.output.dense"),
                "attention_norm": _norm(w, s + "attention.output.LayerNorm"),
                "intermediate": _dense(w, s + "intermediate.dense"),
                "output": _dense(w, s + "output.dense"),
                "output_norm": _norm(w, s + "output.LayerNorm"),
            }
    except KeyError as e:
        raise ValueError(f"not a BERT checkpoint: missing weight {e.args[0]!r}") from None
    return {"params": jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)}


def load_params(model_dir: str, config: BertConfig) -> Dict[str, Any]:
    """Read ``model_dir/model.safetensors`` with the safetensors numpy API (no torch)."""
    from diffjax.text import _require
    safetensors_numpy = _require("safetensors.numpy")
    path = os.path.join(model_dir, "model.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(f"expected BERT weights at {path}")
    return convert_hf_weights(safetensors_numpy.load_file(path), config)
