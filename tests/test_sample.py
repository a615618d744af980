"""``diffjax.sample.make_sampler`` and ``diffjax.sampling.check_sampler``: the options that act on the model
function, not the sampler, and the options no sampler accepts."""
import jax
import jax.numpy as jnp
import pytest

from diffjax.configs import quickstart
from diffjax import sample as sample_lib
from diffjax import schedules


class _FarNet:
    """A stand-in eps-network whose implied x0 = (1 + 2 sigma) x / alpha lies far outside [-1, 1]."""

    def apply(self, variables, x, noise_labels, y=None, train=False, rngs=None):
        return -2.0 * x


def test_clip_denoised_keeps_ddim_samples_in_the_data_range():
    config = quickstart.get_config()
    assert config.sampler.clip_denoised  # DDPM's recipe: clip x0_hat to [-1, 1] at every step
    schedule = schedules.get(config.schedule)
    key = jax.random.PRNGKey(0)
    draw = sample_lib.make_sampler(config, _FarNet(), schedule, "ddim", {"steps": 5})
    clipped, _, info = draw(None, key, 4)
    assert info["nfe"] == 5
    # DDIM's last step (to t = 0) returns x0_hat itself, so clipping bounds the samples exactly.
    assert float(jnp.abs(clipped).max()) <= 1.0 + 1e-6
    raw, _, _ = sample_lib.make_sampler(config, _FarNet(), schedule, "ddim",
                                        {"steps": 5, "clip_denoised": False})(None, key, 4)
    assert float(jnp.abs(raw).max()) > 2.0


def test_check_sampler_names_the_option_no_sampler_accepts():
    from diffjax import sampling

    config = quickstart.get_config()
    sampling.check_sampler(config)  # the config's own sampler and options
    sampling.check_sampler(config, "ddim", {"steps": 50, "eta": 0.5, "guidance_scale": 1.0})
    with pytest.raises(ValueError, match=r"sampler 'ddim' does not accept option\(s\) stepz; it accepts: .*steps"):
        sampling.check_sampler(config, "ddim", {"stepz": 50})
    with pytest.raises(ValueError, match="does not accept option.*num_steps"):
        sampling.check_sampler(config, None, {"num_steps": 50})
    with pytest.raises(ValueError, match="unknown sampler 'ddmi'; known samplers: .*ddim"):
        sampling.check_sampler(config, "ddmi")
    config.sampler.stepz = 3  # a typo in the config itself
    with pytest.raises(ValueError, match="stepz"):
        sampling.check_sampler(config)
    with pytest.raises(ValueError, match="stepz"):  # and before anything is compiled
        sample_lib.make_sampler(config, _FarNet(), schedules.get(config.schedule))
