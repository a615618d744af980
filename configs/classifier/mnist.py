"""A noise-conditional MNIST classifier for guiding ``configs/quickstart.py`` (or its classifier-free
variant ``quickstart_cfg``) by classifier guidance (Dhariwal & Nichol 2021, Sec. 4, Alg. 1).

It keeps the quickstart's data (the 5,000 bundled digits, 28x28x1 in [-1, 1]) and its schedule
(DDPM linear betas, T = 1000): the classifier sees ``x_t`` of the same forward process and the
same noise labels as the diffusion network, so ``grad_x log p(y | x_t, t)`` is taken where the
sampler is. The network is a small ADM-style encoder-half (``diffjax.classifier``); its size and
the number of steps are chosen to train in minutes on a CPU. No paper number is targeted (ADM's
classifiers are ImageNet ones): bench/classifier_guidance_mnist.py measures, on MNIST, the
fidelity/diversity trade-off of the classifier scale that the paper's Table 4 and Fig. 3 show on
ImageNet 256x256.
"""
import ml_collections

from diffjax.configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.training.num_steps = 1000
    config.training.batch_size = 64
    config.training.log_every = 100
    config.training.checkpoint_every = 500
    config.optim.lr = 1e-3
    config.optim.weight_decay = 0.05   # ADM trains its classifiers with AdamW, weight decay 0.05
    config.optim.grad_clip = 1.0
    config.classifier = classifier = ml_collections.ConfigDict()
    # The labels come with every batch; data.num_classes stays 0 (the diffusion model it pairs
    # with is unconditional), the classifier's own class count is here.
    classifier.num_classes = 10
    classifier.ch = 16
    classifier.ch_mult = (1, 2, 2)
    classifier.num_res_blocks = 1
    classifier.num_groups = 8
    return config
