"""Import guided-diffusion / improved-diffusion ``UNetModel`` state dicts (ADM, Dhariwal & Nichol
2021; Improved DDPM, Nichol & Dhariwal 2021) into diffjax's :class:`~diffjax.models.adm.ADMUNet`.

    python -m diffjax.convert.adm 64x64_diffusion.pt runs/adm_imagenet64
    python -m diffjax.convert.adm my_model.pt runs/mine --preset=256x256_diffusion_uncond
    python -m diffjax.sample --workdir=runs/adm_imagenet64 --sampler=ddim --opt steps=50

The published checkpoints are ``torch.save``d state dicts; their architecture flags (the
READMEs' ``MODEL_FLAGS``) are in :data:`PRESETS`, chosen by the file name or ``--preset``.
From Python: ``params = convert_state_dict(path_or_dict, model, image_size, attention_order)``.

Key mapping (guided-diffusion ``unet.py``): ``time_embed.{0,2}`` -> ``Dense_{0,1}``,
``label_emb`` -> ``class_embedding`` (plus a zero row: diffjax's null label, which gives the
network no class signal), ``input_blocks.0.0`` -> ``Conv_0``, each ``ResBlock`` -> the next
``ADMResBlock_i`` (``in_layers.0/2`` -> ``in_norm/in_conv``, ``emb_layers.1`` -> ``emb_proj``,
``out_layers.0/3`` -> ``out_norm/out_conv``, ``skip_connection`` -> ``skip``), each
``AttentionBlock`` -> the next ``Attention_i`` (``qkv`` split into ``to_q/to_k/to_v``,
``proj_out`` -> ``to_out_0``), ``Downsample.op`` / ``Upsample.conv`` -> the next ``Conv_i``,
``out.0/2`` -> ``GroupNorm_0`` and the last conv. The fused ``qkv`` rows are laid out heads
first (``QKVAttentionLegacy``, improved-diffusion and all guided-diffusion models but one) or
q/k/v first (``QKVAttention``: ``--use_new_attention_order True``, the 64x64 ImageNet model).

Not importable: the noisy ImageNet classifiers (``EncoderUNetModel``; diffjax has no classifier
network), the super-resolution models (``SuperResModel``: low-resolution input concatenated to
x), and improved-diffusion models trained with ``rescale_timesteps=True`` (CIFAR-10 and
unconditional ImageNet-64: the network sees ``1000 t / T``, diffjax's DiscreteSchedule the step
index).
"""
from __future__ import annotations

import os
from typing import Iterator

import ml_collections
import numpy as np

from diffjax.convert import common
from diffjax.models import get_model
from diffjax.models.adm import ADMUNet

ORDERS = {"legacy": "head,qkv,ch", "new": "qkv,head,ch"}

_GUIDED = dict(attn_resolutions=(32, 16, 8), learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True,
               num_res_blocks=2, ch=256, num_head_channels=64)
_G256 = dict(_GUIDED, ch_mult=(1, 1, 2, 2, 4, 4))
_IMAGENET = "tfds:imagenet2012"
# name: (ADMUNet fields, image size, schedule, data source, attention order). guided-diffusion's
# README (jul-2021 models) and improved-diffusion's README (march-2021 models, the ones with
# rescale_timesteps=False); channel_mult as their create_model picks it by image size.
PRESETS: dict[str, tuple[dict, int, dict, str, str]] = {
    "64x64_diffusion": (dict(_GUIDED, ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, num_classes=1000, dropout=0.1),
                        64, dict(name="ddpm_cosine", T=1000), "tfds:imagenet_resized/64x64", "new"),
    "128x128_diffusion": (dict(_GUIDED, ch_mult=(1, 1, 2, 3, 4), num_heads=4, num_head_channels=-1, num_classes=1000),
                          128, dict(name="ddpm_linear", T=1000), _IMAGENET, "legacy"),
    "256x256_diffusion": (dict(_G256, num_classes=1000), 256, dict(name="ddpm_linear", T=1000), _IMAGENET, "legacy"),
    "256x256_diffusion_uncond": (_G256, 256, dict(name="ddpm_linear", T=1000), _IMAGENET, "legacy"),
    "512x512_diffusion": (dict(_GUIDED, ch_mult=(0.5, 1, 1, 2, 2, 4, 4), num_classes=1000), 512,
                          dict(name="ddpm_linear", T=1000), _IMAGENET, "legacy"),
    **{name: (dict(_G256, dropout=0.1), 256, dict(name="ddpm_linear", T=1000), f"tfds:lsun/{name[5:]}", "legacy")
       for name in ("lsun_bedroom", "lsun_cat", "lsun_horse")},
    "lsun_horse_nodropout": (_G256, 256, dict(name="ddpm_linear", T=1000), "tfds:lsun/horse", "legacy"),
    "imagenet64_cond_270M_250K": (dict(ch=192, ch_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(16, 8),
                                       num_heads=4, learn_sigma=True, num_classes=1000), 64,
                                  dict(name="ddpm_cosine", T=4000), "tfds:imagenet_resized/64x64", "legacy"),
    "lsun_uncond_100M_1200K_bs128": (dict(ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16,),
                                          num_heads=1, learn_sigma=True, use_scale_shift_norm=False), 256,
                                     dict(name="ddpm_linear", T=1000), "tfds:lsun/bedroom", "legacy"),
}
_REFUSED = {
    name: "improved-diffusion trained it with rescale_timesteps=True (the network sees 1000 t / 4000); "
          "diffjax's DiscreteSchedule feeds the step index, so it cannot be imported yet"
    for name in ("cifar10_uncond_50M_500K", "imagenet64_uncond_100M_1500K")
}


def _layout(model: ADMUNet, image_size: int) -> Iterator[tuple[str, str, str]]:
    """``(checkpoint prefix, kind, diffjax module)`` in the order ADMUNet creates its modules."""
    names = {"conv": 0, "res": 0, "attn": 0}
    prefix = {"conv": "Conv", "res": "ADMResBlock", "attn": "Attention"}

    def nxt(kind):
        names[kind] += 1
        return f"{prefix[kind]}_{names[kind] - 1}"

    yield "time_embed.0", "dense", "Dense_0"
    yield "time_embed.2", "dense", "Dense_1"
    if model.num_classes:
        yield "label_emb", "label", "class_embedding"
    yield "input_blocks.0.0", "conv", nxt("conv")
    levels, res, b = len(model.ch_mult), image_size, 1
    for level in range(levels):
        for _ in range(model.num_res_blocks):
            yield f"input_blocks.{b}.0", "res", nxt("res")
            if res in model.attn_resolutions:
                yield f"input_blocks.{b}.1", "attn", nxt("attn")
            b += 1
        if level != levels - 1:
            if model.resblock_updown:
                yield f"input_blocks.{b}.0", "res", nxt("res")
            elif model.conv_resample:
                yield f"input_blocks.{b}.0.op", "conv", nxt("conv")
            b, res = b + 1, res // 2
    yield "middle_block.0", "res", nxt("res")
    yield "middle_block.1", "attn", nxt("attn")
    yield "middle_block.2", "res", nxt("res")
    b = 0
    for level in reversed(range(levels)):
        for i in range(model.num_res_blocks + 1):
            yield f"output_blocks.{b}.0", "res", nxt("res")
            j = 1
            if res in model.attn_resolutions:
                yield f"output_blocks.{b}.1", "attn", nxt("attn")
                j = 2
            if level and i == model.num_res_blocks:
                if model.resblock_updown:
                    yield f"output_blocks.{b}.{j}", "res", nxt("res")
                elif model.conv_resample:
                    yield f"output_blocks.{b}.{j}.conv", "conv", nxt("conv")
                res *= 2
            b += 1
    yield "out.0", "norm", "GroupNorm_0"
    yield "out.2", "conv", nxt("conv")


_RES = {"in_layers.0": "in_norm", "in_layers.2": "in_conv", "emb_layers.1": "emb_proj", "out_layers.0": "out_norm",
        "out_layers.3": "out_conv", "skip_connection": "skip"}


def _leaves(kind: str, module: str, sub: str, value: np.ndarray, heads: int, order: str):
    """The diffjax ``(path, array)`` pairs of one checkpoint tensor, or None if it has no place."""
    owner, _, leaf = sub.rpartition(".")
    if leaf not in ("weight", "bias"):
        return None
    if kind in ("dense", "conv") and not owner:
        return [common.linear_or_conv(module, leaf, value, dense=kind == "dense")]
    if kind == "norm" and not owner:
        return [common.norm(module, leaf, value)]
    if kind == "label" and not owner and leaf == "weight":  # + the null label's (zero) row
        return [(f"{module}/embedding", common.with_null_row(value))]
    if kind == "res" and owner in _RES:
        fn = common.norm if _RES[owner].endswith("norm") else common.linear_or_conv
        return [fn(f"{module}/{_RES[owner]}", leaf, value)]
    if kind == "attn" and owner == "norm":
        return [common.norm(f"{module}/group_norm", leaf, value)]
    if kind == "attn" and owner == "proj_out":
        return [common.linear_or_conv(f"{module}/to_out_0", leaf, value, dense=True)]
    if kind == "attn" and owner == "qkv":
        if heads < 1 or value.shape[0] % (3 * heads):
            return [common.linear_or_conv(f"{module}/to_q", leaf, value, dense=True)]  # reported as a mismatch
        parts = common.split_qkv(value, heads, ORDERS[order])
        return [common.linear_or_conv(f"{module}/{n}", leaf, p, dense=True)
                for n, p in zip(("to_q", "to_k", "to_v"), parts)]
    return None


def map_state_dict(state: dict[str, np.ndarray], model: ADMUNet, image_size: int,
                   attention_order: str = "legacy") -> dict:
    """Nested numpy params for ``model`` (see the module docstring); raises ValueError naming the
    first missing, unexpected or mis-shaped key."""
    if attention_order not in ORDERS:
        raise ValueError(f"attention_order must be one of {sorted(ORDERS)}, got {attention_order!r}")
    if model.context_dim:
        raise ValueError("guided-diffusion's UNetModel has no cross-attention; use an ADMUNet with context_dim=None")
    expected = common.param_shapes(model, (1, image_size, image_size, model.in_channels))
    layout = {p: (kind, module) for p, kind, module in _layout(model, image_size)}
    converted, unexpected = [], []
    for key, value in state.items():
        prefix = next((p for p in layout if key.startswith(p + ".")), None)
        leaves = None
        if prefix is not None:
            kind, module = layout[prefix]
            sub = key[len(prefix) + 1:]
            heads = (model.num_heads if model.num_head_channels == -1 or not sub.startswith("qkv.")
                     else value.shape[0] // 3 // model.num_head_channels)
            leaves = _leaves(kind, module, sub, value, heads, attention_order)
        if leaves is None:
            unexpected.append(key)
            continue
        converted += [(key, tuple(path.split("/")), array, value.shape) for path, array in leaves]
    return common.assemble(converted, expected, f"ADMUNet({_describe(model)}) at {image_size}x{image_size}", unexpected)


def convert_state_dict(source: common.Source, model: ADMUNet, image_size: int,
                       attention_order: str = "legacy") -> dict:
    """diffjax params (jax arrays) for ``model`` from a guided-/improved-diffusion state dict."""
    return common.to_jax(map_state_dict(common.load_state_dict(source), model, image_size, attention_order))


def preset_for(path: str, preset: str | None = None) -> str:
    """The preset named, or the one whose name is the checkpoint's file name (without ``.pt``)."""
    name = preset or os.path.splitext(os.path.basename(os.fspath(path)))[0]
    if name in _REFUSED:
        raise ValueError(f"{name}: {_REFUSED[name]}")
    if name not in PRESETS:
        raise ValueError(f"no ADM preset {name!r} (from {'--preset' if preset else 'the file name'}); "
                         f"pass --preset=<one of {', '.join(sorted(PRESETS))}>")
    return name


def config_for(preset: str) -> ml_collections.ConfigDict:
    """The run config: configs/improved_ddpm/cifar10.py (the ADM family) with the preset's
    network, image size, classes and schedule."""
    from diffjax.configs.improved_ddpm import cifar10

    fields, image_size, schedule, source, _ = PRESETS[preset]
    config = cifar10.get_config()
    config.model = ml_collections.ConfigDict(dict(name="adm", prediction="eps", **fields))
    config.schedule = ml_collections.ConfigDict(schedule)
    config.data.source = source
    config.data.image_size = image_size
    config.data.num_classes = fields.get("num_classes", 0)
    return config


def convert(path: str, out_dir: str, preset: str | None = None) -> str:
    """Convert the checkpoint at ``path`` into a run directory ``out_dir``; returns its path."""
    common.check_new_run(out_dir)
    name = preset_for(path, preset)
    config = config_for(name)
    model = get_model(config.model)
    params = map_state_dict(common.load_state_dict(path), model, config.data.image_size, PRESETS[name][4])
    return common.write_run(out_dir, config, params)


def _describe(model: ADMUNet) -> str:
    return (f"ch={model.ch}, ch_mult={tuple(model.ch_mult)}, num_res_blocks={model.num_res_blocks}, "
            f"attn_resolutions={tuple(model.attn_resolutions)}, num_classes={model.num_classes}")


def main(argv: list[str] | None = None) -> None:
    common.command_line("python -m diffjax.convert.adm", __doc__.split("\n")[0], convert,
                        "a guided-diffusion / improved-diffusion .pt state dict", argv, presets=PRESETS,
                        preset_help="architecture (default: from the file name)")


if __name__ == "__main__":
    main()
