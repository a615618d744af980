"""Checkpoints: an Orbax ``CheckpointManager`` holding the train state, the data-iterator
position and the config of the run.

Saves are periodic, asynchronous (training continues while the arrays are written) and atomic
(Orbax writes into a temporary directory and renames it when complete, so a crash during a save
leaves the previous checkpoint usable); the ``keep`` most recent are kept. The state is saved as
a plain pytree and restored into the shardings of the current mesh, so a checkpoint does not
depend on the device topology it was written from.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# Config fields a resumed run must share with the checkpoint: they fix the shapes and meaning of
# the saved arrays (model, schedule, data layout, optimiser-state structure).
COMPATIBILITY_FIELDS = ("model", "schedule", "data.source", "data.image_size", "data.num_channels",
                        "data.num_classes", "data.centered", "optim.optimizer")


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
    """Human-readable differences in :data:`COMPATIBILITY_FIELDS` between two config dicts."""
    diffs = []
    for field in COMPATIBILITY_FIELDS:
        a, b = _normalise(_lookup(saved, field)), _normalise(_lookup(current, field))
        if a != b:
            diffs.append(f"{field}: checkpoint has {a!r}, this run has {b!r}")
    return diffs


class Checkpointer:
    """``save(step, state, data_state, config)``, ``restore(step, abstract_state)``."""

    def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=asynchronous)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data", "config"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def saved_config(self, step: int | None = None) -> dict | None:
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return restored["config"]

    def check_compatible(self, config: dict) -> None:
        """Raise before any compute when the latest checkpoint was written by an incompatible config."""
        saved = self.saved_config()
        if saved is None:
            return
        diffs = incompatibilities(saved, config)
        if diffs:
            raise ValueError(f"the checkpoint in {self.directory} (step {self.latest_step()}) comes "
                             "from an incompatible config; use another workdir or the same settings:\n  "
                             + "\n  ".join(diffs))

    def save(self, step: int, state: Any, data_state: dict, config: dict, force: bool = False) -> bool:
        return self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config)), force=force)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """The state at ``step`` placed as ``abstract_state`` (a pytree of arrays or
        ``jax.ShapeDtypeStruct`` with shardings), and the data-iterator state."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        return restored["state"], restored["data"]

    def restore_params(self, step: int | None = None) -> dict:
        """The saved state as a plain nested dict of host arrays (for sampling and evaluation)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return restored["state"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
