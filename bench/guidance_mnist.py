"""Classifier-free guidance sweep on the bundled MNIST digits (Ho & Salimans 2021, Fig. 4 / Tables 1-2).

For each guidance weight ``w`` it draws ``--num_samples`` class-conditional samples from the
latest checkpoint of a run trained with ``training.cond_drop_prob > 0`` (e.g.
``configs/quickstart_cfg.py``), with labels ``0, 1, ..., 9, 0, ...`` and the same seed (so the same
initial noise) for every ``w``, and scores them with the offline MNIST classifier
(``diffjax.metrics.mnist_classifier``):

* class accuracy: the fraction of samples classified as the label they were drawn for
  (``mnist_classifier.accuracy``), the fidelity axis (the paper's Inception Score);
* MNIST FID: Frechet distance (``diffjax.metrics.fid``) of the classifier's 128-d features
  between the samples and all 5,000 bundled digits, the diversity-and-quality axis.

As a floor it also reports the MNIST FID of ``--num_samples`` real digits (a fixed random subset)
against all 5,000: FID is biased upwards at small n, so that is the best a perfect model can
score at this n.

    python bench/guidance_mnist.py --workdir=runs/quickstart_cfg \
        --classifier=runs/mnist_classifier.npz --weights=0,0.5,1,2,4 --num_samples=500 \
        --sampler=ddpm --steps=50

(``ddpm``: ancestral sampling on 50 respaced steps with the config's variance, as the paper samples.
Deterministic DDIM on the 1,500-step quickstart_cfg model is poor at every w tried; see
bench/RESULTS.md.)

writes ``--out`` (JSON, rewritten after every weight, so a cut-short run keeps what it measured),
prints a Markdown table, and draws ``--plot`` (accuracy and FID against w, and the first ten
samples, digits 0-9, at every w).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import evaluate, models, schedules, viz  # noqa: E402
from diffjax.metrics import fid, mnist_classifier  # noqa: E402
from diffjax.sample import make_sampler  # noqa: E402


def real_digits(config) -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 bundled digits as the evaluation protocol reads them (uint8, 28x28x1)."""
    batches = list(evaluate.data_batches(config, "train", 500))
    return np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches])


def reference(apply, config, num_samples: int, seed: int) -> tuple[dict, float, int]:
    """The real digits' feature statistics, the MNIST FID of a fixed random subset of
    ``num_samples`` of them (the floor) and how many real digits there are."""
    images, _ = real_digits(config)
    real = fid.extract_features(apply, np.array_split(images, 10), keys=("features",))["features"]
    subset = np.random.default_rng(seed).choice(len(real), num_samples, replace=False)
    return fid.feature_statistics(real), fid.fid_from_features(real[subset], real), len(real)


def scores(apply, samples: np.ndarray, labels: np.ndarray, ref: dict) -> dict:
    """Class accuracy of the offline classifier and MNIST FID of uint8 ``samples`` against ``ref``."""
    feats = fid.extract_features(apply, np.array_split(samples, max(1, len(samples) // 500)),
                                 keys=("features",))["features"]
    stats = fid.feature_statistics(feats)
    return {"class_accuracy": mnist_classifier.accuracy(apply, samples, labels),
            "mnist_fid": fid.frechet_distance(stats["mu"], stats["sigma"], ref["mu"], ref["sigma"])}


def sweep(workdir: str, classifier: str | None, weights: list[float], num_samples: int,
          sampler: str, steps: int, seed: int, batch_size: int, out: str | None) -> dict:
    config, params, step = evaluate.load_run(workdir)
    if not config.data.num_classes or config.training.cond_drop_prob <= 0:
        raise SystemExit(f"{workdir} is not a classifier-free guidance run (data.num_classes="
                         f"{config.data.num_classes}, training.cond_drop_prob={config.training.cond_drop_prob})")
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    variables, info = mnist_classifier.load(classifier)
    apply = mnist_classifier.make_apply_fn(variables)

    ref, floor, num_real = reference(apply, config, num_samples, seed)

    result = {"workdir": workdir, "step": step, "sampler": sampler, "steps": steps, "seed": seed,
              "num_samples": num_samples, "cond_drop_prob": config.training.cond_drop_prob,
              "classifier": classifier, "classifier_held_out_accuracy": info["held_out_accuracy"],
              "real_subset_mnist_fid": floor, "rows": []}
    print(f"step-{step} checkpoint of {workdir}; classifier held-out accuracy "
          f"{info['held_out_accuracy']:.3f}; MNIST FID of {num_samples} real digits vs all "
          f"{num_real}: {floor:.3f}", file=sys.stderr)
    key = jax.random.PRNGKey(seed)
    strips = []
    for w in weights:
        draw = jax.jit(make_sampler(config, net, schedule, sampler, {"steps": steps, "guidance_scale": w}),
                       static_argnums=2)
        start = time.time()
        chunks, labels, nfe = [], [], -1
        for i in range(0, num_samples, batch_size):  # batch i uses fold_in(key, i), as diffjax.evaluate
            x, y, sample_info = draw(params, jax.random.fold_in(key, i), min(batch_size, num_samples - i))
            chunks.append(fid.to_uint8(np.asarray(x), tolerance=None))
            labels.append(np.asarray(y))
            nfe = int(sample_info.get("nfe", -1))
        samples, labels = np.concatenate(chunks), np.concatenate(labels)
        seconds = time.time() - start
        row = {"w": w, **scores(apply, samples, labels, ref), "nfe": nfe, "network_evals_per_sample": nfe * (2 if w else 1), "seconds": round(seconds, 1)}
        result["rows"].append(row)
        strips.append(samples[:10])
        print(json.dumps(row), file=sys.stderr)
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                json.dump(result, f, indent=1)
            np.save(os.path.splitext(out)[0] + "_strips.npy", np.stack(strips))
    result["strips"] = np.stack(strips)
    return result


def table(result: dict) -> str:
    lines = ["| w | class accuracy | MNIST FID | network evals / sample | seconds |", "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['w']:g} | {r['class_accuracy']:.3f} | {r['mnist_fid']:.2f} | "
                     f"{r['network_evals_per_sample']} | {r['seconds']:.0f} |")
    lines.append(f"| real digits ({result['num_samples']}) | | {result['real_subset_mnist_fid']:.2f} | | |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w = [r["w"] for r in result["rows"]]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [1, 1, 1.1]})
    axes[0].plot(w, [r["class_accuracy"] for r in result["rows"]], "o-", color="tab:blue")
    axes[0].set(xlabel="guidance weight w", ylabel="class accuracy", title="fidelity (higher is better)")
    axes[1].plot(w, [r["mnist_fid"] for r in result["rows"]], "o-", color="tab:red", label="samples")
    axes[1].axhline(result["real_subset_mnist_fid"], color="gray", ls="--",
                    label=f"{result['num_samples']} real digits")
    axes[1].set(xlabel="guidance weight w", ylabel="MNIST FID", title="FID vs the 5,000 digits (lower is better)")
    axes[1].legend(fontsize=8)
    grid = viz.image_grid(result["strips"].reshape(-1, 28, 28, 1), ncols=10)[..., 0]
    axes[2].imshow(grid, cmap="gray", vmin=0, vmax=255)
    axes[2].set_yticks([2 + 30 * i + 14 for i in range(len(w))], [f"w={x:g}" for x in w])
    axes[2].set_xticks([2 + 30 * i + 14 for i in range(10)], [str(i) for i in range(10)])
    axes[2].set_title("samples (same noise in every row)")
    fig.suptitle(f"Classifier-free guidance, MNIST 5k, {result['num_samples']} samples per w, "
                 f"{result['sampler']} {result['steps']} steps, p_uncond={result['cond_drop_prob']}, "
                 f"step {result['step']}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/quickstart_cfg")
    p.add_argument("--classifier", default=None, help="default: ~/.cache/diffjax/mnist_classifier.npz")
    p.add_argument("--weights", default="0,0.5,1,2,4")
    p.add_argument("--num_samples", type=int, default=500)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--out", default="bench/guidance_mnist.json")
    p.add_argument("--plot", default="docs/guidance_mnist.png")
    p.add_argument("--replot", action="store_true", help="only redraw the table and plot from --out "
                   "(e.g. of a run cut short)")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.out) as f:
            result = json.load(f)
        result["strips"] = np.load(os.path.splitext(args.out)[0] + "_strips.npy")
        print(table(result))
        print(f"wrote {plot(result, args.plot)}", file=sys.stderr)
        return
    result = sweep(args.workdir, args.classifier, [float(w) for w in args.weights.split(",")],
                   args.num_samples, args.sampler, args.steps, args.seed, args.batch_size, args.out)
    print(table(result))
    if args.plot:
        print(f"wrote {plot(result, args.plot)}", file=sys.stderr)


if __name__ == "__main__":
    main()
