"""Import a PyTorch diffusers ``UNet2DModel`` (the DDPM architecture) into diffjax's DDPMUNet.

The diffusers conversions of the original DDPM checkpoints (google/ddpm-cifar10-32,
google/ddpm-celebahq-256, ...) are ``UNet2DModel``s built from ``DownBlock2D`` /
``AttnDownBlock2D`` / ``UpBlock2D`` / ``AttnUpBlock2D``, positional time embedding with
``flip_sin_to_cos=False, freq_shift=1`` and ``downsample_padding=0``. ``model_from_config``
turns such a ``config.json`` into a :class:`~diffjax.models.unet.DDPMUNet` (refusing anything
the DDPM architecture cannot express), and ``convert_state_dict`` maps the weights:

    model, params = load_pretrained("ddpm-cifar10-32/")   # a save_pretrained / hub snapshot folder
    # or, step by step:
    model = model_from_config(json.load(open("config.json")))
    params = convert_state_dict("diffusion_pytorch_model.safetensors", model, image_size=32)
    eps = model.apply({"params": params}, x_nhwc, t)

or, as a run directory ``diffjax.sample`` / ``diffjax.evaluate`` read (config from
configs/ddpm/cifar10.py, or configs/ddpm/celebahq256.py for 256x256 models):

    python -m diffjax.convert.diffusers_unet ddpm-cifar10-32/ runs/ddpm_cifar10

Key mapping: ``down_blocks.1.resnets.0.conv1.weight`` -> params
``["down_blocks_1_resnets_0"]["conv1"]["kernel"]`` (conv weights OIHW -> HWIO, linear
weights transposed, GroupNorm ``weight`` -> ``scale``, ``class_embedding.weight`` ->
``embedding``). The pre-0.15 attention names (``query``, ``key``, ``value``, ``proj_attn``) that
the hub's original ``.bin`` files still use are accepted too.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Union

import ml_collections
import numpy as np

from diffjax.convert import common
from diffjax.convert.common import load_state_dict  # noqa: F401  (API: the state-dict reader)
from diffjax.models.unet import DDPMUNet

_OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def model_from_config(config: Mapping[str, Any], **overrides: Any) -> DDPMUNet:
    """The DDPMUNet equivalent to a diffusers ``UNet2DModel`` config (a config.json dict)."""
    def expect(key, value, default):
        got = config.get(key, default)
        if got != value:
            raise ValueError(f"UNet2DModel config has {key}={got!r}; the DDPM UNet needs {key}={value!r}")

    expect("time_embedding_type", "positional", "positional")
    expect("flip_sin_to_cos", False, True)
    expect("freq_shift", 1, 0)
    expect("downsample_padding", 0, 1)
    expect("act_fn", "silu", "silu")
    expect("resnet_time_scale_shift", "default", "default")
    expect("center_input_sample", False, False)
    expect("mid_block_scale_factor", 1, 1)
    expect("class_embed_type", None, None)
    expect("add_attention", True, True)
    expect("attn_norm_num_groups", None, None)
    expect("downsample_type", "conv", "conv")
    expect("upsample_type", "conv", "conv")
    expect("mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D")
    out_channels = config.get("out_channels", 3)
    in_channels = config.get("in_channels", 3)
    if out_channels not in (in_channels, 2 * in_channels):
        raise ValueError(f"UNet2DModel config has out_channels={out_channels}; the DDPM UNet outputs "
                         f"in_channels={in_channels} (or twice that, learned variances)")
    channels = list(config["block_out_channels"])
    ch = channels[0]
    if any(c % ch for c in channels):
        raise ValueError(f"block_out_channels {channels} are not multiples of the first ({ch})")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    allowed = {"DownBlock2D": "UpBlock2D", "AttnDownBlock2D": "AttnUpBlock2D"}
    if any(t not in allowed for t in down) or [allowed[t] for t in reversed(down)] != up:
        raise ValueError(f"down_block_types {down} / up_block_types {up}: the DDPM UNet needs "
                         f"DownBlock2D/AttnDownBlock2D and the mirrored UpBlock2D/AttnUpBlock2D")
    size = config.get("sample_size", 32)
    size = size[0] if isinstance(size, (list, tuple)) else size
    num_class_embeds = config.get("num_class_embeds")
    kwargs = dict(
        ch=ch, ch_mult=tuple(c // ch for c in channels), num_res_blocks=config.get("layers_per_block", 2),
        attn_resolutions=tuple(size // 2 ** i for i, t in enumerate(down) if t == "AttnDownBlock2D"),
        dropout=config.get("dropout", 0.0), in_channels=in_channels, learn_sigma=out_channels != in_channels,
        num_groups=config.get("norm_num_groups", 32), epsilon=config.get("norm_eps", 1e-5),
        attn_head_dim=config.get("attention_head_dim", 8),
        # diffusers' class embedding has num_class_embeds rows; the last one is read as the null label.
        num_classes=num_class_embeds - 1 if num_class_embeds else 0)
    kwargs.update(overrides)
    return DDPMUNet(**kwargs)


def _flax_path(key: str) -> tuple[str, ...]:
    tokens = key.split(".")
    leaf = tokens.pop()
    tokens = [_OLD_ATTENTION_NAMES.get(t, t) for t in tokens]
    tokens = ".".join(tokens).split(".")
    merged: list[str] = []
    for t in tokens:  # "resnets", "0" -> "resnets_0"
        if t.isdigit() and merged:
            merged[-1] = f"{merged[-1]}_{t}"
        else:
            merged.append(t)
    split = next((i + 1 for i, t in enumerate(merged) if t.startswith(("resnets_", "attentions_"))), None)
    if split is None or split == len(merged):
        modules = ["_".join(merged)]
    else:
        modules = ["_".join(merged[:split]), "_".join(merged[split:])]
    if leaf == "weight":
        leaf = "embedding" if modules[-1] == "class_embedding" else "kernel_or_scale"
    return (*modules, leaf)


def _convert(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    if name != "kernel_or_scale":
        return name, value
    if value.ndim == 1:
        return "scale", value
    return "kernel", common.dense_kernel(value) if value.ndim == 2 else common.conv_kernel(value)


def map_state_dict(state: dict[str, np.ndarray], model: DDPMUNet, image_size: int = 32) -> dict:
    """Nested numpy params for ``model``; raises ValueError naming the first missing, unexpected
    or mis-shaped key (then every problem)."""
    expected = common.param_shapes(model, (1, image_size, image_size, model.in_channels), context=None)
    converted = []
    for key, value in state.items():
        *modules, leaf = _flax_path(key)
        leaf, array = _convert(leaf, value)
        converted.append((key, (*modules, leaf), array, value.shape))
    return common.assemble(converted, expected, f"{type(model).__name__}({_describe(model)})")


def convert_state_dict(source: Union[str, os.PathLike, common.StateDict], model: DDPMUNet,
                       image_size: int = 32) -> dict:
    """diffjax params (jax arrays) for ``model`` from a diffusers ``UNet2DModel`` state dict."""
    return common.to_jax(map_state_dict(common.load_state_dict(source), model, image_size))


def _folder(directory: Union[str, os.PathLike]) -> tuple[dict, str]:
    """``(config.json as a dict, weights file)`` of a diffusers model folder or of a pipeline
    folder's ``unet/``."""
    directory = os.fspath(directory)
    if not os.path.exists(os.path.join(directory, "config.json")) and os.path.isdir(os.path.join(directory, "unet")):
        directory = os.path.join(directory, "unet")
    if not os.path.exists(os.path.join(directory, "config.json")):
        raise FileNotFoundError(f"no diffusers config.json in {directory!r}")
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if os.path.exists(os.path.join(directory, name)):
            return config, os.path.join(directory, name)
    raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors or .bin in {directory!r}")


def _image_size(config: Mapping[str, Any]) -> int:
    size = config.get("sample_size", 32)
    return size[0] if isinstance(size, (list, tuple)) else size


def load_pretrained(directory: Union[str, os.PathLike], **overrides: Any) -> tuple[DDPMUNet, dict]:
    """``(model, params)`` from a diffusers model folder (config.json + weights, e.g. a hub
    snapshot of google/ddpm-cifar10-32 or its ``unet/`` subfolder, or ``save_pretrained`` output)."""
    config, weights = _folder(directory)
    model = model_from_config(config, **overrides)
    return model, convert_state_dict(weights, model, _image_size(config))


def _describe(model: DDPMUNet) -> str:
    return (f"ch={model.ch}, ch_mult={tuple(model.ch_mult)}, num_res_blocks={model.num_res_blocks}, "
            f"attn_resolutions={tuple(model.attn_resolutions)}, num_classes={model.num_classes}")


def config_for(model: DDPMUNet, image_size: int) -> ml_collections.ConfigDict:
    """The run config: configs/ddpm/cifar10.py (32x32) or configs/ddpm/celebahq256.py (the 256x256
    CelebA-HQ and LSUN models) with ``model``'s fields and image size."""
    from diffjax.configs.ddpm import celebahq256, cifar10

    config = (cifar10 if image_size <= 32 else celebahq256).get_config()
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
    fields.pop("dtype"), fields.pop("param_dtype")
    config.model = ml_collections.ConfigDict(dict(name="ddpm_unet", prediction="eps", **fields))
    config.data.image_size = image_size
    config.data.num_classes = model.num_classes
    return config


def convert(path: Union[str, os.PathLike], out_dir: Union[str, os.PathLike]) -> str:
    """Convert a diffusers model (or pipeline) folder into a run directory ``out_dir``."""
    common.check_new_run(out_dir)
    config, weights = _folder(path)
    model = model_from_config(config)
    params = map_state_dict(common.load_state_dict(weights), model, _image_size(config))
    return common.write_run(out_dir, config_for(model, _image_size(config)), params)


def main(argv: list[str] | None = None) -> None:
    common.command_line("python -m diffjax.convert.diffusers_unet", __doc__.split("\n")[0], convert,
                        "a diffusers UNet2DModel folder (config.json + weights) or a pipeline folder", argv)


if __name__ == "__main__":
    main()
