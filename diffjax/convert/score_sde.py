"""Import score_sde's Flax checkpoints (Song et al. 2021; yang-song/score_sde) of NCSN++ / DDPM++
(VE, VP and sub-VP SDEs; continuous, deep and high-resolution) into diffjax's
:class:`~diffjax.models.ncsnpp.NCSNpp`.

    python -m diffjax.convert.score_sde exp/ve/cifar10_ncsnpp_continuous/checkpoints/checkpoint_24 runs/ncsnpp_ve
    python -m diffjax.convert.score_sde checkpoint_26 runs/ddpmpp_vp --preset=vp/cifar10_ddpmpp_continuous

A checkpoint is ``flax.training.checkpoints``' msgpack of score_sde's ``State`` (``optimizer``
with its ``target`` parameters, ``params_ema``, ``step``, ...); it is read with
``flax.serialization.msgpack_restore``, and ``optimizer.target`` / ``params_ema`` become the
run's ``params`` / ``ema_params``. The architecture is the score_sde config the checkpoint was
trained with (:data:`PRESETS`, named ``<sde>/<config>`` as in score_sde's ``configs/``), chosen
by ``--preset`` or found in the checkpoint's path; the run config is the matching
configs/score_sde/*.py with that config's changes.

Both are Flax, so tensors keep their layout; only module names change:
``GaussianFourierProjection_0`` -> ``GaussianFourierFeatures_0``, ``ResnetBlockBigGANpp_i`` ->
``ResnetBlockBigGAN_i`` (same inner names), ``AttnBlockpp_i``'s ``GroupNorm_0`` and
``NIN_{0,1,2,3}`` (``W``, ``b``) -> ``Attention_i``'s ``group_norm`` and ``to_q, to_k, to_v,
to_out_0`` (``kernel``, ``bias``), ``Downsample_i/Conv2d_0`` (the FIR input pyramid; ``weight``,
``bias``) -> ``FIRDownConv_i`` (``kernel``, ``bias``), and the convolutions score_sde creates at the top level or inside
``Combine`` (input-skip pyramid) / conv ``Downsample`` modules -> diffjax's top-level ``Conv_j``
in creation order. ``Dense_*`` and top-level ``GroupNorm_*`` keep their names.

Not importable: score_sde's DDPM / NCSN / NCSNv2 networks (``models/ddpm.py``, ``ncsnv2.py``),
the discrete-time NCSN++ models (``*_ncsnpp.py`` without ``_continuous``: a positional
embedding of the noise index divided by its sigma), and ``progressive='residual'``.
"""
from __future__ import annotations

import os
import re
from typing import Any

import ml_collections
import numpy as np
from flax import serialization, traverse_util

from diffjax.convert import common
from diffjax.models import get_model

_CIFAR_NCSNPP_VP = dict(fir=True, progressive_input="residual")
_HIGH_RES = dict(ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, dropout=0.0, progressive="output_skip",
                 progressive_input="input_skip")
_1024 = dict(nf=16, ch_mult=(1, 2, 4, 8, 16, 32, 32, 32), num_res_blocks=1, dropout=0.0, progressive="output_skip",
             progressive_input="input_skip")
# <sde>/<config>: (diffjax config module, model changes, image size, VE sigma_max, data source),
# from score_sde's configs/ (with default_{cifar10,celeba,lsun}_configs.py).
PRESETS: dict[str, tuple[str, dict, int, float | None, str | None]] = {
    "ve/cifar10_ncsnpp_continuous": ("ncsnpp_ve_cifar10", {}, 32, None, None),
    "ve/cifar10_ncsnpp_deep_continuous": ("ncsnpp_ve_cifar10", dict(num_res_blocks=8), 32, None, None),
    **{f"{sde}/cifar10_{net}{deep}_continuous": (f"ddpmpp_{sde}_cifar10",
                                                 dict(_CIFAR_NCSNPP_VP if net == "ncsnpp" else {},
                                                      **(dict(num_res_blocks=8) if deep else {})), 32, None, None)
       for sde in ("vp", "subvp") for net in ("ddpmpp", "ncsnpp") for deep in ("", "_deep")},
    "ve/celebahq_256_ncsnpp_continuous": ("ncsnpp_ve_cifar10", _HIGH_RES, 256, 348.0, "tfds:celeb_a_hq/256"),
    "ve/ffhq_256_ncsnpp_continuous": ("ncsnpp_ve_cifar10", _HIGH_RES, 256, 348.0, "tfds:ffhq"),
    "ve/bedroom_ncsnpp_continuous": ("ncsnpp_ve_cifar10", _HIGH_RES, 256, 378.0, "tfds:lsun/bedroom"),
    "ve/church_ncsnpp_continuous": ("ncsnpp_ve_cifar10", _HIGH_RES, 256, 380.0, "tfds:lsun/church_outdoor"),
    "ve/ffhq_ncsnpp_continuous": ("ncsnpp_ve_cifar10", _1024, 1024, 1348.0, "tfds:ffhq"),
    "ve/celebahq_ncsnpp_continuous": ("ncsnpp_ve_cifar10", _1024, 1024, 1348.0, "tfds:celeb_a_hq/1024"),
}

_ATTENTION = {"GroupNorm_0": "group_norm", "NIN_0": "to_q", "NIN_1": "to_k", "NIN_2": "to_v", "NIN_3": "to_out_0"}
_LEAF = {"W": "kernel", "b": "bias"}
_RENAMED = {"GaussianFourierProjection": "GaussianFourierFeatures", "ResnetBlockBigGANpp": "ResnetBlockBigGAN"}


def _index(name: str) -> tuple[str, int]:
    cls, _, i = name.rpartition("_")
    return cls, int(i) if i.isdigit() else -1


def map_params(params: dict, model: Any, image_size: int, what: str = "params") -> dict:
    """Nested numpy params of ``model`` (an NCSNpp) from score_sde's parameter tree; raises
    ValueError naming the first missing, unexpected or mis-shaped parameter."""
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
    expected = common.param_shapes(model, (1, image_size, image_size, model.in_channels))
    # Convolutions diffjax creates at its top level, in score_sde's creation order.
    convs = sorted({k.rsplit("/", 1)[0] for k in flat if re.fullmatch(r"(Combine_\d+|Downsample_\d+)/Conv_0/\w+", k)
                    or re.fullmatch(r"Conv_\d+/\w+", k)},
                   key=lambda m: (m != "Conv_0", not m.startswith(("Combine", "Downsample")), _index(m.split("/")[0])[1]))
    conv_names = {m: f"Conv_{j}" for j, m in enumerate(convs)}
    converted, unexpected = [], []
    for key, value in flat.items():
        module, _, leaf = key.rpartition("/")
        top, _, inner = module.partition("/")
        cls, i = _index(top)
        if module in conv_names:
            path = f"{conv_names[module]}/{leaf}"
        elif cls in _RENAMED:
            path = f"{_RENAMED[cls]}_{i}/{inner + '/' if inner else ''}{leaf}"
        elif cls == "AttnBlockpp" and inner in _ATTENTION:
            path = f"Attention_{i}/{_ATTENTION[inner]}/{_LEAF.get(leaf, leaf)}"
        elif cls == "Downsample" and inner == "Conv2d_0":
            path = f"FIRDownConv_{i}/{'kernel' if leaf == 'weight' else leaf}"
        elif cls in ("Dense", "GroupNorm") and not inner:
            path = key
        else:
            unexpected.append(f"{what}/{key}")
            continue
        converted.append((f"{what}/{key}", tuple(path.split("/")), value, value.shape))
    return common.assemble(converted, expected, f"NCSNpp({_describe(model)}) at {image_size}x{image_size}", unexpected)


def load(source: Any) -> tuple[dict, dict]:
    """``(optimizer.target, params_ema)`` of a score_sde checkpoint file (or its restored dict)."""
    if not isinstance(source, dict):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no checkpoint file at {path!r}")
        with open(path, "rb") as f:
            try:
                source = serialization.msgpack_restore(f.read())
            except Exception as e:  # msgpack's own errors name no file
                raise ValueError(f"{path} is not a flax msgpack checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(source, dict) or "params_ema" not in source or "target" not in source.get("optimizer", {}):
        keys = sorted(source)[:6] if isinstance(source, dict) else type(source).__name__
        raise ValueError(f"not a score_sde checkpoint: expected 'optimizer' (with 'target') and 'params_ema', got {keys}")
    return source["optimizer"]["target"], source["params_ema"]


def preset_for(path: str, preset: str | None = None) -> str:
    """The preset named, or the one whose ``<sde>/<config>`` appears in the checkpoint's path."""
    if preset is None:
        found = [p for p in PRESETS if f"/{p}/" in "/" + os.path.abspath(os.fspath(path)).replace(os.sep, "/")]
        preset = max(found, key=len) if found else None
    if preset not in PRESETS:
        raise ValueError(f"no score_sde preset {preset!r} (from {'--preset' if preset else 'the path'}); "
                         f"pass --preset=<one of {', '.join(sorted(PRESETS))}>")
    return preset


def config_for(preset: str) -> ml_collections.ConfigDict:
    import importlib

    module, changes, image_size, sigma_max, source = PRESETS[preset]
    config = importlib.import_module(f"diffjax.configs.score_sde.{module}").get_config()
    for k, v in changes.items():
        setattr(config.model, k, v)
    config.data.image_size = image_size
    if sigma_max is not None:
        config.schedule.sigma_max = sigma_max
    if source is not None:
        config.data.source = source
    return config


def convert(path: str, out_dir: str, preset: str | None = None) -> str:
    """Convert the checkpoint at ``path`` into a run directory ``out_dir``; returns its path."""
    common.check_new_run(out_dir)
    config = config_for(preset_for(path, preset))
    model = get_model(config.model)
    target, ema = load(path)
    size = config.data.image_size
    params = map_params(target, model, size, "optimizer/target")
    return common.write_run(out_dir, config, params, map_params(ema, model, size, "params_ema"))


def _describe(model: Any) -> str:
    return (f"nf={model.nf}, ch_mult={tuple(model.ch_mult)}, num_res_blocks={model.num_res_blocks}, "
            f"fir={model.fir}, progressive={model.progressive!r}, progressive_input={model.progressive_input!r}")


def main(argv: list[str] | None = None) -> None:
    common.command_line("python -m diffjax.convert.score_sde", __doc__.split("\n")[0], convert,
                        "a score_sde checkpoint file (checkpoint_<n>)", argv, presets=PRESETS,
                        preset_help="score_sde config (default: from the path)")


if __name__ == "__main__":
    main()
