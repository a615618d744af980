"""``python -m diffjax.evaluate --workdir=DIR``: the metrics a run's config asks for.

Reads the config and the latest checkpoint of ``DIR`` (EMA parameters by default) and computes
``config.eval.metrics`` by the protocol of docs/evaluation.md, appending one JSON object
``{"step": N, "eval/<metric>": value, ...}`` to ``DIR/metrics.jsonl`` and the same scalars to
TensorBoard (``DIR/tb``).

Metrics drawn from samples (``config.eval.num_samples`` of them, default 50,000, seeded by
``config.eval.seed``, converted to uint8):
  ``fid``, ``kid``, ``inception_score``: FID Inception features (``inception.py``) against
      statistics of the whole training split (cached in ``~/.cache/diffjax/fid_stats``).
  ``mnist_fid``, ``class_accuracy``: the MNIST classifier (``mnist_classifier.py``) against the
      5,000 bundled digits; class accuracy of class-conditional samples.
Metrics on held-out data (``config.eval.bpd_split``, default ``test``; ``train`` for
``mnist_offline``, which has no other split):
  ``bpd_ode``: probability-flow ODE bits/dim (uniform dequantisation, Hutchinson probes).
  ``bpd_vlb``: DDPM's variational bound in bits/dim, with its terms (discrete schedules only).
  ``bpd``: ``bpd_vlb`` for a ``DiscreteSchedule`` (as DDPM / improved DDPM report it), else
      ``bpd_ode`` (as score_sde reports it).

Optional ``config.eval`` fields (defaults in :data:`DEFAULTS`) and flags of the same names
override the paths of the Inception weights, the reference statistics and the classifier.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from diffjax import likelihood, predictions
from diffjax.metrics import fid, inception, mnist_classifier
from diffjax.sample import load_run  # noqa: F401  (also this module's public API)

SAMPLE_METRICS = ("fid", "kid", "inception_score", "mnist_fid", "class_accuracy")
DATA_METRICS = ("bpd", "bpd_ode", "bpd_vlb")
DEFAULTS = {
    "num_samples": 50_000, "batch_size": 500, "seed": 0,
    "inception": None, "reference_stats": None, "classifier": None,
    "kid_subsets": 100, "kid_subset_size": 1000, "is_splits": 10,
    "bpd_split": None, "bpd_num_examples": None, "bpd_repeats": None, "bpd_divergence": "rademacher",
    "bpd_rtol": 1e-5, "bpd_atol": 1e-5, "vlb_variance": None,
}


def eval_options(config: Any, overrides: dict | None = None) -> dict:
    """``config.eval`` merged over :data:`DEFAULTS`, then ``overrides`` (non-None values)."""
    options = dict(DEFAULTS)
    options.update({k: v for k, v in config.eval.items() if k != "metrics"})
    options.update({k: v for k, v in (overrides or {}).items() if v is not None})
    options["metrics"] = tuple((overrides or {}).get("metrics") or config.eval.metrics)
    unknown = sorted(set(options["metrics"]) - set(SAMPLE_METRICS) - set(DATA_METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {SAMPLE_METRICS + DATA_METRICS}")
    return options


# ---------------------------------------------------------------------------- data

def _source(config: Any, split: str):
    from diffjax.data import sources

    kind, _, name = config.data.source.partition(":")
    if kind == "tfds":
        return sources.TFDSSource(name, split, config.data.get("data_dir"), 0, 1)
    if config.data.source == "mnist_offline":
        if split != "train":
            raise ValueError("mnist_offline has only the split 'train'")
        return sources.ArraySource(*sources.load_mnist_5k(), 0, 1)
    raise ValueError(f"no image metrics for data.source {config.data.source!r}")


def data_batches(config: Any, split: str, batch_size: int,
                 limit: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """uint8 ``(images, labels)`` of a whole split in file order, at the training resolution and
    with the training crop/resize, without augmentation."""
    from diffjax.data.pipeline import to_size

    source = _source(config, split)
    n = len(source) if limit is None else min(limit, len(source))
    for start in range(0, n, batch_size):
        examples = source.get(range(start, min(start + batch_size, n)))
        images = [to_size(im[..., None] if im.ndim == 2 else im, config.data.image_size,
                          config.data.resize) for im, _ in examples]
        yield np.stack(images), np.asarray([label for _, label in examples], np.int32)


def _default_reference_path(config: Any) -> str:
    name = config.data.source.replace(":", "_").replace("/", "_")
    return str(inception.default_cache_dir() / "fid_stats" / (
        f"{name}_{config.data.split}_{config.data.image_size}_{config.data.resize}.npz"))


# ---------------------------------------------------------------------------- the run

def _model_fn(net, params, schedule, labels):
    from diffjax.sample import network_fn

    return predictions.model_fn(network_fn(net, params, labels), schedule)


def _denoiser(config, net, params, schedule, labels):
    """The PF-ODE's denoiser; a learned-variance network's variance half plays no part in it."""
    fn = _model_fn(net, params, schedule, labels)
    if config.model.get("learn_sigma", False):
        full = fn
        fn = lambda x, t: jnp.split(full(x, t), 2, axis=-1)[0]  # noqa: E731
    return predictions.as_denoiser(fn, schedule, config.model.prediction)


def _progress(iterable, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch")


# ---------------------------------------------------------------------------- metrics

def _feature_networks(config, options) -> dict[str, tuple[Callable, tuple[str, ...]]]:
    """The feature networks the sample metrics need, loaded before any sampling so that a
    missing weight file fails at once."""
    wanted = set(options["metrics"])
    nets = {}
    if wanted & {"fid", "kid", "inception_score"}:
        nets["inception"] = (inception.make_apply_fn(inception.load_variables(options["inception"])),
                             ("pool", "logits_unbiased"))
    if "class_accuracy" in wanted and not config.data.num_classes:
        raise ValueError("class_accuracy needs a class-conditional model (data.num_classes > 0)")
    if wanted & {"mnist_fid", "class_accuracy"}:
        if (config.data.image_size, config.data.num_channels) != (28, 1):
            raise ValueError("mnist_fid / class_accuracy need 28x28x1 MNIST data, got "
                             f"{config.data.image_size}x{config.data.image_size}x{config.data.num_channels}")
        variables, _ = mnist_classifier.load(options["classifier"])
        nets["classifier"] = (mnist_classifier.make_apply_fn(variables), ("features", "logits"))
    return nets


def sample_metrics(config, net, schedule, params, options) -> dict[str, float]:
    from diffjax.sample import make_sampler

    nets = _feature_networks(config, options)
    wanted = options["metrics"]
    reference = {}
    if "inception" in nets:
        path = options["reference_stats"] or _default_reference_path(config)
        reference["inception"] = fid.reference_statistics(
            nets["inception"][0], lambda: (x for x, _ in data_batches(config, config.data.split,
                                                                       options["batch_size"])),
            path, keep_features="kid" in wanted)
    if "classifier" in nets:
        images = np.concatenate([x for x, _ in data_batches(config, "train", options["batch_size"])])
        feats = fid.extract_features(nets["classifier"][0], np.array_split(images, 10),
                                     keys=("features",))["features"]
        reference["classifier"] = {**fid.feature_statistics(feats), "features": feats}

    n, bs = options["num_samples"], options["batch_size"]
    draw = jax.jit(make_sampler(config, net, schedule), static_argnums=2)
    key = jax.random.PRNGKey(options["seed"])
    labels = []

    def sample_batches():
        for i in _progress(range(0, n, bs), math.ceil(n / bs), "eval samples"):
            x, y, _ = draw(params, jax.random.fold_in(key, i), min(bs, n - i))
            x = np.asarray(x)
            labels.append(np.asarray(y))
            yield fid.to_uint8(x if config.data.centered else 2.0 * x - 1.0, tolerance=None)

    def all_features(images):  # every network on each batch, so samples are never stored
        return {f"{name}/{k}": out[k] for name, (apply_fn, keys) in nets.items()
                for out in [apply_fn(images)] for k in keys}

    flat = fid.extract_features(all_features, sample_batches(),
                                keys=[f"{name}/{k}" for name, (_, keys) in nets.items() for k in keys])
    feats = {name: {k: flat[f"{name}/{k}"] for k in keys} for name, (_, keys) in nets.items()}
    labels = np.concatenate(labels)

    results = {}
    if "fid" in wanted:
        s = fid.feature_statistics(feats["inception"]["pool"])
        ref = reference["inception"]
        results["fid"] = fid.frechet_distance(s["mu"], s["sigma"], ref["mu"], ref["sigma"])
    if "kid" in wanted:
        results["kid"], results["kid_std"] = fid.kernel_inception_distance(
            feats["inception"]["pool"], reference["inception"]["features"],
            options["kid_subsets"], options["kid_subset_size"], seed=options["seed"])
    if "inception_score" in wanted:
        results["inception_score"], results["inception_score_std"] = fid.inception_score(
            feats["inception"]["logits_unbiased"], options["is_splits"])
    if "mnist_fid" in wanted:
        s, ref = fid.feature_statistics(feats["classifier"]["features"]), reference["classifier"]
        results["mnist_fid"] = fid.frechet_distance(s["mu"], s["sigma"], ref["mu"], ref["sigma"])
    if "class_accuracy" in wanted:
        preds = np.argmax(feats["classifier"]["logits"], axis=-1)
        results["class_accuracy"] = float(np.mean(preds == labels))
    return results


def data_metrics(config, net, schedule, params, options) -> dict[str, float]:
    from diffjax.schedules import DiscreteSchedule

    wanted = set(options["metrics"])
    default_bpd = "bpd_vlb" if isinstance(schedule, DiscreteSchedule) else "bpd_ode"
    if "bpd" in wanted:
        wanted.add(default_bpd)
    if "bpd_vlb" in wanted and not config.data.centered:
        raise ValueError("bpd_vlb's discretised decoder (Ho et al. eq. 13) is defined for data "
                         "on [-1, 1]; this run has data.centered = False")
    split = options["bpd_split"] or ("train" if config.data.source == "mnist_offline" else "test")
    conditional = bool(config.data.num_classes)
    key = jax.random.PRNGKey(options["seed"])
    learn_sigma = config.model.get("learn_sigma", False)
    variance = options["vlb_variance"] or ("learned_range" if learn_sigma else "fixedlarge")

    # params are arguments, not closed-over constants baked into the compiled program.
    @jax.jit
    def ode_bpd(params, images, labels, key):
        denoise = _denoiser(config, net, params, schedule, labels if conditional else None)
        return likelihood.ode_bits_per_dim(
            denoise, schedule, images, key, centered=config.data.centered,
            divergence_method=options["bpd_divergence"], rtol=options["bpd_rtol"],
            atol=options["bpd_atol"])

    @jax.jit
    def vlb(params, images, labels, key):
        fn = _model_fn(net, params, schedule, labels if conditional else None)
        terms = likelihood.vlb_terms(fn, schedule, images, key, prediction=config.model.prediction,
                                     variance=variance)
        return {"bpd_vlb": terms.total, "bpd_vlb_prior": terms.prior,
                "bpd_vlb_diffusion": terms.diffusion, "bpd_vlb_decoder": terms.decoder}

    # score_sde passes over the test split 5 times (fresh dequantisation and probes), the train
    # split once; the VLB is one pass with one x_t per step, as improved-diffusion's.
    repeats = options["bpd_repeats"] or (5 if split == "test" else 1)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    num_examples = 0
    limit = options["bpd_num_examples"]
    per_pass = math.ceil((limit or len(_source(config, split))) / options["batch_size"])
    passes = repeats if "bpd_ode" in wanted else 1
    batches = ((r, i, x, y) for r in range(passes) for i, (x, y) in enumerate(
        data_batches(config, split, options["batch_size"], limit)))
    for r, i, images, labels in _progress(batches, passes * per_pass, f"bpd ({split})"):
        k = jax.random.fold_in(jax.random.fold_in(key, r), i)
        per_example = {}
        if "bpd_ode" in wanted:
            per_example["bpd_ode"] = ode_bpd(params, images, labels, k)
        if "bpd_vlb" in wanted and r == 0:
            per_example.update(vlb(params, images, labels, k))
        for name, v in per_example.items():
            sums[name] = sums.get(name, 0.0) + float(np.sum(np.asarray(v, np.float64)))
            counts[name] = counts.get(name, 0) + len(images)
        num_examples += len(images) if r == 0 else 0
    results = {name: s / counts[name] for name, s in sums.items()}
    if "bpd" in wanted:
        results["bpd"] = results[default_bpd]
    results["bpd_num_examples"] = num_examples
    results["bpd_repeats"] = passes
    return results


def evaluate(workdir: str, overrides: dict | None = None, use_ema: bool = True,
             step: int | None = None) -> dict[str, float]:
    """Compute the metrics of the run in ``workdir`` and log them; returns ``{"step", ...}``."""
    from diffjax import models, schedules

    config, params, step = load_run(workdir, step, use_ema)
    options = eval_options(config, overrides)
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    logging.info("evaluating %s at step %d: %s", workdir, step, options["metrics"])
    results: dict[str, float] = {}
    if set(options["metrics"]) & set(SAMPLE_METRICS):
        results.update(sample_metrics(config, net, schedule, params, options))
        results["num_samples"] = options["num_samples"]
    if set(options["metrics"]) & set(DATA_METRICS):
        results.update(data_metrics(config, net, schedule, params, options))
    write(workdir, step, results)
    return {"step": step, **results}


def write(workdir: str, step: int, results: dict[str, float]) -> None:
    """Append ``{"step", "eval/<name>": value}`` to metrics.jsonl and the scalars to TensorBoard."""
    from tensorboardX import SummaryWriter

    record = {"step": step, **{f"eval/{k}": float(v) for k, v in results.items()}}
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    writer = SummaryWriter(os.path.join(workdir, "tb"))
    for k, v in record.items():
        if k != "step":
            writer.add_scalar(k, v, step)
    writer.close()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    overrides = {"metrics": tuple(f.metrics) if f.metrics else None, "num_samples": f.num_samples,
                 "seed": f.seed, "inception": f.inception, "reference_stats": f.reference_stats,
                 "classifier": f.classifier, "bpd_num_examples": f.bpd_num_examples}
    try:
        results = evaluate(f.workdir, overrides, f.ema, f.step)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    print(json.dumps(results))


def cli() -> None:
    flags.DEFINE_string("workdir", None, "run directory written by diffjax.train")
    flags.DEFINE_list("metrics", None, f"override config.eval.metrics; any of "
                      f"{', '.join(SAMPLE_METRICS + DATA_METRICS)}")
    flags.DEFINE_integer("num_samples", None, "override config.eval.num_samples (default 50000)")
    flags.DEFINE_integer("seed", None, "override config.eval.seed (default 0)")
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
    flags.DEFINE_integer("bpd_num_examples", None, "evaluate bits/dim on the first N examples")
    flags.DEFINE_string("inception", None, "FID Inception weights (.pth or .npz)")
    flags.DEFINE_string("reference_stats", None, "reference statistics .npz (cache path)")
    flags.DEFINE_string("classifier", None, "MNIST classifier .npz")
    flags.DEFINE_bool("ema", True, "use the EMA parameters")
    app.run(main)


if __name__ == "__main__":
    cli()
