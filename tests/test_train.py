"""The trainer: exact resumption, SIGTERM, logging outputs, optimiser and EMA schedules, and
clear errors for bad settings before any compute."""
import json
import re
import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.configs import toy2d
from diffjax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_toy(**training):
    config = toy2d.get_config()
    config.model.update(hidden=32, depth=1)
    config.training.update(dict(num_steps=6, batch_size=32, log_every=1, checkpoint_every=3,
                                sample_every=0), **training)
    return config


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def max_diff(a, b):
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_stopped_run_resumes_at_its_step_and_matches_an_uninterrupted_run(tmp_path):
    straight = train.train(tiny_toy(), str(tmp_path / "straight"))
    train.train(tiny_toy(num_steps=3), str(tmp_path / "split"))
    resumed = train.train(tiny_toy(), str(tmp_path / "split"))
    assert int(resumed.step) == 6
    assert [r["step"] for r in records(tmp_path / "split")] == [1, 2, 3, 4, 5, 6]
    assert max_diff(straight.params, resumed.params) < 1e-6
    assert max_diff(straight.ema_params, resumed.ema_params) < 1e-6
    np.testing.assert_array_equal(straight.key, resumed.key)
    for a, b in zip(records(tmp_path / "straight")[3:], records(tmp_path / "split")[3:]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)   # same batches after the resume


def test_outputs_a_newcomer_sees(tmp_path):
    train.train(tiny_toy(num_steps=4, sample_every=2, num_grid_samples=200), str(tmp_path))
    first = records(tmp_path)[0]
    for key in ("loss", "loss/loss", "grad_norm", "lr", "ema_decay", "images_per_sec"):
        assert key in first
    assert sorted(os.listdir(tmp_path / "samples")) == ["step_0000002.png", "step_0000004.png"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "tb"))
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["model"]["name"] == "mlp" and saved["training"]["num_steps"] == 4


def _command(workdir):
    return [sys.executable, "-m", "diffjax.train", "--config=configs/toy2d.py", f"--workdir={workdir}",
            "--config.training.num_steps=1000000", "--config.training.log_every=1",
            "--config.training.sample_every=0", "--config.model.hidden=32", "--config.model.depth=1"]


def _run_until_logged(workdir, min_new_lines, timeout=150):
    """Start the command, wait for ``min_new_lines`` more metrics lines, SIGTERM it."""
    path = os.path.join(workdir, "metrics.jsonl")
    before = len(open(path).readlines()) if os.path.exists(path) else 0
    proc = subprocess.Popen(_command(workdir), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and len(open(path).readlines()) >= before + min_new_lines:
            break
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    return err


def test_sigterm_saves_and_the_same_command_resumes(tmp_path):
    err = _run_until_logged(str(tmp_path), 3)
    assert "SIGTERM" in err
    stopped_at = max(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert stopped_at >= 3
    assert records(tmp_path)[-1]["step"] == stopped_at
    err = _run_until_logged(str(tmp_path), 1)
    assert f"at step {stopped_at}" in err
    steps = [r["step"] for r in records(tmp_path)]
    assert steps[steps.index(stopped_at) + 1] == stopped_at + 1


def test_learning_rate_warms_up_linearly_from_zero():
    config = tiny_toy()
    config.optim.update(lr=2e-4, warmup_steps=5000)
    lr = train.learning_rate(config.optim)
    np.testing.assert_allclose([lr(0), lr(2500), lr(5000), lr(10 ** 6)], [0.0, 1e-4, 2e-4, 2e-4], rtol=1e-6)


def test_edm_ema_half_life_and_ramp():
    optim = tiny_toy().optim
    optim.update(ema_halflife_kimg=500.0, ema_rampup_ratio=0.05)
    # after many images the half-life is 500k images: beta = 0.5 ** (512 / 5e5)
    np.testing.assert_allclose(train.ema_decay(optim, jnp.asarray(10 ** 6), 512), 0.5 ** (512 / 5e5), rtol=1e-6)
    # early on it is 5% of the images seen: 10 steps of 512 -> 256 images -> beta = 0.5 ** 2
    np.testing.assert_allclose(train.ema_decay(optim, jnp.asarray(10), 512), 0.25, rtol=1e-6)
    np.testing.assert_allclose(train.ema_decay(optim, jnp.asarray(0), 512), 0.0, atol=1e-12)
    optim.ema_halflife_kimg = 0.0
    assert float(train.ema_decay(optim, jnp.asarray(7), 512)) == pytest.approx(0.99)


@pytest.mark.parametrize("field, value, message", [
    ("data.source", "tfds:surely_not_a_dataset", "unknown TFDS dataset"),
    ("data.source", "toy:nine_gaussians", "unknown toy dataset"),
    ("training.grad_accum", 3, "not divisible"),
    ("model.prediction", "noise", "model.prediction must be one of"),
    ("training.steps_per_call", 4, "not a multiple of training.steps_per_call"),
])
def test_bad_settings_fail_before_compute(tmp_path, field, value, message):
    config = tiny_toy()
    section, name = field.split(".")
    config[section][name] = value
    with pytest.raises(ValueError, match=message):
        train.Run(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints" / "0")


def test_unwritable_workdir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="not writable"):
        train.Run(tiny_toy(), str(blocker / "run"))


def test_checkpoint_from_an_incompatible_config_is_refused(tmp_path):
    train.train(tiny_toy(num_steps=1), str(tmp_path))
    config = tiny_toy()
    config.model.hidden = 64
    with pytest.raises(ValueError, match=r"incompatible config[\s\S]*model"):
        train.Run(config, str(tmp_path))
    compatible = tiny_toy(num_steps=2)
    compatible.optim.lr = 5e-4  # optimiser settings may change on resume
    assert int(train.train(compatible, str(tmp_path)).step) == 2


@pytest.mark.slow
def test_bfloat16_compute_gives_the_float32_loss_to_bf16_precision(tmp_path):
    from configs import quickstart

    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = quickstart.get_config()
        config.model.update(ch=16, ch_mult=(1,), num_res_blocks=1)
        config.training.update(num_steps=1, batch_size=8, sample_every=0, log_every=1, compute_dtype=dtype)
        train.train(config, str(tmp_path / dtype))
        losses[dtype] = records(tmp_path / dtype)[0]["loss"]
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=5e-2)


def test_compilation_cache_serves_the_restarted_run(tmp_path):
    """``training.compilation_cache``: the first run writes its compiled step there, a second
    process (a restart) loads it instead of compiling (JAX's debug log says which)."""
    cache = tmp_path / "xla_cache"
    # every program cached, however fast it compiled (JAX's default floor is 1 s)
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DEBUG_LOG_MODULES="jax._src.compiler",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    logs = []
    for steps in (2, 4):  # the second run resumes the first: a restart after its checkpoint
        command = [sys.executable, "-m", "diffjax.train", "--config=toy2d", f"--workdir={tmp_path / 'run'}",
                   f"--config.training.num_steps={steps}", "--config.training.sample_every=0",
                   "--config.training.batch_size=16", "--config.model.hidden=32", "--config.model.depth=1",
                   f"--config.training.compilation_cache={cache}"]
        proc = subprocess.run(command, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        logs.append(proc.stderr)
    assert any(name.startswith("jit_one_step") for name in os.listdir(cache)), os.listdir(cache)
    hit = re.compile(r"[Pp]ersistent compilation cache hit for .jit_one_step")
    assert not hit.search(logs[0]) and hit.search(logs[1]), logs[1][-3000:]
    # diffjax.sample of the run takes the setting from its saved config: the second call (another
    # seed and folder, the same compiled sampler) loads what the first wrote
    entries = [set(os.listdir(cache))]
    for seed in (0, 1):
        proc = subprocess.run([sys.executable, "-m", "diffjax.sample", f"--workdir={tmp_path / 'run'}",
                               "--num_samples=8", "--batch_size=8", f"--seed={seed}", f"--name=s{seed}",
                               "--sampler=ddim", "--opt=steps=3"], cwd=tempfile.gettempdir(), env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        entries.append(set(os.listdir(cache)))
        logs.append(proc.stderr)
    assert entries[1] > entries[0], entries        # the first call wrote its sampler
    assert entries[2] == entries[1], entries        # the second wrote nothing new ...
    assert "compilation cache hit" in logs[3], logs[3][-3000:]   # ... it loaded it
