"""DDPM++ cont. (sub-VP) on CIFAR-10 (Song et al. 2021), reproducing Table 3: FID 2.61, IS 9.56.

score_sde's configs/subvp/cifar10_ddpmpp_continuous.py: as the VP experiment with the sub-VP SDE
(Eq. 29); Table 2 gives its probability-flow likelihood, 3.02 bits/dim.
"""
from diffjax.configs.score_sde import ddpmpp_vp_cifar10


def get_config():
    config = ddpmpp_vp_cifar10.get_config()
    config.schedule.name = "subvp"
    return config
