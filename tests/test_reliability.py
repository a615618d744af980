"""A training run that never silently goes bad (issue 10): non-finite steps are skipped and stop the
run, damaged checkpoints are set aside for the newest good one, optimiser-structure changes and
bad settings are refused before any compute, the final grid comes after the final save, and a
resumed run logs every step once."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffjax import checkpoint, train
from diffjax.configs import toy2d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_toy(**training):
    config = toy2d.get_config()
    config.model.update(hidden=32, depth=1)
    config.training.update(dict(num_steps=4, batch_size=32, log_every=1, checkpoint_every=2,
                                sample_every=0), **training)
    return config


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def read_params(workdir, step):
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
    try:
        return ckpt.restore_params(step)
    finally:
        ckpt.close()


def all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


# --- 1. non-finite losses ---------------------------------------------------------------------

class _PoisonedLoader:
    """The run's loader with NaN images in the batches of the given steps (1-based)."""

    def __init__(self, loader, steps):
        self.loader, self.steps, self.count = loader, set(steps), 0

    def __next__(self):
        batch = dict(next(self.loader))
        self.count += 1
        if self.count in self.steps:
            batch["image"] = np.full_like(batch["image"], np.nan)
        return batch

    def __getattr__(self, name):
        return getattr(self.loader, name)


def test_a_nan_batch_is_skipped_on_device_and_training_continues(tmp_path):
    run = train.Run(tiny_toy(num_steps=4), str(tmp_path))
    run.loader = _PoisonedLoader(run.loader, steps=[2])
    state = run.loop(run.initial_state())
    assert int(state.step) == 4 and int(state.nonfinite_total) == 1 and int(state.nonfinite_run) == 0
    assert all_finite(state.params) and all_finite(state.opt_state)
    assert [r["skipped"] for r in records(tmp_path)] == [0.0, 1.0, 0.0, 0.0]
    assert all_finite(read_params(tmp_path, 2))


def test_a_diverging_run_stops_naming_the_step_and_the_last_good_checkpoint(tmp_path):
    config = tiny_toy(num_steps=40, checkpoint_every=2, log_every=100, max_consecutive_nonfinite=3)
    config.optim.update(lr=1e6, warmup_steps=0, grad_clip=0.0)
    with pytest.raises(train.NonFiniteError, match=r"non-finite loss or update at step \d+ and the [23] after "
                       r"it .*last good checkpoint: step \d+ .*learning rate") as error:
        train.train(config, str(tmp_path))
    assert "\n" not in str(error.value)
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps and steps[-1] < 40 and f"step {steps[-1]} in" in str(error.value)
    for step in steps:  # every kept checkpoint is finite
        assert all_finite(read_params(tmp_path, step))


def test_policy_stop_stops_at_the_first_nonfinite_step(tmp_path):
    run = train.Run(tiny_toy(num_steps=6, nonfinite="stop", max_consecutive_nonfinite=2), str(tmp_path))
    run.loader = _PoisonedLoader(run.loader, steps=[3])
    with pytest.raises(train.NonFiniteError, match="at step 3 "):
        run.loop(run.initial_state())


def test_a_nonfinite_state_is_never_saved(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), asynchronous=False)
    with pytest.raises(checkpoint.CheckpointError, match="refusing to save step 7"):
        ckpt.save(7, {"w": np.array([1.0, np.nan], np.float32)}, {}, {})
    assert ckpt.latest_step() is None
    ckpt.close()


# --- 3. damaged checkpoints --------------------------------------------------------------------

def _array_files(step_dir):
    return sorted((f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
                   if os.path.isfile(f)), key=os.path.getsize)


def _truncate(step_dir):
    for f in _array_files(step_dir):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _flip_exponent_bits(step_dir):
    """Flip bits in the largest array file (e.g. 1.0 becomes 2.85e38 or NaN)."""
    f = _array_files(step_dir)[-1]
    data = bytearray(open(f, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 64, 4):
        data[i + 3] ^= 0x40
    open(f, "wb").write(bytes(data))


DAMAGE = {
    "truncated arrays": _truncate,
    "missing arrays": lambda d: [os.remove(f) for f in _array_files(d)],
    "missing _METADATA": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "missing item": lambda d: shutil.rmtree(os.path.join(d, "data")),
    "empty JSON": lambda d: [open(f, "w").close() for f in glob.glob(os.path.join(d, "config", "*"))
                             if os.path.isfile(f) and "commit" not in f],
    "flipped bits": _flip_exponent_bits,
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("trained")
    train.train(tiny_toy(), str(workdir))  # checkpoints 2 and 4
    return workdir


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_good_one(trained, tmp_path, capsys, damage):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    DAMAGE[damage](str(workdir / "checkpoints" / "4"))
    run = train.Run(tiny_toy(num_steps=6), str(workdir))
    err = capsys.readouterr().err
    line = [l for l in err.splitlines() if "checkpoint step 4" in l]
    assert len(line) == 1 and "using step 2" in line[0], err
    assert run.resumed[0] == 2
    aside = [d for d in os.listdir(workdir / "checkpoints") if d.startswith("4.damaged-")]
    assert len(aside) == 1 and aside[0] in line[0]
    run.checkpointer.close()


def test_when_every_checkpoint_is_damaged_the_error_is_one_line_and_nothing_is_moved(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    for step in ("2", "4"):
        os.remove(workdir / "checkpoints" / step / "state" / "_METADATA")
    with pytest.raises(checkpoint.CheckpointError, match=r"no usable checkpoint .*step 4.*step 2") as error:
        train.Run(tiny_toy(num_steps=6), str(workdir))
    assert "\n" not in str(error.value)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_periodic_snapshots_are_kept_besides_the_latest(tmp_path):
    train.train(tiny_toy(num_steps=7, checkpoint_every=1, keep_checkpoints=2, keep_period=3), str(tmp_path))
    assert sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit()) == [3, 6, 7]


# --- 5. resuming with other settings ---------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("weight_decay", 1e-4), ("grad_clip", 0.0),
                                          ("zero_nonfinite_grads", True)])
def test_an_optimiser_structure_change_on_resume_is_one_clear_line(trained, tmp_path, field, value):
    shutil.copytree(trained, tmp_path / "run")
    config = tiny_toy(num_steps=6)
    config.optim[field] = value
    with pytest.raises(ValueError, match=rf"incompatible config.*optim\.{field}.*optimiser state") as error:
        train.Run(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value)


def test_a_changed_batch_size_or_seed_on_resume_is_said(trained, tmp_path, capsys):
    shutil.copytree(trained, tmp_path / "run")
    config = tiny_toy(num_steps=6, batch_size=64)
    config.seed = 3
    run = train.Run(config, str(tmp_path / "run"))
    assert run.resumed[0] == 4
    run.checkpointer.close()
    assert "note: resuming step 4 with seed 0 -> 3, training.batch_size 32 -> 64" in capsys.readouterr().err


# --- 6. settings checked before any compute; the final grid after the final save ------------------

@pytest.mark.parametrize("section, field, value, message", [
    ("sampler", "name", "ddim", "sampler 'ddim' does not accept option"),
    ("sampler", "name", "ddpm_typo", "unknown sampler"),
    ("optim", "lr", -1e-4, r"optim.lr must be > 0"),
    ("optim", "beta2", 1.0, r"optim.beta2 must be in \[0, 1\)"),
    ("eval", "metrics", ("fdi",), "unknown metric"),
    ("training", "nonfinite", "ignore", "training.nonfinite must be"),
    ("training", "compute_dtype", "bfloat16", "model 'mlp' has no dtype argument"),
])
def test_bad_settings_fail_before_compute(tmp_path, section, field, value, message):
    config = tiny_toy()
    config[section][field] = value
    with pytest.raises(ValueError, match=message):
        train.Run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints" / "0")


def test_the_final_grid_is_drawn_after_the_final_save(tmp_path, monkeypatch):
    def failing(*args, **kwargs):
        raise RuntimeError("the sample grid failed")

    monkeypatch.setattr(train, "_write_samples", failing)
    with pytest.raises(RuntimeError, match="sample grid failed"):
        train.train(tiny_toy(num_steps=3, checkpoint_every=100, sample_every=100), str(tmp_path))
    assert read_params(tmp_path, None)["step"] == 3


# --- 7. a resumed run logs every step once -----------------------------------------------------

def test_steps_redone_after_a_kill_are_logged_once(trained, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")  # killed after logging step 4, before saving it
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "eval/fid": 1.0}\n{"step": 5, "lo')  # an evaluation, a line cut short
    train.train(tiny_toy(num_steps=5), str(workdir))
    steps = [r["step"] for r in records(workdir) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]
    assert [r["step"] for r in records(workdir) if "eval/fid" in r] == [4]


def test_ctrl_c_saves_a_checkpoint_like_sigterm(tmp_path):
    command = [sys.executable, "-m", "diffjax.train", "--config=configs/toy2d.py", f"--workdir={tmp_path}",
               "--config.training.num_steps=1000000", "--config.training.log_every=1",
               "--config.training.sample_every=0", "--config.model.hidden=32", "--config.model.depth=1"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    path, deadline = tmp_path / "metrics.jsonl", time.time() + 150
    while not (path.exists() and len(path.read_text().splitlines()) >= 2) and time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert "SIGINT: saving a checkpoint at step" in err and "Traceback" not in err
    saved = max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert saved == records(tmp_path)[-1]["step"] >= 2
