"""Reference outputs of guided-diffusion's and improved-diffusion's ``UNetModel`` for
tests/test_convert_adm.py, and the state-dict shapes of the published checkpoints.

    git clone https://github.com/openai/guided-diffusion && git -C guided-diffusion checkout 22e0df8183507e13a7813f8d38d51b072ca1e67c
    git clone https://github.com/openai/improved-diffusion && git -C improved-diffusion checkout 1bc7bbbdc414d83d4abf2ad8cc1446dc36c4e4d5
    python tools/refgen/adm.py guided-diffusion improved-diffusion tests/data

Runs only the upstream code (CPU torch). Writes adm_<variant>.npz (small networks: random
weights, inputs, outputs) and adm_published_shapes.json (key -> shape of every published
checkpoint's state dict, from models built on the 'meta' device: no memory, no download).
"""
import importlib
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

GUIDED_COMMIT = "22e0df8183507e13a7813f8d38d51b072ca1e67c"
IMPROVED_COMMIT = "1bc7bbbdc414d83d4abf2ad8cc1446dc36c4e4d5"

# Small networks (16x16 images, 2 levels, one block per level, attention at both resolutions);
# `diffjax` holds the matching ADMUNet fields the test builds.
VARIANTS = {
    # QKVAttention ("new" order), BigGAN up/down blocks, scale-shift norm, 3 classes, learned sigma.
    "guided_new_updown": dict(
        package="guided", order="new",
        upstream=dict(image_size=16, model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(1, 2),
                      channel_mult=(1, 1), num_classes=3, num_head_channels=16, use_scale_shift_norm=True,
                      resblock_updown=True, use_new_attention_order=True),
        diffjax=dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(16, 8), num_classes=3,
                     num_head_channels=16, use_scale_shift_norm=True, resblock_updown=True, learn_sigma=True)),
    # QKVAttentionLegacy, conv resampling, additive time embedding, unconditional.
    "guided_legacy_conv": dict(
        package="guided", order="legacy",
        upstream=dict(image_size=16, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(1, 2),
                      channel_mult=(1, 1), num_heads=2, use_scale_shift_norm=False),
        diffjax=dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(16, 8), num_heads=2,
                     use_scale_shift_norm=False)),
    # improved-diffusion's own UNetModel (its attention is the legacy order), class-conditional.
    "improved": dict(
        package="improved", order="legacy",
        upstream=dict(model_channels=32, out_channels=6, num_res_blocks=1, attention_resolutions=(1, 2),
                      channel_mult=(1, 1), num_classes=3, num_heads=2, use_scale_shift_norm=True),
        diffjax=dict(ch=32, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(16, 8), num_classes=3, num_heads=2,
                     use_scale_shift_norm=True, learn_sigma=True)),
}

# Published checkpoints: the README flags (create_model arguments) of each.
_GUIDED_FLAGS = dict(attention_resolutions="32,16,8", learn_sigma=True, resblock_updown=True, use_scale_shift_norm=True,
                     num_res_blocks=2, num_channels=256, num_head_channels=64, num_heads=4, dropout=0.0,
                     channel_mult="", use_checkpoint=False, use_fp16=False, num_heads_upsample=-1,
                     use_new_attention_order=False)
PUBLISHED = {
    "64x64_diffusion": ("guided", dict(_GUIDED_FLAGS, image_size=64, num_channels=192, num_res_blocks=3,
                                       class_cond=True, use_new_attention_order=True)),
    "128x128_diffusion": ("guided", dict(_GUIDED_FLAGS, image_size=128, num_head_channels=-1, class_cond=True)),
    "256x256_diffusion": ("guided", dict(_GUIDED_FLAGS, image_size=256, class_cond=True)),
    "256x256_diffusion_uncond": ("guided", dict(_GUIDED_FLAGS, image_size=256, class_cond=False)),
    "512x512_diffusion": ("guided", dict(_GUIDED_FLAGS, image_size=512, class_cond=True)),
    "lsun_bedroom": ("guided", dict(_GUIDED_FLAGS, image_size=256, class_cond=False)),
    "imagenet64_cond_270M_250K": ("improved", dict(image_size=64, num_channels=192, num_res_blocks=3, learn_sigma=True,
                                                   class_cond=True, attention_resolutions="16,8", num_heads=4,
                                                   num_heads_upsample=-1, dropout=0.0, use_checkpoint=False,
                                                   use_scale_shift_norm=True)),
    "lsun_uncond_100M_1200K_bs128": ("improved", dict(image_size=256, num_channels=128, num_res_blocks=2, num_heads=1,
                                                      learn_sigma=True, use_scale_shift_norm=False, class_cond=False,
                                                      attention_resolutions="16", num_heads_upsample=-1, dropout=0.0,
                                                      use_checkpoint=False)),
}


def main(guided_dir, improved_dir, out_dir):
    packages = {}
    for name, path, commit in (("guided", guided_dir, GUIDED_COMMIT), ("improved", improved_dir, IMPROVED_COMMIT)):
        common.upstream_tree(path, commit)
        module = "guided_diffusion" if name == "guided" else "improved_diffusion"
        packages[name] = (importlib.import_module(f"{module}.unet"), importlib.import_module(f"{module}.script_util"),
                          commit)

    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, 16, 16).astype(np.float32)
    t = np.array([3.0, 917.0], np.float32)
    y = np.array([1, 2])
    for variant, spec in VARIANTS.items():
        unet, _, commit = packages[spec["package"]]
        net = unet.UNetModel(in_channels=3, dropout=0.0, **spec["upstream"]).eval()
        state = common.randomize(net, seed=1)
        labels = y if spec["upstream"].get("num_classes") else None
        with torch.no_grad(), common.softmax_recorder():
            out = net(torch.from_numpy(x), torch.from_numpy(t),
                      y=None if labels is None else torch.from_numpy(labels)).numpy()
        common.save(os.path.join(out_dir, f"adm_{variant}.npz"), state, commit, x=x, t=t,
                    y=labels if labels is not None else np.zeros(0, np.int64), out=out,
                    diffjax=np.array(json.dumps(spec["diffjax"])), order=np.array(spec["order"]))

    shapes = {}
    for name, (package, flags) in PUBLISHED.items():
        _, script_util, commit = packages[package]
        with torch.device("meta"):
            net = script_util.create_model(**flags)
        shapes[name] = {k: list(v.shape) for k, v in net.state_dict().items()}
        print(f"{name}: {sum(np.prod(s) for s in shapes[name].values()):,} parameters")
    with open(os.path.join(out_dir, "adm_published_shapes.json"), "w") as f:
        json.dump({"guided_diffusion_commit": GUIDED_COMMIT, "improved_diffusion_commit": IMPROVED_COMMIT,
                   "shapes": shapes}, f)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
