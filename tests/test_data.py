"""The data pipeline: real TFDS APIs on a dataset built locally, the bundled MNIST subset, the toy
sets; deterministic and resumable order, disjoint and covering per-host shards, augmentation."""
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


@pytest.mark.parametrize("hosts", [2, 3])
def test_tfds_host_shards_are_disjoint_and_cover_the_split(tfds_dir, hosts):
    shards = []
    for index in range(hosts):
        loader = data.get_dataset(tiny_config(tfds_dir), batch_size=1, process_index=index,
                                  process_count=hosts)
        shards.append({int(ids(next(loader))[0]) for _ in range(len(loader.source))})
    for i in range(hosts):
        for j in range(i + 1, hosts):
            assert not shards[i] & shards[j]
    assert set().union(*shards) == set(range(N_TINY))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_mnist_offline_shards_disjoint_and_covering():
    config = default.get_config()
    config.data.update(source="mnist_offline", image_size=28, num_channels=1, random_flip=False)
    sizes, firsts = [], []
    for index in range(3):
        loader = data.get_dataset(config, batch_size=8, process_index=index, process_count=3)
        sizes.append(len(loader.source))
        firsts.append(loader.source._rows)
    assert sum(sizes) == 5000
    rows = np.concatenate(firsts)
    np.testing.assert_array_equal(np.sort(rows), np.arange(5000))


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
        loader.make_batch(0)


def test_unprepared_tfds_dataset_says_how_to_prepare_it(tmp_path):
    config = tiny_config(str(tmp_path))  # an empty data_dir: nothing prepared there
    with pytest.raises(ValueError, match="tfds build tiny_ids --file_format=array_record"):
        data.get_dataset(config, 4)
