"""Import EDM's networks (Karras et al. 2022; NVlabs/edm ``training/networks.py``): ``EDMPrecond``
around a ``SongUNet`` (DDPM++) or a ``DhariwalUNet`` (ADM), onto diffjax's EDM preconditioning
wrapper (:mod:`diffjax.models.precond`) around NCSN++/DDPM++ or the ADM UNet.

EDM publishes pickles that hold the network's code; diffjax reads a plain state dict that these
three lines, run in a clone of NVlabs/edm, extract from one (``["ema"]`` is the network EDM
samples with):

    import pickle, torch, dnnlib
    net = pickle.load(dnnlib.util.open_url("https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-cifar10-32x32-uncond-vp.pkl"))["ema"]
    torch.save({"class": type(net).__name__, "init_kwargs": dict(net.init_kwargs), "state_dict": net.state_dict()}, "edm-cifar10-32x32-uncond-vp.pt")

then

    python -m diffjax.convert.edm edm-cifar10-32x32-uncond-vp.pt runs/edm_cifar10
    python -m diffjax.sample --workdir=runs/edm_cifar10          # EDM Heun, 18 steps (35 NFE)

``init_kwargs`` (the constructor arguments EDM records) give the architecture; the run config is
configs/edm/cifar10_uncond.py with that network, image size, classes and EDM's sampler settings
for the data set. Key mapping: ``model.map_layer{0,1}`` -> ``Dense_{0,1}``, ``model.map_label``
(ADM) -> ``class_embedding`` (transposed, plus a zero row for the null label: EDM's unlabelled
call feeds a zero one-hot vector), ``model.enc.*`` / ``model.dec.*`` in EDM's order -> the
network's blocks in creation order (a ``UNetBlock``'s ``norm0, conv0, affine, norm1, conv1,
skip`` -> the residual block, its ``norm2, qkv, proj`` -> the next ``Attention``, ``qkv`` rows
laid out (head, channel, q/k/v)), the output norm and conv -> ``GroupNorm_0`` and the last conv.
``map_augment`` (augmentation labels, unused when sampling) and the fixed ``resample_filter``
buffers are checked and dropped.

Importable: the DDPM++ models (``edm-{cifar10-32x32,ffhq-64x64,afhqv2-64x64}-uncond-vp``) and
ADM (``edm-imagenet-64x64-cond-adm``). Not importable: the NCSN++ models (``*-ve``: EDM feeds
c_noise to the Fourier features, diffjax's NCSNpp their log) and the class-conditional DDPM++
(``edm-cifar10-32x32-cond-vp``: EDM adds the label to the noise features before the embedding
MLP, diffjax's NCSNpp after it).
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import ml_collections
import numpy as np

from diffjax.convert import common
from diffjax.models import get_model

# EDM's constructor defaults (EDMPrecond and the two networks), which init_kwargs leave out.
_PRECOND = dict(label_dim=0, sigma_data=0.5, model_type="DhariwalUNet", augment_dim=0, channel_mult_emb=4)
_DEFAULTS = {
    "SongUNet": dict(model_channels=128, channel_mult=[1, 2, 2, 2], num_blocks=4, attn_resolutions=[16], dropout=0.10,
                     embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                     decoder_type="standard", resample_filter=[1, 1]),
    "DhariwalUNet": dict(model_channels=192, channel_mult=[1, 2, 3, 4], num_blocks=3, attn_resolutions=[32, 16, 8],
                         dropout=0.10),
}
# What diffjax's NCSNpp (registered as "ddpmpp") expresses of SongUNet, and why the rest cannot be.
_SONG_NEEDS = {
    "embedding_type": ("positional", "EDM's NCSN++ feeds c_noise to its Fourier features; diffjax's NCSNpp feeds "
                                     "them log(noise label)"),
    "channel_mult_noise": (1, "diffjax's DDPM++ embeds the noise label in model_channels features"),
    "encoder_type": ("standard", "only DDPM++'s standard encoder is mapped"),
    "decoder_type": ("standard", "only the standard decoder is mapped"),
    "resample_filter": ([1, 1], "DDPM++ resamples with the box filter [1, 1]"),
    "label_dim": (0, "EDM's SongUNet adds the class label to the noise features before the embedding MLP; "
                     "diffjax's NCSNpp adds its label embedding after it"),
    "channel_mult_emb": (4, "diffjax's networks have 4 * model_channels embedding features"),
}
# EDM's generate.py settings per data set (its README): steps, and the stochastic sampler for ImageNet.
_SAMPLERS = {"cifar10": dict(name="edm_heun", steps=18), "ffhq": dict(name="edm_heun", steps=40),
             "afhqv2": dict(name="edm_heun", steps=40), "imagenet": dict(name="edm_stochastic")}
_SOURCES = {"cifar10": "tfds:cifar10", "imagenet": "tfds:imagenet_resized/64x64"}


def architecture(init_kwargs: dict) -> tuple[dict, int]:
    """``(config.model fields, image size)`` of an EDM network from its ``init_kwargs``."""
    kw = {**_PRECOND, **init_kwargs}
    if kw["model_type"] not in _DEFAULTS:
        raise ValueError(f"EDM model_type {kw['model_type']!r} is not importable; known: {sorted(_DEFAULTS)}")
    kw = {**_DEFAULTS[kw["model_type"]], **kw}
    common_fields = dict(name="edm", prediction="x0", sigma_data=float(kw["sigma_data"]),
                         in_channels=int(kw["img_channels"]), dropout=float(kw["dropout"]),
                         ch_mult=tuple(kw["channel_mult"]), num_res_blocks=int(kw["num_blocks"]),
                         attn_resolutions=tuple(kw["attn_resolutions"]))
    if kw["channel_mult_emb"] != 4:
        raise ValueError(f"EDM network has channel_mult_emb={kw['channel_mult_emb']}; "
                         f"{_SONG_NEEDS['channel_mult_emb'][1]}")
    if kw["model_type"] == "SongUNet":
        for field, (value, why) in _SONG_NEEDS.items():
            if kw[field] != value:
                raise ValueError(f"EDM SongUNet with {field}={kw[field]!r} cannot be imported: {why}")
        fields = dict(common_fields, backbone="ddpmpp", nf=int(kw["model_channels"]))
    else:
        fields = dict(common_fields, backbone="adm", ch=int(kw["model_channels"]), num_head_channels=64,
                      resblock_updown=True, use_scale_shift_norm=True, num_classes=int(kw["label_dim"]))
    return fields, int(kw["img_resolution"])


def _layout(fields: dict, image_size: int) -> Iterator[tuple[str, str, str, str | None]]:
    """``(EDM module, kind, diffjax module, diffjax attention or None)`` in EDM's order, which is
    the order in which diffjax's networks create their modules."""
    song = fields["backbone"] == "ddpmpp"
    res_block = "ResnetBlockBigGAN" if song else "ADMResBlock"
    counters = {res_block: 0, "Attention": 0}

    def nxt(cls):
        counters[cls] += 1
        return f"backbone/{cls}_{counters[cls] - 1}"

    def block(name, attention=False):
        return f"model.{name}", "block", nxt(res_block), nxt("Attention") if attention else None

    yield "model.map_layer0", "dense", "backbone/Dense_0", None
    yield "model.map_layer1", "dense", "backbone/Dense_1", None
    if fields.get("num_classes"):
        yield "model.map_label", "label", "backbone/class_embedding", None
    levels, attn = len(fields["ch_mult"]), fields["attn_resolutions"]
    for level in range(levels):
        res = image_size >> level
        if level == 0:
            yield f"model.enc.{res}x{res}_conv", "conv", "backbone/Conv_0", None
        else:
            yield block(f"enc.{res}x{res}_down")
        for idx in range(fields["num_res_blocks"]):
            yield block(f"enc.{res}x{res}_block{idx}", res in attn)
    for level in reversed(range(levels)):
        res = image_size >> level
        if level == levels - 1:
            yield block(f"dec.{res}x{res}_in0", True)
            yield block(f"dec.{res}x{res}_in1")
        else:
            yield block(f"dec.{res}x{res}_up")
        for idx in range(fields["num_res_blocks"] + 1):
            yield block(f"dec.{res}x{res}_block{idx}", res in attn and (idx == fields["num_res_blocks"] or not song))
    out = f"model.dec.{image_size}x{image_size}_aux_" if song else "model.out_"
    yield f"{out}norm", "norm", "backbone/GroupNorm_0", None
    yield f"{out}conv", "conv", "backbone/Conv_1", None


_BLOCK = {"ddpmpp": dict(norm0="GroupNorm_0", conv0="Conv_0", affine="Dense_0", norm1="GroupNorm_1", conv1="Conv_1",
                         skip="Conv_2"),
          "adm": dict(norm0="in_norm", conv0="in_conv", affine="emb_proj", norm1="out_norm", conv1="out_conv",
                      skip="skip")}


def _leaves(kind, module, attention, backbone, sub, value, heads):
    owner, _, leaf = sub.rpartition(".")
    if kind in ("dense", "conv") and not owner:
        return [common.linear_or_conv(module, leaf, value, dense=kind == "dense")]
    if kind == "norm" and not owner:
        return [common.norm(module, leaf, value)]
    if kind == "label" and sub == "weight":
        return [(f"{module}/embedding", common.with_null_row(common.dense_kernel(value)))]
    if kind != "block" or leaf not in ("weight", "bias"):
        return None
    if owner in _BLOCK[backbone]:
        name = _BLOCK[backbone][owner]
        return [(common.norm if owner.startswith("norm") else common.linear_or_conv)(f"{module}/{name}", leaf, value)]
    if attention is None:
        return None
    if owner == "norm2":
        return [common.norm(f"{attention}/group_norm", leaf, value)]
    if owner == "proj":
        return [common.linear_or_conv(f"{attention}/to_out_0", leaf, value, dense=True)]
    if owner == "qkv":
        if heads < 1 or value.shape[0] % (3 * heads):
            return [common.linear_or_conv(f"{attention}/to_q", leaf, value, dense=True)]  # reported as a mismatch
        parts = common.split_qkv(value, heads, "head,ch,qkv")
        return [common.linear_or_conv(f"{attention}/{n}", leaf, p, dense=True)
                for n, p in zip(("to_q", "to_k", "to_v"), parts)]
    return None


def _dropped(key: str, value: np.ndarray) -> bool:
    """``map_augment`` and the 2-tap (box filter [1, 1], DDPM++ and ADM) ``resample_filter`` buffers
    carry nothing diffjax needs; a 4-tap filter (NCSN++) is reported as unexpected."""
    return key == "model.map_augment.weight" or (key.endswith(".resample_filter") and value.shape == (1, 1, 2, 2))


def map_state_dict(state: dict[str, np.ndarray], fields: dict, image_size: int) -> dict:
    """Nested numpy params of ``get_model(fields)`` from an EDMPrecond state dict; raises
    ValueError naming the first missing, unexpected or mis-shaped key."""
    model = get_model(fields)
    expected = common.param_shapes(model, (1, image_size, image_size, fields["in_channels"]))
    layout = {prefix: rest for prefix, *rest in _layout(fields, image_size)}
    converted, unexpected = [], []
    for key, value in state.items():
        prefix = next((p for p in layout if key.startswith(p + ".")), None)
        leaves = None
        if prefix is not None:
            kind, module, attention = layout[prefix]
            sub = key[len(prefix) + 1:]
            heads = (1 if fields["backbone"] == "ddpmpp" or not sub.startswith("qkv.")
                     else value.shape[0] // 3 // fields["num_head_channels"])
            leaves = _leaves(kind, module, attention, fields["backbone"], sub, value, heads)
        if leaves is None and not _dropped(key, value):
            unexpected.append(key)
        converted += [(key, tuple(path.split("/")), array, value.shape) for path, array in leaves or ()]
    what = f"EDMPrecond({fields['backbone']}) at {image_size}x{image_size}"
    return common.assemble(converted, expected, what, unexpected)


def load(source: Any) -> tuple[dict, dict[str, np.ndarray]]:
    """``(init_kwargs, state dict)`` from the snippet's .pt file (or its dict)."""
    if not isinstance(source, dict):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint file at {path!r}")
        import torch
        source = torch.load(path, map_location="cpu", weights_only=True)
    if not {"init_kwargs", "state_dict"} <= set(source) <= {"class", "init_kwargs", "state_dict"}:
        raise ValueError(f"expected a dict with 'init_kwargs' and 'state_dict' (the module docstring's snippet), "
                         f"got keys {sorted(source)[:5]}")
    if source.get("class", "EDMPrecond") != "EDMPrecond":
        raise ValueError(f"the network is an EDM {source['class']} (a baseline model); only EDMPrecond is importable")
    return dict(source["init_kwargs"]), common.load_state_dict(source["state_dict"])


def convert_state_dict(source: Any) -> tuple[dict, int, dict]:
    """``(config.model fields, image size, params as jax arrays)`` from the snippet's file or dict."""
    init_kwargs, state = load(source)
    fields, image_size = architecture(init_kwargs)
    return fields, image_size, common.to_jax(map_state_dict(state, fields, image_size))


def config_for(fields: dict, image_size: int, dataset: str = "") -> ml_collections.ConfigDict:
    """configs/edm/cifar10_uncond.py with the network, image size and classes of the checkpoint,
    and EDM's sampler settings for ``dataset`` (cifar10, ffhq, afhqv2, imagenet)."""
    from diffjax.configs.edm import cifar10_uncond

    config = cifar10_uncond.get_config()
    config.model = ml_collections.ConfigDict(fields)
    config.data.image_size = image_size
    config.data.num_channels = fields["in_channels"]
    config.data.num_classes = fields.get("num_classes", 0)
    config.data.source = _SOURCES.get(dataset, f"tfds:{dataset or 'unknown'}")
    config.sampler = ml_collections.ConfigDict(dict(_SAMPLERS.get(dataset, _SAMPLERS["cifar10"])))
    return config


def convert(path: str, out_dir: str) -> str:
    """Convert the snippet's file at ``path`` into a run directory ``out_dir``; returns its path."""
    common.check_new_run(out_dir)
    init_kwargs, state = load(path)
    fields, image_size = architecture(init_kwargs)
    params = map_state_dict(state, fields, image_size)
    stem = os.path.basename(os.fspath(path))
    dataset = next((d for d in _SAMPLERS if f"-{d}-" in f"-{stem}-"), "")
    return common.write_run(out_dir, config_for(fields, image_size, dataset), params)


def main(argv: list[str] | None = None) -> None:
    common.command_line("python -m diffjax.convert.edm", __doc__.split("\n")[0], convert,
                        "the .pt file the module docstring's snippet writes", argv)


if __name__ == "__main__":
    main()
