"""Reference outputs of score_sde's own Flax ``NCSNpp`` (models/ncsnpp.py) for
tests/test_convert_score_sde.py, and the parameter shapes of the published checkpoints.

    git clone https://github.com/yang-song/score_sde && git -C score_sde checkout 0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c
    python tools/refgen/score_sde.py score_sde tests/data

Runs only score_sde's code (with today's jax/flax; one shim: ``flax.optim``, gone from Flax,
is named in a type annotation of score_sde's ``models/utils.py``). Writes score_sde_<variant>.npz
(its parameter tree under score_sde's module names, inputs, outputs) for small versions of three
configs, and score_sde_published_shapes.json (the parameter shapes of the paper-size models,
from ``jax.eval_shape`` of score_sde's ``model.init``: nothing allocated).
"""
import importlib
import json
import os
import sys
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

SCORE_SDE_COMMIT = "0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c"
SMALL = dict(nf=16, num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
# variant: (score_sde config, changes for a small network, time labels fed to it)
VARIANTS = {
    "ncsnpp_ve": ("ve.cifar10_ncsnpp_continuous", dict(SMALL, ch_mult=(1, 2)), [0.5, 20.0]),
    "ddpmpp_vp": ("vp.cifar10_ddpmpp_continuous", dict(SMALL, ch_mult=(1, 2)), [3.0, 800.0]),
    # The high-resolution models' input-skip / output-skip pyramids.
    "ncsnpp_ve_skip": ("ve.celebahq_256_ncsnpp_continuous", dict(SMALL, ch_mult=(1, 2, 2)), [0.5, 20.0]),
}
PUBLISHED = ("ve/cifar10_ncsnpp_continuous", "ve/cifar10_ncsnpp_deep_continuous", "vp/cifar10_ddpmpp_continuous",
             "vp/cifar10_ncsnpp_continuous", "subvp/cifar10_ddpmpp_deep_continuous",
             "ve/celebahq_256_ncsnpp_continuous", "ve/ffhq_ncsnpp_continuous")


def _randomize(params, seed):
    """score_sde's parameters drawn far from their initialisation, float16-representable:
    kernels / NIN weights ~ N(0, 1/fan_in) (q and k NINs 1.5x), GroupNorm scales ~ N(1, 0.5^2),
    biases ~ N(0, 0.1^2), Fourier weights ~ N(0, 16^2)."""
    rng = np.random.RandomState(seed)
    out = {}
    for path, v in sorted(traverse_util.flatten_dict(params).items()):
        shape, leaf = v.shape, path[-1]
        if leaf == "scale":
            value = 1.0 + 0.5 * rng.randn(*shape)
        elif leaf in ("kernel", "W") and len(shape) >= 2:
            gain = 1.5 if path[-2] in ("NIN_0", "NIN_1") else 1.0
            value = gain * rng.randn(*shape) / np.sqrt(np.prod(shape[:-1]))
        elif leaf == "W":  # GaussianFourierProjection
            value = 16.0 * rng.randn(*shape)
        else:
            value = 0.1 * rng.randn(*shape) if leaf in ("bias", "b") else rng.randn(*shape)
        out[path] = jnp.asarray(value.astype(np.float16).astype(np.float32))
    return traverse_util.unflatten_dict(out)


def _model(config_name, changes, image_size=None):
    config = importlib.import_module(f"configs.{config_name}").get_config()
    for k, v in changes.items():
        setattr(config.model, k, v)
    if image_size:
        config.data.image_size = image_size
    ncsnpp = importlib.import_module("models.ncsnpp")
    return ncsnpp.NCSNpp(config=config), config


def main(score_sde_dir, out_dir):
    if not hasattr(flax, "optim"):
        flax.optim = types.SimpleNamespace(Optimizer=object)
    common.upstream_tree(score_sde_dir, SCORE_SDE_COMMIT)

    for variant, (config_name, changes, t) in VARIANTS.items():
        model, config = _model(config_name, changes, image_size=16)
        rng = np.random.RandomState(0)
        x = (rng.rand(2, 16, 16, 3) if not config.data.centered else rng.randn(2, 16, 16, 3)).astype(np.float32)
        t = np.asarray(t, np.float32)
        variables = model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                               jnp.asarray(x), jnp.asarray(t), train=False)
        params = _randomize(variables["params"], seed=1)
        records = []
        softmax = jax.nn.softmax
        jax.nn.softmax = lambda w, axis=-1: records.append(np.asarray(softmax(w, axis=axis))) or records[-1]
        try:
            out = np.asarray(model.apply({"params": params}, jnp.asarray(x), jnp.asarray(t), train=False))
        finally:
            jax.nn.softmax = softmax
        common.assert_peaked([r.reshape(-1, r.shape[-1]) for r in records])
        flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
        common.save(os.path.join(out_dir, f"score_sde_{variant}.npz"), flat, SCORE_SDE_COMMIT, x=x, t=t, out=out)

    shapes = {}
    for name in PUBLISHED:
        model, config = _model(name.replace("/", "."), {})
        size = config.data.image_size
        abstract = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                                                     jnp.zeros((1, size, size, 3)), jnp.ones((1,)), train=False))
        shapes[name] = {"/".join(k): list(v.shape) for k, v in traverse_util.flatten_dict(abstract["params"]).items()}
        print(f"{name}: {sum(int(np.prod(s)) for s in shapes[name].values()):,} parameters")
    with open(os.path.join(out_dir, "score_sde_published_shapes.json"), "w") as f:
        json.dump({"score_sde_commit": SCORE_SDE_COMMIT, "shapes": shapes}, f)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
