"""What text guidance does on MNIST: classifier-free guidance against the null caption
(Ho & Salimans 2021, eq. 6; GLIDE, Nichol et al. 2022, Sec. 3.2) on a ``configs/text2mnist.py`` run.

Prompts: for each digit 0-9 and each attribute word thin / thick / leaning left / leaning right,
one caption in a *training* phrasing (``captions.TRAIN_TEMPLATES``, the template cycling with the
digit) and the same words in a *held-out* phrasing (``captions.HELD_OUT_TEMPLATES``, never seen in
training): 40 prompts per set. For every guidance weight ``w`` it draws ``--per_prompt`` samples
of every prompt from the same noise (sample ``i`` from ``fold_in(PRNGKey(seed), i)``, as
``diffjax.sampling``) and measures

* class accuracy: the offline MNIST classifier (``diffjax.metrics.mnist_classifier``) reads the
  prompt's digit;
* attribute agreement: the samples' stroke thickness (resp. slant), measured with the caption
  pixel measures (``diffjax.data.captions``), lies on the side of the training digits' median
  that the prompt asks for (thick above, thin below; leaning right above, left below); 0.5 is
  chance;
* diversity: the mean pairwise Euclidean distance between the classifier's 128-d features of the
  samples of one prompt, averaged over prompts (real digits of one class: ``real_diversity``);
* wall time of the sampling, with the load average before and after (the machine is shared).

    python bench/text_guidance_mnist.py --workdir=runs/text2mnist --classifier=runs/mnist_classifier.npz

writes ``--out`` (JSON, rewritten after every row), prints the Markdown table of
docs/text_guidance.md and draws ``--plot``.
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

from diffjax import models, sampling, schedules, viz  # noqa: E402
from diffjax.data import captions  # noqa: E402
from diffjax.data.sources import load_mnist_5k  # noqa: E402
from diffjax.metrics import fid, mnist_classifier  # noqa: E402

ASKED = (("thickness", "thin"), ("thickness", "thick"), ("slant", "left"), ("slant", "right"))


def prompts(templates) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """40 prompts: each digit with each asked attribute, in ``templates`` (cycled by digit)."""
    texts, digits, asked = [], [], []
    for d in range(10):
        for attr, word in ASKED:
            words = captions.Words(d, word if attr == "thickness" else None, word if attr == "slant" else None, None)
            texts.append(templates[d % len(templates)](words))
            digits.append(d)
            asked.append((attr, word))
    return texts, digits, asked


def mean_pairwise_distance(features: np.ndarray) -> float:
    d = np.sqrt(np.maximum(((features[:, None] - features[None]) ** 2).sum(-1), 0))
    n = len(features)
    return float(d.sum() / (n * (n - 1)))


def real_diversity(apply, images: np.ndarray, labels: np.ndarray, per_prompt: int) -> float:
    """The diversity measure on real digits: ``per_prompt`` of each class (the bundled set is
    sorted by class, so they are taken per class, not from the first rows)."""
    feats = [np.asarray(apply(images[labels == d][:per_prompt])["features"]) for d in range(10)]
    return float(np.mean([mean_pairwise_distance(f) for f in feats]))


def agreement(measured: np.ndarray, median: float, word: str) -> np.ndarray:
    return measured > median if word in ("thick", "right") else measured < median


def score(images: np.ndarray, digits: np.ndarray, asked: list, apply, medians: dict, per_prompt: int) -> dict:
    out = apply(images)
    preds = np.argmax(np.asarray(out["logits"]), -1)
    feats = np.asarray(out["features"])
    measured = captions.measure(images)
    agree = {a: [] for a in ("thickness", "slant")}
    for i, (attr, word) in enumerate(asked):
        agree[attr].append(agreement(measured[attr][i], medians[attr], word))
    n_prompts = len(images) // per_prompt
    diversity = np.mean([mean_pairwise_distance(feats[np.arange(len(images)) % n_prompts == p])
                         for p in range(n_prompts)])
    return {"class_accuracy": float(np.mean(preds == digits)),
            "thickness_agreement": float(np.mean(agree["thickness"])),
            "lean_agreement": float(np.mean(agree["slant"])), "diversity": float(diversity)}


def sweep(args) -> dict:
    config, params, step = sampling.load_run(args.workdir)
    if "text" not in config:
        raise SystemExit(f"{args.workdir} is not a text-conditioned run (its config has no text section)")
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    variables, info = mnist_classifier.load(args.classifier)
    apply = mnist_classifier.make_apply_fn(variables)
    images, labels = load_mnist_5k()
    medians = {k: float(np.median(v)) for k, v in captions.measure(images).items()}
    result_real = real_diversity(apply, images, labels, args.per_prompt)
    result = {"workdir": args.workdir, "step": step, "sampler": args.sampler, "steps": args.steps, "seed": args.seed,
              "per_prompt": args.per_prompt, "cond_drop_prob": config.training.cond_drop_prob,
              "classifier_held_out_accuracy": info["held_out_accuracy"], "medians": medians,
              "real_diversity": result_real, "rows": [], "strips": {}}
    sets = {"training": prompts(captions.TRAIN_TEMPLATES), "held-out": prompts(captions.HELD_OUT_TEMPLATES)}
    result["prompts"] = {k: v[0] for k, v in sets.items()}
    for name, (texts, digits, asked) in sets.items():
        n = len(texts) * args.per_prompt
        order = np.arange(n) % len(texts)  # sample i is drawn for prompt i % len(texts)
        for w in args.weights:
            load_before = os.getloadavg()
            start, cpu_start = time.time(), time.process_time()
            draw = jax.jit(sampling.make_indexed_sampler(config, net, schedule, args.sampler,
                                                         {"steps": args.steps, "guidance_scale": w}, texts))
            chunks = [np.asarray(draw(params, jax.random.PRNGKey(args.seed), np.arange(i, min(i + 200, n)))[0])
                      for i in range(0, n, 200)]
            samples = fid.to_uint8(np.concatenate(chunks), tolerance=None)
            row = {"phrasing": name, "w": w, **score(samples, np.asarray(digits)[order], [asked[j] for j in order],
                                                      apply, medians, args.per_prompt),
                   "seconds": round(time.time() - start, 1), "cpu_seconds": round(time.process_time() - cpu_start, 1),
                   "load_before": [round(x, 1) for x in load_before],
                   "load_after": [round(x, 1) for x in os.getloadavg()]}
            result["rows"].append(row)
            result["strips"][f"{name}/{w:g}"] = samples[:len(texts)].tolist()
            print(json.dumps(row), file=sys.stderr)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump({k: v for k, v in result.items() if k != "strips"}, f, indent=1)
    return result


def table(result: dict) -> str:
    lines = ["| phrasing | w | class accuracy | thickness agreement | lean agreement | diversity | seconds (load) |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['phrasing']} | {r['w']:g} | {r['class_accuracy']:.3f} | {r['thickness_agreement']:.3f} | "
                     f"{r['lean_agreement']:.3f} | {r['diversity']:.2f} | {r['seconds']:.0f} "
                     f"({r['load_before'][0]:.0f}-{r['load_after'][0]:.0f}) |")
    lines.append(f"| real digits | | | | | {result['real_diversity']:.2f} | |")
    return "\n".join(lines)


def plot(result: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    for name, style in (("training", "o-"), ("held-out", "s--")):
        rows = [r for r in result["rows"] if r["phrasing"] == name]
        w = [r["w"] for r in rows]
        axes[0].plot(w, [r["class_accuracy"] for r in rows], style, label=f"class, {name}")
        axes[0].plot(w, [r["thickness_agreement"] for r in rows], style, label=f"thickness, {name}")
        axes[0].plot(w, [r["lean_agreement"] for r in rows], style, label=f"lean, {name}")
        axes[1].plot(w, [r["diversity"] for r in rows], style, label=name)
    axes[0].set(xlabel="guidance weight w", ylabel="agreement with the prompt", title="fidelity")
    axes[0].legend(fontsize=7)
    axes[1].axhline(result["real_diversity"], color="gray", ls=":", label="real digits")
    axes[1].set(xlabel="guidance weight w", ylabel="mean pairwise feature distance", title="diversity")
    axes[1].legend(fontsize=8)
    keys = [k for k in result["strips"] if k.startswith("training/")]
    strips = np.stack([np.asarray(result["strips"][k], np.uint8)[0::4] for k in keys])  # "thin" prompts 0..9
    axes[2].imshow(viz.image_grid(strips.reshape(-1, 28, 28, 1), ncols=10)[..., 0], cmap="gray")
    axes[2].set_yticks([16 + 30 * i for i in range(len(keys))], [k.split("/")[1] for k in keys])
    axes[2].set_xticks([])
    axes[2].set_title("'thin' prompts in training phrasings, digits 0-9 (rows: w)")
    fig.suptitle(f"Text guidance, text2mnist step {result['step']}, {result['sampler']} {result['steps']} steps, "
                 f"{result['per_prompt']} samples per prompt", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/text2mnist")
    p.add_argument("--classifier", default=None, help="default: ~/.cache/diffjax/mnist_classifier.npz")
    p.add_argument("--weights", default="0,1,2,4,8")
    p.add_argument("--per_prompt", type=int, default=10)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/text_guidance_mnist.json")
    p.add_argument("--plot", default="docs/text_guidance_mnist.png")
    args = p.parse_args(argv)
    args.weights = [float(w) for w in args.weights.split(",")]
    result = sweep(args)
    print(table(result))
    if args.plot:
        print(f"wrote {plot(result, args.plot)}", file=sys.stderr)


if __name__ == "__main__":
    main()
