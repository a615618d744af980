"""What synthetic examples of an under-represented class buy a classifier (bundled MNIST, 5,000 digits).

1. Hold out the fixed 500-digit test split (``mnist_classifier.split``); from the 4,500 training
   digits keep only ``--keep`` (e.g. 3%) of digit ``--digit`` (``sources.keep_fraction``) and
   write that imbalanced set as an image .npz.
2. Train the class-conditional, classifier-free-guided diffusion model of
   ``configs/quickstart_cfg.py`` on it (``data.source = "npz:<file>"``) for ``--diffusion_steps``.
3. Synthesize (``diffjax.synthesize``) as many examples of the rare digit as were removed, so
   that the training set is balanced again.
4. Train the offline MNIST classifier (``mnist_classifier.fit``, same epochs and seed list for
   every arm) on
   (a) the imbalanced real digits,
   (a') the same with the rare digit's few real examples repeated up to the balanced count
        (plain oversampling: the baseline synthetic data has to beat),
   (b) the imbalanced real digits + the synthetic rare digits,
   (c) the balanced real training digits (the ceiling),
   and report on the held-out 500 the rare digit's accuracy (recall) and the overall accuracy,
   mean +- std over ``--seeds``.

Every stage is kept in ``--workdir`` and skipped when already done (the trainer resumes its own
checkpoint), so a cut-short run continues. Wall and CPU times (user + sys of this process) of
each stage and ``os.getloadavg()`` before and after go into ``--out``.

    python bench/imbalance_mnist.py --workdir=runs/imbalance --digit=8 --keep=0.03 \
        --diffusion_steps=3000 --guidance=1 --steps=50 --seeds=0,1,2,3,4
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

import numpy as np  # noqa: E402

from diffjax import synthesize, train  # noqa: E402
from diffjax.configs import quickstart_cfg  # noqa: E402
from diffjax.data import sources  # noqa: E402
from diffjax.metrics import mnist_classifier  # noqa: E402

ARMS = {"a": "imbalanced real", "a_oversampled": "imbalanced real, rare digit repeated",
        "b": "imbalanced real + synthetic rare digit", "c": "balanced real (ceiling)"}


class Stage:
    """Wall time, CPU time (user + sys, this process and its children) and load of a block."""

    def __enter__(self):
        self.load_before, self.wall, self.cpu = os.getloadavg()[0], time.time(), sum(os.times()[:4])
        return self

    def __exit__(self, *exc):
        self.record = {"wall_s": round(time.time() - self.wall, 1),
                       "cpu_s": round(sum(os.times()[:4]) - self.cpu, 1),
                       "load_before": round(self.load_before, 2), "load_after": round(os.getloadavg()[0], 2)}


def imbalanced_split(digit: int, keep: float, seed: int = 0):
    """(train, imbalanced train, test) as (images, labels) pairs."""
    images, labels = sources.load_mnist_5k()
    train_set, test_set = mnist_classifier.split(images, labels)
    kept = sources.keep_fraction(train_set[1], {digit: keep}, seed)
    return train_set, (train_set[0][kept], train_set[1][kept]), test_set


def diffusion_config(path: str, steps: int):
    config = quickstart_cfg.get_config()
    config.data.source = f"npz:{path}"
    config.training.num_steps = steps
    config.training.checkpoint_every = min(250, steps)  # a cut-short run loses little
    config.training.sample_every = 0  # no grids: a resumed run would draw its last one again
    return config


def oversample(images, labels, digit: int, target: int, seed: int):
    """The rare digit's examples repeated (cycled in a seeded order) up to ``target`` of them."""
    rare = np.flatnonzero(labels == digit)
    extra = np.random.default_rng(seed).permutation(np.resize(rare, target - len(rare)))
    return np.concatenate([images, images[extra]]), np.concatenate([labels, labels[extra]])


def evaluate_arm(x, y, test, digit: int, seed: int, epochs: int) -> dict:
    with Stage() as stage:
        variables = mnist_classifier.fit(x, y, epochs=epochs, seed=seed)
    apply = mnist_classifier.make_apply_fn(variables)
    per_class = mnist_classifier.per_class_accuracy(apply, *test)
    return {"seed": seed, "rare_accuracy": float(per_class[digit]),
            "accuracy": mnist_classifier.accuracy(apply, *test), "per_class": per_class.round(4).tolist(),
            "num_train": len(x), "num_rare_train": int(np.sum(y == digit)), **stage.record}


def summary(rows: list[dict]) -> dict:
    out = {}
    for key in ("rare_accuracy", "accuracy"):
        v = np.array([r[key] for r in rows])
        out[key] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    return out


def run(args) -> dict:
    os.makedirs(args.workdir, exist_ok=True)
    result = {"args": vars(args), "stages": {}, "arms": {}}
    save = lambda: args.out and json.dump(result, open(args.out, "w"), indent=1)  # noqa: E731
    full, imbalanced, test = imbalanced_split(args.digit, args.keep)
    data_path = os.path.join(args.workdir, "imbalanced.npz")
    sources.save_npz(data_path, *imbalanced, {"digit": args.digit, "keep": args.keep,
                                              "from": "mnist_classifier.split(load_mnist_5k())[0]"})
    counts = np.bincount(imbalanced[1], minlength=10)
    balanced_count = int(round(np.mean(np.delete(counts, args.digit))))
    num_synthetic = balanced_count - int(counts[args.digit])
    result["data"] = {"train_counts": np.bincount(full[1], minlength=10).tolist(),
                      "imbalanced_counts": counts.tolist(), "test_counts": np.bincount(test[1], minlength=10).tolist(),
                      "num_synthetic": num_synthetic}
    print(json.dumps(result["data"]), file=sys.stderr)
    arms = [arm for arm in ARMS if arm in args.arms.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = {"a": imbalanced, "c": full}
    if "b" in arms:
        sets["b"] = synthetic_arm(args, result, data_path, imbalanced, full, num_synthetic, seeds[0], save)
    for seed in seeds:
        sets["a_oversampled"] = oversample(*imbalanced, args.digit, balanced_count, seed)
        for arm in arms:
            row = evaluate_arm(*sets[arm], test, args.digit, seed, args.epochs)
            result["arms"].setdefault(arm, {"rows": []})["rows"].append(row)
            result["arms"][arm].update(summary(result["arms"][arm]["rows"]))
            print(arm, json.dumps({k: row[k] for k in ("seed", "rare_accuracy", "accuracy", "wall_s")}),
                  file=sys.stderr)
            save()
    return result


def synthetic_arm(args, result, data_path, imbalanced, full, num_synthetic, seed, save):
    """Train the diffusion model on the imbalanced set, synthesize the missing rare digits, and
    return the imbalanced set with them added."""
    run_dir = os.path.join(args.workdir, "diffusion")
    with Stage() as stage:
        state = train.train(diffusion_config(data_path, args.diffusion_steps), run_dir)
    result["stages"]["diffusion_training"] = {"steps": int(state.step), **stage.record}
    print(json.dumps(result["stages"]), file=sys.stderr)
    save()

    synth_path = os.path.join(args.workdir, f"synthetic_{args.digit}_w{args.guidance:g}.npz")
    with Stage() as stage:
        if not os.path.exists(synth_path):
            synthesize.run(run_dir, [args.digit], num_synthetic, synth_path, guidance=args.guidance,
                           sampler="ddpm", options={"steps": args.steps}, batch_size=args.batch_size)
    synth_images, synth_labels, meta = sources.load_npz(synth_path)
    result["stages"]["synthesis"] = {"num": len(synth_labels), "meta": meta, **stage.record}
    # How many synthetic rare digits a classifier trained on balanced real data recognises.
    judge = mnist_classifier.make_apply_fn(mnist_classifier.fit(*full, epochs=args.epochs, seed=seed))
    result["synthetic_recognised"] = mnist_classifier.accuracy(judge, synth_images, synth_labels)
    save()
    return np.concatenate([imbalanced[0], synth_images]), np.concatenate([imbalanced[1], synth_labels])


def table(result: dict) -> str:
    digit = result["args"]["digit"]
    lines = [f"| training set | digit-{digit} train examples | digit-{digit} held-out accuracy | "
             "overall held-out accuracy |", "|---|---|---|---|"]
    for arm, name in ARMS.items():
        r = result["arms"].get(arm)
        if r:
            lines.append(f"| ({arm.replace('_oversampled', chr(39))}) {name} | {r['rows'][0]['num_rare_train']} | "
                         f"{r['rare_accuracy']['mean']:.3f} +- {r['rare_accuracy']['std']:.3f} | "
                         f"{r['accuracy']['mean']:.3f} +- {r['accuracy']['std']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/imbalance")
    p.add_argument("--digit", type=int, default=8)
    p.add_argument("--keep", type=float, default=0.03)
    p.add_argument("--diffusion_steps", type=int, default=3000)
    p.add_argument("--guidance", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=50, help="ancestral (ddpm) sampling steps")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8, help="classifier epochs (mnist_classifier default)")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--arms", default=",".join(ARMS), help="which training sets; without 'b' no "
                   "diffusion model is trained")
    p.add_argument("--out", default="bench/imbalance_mnist.json")
    p.add_argument("--replot", action="store_true", help="only print the table of --out")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.out) as f:
            print(table(json.load(f)))
        return
    print(table(run(args)))


if __name__ == "__main__":
    main()
