"""Text-to-MNIST: the quickstart DDPM conditioned on captions through cross-attention.

Every bundled MNIST digit gets captions written from its own pixels (``diffjax.data.captions``:
stroke thickness, slant and size, cut at the dataset's tertiles, in several phrasings such as
"a thick seven leaning right", "the number 7, thin strokes", "a small upright 7"), encoded once
by the frozen all-MiniLM-L6-v2 sentence encoder (``diffjax.text``; 384-d token embeddings, at
most 16 tokens, cached under ``~/.cache/diffjax/captions``). The UNet attends to those token
embeddings after each self-attention (at 14x14, 7x7 and in the middle block; padded tokens are
masked). With probability ``cond_drop_prob`` a caption is replaced by the null caption (no
token), so the same network is also unconditional and can be sampled with classifier-free
guidance (Ho & Salimans 2021; GLIDE, Nichol et al. 2022, trains its text model the same way):

    python -m diffjax.train --config=text2mnist --workdir=runs/text2mnist
    python -m diffjax.sample --workdir=runs/text2mnist --prompt="a thin three|a thick three" --guidance=3

No paper number: the measurement of what guidance does to class and attribute agreement is
``bench/text_guidance_mnist.py`` (docs/text_guidance.md).

Everything else is ``configs/quickstart.py``. Training time (2026-12-03, 2-core CPU shared with
other jobs, load average 4-10): the 3,000 steps took 1,071 CPU-seconds (user + sys, including
two compiles, as the run was interrupted once and resumed, and three sample grids), about 0.3
CPU-seconds a step; 5.3-5.9 steps/s while it had most of the machine; 41 minutes wall in all
under that load. The step-3000 grid is docs/text2mnist_samples.png.
"""
import ml_collections

from diffjax.configs import quickstart


def get_config():
    config = quickstart.get_config()
    config.training.num_steps = 3000
    config.training.cond_drop_prob = 0.2  # as quickstart_cfg; Ho & Salimans found 0.1-0.2 best
    config.model.context_dim = 384        # all-MiniLM-L6-v2's width
    config.model.attn_resolutions = (14, 7)
    config.sampler.guidance_scale = 2.0   # the periodic sample grids
    config.text = text = ml_collections.ConfigDict()
    text.encoder = "minilm"
    text.max_tokens = 16                  # the longest training or held-out caption has 15
    text.cache_dir = ""                   # "": ~/.cache/diffjax/captions
    text.prompts = ("a zero", "a one", "a two", "a three", "a four", "a five", "a six", "a seven",
                    "an eight", "a nine", "a thin three", "a thick three", "a seven leaning left",
                    "a seven leaning right", "a small five", "a large five")
    return config
