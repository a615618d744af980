"""``python -m diffjax.synthesize --workdir=DIR --class=K --num_per_class=N --out=FILE.npz``:
a synthetic labelled data set drawn from a class-conditional run.

Draws ``N`` samples of each requested class (``--class`` repeated, or ``all``: a class-balanced
set) from the latest checkpoint of ``DIR`` (EMA parameters by default) over every device and
process (:mod:`diffjax.sampling`), optionally with classifier-free guidance (``--guidance=W``,
Ho & Salimans 2021 eq. 6), and writes ``FILE.npz`` atomically: ``images`` (uint8 HWC, as the data
pipeline reads them), ``labels`` and ``meta`` (workdir, step, sampler and options, guidance,
seed). Read it back for training with ``data.source = "npz:FILE.npz"``, or next to the real data
with ``data.source = "mnist_offline+npz:FILE.npz"`` (:mod:`diffjax.data.sources`).

Sample ``j`` of class ``k`` is sample ``i = k + C j`` (``C`` classes) of ``python -m diffjax.sample``
with the same seed, sampler and options: drawn from ``fold_in(PRNGKey(seed), i)`` with label
``i % C = k``. So it does not depend on the device count, the batch size, or the other classes
requested.
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils

from diffjax import fileio, parallel, sampling, viz
from diffjax.data import sources


def parse_classes(values: Sequence[str], num_classes: int, workdir: str = "the run") -> list[int]:
    """``["3", "8"]`` or ``["all"]`` -> class indices, checked against the run's ``num_classes``."""
    if not num_classes:
        raise ValueError(f"{workdir} is an unconditional model (data.num_classes = 0): it cannot draw "
                         "samples of a given class; train a class-conditional run (e.g. "
                         "--config=quickstart_cfg)")
    if not values:
        raise ValueError(f"no class requested; give --class=K (0..{num_classes - 1}, repeatable) or --class=all")
    if list(values) == ["all"]:
        return list(range(num_classes))
    classes = []
    for value in values:
        try:
            k = int(value)
        except ValueError:
            raise ValueError(f"--class expects an integer in 0..{num_classes - 1} or 'all', got {value!r}") from None
        if not 0 <= k < num_classes:
            raise ValueError(f"class {k} is out of range: {workdir} has {num_classes} classes (0..{num_classes - 1})")
        if k in classes:
            raise ValueError(f"class {k} is requested twice")
        classes.append(k)
    return classes


def sample_indices(classes: Sequence[int], num_per_class: int, num_classes: int) -> np.ndarray:
    """The global sample indices ``k + C j`` (``j < num_per_class``) of each class, class by class."""
    j = np.arange(num_per_class)
    return np.concatenate([k + num_classes * j for k in classes]).astype(np.int32)


def synthesize(workdir: str, classes: Sequence[str] | Sequence[int], num_per_class: int, *, seed: int = 0,
               guidance: float | None = None, sampler: str | None = None, options: dict | None = None,
               batch_size: int = 64, step: int | None = None, use_ema: bool = True
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(images uint8 (n, H, W, C), labels (n,), meta)``: ``num_per_class`` samples of each class
    in ``classes`` (indices, or ``["all"]``), class by class, on every process."""
    from diffjax import models, schedules

    config, params, step = sampling.load_run(workdir, step, use_ema)
    if config.data.source.startswith("toy:"):
        raise ValueError(f"{workdir} is a toy 2D run ({config.data.source}): synthesize writes images")
    num_classes = config.data.num_classes
    classes = parse_classes([str(k) for k in classes], num_classes, workdir)
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be >= 1, got {num_per_class}")
    options = dict(options or {})
    if guidance is not None:
        options["guidance_scale"] = float(guidance)
    name, opts = sampling.sampler_options(config, sampler, options)
    if opts.get("guidance_scale") and config.training.cond_drop_prob <= 0:
        raise ValueError(f"guidance {opts['guidance_scale']} needs a run trained with classifier-free dropout "
                         f"(training.cond_drop_prob > 0); {workdir} has {config.training.cond_drop_prob}: "
                         "its null label was never trained; use --guidance=0")
    sampling.check_sampler(config, sampler, options)
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    mesh = sampling.make_mesh(config)
    indices = sample_indices(classes, num_per_class, num_classes)
    gb = sampling.global_batch_size(batch_size, len(indices), mesh)
    padded = np.concatenate([indices, np.full(-len(indices) % gb, indices[-1], np.int32)])
    placed = sampling.place_params(params, mesh)
    fn = sampling.sharded_sampler(config, net, schedule, mesh, placed, sampler, options)
    key, batch = jax.random.PRNGKey(seed), parallel.batch_sharding(mesh)
    images, labels, nfe = [], [], -1
    for start in range(0, len(padded), gb):
        rows = jax.make_array_from_callback((gb,), batch, lambda idx: padded[start:start + gb][idx])
        x, y, batch_nfe = fn(placed, key, rows)
        x, y = (multihost_utils.process_allgather(a, tiled=True) for a in (x, y))
        images.append(viz.to_uint8(x, config.data.get("centered", True)))
        labels.append(np.asarray(y))
        nfe = int(batch_nfe)
    images, labels = np.concatenate(images)[:len(indices)], np.concatenate(labels)[:len(indices)]
    want = np.repeat(classes, num_per_class)
    if not np.array_equal(labels, want):  # the sampler's label is i % C: a broken index would show here
        raise RuntimeError(f"sampled labels {np.unique(labels)} differ from the requested classes {classes}")
    meta = {"workdir": fileio.normalize(workdir), "step": step, "ema": use_ema, "sampler": name,
            "options": {k: repr(v) for k, v in sorted(opts.items())},
            "guidance": float(opts.get("guidance_scale", 0.0)), "seed": seed, "classes": classes,
            "num_per_class": num_per_class, "nfe": nfe, "source": "diffjax.synthesize"}
    return images, labels, meta


def run(workdir: str, classes: Sequence[str], num_per_class: int, out: str, **kwargs: Any) -> str | None:
    """Synthesize and write ``out`` (by process 0); returns the path written there, else None."""
    images, labels, meta = synthesize(workdir, classes, num_per_class, **kwargs)
    if jax.process_index() != 0:
        return None
    return sources.save_npz(out, images, labels, meta)


def main(argv: list[str]) -> None:
    from diffjax.sample import parse_options

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    if not f["verbosity"].present:  # Orbax logs every restore at INFO
        logging.set_verbosity(logging.WARNING)
    for name in ("workdir", "out"):
        if not f[name].value:
            raise app.UsageError(f"--{name} is required")
    parallel.initialize(f.distributed)
    try:
        path = run(f.workdir, f["class"].value, f.num_per_class, f.out, seed=f.seed, guidance=f.guidance,
                   sampler=f.sampler, options=parse_options(f.opt), batch_size=f.batch_size, step=f.step,
                   use_ema=f.ema)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if path:
        print(f"wrote {path}", file=sys.stderr)


def cli() -> None:
    flags.DEFINE_string("workdir", None, "class-conditional run directory written by diffjax.train")
    flags.DEFINE_multi_string("class", [], "class index to draw (repeatable), or 'all'")
    flags.DEFINE_integer("num_per_class", 100, "samples drawn of each requested class")
    flags.DEFINE_string("out", None, "output .npz (images, labels, meta)")
    flags.DEFINE_float("guidance", None, "classifier-free guidance weight w (default: the config's "
                       "sampler.guidance_scale, if any)")
    flags.DEFINE_string("sampler", None, "sampler name (default: the config's sampler.name)")
    flags.DEFINE_multi_string("opt", [], "sampler option key=value (repeatable), e.g. --opt steps=50")
    flags.DEFINE_integer("seed", 0, "PRNG seed; sample j of class k uses fold_in(PRNGKey(seed), k + C j)")
    flags.DEFINE_integer("batch_size", 64, "samples per compiled call over all devices")
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
    flags.DEFINE_bool("ema", True, "use the EMA parameters")
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() first (multi-host)")
    app.run(main)


if __name__ == "__main__":
    cli()
