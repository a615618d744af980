"""Classifier-free guidance through the trainer's and sampler's own hooks, as configs/quickstart_cfg.py
and bench/guidance_mnist.py use them: the label dropout of ``train._conditioning`` (Ho & Salimans 2021,
Alg. 1) and the guided sampler that ``sample.make_sampler`` builds from ``sampler.guidance_scale``
(Alg. 2). The guidance formula itself and guided sampling on exact scores are checked in
test_samplers_more.py."""
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffjax import sample as sample_lib
from diffjax import schedules, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from diffjax.configs import quickstart_cfg  # noqa: E402


def test_quickstart_cfg_is_the_quickstart_made_class_conditional():
    from configs import quickstart

    config, base = quickstart_cfg.get_config(), quickstart.get_config()
    train.validate(config)
    assert config.data.num_classes == config.model.num_classes == 10
    assert config.training.cond_drop_prob in (0.1, 0.2)  # the paper's ablation values
    for section in ("schedule", "loss", "optim"):
        assert config[section].to_dict() == base[section].to_dict()
    assert {k: v for k, v in config.model.items() if k != "num_classes"} == base.model.to_dict()


def test_label_dropout_uses_the_null_label_at_the_configured_rate():
    config = quickstart_cfg.get_config()
    p, n = config.training.cond_drop_prob, 40_000
    y = jnp.arange(n) % 10
    out = np.asarray(train._conditioning(config, {"label": y}, jax.random.PRNGKey(0)))
    dropped = out == 10
    assert abs(dropped.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_array_equal(out[~dropped], np.asarray(y)[~dropped])  # kept labels unchanged
    for label in range(10):  # independent of the class
        assert abs(dropped[np.asarray(y) == label].mean() - p) < 4 * np.sqrt(p * (1 - p) / (n / 10))
    other = np.asarray(train._conditioning(config, {"label": y}, jax.random.PRNGKey(1))) == 10
    assert 0 < np.mean(dropped & other) < p  # a fresh draw per key
    config.training.cond_drop_prob = 0.0
    np.testing.assert_array_equal(train._conditioning(config, {"label": y}, jax.random.PRNGKey(0)), y)


class _Net:
    """A stand-in network whose eps-prediction depends on x and on the label (10 = null)."""

    def __init__(self, w=None):
        self.w = w  # if set: return the guided combination itself, for the reference sampler

    @staticmethod
    def eps(x, y):
        return 0.3 * x + 0.05 * (y.astype(jnp.float32)[:, None, None, None] - 4.5) * jnp.ones_like(x)

    def apply(self, variables, x, noise_labels, y=None, train=False, rngs=None):
        if self.w is None:
            return self.eps(x, y)
        return (1 + self.w) * self.eps(x, y) - self.w * self.eps(x, jnp.full_like(y, 10))


def test_make_sampler_guides_with_the_config_weight_and_the_null_label():
    config = quickstart_cfg.get_config()
    config.sampler = ml_collections.ConfigDict({"name": "ddim", "steps": 4, "guidance_scale": 2.0})
    schedule = schedules.get(config.schedule)
    key, n = jax.random.PRNGKey(3), 12

    guided, labels, info = sample_lib.make_sampler(config, _Net(), schedule)(None, key, n)
    np.testing.assert_array_equal(labels, np.arange(n) % 10)
    assert info["nfe"] == 4
    config.sampler.guidance_scale = 0.0
    reference, _, _ = sample_lib.make_sampler(config, _Net(w=2.0), schedule)(None, key, n)
    np.testing.assert_allclose(guided, reference, rtol=1e-5, atol=1e-5)
    unguided, _, _ = sample_lib.make_sampler(config, _Net(), schedule)(None, key, n)
    assert float(jnp.abs(unguided - guided).max()) > 0.1  # the weight changes the samples
    # an explicit option overrides the config's weight (what bench/guidance_mnist.py does)
    config.sampler.guidance_scale = 1.0
    again, _, _ = sample_lib.make_sampler(config, _Net(), schedule, "ddim", {"guidance_scale": 2.0})(None, key, n)
    np.testing.assert_allclose(again, guided, rtol=1e-6, atol=1e-6)
