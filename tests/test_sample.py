"""``diffjax.sample.make_sampler``: the options that act on the model function, not the sampler."""
import jax
import jax.numpy as jnp

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
