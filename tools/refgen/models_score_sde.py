"""Reference outputs of score_sde's NCSN++ / DDPM++ (``models/ncsnpp.py``), from the upstream code.

Writes ``tests/data/models_score_sde_<variant>.npz`` for ``tests/test_models.py``: random
weights drawn here by upstream parameter path, the same weights under diffjax's parameter paths
(the mapping is :func:`diffjax_path`), inputs, and the upstream network's output on them. Nothing
here imports diffjax: the numbers come from upstream alone.

Upstream: https://github.com/yang-song/score_sde at commit 0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c
(Flax; its models run under current jax/flax unchanged except ``models/utils.py``, which imports
the long-removed ``flax.optim`` and ``flax.nn``: :func:`load_upstream` replaces that module by its
own ``register_model``, ``get_model`` and ``get_sigmas``, taken from its source text):

    git clone https://github.com/yang-song/score_sde /tmp/score_sde && git -C /tmp/score_sde checkout 0acb9e0
    python tools/refgen/models_score_sde.py --upstream /tmp/score_sde

Networks: the paper configs ``configs/ve/cifar10_ncsnpp_continuous.py`` and
``configs/vp/cifar10_ddpmpp_continuous.py`` shrunk to nf=16, one block per level, 16x16 inputs
(attention at 16x16, the top level). Weights: kernels ~ N(0, 1/fan_in), the attention query and key
projections 2 times larger so that attention is peaked (asserted below: mean max weight >= 4/L, 2/L over 4 keys,
and a uniform softmax moves the output by > 1%), GroupNorm scales ~ N(1, 0.5^2) and biases
~ N(0, 0.5^2), other biases ~ N(0, 0.1^2), the Fourier features' W ~ N(0, 16^2) as upstream.
Weights are rounded to float16 (stored so, exactly) to keep the files small.
"""
from __future__ import annotations

import argparse
import ast
import math
import os
import re
import sys
import types

import numpy as np

COMMIT = "0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c"
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "data")
# variant: (upstream config module, diffjax.models.ncsnpp.PAPER_CONFIGS name, noise labels)
VARIANTS = {
    "ncsnpp_cifar10_ve": ("configs.ve.cifar10_ncsnpp_continuous", [0.5, 20.0]),   # labels: sigma
    "ddpmpp_cifar10_vp": ("configs.vp.cifar10_ddpmpp_continuous", [3.0, 800.0]),  # labels: 999 t
}
NF, BLOCKS, SIZE = 16, 1, 16


def diffjax_path(path: str) -> str:
    """Upstream parameter path -> diffjax's (``diffjax.models.ncsnpp.NCSNpp``)."""
    path = path.replace("GaussianFourierProjection_", "GaussianFourierFeatures_")
    path = path.replace("ResnetBlockBigGANpp_", "ResnetBlockBigGAN_")
    path = re.sub(r"^Downsample_(\d+)/Conv2d_0/weight$", r"FIRDownConv_\1/kernel", path)
    path = re.sub(r"^Downsample_(\d+)/Conv2d_0/bias$", r"FIRDownConv_\1/bias", path)
    path = re.sub(r"^AttnBlockpp_(\d+)/GroupNorm_0/", r"Attention_\1/group_norm/", path)
    for i, name in enumerate(("to_q", "to_k", "to_v", "to_out_0")):   # NIN_0..3: q, k, v, output
        path = re.sub(rf"^AttnBlockpp_(\d+)/NIN_{i}/W$", rf"Attention_\1/{name}/kernel", path)
        path = re.sub(rf"^AttnBlockpp_(\d+)/NIN_{i}/b$", rf"Attention_\1/{name}/bias", path)
    if re.search(r"AttnBlockpp|Downsample|Upsample|Combine|NIN", path):
        raise ValueError(f"no diffjax path for upstream parameter {path!r}")
    return path


def load_upstream(upstream: str):
    """Import score_sde's ``models.ncsnpp`` with ``models.utils`` replaced (see the module doc)."""
    import jax.numpy as jnp

    sys.path.insert(0, os.path.abspath(upstream))
    src_path = os.path.join(upstream, "models", "utils.py")
    tree = ast.parse(open(src_path).read())
    keep = [n for n in tree.body
            if (isinstance(n, ast.FunctionDef) and n.name in ("register_model", "get_model", "get_sigmas"))
            or (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "_MODELS" for t in n.targets))]
    utils = types.ModuleType("models.utils")
    utils.__dict__["jnp"] = jnp
    exec(compile(ast.Module(body=keep, type_ignores=[]), src_path, "exec"), utils.__dict__)
    import models
    sys.modules["models.utils"], models.utils = utils, utils
    from models import ncsnpp
    return ncsnpp


def draw(params: dict, seed: int) -> dict:
    rng = np.random.RandomState(seed)
    out = {}
    for path, p in params.items():
        leaf, parent = path.rsplit("/", 1)[-1], path.rsplit("/", 2)[-2] if path.count("/") else ""
        if "GroupNorm" in parent:
            v = rng.randn(*p.shape) * 0.5 + (1.0 if leaf == "scale" else 0.0)
        elif "GaussianFourierProjection" in path:
            v = rng.randn(*p.shape) * 16.0
        elif p.ndim >= 2:   # conv HWIO / dense (in, out) / NIN W (in, out)
            gain = 2.0 if re.search(r"AttnBlockpp_\d+/NIN_[01]/W$", path) else 1.0
            v = rng.randn(*p.shape) * gain / math.sqrt(math.prod(p.shape[:-1]))
        else:
            v = rng.randn(*p.shape) * 0.1
        out[path] = np.asarray(v, np.float16).astype(np.float32)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help=f"a checkout of yang-song/score_sde at {COMMIT}")
    parser.add_argument("--out_dir", default=DATA)
    args = parser.parse_args()
    import importlib

    import jax
    import jax.numpy as jnp
    from flax import traverse_util

    ncsnpp = load_upstream(args.upstream)
    for variant, (module, labels) in VARIANTS.items():
        config = importlib.import_module(module).get_config()
        config.model.nf, config.model.num_res_blocks, config.data.image_size = NF, BLOCKS, SIZE
        net = ncsnpp.NCSNpp(config)
        x = np.random.RandomState(1).rand(2, SIZE, SIZE, 3).astype(np.float32)   # data scale of the config
        t = jnp.asarray(labels, jnp.float32)
        shapes = jax.eval_shape(lambda: net.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                                                 jnp.asarray(x), t, train=False))["params"]
        flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(shapes).items()}
        weights = draw(flat, seed=0)
        variables = {"params": traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v)
                                                             for k, v in weights.items()})}

        records, softmax = [], jax.nn.softmax

        def recording(w, axis=-1, **kw):
            out = softmax(w, axis=axis, **kw)
            records.append(np.asarray(out).reshape(-1, out.shape[axis]))
            return out

        jax.nn.softmax = recording
        try:
            out = np.asarray(net.apply(variables, jnp.asarray(x), t, train=False))
        finally:
            jax.nn.softmax = softmax
        assert records, "no attention ran"
        for w in records:
            peak = float(w.max(-1).mean()) * w.shape[-1]
            # at least 4 times the uniform weight (twice on the 4 keys of the 2x2 middle block)
            assert peak >= min(4.0, w.shape[-1] / 2), f"{variant}: attention nearly uniform ({peak:.2f}/L)"
        jax.nn.softmax = lambda w, axis=-1, **kw: jnp.full_like(w, 1.0 / w.shape[axis])
        try:
            uniform = np.asarray(net.apply(variables, jnp.asarray(x), t, train=False))
        finally:
            jax.nn.softmax = softmax
        moved = float(np.abs(uniform - out).max() / np.abs(out).max())
        assert moved > 0.01, f"{variant}: uniform attention moves the output by only {moved:.2%}"

        arrays = {"params/" + diffjax_path(k): v.astype(np.float16) for k, v in weights.items()}
        path = os.path.join(args.out_dir, f"models_score_sde_{variant}.npz")
        np.savez_compressed(path, upstream_commit=np.array(COMMIT), x=x, t=np.asarray(labels, np.float32),
                            out=out, **arrays)
        print(f"wrote {path}: {len(arrays)} parameters, attention peaks "
              + ", ".join(f"{float(w.max(-1).mean()) * w.shape[-1]:.1f}/L" for w in records)
              + f", uniform attention moves the output by {moved:.1%}")


if __name__ == "__main__":
    main()
