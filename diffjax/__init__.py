"""diffjax: diffusion generative models in JAX/Flax, faithful to the papers."""

__version__ = "0.1.0"
