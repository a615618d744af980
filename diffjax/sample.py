"""``python -m diffjax.sample --workdir=DIR``: draw samples from a trained run, on every device.

Reads the config and the latest checkpoint of ``DIR`` (EMA parameters by default), runs the
sampler named by ``--sampler`` (default: the config's ``sampler.name``) with options given as
``--opt key=value`` (e.g. ``--sampler=ddim --opt steps=50``) over the device mesh and all
processes, and writes

* ``DIR/samples/<name>/shard_<first index>.npz``: each process its own samples (float samples,
  labels); run the same command again after a crash and it draws only what is missing;
* ``DIR/samples/<name>.npz`` (float samples, labels, uint8 images) and ``<name>.png`` (a grid),
  by process 0 once it sees every shard (always on one host; on several, a shared file system).

Sample ``i`` depends only on ``(--seed, i)``: the same images on any number of devices or
processes and with any ``--batch_size`` (see :mod:`diffjax.sampling`, the library behind this).

Text-conditioned runs (``configs/text2mnist.py``) take ``--prompt="a thin three"`` (repeatable,
or several separated by ``|``; default: the config's ``text.prompts``): sample ``i`` is drawn for
prompt ``i % len(prompts)``, guided by ``--guidance=w`` (classifier-free guidance against the
empty caption; 0: the conditional model alone).
"""
from __future__ import annotations

import ast
import hashlib
import os
import sys

import jax
import numpy as np
from absl import app, flags, logging

from diffjax import fileio, parallel, viz
from diffjax.sampling import (config_from_dict, load_run, make_sampler, network_fn,  # noqa: F401  (API)
                              sampler_options)


def parse_options(pairs: list[str]) -> dict:
    """``["steps=50", "eta=0.5"]`` -> ``{"steps": 50, "eta": 0.5}`` (Python literals, else strings)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--opt expects key=value, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def split_prompts(values: list[str]) -> list[str] | None:
    """``["a thin three|a thick 7", "a one"]`` -> three prompts (None when none were given)."""
    prompts = [p.strip() for v in values for p in v.split("|")]
    return prompts or None


def run(workdir: str, num_samples: int, seed: int, sampler: str | None, options: dict,
        use_ema: bool = True, name: str | None = None, batch_size: int = 64,
        progress: bool = False, prompts: list[str] | None = None, classifier_workdir: str | None = None,
        classifier_scale: float = 1.0) -> dict[str, str]:
    """Sample from the latest checkpoint of ``workdir``; returns the paths written (``shards``,
    and ``npz``, ``png`` when this is process 0 and every shard is visible). ``prompts``: for a
    text-conditioned run (default: its ``text.prompts``); a ValueError for any other run.
    ``classifier_workdir``: guide with the noisy classifier trained there (``python -m
    diffjax.classifier``; Dhariwal & Nichol 2021) at ``classifier_scale``, for labels ``i % classes``."""
    from diffjax import models, sampling, schedules

    config, params, step = load_run(workdir, use_ema=use_ema)
    sampler_name, _ = sampler_options(config, sampler, options)
    sampling.check_sampler(config, sampler, options)
    if "text" in config or prompts is not None:
        prompts, _ = sampling.prompt_context(config, prompts)  # the errors before any compute
    guide = None
    if classifier_workdir:
        from diffjax import classifier

        guide = classifier.make_guide(classifier_workdir, config, classifier_scale)
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    name = name or (f"step{step}_{sampler_name}_seed{seed}" + _text_suffix(prompts, options)
                    + (f"_cg{classifier_scale:g}" if guide else ""))
    out_dir = fileio.join(workdir, "samples", name)
    mesh = sampling.make_mesh(config)
    main = jax.process_index() == 0
    if main:
        print(f"sampling {num_samples} with {sampler_name} {options or ''} from the step-{step} checkpoint "
              f"({'EMA' if use_ema else 'raw'} parameters) on {mesh.devices.size} device(s), "
              f"{jax.process_count()} process(es)", file=sys.stderr)
    info = sampling.sample_to_dir(config, net, schedule, params, out_dir, num_samples=num_samples, seed=seed,
                                  batch_size=batch_size, sampler=sampler, options=options, mesh=mesh,
                                  meta={"step": step, "ema": use_ema, **({"classifier": os.path.abspath(
                                      classifier_workdir), "classifier_scale": classifier_scale} if guide else {})},
                                  progress=progress, prompts=prompts, guide=guide)
    paths = {"shards": out_dir}
    if not main:
        return paths
    print(f"{info['num_drawn']} samples drawn in {info['wall_time_s']:.1f}s "
          f"({num_samples - info['num_drawn']} already there), {info['nfe']} network evaluations each",
          file=sys.stderr)
    try:
        samples, labels = sampling.load_samples(out_dir, num_samples)
    except FileNotFoundError as e:  # several hosts without a shared file system
        print(f"not writing {name}.npz: {e}", file=sys.stderr)
        return paths
    stem = fileio.join(workdir, "samples", name)
    paths["npz"] = stem + ".npz"
    if samples.ndim == 2:
        fileio.save_npz(paths["npz"], samples=samples, labels=labels, nfe=info["nfe"])
        paths["png"] = viz.save_scatter(stem + ".png", samples)
    else:
        fileio.save_npz(paths["npz"], samples=samples, images=viz.to_uint8(samples, config.data.centered),
                        labels=labels, nfe=info["nfe"], **({"prompts": np.asarray(prompts)} if prompts else {}))
        paths["png"] = viz.save_image_grid(stem + ".png", samples[:64], centered=config.data.centered)
    return paths


def _text_suffix(prompts: list[str] | None, options: dict) -> str:
    """``_w<guidance>_<hash of the prompts>`` for text runs: other prompts, another directory."""
    if not prompts:
        return ""
    digest = hashlib.sha1("|".join(prompts).encode()).hexdigest()[:8]
    return f"_w{options.get('guidance_scale', 0)}_{digest}"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f["verbosity"].present:  # Orbax logs every restore at INFO
        logging.set_verbosity(logging.WARNING)
    if not f.workdir:
        raise app.UsageError("--workdir is required")
    parallel.initialize(f.distributed)
    try:
        options = parse_options(f.opt)
        if f.guidance is not None:
            options["guidance_scale"] = f.guidance
        paths = run(f.workdir, f.num_samples, f.seed, f.sampler, options, f.ema, f.name,
                    f.batch_size, progress=True, prompts=split_prompts(f.prompt),
                    classifier_workdir=f.classifier_workdir, classifier_scale=f.classifier_scale)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if jax.process_index() == 0:
        print("\n".join(f"wrote {p}" for p in paths.values()))


def cli() -> None:
    flags.DEFINE_string("workdir", None, "run directory written by diffjax.train")
    flags.DEFINE_integer("num_samples", 64, "number of samples")
    flags.DEFINE_integer("batch_size", 64, "samples drawn per compiled call over all devices "
                         "(rounded up to a multiple of the device count)")
    flags.DEFINE_integer("seed", 0, "PRNG seed; sample i uses fold_in(PRNGKey(seed), i)")
    flags.DEFINE_string("sampler", None, "sampler name (default: the config's sampler.name)")
    flags.DEFINE_multi_string("opt", [], "sampler option key=value (repeatable), e.g. --opt steps=50 "
                              "--opt eta=0.5; the accepted ones are in the error for a wrong one")
    flags.DEFINE_bool("ema", True, "use the EMA parameters")
    flags.DEFINE_string("name", None, "output name (default step<N>_<sampler>_seed<seed>)")
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host)")
    flags.DEFINE_multi_string("prompt", [], "text prompt(s) for a text-conditioned run (repeatable, or "
                              "separated by '|'); sample i is drawn for prompt i % len(prompts)")
    flags.DEFINE_float("guidance", None, "classifier-free guidance weight w (same as --opt guidance_scale=w)")
    flags.DEFINE_string("classifier_workdir", None, "classifier guidance: a noisy classifier trained by "
                        "`python -m diffjax.classifier` (labels i % its classes)")
    flags.DEFINE_float("classifier_scale", 1.0, "classifier guidance scale s (with --classifier_workdir)")
    app.run(main)


if __name__ == "__main__":
    cli()
