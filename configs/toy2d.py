"""Toy 2D: a small MLP score network on 8 Gaussians (issue 2's end-to-end run).

``python -m diffjax.train --config=configs/toy2d.py --workdir=DIR`` trains for a minute or two on a
CPU and writes DIR/samples/step_<N>.png: samples beside the data. DDPM recipe (linear betas,
T = 1000, eps-prediction, L_simple, ancestral sampling with the posterior variance); the MLP's sinusoidal features see the
step index 0..999 itself (``label_scale`` 1). tests/test_toy_run.py checks the
mode frequencies and the log-density of the samples under the true mixture.
"""
from diffjax.configs import default


def get_config():
    config = default.get_config()
    config.training.num_steps = 3000
    config.training.batch_size = 512
    config.training.log_every = 100
    config.training.checkpoint_every = 1000
    config.training.sample_every = 3000
    config.training.num_grid_samples = 2000
    config.data.source = "toy:8gaussians"
    config.data.image_size = 0
    config.data.num_channels = 0
    config.data.random_flip = False
    config.model.name = "mlp"
    config.model.prediction = "eps"
    config.model.hidden = 128
    config.model.depth = 3
    config.model.label_scale = 1.0
    config.schedule.name = "ddpm_linear"
    config.schedule.T = 1000
    config.loss.name = "simple"
    config.sampler.name = "ddpm"
    config.sampler.variance = "beta_tilde"
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 100
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.99
    config.eval.metrics = ()
    return config
