"""Classifier guidance sweep on the bundled MNIST digits (Dhariwal & Nichol 2021, Sec. 4, Fig. 3 / Table 4).

The classifier-guidance counterpart of ``bench/guidance_mnist.py`` (same seeds, metrics and
table): for each classifier scale ``s`` it draws ``--num_samples`` samples from the latest
checkpoint of a diffusion run (unconditional, e.g. ``configs/quickstart.py``; a class-conditional
run is guided on top of its labels), for labels ``0, 1, ..., 9, 0, ...``, guided by the noisy
classifier of ``--classifier_workdir`` (``python -m diffjax.classifier``):
``eps_hat = eps - s sigma(t) grad_x log p_phi(y | x_t, t)`` (Alg. 2; ADM's Alg. 1 shifts the
ancestral mean by ``s Sigma grad``, the same to first order). Scores are those of
``guidance_mnist.py``: class accuracy of the offline MNIST classifier (fidelity) and MNIST FID
against the 5,000 bundled digits.

    python bench/classifier_guidance_mnist.py --workdir=runs/quickstart \
        --classifier_workdir=runs/mnist_noisy_classifier --eval_classifier=runs/mnist_classifier.npz \
        --scales=0,1,2,4,8 --num_samples=500 --sampler=ddpm --steps=50

writes ``--out`` (JSON, rewritten after every scale) and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

_BENCH = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_BENCH)
for path in (_REPO, _BENCH):
    if path not in sys.path:
        sys.path.insert(0, path)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import classifier, evaluate, models, predictions, samplers, schedules  # noqa: E402
from diffjax.metrics import fid, mnist_classifier  # noqa: E402
from diffjax.sampling import network_fn, sampler_options  # noqa: E402
from guidance_mnist import reference, scores  # noqa: E402


def make_draw(config, net, schedule, clf, sampler: str, steps: int, scale: float):
    """``draw(params, clf_params, key, labels) -> (samples, info)``: the run's sampler with the
    config's options (clipping of the x0 estimate included), the model function guided by the
    classifier (``scale = 0``: the unguided sampler, bit for bit)."""
    clf_net, clf_schedule = clf
    name, opts = sampler_options(config, sampler, {"steps": steps})
    clip = opts.pop("clip_denoised", False)
    opts.pop("guidance_scale", None)
    lo, hi = (-1.0, 1.0) if config.data.get("centered", True) else (0.0, 1.0)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)

    def draw(params, clf_params, key, labels):
        y = labels if config.data.num_classes else None
        model_fn = predictions.model_fn(network_fn(net, params, y), schedule)
        fn = classifier.guide(model_fn, schedule, config.model.prediction, clf_net, clf_params, labels, scale)
        denoise = predictions.as_denoiser(fn, schedule, config.model.prediction)
        if clip:
            denoise_raw = denoise
            denoise = lambda x, t: jnp.clip(denoise_raw(x, t), lo, hi)  # noqa: E731
        return samplers.sample(name, denoise, schedule, key, shape=(labels.shape[0], *shape), **opts)

    return draw


def sweep(workdir: str, classifier_workdir: str, eval_classifier: str | None, scales: list[float],
          num_samples: int, sampler: str, steps: int, seed: int, batch_size: int, out: str | None) -> dict:
    config, params, step = evaluate.load_run(workdir)
    clf_config, clf_net, clf_schedule, clf_params = classifier.load(classifier_workdir)
    num_classes = clf_config.classifier.num_classes
    classifier.check_pair(clf_config, config, np.arange(num_classes))
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    variables, info = mnist_classifier.load(eval_classifier)
    apply = mnist_classifier.make_apply_fn(variables)

    ref, floor, num_real = reference(apply, config, num_samples, seed)
    result = {"workdir": workdir, "step": step, "classifier_workdir": classifier_workdir,
              "classifier_steps": clf_config.training.num_steps, "sampler": sampler, "steps": steps,
              "seed": seed, "num_samples": num_samples, "conditional_model": bool(config.data.num_classes),
              "eval_classifier_held_out_accuracy": info["held_out_accuracy"],
              "real_subset_mnist_fid": floor, "rows": []}
    print(f"step-{step} checkpoint of {workdir}, classifier {classifier_workdir}; MNIST FID of "
          f"{num_samples} real digits vs all {num_real}: {floor:.3f}", file=sys.stderr)
    key = jax.random.PRNGKey(seed)
    for s in scales:
        draw = jax.jit(make_draw(config, net, schedule, (clf_net, clf_schedule), sampler, steps, s))
        start = time.time()
        chunks, labels, nfe = [], [], -1
        for i in range(0, num_samples, batch_size):  # batch i uses fold_in(key, i), as guidance_mnist.py
            y = jnp.arange(i, min(i + batch_size, num_samples)) % num_classes
            x, sample_info = draw(params, clf_params, jax.random.fold_in(key, i), y)
            chunks.append(fid.to_uint8(np.asarray(x), tolerance=None))
            labels.append(np.asarray(y))
            nfe = int(sample_info.get("nfe", -1))
        samples, labels = np.concatenate(chunks), np.concatenate(labels)
        seconds = time.time() - start
        row = {"scale": s, **scores(apply, samples, labels, ref), "nfe": nfe, "seconds": round(seconds, 1)}
        result["rows"].append(row)
        print(json.dumps(row), file=sys.stderr)
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(result, f, indent=1)
    return result


def table(result: dict) -> str:
    lines = ["| classifier scale s | class accuracy | MNIST FID | seconds |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['scale']:g} | {r['class_accuracy']:.3f} | {r['mnist_fid']:.2f} | {r['seconds']:.0f} |")
    lines.append(f"| real digits ({result['num_samples']}) | | {result['real_subset_mnist_fid']:.2f} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/quickstart")
    p.add_argument("--classifier_workdir", default="runs/mnist_noisy_classifier")
    p.add_argument("--eval_classifier", default=None, help="default: ~/.cache/diffjax/mnist_classifier.npz")
    p.add_argument("--scales", default="0,1,2,4,8")
    p.add_argument("--num_samples", type=int, default=500)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--out", default="bench/classifier_guidance_mnist.json")
    args = p.parse_args(argv)
    result = sweep(args.workdir, args.classifier_workdir, args.eval_classifier,
                   [float(s) for s in args.scales.split(",")], args.num_samples, args.sampler, args.steps,
                   args.seed, args.batch_size, args.out)
    print(table(result))


if __name__ == "__main__":
    main()
