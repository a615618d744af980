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
override the paths of the Inception weights, the reference statistics and the classifier;
``sampler`` / ``sampler_options`` (``--sampler``, ``--opt key=value``) replace the config's sampler.

Sample metrics run on every device of every process (the ``data x fsdp`` mesh of
:mod:`diffjax.parallel`): sample ``i`` is drawn from ``(config.eval.seed, i)`` alone
(:mod:`diffjax.sampling`), the feature networks run on the sharded batch, and each batch is reduced
on the mesh to sufficient statistics (FID: count, mean, centred outer products; IS: per-split sums;
class accuracy: a count) that are merged on the host in float64 (:mod:`diffjax.metrics.fid`), so
no host ever holds the samples. KID alone keeps features (the pool features, float32). The numbers
do not depend on the device count, the process count or the batch size (up to float rounding).

``--all_steps`` or ``--steps=a:b`` evaluates every kept checkpoint (in that range), skipping
the steps whose metrics ``metrics.jsonl`` already holds: a sweep that is started again continues.
"""
from __future__ import annotations

import functools
import json
import math
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from diffjax import fileio, likelihood, parallel, predictions, sampling
from diffjax.metrics import fid, inception, mnist_classifier
from diffjax.sampling import load_run  # noqa: F401  (also this module's public API)

SAMPLE_METRICS = ("fid", "kid", "inception_score", "mnist_fid", "class_accuracy")
DATA_METRICS = ("bpd", "bpd_ode", "bpd_vlb")
DEFAULTS = {
    "num_samples": 50_000, "batch_size": 500, "seed": 0,
    "inception": None, "reference_stats": None, "classifier": None,
    "kid_subsets": 100, "kid_subset_size": 1000, "is_splits": 10,
    "bpd_split": None, "bpd_num_examples": None, "bpd_repeats": None, "bpd_divergence": "rademacher",
    "bpd_rtol": 1e-5, "bpd_atol": 1e-5, "vlb_variance": None,
    "sampler": None, "sampler_options": None,
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

    return sources.image_source(config.data, split)


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
    return predictions.model_fn(sampling.network_fn(net, params, labels), schedule)


def _denoiser(config, net, params, schedule, labels):
    """The PF-ODE's denoiser; a learned-variance network's variance half plays no part in it."""
    fn = _model_fn(net, params, schedule, labels)
    if config.model.get("learn_sigma", False):
        full = fn
        fn = lambda x, t: jnp.split(full(x, t), 2, axis=-1)[0]  # noqa: E731
    return predictions.as_denoiser(fn, schedule, config.model.prediction)


def _progress(iterable, total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="batch", disable=jax.process_index() != 0)


# ---------------------------------------------------------------------------- metrics

def _replicate(tree: Any, mesh) -> Any:
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_callback(np.shape(x), sharding, lambda i: np.asarray(x)[i]),
                        tree)


def _feature_networks(config, options, mesh) -> dict[str, tuple[Callable, tuple[str, ...]]]:
    """The feature networks the sample metrics need (their weights replicated on ``mesh``),
    loaded before any sampling so that a missing weight file fails at once."""
    wanted = set(options["metrics"])
    nets = {}
    if wanted & {"fid", "kid", "inception_score"}:
        variables = _replicate(inception.load_variables(options["inception"]), mesh)
        nets["inception"] = (inception.make_apply_fn(variables), ("pool", "logits_unbiased"))
    if "class_accuracy" in wanted and not config.data.num_classes:
        raise ValueError("class_accuracy needs a class-conditional model (data.num_classes > 0)")
    if wanted & {"mnist_fid", "class_accuracy"}:
        if (config.data.image_size, config.data.num_channels) != (28, 1):
            raise ValueError("mnist_fid / class_accuracy need 28x28x1 MNIST data, got "
                             f"{config.data.image_size}x{config.data.image_size}x{config.data.num_channels}")
        variables, _ = mnist_classifier.load(options["classifier"])
        nets["classifier"] = (mnist_classifier.make_apply_fn(_replicate(variables, mesh)), ("features", "logits"))
    return nets


def _gather(x: Any) -> np.ndarray:
    """All rows of a batch-sharded array on every host (a host array passes through)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def on_mesh(apply_fn: Callable, mesh) -> Callable:
    """A feature network for host batches (reference data): each batch padded to a multiple of
    the device count, split over ``mesh``, and its outputs gathered back without the padding."""

    def fn(images: np.ndarray) -> dict:
        n, d = len(images), mesh.devices.size
        padded = np.concatenate([images, np.repeat(images[-1:], -n % d, axis=0)])
        x = jax.make_array_from_callback(padded.shape, parallel.batch_sharding(mesh), lambda i: padded[i])
        return {k: _gather(v)[:n] for k, v in apply_fn(x).items()}

    return fn


def _quantise(x: jax.Array, centered: bool) -> jax.Array:
    """``fid.to_uint8(x, tolerance=None)`` on device: ``round(127.5 (clip(x) + 1))``."""
    x = x if centered else 2.0 * x - 1.0
    return jnp.round(127.5 * (jnp.clip(x, -1.0, 1.0) + 1.0)).astype(jnp.uint8)


def _reduce(outs: dict, labels: jax.Array, indices: jax.Array, *, wanted, num_samples: int,
            is_splits: int) -> dict:
    """A batch's sufficient statistics, summed over the whole (sharded) batch; rows at or past
    ``num_samples`` pad the last batch and weigh 0."""
    w = (indices < num_samples).astype(jnp.float32)
    stats = {}
    if "fid" in wanted:
        stats["fid"] = fid.batch_moments(outs["inception"]["pool"], w)
    if "inception_score" in wanted:
        split = fid.split_ids(indices, num_samples, is_splits)
        stats["inception_score"] = fid.inception_score_sums(outs["inception"]["logits_unbiased"], w, split,
                                                            is_splits)
    if "mnist_fid" in wanted:
        stats["mnist_fid"] = fid.batch_moments(outs["classifier"]["features"], w)
    if "class_accuracy" in wanted:
        stats["class_accuracy"] = jnp.sum(w * (jnp.argmax(outs["classifier"]["logits"], -1) == labels))
    return stats


def sample_metrics(config, net, schedule, params, options, mesh=None) -> dict[str, float]:
    """The sample metrics ``options["metrics"]`` asks for, sampled and reduced on ``mesh``
    (default: every device, ``config.parallel.fsdp``); ``params`` are host arrays."""
    mesh = sampling.make_mesh(config) if mesh is None else mesh
    nets = _feature_networks(config, options, mesh)
    wanted = set(options["metrics"])
    reference = {}
    if "inception" in nets:
        path = options["reference_stats"] or _default_reference_path(config)
        reference["inception"] = fid.reference_statistics(
            on_mesh(nets["inception"][0], mesh),
            lambda: (x for x, _ in data_batches(config, config.data.split, options["batch_size"])),
            path, keep_features="kid" in wanted, progress=jax.process_index() == 0,
            write=jax.process_index() == 0)
    if "classifier" in nets:
        images = np.concatenate([x for x, _ in data_batches(config, "train", options["batch_size"])])
        feats = fid.extract_features(on_mesh(nets["classifier"][0], mesh), np.array_split(images, 10),
                                     keys=("features",))["features"]
        reference["classifier"] = {**fid.feature_statistics(feats), "features": feats}

    n = options["num_samples"]
    gb = sampling.global_batch_size(options["batch_size"], n, mesh)
    placed = sampling.place_params(params, mesh)
    draw = sampling.sharded_sampler(config, net, schedule, mesh, placed, options["sampler"],
                                    options["sampler_options"])
    quantise = jax.jit(functools.partial(_quantise, centered=config.data.centered),
                       out_shardings=parallel.batch_sharding(mesh))
    reduce = jax.jit(functools.partial(_reduce, wanted=frozenset(wanted), num_samples=n,
                                       is_splits=options["is_splits"]),
                     out_shardings=parallel.replicated(mesh))
    moments = {name: fid.Moments() for name in ("fid", "mnist_fid") if name in wanted}
    totals: dict[str, Any] = {}
    kid_features, nfe = [], -1
    batches = sampling.draw_batches(draw, placed, mesh, seed=options["seed"], num_samples=n, global_batch=gb)
    for start, indices, x, labels, batch_nfe in _progress(batches, math.ceil(n / gb), "eval samples"):
        images = quantise(x)
        outs = {name: apply_fn(images) for name, (apply_fn, _) in nets.items()}
        stats = jax.device_get(reduce(outs, labels, indices))
        for name, m in moments.items():
            m.add(stats.pop(name))
        for name, v in stats.items():  # plain sums
            totals[name] = jax.tree.map(lambda a, b: a + np.asarray(b, np.float64), totals[name], v) \
                if name in totals else jax.tree.map(lambda b: np.asarray(b, np.float64), v)
        if "kid" in wanted:
            kid_features.append(_gather(outs["inception"]["pool"])[:n - start].astype(np.float32))
        nfe = int(batch_nfe)

    results: dict[str, float] = {"nfe": nfe}
    if "fid" in wanted:
        s, ref = moments["fid"].statistics(), reference["inception"]
        results["fid"] = fid.frechet_distance(s["mu"], s["sigma"], ref["mu"], ref["sigma"])
    if "kid" in wanted:
        results["kid"], results["kid_std"] = fid.kernel_inception_distance(
            np.concatenate(kid_features), reference["inception"]["features"],
            options["kid_subsets"], options["kid_subset_size"], seed=options["seed"])
    if "inception_score" in wanted:
        results["inception_score"], results["inception_score_std"] = fid.inception_score_from_sums(
            totals["inception_score"])
    if "mnist_fid" in wanted:
        s, ref = moments["mnist_fid"].statistics(), reference["classifier"]
        results["mnist_fid"] = fid.frechet_distance(s["mu"], s["sigma"], ref["mu"], ref["sigma"])
    if "class_accuracy" in wanted:
        results["class_accuracy"] = float(totals["class_accuracy"] / n)
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
    """Compute the metrics of the run in ``workdir`` and log them (process 0); returns
    ``{"step", <metrics>, "num_devices", "num_processes", "wall_time_s"}`` and, when samples were
    drawn, ``"num_samples"`` and ``"nfe"`` (the sampler's network evaluations per sample).
    ``overrides``: any :data:`DEFAULTS` key or ``metrics``; ``sampler`` (a name) and
    ``sampler_options`` (a dict) replace the config's sampler."""
    from diffjax import models, schedules

    start = time.time()
    config, params, step = load_run(workdir, step, use_ema)
    options = eval_options(config, overrides)
    if set(options["metrics"]) & set(SAMPLE_METRICS):
        sampling.check_sampler(config, options["sampler"], options["sampler_options"])
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    mesh = sampling.make_mesh(config)
    logging.info("evaluating %s at step %d: %s", workdir, step, options["metrics"])
    results: dict[str, float] = {}
    if set(options["metrics"]) & set(SAMPLE_METRICS):
        results.update(sample_metrics(config, net, schedule, params, options, mesh))
        results["num_samples"] = options["num_samples"]
    if set(options["metrics"]) & set(DATA_METRICS):
        results.update(data_metrics(config, net, schedule, params, options))
    results.update(num_devices=int(mesh.devices.size), num_processes=jax.process_count(),
                   wall_time_s=time.time() - start)
    if jax.process_index() == 0:
        write(workdir, step, results)
    return {"step": step, **results}


def kept_steps(workdir: str) -> list[int]:
    """The steps of the finished checkpoints in ``workdir/checkpoints`` (Orbax names each
    committed step's directory by its number; temporary ones carry a suffix)."""
    return sorted(int(d) for d in fileio.listdir(fileio.join(workdir, "checkpoints")) if d.isdigit())


def evaluated(workdir: str, step: int, metrics: tuple[str, ...], num_samples: int | None) -> bool:
    """Whether ``metrics.jsonl`` already holds every one of ``metrics`` for ``step`` (from as
    many samples, when they are sample metrics)."""
    path = fileio.join(workdir, "metrics.jsonl")
    if not fileio.exists(path):
        return False
    records = [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]
    for r in records:
        if r.get("step") != step or not all(f"eval/{m}" in r for m in metrics):
            continue
        if num_samples is None or r.get("eval/num_samples") == num_samples:
            return True
    return False


def evaluate_steps(workdir: str, steps: tuple[int | None, int | None] = (None, None),
                   overrides: dict | None = None, use_ema: bool = True) -> list[dict[str, float]]:
    """:func:`evaluate` at every kept checkpoint with ``steps[0] <= step <= steps[1]`` (None: no
    bound), skipping the steps already evaluated with the same metrics (see :func:`evaluated`)."""
    lo, hi = steps
    todo = [s for s in kept_steps(workdir) if (lo is None or s >= lo) and (hi is None or s <= hi)]
    if not todo:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints with step in [{lo}, {hi}]")
    results = []
    for step in todo:
        config = sampling.config_from_dict(_saved_config(workdir, step))
        options = eval_options(config, overrides)
        sampled = bool(set(options["metrics"]) & set(SAMPLE_METRICS))
        if evaluated(workdir, step, options["metrics"], options["num_samples"] if sampled else None):
            logging.info("step %d already evaluated; skipped", step)
            continue
        results.append(evaluate(workdir, overrides, use_ema, step))
    return results


def _saved_config(workdir: str, step: int) -> dict:
    from diffjax import checkpoint

    ckpt = checkpoint.Checkpointer(fileio.join(workdir, "checkpoints"), asynchronous=False)
    try:
        return ckpt.saved_config(step)
    finally:
        ckpt.close()


def write(workdir: str, step: int, results: dict[str, float]) -> None:
    """Append ``{"step", "eval/<name>": value}`` to metrics.jsonl and the scalars to TensorBoard."""
    from tensorboardX import SummaryWriter

    record = {"step": step, **{f"eval/{k}": float(v) for k, v in results.items()}}
    fileio.append_lines(fileio.join(workdir, "metrics.jsonl"), [json.dumps(record) + "\n"])
    writer = SummaryWriter(fileio.join(workdir, "tb"))
    for k, v in record.items():
        if k != "step":
            writer.add_scalar(k, v, step)
    writer.close()


def _step_range(text: str) -> tuple[int | None, int | None]:
    lo, sep, hi = text.partition(":")
    if not sep:
        raise ValueError(f"--steps expects a:b (either side may be empty), got {text!r}")
    return (int(lo) if lo else None, int(hi) if hi else None)


def main(argv: list[str]) -> None:
    from diffjax.sample import parse_options

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    parallel.initialize(f.distributed)
    try:
        overrides = {"metrics": tuple(f.metrics) if f.metrics else None, "num_samples": f.num_samples,
                     "seed": f.seed, "inception": f.inception, "reference_stats": f.reference_stats,
                     "classifier": f.classifier, "bpd_num_examples": f.bpd_num_examples,
                     "batch_size": f.batch_size, "sampler": f.sampler,
                     "sampler_options": parse_options(f.opt) if f.opt else None}
        if f.all_steps or f.steps:
            results = evaluate_steps(f.workdir, _step_range(f.steps) if f.steps else (None, None),
                                     overrides, f.ema)
        else:
            results = evaluate(f.workdir, overrides, f.ema, f.step)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if jax.process_index() == 0:
        print("\n".join(json.dumps(r) for r in (results if isinstance(results, list) else [results])))


def cli() -> None:
    flags.DEFINE_string("workdir", None, "run directory written by diffjax.train")
    flags.DEFINE_list("metrics", None, f"override config.eval.metrics; any of "
                      f"{', '.join(SAMPLE_METRICS + DATA_METRICS)}")
    flags.DEFINE_integer("num_samples", None, "override config.eval.num_samples (default 50000)")
    flags.DEFINE_integer("batch_size", None, "override config.eval.batch_size: samples per compiled "
                         "call over all devices (default 500)")
    flags.DEFINE_integer("seed", None, "override config.eval.seed (default 0)")
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
    flags.DEFINE_string("steps", None, "evaluate every kept checkpoint with a <= step <= b (a:b, "
                        "either side may be empty); steps already in metrics.jsonl are skipped")
    flags.DEFINE_bool("all_steps", False, "evaluate every kept checkpoint (as --steps=:)")
    flags.DEFINE_string("sampler", None, "sampler name (default: the config's sampler.name)")
    flags.DEFINE_multi_string("opt", [], "sampler option key=value (repeatable), e.g. --opt steps=50")
    flags.DEFINE_integer("bpd_num_examples", None, "evaluate bits/dim on the first N examples")
    flags.DEFINE_string("inception", None, "FID Inception weights (.pth or .npz)")
    flags.DEFINE_string("reference_stats", None, "reference statistics .npz (cache path)")
    flags.DEFINE_string("classifier", None, "MNIST classifier .npz")
    flags.DEFINE_bool("ema", True, "use the EMA parameters")
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host)")
    app.run(main)


if __name__ == "__main__":
    cli()
