"""EDM on CIFAR-10, class-conditional (Karras et al. 2022), reproducing Table 2, config F, VP
architecture: FID 1.79 at 35 NFE.

Identical to the unconditional run (configs/edm/cifar10_uncond.py) plus the class label fed to
the network (EDM's `--cond=1`: a label embedding added to the noise embedding; no label dropout).
"""
from diffjax.configs.edm import cifar10_uncond


def get_config():
    config = cifar10_uncond.get_config()
    config.data.num_classes = 10
    config.model.num_classes = 10
    return config
