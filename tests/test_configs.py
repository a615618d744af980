"""Every experiment config: its paper target, its hyper-parameters, and one real train step
(shrunk network, a tiny local TFDS dataset) through the same code path as ``python -m diffjax.train``."""
import importlib
import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import models, schedules, train
from diffjax import configs
from diffjax import sampling as sample_lib
from test_data import TinyIds

# Diffusion-model paper configs (the noisy classifiers of configs/classifier/ train with diffjax.classifier).
PAPER_CONFIGS = sorted("diffjax.configs." + n.replace("/", ".") for n in configs.names()
                       if "/" in n and not n.startswith("classifier/"))
SHRINK = {  # small enough to compile and run one step in seconds on a CPU
    "ddpm_unet": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    "adm": dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=2),
    "ncsnpp": dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    "ddpmpp": dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)),
    "ncsn": dict(nf=8),
}


def load(name):
    return importlib.import_module(name).get_config()


def test_all_paper_configs_are_found():
    assert set(PAPER_CONFIGS) >= {
        "diffjax.configs.ddpm.cifar10", "diffjax.configs.ddpm.celebahq256", "diffjax.configs.score_sde.ncsnpp_ve_cifar10",
        "diffjax.configs.score_sde.ddpmpp_vp_cifar10", "diffjax.configs.score_sde.ddpmpp_subvp_cifar10",
        "diffjax.configs.ncsn.cifar10", "diffjax.configs.edm.cifar10_cond", "diffjax.configs.edm.cifar10_uncond",
        "diffjax.configs.improved_ddpm.cifar10", "diffjax.configs.cfg.cifar10"}


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_names_its_table(name):
    doc = importlib.import_module(name).__doc__
    assert "Table" in doc, f"{name} must name the table it reproduces"


@pytest.mark.parametrize("name, target", [
    ("diffjax.configs.ddpm.cifar10", "3.17"), ("diffjax.configs.score_sde.ncsnpp_ve_cifar10", "2.38"),
    ("diffjax.configs.score_sde.ddpmpp_vp_cifar10", "2.55"), ("diffjax.configs.score_sde.ddpmpp_subvp_cifar10", "2.61"),
    ("diffjax.configs.ncsn.cifar10", "8.87"), ("diffjax.configs.edm.cifar10_cond", "1.79"),
    ("diffjax.configs.edm.cifar10_uncond", "1.97"), ("diffjax.configs.improved_ddpm.cifar10", "2.94")])
def test_paper_config_states_the_number(name, target):
    assert target in importlib.import_module(name).__doc__


def test_ddpm_cifar10_hyperparameters_are_the_papers():
    c = load("diffjax.configs.ddpm.cifar10")
    assert (c.training.batch_size, c.optim.lr, c.optim.warmup_steps, c.optim.grad_clip, c.optim.ema_decay) == \
        (128, 2e-4, 5000, 1.0, 0.9999)
    assert (c.model.ch, tuple(c.model.ch_mult), c.model.num_res_blocks, tuple(c.model.attn_resolutions),
            c.model.dropout) == (128, (1, 2, 2, 2), 2, (16,), 0.1)
    schedule = schedules.get(c.schedule)
    np.testing.assert_allclose(np.asarray(schedule.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-5)
    assert models.param_count(models.get_model(c.model), (1, 32, 32, 3)) == 35_746_307


def test_edm_hyperparameters_are_the_papers():
    c = load("diffjax.configs.edm.cifar10_cond")
    assert (c.training.batch_size, c.optim.lr, c.optim.ema_halflife_kimg, c.optim.ema_rampup_ratio) == \
        (512, 1e-3, 500.0, 0.05)
    assert c.training.num_steps * 512 == pytest.approx(200e6, rel=1e-5)   # 200 Mimg
    assert c.optim.warmup_steps * 512 == pytest.approx(10e6, rel=1e-4)    # lr ramp over 10 Mimg
    assert (c.model.dropout, c.data.num_classes, c.sampler.name, c.sampler.steps) == (0.13, 10, "edm_heun", 18)
    assert load("diffjax.configs.edm.cifar10_uncond").data.num_classes == 0


def test_score_sde_and_ncsn_hyperparameters_are_the_papers():
    ve, vp, subvp = (load(f"diffjax.configs.score_sde.{n}") for n in
                     ("ncsnpp_ve_cifar10", "ddpmpp_vp_cifar10", "ddpmpp_subvp_cifar10"))
    assert (ve.schedule.sigma_min, ve.schedule.sigma_max, ve.optim.ema_decay, ve.data.centered) == (0.01, 50.0, 0.999, False)
    assert (vp.schedule.beta_min, vp.schedule.beta_max, vp.optim.ema_decay, vp.data.centered) == (0.1, 20.0, 0.9999, True)
    assert (subvp.schedule.name, vp.schedule.name, ve.training.num_steps) == ("subvp", "vp", 1_300_000)
    ncsn = load("diffjax.configs.ncsn.cifar10")
    assert (ncsn.schedule.sigma_min, ncsn.schedule.sigma_max, ncsn.loss.num_scales, ncsn.optim.lr,
            ncsn.sampler.n_steps_each, ncsn.sampler.step_lr) == (0.01, 1.0, 10, 1e-3, 100, 2e-5)
    iddpm = load("diffjax.configs.improved_ddpm.cifar10")
    assert (iddpm.schedule.name, iddpm.schedule.T, iddpm.loss.name, iddpm.loss.vlb_weight,
            iddpm.model.learn_sigma, iddpm.model.dropout, iddpm.optim.lr) == \
        ("ddpm_cosine", 4000, "hybrid", 1e-3, True, 0.3, 1e-4)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    TinyIds(data_dir=directory, file_format="array_record").download_and_prepare()
    return directory


def shrunk(name, tfds_dir):
    config = load(name)
    config.training.update(num_steps=1, batch_size=4, sample_every=0, log_every=1,
                           checkpoint_every=1, num_grid_samples=2)
    config.data.update(source="tfds:tiny_ids", data_dir=tfds_dir, image_size=8, resize="resize")
    model = config.model.name if config.model.name not in ("edm",) else config.model.backbone
    if model in SHRINK:
        config.model.update(SHRINK[model])
    return config


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_config_builds_and_runs_one_train_step(name, tiny_tfds, tmp_path):
    config = shrunk(name, tiny_tfds)
    run = train.Run(config, str(tmp_path))
    state = run.loop(run.initial_state())
    assert int(state.step) == 1
    record = json.loads(open(tmp_path / "metrics.jsonl").readline())
    assert record["step"] == 1 and np.isfinite(record["loss"]) and record["grad_norm"] > 0
    # the config's sampler accepts the config's options (traced, not run)
    draw = sample_lib.make_sampler(config, run.net, run.schedule)
    out = jax.eval_shape(lambda p: draw(p, jax.random.PRNGKey(0), 2)[0], state.ema_params)
    assert out.shape == (2, 8, 8, 3)
    if config.model.get("learn_sigma", False):  # other samplers read only the mean half
        ddim = sample_lib.make_sampler(config, run.net, run.schedule, "ddim", {"steps": 2})
        out = jax.eval_shape(lambda p: ddim(p, jax.random.PRNGKey(0), 2)[0], state.ema_params)
        assert out.shape == (2, 8, 8, 3)


@pytest.mark.parametrize("name", ["diffjax.configs.quickstart", "diffjax.configs.toy2d"])
def test_cpu_configs_build(name):
    config = load(name)
    train.validate(config)
    net, schedule, loss, tx = train.build(config)
    shape = (1, 2) if name.endswith("toy2d") else (1, 28, 28, 1)
    assert models.param_count(net, shape) > 0


def run_cli(*args, timeout=120):
    # Run from a folder outside the repository: packaged configs must be found by name or path.
    return subprocess.run([sys.executable, "-m", "diffjax.train", *args], cwd=tempfile.gettempdir(), capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_unknown_config_field_is_a_clear_error(tmp_path):
    proc = run_cli("--config=configs/toy2d.py", f"--workdir={tmp_path}", "--config.training.bacth_size=3")
    assert proc.returncode != 0
    assert "unknown config field" in proc.stderr and "bacth_size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_mistyped_value_is_a_clear_error(tmp_path):
    proc = run_cli("--config=configs/toy2d.py", f"--workdir={tmp_path}", "--config.training.batch_size=many")
    assert proc.returncode != 0 and "batch_size" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_config_name_lists_the_packaged_configs(tmp_path):
    proc = run_cli("--config=ddpm/cifar100", f"--workdir={tmp_path}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "'ddpm/cifar100' is neither a file nor a packaged config" in proc.stderr
    assert "ddpm/cifar10," in proc.stderr and "toy2d" in proc.stderr


def test_packaged_config_resolves_by_name_and_by_repository_path():
    by_name = configs.resolve("edm/cifar10_cond")
    by_path = configs.resolve("configs/edm/cifar10_cond.py")  # a file in the repository root, or packaged
    assert os.path.samefile(by_name, by_path)
    assert os.path.dirname(os.path.dirname(by_name)) == os.path.dirname(configs.__file__)


class GaussianEps:
    """A stand-in network for 2-D data ``N(0, S I)``: the exact eps-prediction
    ``sigma x / (alpha^2 S + sigma^2)`` and, with ``r`` set, a second half of constant ``r``
    (improved DDPM's variance output in [-1, 1]). No parameters."""

    def __init__(self, schedule, S=0.25, r=None):
        self.schedule, self.S, self.r = schedule, S, r

    def apply(self, variables, x, noise_labels, y=None, train=False, rngs=None, context=None):
        t = (jnp.asarray(noise_labels, jnp.float32) + 1.0) / self.schedule.T   # c_noise = T t - 1
        a, s = self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]
        eps = s * x / (a ** 2 * self.S + s ** 2)
        return eps if self.r is None else jnp.concatenate([eps, jnp.full_like(x, self.r)], axis=-1)


def _draw(net, learn_sigma, name, options, n=4000):
    config = load("diffjax.configs.toy2d")
    config.model.learn_sigma = learn_sigma
    schedule = schedules.DiscreteSchedule.linear(T=10)   # few steps: the variances differ a lot
    sample = sample_lib.make_sampler(config, net, schedule, name, options)
    return np.asarray(jax.jit(lambda key: sample({}, key, n)[0])(jax.random.PRNGKey(0)))


def test_learned_variance_ddpm_reads_the_mean_half_and_interpolates_with_the_variance_half():
    schedule = schedules.DiscreteSchedule.linear(T=10)
    plain = GaussianEps(schedule)
    # r = +1 is beta_t, r = -1 the posterior variance beta~_t (Nichol & Dhariwal 2021, eq. 15)
    big = _draw(GaussianEps(schedule, r=1.0), True, "ddpm", {"variance": "learned"})
    small = _draw(GaussianEps(schedule, r=-1.0), True, "ddpm", {"variance": "learned"})
    np.testing.assert_allclose(big, _draw(plain, False, "ddpm", {"variance": "beta"}), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(small, _draw(plain, False, "ddpm", {"variance": "beta_tilde"}), rtol=1e-4, atol=1e-5)
    # in between, log Sigma interpolates: the samples' variance lies between the two
    mid = _draw(GaussianEps(schedule, r=0.0), True, "ddpm", {"variance": "learned"})
    v_small, v_mid, v_big = small.var(), mid.var(), big.var()
    assert v_big > 1.1 * v_small, (v_small, v_big)   # the test can tell them apart
    assert v_small < v_mid < v_big


def test_other_samplers_use_only_the_mean_half_of_a_learned_variance_network():
    schedule = schedules.DiscreteSchedule.linear(T=10)
    for r in (1.0, -1.0):
        got = _draw(GaussianEps(schedule, r=r), True, "ddim", {"steps": 5}, n=16)
        np.testing.assert_allclose(got, _draw(GaussianEps(schedule), False, "ddim", {"steps": 5}, n=16),
                                   rtol=1e-5, atol=1e-6)
