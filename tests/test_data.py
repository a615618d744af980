"""The data pipeline: real TFDS APIs on a dataset built locally, the bundled MNIST subset, the toy
sets; deterministic and resumable order, a stream that is a function of the global example
position (the same on any process count, resumable across process counts), augmentation."""
import itertools
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from diffjax.configs import default
from diffjax import data
from diffjax.data.pipeline import to_size

N_TINY = 45  # not a multiple of the batch sizes below: the last partial batch is dropped


class TinyIds(tfds.core.GeneratorBasedBuilder):
    """8x8 RGB images; channel 0 holds the example id, channel 1 a left-to-right ramp."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(N_TINY):
            image = np.zeros((8, 8, 3), np.uint8)
            image[..., 0] = i
            image[..., 1] = np.arange(8, dtype=np.uint8)[None, :] * 30
            yield i, {"image": image, "label": i % 10}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("tfds"))
    TinyIds(data_dir=directory, file_format="array_record").download_and_prepare()
    return directory


def tiny_config(tfds_dir, **data_fields):
    config = default.get_config()
    config.data.update(dict(source="tfds:tiny_ids", data_dir=tfds_dir, image_size=8,
                            num_channels=3, random_flip=False), **data_fields)
    return config


def ids(batch):
    """Example ids back from the [-1, 1] images (channel 0 = id / 255 * 2 - 1)."""
    return np.rint((batch["image"][:, 0, 0, 0] + 1) / 2 * 255).astype(int)


def test_tfds_epoch_visits_every_example_once_in_minus_one_one(tfds_dir):
    loader = data.get_dataset(tiny_config(tfds_dir), batch_size=4)
    assert loader.batches_per_epoch == N_TINY // 4
    seen = np.concatenate([ids(next(loader)) for _ in range(loader.batches_per_epoch)])
    assert len(set(seen)) == len(seen) == (N_TINY // 4) * 4
    assert set(seen) <= set(range(N_TINY))
    batch = next(loader)
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(batch["label"], ids(batch) % 10)
    ramp = batch["image"][0, 0, :, 1]
    np.testing.assert_allclose(ramp, np.arange(8) * 30 / 255 * 2 - 1, atol=1e-6)


def test_same_seed_same_order_different_seed_different_order(tfds_dir):
    a = data.get_dataset(tiny_config(tfds_dir), batch_size=5)
    b = data.get_dataset(tiny_config(tfds_dir), batch_size=5)
    order_a = [ids(next(a)) for _ in range(20)]  # over two epochs
    order_b = [ids(next(b)) for _ in range(20)]
    np.testing.assert_array_equal(order_a, order_b)
    other = tiny_config(tfds_dir)
    other.seed = 1
    c = data.get_dataset(other, batch_size=5)
    assert not np.array_equal(order_a, [ids(next(c)) for _ in range(20)])
    # a new epoch is a new permutation
    assert not np.array_equal(np.concatenate(order_a[:9]), np.concatenate(order_a[9:18]))


def test_restored_position_continues_the_order(tfds_dir):
    reference = data.get_dataset(tiny_config(tfds_dir, random_flip=True), batch_size=4)
    expected = [next(reference) for _ in range(17)]
    first = data.get_dataset(tiny_config(tfds_dir, random_flip=True), batch_size=4)
    for _ in range(7):
        next(first)
    saved = first.state()
    assert saved == {"position": 7}
    resumed = data.get_dataset(tiny_config(tfds_dir, random_flip=True), batch_size=4)
    resumed.restore(saved)
    for want in expected[7:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def global_batch(config, k, hosts, global_size):
    """Global batch ``k`` assembled as the trainer does: the hosts' batches in process order."""
    parts = [data.get_dataset(config, global_size // hosts, process_index=p, process_count=hosts)
             .make_batch(k) for p in range(hosts)]
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def mnist_config():
    config = default.get_config()
    config.data.update(source="mnist_offline", image_size=32, num_channels=1, resize="pad",
                       random_flip=True)
    return config


def toy_config():
    config = default.get_config()
    config.data.source = "toy:8gaussians"
    return config


@pytest.mark.parametrize("source", ["tfds", "mnist_offline", "toy"])
def test_hosts_concatenated_give_the_one_process_global_batch(tfds_dir, source):
    """1, 2 and 4 processes with the same global batch of 8 read the same examples, flipped the
    same way, for batches inside an epoch and on both sides of epoch boundaries."""
    config, batches = {
        "tfds": (tiny_config(tfds_dir, random_flip=True), [0, 3, 4, 5, 6, 9, 10, 11]),  # 5 per epoch
        "mnist_offline": (mnist_config(), [0, 7, 624, 625, 1249, 1250]),              # 625 per epoch
        "toy": (toy_config(), [0, 1, 7, 2 ** 29]),
    }[source]
    for k in batches:
        one = global_batch(config, k, 1, 8)
        for hosts in (2, 4):
            split = global_batch(config, k, hosts, 8)
            assert split.keys() == one.keys()
            for key in one:
                np.testing.assert_array_equal(split[key], one[key], err_msg=f"{source} k={k} P={hosts}")


def test_stream_follows_the_documented_formula(tfds_dir):
    """Host p of P reads positions [k B + p b, k B + (p + 1) b) of global batch k; position g in
    epoch e reads record perm_e[g - e K B], perm_e = default_rng([seed, e]).permutation(N), and
    is mirrored when Philox(key=(seed, g)) draws a uniform below 1/2."""
    loader = data.get_dataset(tiny_config(tfds_dir, random_flip=True), batch_size=4,
                              process_index=1, process_count=2)
    K = N_TINY // 8
    ramp = np.arange(8) * 30 / 255 * 2 - 1
    for k in (2, 7):
        epoch, i = divmod(k, K)
        perm = np.random.default_rng([0, epoch]).permutation(N_TINY)
        records = perm[i * 8 + 4:i * 8 + 8]  # record r of the split holds the example whose id is:
        want = [image[0, 0, 0] for image, _ in loader.source.get(records)]
        batch = loader.make_batch(k)
        np.testing.assert_array_equal(ids(batch), want)
        flipped = [np.random.Generator(np.random.Philox(key=[0, g])).random() < 0.5
                   for g in range(8 * k + 4, 8 * k + 8)]
        np.testing.assert_allclose(batch["image"][:, 0, :, 1],
                                   [ramp[::-1] if f else ramp for f in flipped], atol=1e-6)


@pytest.mark.parametrize("hosts", [2, 3])
def test_an_epoch_of_host_batches_is_disjoint_and_covers_the_split(tfds_dir, hosts):
    """Over one epoch the hosts read disjoint examples that cover the split but for the dropped
    last partial global batch."""
    reads = [ids(batch) for p in range(hosts)
             for batch in itertools.islice(data.get_dataset(
                 tiny_config(tfds_dir), batch_size=2, process_index=p, process_count=hosts),
                 N_TINY // (2 * hosts))]
    seen = np.concatenate(reads)
    assert len(seen) == len(set(seen)) == N_TINY - N_TINY % (2 * hosts)


def test_a_two_process_stream_resumes_on_one_process(tfds_dir):
    """The saved state is the global batch count: two processes stopped after 7 global batches
    continue on one process (same global batch) with exactly the batches they would have read,
    across the epoch boundary at 10."""
    config = tiny_config(tfds_dir, random_flip=True)
    hosts = [data.get_dataset(config, 4, process_index=p, process_count=2) for p in range(2)]
    for _ in range(7):
        for loader in hosts:
            next(loader)
    states = [loader.state() for loader in hosts]
    assert states[0] == states[1] == {"position": 7}
    expected = [{key: np.concatenate([a[key], b[key]]) for key in a}
                for a, b in ((next(hosts[0]), next(hosts[1])) for _ in range(6))]
    resumed = data.get_dataset(config, 8)
    resumed.restore(json.loads(json.dumps(states[0])))  # as it travels through the checkpoint
    for want in expected:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_toy_points_depend_on_the_global_position_only():
    config = toy_config()
    two = [data.get_dataset(config, 3, process_index=p, process_count=2) for p in range(2)]
    one = data.get_dataset(config, 6)
    one.restore({"position": 5})
    for loader in two:
        loader.restore({"position": 5})
    np.testing.assert_array_equal(next(one)["image"],
                                  np.concatenate([next(two[0])["image"], next(two[1])["image"]]))


def test_a_split_smaller_than_the_global_batch_is_a_clear_error(tfds_dir):
    with pytest.raises(ValueError, match="45 examples, fewer than one global batch of 48"):
        data.get_dataset(tiny_config(tfds_dir), 24, process_index=0, process_count=2)


@pytest.mark.slow  # starts worker processes twice
def test_grain_worker_processes_do_not_change_the_stream(tfds_dir):
    """Two grain worker processes read the same batches as this process alone, resumed too."""
    config = tiny_config(tfds_dir, random_flip=True)
    expected = list(itertools.islice(data.get_dataset(config, 4), 12))  # over an epoch boundary
    config.data.num_workers = 2
    loader = data.get_dataset(config, 4)
    try:
        got = list(itertools.islice(loader, 5))
        loader.restore({"position": 8})
        got += list(itertools.islice(loader, 4))
    finally:
        loader.close()
    for want, batch in zip(expected[:5] + expected[8:], got, strict=True):
        np.testing.assert_array_equal(batch["image"], want["image"])
        np.testing.assert_array_equal(batch["label"], want["label"])


def test_random_flip_mirrors_about_half_the_images(tfds_dir):
    loader = data.get_dataset(tiny_config(tfds_dir, random_flip=True), batch_size=40)
    batch = next(loader)
    ramp = np.arange(8) * 30 / 255 * 2 - 1
    rows = batch["image"][:, 0, :, 1]
    flipped = np.all(np.isclose(rows, ramp[::-1]), axis=1)
    kept = np.all(np.isclose(rows, ramp), axis=1)
    assert np.all(flipped ^ kept)
    assert 10 <= flipped.sum() <= 30  # Binomial(40, 1/2): outside this range has p < 2e-3


def test_mnist_offline_padded_to_32_has_5000_labelled_digits():
    config = default.get_config()
    config.data.update(source="mnist_offline", image_size=32, num_channels=1, resize="pad",
                       random_flip=False)
    loader = data.get_dataset(config, batch_size=100)
    assert len(loader.source) == 5000
    batch = next(loader)
    assert batch["image"].shape == (100, 32, 32, 1)
    np.testing.assert_array_equal(batch["image"][:, :2], -1.0)   # the zero padding is black
    assert batch["image"].max() == 1.0                             # white strokes
    assert set(np.unique(batch["label"])) <= set(range(10)) and len(np.unique(batch["label"])) >= 8


def test_toy_batches_are_deterministic_per_position():
    config = default.get_config()
    config.data.source = "toy:8gaussians"
    a, b = data.get_dataset(config, 64), data.get_dataset(config, 64)
    b.restore({"position": 3})
    for _ in range(3):
        next(a)
    np.testing.assert_array_equal(next(a)["image"], next(b)["image"])
    radius = np.linalg.norm(next(a)["image"], axis=1)
    assert np.all(np.abs(radius - 2.0) < 0.6)


def test_center_crop_and_resize():
    image = np.zeros((4, 8, 1), np.uint8)
    image[:, 2:6] = 200  # the centre square
    out = to_size(image, 2, "resize")
    np.testing.assert_array_equal(out, np.full((2, 2, 1), 200, np.uint8))
    padded = to_size(np.full((2, 2, 1), 9, np.uint8), 4, "pad")
    assert padded.sum() == 4 * 9 and padded[1:3, 1:3].min() == 9


@pytest.mark.parametrize("source, message", [
    ("tfds:no_such_dataset_xyz", "unknown TFDS dataset 'no_such_dataset_xyz'"),
    ("toy:no_such_toy", "unknown toy dataset 'no_such_toy'"),
    ("imagenet_from_disk", "unknown data.source 'imagenet_from_disk'"),
])
def test_unknown_dataset_is_a_clear_error(source, message):
    config = default.get_config()
    config.data.source = source
    with pytest.raises(ValueError, match=message):
        data.get_dataset(config, 8)


def test_channel_mismatch_is_a_clear_error(tfds_dir):
    loader = data.get_dataset(tiny_config(tfds_dir, num_channels=1), batch_size=2)
    with pytest.raises(ValueError, match="3 channels but data.num_channels is 1"):
        next(loader)


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    config = tiny_config(str(tmp_path))  # an empty data_dir: nothing prepared there
    with pytest.raises(ValueError, match="tfds build tiny_ids --file_format=array_record"):
        data.get_dataset(config, 4)
