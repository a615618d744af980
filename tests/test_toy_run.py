"""Issue 2's end-to-end toy run: ``python -m diffjax.train --config=configs/toy2d.py`` on
8 Gaussians, then ``diffjax.sample`` from its checkpoint; the samples must cover the 8 modes
evenly and sit where the true density is.

Measured on the shared 2-core CPU (2026-11-28, load average ~7 from four other engineers' jobs),
3000 steps of batch 512: the training command took 176 s wall including start-up, compilation
and the final 2000-point grid; 2000 samples (1000 ancestral steps, posterior variance): mode
frequencies 0.120-0.131, 97% within 3 std of a mode, mean log-density -0.52 against -0.34 for
real data.
"""
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from diffjax import sample
from diffjax.data import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 2000
FREQ_TOL = 0.03        # |frequency - 1/8| per mode; sampling noise alone has std 0.0074 at N = 2000
NEAR_FRACTION = 0.9    # samples within 3 component std of a mode (data: 98.9%)
LOGP_TOL = 0.5         # nats below the data's mean log-density


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy2d"))
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "diffjax.train", "--config=configs/toy2d.py",
                           f"--workdir={workdir}"], cwd=ROOT, capture_output=True, text=True,
                          timeout=400, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    wall = time.time() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = sample.run(workdir, N, seed=0, sampler=None, options={}, batch_size=N, name="eval")
    samples = np.load(paths["npz"])["samples"]
    print(f"toy run: training command {wall:.0f}s wall")
    return workdir, samples, wall


def test_training_command_writes_samples_beside_the_data(toy_run):
    workdir, _, _ = toy_run
    # (the wall time is printed, not asserted: on a shared machine it measures the other jobs)
    assert os.path.exists(os.path.join(workdir, "samples", "step_0003000.png"))


def test_every_mode_gets_one_eighth_of_the_samples(toy_run):
    _, x, _ = toy_run
    means = np.asarray(toy.mixture("8gaussians").means)
    dist = np.linalg.norm(x[:, None] - means[None], axis=-1)
    freq = np.bincount(dist.argmin(1), minlength=8) / len(x)
    print("mode frequencies", np.round(freq, 4))
    np.testing.assert_allclose(freq, 1 / 8, atol=FREQ_TOL)
    near = (dist.min(1) < 3 * 0.1).mean()
    print("fraction within 3 std of a mode", near)
    assert near > NEAR_FRACTION


def test_samples_have_the_log_density_of_real_data(toy_run):
    _, x, _ = toy_run
    data = toy.sample("8gaussians", jax.random.PRNGKey(123), N)
    logp_samples = float(np.mean(toy.log_prob("8gaussians", x)))
    logp_data = float(np.mean(toy.log_prob("8gaussians", data)))
    print(f"mean log-density: samples {logp_samples:.3f}, data {logp_data:.3f}")
    assert logp_samples > logp_data - LOGP_TOL
    assert logp_samples < logp_data + 0.2   # not collapsed onto the mode centres
