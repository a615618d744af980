"""Checkpoints: an Orbax ``CheckpointManager`` holding the train state, the data-iterator
position, the config of the run and a checksum of every array.

Saves are periodic, asynchronous (training continues while the arrays are written) and atomic
(Orbax writes into a temporary directory and renames it when complete, so a crash during a save
leaves the previous checkpoint usable); the ``keep`` most recent are kept, and with
``keep_period`` every checkpoint whose step is a multiple of it as well (papers report the best
checkpoint's FID). A state with a non-finite value is never saved.

Restoring checks what it read: every array against the checksum written beside it (a flipped
bit changes it) and against non-finite values. :meth:`Checkpointer.restore_latest` falls back
from a damaged checkpoint to the newest good one and keeps the damaged one aside as
``<step>.damaged-<reason>``. Training restores into the shardings of the current mesh and
:meth:`Checkpointer.restore_params` into host arrays, so a checkpoint does not depend on the
device or process topology it was written from. Every failure is one :class:`CheckpointError`
line.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from diffjax import fileio

# Config fields a resumed run must share with the checkpoint: they fix the shapes and meaning of
# the saved arrays (model, schedule, data layout).
COMPATIBILITY_FIELDS = ("model", "schedule", "data.source", "data.image_size", "data.num_channels",
                        "data.num_classes", "data.centered", "optim.optimizer")
# Settings that decide the optimiser state's structure (which optax transformations are chained)
# without being fields themselves: their values may change on resume, these properties may not.
STRUCTURE_PROPERTIES: dict[str, Callable[[dict], Any]] = {
    "optim.weight_decay > 0": lambda c: (_lookup(c, "optim.weight_decay") or 0) > 0,
    "optim.grad_clip > 0": lambda c: (_lookup(c, "optim.grad_clip") or 0) > 0,
    "optim.zero_nonfinite_grads": lambda c: bool(_lookup(c, "optim.zero_nonfinite_grads")),
}
# Config fields whose change on resume is allowed but worth a line (the run is no longer the
# one its first part belonged to).
NOTED_FIELDS = ("seed", "training.batch_size")
# No training reaches this magnitude; a flipped exponent bit does (e.g. 2.85e38).
MAX_MAGNITUDE = 1e30
ITEMS = ("state", "data", "config", "checksums")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used, said in one line; ``reason`` (unreadable,
    corrupt, nonfinite) names its damage."""

    def __init__(self, message: str, reason: str = "unreadable"):
        super().__init__(message)
        self.reason = reason


def _lookup(tree: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _normalise(value: Any) -> Any:
    """JSON turns tuples into lists; compare configs as JSON would store them."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


def incompatibilities(saved: dict, current: dict) -> list[str]:
    """Human-readable differences in :data:`COMPATIBILITY_FIELDS` and
    :data:`STRUCTURE_PROPERTIES` between two config dicts."""
    diffs = []
    for field in COMPATIBILITY_FIELDS:
        a, b = _normalise(_lookup(saved, field)), _normalise(_lookup(current, field))
        if a != b:
            diffs.append(f"{field}: checkpoint has {a!r}, this run has {b!r}")
    for name, prop in STRUCTURE_PROPERTIES.items():
        if prop(saved) != prop(current):
            diffs.append(f"{name}: checkpoint has {prop(saved)}, this run has {prop(current)} "
                         "(it changes the optimiser state's structure)")
    return diffs


def changes(saved: dict, current: dict) -> list[str]:
    """Differences in :data:`NOTED_FIELDS` (allowed on resume, said in one line)."""
    return [f"{field} {_lookup(saved, field)} -> {_lookup(current, field)}" for field in NOTED_FIELDS
            if _normalise(_lookup(saved, field)) != _normalise(_lookup(current, field))]


def _brief(error: BaseException) -> str:
    """The first line of an exception, short enough for one line of output."""
    text = str(error).strip().splitlines()
    text = text[0] if text else ""
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _bits(x: jax.Array) -> jax.Array:
    """The bit pattern of every element as uint32 (8-byte dtypes as two words)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _inspect(tree: Any) -> tuple[Any, jax.Array]:
    """Per array the sum of its bit patterns modulo 2**32 (exact in any reduction order, so the
    same on any topology; one flipped bit changes it), and whether every float is finite and
    below :data:`MAX_MAGNITUDE`."""
    sums = jax.tree.map(lambda x: jnp.sum(_bits(x), dtype=jnp.uint32), tree)
    sound = [jnp.all(jnp.abs(x) < MAX_MAGNITUDE) for x in jax.tree.leaves(tree)  # NaN fails too
             if jnp.issubdtype(x.dtype, jnp.inexact)]
    return sums, jnp.all(jnp.stack(sound)) if sound else jnp.asarray(True)


def _checksums(tree: Any) -> tuple[dict[str, int], bool]:
    sums, sound = jax.device_get(_inspect(tree))
    return {"/".join(map(str, _leaf_key(p))): int(v) for p, v in jax.tree_util.tree_leaves_with_path(sums)}, bool(sound)


def _leaf_key(path: tuple) -> tuple:
    """A path as plain names, the same for a dataclass / namedtuple node and the dict Orbax
    writes for it."""
    return tuple(getattr(p, "name", getattr(p, "key", getattr(p, "idx", p))) for p in path)


class Checkpointer:
    """``save(step, state, data_state, config)``, ``restore(step, abstract_state)``,
    ``restore_latest(abstract_state, ...)``, ``restore_params(step)``."""

    def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True,
                 keep_period: int | None = None):
        self.directory = fileio.normalize(directory)  # a local folder or a bucket URL
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period or None,
                                               create=True, enable_async_checkpointing=asynchronous)
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    **{item: ocp.JsonCheckpointHandler() for item in ITEMS if item != "state"}}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        """Saved steps, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def _read(self, step: int, **items: Any) -> dict:
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as e:  # Orbax, TensorStore and JSON errors alike
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is unreadable "
                                  f"({_brief(e)})") from None

    def saved_config(self, step: int | None = None) -> dict | None:
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self._read(step, config=ocp.args.JsonRestore())["config"]

    def check_compatible(self, config: dict, step: int | None = None, saved: dict | None = None) -> None:
        """Raise before any compute when the checkpoint (its ``saved`` config, else read) was
        written by an incompatible config."""
        step = self.latest_step() if step is None else step
        saved = self.saved_config(step) if saved is None else saved
        diffs = incompatibilities(saved, config) if saved is not None else []
        if diffs:
            raise ValueError(f"the checkpoint in {self.directory} (step {step}) comes from an "
                             "incompatible config; use another workdir or the same settings: "
                             + "; ".join(diffs))

    def save(self, step: int, state: Any, data_state: dict, config: dict, force: bool = False) -> bool:
        """Save unless the state holds a non-finite value (then :class:`CheckpointError`)."""
        sums, sound = _checksums(state)
        if not sound:
            raise CheckpointError(f"refusing to save step {step}: the train state holds a non-finite "
                                  "value (or one above 1e30)", "nonfinite")
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config), checksums=ocp.args.JsonSave(sums)), force=force)

    def _array_metadata(self, step: int) -> Any:
        """The saved state's tree of array metadata (shape, dtype) without reading the arrays."""
        try:
            metadata = self._manager.item_metadata(step)["state"]
        except Exception as e:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is unreadable "
                                  f"({_brief(e)})") from None
        metadata = getattr(metadata, "tree", metadata)
        if not jax.tree.leaves(metadata):
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is unreadable "
                                  "(no array metadata: state/_METADATA missing or empty)")
        return metadata

    def _check_structure(self, step: int, abstract: Any) -> None:
        """A tree that differs from the saved one (code or optimiser change, not damage)."""
        saved = sorted((_leaf_key(p), tuple(m.shape))
                       for p, m in jax.tree_util.tree_leaves_with_path(self._array_metadata(step)))
        wanted = sorted((_leaf_key(p), tuple(x.shape)) for p, x in jax.tree_util.tree_leaves_with_path(abstract))
        if saved != wanted:
            missing = sorted(set(wanted) - set(saved))[:3]
            extra = sorted(set(saved) - set(wanted))[:3]
            raise ValueError(f"the checkpoint in {self.directory} (step {step}) holds a train state "
                             f"of another structure (this run expects {missing or 'nothing more'}, the "
                             f"checkpoint has {extra or 'nothing more'}); use another workdir or the "
                             "code and settings that wrote it")

    def _verify(self, step: int, state: Any, saved_sums: dict | None) -> None:
        sums, sound = _checksums(state)
        bad = sorted(k for k in sums if saved_sums is not None and saved_sums.get(k) != sums[k])
        if bad:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} is corrupt (checksum "
                                  f"mismatch in {len(bad)} array(s), first {bad[0]})", "corrupt")
        if not sound:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} holds non-finite values",
                                  "nonfinite")

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at ``step`` placed as ``abstract_state`` (a pytree of arrays or
        ``jax.ShapeDtypeStruct`` with shardings), and the data-iterator state; verified."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        self._check_structure(step, abstract)
        restored = self._read(step, state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore(),
                              checksums=ocp.args.JsonRestore())
        self._verify(step, restored["state"], restored["checksums"])
        return restored["state"], restored["data"]

    def restore_latest(self, abstract_state: Any, config: dict | None = None,
                       say: Callable[[str], None] = print) -> tuple[int, Any, dict, dict] | None:
        """``(step, state, data_state, saved_config)`` of the newest good checkpoint, or None
        when there is none. A damaged checkpoint (unreadable, corrupt, non-finite) is skipped
        with one line and renamed ``<step>.damaged-<reason>`` once a good one is found; when
        every checkpoint is damaged nothing is renamed and :class:`CheckpointError` names them.
        With ``config``, an incompatible checkpoint is a ``ValueError`` (not damage)."""
        failures = []
        for step in self.steps():
            try:
                saved = self.saved_config(step)
                if config is not None:
                    self.check_compatible(config, step, saved)
                state, data_state = self.restore(step, abstract_state)
            except CheckpointError as e:
                failures.append((step, e))
                continue
            for bad_step, error in failures:
                aside = self._set_aside(bad_step, error.reason)
                say(f"{error}; kept aside as {aside}; using step {step}")
            return step, state, data_state, saved
        if failures:
            raise CheckpointError(f"no usable checkpoint in {self.directory}: "
                                  + "; ".join(str(e) for _, e in failures)
                                  + ". Move the directory away to start afresh")
        return None

    def _set_aside(self, step: int, reason: str) -> str:
        """Rename a damaged step directory out of Orbax's sight (process 0 renames)."""
        source = fileio.join(self.directory, str(step))
        target = f"{source}.damaged-{reason}"
        if jax.process_index() == 0 and fileio.isdir(source):
            n = 1
            while fileio.exists(target):
                n += 1
                target = f"{source}.damaged-{reason}-{n}"
            fileio.rename(source, target)
        self._manager.reload()
        return fileio.join(os.path.basename(self.directory.rstrip("/")), os.path.basename(target))

    def restore_params(self, step: int | None = None) -> dict:
        """The saved state at ``step`` (default: the latest) as a plain nested dict of host numpy
        arrays, whatever devices and processes wrote it (for sampling and evaluation); verified."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        metadata = self._array_metadata(step)
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here), metadata)
        # Checkpoints written before checksums existed are still read (checked for finiteness).
        summed = fileio.isdir(fileio.join(self.directory, str(step), "checksums"))
        restored = self._read(step, state=ocp.args.StandardRestore(abstract),
                              **({"checksums": ocp.args.JsonRestore()} if summed else {}))
        self._verify(step, restored["state"], restored["checksums"] if summed else None)
        return jax.tree.map(np.asarray, restored["state"])

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
