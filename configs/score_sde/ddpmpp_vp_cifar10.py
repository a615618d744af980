"""DDPM++ cont. (VP) on CIFAR-10 (Song et al. 2021), reproducing Table 3: FID 2.55, IS 9.58.

score_sde's configs/vp/cifar10_ddpmpp_continuous.py: VP SDE beta in [0.1, 20], data in [-1, 1],
DDPM++ (NCSN++ backbone without FIR and progressive paths, positional time embedding), EMA
0.9999, loss averaged over pixels; PC sampling with the Euler-Maruyama predictor, no corrector.
The probability-flow likelihood of this model is Table 2's 3.16 bits/dim.
"""
from diffjax.configs.score_sde import common


def get_config():
    config = common.get_config("vp")
    config.model.fir = False
    config.model.progressive_input = "none"
    config.model.embedding_type = "positional"
    config.model.scale_by_sigma = False
    config.loss.reduce_mean = True
    config.optim.ema_decay = 0.9999
    config.sampler.name = "pc"
    config.sampler.predictor = "euler_maruyama"
    config.sampler.corrector = "none"
    config.sampler.steps = 1000
    return config
