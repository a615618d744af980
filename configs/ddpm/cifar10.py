"""DDPM on CIFAR-10 (Ho et al. 2020), reproducing Table 1: FID 3.17, IS 9.46 (unconditional).

Sec. 4 and Appendix B: T = 1000, betas linear from 1e-4 to 0.02, eps-prediction trained on
L_simple; the 35.7M-parameter UNet (ch 128, multipliers 1,2,2,2, two residual blocks per
resolution, self-attention at 16x16, dropout 0.1); Adam lr 2e-4, batch 128, 5000 warm-up steps,
gradient clipping at norm 1, EMA 0.9999, random horizontal flips, 800k steps; ancestral sampling
(Algorithm 2) with sigma_t^2 = beta_t.
"""
from diffjax.configs import default


def get_config():
    config = default.get_config()
    config.training.num_steps = 800_000
    config.training.batch_size = 128
    config.data.source = "tfds:cifar10"
    config.model.name = "ddpm_unet"
    config.model.prediction = "eps"
    config.model.ch = 128
    config.model.ch_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1
    config.schedule.name = "ddpm_linear"
    config.schedule.T = 1000
    config.loss.name = "simple"
    config.sampler.name = "ddpm"
    config.sampler.variance = "beta"
    config.sampler.clip_denoised = True
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.9999
    config.eval.metrics = ("fid", "inception_score")
    return config
