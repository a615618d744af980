"""Shared by the reference generators: random weights far from initialisation, a softmax recorder
that proves attention is far from uniform, and saving a reference .npz.

The generators run the upstream PyTorch code (never diffjax) and store, for a small network, its
state dict (float16-representable values, stored as float16 to stay small), the inputs and the
upstream outputs; tests/test_convert_*.py import the state dict into diffjax and compare.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys

import numpy as np
import torch


def upstream_tree(path: str, commit: str) -> str:
    """``path``: a checkout (or ``git archive``) of the upstream repository at ``commit``; put on sys.path."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, ".git")):
        head = subprocess.check_output(["git", "-C", path, "rev-parse", "HEAD"], text=True).strip()
        if head != commit:
            sys.exit(f"{path} is at {head}; the stored references come from {commit}")
    sys.path.insert(0, path)
    return path


def randomize(net: torch.nn.Module, seed: int, qk_gain: float = 1.5, special: dict | None = None) -> dict:
    """Give every parameter a random float16-representable value, and return the
    state dict as numpy float32.

    Conv/linear weights ~ N(0, 1/fan_in) (q/k/v projections ``qk_gain`` times more, so that
    attention is peaked), GroupNorm scales ~ N(1, 0.5^2) with biases ~ N(0, 0.5^2), other biases
    ~ N(0, 0.1^2), other vectors and embeddings ~ N(0, 1); buffers are kept. ``special``: key -> value.
    """
    g = torch.Generator().manual_seed(seed)
    owner = {f"{name}.{p}".lstrip("."): type(m).__name__ for name, m in net.named_modules()
             for p, _ in m.named_parameters(recurse=False)}
    state = {}
    with torch.no_grad():
        for key, t in net.state_dict().items():
            if key not in owner:  # a buffer (e.g. a fixed resampling filter): kept
                state[key] = t.float().numpy()
                continue
            kind, leaf = owner[key], key.rsplit(".", 1)[-1]
            if special and key in special:
                value = torch.as_tensor(special[key], dtype=torch.float32)
            elif "Norm" in kind:
                value = torch.randn(t.shape, generator=g) * 0.5 + (1.0 if leaf == "weight" else 0.0)
            elif leaf == "weight" and t.ndim >= 2 and kind != "Embedding":
                gain = qk_gain if "qkv" in key else 1.0
                value = torch.randn(t.shape, generator=g) * gain / math.sqrt(math.prod(t.shape[1:]))
            elif leaf == "bias":
                value = torch.randn(t.shape, generator=g) * 0.1
            else:
                value = torch.randn(t.shape, generator=g)
            value = value.half().float()
            t.copy_(value.to(t.dtype))
            state[key] = value.numpy()
    return state


@contextlib.contextmanager
def softmax_recorder(min_peak: float = 4.0):
    """Record every ``torch.softmax`` / ``Tensor.softmax`` over attention keys; on exit assert the
    weights are far from uniform: mean max weight >= ``min_peak`` times the uniform 1/L."""
    records = []
    original_fn, original_method = torch.softmax, torch.Tensor.softmax

    def fn(x, dim=-1, *a, **k):
        out = original_fn(x, dim, *a, **k)
        records.append(out.detach().movedim(dim, -1).reshape(-1, out.shape[dim]))
        return out

    def method(self, dim=-1, *a, **k):
        return fn(self, dim, *a, **k)

    torch.softmax, torch.Tensor.softmax = fn, method
    try:
        yield records
    finally:
        torch.softmax, torch.Tensor.softmax = original_fn, original_method
    assert_peaked([w.numpy() for w in records], min_peak)


def assert_peaked(weights: list, min_peak: float = 4.0) -> None:
    """Each (N, L) array of attention weights is far from uniform: its mean largest weight is at
    least ``min_peak`` times 1/L (a test that passes with uniform attention cannot see q/k bugs)."""
    assert weights, "no attention ran: nothing recorded"
    peaks = [float(np.asarray(w).max(axis=-1).mean()) * w.shape[-1] for w in weights]
    for w, peak in zip(weights, peaks):
        assert peak >= min_peak, f"attention over {w.shape[-1]} keys is nearly uniform (mean max weight {peak:.2f}/L)"
    print(f"attention: {len(weights)} softmaxes, mean max weight / (1/L): " + ", ".join(f"{p:.1f}" for p in peaks))


def save(path: str, state: dict, commit: str, **arrays) -> None:
    """``state_dict/<key>`` as float16 (exact: the values are float16-representable), the rest as is."""
    stored = {f"state_dict/{k}": v.astype(np.float16) for k, v in state.items()}
    for k, v in state.items():
        assert np.array_equal(stored[f"state_dict/{k}"].astype(np.float32), v), k
    np.savez_compressed(path, upstream_commit=np.array(commit), **stored, **arrays)
    print(f"wrote {path}: {os.path.getsize(path) / 1e3:.0f} kB")
