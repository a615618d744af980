"""The FID Inception-v3 (the 2015 TensorFlow graph) in Flax, and its weights.

The graph is the one `pytorch-fid` evaluates (`pytorch_fid/inception.py`): torchvision's
Inception-v3 with 1008 classes, no auxiliary head, and the TensorFlow quirks of the 2015 graph
patched in: the average pools inside Mixed_5b-d, Mixed_6b-e and Mixed_7b ignore padded zeros
(`count_include_pad=False`), and Mixed_7c pools with a max instead of an average. Every conv is
conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU. Module names follow the
PyTorch state dict so that the weight conversion is a mechanical renaming.

Weights: the file `pt_inception-2015-12-05-6726825d.pth` that pytorch-fid downloads from
`FID_WEIGHTS_URL`. `load_variables()` reads it (needs torch) or a converted `.npz` (no torch);
convert once with

    python -m diffjax.metrics.inception --convert pt_inception-2015-12-05-6726825d.pth inception_fid.npz
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
NPZ_NAME = "inception_fid.npz"
ENV_VAR = "DIFFJAX_INCEPTION"
INPUT_SIZE = 299
POOL_DIM = 2048
NUM_CLASSES = 1008


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "diffjax"


# Full float32 matmuls and convolutions: TPUs (bfloat16 passes) and GPUs (TF32) would otherwise
# shift the features by ~1e-3 relative, which moves FIDs in the first decimal.
PRECISION = jax.lax.Precision.HIGHEST


class BasicConv(nn.Module):
    """torchvision `BasicConv2d`: conv without bias, BatchNorm(eps=1e-3), ReLU."""
    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        x = nn.Conv(self.features, self.kernel, strides=self.stride, padding=((ph, ph), (pw, pw)),
                    use_bias=False, precision=PRECISION, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x):
    # TF's average pool does not count padded zeros (pytorch-fid's FIDInception patches).
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (`max_pool=False`, FIDInceptionE_1) and Mixed_7c (`max_pool=True`, FIDInceptionE_2)."""
    max_pool: bool

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
        if self.max_pool:  # the 2015 graph's (probably accidental) max pool in its last block
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3_same(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Input: `(B, 299, 299, 3)` float in [-1, 1]. Output: `{"pool": (B, 2048), "logits": (B, 1008),
    "logits_unbiased": (B, 1008)}`; `pool` is pool3 (FID/KID features), `logits_unbiased` is
    `pool @ W` without the bias, the quantity the original Inception Score code softmaxes."""

    @nn.compact
    def __call__(self, x):
        x = BasicConv(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        fc = nn.Dense(NUM_CLASSES, precision=PRECISION, name="fc")
        logits = fc(pool)
        return {"pool": pool, "logits": logits,
                "logits_unbiased": logits - fc.variables["params"]["bias"]}


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 `(B, H, W, C)` -> float `(B, 299, 299, 3)` in [-1, 1], as pytorch-fid does it:
    grayscale repeated to RGB, scale to [0, 1], bilinear resize (half-pixel centres, no
    antialiasing: PyTorch's `F.interpolate(mode="bilinear", align_corners=False)`), `2 x - 1`."""
    x = images.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    b, h, w, c = x.shape
    if (h, w) != (INPUT_SIZE, INPUT_SIZE):
        x = jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, c), "bilinear", antialias=False)
    return 2.0 * x - 1.0


def make_apply_fn(variables: Mapping[str, Any]):
    """`uint8 images (B, H, W, C) -> {"pool", "logits", "logits_unbiased"}`, compiled once per
    batch shape (the weights are an argument of the compiled program, not constants in it)."""
    net = FIDInceptionV3()
    apply = jax.jit(lambda v, images: net.apply(v, preprocess(images)))
    return lambda images: apply(variables, images)


# ---------------------------------------------------------------------------- weights

def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> dict:
    """pytorch-fid's state dict (names `Mixed_5b.branch1x1.conv.weight`, ...) -> Flax variables.

    Conv weights OIHW -> HWIO, linear `(out, in)` -> `(in, out)`, BatchNorm weight/bias ->
    scale/bias (params), running_mean/var -> mean/var (batch_stats); `num_batches_tracked`
    and the auxiliary head are not part of the FID graph and are dropped."""
    flat: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in state_dict.items():
        value = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        *path, leaf = key.split(".")
        if leaf == "num_batches_tracked" or path[0] == "AuxLogits":
            continue
        if path[-1] == "conv":
            flat[("params", *path, "kernel")] = value.transpose(2, 3, 1, 0)
        elif path[-1] == "bn":
            collection, name = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                                "running_mean": ("batch_stats", "mean"),
                                "running_var": ("batch_stats", "var")}[leaf]
            flat[(collection, *path, name)] = value
        elif path == ["fc"]:
            flat[("params", "fc", {"weight": "kernel", "bias": "bias"}[leaf])] = (
                value.T if leaf == "weight" else value)
        else:
            raise ValueError(f"unexpected key {key!r} in the Inception state dict")
    variables = traverse_util.unflatten_dict(flat)
    _check_structure(variables)
    return variables


def _check_structure(variables) -> None:
    expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0),
                              jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
    want = {k: v.shape for k, v in traverse_util.flatten_dict(expected, sep="/").items()}
    got = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
    if want != got:
        missing = sorted(set(want) - set(got))[:5]
        extra = sorted(set(got) - set(want))[:5]
        wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])[:5]
        raise ValueError(f"Inception weights do not match the FID graph: missing {missing}, "
                         f"unexpected {extra}, wrong shapes {wrong}")


def save_npz(variables, path: str | os.PathLike) -> None:
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in flat.items()})


def load_npz(path: str | os.PathLike) -> dict:
    with np.load(path) as f:
        variables = traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep="/")
    _check_structure(variables)
    return variables


def load_pth(path: str | os.PathLike) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch; convert it once where torch is installed "
                          f"with `python -m diffjax.metrics.inception --convert {path} "
                          f"{NPZ_NAME}` and use the .npz") from e
    return convert_torch_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def _missing_weights_message(tried: list[Path]) -> str:
    return ("FID Inception weights not found (looked at: " + ", ".join(map(str, tried)) + ").\n"
            f"Download {FID_WEIGHTS_URL}\n"
            f"and put it at {default_cache_dir() / PTH_NAME} (or anywhere, and set "
            f"${ENV_VAR} to its path). To evaluate without torch, convert it once with\n"
            f"  python -m diffjax.metrics.inception --convert {PTH_NAME} "
            f"{default_cache_dir() / NPZ_NAME}")


def load_variables(path: str | os.PathLike | None = None) -> dict:
    """Flax variables of the FID Inception from `path`, else `$DIFFJAX_INCEPTION`, else
    `~/.cache/diffjax/inception_fid.npz`, else `~/.cache/diffjax/pt_inception-2015-12-05-6726825d.pth`.
    A `.pth` is converted on the fly (needs torch); a `.npz` is read with numpy only."""
    if path is None and os.environ.get(ENV_VAR):
        path = os.environ[ENV_VAR]
    tried = [Path(path)] if path is not None else [default_cache_dir() / NPZ_NAME,
                                                   default_cache_dir() / PTH_NAME]
    for candidate in tried:
        if candidate.is_file():
            return load_npz(candidate) if candidate.suffix == ".npz" else load_pth(candidate)
    raise FileNotFoundError(_missing_weights_message(tried))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffjax.metrics.inception",
                                     description="Convert pytorch-fid's Inception weights to .npz.")
    parser.add_argument("--convert", nargs=2, metavar=("SRC.pth", "DST.npz"), required=True)
    src, dst = parser.parse_args(argv).convert
    if not Path(src).is_file():
        raise SystemExit(_missing_weights_message([Path(src)]))
    save_npz(load_pth(src), dst)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
