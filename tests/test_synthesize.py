"""Synthetic data for under-represented classes (issue 11): ``python -m diffjax.synthesize``, the
image ``.npz`` source it feeds (alone or next to the real digits), and the imbalance filter.

The synthesized set is checked against the sampling library's own indexed sampler run here on
the documented indices ``k + C j`` (the images ``python -m diffjax.sample`` draws with that seed),
the round trip against the pipeline's documented scaling ``2 u / 255 - 1``.
"""
import hashlib
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffjax import data, sampling, schedules, synthesize, viz
from diffjax import models as models_lib
from diffjax.configs import default, quickstart_cfg
from diffjax.data import sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_run(workdir, num_classes=10, cond_drop_prob=0.2):
    """A step-1 checkpoint of a tiny DDPM (T = 20) of the quickstart_cfg recipe, its weights
    perturbed so that the network's output (and its use of the label) is not ~0."""
    from diffjax import checkpoint, train

    config = quickstart_cfg.get_config()
    config.model.update(ch=8, ch_mult=(1,), num_groups=4)
    config.schedule.T = 20
    config.data.num_classes = config.model.num_classes = num_classes
    config.training.cond_drop_prob = cond_drop_prob
    config.sampler.guidance_scale = 1.0 if cond_drop_prob else 0.0
    net, _, _, tx = train.build(config)
    state = train.init_state(config, net, tx, jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    state = state.replace(params=params, ema_params=params)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    ckpt.save(1, state, {"position": 0}, json.loads(json.dumps(config.to_dict())))
    ckpt.close()
    return str(workdir)


def digest(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def npz_config(source, image_size=28):
    config = default.get_config()
    config.data.update(source=source, image_size=image_size, num_channels=1, random_flip=False)
    return config


# ---------------------------------------------------------------------------- the .npz source

def test_npz_round_trips_through_the_loader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, 24)
    path = sources.save_npz(str(tmp_path / "set.npz"), images, labels, {"note": "test"})
    assert sources.load_npz(path)[2] == {"note": "test"}
    loader = data.get_dataset(npz_config(f"npz:{path}"), batch_size=8)
    by_digest = {digest(im): (im, y) for im, y in zip(images, labels)}
    seen = []
    for k in range(3):  # one epoch: every example exactly once
        batch = loader.make_batch(k)
        pixels = np.rint((batch["image"] + 1.0) * 127.5).astype(np.uint8)
        for x, u, y in zip(batch["image"], pixels, batch["label"]):
            image, label = by_digest[digest(u)]
            np.testing.assert_allclose(x, 2.0 * image.astype(np.float32) / 255.0 - 1.0, atol=1e-6)
            assert y == label
            seen.append(digest(u))
    assert sorted(seen) == sorted(by_digest)


def test_real_plus_synthetic_source_holds_both_in_order(tmp_path):
    real_images, real_labels = sources.load_mnist_5k()
    images = np.full((6, 28, 28, 1), 7, np.uint8) + np.arange(6, dtype=np.uint8)[:, None, None, None]
    path = sources.save_npz(str(tmp_path / "synthetic.npz"), images, np.full(6, 8))
    config = npz_config(f"mnist_offline+npz:{path}")
    source = sources.image_source(config.data, "train")
    assert len(source) == 5006
    got = source.get([5005, 0, 5000, 4999, 5002])
    want = [(images[5], 8), (real_images[0], real_labels[0]), (images[0], 8),
            (real_images[4999], real_labels[4999]), (images[2], 8)]
    for (x, y), (x_want, y_want) in zip(got, want):
        np.testing.assert_array_equal(x, x_want)
        assert y == y_want
    batch = data.get_dataset(config, batch_size=5006).make_batch(0)  # the whole mix, one epoch
    np.testing.assert_array_equal(np.bincount(batch["label"], minlength=10),
                                  np.bincount(real_labels, minlength=10) + 6 * (np.arange(10) == 8))


def test_missing_or_garbled_npz_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no image .npz file at .*nothing.npz.*'images' \\(uint8"):
        data.get_dataset(npz_config(f"npz:{tmp_path / 'nothing.npz'}"), batch_size=2)
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 certainly not a zip archive")
    with pytest.raises(ValueError, match="cannot read .*garbage.npz.*expected an .npz with 'images'"):
        sources.load_npz(str(tmp_path / "garbage.npz"))
    np.savez(tmp_path / "foreign.npz", samples=np.zeros((2, 28, 28, 1), np.float32), labels=np.zeros(2))
    with pytest.raises(ValueError, match="has no \\['images'\\] .*it has \\['labels', 'samples'\\]"):
        sources.load_npz(str(tmp_path / "foreign.npz"))
    np.savez(tmp_path / "floats.npz", images=np.zeros((2, 28, 28, 1), np.float32), labels=np.zeros(2, int))
    with pytest.raises(ValueError, match="images must be uint8 of shape \\(N, H, W, C\\), got float32"):
        sources.load_npz(str(tmp_path / "floats.npz"))
    np.savez(tmp_path / "short.npz", images=np.zeros((3, 28, 28, 1), np.uint8), labels=np.zeros(2, int))
    with pytest.raises(ValueError, match="labels must be integers of shape \\(3,\\), one per image"):
        sources.load_npz(str(tmp_path / "short.npz"))
    with pytest.raises(ValueError, match="npz:.* has only the split 'train'"):
        sources.image_source(npz_config(f"npz:{tmp_path / 'floats.npz'}").data, "test")


# ---------------------------------------------------------------------------- the imbalance filter

def test_keep_fraction_keeps_exactly_the_rounded_fraction_of_each_class():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 450 + np.arange(10)))
    before = np.bincount(labels, minlength=10)
    kept = sources.keep_fraction(labels, {8: 0.03, 3: 0.5, 5: 0.0}, seed=0)
    after = np.bincount(labels[kept], minlength=10)
    assert before[8] == 458 and after[8] == 14  # 3% of 458 is 13.74
    assert before[3] == 453 and after[3] == 227 and after[5] == 0  # half of 453 is 226.5: rounded up
    np.testing.assert_array_equal(np.delete(after, [3, 5, 8]), np.delete(before, [3, 5, 8]))
    assert np.all(np.diff(kept) > 0)  # indices into the original order
    again = sources.keep_fraction(labels, {8: 0.03, 3: 0.5, 5: 0.0}, seed=0)
    other = sources.keep_fraction(labels, {8: 0.03, 3: 0.5, 5: 0.0}, seed=1)
    np.testing.assert_array_equal(kept, again)
    assert not np.array_equal(kept, other) and len(kept) == len(other)
    with pytest.raises(ValueError, match="fraction of class 8 must be in \\[0, 1\\], got 1.5"):
        sources.keep_fraction(labels, {8: 1.5})
    with pytest.raises(ValueError, match="class 11 has no examples; the labels hold \\[0, 1, 2"):
        sources.keep_fraction(labels, {11: 0.5})


# ---------------------------------------------------------------------------- synthesize

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return write_run(tmp_path_factory.mktemp("cfg"))


def test_synthesize_writes_n_per_class_drawn_at_the_documented_indices(run_dir, tmp_path):
    options = {"steps": 3}
    out = synthesize.run(run_dir, ["7", "2"], 3, str(tmp_path / "s.npz"), seed=5, sampler="ddim",
                         options=options, batch_size=4)  # 6 samples: the last batch is padded
    images, labels, meta = sources.load_npz(out)
    np.testing.assert_array_equal(labels, [7, 7, 7, 2, 2, 2])
    assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
    assert meta["step"] == 1 and meta["sampler"] == "ddim" and meta["guidance"] == 1.0
    assert meta["workdir"] == os.path.abspath(run_dir) and meta["classes"] == [7, 2]
    # The same images as the library's indexed sampler at indices k + 10 j with the same seed.
    config, params, _ = sampling.load_run(run_dir)
    net, schedule = models_lib.get_model(config.model), schedules.get(config.schedule)
    draw = jax.jit(sampling.make_indexed_sampler(config, net, schedule, "ddim", options))
    x, y, _ = draw(params, jax.random.PRNGKey(5), np.array([7, 17, 27, 2, 12, 22], np.int32))
    np.testing.assert_array_equal(np.asarray(y), labels)
    np.testing.assert_array_equal(viz.to_uint8(np.asarray(x)), images)


def test_parse_classes_all_and_bad_classes():
    assert synthesize.parse_classes(["all"], 10) == list(range(10))
    assert synthesize.parse_classes(["8", "3"], 10) == [8, 3]
    with pytest.raises(ValueError, match="class 10 is out of range: the run has 10 classes \\(0..9\\)"):
        synthesize.parse_classes(["10"], 10)
    with pytest.raises(ValueError, match="class -1 is out of range"):
        synthesize.parse_classes(["-1"], 10)
    with pytest.raises(ValueError, match="expects an integer in 0..9 or 'all', got 'eight'"):
        synthesize.parse_classes(["eight"], 10)
    with pytest.raises(ValueError, match="class 3 is requested twice"):
        synthesize.parse_classes(["3", "3"], 10)
    with pytest.raises(ValueError, match="no class requested"):
        synthesize.parse_classes([], 10)


def test_guidance_on_a_run_without_conditional_dropout_is_refused(tmp_path):
    workdir = write_run(tmp_path / "nodrop", cond_drop_prob=0.0)
    with pytest.raises(ValueError, match="guidance 2.0 needs a run trained with classifier-free dropout"):
        synthesize.synthesize(workdir, ["1"], 2, guidance=2.0)
    with pytest.raises(ValueError, match="class 12 is out of range: .*nodrop has 10 classes"):
        synthesize.synthesize(workdir, ["12"], 2, guidance=0.0)


def test_cli_refuses_class_on_an_unconditional_model(tmp_path):
    workdir = write_run(tmp_path / "uncond", num_classes=0, cond_drop_prob=0.0)
    proc = subprocess.run([sys.executable, "-m", "diffjax.synthesize", f"--workdir={workdir}", "--class=3",
                           "--num_per_class=2", f"--out={tmp_path / 'x.npz'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode != 0
    assert "error: " in proc.stderr and "is an unconditional model (data.num_classes = 0)" in proc.stderr
    assert not (tmp_path / "x.npz").exists()
