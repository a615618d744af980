"""NCSN++ cont. (VE) on CIFAR-10 (Song et al. 2021), reproducing Table 3: FID 2.38, IS 9.83.

score_sde's configs/ve/cifar10_ncsnpp_continuous.py: VE SDE sigma in [0.01, 50], data in [0, 1],
NCSN++ with FIR up/down-sampling, BigGAN residual blocks, residual progressive input, Gaussian
Fourier time embedding (scale 16), output scaled by 1/sigma; EMA 0.999; loss summed over pixels;
PC sampling with the reverse-diffusion predictor and Langevin corrector (snr 0.16, 1000 steps).
"""
from diffjax.configs.score_sde import common


def get_config():
    config = common.get_config("ve")
    config.model.fir = True
    config.model.progressive_input = "residual"
    config.model.embedding_type = "fourier"
    config.model.fourier_scale = 16.0
    config.model.scale_by_sigma = True
    config.loss.reduce_mean = False
    config.optim.ema_decay = 0.999
    config.sampler.name = "pc"
    config.sampler.predictor = "reverse_diffusion"
    config.sampler.corrector = "langevin"
    config.sampler.snr = 0.16
    config.sampler.steps = 1000
    return config
