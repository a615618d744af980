"""EDM on CIFAR-10, unconditional (Karras et al. 2022), reproducing Table 2, config F, VP
architecture: FID 1.97 at 35 NFE (deterministic Heun, 18 steps).

EDM's train.py defaults for `--cond=0 --arch=ddpmpp --precond=edm`: DDPM++ backbone (128
channels, multipliers 2,2,2, four blocks per resolution, attention at 16x16, dropout 0.13)
wrapped in the EDM preconditioning (Table 1); loss with ln(sigma) ~ N(-1.2, 1.2^2), sigma_data
0.5; Adam lr 1e-3 with betas (0.9, 0.999), batch 512, linear lr ramp over 10 Mimg, 200 Mimg in
all; EMA half-life 0.5 Mimg with ramp ratio 0.05; no gradient clipping (EDM replaces NaN/inf
gradients by zero instead).
Not reproduced: EDM's non-leaking augmentation pipeline (p = 0.12, with augmentation labels fed
to the network), which Table 2's CIFAR-10 numbers use.
"""
from diffjax.configs import default

_BATCH = 512


def get_config():
    config = default.get_config()
    config.training.batch_size = _BATCH
    config.training.num_steps = 200_000_000 // _BATCH
    config.training.checkpoint_every = 10_000
    config.data.source = "tfds:cifar10"
    config.model.name = "edm"
    config.model.backbone = "ddpmpp"   # EDM's --arch=ddpmpp (SongUNet), positional embedding
    config.model.prediction = "x0"
    config.model.nf = 128
    config.model.ch_mult = (2, 2, 2)
    config.model.num_res_blocks = 4
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.13
    config.model.sigma_data = 0.5
    config.schedule.name = "edm"
    config.schedule.sigma_min = 0.002
    config.schedule.sigma_max = 80.0
    config.schedule.sigma_data = 0.5
    config.schedule.rho = 7.0
    config.schedule.P_mean = -1.2
    config.schedule.P_std = 1.2
    config.loss.name = "edm"
    config.sampler.name = "edm_heun"
    config.sampler.steps = 18
    config.sampler.rho = 7.0
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 10_000_000 // _BATCH
    config.optim.grad_clip = 0.0
    config.optim.zero_nonfinite_grads = True
    config.optim.ema_halflife_kimg = 500.0
    config.optim.ema_rampup_ratio = 0.05
    config.eval.metrics = ("fid",)
    return config
