"""Forward pass and train step of the DDPM CIFAR-10 UNet: diffjax vs diffusers UNet2DModel.

    python bench/bench_unet.py [--quick] [--repeats N] [--threads T] [--pin CPU] [--json FILE]

Kept for old commands: the same as ``python -m bench train_step,forward`` (see ``bench/run.py``).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train_step,forward", *sys.argv[1:]]))
