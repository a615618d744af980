"""NCSN on CIFAR-10 (Song & Ermon 2019), reproducing Table 1: Inception score 8.87, FID 25.32.

Sec. 5: L = 10 noise levels, geometric from sigma_1 = 1 to sigma_10 = 0.01, data in [0, 1],
denoising score matching with lambda(sigma) = sigma^2 (Eq. 6), the RefineNet with
conditional instance norm++ (128 filters), Adam lr 1e-3, batch 128, 200k iterations, no EMA,
no clipping; annealed Langevin dynamics (Algorithm 1) with T = 100 steps per level and
epsilon = 2e-5.
"""
from diffjax.configs import default


def get_config():
    config = default.get_config()
    config.training.num_steps = 200_000
    config.training.batch_size = 128
    config.data.source = "tfds:cifar10"
    config.data.centered = False
    config.model.name = "ncsn"
    config.model.prediction = "score"
    config.model.nf = 128
    config.schedule.name = "ve"
    config.schedule.sigma_min = 0.01
    config.schedule.sigma_max = 1.0
    config.loss.name = "ncsn_dsm"
    config.loss.num_scales = 10
    # the network maps its input sigma to the level index i of these L levels (linked fields)
    config.model.num_scales = config.loss.get_ref("num_scales")
    config.model.sigma_min = config.schedule.get_ref("sigma_min")
    config.model.sigma_max = config.schedule.get_ref("sigma_max")
    config.sampler.name = "annealed_langevin"
    config.sampler.steps = 10
    config.sampler.n_steps_each = 100
    config.sampler.step_lr = 2e-5
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 0
    config.optim.grad_clip = 0.0
    config.optim.ema_decay = 0.0
    config.eval.metrics = ("fid", "inception_score")
    return config
