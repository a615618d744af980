"""Sampling as a library: samplers built from a config, and sharded, resumable sample sets.

The command line (``python -m diffjax.sample``), the evaluator and the trainer's sample grids
all call these functions; nothing here parses flags or prints.

Every sample is a function of (seed, global index) only, whatever the device count, the number
of processes or the batch size (docs/evaluation.md, "samples"):

* sample ``i`` is drawn with its own key ``fold_in(PRNGKey(seed), i)``: the sampler runs on a
  batch of one under ``jax.vmap``, so its prior draw and every noise draw of its trajectory come
  from that key alone (the samplers draw a batch's noise from one key; vmapping them gives each
  example its own). Batch-coupled steps become per-example too: the PC sampler's Langevin step size
  uses the example's own gradient norm (score_sde: the batch mean) and the adaptive ODE solver
  controls each example's step size by its own error;
* its class label (class-conditional configs) is ``i % num_classes``; for text-conditioned
  configs (a ``text`` section) its label is its prompt's index ``i % len(prompts)``;
* a batch of ``global_batch`` indices is split over the ``data x fsdp`` mesh of
  :mod:`diffjax.parallel` and so over all processes; each process keeps the rows its devices hold.

:func:`sample_to_dir` writes each process's rows as shard files
``<out_dir>/shard_<first index>.npz`` (atomically: temp file, then rename), and a run that is
started again draws only the batches whose shards are missing.
"""
from __future__ import annotations

import functools
import re
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from diffjax import data as data_lib
from diffjax import fileio, parallel, predictions

Array = jax.Array

MODEL_OPTIONS = ("guidance_scale", "clip_denoised")  # options of the model function, any sampler
_SHARD = re.compile(r"shard_(\d+)\.npz$")


# ---------------------------------------------------------------------------- samplers

def context_kwargs(context: tuple[Array, Array] | None) -> dict:
    """The network's keyword arguments for a text context ``(tokens (B, L, D), mask (B, L))``."""
    return {} if context is None else {"context": context[0], "context_mask": context[1]}


def network_fn(net: Any, params: Any, y: Array | None = None, *, context: tuple[Array, Array] | None = None,
               train: bool = False, dropout_key: Array | None = None) -> Callable[[Array, Array], Array]:
    """``apply_fn(x, noise_labels)`` of a network with bound parameters, class labels and text
    context ``(tokens, mask)``."""

    def apply_fn(x: Array, noise_labels: Array) -> Array:
        rngs = {"dropout": dropout_key} if train else {}
        out = net.apply({"params": params}, x, noise_labels, y=y, train=train, rngs=rngs,
                        **context_kwargs(context))
        return out.astype(jnp.float32)

    return apply_fn


def prompt_context(config: Any, prompts: list[str] | None) -> tuple[list[str], tuple[np.ndarray, np.ndarray]]:
    """``(prompts, (tokens, mask))`` for a text-conditioned config: the prompts (default
    ``config.text.prompts``) then the null caption ``""`` in the last row, encoded by the config's
    frozen encoder as its training captions were."""
    from diffjax.data import captions

    if "text" not in config:
        raise ValueError("this model was not trained on text (its config has no text section): it takes "
                         "no prompt; sample it without --prompt")
    prompts = list(config.text.prompts if prompts is None else prompts)
    if not prompts:
        raise ValueError("no prompts given: pass at least one --prompt")
    blank = [repr(p) for p in prompts if not str(p).strip()]
    if blank:
        raise ValueError(f"empty prompt(s) {', '.join(blank)}: the empty caption is the null context of "
                         "classifier-free guidance; give a description such as 'a thin three'")
    encoded = captions.encode(prompts + [captions.NULL_CAPTION], captions.load_encoder(config.text.encoder),
                              config.text.max_tokens)
    return prompts, (encoded.tokens, encoded.mask)


def num_labels(config: Any, prompts: list[str] | None = None) -> int:
    """How many labels samples cycle through: prompts (text), classes, or 0 (unconditional)."""
    if "text" in config:
        return len(config.text.prompts if prompts is None else prompts)
    if prompts is not None:
        prompt_context(config, prompts)  # raises: not a text model
    return config.data.num_classes


def sampler_options(config: Any, name: str | None = None, overrides: dict | None = None) -> tuple[str, dict]:
    """The sampler name and its options: the fields of ``config.sampler`` (but ``name``) when the
    sampler is the config's, else only the model-function options; then ``overrides``."""
    name = name or config.sampler.name
    options = {k: v for k, v in config.sampler.items()
               if k != "name" and (name == config.sampler.name or k in MODEL_OPTIONS)}
    options.update(overrides or {})
    return name, options


def check_sampler(config: Any, name: str | None = None, options: dict | None = None) -> None:
    """Raise a one-line ``ValueError`` for an unknown sampler or an option it does not accept."""
    from diffjax import samplers

    name, opts = sampler_options(config, name, options)
    if name not in samplers.names():
        raise ValueError(f"unknown sampler {name!r}; known samplers: {', '.join(samplers.names())}")
    accepted = sorted(set(samplers.options(name)) | set(MODEL_OPTIONS))
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ValueError(f"sampler {name!r} does not accept option(s) {', '.join(unknown)}; "
                         f"it accepts: {', '.join(accepted)}")


def _sampler(config: Any, net: Any, schedule: Any, name: str | None, options: dict | None,
             prompts: list[str] | None = None, guide: Callable | None = None
             ) -> Callable[[Any, Array, Array], tuple[Array, dict]]:
    """``draw(params, key, labels) -> (samples, info)`` for a batch of ``len(labels)`` (for text,
    labels index ``prompts``). ``guide(model_fn, labels) -> model_fn`` wraps the model function
    (classifier guidance: ``diffjax.classifier.make_guide``)."""
    from diffjax import samplers

    check_sampler(config, name, options)
    name, opts = sampler_options(config, name, options)
    guidance_scale = opts.pop("guidance_scale", 0.0)
    clip = (-1.0, 1.0) if config.data.get("centered", True) else (0.0, 1.0)
    clip_denoised = opts.pop("clip_denoised", False)
    num_classes = config.data.num_classes
    shape = data_lib.example_shape(config.data)
    learn_sigma = config.model.get("learn_sigma", False)
    text = "text" in config
    if text or prompts is not None:
        _, (tokens, mask) = prompt_context(config, prompts)

    def draw(params: Any, key: Array, labels: Array | None) -> tuple[Array, dict]:
        n = labels.shape[0]

        def conditional(x: Array, t: Array, c: Any) -> Array:
            y, context = (None, c) if text else (c, None)
            return predictions.model_fn(network_fn(net, params, y, context=context), schedule)(x, t)

        if text:
            context = (jnp.asarray(tokens)[labels], jnp.asarray(mask)[labels])
            fn = (samplers.guidance.classifier_free_context(conditional, context, (tokens[-1], mask[-1]),
                                                            guidance_scale)
                  if guidance_scale else functools.partial(conditional, c=context))
        elif guidance_scale:
            fn = samplers.guidance.classifier_free(conditional, labels, guidance_scale, num_classes)
        else:
            fn = functools.partial(conditional, c=labels if num_classes else None)
        if guide is not None:
            if learn_sigma:
                raise ValueError("classifier guidance of a learned-variance model is not supported "
                                 "(the guide would shift the variance channels too)")
            fn = guide(fn, labels)
        if learn_sigma and name == "ddpm" and opts.get("variance") == "learned":
            denoise = samplers.learned_variance_denoiser(fn, schedule, config.model.prediction)
        elif learn_sigma:
            # Samplers other than learned-variance DDPM use only the mean half of the channels.
            mean_half = lambda x, t: jnp.split(fn(x, t), 2, axis=-1)[0]  # noqa: E731
            denoise = predictions.as_denoiser(mean_half, schedule, config.model.prediction)
        else:
            denoise = predictions.as_denoiser(fn, schedule, config.model.prediction)
        if clip_denoised:
            denoise = _clipped(denoise, *clip)
        return samplers.sample(name, denoise, schedule, key, shape=(n, *shape), **opts)

    return draw


def make_sampler(config: Any, net: Any, schedule: Any, name: str | None = None, options: dict | None = None,
                 prompts: list[str] | None = None, guide: Callable | None = None
                 ) -> Callable[[Any, Array, int], tuple[Array, Array, dict]]:
    """``sample(params, key, n) -> (samples, labels, info)``: one batch from one key (the
    trainer's sample grids); class-conditional configs draw labels ``0, 1, ..., num_classes - 1,
    0, ...``, text-conditioned ones prompt indices (``prompts``, default ``config.text.prompts``);
    ``guidance_scale`` (classifier-free guidance, Ho & Salimans 2021 eq. 6) wraps the
    model function before the sampler sees it. Raises for options the sampler does not accept."""
    draw = _sampler(config, net, schedule, name, options, prompts, guide)
    num_classes = num_labels(config, prompts) or getattr(guide, "num_classes", 0)

    def sample(params: Any, key: Array, n: int) -> tuple[Array, Array, dict]:
        labels = jnp.arange(n) % max(num_classes, 1)
        samples, info = draw(params, key, labels)
        return samples, labels if num_classes else jnp.zeros((n,), jnp.int32), info

    return sample


def make_indexed_sampler(config: Any, net: Any, schedule: Any, name: str | None = None,
                         options: dict | None = None, prompts: list[str] | None = None,
                         guide: Callable | None = None) -> Callable[[Any, Array, Array], tuple[Array, Array, Array]]:
    """``sample(params, key, indices) -> (samples, labels, nfe)``: sample ``i`` drawn from
    ``fold_in(key, i)`` with label ``i % num_classes`` (0 when unconditional; text: the prompt
    index ``i % len(prompts)``), independently of the other indices in the batch; ``nfe`` is the
    largest NFE of the batch."""
    draw = _sampler(config, net, schedule, name, options, prompts, guide)
    num_classes = num_labels(config, prompts) or getattr(guide, "num_classes", 0)

    def one(params: Any, key: Array, i: Array) -> tuple[Array, Array, Array]:
        label = (i % num_classes if num_classes else jnp.zeros_like(i)).astype(jnp.int32)
        x, info = draw(params, jax.random.fold_in(key, i), label[None])
        return x[0], label, jnp.asarray(info.get("nfe", -1), jnp.int32)

    def sample(params: Any, key: Array, indices: Array) -> tuple[Array, Array, Array]:
        x, labels, nfe = jax.vmap(one, in_axes=(None, None, 0))(params, key, indices)
        return x, labels, jnp.max(nfe)

    return sample


def _clipped(denoise: Callable, lo: float, hi: float) -> Callable:
    """The denoiser with its x0 estimate clipped to the data range (a learned-variance denoiser
    returns ``(x0_hat, v)``: only ``x0_hat`` is clipped)."""

    def fn(x: Array, t: Array):
        out = denoise(x, t)
        if isinstance(out, tuple):
            return (jnp.clip(out[0], lo, hi),) + tuple(out[1:])
        return jnp.clip(out, lo, hi)

    return fn


# ---------------------------------------------------------------------------- runs

def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
    """Rebuild a ConfigDict from its JSON form (JSON turned tuples into lists)."""

    def tuples(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: tuples(x) for k, x in v.items()}
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    return ml_collections.ConfigDict(tuples(saved))


def load_run(workdir: str, step: int | None = None, use_ema: bool = True) -> tuple[Any, Any, int]:
    """(config, params, step) of the latest (or given) checkpoint in ``workdir/checkpoints``;
    params are host arrays, whatever topology wrote them (place them with :func:`place_params`).
    Turns on the run's ``training.compilation_cache`` if it set one."""
    from diffjax import checkpoint

    ckpt = checkpoint.Checkpointer(fileio.join(workdir, "checkpoints"), asynchronous=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first with "
                                f"python -m diffjax.train --workdir={workdir}")
    config = config_from_dict(ckpt.saved_config(step))
    parallel.enable_compilation_cache(config.get("training", {}).get("compilation_cache", ""))
    params = ckpt.restore_params(step)["ema_params" if use_ema else "params"]
    ckpt.close()
    return config, jax.device_get(params), step


def make_mesh(config: Any) -> Mesh:
    """The training mesh of ``config`` (``parallel.fsdp``) over every device of every process."""
    return parallel.make_mesh(config.get("parallel", {}).get("fsdp", 1))


def place_params(params: Any, mesh: Mesh) -> Any:
    """Host params onto ``mesh``: replicated, or FSDP-split when the mesh has fsdp > 1. Every
    process passes the same values and supplies the parts its devices hold."""
    shardings = parallel.state_sharding(params, mesh)
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda i: np.asarray(x)[i]),
                        params, shardings)


def global_batch_size(batch_size: int, num_samples: int, mesh: Mesh) -> int:
    """``batch_size`` rounded up to a multiple of the device count (each device draws equally)."""
    n = mesh.devices.size
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    if n > num_samples:
        raise ValueError(f"{n} devices for {num_samples} samples: every device must draw at least one; "
                         f"ask for at least {n} samples or run on fewer devices")
    return -(-batch_size // n) * n


def batch_indices(start: int, size: int, mesh: Mesh) -> Array:
    """The global indices ``start .. start + size - 1`` split over the mesh's batch axes; each
    process builds only its own part."""
    return jax.make_array_from_callback((size,), parallel.batch_sharding(mesh),
                                        lambda idx: np.arange(start, start + size, dtype=np.int32)[idx])


def sharded_sampler(config: Any, net: Any, schedule: Any, mesh: Mesh, params: Any, name: str | None = None,
                    options: dict | None = None, prompts: list[str] | None = None, guide: Callable | None = None
                    ) -> Callable[[Any, Array, Array], tuple[Array, Array, Array]]:
    """:func:`make_indexed_sampler` compiled over ``mesh``: indices, samples and labels split over
    the batch axes, params as placed by :func:`place_params`, the NFE replicated."""
    batch = parallel.batch_sharding(mesh)
    sample = make_indexed_sampler(config, net, schedule, name, options, prompts, guide)
    # FSDP-split params are gathered once, before the sampler's loop, not inside every step
    return jax.jit(lambda p, key, indices: sample(parallel.gather_params(p, mesh), key, indices),
                   in_shardings=(parallel.state_sharding(params, mesh), parallel.replicated(mesh), batch),
                   out_shardings=(batch, batch, parallel.replicated(mesh)))


def local_rows(x: Array) -> list[tuple[int, np.ndarray]]:
    """This process's rows of a batch-sharded array as ``(first row, rows)`` runs, contiguous
    runs merged, in row order."""
    parts = sorted(((s.index[0].start or 0, np.asarray(s.data)) for s in x.addressable_shards),
                   key=lambda p: p[0])
    runs: list[tuple[int, int, list[np.ndarray]]] = []
    for first, rows in parts:
        if runs and first < runs[-1][1]:
            continue  # a replica of rows already taken
        if runs and first == runs[-1][1]:
            runs[-1] = (runs[-1][0], first + len(rows), runs[-1][2] + [rows])
        else:
            runs.append((first, first + len(rows), [rows]))
    return [(first, np.concatenate(rows)) for first, _, rows in runs]


def draw_batches(sample_fn: Callable, params: Any, mesh: Mesh, *, seed: int, num_samples: int,
                 global_batch: int, starts: list[int] | None = None
                 ) -> Iterator[tuple[int, Array, Array, Array, Array]]:
    """``(start, indices, samples, labels, nfe)`` for each batch of ``global_batch`` indices from
    ``start`` (all batches covering ``num_samples`` unless ``starts`` says which); rows whose
    index is ``num_samples`` or more pad the last batch and are to be dropped."""
    key = jax.random.PRNGKey(seed)
    for start in range(0, num_samples, global_batch) if starts is None else starts:
        indices = batch_indices(start, global_batch, mesh)
        x, y, nfe = sample_fn(params, key, indices)
        yield start, indices, x, y, nfe


# ---------------------------------------------------------------------------- shard files

def _shard_files(out_dir: str) -> list[tuple[int, str]]:
    """``(first index, path)`` of the shard files in ``out_dir`` visible to this process (their
    names give only the first index; the length is in the file)."""
    return [(int(m.group(1)), fileio.join(out_dir, fname)) for fname in fileio.listdir(out_dir)
            if (m := _SHARD.fullmatch(fname))]


def shard_ranges(out_dir: str) -> list[tuple[int, int, str]]:
    """``(first, stop, path)`` of the shard files in ``out_dir`` visible to this process."""
    return [(first, first + len(fileio.load_npz(path, ["labels"])["labels"]), path)
            for first, path in _shard_files(out_dir)]


def _covered(ranges: list[tuple[int, int, Any]], first: int, stop: int) -> bool:
    covered = np.zeros(stop - first, bool)
    for a, b, _ in ranges:
        covered[max(a, first) - first:max(min(b, stop) - first, 0)] = True
    return bool(covered.all())


def _missing_batches(out_dir: str, starts: list[int], global_batch: int, num_samples: int, mesh: Mesh) -> list[int]:
    """The batches some process has not written all its rows of (agreed by every process)."""
    ranges = shard_ranges(out_dir)
    sharding = parallel.batch_sharding(mesh)
    own = [sl[0] for sl in sharding.addressable_devices_indices_map((global_batch,)).values()]
    done = np.array([all(_covered(ranges, s + (sl.start or 0), min(s + (sl.stop or global_batch), num_samples))
                         for sl in own if s + (sl.start or 0) < num_samples) for s in starts], np.int32)
    if jax.process_count() > 1:
        done = np.min(multihost_utils.process_allgather(done), axis=0)
    return [s for s, d in zip(starts, done) if not d]


def _check_meta(out_dir: str, meta: dict) -> None:
    path = fileio.join(out_dir, "meta.json")
    if fileio.exists(path):
        saved = fileio.read_json(path)
        if saved != meta:
            diffs = {k: (saved.get(k), meta.get(k)) for k in set(saved) | set(meta) if saved.get(k) != meta.get(k)}
            raise ValueError(f"{out_dir} holds samples drawn with other settings ({diffs}, as (there, here)); "
                             "use another name or delete the directory")
        return
    fileio.makedirs(out_dir)
    fileio.write_json(path, meta)


def sample_to_dir(config: Any, net: Any, schedule: Any, params: Any, out_dir: str, *, num_samples: int,
                  seed: int = 0, batch_size: int = 64, sampler: str | None = None, options: dict | None = None,
                  mesh: Mesh | None = None, meta: dict | None = None, progress: bool = False,
                  prompts: list[str] | None = None, guide: Callable | None = None) -> dict:
    """Draw samples ``0 .. num_samples - 1`` into shard files under ``out_dir``, skipping the
    batches already written (a killed run continues). ``params``: host arrays. ``meta``: what
    identifies the sample set besides sampler and seed (e.g. the checkpoint step); a directory
    written with other settings raises. ``prompts``: text-conditioned configs (sample ``i`` is
    drawn for prompt ``i % len(prompts)``). Returns ``{"nfe", "num_drawn", "wall_time_s",
    "num_devices", "num_processes"}``."""
    mesh = make_mesh(config) if mesh is None else mesh
    gb = global_batch_size(batch_size, num_samples, mesh)
    name, opts = sampler_options(config, sampler, options)
    _check_meta(out_dir, {"sampler": name, "options": {k: repr(v) for k, v in sorted(opts.items())},
                          "seed": seed, **({"prompts": list(prompts)} if prompts else {}), **(meta or {})})
    starts = _missing_batches(out_dir, list(range(0, num_samples, gb)), gb, num_samples, mesh)
    placed = place_params(params, mesh)
    fn = sharded_sampler(config, net, schedule, mesh, placed, sampler, options, prompts, guide)
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=num_samples, initial=num_samples - sum(min(gb, num_samples - s) for s in starts),
                   desc="sample", unit="img", unit_scale=True)
    nfe, start_time = -1, time.time()
    for start, _, x, y, batch_nfe in draw_batches(fn, placed, mesh, seed=seed, num_samples=num_samples,
                                               global_batch=gb, starts=starts):
        for (first, xs), (_, ys) in zip(local_rows(x), local_rows(y)):
            keep = max(min(len(xs), num_samples - start - first), 0)
            if keep:
                fileio.save_npz(fileio.join(out_dir, f"shard_{start + first:08d}.npz"), samples=xs[:keep],
                                labels=ys[:keep])
        nfe = int(batch_nfe)
        if bar is not None:
            bar.update(min(gb, num_samples - start))
    if bar is not None:
        bar.close()
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"sampled {out_dir}")
    return {"nfe": nfe, "num_drawn": sum(min(gb, num_samples - s) for s in starts),
            "wall_time_s": time.time() - start_time, "num_devices": int(mesh.devices.size),
            "num_processes": jax.process_count()}


def load_samples(out_dir: str, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``(samples, labels)`` of indices ``0 .. num_samples - 1`` from the shard files in
    ``out_dir`` (all processes' shards must be visible here: a shared file system)."""
    shards = []  # each file read once (one download per shard in a bucket)
    for first, path in _shard_files(out_dir):
        if first < num_samples:
            shard = fileio.load_npz(path, ["samples", "labels"])
            shards.append((first, first + len(shard["labels"]), shard))
    if not _covered(shards, 0, num_samples):
        raise FileNotFoundError(f"{out_dir} does not hold all of samples 0..{num_samples - 1}; run the "
                                "sampling again to finish it, or gather the shards of every host there")
    samples = labels = None
    for first, stop, shard in shards:
        x, y = shard["samples"], shard["labels"]
        if samples is None:
            samples = np.empty((num_samples, *x.shape[1:]), x.dtype)
            labels = np.empty((num_samples,), y.dtype)
        stop = min(stop, num_samples)
        samples[first:stop], labels[first:stop] = x[:stop - first], y[:stop - first]
    return samples, labels
