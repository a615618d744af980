"""EDM preconditioning wrappers against Karras et al. 2022, Table 1, with a predictable backbone."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.models import get_model, param_count
from diffjax.models.precond import EDMPrecond, VEPrecond, VPPrecond


class Probe(nn.Module):
    """F(x, c_noise, y) = 2 x + 3 c_noise + 5 y: every input visible in the output."""

    @nn.compact
    def __call__(self, x, noise_labels, y=None, context=None, train=False):
        out = 2.0 * x + 3.0 * noise_labels[:, None, None, None]
        if y is not None:
            out = out + 5.0 * y[:, None, None, None]
        if context is not None:
            out = out + 7.0 * context.sum(axis=(1, 2))[:, None, None, None]
        return out


SIGMA = np.array([0.002, 0.3, 2.0, 80.0])
X = np.random.RandomState(0).randn(4, 2, 2, 3).astype(np.float32)


def table1(kind, s, sd=0.5, beta_d=19.9, beta_min=0.1, M=1000):
    """(c_skip, c_out, c_in, c_noise) written out from EDM Table 1."""
    if kind == "edm":
        return sd ** 2 / (s ** 2 + sd ** 2), s * sd / np.sqrt(s ** 2 + sd ** 2), 1 / np.sqrt(s ** 2 + sd ** 2), np.log(s) / 4
    if kind == "vp":
        t = (np.sqrt(beta_min ** 2 + 2 * beta_d * np.log(s ** 2 + 1)) - beta_min) / beta_d
        return np.ones_like(s), -s, 1 / np.sqrt(s ** 2 + 1), (M - 1) * t
    return np.ones_like(s), s, np.ones_like(s), np.log(s / 2)


@pytest.mark.parametrize("kind, wrapper", [("edm", EDMPrecond(Probe(), sigma_data=0.5)),
                                           ("vp", VPPrecond(Probe())), ("ve", VEPrecond(Probe()))])
def test_denoiser_is_c_skip_x_plus_c_out_F_of_c_in_x_and_c_noise(kind, wrapper):
    out = wrapper.apply({}, X, SIGMA, y=jnp.array([0, 1, 2, 3]))
    c_skip, c_out, c_in, c_noise = (np.asarray(c, np.float64)[:, None, None, None] for c in table1(kind, SIGMA))
    F = 2 * c_in * X + 3 * c_noise + 5 * np.arange(4)[:, None, None, None]
    np.testing.assert_allclose(out, c_skip * X + c_out * F, rtol=2e-5, atol=1e-5)


def test_edm_denoiser_limits_follow_from_the_coefficients():
    # sigma -> 0: D(x) -> x (c_skip -> 1, c_out -> 0); sigma >> sigma_data: D -> sigma_data * F.
    wrapper = EDMPrecond(Probe(), sigma_data=0.5)
    np.testing.assert_allclose(wrapper.apply({}, X, 1e-8), X, atol=1e-6)
    big = wrapper.apply({}, X, 1e4)
    np.testing.assert_allclose(big, 0.5 * (2 * X / 1e4 + 3 * math.log(1e4) / 4) + 0.25 / 1e8 * X, rtol=1e-4)


def test_scalar_sigma_broadcasts_and_context_reaches_the_backbone():
    wrapper = VEPrecond(Probe())
    np.testing.assert_allclose(wrapper.apply({}, X, 2.0), wrapper.apply({}, X, jnp.full((4,), 2.0)))
    ctx = jnp.ones((4, 3, 2))
    diff = wrapper.apply({}, X, 2.0, context=ctx) - wrapper.apply({}, X, 2.0)
    np.testing.assert_allclose(diff, 2.0 * 7.0 * 6.0 * np.ones_like(X), rtol=1e-6)  # c_out = sigma = 2


def test_registry_wraps_any_backbone_and_keeps_its_parameters_under_backbone():
    cfg = dict(name="edm", backbone="ddpmpp", sigma_data=0.5, nf=32, ch_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(8,), dropout=0.0, num_classes=10, prediction="x0")
    net = get_model(cfg)
    assert isinstance(net, EDMPrecond) and net.sigma_data == 0.5
    bare = get_model({k: v for k, v in cfg.items() if k not in ("backbone", "sigma_data")} | {"name": "ddpmpp"})
    y = jnp.zeros((1,), jnp.int32)
    assert param_count(net, (1, 16, 16, 3), y=y) == param_count(bare, (1, 16, 16, 3), y=y)
    shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), jnp.ones((1,)), y=y))
    assert list(shapes["params"]) == ["backbone"]


def test_learned_variance_backbone_cannot_be_preconditioned():
    net = get_model(dict(name="edm", backbone="ddpm_unet", ch=32, ch_mult=(1, 2), num_res_blocks=1,
                         attn_resolutions=(), num_groups=8, learn_sigma=True))
    with pytest.raises(ValueError, match="learned-variance"):
        jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), jnp.ones((1,))))
