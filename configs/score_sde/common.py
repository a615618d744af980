"""What the three continuous-time CIFAR-10 experiments of Song et al. 2021 (score SDEs) share.

score_sde's default_cifar10_configs: batch 128, 1.3M iterations, Adam lr 2e-4, 5000 warm-up
steps, gradient clipping at 1, random flips; the continuous-time DSM loss (Eq. 7) with
t ~ U(eps, 1).
"""
from diffjax.configs import default


def get_config(sde: str):
    config = default.get_config()
    config.training.num_steps = 1_300_000
    config.training.batch_size = 128
    config.training.checkpoint_every = 50_000
    config.data.source = "tfds:cifar10"
    config.model.name = "ncsnpp"
    config.model.prediction = "score"
    config.model.nf = 128
    config.model.ch_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 4
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1
    config.model.resblock_type = "biggan"
    config.model.skip_rescale = True
    config.loss.name = "dsm"
    config.loss.t_eps = 1e-5
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.eval.metrics = ("fid", "inception_score", "bpd")
    if sde == "ve":
        config.schedule.name = "ve"
        config.schedule.sigma_min = 0.01
        config.schedule.sigma_max = 50.0
        config.data.centered = False     # VE models of score_sde see data in [0, 1]
        config.model.centered = False    # ... and map it to [-1, 1] inside the network
    else:
        config.schedule.name = sde
        config.schedule.beta_min = 0.1
        config.schedule.beta_max = 20.0
    return config
