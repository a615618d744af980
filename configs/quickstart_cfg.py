"""Classifier-free guidance on the bundled MNIST digits: the quickstart made class-conditional.

Ho & Salimans 2021 ("Classifier-Free Diffusion Guidance") train one network both conditionally
and unconditionally, replacing the label by a null label with probability p_uncond (Algorithm 1),
and sample with ``eps = (1 + w) eps(x, c) - w eps(x)`` (Algorithm 2, Eq. 6). Their Fig. 4 and
Tables 1-2 (ImageNet 64x64 / 128x128) show the trade-off this config reproduces qualitatively:
as the guidance weight w grows, Inception Score (fidelity) rises while FID first improves a
little and then worsens (lost diversity). Here fidelity is the class accuracy of the offline
MNIST classifier and FID the "MNIST FID" of its features (docs/evaluation.md); the sweep over w
is ``bench/guidance_mnist.py`` and its numbers are in bench/RESULTS.md. No paper number is
targeted (the paper has no MNIST experiment).

Everything is ``configs/quickstart.py`` (tiny DDPM UNet, linear betas, T = 1000, eps-prediction)
except: 10 classes plus the null label (row 10 of the class embedding), p_uncond = 0.2 (the
paper's ablation found 0.1 and 0.2 about equally good, 0.5 worse; the larger value gives the
unconditional half more data in a short run), and the periodic sample grid guided with w = 1.
"""
from diffjax.configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.training.num_steps = 3000  # the length its bench numbers were measured at
    config.data.num_classes = 10
    config.model.num_classes = 10
    config.training.cond_drop_prob = 0.2
    config.sampler.guidance_scale = 1.0
    return config
