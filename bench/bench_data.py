"""Input-pipeline throughput (images/s): this tree's loader against another revision's, and what
the train step consumes.

    python bench/bench_data.py --sizes=32,256 --baseline=HEAD --rounds=3 --batches=20
    python bench/bench_data.py --sizes=32 --train_step   # also the DDPM train step's images/s

Builds (once, in ``--data_dir``) a TFDS dataset per size, prepared as ArrayRecord as training
reads it: ``--examples`` RGB PNG images of ``size x size`` (a smooth pattern plus noise, so PNG
decoding costs about what photos cost). For each size it times ``get_dataset(...)`` of this
working tree and of ``--baseline`` (a git revision, extracted with ``git archive``), each in a fresh
process, alternating the two ``--rounds`` times, and reports the median images/s of one host
reading ``--batches`` batches of ``--batch`` (random flips on, ``--workers`` grain worker
processes; a revision without that option ignores it) after ``--warmup`` batches.

``--train_step`` also times the jitted train step of ``configs/ddpm/cifar10.py`` (32) or
``configs/ddpm/celebahq256.py`` (256) at the same batch on the first local device: the rate the
pipeline has to keep up with. Timings depend on whatever else runs on the machine: take them on
an idle one (``uptime`` load well below 1) and say so.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEASURE = """
import json, sys, time
import ml_collections
from diffjax import data
size, batch, batches, warmup, workers, data_dir = json.loads(sys.argv[1])
config = ml_collections.ConfigDict(dict(seed=0, data=dict(
    source=f"tfds:bench_images{size}", split="train", data_dir=data_dir, image_size=size,
    num_channels=3, random_flip=True, resize="resize", centered=True, num_workers=workers)))
loader = data.get_dataset(config, batch)
for _ in range(warmup):
    next(loader)
start = time.perf_counter()
for _ in range(batches):
    next(loader)
print(json.dumps(batches * batch / (time.perf_counter() - start)))
getattr(loader, "close", lambda: None)()
"""


def build_dataset(size: int, examples: int, data_dir: str) -> None:
    import numpy as np
    import tensorflow_datasets as tfds

    def info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def generate(self):
        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 1, size)
        for i in range(examples):
            a, b, c = rng.random(3)
            smooth = 255 * (0.5 + 0.5 * np.sin(6 * (a * ramp[:, None] + b * ramp[None, :]) + c))
            image = smooth[..., None] * np.array([1.0, 0.8, 0.6]) + rng.normal(0, 8, (size, size, 3))
            yield i, {"image": np.clip(image, 0, 255).astype(np.uint8), "label": i % 10}

    # The class name makes the TFDS name, bench_images<size>; readers find it by its files.
    builder_class = type(f"BenchImages{size}", (tfds.core.GeneratorBasedBuilder,), {
        "VERSION": tfds.core.Version("1.0.0"), "_info": info,
        "_split_generators": lambda self, dl_manager: {"train": self._generate_examples()},
        "_generate_examples": generate})
    builder = builder_class(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare()


def extract(revision: str, into: str) -> str:
    """The ``diffjax`` package of a git revision, unpacked under ``into``."""
    archive = os.path.join(into, "rev.tar")
    subprocess.run(["git", "-C", REPO, "archive", "-o", archive, revision, "diffjax"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def measure(root: str, args: argparse.Namespace, size: int) -> float:
    env = dict(os.environ, PYTHONPATH=root)
    setting = json.dumps([size, args.batch, args.batches, args.warmup, args.workers, args.data_dir])
    out = subprocess.run([sys.executable, "-c", MEASURE, setting], env=env, cwd=root, check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def train_step_rate(size: int, batch: int, steps: int) -> float:
    import jax
    import numpy as np

    from diffjax import train
    from diffjax.configs.ddpm import celebahq256, cifar10

    config = (cifar10 if size == 32 else celebahq256).get_config()
    config.training.batch_size = batch
    net, schedule, loss_fn, tx = train.build(config)
    state = train.init_state(config, net, tx, jax.random.PRNGKey(0))
    step = jax.jit(train.make_train_step(config, net, schedule, loss_fn, tx), donate_argnums=0)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    batch_data = {"image": x, "label": np.zeros(batch, np.int32)}
    state, metrics = step(state, batch_data)  # compile
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch_data)
    jax.block_until_ready(metrics)
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,256")
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--baseline", default="HEAD", help="git revision to compare against ('' for none)")
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "diffjax_bench_data"))
    parser.add_argument("--train_step", action="store_true")
    parser.add_argument("--train_steps", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        build_dataset(size, args.examples, args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"this tree": REPO}
        if args.baseline:
            roots[f"baseline {args.baseline}"] = extract(args.baseline, tmp)
        rows = []
        for size in sizes:
            rates = {name: [] for name in roots}
            for _ in range(args.rounds):  # alternate, so drifting load hits both alike
                for name, root in roots.items():
                    rates[name].append(measure(root, args, size))
            row = {"size": size, **{name: statistics.median(r) for name, r in rates.items()},
                   "all": rates}
            if args.train_step:
                row["train step"] = train_step_rate(size, args.batch, args.train_steps)
            rows.append(row)
    print(f"images/s, median of {args.rounds} (batch {args.batch}, {args.batches} batches, "
          f"{args.workers} workers)")
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
