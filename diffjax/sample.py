"""``python -m diffjax.sample --workdir=DIR``: draw samples from a trained run.

Reads the config and the latest checkpoint of ``DIR`` (EMA parameters by default), runs the
sampler named by ``--sampler`` (default: the config's ``sampler.name``) with options given as
``--opt key=value`` (e.g. ``--sampler=ddim --opt steps=50``), and writes ``DIR/samples/<name>.png`` (a grid)
and ``DIR/samples/<name>.npz`` (the float samples, their labels and the uint8 images).

:func:`make_sampler` is the sampling hook shared with the trainer's periodic sample grids.
"""
from __future__ import annotations

import ast
import functools
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging

from diffjax import data as data_lib
from diffjax import predictions, viz

Array = jax.Array


def network_fn(net: Any, params: Any, y: Array | None = None, *, train: bool = False,
               dropout_key: Array | None = None) -> Callable[[Array, Array], Array]:
    """``apply_fn(x, noise_labels)`` of a network with bound parameters and class labels."""

    def apply_fn(x: Array, noise_labels: Array) -> Array:
        rngs = {"dropout": dropout_key} if train else {}
        out = net.apply({"params": params}, x, noise_labels, y=y, train=train, rngs=rngs)
        return out.astype(jnp.float32)

    return apply_fn


_ANY_SAMPLER = ("guidance_scale", "clip_denoised")  # options of the model function, not the sampler


def sampler_options(config: Any, name: str | None = None, overrides: dict | None = None) -> tuple[str, dict]:
    """The sampler name and its options: the fields of ``config.sampler`` (but ``name``) when the
    sampler is the config's, else only ``guidance_scale``; then ``overrides``."""
    name = name or config.sampler.name
    options = {k: v for k, v in config.sampler.items()
               if k != "name" and (name == config.sampler.name or k in _ANY_SAMPLER)}
    options.update(overrides or {})
    return name, options


def make_sampler(config: Any, net: Any, schedule: Any, name: str | None = None,
                 options: dict | None = None) -> Callable[[Any, Array, int], tuple[Array, Array, dict]]:
    """``sample(params, key, n) -> (samples, labels, info)``; class-conditional configs draw
    labels ``0, 1, ..., num_classes - 1, 0, ...``; ``guidance_scale`` (classifier-free
    guidance, Ho & Salimans 2021 Eq. 6) wraps the model function before the sampler sees it."""
    from diffjax import samplers

    name, opts = sampler_options(config, name, options)
    guidance_scale = opts.pop("guidance_scale", 0.0)
    clip = (-1.0, 1.0) if config.data.get("centered", True) else (0.0, 1.0)
    clip_denoised = opts.pop("clip_denoised", False)
    num_classes = config.data.num_classes
    shape = data_lib.example_shape(config.data)

    def sample(params: Any, key: Array, n: int) -> tuple[Array, Array, dict]:
        labels = jnp.arange(n) % num_classes if num_classes else None

        def conditional(x: Array, t: Array, y: Array | None) -> Array:
            return predictions.model_fn(network_fn(net, params, y), schedule)(x, t)

        if guidance_scale:
            fn = samplers.guidance.classifier_free(conditional, labels, guidance_scale, num_classes)
        else:
            fn = functools.partial(conditional, y=labels)
        if config.model.get("learn_sigma", False) and name == "ddpm" and opts.get("variance") == "learned":
            denoise = samplers.learned_variance_denoiser(fn, schedule, config.model.prediction)
        elif config.model.get("learn_sigma", False):
            # Samplers other than learned-variance DDPM use only the mean half of the channels.
            mean_half = lambda x, t: jnp.split(fn(x, t), 2, axis=-1)[0]  # noqa: E731
            denoise = predictions.as_denoiser(mean_half, schedule, config.model.prediction)
        else:
            denoise = predictions.as_denoiser(fn, schedule, config.model.prediction)
        if clip_denoised:
            denoise = _clipped(denoise, *clip)
        samples, info = samplers.sample(name, denoise, schedule, key, shape=(n, *shape), **opts)
        return samples, labels if labels is not None else jnp.zeros((n,), jnp.int32), info

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


def config_from_dict(saved: dict) -> ml_collections.ConfigDict:
    """Rebuild a ConfigDict from its JSON form (JSON turned tuples into lists)."""

    def tuples(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: tuples(x) for k, x in v.items()}
        return tuple(tuples(x) for x in v) if isinstance(v, list) else v

    return ml_collections.ConfigDict(tuples(saved))


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise app.UsageError(f"--opt expects key=value, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def load_run(workdir: str, step: int | None = None, use_ema: bool = True) -> tuple[Any, Any, int]:
    """(config, params, step) of the latest (or given) checkpoint in ``workdir/checkpoints``."""
    from diffjax import checkpoint

    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    step = ckpt.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints; train first with "
                                f"python -m diffjax.train --workdir={workdir}")
    config = config_from_dict(ckpt.saved_config(step))
    params = ckpt.restore_params(step)["ema_params" if use_ema else "params"]
    ckpt.close()
    return config, params, step


def run(workdir: str, num_samples: int, seed: int, sampler: str | None, options: dict,
        use_ema: bool = True, name: str | None = None, batch_size: int = 64) -> dict[str, str]:
    """Sample from the latest checkpoint of ``workdir``; returns the paths written."""
    from tqdm import tqdm

    from diffjax import models, schedules

    config, params, step = load_run(workdir, use_ema=use_ema)
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    sampler = sampler or config.sampler.name
    draw = jax.jit(make_sampler(config, net, schedule, sampler, options), static_argnums=2)
    print(f"sampling {num_samples} with {sampler} {options or ''} from the step-{step} checkpoint "
          f"({'EMA' if use_ema else 'raw'} parameters)", file=sys.stderr)
    key = jax.random.PRNGKey(seed)
    chunks, labels, nfe = [], [], -1
    start = time.time()
    for i in tqdm(range(0, num_samples, batch_size), desc="sample", unit="batch"):
        x, y, info = draw(params, jax.random.fold_in(key, i), min(batch_size, num_samples - i))
        chunks.append(np.asarray(x))
        labels.append(np.asarray(y))
        nfe = int(info.get("nfe", -1))
    samples, labels = np.concatenate(chunks), np.concatenate(labels)
    print(f"{len(samples)} samples in {time.time() - start:.1f}s, {nfe} network evaluations each",
          file=sys.stderr)
    name = name or f"step{step}_{sampler}_seed{seed}"
    out_dir = os.path.join(workdir, "samples")
    os.makedirs(out_dir, exist_ok=True)
    paths = {"npz": os.path.join(out_dir, name + ".npz")}
    if samples.ndim == 2:
        np.savez(paths["npz"], samples=samples, labels=labels, nfe=nfe)
        paths["png"] = viz.save_scatter(os.path.join(out_dir, name + ".png"), samples)
    else:
        np.savez(paths["npz"], samples=samples, images=viz.to_uint8(samples, config.data.centered),
                 labels=labels, nfe=nfe)
        paths["png"] = viz.save_image_grid(os.path.join(out_dir, name + ".png"), samples,
                                           centered=config.data.centered)
    return paths


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f["verbosity"].present:  # Orbax logs every restore at INFO
        logging.set_verbosity(logging.WARNING)
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    paths = run(f.workdir, f.num_samples, f.seed, f.sampler, _parse_options(f.opt), f.ema, f.name,
                f.batch_size)
    print("\n".join(f"wrote {p}" for p in paths.values()))


def cli() -> None:
    flags.DEFINE_string("workdir", None, "run directory written by diffjax.train")
    flags.DEFINE_integer("num_samples", 64, "number of samples")
    flags.DEFINE_integer("batch_size", 64, "samples drawn per compiled call")
    flags.DEFINE_integer("seed", 0, "PRNG seed")
    flags.DEFINE_string("sampler", None, "sampler name (default: the config's sampler.name)")
    flags.DEFINE_multi_string("opt", [], "sampler option key=value (repeatable), e.g. num_steps=50")
    flags.DEFINE_bool("ema", True, "use the EMA parameters")
    flags.DEFINE_string("name", None, "output file stem")
    app.run(main)


if __name__ == "__main__":
    cli()
