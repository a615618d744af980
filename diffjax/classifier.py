"""Noise-conditional classifiers for classifier guidance (Dhariwal & Nichol 2021, Sec. 4, Alg. 1-2).

``python -m diffjax.classifier --config=classifier/mnist --workdir=DIR`` trains
``p_phi(y | x_t, t)`` on noisy images ``x_t = alpha(t) x_0 + sigma(t) eps`` with ``t`` drawn
uniformly from the diffusion config's schedule (integer steps for DDPM schedules, as the
diffusion loss draws them), by cross-entropy. The network is a small version of ADM's
encoder-half classifier: the time embedding of the DDPM UNet, residual blocks with the time
embedding added, strided downsampling, then (instead of ADM's attention pooling) GroupNorm,
SiLU, global average pooling and a linear head. It sees the noise label ``schedule.c_noise(t)``
the diffusion network sees.

Checkpoints are Orbax (``diffjax.checkpoint.Checkpointer``) under ``DIR/checkpoints`` with the
config; :func:`load` reads them back, :func:`log_prob_fn` gives the ``log p(y | x_t, t)`` that
``diffjax.samplers.guidance.classifier`` adds to a model's score (Alg. 1:
``eps_hat = eps - s sigma(t) grad_x log p_phi(y | x_t)``).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from diffjax import checkpoint as ckpt_lib
from diffjax import configs
from diffjax.losses import _noised, _uniform_time
from diffjax.models.layers import default_init, sinusoidal_embedding
from diffjax.models.unet import ResnetBlock
from diffjax.samplers import guidance

Array = jax.Array


class NoisyClassifier(nn.Module):
    """``x (B, H, W, C), noise_labels (B,) -> logits (B, num_classes)``."""

    num_classes: int = 10
    ch: int = 16
    ch_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 1
    num_groups: int = 8

    @nn.compact
    def __call__(self, x: Array, noise_labels: Array) -> Array:
        if x.ndim != 4:
            raise ValueError(f"NoisyClassifier expects x of shape (B, H, W, C), got {x.shape}")
        labels = jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (x.shape[0],))
        temb = sinusoidal_embedding(labels, self.ch)
        temb = nn.Dense(4 * self.ch, kernel_init=default_init())(temb)
        temb = nn.Dense(4 * self.ch, kernel_init=default_init())(nn.swish(temb))
        h = nn.Conv(self.ch, (3, 3), padding=1, kernel_init=default_init())(x)
        for i, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResnetBlock(self.ch * mult, num_groups=self.num_groups)(h, temb, False)
            if i < len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=2, padding=1, kernel_init=default_init())(h)
        h = nn.swish(nn.GroupNorm(self.num_groups)(h))
        return nn.Dense(self.num_classes, kernel_init=default_init())(jnp.mean(h, axis=(1, 2)))


def build(config: Any) -> tuple[NoisyClassifier, Any]:
    """The classifier and the diffusion schedule named by ``config`` (no compute)."""
    from diffjax import schedules

    c = config.classifier
    if c.num_classes < 2:
        raise ValueError(f"a classifier needs classifier.num_classes >= 2, got {c.num_classes}")
    net = NoisyClassifier(num_classes=c.num_classes, ch=c.ch, ch_mult=tuple(c.ch_mult),
                          num_res_blocks=c.num_res_blocks, num_groups=c.num_groups)
    return net, schedules.get(config.schedule)


def init_params(config: Any, net: NoisyClassifier, key: Array) -> Any:
    from diffjax import data as data_lib

    x = jnp.zeros((1, *data_lib.example_shape(config.data)), jnp.float32)
    return net.init(key, x, jnp.zeros((1,), jnp.float32))["params"]


def classifier_fn(net: NoisyClassifier, params: Any, schedule: Any) -> Callable[[Array, Array], Array]:
    """``(x_t, t) -> logits`` taking schedule time, like ``predictions.model_fn``."""

    def fn(x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))
        return net.apply({"params": params}, x, schedule.c_noise(t))

    return fn


def log_prob_fn(net: NoisyClassifier, params: Any, schedule: Any) -> Callable[[Array, Array, Array], Array]:
    """``(x_t, t, y) -> log p_phi(y | x_t, t)`` (B,), for ``guidance.classifier``."""
    return guidance.classifier_log_prob(classifier_fn(net, params, schedule))


def guide(model_fn: Callable[[Array, Array], Array], schedule: Any, prediction: str, net: NoisyClassifier,
          params: Any, labels: Array, scale: float) -> Callable[[Array, Array], Array]:
    """``model_fn`` guided towards ``labels`` (B,) by the classifier with scale ``s``
    (``guidance.classifier``); ``scale = 0`` returns ``model_fn`` itself (no classifier cost)."""
    if isinstance(scale, (int, float)) and scale == 0:
        return model_fn
    return guidance.classifier(model_fn, schedule, prediction, log_prob_fn(net, params, schedule), labels, scale)


def make_guide(workdir: str, diffusion_config: Any, scale: float
               ) -> Callable[[Callable[[Array, Array], Array], Array], Callable[[Array, Array], Array]]:
    """``guide(model_fn, labels) -> model_fn`` for sampling ``diffusion_config``'s model with the
    classifier trained into ``workdir``; checks that the two share a schedule. The result's
    ``num_classes`` says which labels it accepts (samples cycle through them)."""
    from diffjax import schedules

    config, net, _, params = load(workdir)
    check_pair(config, diffusion_config, np.arange(config.classifier.num_classes))
    schedule, prediction = schedules.get(diffusion_config.schedule), diffusion_config.model.prediction

    def fn(model_fn, labels):
        return guide(model_fn, schedule, prediction, net, params, labels, scale)

    fn.num_classes = config.classifier.num_classes
    return fn


def loss(net: NoisyClassifier, params: Any, schedule: Any, x0: Array, y: Array, key: Array
         ) -> tuple[Array, dict]:
    """Mean cross-entropy of ``p_phi(y | x_t, t)``, ``t`` uniform over the schedule (Alg. 1's
    classifier is trained on the noised training data the diffusion model sees), and accuracy."""
    t_key, eps_key = jax.random.split(key)
    t = _uniform_time(t_key, x0.shape[0], schedule, None)
    x_t, _ = _noised(x0, eps_key, t, schedule)
    logits = classifier_fn(net, params, schedule)(x_t, t)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.mean(ce), {"loss": jnp.mean(ce), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


def make_train_step(net: NoisyClassifier, schedule: Any, tx: optax.GradientTransformation) -> Callable:
    """``step(params, opt_state, x0, y, key) -> (params, opt_state, terms)``, jitted."""

    @jax.jit
    def step(params, opt_state, x0, y, key):
        grads, terms = jax.grad(lambda p: loss(net, p, schedule, x0, y, key), has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    return step


def train(config: Any, workdir: str, batches: Iterator[dict] | None = None,
          say: Callable[[str], None] = print) -> tuple[Any, list[dict]]:
    """Train for ``config.training.num_steps`` on ``batches`` (default: the config's data) and
    save the parameters to ``workdir/checkpoints``; returns ``(params, logged terms)``."""
    from diffjax import data as data_lib

    net, schedule = build(config)
    t = config.training
    tx = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip) if config.optim.grad_clip > 0
                     else optax.identity(), optax.adamw(config.optim.lr, weight_decay=config.optim.weight_decay))
    key = jax.random.PRNGKey(config.seed)
    params = init_params(config, net, jax.random.fold_in(key, -1 % 2**31))
    opt_state = tx.init(params)
    step_fn = make_train_step(net, schedule, tx)
    loader = data_lib.get_dataset(config, t.batch_size) if batches is None else batches
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    config_dict = json.loads(json.dumps(config.to_dict()))
    log, start = [], time.time()
    try:
        for step in range(1, t.num_steps + 1):
            batch = next(loader)
            params, opt_state, terms = step_fn(params, opt_state, jnp.asarray(batch["image"]),
                                               jnp.asarray(batch["label"], jnp.int32),
                                               jax.random.fold_in(key, step))
            if step % t.log_every == 0 or step == t.num_steps:
                log.append({"step": step, **{k: float(v) for k, v in terms.items()},
                            "seconds": round(time.time() - start, 1)})
                say(json.dumps(log[-1]))
            if step % t.checkpoint_every == 0 or step == t.num_steps:
                checkpointer.save(step, {"params": params}, {"position": step}, config_dict)
    finally:
        checkpointer.close()
        if batches is None:
            loader.close()
    return params, log


def load(workdir: str, step: int | None = None) -> tuple[Any, NoisyClassifier, Any, Any]:
    """``(config, net, schedule, params)`` of a classifier trained into ``workdir``."""
    from diffjax.sampling import config_from_dict

    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"no classifier checkpoints in {workdir} (expected {directory}); train one "
                                f"with python -m diffjax.classifier --config=classifier/mnist --workdir={workdir}")
    checkpointer = ckpt_lib.Checkpointer(directory, asynchronous=False)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no classifier checkpoint in {directory}")
        saved = checkpointer.saved_config(step)
        if "classifier" not in saved:
            raise ValueError(f"{workdir} holds a diffusion run, not a classifier (its config has no "
                             "classifier section)")
        params = checkpointer.restore_params(step)["params"]
    finally:
        checkpointer.close()
    config = config_from_dict(saved)
    net, schedule = build(config)
    return config, net, schedule, params


def check_pair(classifier_config: Any, diffusion_config: Any, labels: Array | np.ndarray) -> None:
    """The classifier must share the diffusion model's schedule (its noise labels mean the same
    times) and know every label asked for."""
    a, b = classifier_config.schedule.to_dict(), diffusion_config.schedule.to_dict()
    if a != b:
        raise ValueError(f"the classifier was trained on schedule {a}, the diffusion model uses {b}; "
                         "train the classifier with the diffusion config's schedule")
    labels = np.asarray(labels)
    n = classifier_config.classifier.num_classes
    if labels.size and (labels.min() < 0 or labels.max() >= n):
        raise ValueError(f"labels must be in [0, {n - 1}] for this {n}-class classifier, got "
                         f"[{labels.min()}, {labels.max()}]")


def main(argv: list[str]) -> None:
    from ml_collections import config_flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if not flags.FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    config = flags.FLAGS.config
    if "classifier" not in config:
        path = config_flags.get_config_filename(flags.FLAGS["config"])
        raise SystemExit(f"error: {path} has no classifier section; use e.g. --config=classifier/mnist")
    start = time.time()
    try:
        train(config, flags.FLAGS.workdir, say=lambda s: print(s, file=sys.stderr))
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    print(f"trained {config.training.num_steps} steps in {time.time() - start:.0f}s; wrote "
          f"{os.path.join(flags.FLAGS.workdir, 'checkpoints')}")


def cli() -> None:
    from ml_collections import config_flags

    from diffjax.train import _parse_flags

    config_flags.DEFINE_config_file("config", configs.resolve("classifier/mnist"), "classifier config",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "directory for the classifier's checkpoints")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
