"""The shared default config: every field any experiment may set, with neutral values.

Per-experiment configs start from :func:`get_config` here and override only what their paper
changes. Every field can be overridden from the command line, e.g.
``python -m diffjax.train --config=configs/ddpm/cifar10.py --config.training.batch_size=64``;
a field that does not exist is an error (the config is locked).

Field groups:
  training  loop length and cadence, batch size, steps per compiled call, precision
  data      where images come from and how they are preprocessed
  model     network name (``diffjax.models`` registry), its prediction kind and hyper-parameters
  schedule  ``diffjax.schedules.get`` fields (``name`` plus constructor arguments)
  loss      ``diffjax.losses.get`` fields (``name`` plus options)
  sampler   ``diffjax.samplers.sample`` name and options (used for the periodic sample grid)
  optim     Adam, linear warm-up, global-norm clipping, EMA (decay or EDM half-life)
  eval      metrics computed by ``python -m diffjax.evaluate``
  parallel  device mesh and multi-host settings
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.training = training = ml_collections.ConfigDict()
    training.num_steps = 1_300_000
    training.batch_size = 128            # global batch over all hosts and devices
    training.log_every = 100
    training.checkpoint_every = 10_000
    training.keep_checkpoints = 3        # the most recent ones ...
    training.keep_period = 0             # ... and every multiple of this step (0: none)
    training.nonfinite = "skip"          # non-finite loss/gradient: "skip" the update, or "stop"
    training.max_consecutive_nonfinite = 10  # "skip": stop after this many in a row
    training.sample_every = 50_000       # also at the last step; 0: never
    training.num_grid_samples = 64       # images in the periodic sample grid
    training.steps_per_call = 1          # train steps fused into one compiled call (lax.scan)
    training.grad_accum = 1              # micro-batches per step (batch_size must divide evenly)
    training.compute_dtype = "float32"   # or "bfloat16": activations only, params stay float32
    training.cond_drop_prob = 0.0        # classifier-free guidance: P(label -> null label)
    training.dropout_rng = "threefry"    # dropout masks: "threefry", or "rbg" / "unsafe_rbg" (faster
                                         # on TPU/GPU; the masks then depend on the device mesh)
    training.compilation_cache = ""      # directory (or gs://) for XLA's persistent compilation
                                         # cache: a restarted run loads its compiled step; "": off

    config.data = data = ml_collections.ConfigDict()
    data.source = "tfds:cifar10"         # "tfds:<name>[/<config>]", "mnist_offline", "toy:<name>"
    data.split = "train"
    data.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data_dir (None: default)
    data.image_size = 32
    data.num_channels = 3
    data.num_classes = 0                 # 0: unconditional (labels still yielded if present)
    data.random_flip = True
    data.resize = "resize"               # "resize" (centre-crop then resize) or "pad" (zero-pad)
    data.centered = True                 # True: [-1, 1]; False: [0, 1] (score_sde VE models)
    data.num_workers = 0                 # grain worker processes reading ahead (0: threads of this process)

    config.model = model = ml_collections.ConfigDict()
    model.name = "ddpm_unet"
    model.prediction = "eps"

    config.schedule = schedule = ml_collections.ConfigDict()
    schedule.name = "ddpm_linear"

    config.loss = loss = ml_collections.ConfigDict()
    loss.name = "simple"

    config.sampler = sampler = ml_collections.ConfigDict()
    sampler.name = "ddpm"
    # Clip the denoiser's x0 estimate to the data range before every step, as DDPM and
    # improved-diffusion sample images (diffusers' clip_sample); score_sde and EDM do not.
    sampler.clip_denoised = False

    config.optim = optim = ml_collections.ConfigDict()
    optim.optimizer = "adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.weight_decay = 0.0
    optim.warmup_steps = 5000            # linear warm-up from 0 (DDPM, score_sde)
    optim.grad_clip = 1.0                # global-norm clipping; 0 disables
    optim.zero_nonfinite_grads = False   # EDM: NaN gradients -> 0, +-inf -> +-1e5
    optim.ema_decay = 0.9999             # used when ema_halflife_kimg is 0
    optim.ema_halflife_kimg = 0.0        # EDM: EMA half-life in thousands of images
    optim.ema_rampup_ratio = 0.0         # EDM: half-life <= ratio * images seen so far (0: off)

    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.metrics = ("fid",)
    evaluate.num_samples = 50_000
    evaluate.batch_size = 500

    config.parallel = parallel = ml_collections.ConfigDict()
    parallel.fsdp = 1                    # size of the fsdp mesh axis; data axis gets the rest
    # Multi-host: set the three below (see README, "Several hosts"), or distributed=True to let
    # jax.distributed.initialize() read them from the cluster (TPU pods, SLURM, ...).
    parallel.distributed = False
    parallel.coordinator_address = ml_collections.config_dict.placeholder(str)  # "host:port" of process 0
    parallel.num_processes = ml_collections.config_dict.placeholder(int)
    parallel.process_id = ml_collections.config_dict.placeholder(int)

    return config
