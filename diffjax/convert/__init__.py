"""Importers of the published checkpoints of each paper family, as diffjax run directories.

    python -m diffjax.convert IN OUT_DIR [--format=NAME] [--preset=NAME]

writes ``OUT_DIR/checkpoints/0`` (the weights as ``params`` and ``ema_params``, and the config)
that ``python -m diffjax.sample --workdir=OUT_DIR`` and ``diffjax.evaluate`` read. The format is
told from ``IN`` when ``--format`` is not given (:func:`detect`):

| format | IN | module |
|---|---|---|
| ``diffusers`` | a diffusers ``UNet2DModel`` folder (DDPM CIFAR-10, CelebA-HQ, LSUN) | ``diffusers_unet`` |
| ``adm`` | a guided-diffusion / improved-diffusion ``.pt`` state dict | ``adm`` |
| ``edm`` | the ``.pt`` that ``diffjax.convert.edm``'s snippet extracts from an EDM pickle | ``edm`` |
| ``score_sde`` | a score_sde Flax checkpoint file (``checkpoint_<n>``) | ``score_sde`` |

Each module also runs alone (``python -m diffjax.convert.<module> IN OUT_DIR``) and has a
Python API (``convert_state_dict`` / ``map_state_dict``); ``common`` holds what they share.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

MODULES = {"diffusers": "diffusers_unet", "adm": "adm", "edm": "edm", "score_sde": "score_sde"}


def detect(path: str) -> str:
    """The format of the checkpoint at ``path`` (a key of :data:`MODULES`); ValueError if unknown."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(path, d, "config.json")) for d in ("", "unet")):
            return "diffusers"
        raise ValueError(f"{path} is a folder without a diffusers config.json; give a checkpoint file or --format")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch.save's zip archive, or a legacy pickle
        import torch
        contents = torch.load(path, map_location="cpu", weights_only=True, mmap=head.startswith(b"PK"))
        if isinstance(contents, dict) and {"init_kwargs", "state_dict"} <= set(contents):
            return "edm"
        if isinstance(contents, dict) and any(k.startswith(("input_blocks.", "time_embed.")) for k in contents):
            return "adm"
        first = sorted(contents)[:3] if isinstance(contents, dict) else type(contents).__name__
        raise ValueError(f"{path} is a PyTorch file but neither a guided-/improved-diffusion state dict nor "
                         f"an EDM extract (first keys: {first})")
    if head and (0x81 <= head[0] <= 0x8f or head[0] in (0xDE, 0xDF)):
        return "score_sde"  # a non-empty msgpack map: flax.serialization's format
    raise ValueError(f"cannot tell the format of {path}; pass --format (one of {', '.join(MODULES)})")


def convert(path: str, out_dir: str, format: str | None = None, **options: Any) -> str:
    """Convert ``path`` into the run directory ``out_dir`` with the importer of ``format``
    (default: :func:`detect`); ``options`` go to that importer's ``convert``."""
    fmt = format or detect(path)
    if fmt not in MODULES:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(MODULES)}")
    module = importlib.import_module(f"diffjax.convert.{MODULES[fmt]}")
    return module.convert(path, out_dir, **options)
