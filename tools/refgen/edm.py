"""Reference outputs of EDM's ``EDMPrecond`` around ``SongUNet`` (DDPM++) and ``DhariwalUNet``
(ADM) for tests/test_convert_edm.py, and the state-dict shapes of the published networks.

    git clone https://github.com/NVlabs/edm && git -C edm checkout 008a4e5316c8e3bfe61a62f874bddba254295afb
    python tools/refgen/edm.py edm tests/data

Runs only EDM's code (CPU torch; its own torch_utils/dnnlib, no stub needed). Writes
edm_<variant>.npz (init_kwargs, the state dict, x, sigma, labels and D(x; sigma)) and
edm_published_shapes.json (init_kwargs and key -> shape of each published network, built on
the 'meta' device with the network_kwargs that EDM's train.py gives its --arch/--cres/--augment).
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

EDM_COMMIT = "008a4e5316c8e3bfe61a62f874bddba254295afb"

_DDPMPP = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
               channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
_ADM = dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4])
PUBLISHED = {
    "edm-cifar10-32x32-uncond-vp": dict(_DDPMPP, img_resolution=32, img_channels=3, label_dim=0, augment_dim=9,
                                        dropout=0.13, use_fp16=False),
    "edm-ffhq-64x64-uncond-vp": dict(_DDPMPP, img_resolution=64, img_channels=3, label_dim=0, augment_dim=9,
                                     channel_mult=[1, 2, 2, 2], dropout=0.05, use_fp16=False),
    "edm-imagenet-64x64-cond-adm": dict(_ADM, img_resolution=64, img_channels=3, label_dim=1000, dropout=0.10,
                                        use_fp16=True),
}

# Small networks. DDPM++: 16/32 channels, augmentation input (dropped on import). ADM: 32
# channels, 3 classes; the test network has 16 channels per head (EDM fixes 64) and 32 GroupNorm
# groups (EDM's GroupNorm has min(32, C/4): 32 at every width of the published ADM, >= 192), so
# the generator sets those two attributes after construction.
VARIANTS = {
    "ddpmpp": dict(init_kwargs=dict(_DDPMPP, img_resolution=16, img_channels=3, label_dim=0, augment_dim=9,
                                    model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
                                    dropout=0.0),
                   head_channels=None, overrides={}),
    "adm": dict(init_kwargs=dict(_ADM, img_resolution=16, img_channels=3, label_dim=3, model_channels=32,
                                 channel_mult=[1, 1], num_blocks=1, attn_resolutions=[8], dropout=0.0),
                head_channels=16, overrides=dict(num_head_channels=16)),
}


def main(edm_dir, out_dir):
    common.upstream_tree(edm_dir, EDM_COMMIT)
    from training import networks

    rng = np.random.RandomState(0)
    x = (2.0 * rng.randn(2, 3, 16, 16)).astype(np.float32)
    sigma = np.array([0.02, 3.0], np.float32)
    for variant, spec in VARIANTS.items():
        torch.manual_seed(0)
        block_init = networks.UNetBlock.__init__
        if spec["head_channels"]:
            networks.UNetBlock.__init__ = lambda self, *a, **k: block_init(
                self, *a, **{**k, "channels_per_head": spec["head_channels"]})
        net = networks.EDMPrecond(**spec["init_kwargs"]).eval()
        networks.UNetBlock.__init__ = block_init
        for m in net.modules():
            if spec["head_channels"] and isinstance(m, networks.GroupNorm):
                m.num_groups = 32
        state = common.randomize(net, seed=1)
        arrays = dict(x=x, sigma=sigma)
        label_dim = spec["init_kwargs"]["label_dim"]
        with torch.no_grad(), common.softmax_recorder():
            if label_dim:
                y = np.array([2, 0])
                onehot = torch.nn.functional.one_hot(torch.from_numpy(y), label_dim).float()
                arrays.update(y=y, out=net(torch.from_numpy(x), torch.from_numpy(sigma), onehot).numpy(),
                              out_unlabelled=net(torch.from_numpy(x), torch.from_numpy(sigma)).numpy())
            else:
                arrays.update(out=net(torch.from_numpy(x), torch.from_numpy(sigma)).numpy())
        common.save(os.path.join(out_dir, f"edm_{variant}.npz"), state, EDM_COMMIT,
                    init_kwargs=np.array(json.dumps(dict(net.init_kwargs))),
                    overrides=np.array(json.dumps(spec["overrides"])), **arrays)

    published = {}
    for name, kwargs in PUBLISHED.items():
        with torch.device("meta"):
            net = networks.EDMPrecond(**kwargs)
        published[name] = dict(init_kwargs=dict(net.init_kwargs),
                               shapes={k: list(v.shape) for k, v in net.state_dict().items()})
        print(f"{name}: {sum(np.prod(s) for s in published[name]['shapes'].values()):,} numbers in the state dict")
    with open(os.path.join(out_dir, "edm_published_shapes.json"), "w") as f:
        json.dump({"edm_commit": EDM_COMMIT, "networks": published}, f)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
