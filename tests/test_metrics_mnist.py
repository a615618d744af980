"""The offline MNIST classifier and the metrics built on it."""
import numpy as np
import pytest

from diffjax.data.sources import load_mnist_5k
from diffjax.metrics import fid, mnist_classifier


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    images, labels = load_mnist_5k()
    variables, acc = mnist_classifier.train(images, labels, epochs=1)
    path = tmp_path_factory.mktemp("clf") / "clf.npz"
    mnist_classifier.save(path, variables, {"held_out_accuracy": acc})
    return images, labels, path, acc


def test_classifier_learns_and_roundtrips(trained):
    images, labels, path, acc = trained
    assert acc > 0.85  # one epoch; the 8-epoch default reaches ~0.98
    variables, info = mnist_classifier.load(path)
    assert info["held_out_accuracy"] == acc
    (_, _), (x_te, y_te) = mnist_classifier.split(images, labels)
    apply_fn = mnist_classifier.make_apply_fn(variables)
    assert mnist_classifier.accuracy(apply_fn, x_te, y_te) == pytest.approx(acc)
    # Class accuracy of "conditional samples" whose labels are wrong is chance level.
    assert mnist_classifier.accuracy(apply_fn, x_te, (y_te + 1) % 10) < 0.05


def test_mnist_fid_separates_real_from_corrupted(trained):
    images, _, path, _ = trained
    apply_fn = mnist_classifier.make_apply_fn(mnist_classifier.load(path)[0])
    feats = lambda x: fid.extract_features(  # noqa: E731
        apply_fn, np.array_split(x, 5), keys=("features",))["features"]
    rng = np.random.default_rng(0)
    images = images[rng.permutation(len(images))]  # the file is sorted by digit
    real_a, real_b = feats(images[:2500]), feats(images[2500:])
    noisy = np.clip(images[2500:] + rng.normal(0, 60, images[2500:].shape), 0, 255).astype(np.uint8)
    same = fid.fid_from_features(real_a, real_b)
    corrupted = fid.fid_from_features(real_a, feats(noisy))
    assert same < 0.1 * corrupted


def test_classifier_rejects_bad_inputs(tmp_path):
    apply_fn = mnist_classifier.make_apply_fn(None)
    with pytest.raises(ValueError, match="uint8 images of shape \\(N, 28, 28, 1\\)"):
        apply_fn(np.zeros((2, 28, 28, 1), np.float32))
    with pytest.raises(FileNotFoundError, match="python -m diffjax.metrics.mnist_classifier"):
        mnist_classifier.load(tmp_path / "missing.npz")
