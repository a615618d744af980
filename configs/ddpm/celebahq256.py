"""DDPM on CelebA-HQ 256x256 (Ho et al. 2020, Appendix B; samples in Fig. 1 and Appendix D).

The paper reports no FID for CelebA-HQ (its numbers are CIFAR-10, Table 1, and LSUN, Table 3);
this config reproduces the training setup of its CelebA-HQ samples: the 256x256 UNet with
multipliers 1,1,2,2,4,4, attention at 16x16, no dropout, lr 2e-5, batch 64, EMA 0.9999,
0.5M steps (score_sde's configs/ddpm/celebahq.py agrees).
"""
from diffjax.configs import default


def get_config():
    config = default.get_config()
    config.training.num_steps = 500_000
    config.training.batch_size = 64
    config.training.sample_every = 25_000
    config.training.num_grid_samples = 16
    config.data.source = "tfds:celeb_a_hq/256"
    config.data.image_size = 256
    config.model.name = "ddpm_unet"
    config.model.prediction = "eps"
    config.model.ch = 128
    config.model.ch_mult = (1, 1, 2, 2, 4, 4)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.0
    config.schedule.name = "ddpm_linear"
    config.schedule.T = 1000
    config.loss.name = "simple"
    config.sampler.name = "ddpm"
    config.sampler.variance = "beta_tilde"
    config.sampler.clip_denoised = True
    config.optim.lr = 2e-5
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.9999
    return config
