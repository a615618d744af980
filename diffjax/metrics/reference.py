"""FID reference statistics: computed from a training split, or read from the files the papers'
repositories publish.

    python -m diffjax.metrics.reference --config=ddpm/cifar10 --out=cifar10_train.npz
    python -m diffjax.metrics.reference --convert=cifar10-32x32.npz --out=cifar10_edm.npz
    python -m diffjax.metrics.reference --config=ddpm/cifar10 --out=cifar10_stats.npz --layout=score_sde

``--config`` computes the statistics once into the cache ``diffjax.evaluate`` reads
(``~/.cache/diffjax/fid_stats/...``; reused when present) and writes them to ``--out`` in the
``--layout`` asked for. The protocol (docs/evaluation.md) takes the whole training split at the
training resolution, the FID Inception's pool3 features, their mean and ddof=1 covariance.
diffjax's own file holds ``mu``, ``sigma``, ``n`` (and ``features`` when KID needs them).
Published layouts:

- ``score_sde``: ``assets/stats/cifar10_stats.npz``, key ``pool_3``: the (N, 2048) features
  themselves (score_sde ``evaluation.load_dataset_stats``; ``run_lib.evaluate`` reads
  ``data_stats["pool_3"]``);
- ``edm``: ``https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz``, keys ``mu``,
  ``sigma`` (EDM's ``fid.py ref`` writes ``np.savez(dest, mu=mu, sigma=sigma)``);
- ``guided_diffusion``: ``VIRTUAL_imagenet64_labeled.npz`` etc., keys ``mu``, ``sigma``, the
  spatial ``mu_s``, ``sigma_s`` and ``arr_0`` (10k uint8 images) (guided-diffusion
  ``evaluations/evaluator.py``, ``read_statistics``).

:func:`load` reads any of them into diffjax's layout (``n = 0`` when the file does not record
it). The published statistics come from TensorFlow's 2015 Inception graph (EDM: a PyTorch
export of that graph) and the authors' copies of the data, diffjax's from the pytorch-fid port
of that graph, whose resize differs slightly, so a published file and diffjax's own statistics
of the same split give FIDs that differ a little: compare like with like.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable

import numpy as np

from diffjax.metrics import fid

LAYOUTS = ("diffjax", "score_sde", "edm", "guided_diffusion")


def detect_layout(keys) -> str:
    """Which layout a statistics ``.npz`` with these keys has."""
    keys = set(keys)
    if {"mu", "sigma", "n"} <= keys:
        return "diffjax"
    if "pool_3" in keys:
        return "score_sde"
    if {"mu", "sigma", "mu_s", "sigma_s"} <= keys:
        return "guided_diffusion"
    if {"mu", "sigma"} <= keys:
        return "edm"
    raise ValueError(f"not a statistics file: keys {sorted(keys)}; expected diffjax's (mu, sigma, n), "
                     "score_sde's (pool_3), EDM's (mu, sigma) or guided-diffusion's (mu, sigma, mu_s, "
                     "sigma_s, arr_0)")


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Statistics in diffjax's layout (``mu``, ``sigma``, ``n``; ``features`` from score_sde's
    ``pool_3``) from a file in any of :data:`LAYOUTS`."""
    with np.load(path) as f:
        layout = detect_layout(f.files)
        if layout == "diffjax":
            return {k: f[k] for k in f.files}
        if layout == "score_sde":
            features = f["pool_3"]
            return {**fid.feature_statistics(features), "features": features}
        return {"mu": f["mu"], "sigma": f["sigma"], "n": np.asarray(0)}


def save(path: str | os.PathLike, stats: dict, layout: str = "diffjax") -> None:
    """Write ``stats`` (diffjax's layout) as ``layout``: ``diffjax``, ``edm`` (``mu``, ``sigma``)
    or ``score_sde`` (``pool_3``, which needs ``stats["features"]``)."""
    if layout == "diffjax":
        fid.save_statistics(path, stats)
    elif layout == "edm":
        np.savez(path, mu=stats["mu"], sigma=stats["sigma"])
    elif layout == "score_sde":
        if "features" not in stats:
            raise ValueError("score_sde's layout stores the features themselves; compute the "
                             "statistics with their features (keep_features=True)")
        np.savez(path, pool_3=np.asarray(stats["features"], np.float32))
    else:
        raise ValueError(f"cannot write layout {layout!r}; writable: diffjax, edm, score_sde "
                         "(guided-diffusion's needs spatial features diffjax does not compute)")


def as_diffjax(path: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """``path`` itself when it is in diffjax's layout (or does not exist yet: then it is the cache
    ``diffjax.evaluate`` fills), else a diffjax copy of it in ``out_dir``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return path
    with np.load(path) as f:
        if detect_layout(f.files) == "diffjax":
            return path
    out = os.path.join(os.fspath(out_dir), "reference_" + os.path.basename(path))
    save(out, load(path))
    return out


def training_statistics(config: Any, feature_fn: Callable, path: str | os.PathLike,
                        batch_size: int = 500, keep_features: bool = False) -> dict:
    """Statistics of the whole training split of ``config`` (``config.data.split``, training
    resolution and crop, no flips) under ``feature_fn``; cached at ``path``."""
    from diffjax import evaluate

    def batches():
        return (images for images, _ in evaluate.data_batches(config, config.data.split, batch_size))

    return fid.reference_statistics(feature_fn, batches, path, keep_features=keep_features)


def default_path(config: Any) -> str:
    """Where ``diffjax.evaluate`` caches the training-split statistics of ``config``."""
    from diffjax import evaluate

    return evaluate._default_reference_path(config)


def one_line(error: BaseException) -> str:
    """An error message on one line (the Inception's missing-weights message spans several)."""
    return " ".join(str(error.args[0] if error.args else error).split())


def _load_config(spec: str) -> Any:
    """The config a ``--config`` value names (a packaged name or a file, ``diffjax.configs.resolve``)."""
    import importlib.util

    from diffjax import configs

    path = configs.resolve(spec).partition(":")[0]
    module_spec = importlib.util.spec_from_file_location("diffjax_reference_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()


def main(argv: list[str] | None = None) -> None:
    from diffjax.metrics import inception

    parser = argparse.ArgumentParser(prog="python -m diffjax.metrics.reference",
                                     description="FID reference statistics (docs/evaluation.md).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="a packaged config name or file: its whole training split")
    source.add_argument("--convert", metavar="PUBLISHED.npz", help="a published statistics file")
    parser.add_argument("--out", required=True, help="the statistics file to write")
    parser.add_argument("--layout", choices=("diffjax", "edm", "score_sde"), default="diffjax")
    parser.add_argument("--inception", help="FID Inception weights (.pth or .npz)")
    parser.add_argument("--batch_size", type=int, default=500)
    args = parser.parse_args(argv)
    try:
        if args.convert:
            stats = load(args.convert)
        else:
            config = _load_config(args.config)
            apply_fn = inception.make_apply_fn(inception.load_variables(args.inception))
            stats = training_statistics(config, apply_fn, default_path(config), args.batch_size,
                                        keep_features=args.layout == "score_sde")
        save(args.out, stats, args.layout)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {one_line(e)}")
    print(f"wrote {args.out} ({args.layout}; n = {int(stats['n'])})")


if __name__ == "__main__":
    main()
