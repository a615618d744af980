"""``python -m diffjax.train --config=<experiment> --workdir=DIR``: train a diffusion model.

``--config`` is a packaged config (``ddpm/cifar10``, or as a path ``configs/ddpm/cifar10.py``;
``diffjax.configs.names()`` lists them) or any config file. Without flags it trains ``quickstart`` (a small DDPM UNet on the bundled MNIST
subset, about ten minutes on a laptop CPU) into ``./runs/quickstart``. Every config field can be
overridden (``--config.training.batch_size=64``). Re-running the same command resumes from the
newest good checkpoint in ``DIR`` (a damaged one is set aside as ``<step>.damaged-<reason>``);
SIGTERM or Ctrl-C saves a checkpoint and stops. A non-finite loss or gradient is skipped on device;
``training.max_consecutive_nonfinite`` of them in a row stop the run (``training.nonfinite``).

``DIR`` receives ``checkpoints/`` (Orbax), ``tb/`` (TensorBoard scalars), ``metrics.jsonl``
(one JSON object per logged step), ``samples/step_<N>.png`` (sample grids, or for 2D data a
scatter of samples beside the data) and ``config.json``.

The pieces, each usable on its own: :class:`TrainState`, :func:`make_optimizer`,
:func:`ema_decay`, :func:`build`, :func:`init_state`, :func:`make_train_step`, :func:`train`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging

from diffjax import checkpoint as ckpt_lib
from diffjax import configs
from diffjax import data as data_lib
from diffjax import fileio, parallel, predictions, viz
from diffjax import sampling

Array = jax.Array
DEFAULT_CONFIG = configs.resolve("quickstart")


@flax.struct.dataclass
class TrainState:
    step: Array          # int32 scalar: optimiser updates applied so far
    params: Any
    ema_params: Any
    opt_state: Any
    key: Array           # raw uint32[2] PRNG key, split once per step
    nonfinite_run: Array    # int32: consecutive steps skipped for a non-finite loss or update
    nonfinite_total: Array  # int32: steps skipped so far


# --- optimisation ------------------------------------------------------------------------

def learning_rate(optim: Any) -> Callable[[Array], Array]:
    """Linear warm-up from 0 over ``warmup_steps`` updates, then constant (DDPM, score_sde; EDM's
    ramp in images is the same thing counted in steps)."""

    def schedule(count: Array) -> Array:
        if optim.warmup_steps > 0:
            return optim.lr * jnp.minimum(count / optim.warmup_steps, 1.0)
        return jnp.asarray(optim.lr, jnp.float32)

    return schedule


def _zero_nonfinite() -> optax.GradientTransformation:
    """EDM's guard: NaN gradients become 0 and infinities +-1e5 (training/training_loop.py)."""
    return optax.stateless(lambda g, _: jax.tree.map(
        lambda x: jnp.nan_to_num(x, nan=0.0, posinf=1e5, neginf=-1e5), g))


def make_optimizer(optim: Any) -> optax.GradientTransformation:
    """Adam (AdamW with ``weight_decay``), after optional global-norm clipping (DDPM: 1.0)."""
    if optim.optimizer != "adam":
        raise ValueError(f"optim.optimizer must be 'adam', got {optim.optimizer!r}")
    chain = []
    if optim.zero_nonfinite_grads:
        chain.append(_zero_nonfinite())
    if optim.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(optim.grad_clip))
    lr = learning_rate(optim)
    if optim.weight_decay > 0:
        chain.append(optax.adamw(lr, optim.beta1, optim.beta2, optim.eps, weight_decay=optim.weight_decay))
    else:
        chain.append(optax.adam(lr, optim.beta1, optim.beta2, optim.eps))
    return optax.chain(*chain)


def ema_decay(optim: Any, step: Array, batch_size: int) -> Array:
    """EMA decay for the update after ``step`` updates: the constant ``ema_decay``, or with
    ``ema_halflife_kimg`` EDM's ``0.5 ** (batch / half_life)`` whose half-life (in images) ramps
    up as ``ema_rampup_ratio * images_seen`` (Karras et al. 2022, App. F.1)."""
    if optim.ema_halflife_kimg <= 0:
        return jnp.asarray(optim.ema_decay, jnp.float32)
    half_life = jnp.asarray(optim.ema_halflife_kimg * 1000.0, jnp.float32)
    if optim.ema_rampup_ratio > 0:
        half_life = jnp.minimum(half_life, step.astype(jnp.float32) * batch_size * optim.ema_rampup_ratio)
    return 0.5 ** (batch_size / jnp.maximum(half_life, 1e-8))


# --- construction --------------------------------------------------------------------------

def build(config: Any) -> tuple[Any, Any, Callable, optax.GradientTransformation]:
    """The network, schedule, loss and optimiser named by ``config`` (no compute)."""
    from diffjax import losses, models, schedules

    net = models.get_model(config.model)
    if config.training.compute_dtype != "float32":
        model_config = ml_collections.ConfigDict(config.model.to_dict())
        model_config.dtype = config.training.compute_dtype
        try:
            net = models.get_model(model_config)
        except ValueError:
            raise ValueError(f"training.compute_dtype={config.training.compute_dtype!r}: model "
                             f"{config.model.name!r} has no dtype argument (it computes in float32); "
                             "set training.compute_dtype='float32'") from None
    return (net, schedules.get(config.schedule),
            losses.get(config.loss, prediction=config.model.prediction), make_optimizer(config.optim))


def _dummy_inputs(config: Any, n: int = 1) -> tuple[Array, Array, Array | None]:
    x = jnp.zeros((n, *data_lib.example_shape(config.data)), jnp.float32)
    y = jnp.zeros((n,), jnp.int32) if config.data.num_classes else None
    return x, jnp.zeros((n,), jnp.float32), y


def _dummy_context(config: Any, n: int = 1) -> tuple[Array, Array] | None:
    if "text" not in config:
        return None
    return (jnp.zeros((n, config.text.max_tokens, config.model.context_dim), jnp.float32),
            jnp.ones((n, config.text.max_tokens), bool))


def init_state(config: Any, net: Any, tx: optax.GradientTransformation, key: Array) -> TrainState:
    init_key, dropout_key, state_key = jax.random.split(key, 3)
    x, noise_labels, y = _dummy_inputs(config)
    params = net.init({"params": init_key, "dropout": dropout_key}, x, noise_labels, y=y, train=False,
                      **sampling.context_kwargs(_dummy_context(config)))["params"]
    zero = jnp.zeros((), jnp.int32)
    return TrainState(step=zero, params=params, ema_params=jax.tree.map(jnp.copy, params),
                      opt_state=tx.init(params), key=state_key, nonfinite_run=zero, nonfinite_total=zero)


def _conditioning(config: Any, batch: dict, key: Array) -> Array | None:
    """Class labels for the network; with ``cond_drop_prob`` some become the null label
    ``num_classes`` (classifier-free guidance, Ho & Salimans 2021, Algorithm 1)."""
    num_classes = config.data.num_classes
    if not num_classes:
        return None
    y = batch["label"]
    p = config.training.cond_drop_prob
    if p > 0:
        y = jnp.where(jax.random.uniform(key, y.shape) < p, num_classes, y)
    return y


def _context(config: Any, batch: dict) -> tuple[Array, Array] | None:
    """The text context ``(tokens, mask)`` of a text-conditioned batch; the loader has already
    put the null caption in place of the dropped ones (``diffjax.data.captions``)."""
    return (batch["context"], batch["context_mask"]) if "text" in config else None


DROPOUT_RNGS = ("threefry", "rbg", "unsafe_rbg")


def dropout_rng_key(key: Array, impl: str) -> Array:
    """The key the network's dropout draws its masks from. ``"threefry"``: ``key`` itself (JAX's
    default generator; the masks do not depend on how the batch is sharded). ``"rbg"`` /
    ``"unsafe_rbg"``: a key of that implementation seeded from ``key``, whose bits come from XLA's
    RngBitGenerator (the hardware generator on TPU; much cheaper than threefry's hash there), at
    the price of masks that depend on the device layout. The training state keeps its threefry
    key either way, so checkpoints are the same."""
    if impl == "threefry":
        return key
    if impl not in DROPOUT_RNGS:
        raise ValueError(f"training.dropout_rng must be one of {DROPOUT_RNGS}, got {impl!r}")
    return jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl=impl)


def make_train_step(config: Any, net: Any, schedule: Any, loss_fn: Callable,
                    tx: optax.GradientTransformation, mesh: Any = None
                    ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """``step(state, batch) -> (state, metrics)``: one optimiser update on ``batch`` (split into
    ``grad_accum`` micro-batches whose gradients are averaged), then the EMA update. With
    ``steps_per_call > 1`` the batch has a leading axis of that size and the updates run in a
    ``lax.scan``; metrics are averaged over them. ``mesh``: the mesh the step is compiled for
    (``parallel.jit_step``); with ``fsdp > 1`` it makes the step gather the split parameters
    itself (:func:`parallel.gather_params`) instead of leaving the layout to XLA's partitioner."""
    accum = config.training.grad_accum
    lr_fn = learning_rate(config.optim)

    def loss_of(params: Any, batch: dict, key: Array) -> tuple[Array, dict]:
        dropout_key, loss_key, cond_key = jax.random.split(key, 3)
        # With fsdp: gathered whole here (per micro-batch, as ZeRO-3 does); the constraint's
        # transpose makes the gradients whole too, and the optimiser keeps the split.
        params = parallel.gather_params(params, mesh)
        dropout_key = dropout_rng_key(dropout_key, config.training.get("dropout_rng", "threefry"))
        y = _conditioning(config, batch, cond_key)
        fn = predictions.model_fn(
            sampling.network_fn(net, params, y, context=_context(config, batch), train=True,
                                dropout_key=dropout_key), schedule)
        return loss_fn(fn, batch["image"], loss_key, schedule)

    grad_fn = jax.value_and_grad(loss_of, has_aux=True)

    def gradients(params: Any, batch: dict, key: Array) -> tuple[Array, dict, Any]:
        if accum == 1:
            (loss, terms), grads = grad_fn(params, batch, key)
            return loss, terms, grads
        # Micro-batch a takes rows a, a + accum, ...: every device keeps its own rows.
        micro = jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)

        def body(total, inputs):
            return jax.tree.map(jnp.add, total, grad_fn(params, *inputs)), None

        keys = jax.random.split(key, accum)
        first = jax.tree.map(lambda x: x[0], (micro, keys))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, params, *first))
        ((loss, terms), grads), _ = jax.lax.scan(body, zeros, (micro, keys))
        return jax.tree.map(lambda v: v / accum, (loss, terms, grads))

    def one_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key, step_key = jax.random.split(state.key)
        loss, terms, grads = gradients(state.params, batch, step_key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        decay = ema_decay(config.optim, state.step, config.training.batch_size)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
        # A non-finite loss or gradient is skipped on device (no host round trip): the step and
        # the key advance, params, EMA and optimiser state stay; the loop reads the counters.
        # One scalar decides: the loss and the global gradient norm (finite gradients give a
        # finite Adam update; with ``zero_nonfinite_grads`` the optimiser sanitises them itself).
        # Testing every leaf of the new state instead made XLA's compile of the step 11x slower
        # and 4x larger in memory (bench/RESULTS.md, "Compile time").
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(loss)
        if not config.optim.zero_nonfinite_grads:
            ok = ok & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        run = jnp.where(ok, 0, state.nonfinite_run + 1)
        metrics = {"loss": loss, **{f"loss/{k}": v for k, v in terms.items()},
                   "grad_norm": grad_norm, "lr": lr_fn(state.step), "ema_decay": decay,
                   "skipped": 1.0 - ok.astype(jnp.float32)}
        return TrainState(step=state.step + 1, params=keep(params, state.params), ema_params=keep(ema, state.ema_params),
                          opt_state=keep(opt_state, state.opt_state), key=key, nonfinite_run=run,
                          nonfinite_total=state.nonfinite_total + (1 - ok.astype(jnp.int32))), metrics

    if config.training.steps_per_call == 1:
        return one_step

    def several_steps(state: TrainState, batches: dict) -> tuple[TrainState, dict]:
        state, metrics = jax.lax.scan(one_step, state, batches)
        return state, jax.tree.map(jnp.mean, metrics)

    return several_steps


# --- validation (before any compute) --------------------------------------------------------

def validate(config: Any) -> None:
    """Clear errors for settings that would otherwise fail late or silently."""
    reference = _default_config()
    for section in ("training", "data", "model", "schedule", "loss", "sampler", "optim", "eval", "parallel"):
        if section not in config:
            raise ValueError(f"config has no section {section!r}")
    for section in ("training", "data", "optim"):
        unknown = sorted(set(config[section].keys()) - set(reference[section].keys()))
        if unknown:
            raise ValueError(f"unknown field(s) config.{section}.{unknown}; known: {sorted(reference[section].keys())}")
    t = config.training
    for name in ("num_steps", "batch_size", "log_every", "checkpoint_every", "sample_every",
                 "steps_per_call", "grad_accum"):
        if t[name] < 1 and not (name == "sample_every" and t[name] == 0):
            raise ValueError(f"training.{name} must be positive, got {t[name]}")
    if t.num_steps % t.steps_per_call:
        raise ValueError(f"training.num_steps={t.num_steps} is not a multiple of training.steps_per_call={t.steps_per_call}")
    if t.get("dropout_rng", "threefry") not in DROPOUT_RNGS:
        raise ValueError(f"training.dropout_rng must be one of {DROPOUT_RNGS}, got {t.dropout_rng!r}")
    if t.compute_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"training.compute_dtype must be 'float32' or 'bfloat16', got {t.compute_dtype!r}")
    if config.model.prediction not in predictions.KINDS:
        raise ValueError(f"model.prediction must be one of {predictions.KINDS}, got {config.model.prediction!r}")
    if t.cond_drop_prob > 0 and not config.data.num_classes and "text" not in config:
        raise ValueError("training.cond_drop_prob > 0 needs a class-conditional model (data.num_classes > 0) "
                         "or a text-conditioned one (a config.text section)")
    if "text" in config and not config.model.get("context_dim"):
        raise ValueError("a text-conditioned config (config.text) needs a network with cross-attention: "
                         "set model.context_dim to the text encoder's width")
    if t.nonfinite not in ("skip", "stop"):
        raise ValueError(f"training.nonfinite must be 'skip' or 'stop', got {t.nonfinite!r}")
    if t.max_consecutive_nonfinite < 1 or t.keep_period < 0:
        raise ValueError("training.max_consecutive_nonfinite must be positive and training.keep_period "
                         f"non-negative, got {t.max_consecutive_nonfinite} and {t.keep_period}")
    _validate_optim(config.optim)
    from diffjax import evaluate

    evaluate.eval_options(config)  # unknown eval.metrics
    sampling.check_sampler(config)  # the sample grids' sampler and its options


def _validate_optim(optim: Any) -> None:
    positive, non_negative = (lambda v: v > 0, "> 0"), (lambda v: v >= 0, ">= 0")
    ranges = {"lr": positive, "eps": positive, "weight_decay": non_negative, "grad_clip": non_negative,
              "warmup_steps": non_negative, "ema_halflife_kimg": non_negative, "ema_rampup_ratio": non_negative,
              "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"), "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
              "ema_decay": (lambda v: 0 <= v <= 1, "in [0, 1]")}
    for name, (ok, expected) in ranges.items():
        if not ok(optim[name]):
            raise ValueError(f"optim.{name} must be {expected}, got {optim[name]}")


def _default_config() -> ml_collections.ConfigDict:
    from diffjax.configs import default

    return default.get_config()


def check_workdir(workdir: str) -> None:
    """Create ``workdir`` (a local folder or a bucket URL, see :mod:`diffjax.fileio`) and prove it
    writable before any compute."""
    if workdir.startswith("gs://"):
        try:
            import google.cloud.storage  # noqa: F401  (tensorboardX writes gs:// event files with it)
        except ImportError:
            raise ValueError(f"workdir {workdir!r}: writing TensorBoard events to gs:// needs "
                             "google-cloud-storage; pip install 'diffjax[gcs]'") from None
    try:
        fileio.makedirs(workdir)
        probe = fileio.join(workdir, f".write_test_{os.getpid()}")
        fileio.write_atomic(probe, "ok")
        fileio.remove(probe)
    except ImportError as e:  # gcsfs (or s3fs) missing for a bucket URL
        raise ValueError(f"workdir {workdir!r} needs a file system package that is not installed ({e}); "
                         "for gs:// install diffjax[gcs] (gcsfs)") from None
    except Exception as e:  # OSError locally; the object store's own errors remotely
        raise ValueError(f"workdir {workdir!r} is not writable: {type(e).__name__}: {e}") from None


# --- the loop ------------------------------------------------------------------------------

class _Stop:
    """Set by SIGTERM or SIGINT (Ctrl-C); the loop saves a checkpoint and returns at the next
    step boundary."""

    def __init__(self):
        self.requested = None

    def __call__(self, signum, frame):
        self.requested = signal.Signals(signum).name


class NonFiniteError(RuntimeError):
    """Training stopped on non-finite losses or updates (``training.nonfinite``), said in one line."""


class _Logger:
    """TensorBoard scalars, metrics.jsonl and the progress bar (process 0 only)."""

    def __init__(self, workdir: str, total: int, initial: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter
        from tqdm import tqdm

        # A resumed run redoes the steps after its checkpoint: drop what they logged before.
        self.tb = SummaryWriter(fileio.join(workdir, "tb"), purge_step=initial + 1 if initial else None)
        self.path = fileio.join(workdir, "metrics.jsonl")
        if fileio.exists(self.path):
            kept = [line for line in fileio.read_text(self.path).splitlines(keepends=True)
                    if _keep_record(line, initial)]
            fileio.write_atomic(self.path, "".join(kept))
        self.bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.enabled:
            self.bar.update(n)

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        for k, v in metrics.items():
            self.tb.add_scalar(k, v, step)
        self.tb.flush()
        fileio.append_lines(self.path, [json.dumps({"step": step, **metrics}) + "\n"])
        self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", img_s=f"{metrics.get('images_per_sec', 0):.0f}")

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.tb.close()


def _keep_record(line: str, step: int) -> bool:
    """A metrics.jsonl line to keep when resuming at ``step``: evaluations, and training
    records up to ``step``."""
    try:
        record = json.loads(line)
    except ValueError:
        return False  # a line cut short by a kill
    return record.get("step", 0) <= step or any(k.startswith("eval/") for k in record)


def _say(message: str) -> None:
    """A line for the person watching (process 0), printed above the progress bar."""
    if jax.process_index() == 0:
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr)


def _crossed(before: int, after: int, every: int) -> bool:
    return every > 0 and after // every > before // every


def _write_samples(config: Any, sample_fn: Callable, params: Any, step: int, workdir: str,
                   loader: data_lib.Loader, write: bool) -> str:
    """Sample on every host (the params are global arrays); process 0 writes the picture."""
    key = jax.random.PRNGKey(config.seed + 1)  # the same noise at every step: grids are comparable
    samples, _, _ = sample_fn(params, key)
    samples = np.asarray(samples)
    path = fileio.join(workdir, "samples", f"step_{step:07d}.png")
    if not write:
        return path
    if samples.ndim == 2:
        reference = loader.source.reference(len(samples))
        return viz.save_scatter(path, samples, reference, title=f"samples, step {step}")
    return viz.save_image_grid(path, samples, centered=config.data.centered,
                               scale=max(1, 128 // config.data.image_size))


class Run:
    """Everything a training run needs, built and checked before any training compute."""

    def __init__(self, config: Any, workdir: str):
        validate(config)
        parallel.enable_compilation_cache(config.training.get("compilation_cache", ""))
        parallel.initialize(config.parallel.distributed,
                            **{k: config.parallel.get(k) for k in parallel.PROCESS_FIELDS})
        check_workdir(workdir)
        self.config, self.workdir = config, workdir
        t = config.training
        self.mesh = parallel.make_mesh(config.parallel.fsdp)
        parallel.check_batch_size(t.batch_size, self.mesh, t.grad_accum)
        self.config_dict = json.loads(json.dumps(config.to_dict()))
        self.checkpointer = ckpt_lib.Checkpointer(fileio.join(workdir, "checkpoints"), t.keep_checkpoints,
                                                  keep_period=t.keep_period)
        self.is_main = jax.process_index() == 0
        self.loader = data_lib.get_dataset(config, t.batch_size // jax.process_count(),
                                           jax.process_index(), jax.process_count())
        self.net, self.schedule, self.loss_fn, self.tx = build(config)
        self._init = lambda: init_state(config, self.net, self.tx, jax.random.PRNGKey(config.seed))  # noqa: E731
        abstract = jax.eval_shape(self._init)
        self.shardings = parallel.state_sharding(abstract, self.mesh)
        # The newest good checkpoint (damaged ones are set aside), read into this mesh.
        try:
            self.resumed = self.checkpointer.restore_latest(
                jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, self.shardings),
                self.config_dict, say=_say)
        except ValueError:
            self.checkpointer.close()
            raise
        if self.resumed and (changed := ckpt_lib.changes(self.resumed[3], self.config_dict)):
            _say(f"note: resuming step {self.resumed[0]} with {', '.join(changed)}: the run continues, "
                 "but differs from one trained with the new settings throughout")

    def initial_state(self) -> TrainState:
        """A fresh state, or the newest good checkpoint's (which also repositions the data iterator)."""
        if self.resumed is None:
            return jax.jit(self._init, out_shardings=self.shardings)()
        step, state, data_state, _ = self.resumed
        self.loader.restore(data_state)
        _say(f"resumed from {self.checkpointer.directory} at step {step} (data position {self.loader.position})")
        return state

    def _check_nonfinite(self, state: TrainState, step: int) -> None:
        """Read the non-finite counters (one small transfer, at log, save and every
        ``max_consecutive_nonfinite`` steps) and stop as ``training.nonfinite`` says."""
        t = self.config.training
        run, total = (int(x) for x in jax.device_get((state.nonfinite_run, state.nonfinite_total)))
        if total > self._skipped:
            _say(f"step {step}: {total - self._skipped} step(s) skipped for a non-finite loss or update "
                 f"({total} in all)")
        if (t.nonfinite == "stop" and total > self._skipped) or run >= t.max_consecutive_nonfinite:
            self.checkpointer.wait()
            last = self.checkpointer.latest_step()
            first_bad = step - run + 1 if run else step
            raise NonFiniteError(
                f"non-finite loss or update at step {first_bad}" + (f" and the {run - 1} after it" if run > 1 else "")
                + f" (training.nonfinite={t.nonfinite!r}, max_consecutive_nonfinite={t.max_consecutive_nonfinite}); "
                "stopped without saving; last good checkpoint: "
                + (f"step {last} in {self.checkpointer.directory}" if last is not None else "none yet")
                + f"; likely causes: a learning rate too high (optim.lr={self.config.optim.lr}), no or loose "
                f"gradient clipping (optim.grad_clip={self.config.optim.grad_clip}), or NaN/inf in the data")
        self._skipped = total

    def loop(self, state: TrainState) -> TrainState:
        config, workdir, loader, mesh = self.config, self.workdir, self.loader, self.mesh
        t = config.training
        step = first = int(state.step)
        n_params = sum(x.size for x in jax.tree.leaves(state.params))
        _say(f"{config.model.name}: {n_params:,} parameters; {mesh.devices.size} {jax.devices()[0].platform} "
             f"device(s), mesh {dict(mesh.shape)}; global batch {t.batch_size}; workdir {workdir}")
        if self.is_main:
            fileio.write_json(fileio.join(workdir, "config.json"), self.config_dict, indent=2)
        leading = 1 if t.steps_per_call > 1 else 0
        step_fn = parallel.jit_step(make_train_step(config, self.net, self.schedule, self.loss_fn, self.tx, mesh),
                                    self.shardings, mesh, leading)
        draw = sampling.make_sampler(config, self.net, self.schedule)
        sample_fn = jax.jit(lambda params, key: draw(parallel.gather_params(params, mesh), key, t.num_grid_samples),
                            out_shardings=parallel.replicated(mesh))

        stop = _Stop()
        previous_handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        logger = _Logger(workdir, t.num_steps, step, self.is_main)
        window_start, window_images = time.time(), 0
        self._skipped = int(state.nonfinite_total)
        try:
            while step < t.num_steps and not stop.requested:
                batches = [next(loader) for _ in range(t.steps_per_call)]
                batch = batches[0] if not leading else jax.tree.map(lambda *xs: np.stack(xs), *batches)
                state, metrics = step_fn(state, parallel.global_batch(batch, mesh, leading))
                before, step = step, step + t.steps_per_call
                window_images += t.steps_per_call * t.batch_size
                logger.advance(t.steps_per_call)
                log = _crossed(before, step, t.log_every) or before == first
                save = _crossed(before, step, t.checkpoint_every)
                if log or save or _crossed(before, step, t.max_consecutive_nonfinite):
                    self._check_nonfinite(state, step)
                if log:
                    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    metrics["images_per_sec"] = window_images / max(time.time() - window_start, 1e-9)
                    logger.write(step, metrics)
                    window_start, window_images = time.time(), 0
                if save:
                    self.checkpointer.save(step, state, loader.state(), self.config_dict)
                if t.sample_every and _crossed(before, step, t.sample_every) and step != t.num_steps:
                    self._samples(sample_fn, state, step)
            self._check_nonfinite(state, step)
            if stop.requested:
                _say(f"{stop.requested}: saving a checkpoint at step {step} and stopping")
            if self.checkpointer.latest_step() != step:
                self.checkpointer.save(step, state, loader.state(), self.config_dict, force=True)
            self.checkpointer.wait()
            _say(f"checkpoint of step {step} in {self.checkpointer.directory}")
            if t.sample_every and step == t.num_steps and not stop.requested:  # after the save: a bad grid loses nothing
                self._samples(sample_fn, state, step)
        finally:
            self.checkpointer.close()
            self.loader.close()
            logger.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        return state

    def _samples(self, sample_fn: Callable, state: TrainState, step: int) -> None:
        path = _write_samples(self.config, sample_fn, state.ema_params, step, self.workdir, self.loader,
                              self.is_main)
        _say(f"step {step}: samples in {path}")


def train(config: Any, workdir: str) -> TrainState:
    """Train (or resume) the run in ``workdir``; returns the final state."""
    run = Run(config, workdir)
    return run.loop(run.initial_state())


# --- command line ----------------------------------------------------------------------------

def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing with a readable error for a mistyped ``--config.<field>``; ``--config``
    names a file or a packaged config (``diffjax.configs.resolve``)."""
    try:
        return flags.FLAGS(configs.resolve_argv(argv))
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    except (AttributeError, KeyError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        raise SystemExit(f"error: unknown config field in {bad}: {e}. The fields are those of the "
                         "config file and configs/default.py.")
    except flags.Error as e:
        raise SystemExit(f"error: {e}")


def main(argv: list[str]) -> None:
    from ml_collections import config_flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    workdir = flags.FLAGS.workdir or os.path.join("runs", os.path.splitext(os.path.basename(config_path))[0])
    try:
        run = Run(flags.FLAGS.config, workdir)  # bad settings and checkpoints, found before any compute
    except ValueError as e:
        raise SystemExit(f"error: {e}")
    try:
        run.loop(run.initial_state())
    except (ckpt_lib.CheckpointError, NonFiniteError) as e:
        raise SystemExit(f"error: {e}")


def cli() -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "experiment config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "run directory (default: ./runs/<config file name>)")
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    cli()
