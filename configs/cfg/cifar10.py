"""Classifier-free guidance (Ho & Salimans 2021) on class-conditional CIFAR-10.

The paper's experiments are ImageNet 64x64 (Table 1, best FID 1.55 at w = 0.1, p_uncond = 0.1)
and 128x128 (Table 2); it reports no CIFAR-10 number, so this config has no paper target. It
transplants the paper's method onto the DDPM CIFAR-10 setup (configs/ddpm/cifar10.py): the label
is replaced by the null label with probability p_uncond = 0.1 during training (Algorithm 1), and
samples use eps = (1 + w) eps(x, c) - w eps(x) (Algorithm 2, Eq. 6) with w = 0.1 by default.
"""
from diffjax.configs.ddpm import cifar10


def get_config():
    config = cifar10.get_config()
    config.data.num_classes = 10
    config.model.num_classes = 10
    config.training.cond_drop_prob = 0.1
    config.sampler.guidance_scale = 0.1
    config.sampler.clip_denoised = True
    return config
