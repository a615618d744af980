"""NCSN (Song & Ermon 2019) CondRefineNetDilated: size, conditional instance norm++, level conditioning."""
import importlib
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import models, schedules
from diffjax.models.ncsn import NCSN, CondInstanceNormPlus, resize_bilinear_aligned


def reference_param_count(ngf, channels=3, L=10):
    """Parameters of ermongroup/ncsn ``models/cond_refinenet_dilated.py`` CondRefineNetDilated, counted
    from its layer list: every CondInstanceNorm++ is an ``Embedding(L, 3 C)``; convs are 3x3 with bias
    unless noted (RCU and CRP convs have none, the down-block shortcut is a 1x1 ConvMeanPool, the
    dilated down-block shortcut a dilated 3x3)."""
    def norm(c): return L * 3 * c
    def conv(i, o, k=3, bias=True): return k * k * i * o + (o if bias else 0)

    def res(i, o, down=False, dilated=False):
        if down:
            return norm(i) + conv(i, i) + norm(i) + conv(i, o) + (conv(i, o) if dilated else conv(i, o, k=1))
        return norm(i) + conv(i, o) + norm(o) + conv(o, o) + (0 if i == o else conv(i, o, k=1))

    def rcu(f, blocks): return blocks * 2 * (norm(f) + conv(f, f, bias=False))
    def crp(f): return 2 * (norm(f) + conv(f, f, bias=False))
    def msf(ins, f): return sum(norm(i) + conv(i, f) for i in ins)

    def refine(ins, f, start=False, end=False):
        return sum(rcu(i, 2) for i in ins) + rcu(f, 3 if end else 1) + (0 if start else msf(ins, f)) + crp(f)

    g = ngf
    return (conv(channels, g) + 2 * res(g, g) + res(g, 2 * g, down=True) + res(2 * g, 2 * g)
            + 2 * (res(2 * g, 2 * g, down=True, dilated=True) + res(2 * g, 2 * g))
            + refine([2 * g], 2 * g, start=True) + refine([2 * g, 2 * g], 2 * g) + refine([2 * g, 2 * g], g)
            + refine([g, g], g, end=True) + norm(g) + conv(g, channels))


def test_cifar10_config_builds_the_papers_network_with_its_parameter_count():
    config = importlib.import_module("diffjax.configs.ncsn.cifar10").get_config()
    net = models.get_model(config.model)
    assert isinstance(net, NCSN)
    assert (net.nf, net.num_scales, net.sigma_min, net.sigma_max, net.centered) == (128, 10, 0.01, 1.0, False)
    # 30,117,635 = the reference CondRefineNetDilated at ngf=128, 3 channels, 10 levels (counted above;
    # the same layer list at ngf=64, 1 channel (MNIST) gives 7,638,657).
    assert reference_param_count(128) == 30_117_635
    assert models.param_count(net, (1, 32, 32, 3)) == 30_117_635
    assert models.param_count(NCSN(nf=64, in_channels=1), (1, 28, 28, 1)) == reference_param_count(64, 1) == 7_638_657


def test_cond_instance_norm_plus_on_a_hand_computed_example():
    # one image, 1x2 pixels, 2 channels: channel 0 = [1, 3] (mean 2, var 1), channel 1 = [2, 6] (mean 4, var 4).
    x = jnp.array([[[[1.0, 2.0], [3.0, 6.0]]]])                       # (1, 1, 2, 2) NHWC
    # means across channels: mean 3, unbiased variance ((2-3)^2 + (4-3)^2) / 1 = 2 -> (m_c - 3)/sqrt 2 = -+1/sqrt 2
    gamma, alpha, beta = np.array([2.0, 3.0]), np.array([0.5, -1.0]), np.array([0.1, 0.2])
    table = np.zeros((3, 6), np.float32)
    table[1] = np.concatenate([gamma, alpha, beta])                   # level 1: [gamma | alpha | beta]
    table[0] = [1, 1, 0, 0, 0, 0]                                     # level 0: plain instance norm
    params = {"params": {"embedding": jnp.asarray(table)}}
    norm = CondInstanceNormPlus(num_scales=3)
    r = 1 / math.sqrt(2)
    # z_c = gamma_c [(x_c - mu_c) / s_c + alpha_c (m_c - mean m) / std m] + beta_c
    expected = np.array([[2 * (-1 + 0.5 * -r) + 0.1, 3 * (-1 + -1 * r) + 0.2],     # pixel 0: channels 0, 1
                         [2 * (1 + 0.5 * -r) + 0.1, 3 * (1 + -1 * r) + 0.2]])      # pixel 1
    out = norm.apply(params, x, jnp.array([1]))
    np.testing.assert_allclose(np.asarray(out)[0, 0], expected, atol=1e-4)          # eps = 1e-5 in both roots
    np.testing.assert_allclose(np.asarray(norm.apply(params, x, jnp.array([0])))[0, 0], [[-1, -1], [1, 1]], atol=1e-4)
    # initialisation: gamma, alpha ~ N(1, 0.02), beta = 0
    init = norm.init(jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 64)), jnp.array([0]))["params"]["embedding"]
    assert init.shape == (3, 192)
    assert abs(float(init[:, :128].mean()) - 1) < 0.01 and 0.01 < float(init[:, :128].std()) < 0.03
    assert float(jnp.abs(init[:, 128:]).max()) == 0.0


def test_bilinear_resize_aligns_corners():
    x = jnp.array([0.0, 3.0]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(np.asarray(resize_bilinear_aligned(x, (1, 4)))[0, 0, :, 0], [0, 1, 2, 3], atol=1e-6)


def test_noise_labels_map_to_the_level_index_of_the_loss_and_sampler():
    net = NCSN(num_scales=10, sigma_min=0.01, sigma_max=1.0)
    schedule = schedules.VESDE(sigma_min=0.01, sigma_max=1.0)
    i = np.arange(10)
    sigmas = schedule.c_noise(jnp.asarray(1.0 - i / 9))               # the ncsn_dsm levels t = 1 - i/(L-1)
    np.testing.assert_allclose(np.asarray(sigmas), 1.0 * 0.01 ** (i / 9), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(net.level_index(sigmas)), i)
    np.testing.assert_array_equal(np.asarray(net.level_index(jnp.array([5.0, 1e-4, 0.011, 0.6]))), [0, 9, 9, 1])
    np.testing.assert_array_equal(NCSN(num_scales=10, label_is_index=True).level_index(jnp.array([3.0, 12.0])), [3, 9])


def _random_params(net, x, sigma):
    """Parameters of the right shapes filled from numpy (no RNG compilation); embeddings far from 1."""
    shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, sigma)
    rng = np.random.RandomState(0)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), jnp.float32), shapes)


def test_output_depends_on_the_level_only_through_its_index():
    net = NCSN(nf=8)
    x = jnp.tile(jnp.asarray(np.random.RandomState(1).rand(1, 8, 8, 3), jnp.float32), (4, 1, 1, 1))
    level_sigmas = 0.01 ** (np.arange(10) / 9)
    sigma = jnp.array([level_sigmas[3], level_sigmas[3] * 1.05, level_sigmas[4], level_sigmas[9]])
    params = _random_params(net, x[:1], sigma[:1])
    out = np.asarray(jax.jit(net.apply)(params, x, sigma))
    assert out.shape == x.shape and np.all(np.isfinite(out))
    np.testing.assert_array_equal(out[0], out[1])                     # same level index: same score
    assert np.abs(out[0] - out[2]).max() > 1e-3 * np.abs(out[0]).max()  # neighbouring level: different
    assert np.abs(out[0] - out[3]).max() > 1e-3 * np.abs(out[0]).max()


@pytest.mark.parametrize("shape, labels, kwargs, message", [
    ((2, 7, 8, 3), (2,), {}, "not divisible by 2"),
    ((2, 8, 8, 4), (2,), {}, "expected 3 input channels"),
    ((2, 8, 8, 3), (3,), {}, "noise_labels of shape (2,)"),
    ((2, 8, 8, 3), (2,), {"y": jnp.zeros((2,), jnp.int32)}, "unconditional"),
])
def test_bad_input_is_a_clear_error(shape, labels, kwargs, message):
    net = NCSN(nf=8)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.ones(labels), **kwargs))


def test_bad_levels_are_a_clear_error():
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        jax.eval_shape(lambda: NCSN(nf=8, sigma_min=1.0, sigma_max=0.5).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), jnp.ones(1)))


def test_outputs_match_ermongroups_cond_refinenet_dilated():
    # tests/data/models_ncsn.npz: written by tools/refgen/models_ncsn.py from the upstream PyTorch
    # code (ermongroup/ncsn 7f27f4a) with random weights whose norm tables are far from identity;
    # the generator checks that a max pool, ReLUs or halved dilations move its output by > 1%.
    from flax import traverse_util
    ref = np.load(os.path.join(os.path.dirname(__file__), "data", "models_ncsn.npz"))
    params = {k[len("params/"):]: ref[k] for k in ref.files if k.startswith("params/")}
    net = NCSN(nf=8, in_channels=3, num_scales=10, label_is_index=True)
    x, levels = jnp.asarray(ref["x"]), jnp.asarray(ref["levels"], jnp.float32)
    shapes = traverse_util.flatten_dict(jax.eval_shape(net.init, jax.random.PRNGKey(0), x, levels)["params"], sep="/")
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in params.items()}
    out = net.apply({"params": traverse_util.unflatten_dict(params, sep="/")}, x, levels)
    np.testing.assert_allclose(np.asarray(out), ref["out"], rtol=1e-4, atol=1e-4 * np.abs(ref["out"]).max())
