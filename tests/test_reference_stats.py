"""Reference statistics: diffjax's own file and the layouts the papers' repositories publish
(score_sde's pool_3 features, EDM's mu/sigma, guided-diffusion's reference batches) give the same
FID; `python -m diffjax.metrics.reference` computes the whole training split."""
import numpy as np
import pytest

from diffjax.metrics import fid, inception, reference


@pytest.fixture
def features():
    """Two small float32 feature sets (8-d, so the covariances are full rank), as the Inception
    gives them."""
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))).astype(np.float32)
    samples = 0.9 * rng.normal(size=(300, 8)) @ rng.normal(size=(8, 8)) + 0.3
    return train, samples


def _published(tmp_path, train):
    """The training statistics written in each published layout, as the repositories write them."""
    stats = {**fid.feature_statistics(train), "features": train}
    reference.save(tmp_path / "ours.npz", stats)
    reference.save(tmp_path / "edm.npz", stats, "edm")
    reference.save(tmp_path / "score_sde.npz", stats, "score_sde")
    images = np.zeros((4, 8, 8, 3), np.uint8)  # guided-diffusion's arr_0 (images), mu_s/sigma_s (spatial)
    np.savez(tmp_path / "guided.npz", arr_0=images, mu=stats["mu"], sigma=stats["sigma"],
             mu_s=np.zeros(3), sigma_s=np.eye(3))
    return {name: tmp_path / f"{name}.npz" for name in ("ours", "edm", "score_sde", "guided")}


def test_every_published_layout_gives_the_same_fid(tmp_path, features):
    train, samples = features
    paths = _published(tmp_path, train)
    with np.load(paths["score_sde"]) as f:  # score_sde's file holds the features under pool_3 only
        assert f.files == ["pool_3"] and f["pool_3"].shape == train.shape
    with np.load(paths["edm"]) as f:
        assert sorted(f.files) == ["mu", "sigma"]
    assert {name: reference.detect_layout(np.load(p).files) for name, p in paths.items()} == {
        "ours": "diffjax", "edm": "edm", "score_sde": "score_sde", "guided": "guided_diffusion"}
    s = fid.feature_statistics(samples)
    direct = fid.fid_from_features(samples, train)
    for name, path in paths.items():
        ref = reference.load(path)
        value = fid.frechet_distance(s["mu"], s["sigma"], ref["mu"], ref["sigma"])
        assert value == pytest.approx(direct, abs=1e-6), name
    assert int(reference.load(paths["score_sde"])["n"]) == 400 and int(reference.load(paths["edm"])["n"]) == 0
    # KID needs the features: only score_sde's layout carries them.
    np.testing.assert_array_equal(reference.load(paths["score_sde"])["features"], train)


def test_published_files_are_converted_for_evaluate_and_ours_pass_through(tmp_path, features):
    paths = _published(tmp_path, features[0])
    assert reference.as_diffjax(paths["ours"], tmp_path / "out") == str(paths["ours"])
    missing = str(tmp_path / "not_yet.npz")  # a cache evaluate will fill
    assert reference.as_diffjax(missing, tmp_path / "out") == missing
    converted = reference.as_diffjax(paths["edm"], tmp_path / "out")
    stats = fid.load_statistics(converted)  # evaluate's reader accepts it
    np.testing.assert_array_equal(stats["mu"], reference.load(paths["edm"])["mu"])
    with pytest.raises(ValueError, match="not a statistics file"):
        np.savez(tmp_path / "x.npz", images=np.zeros(3))
        reference.load(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="keep_features"):
        reference.save(tmp_path / "y.npz", fid.feature_statistics(features[0]), "score_sde")


def _pooled(images):
    """A cheap stand-in for the Inception: 4x4-pooled pixels as 'pool3' (7x7 = 49-d for MNIST)."""
    x = np.asarray(images, np.float64).reshape(len(images), 7, 4, 7, 4, -1).mean((2, 4)).reshape(len(images), -1)
    return {"pool": x, "logits_unbiased": x[:, :10]}


def test_command_computes_the_whole_training_split_in_each_layout(tmp_path, monkeypatch):
    from diffjax import evaluate
    from diffjax.configs import quickstart

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(inception, "load_variables", lambda path=None: None)
    monkeypatch.setattr(inception, "make_apply_fn", lambda variables: _pooled)
    reference.main(["--config=quickstart", f"--out={tmp_path / 'ours.npz'}"])
    reference.main(["--config=quickstart", f"--out={tmp_path / 'pool3.npz'}", "--layout=score_sde"])
    reference.main([f"--convert={tmp_path / 'pool3.npz'}", f"--out={tmp_path / 'edm.npz'}", "--layout=edm"])
    config = quickstart.get_config()
    images = np.concatenate([x for x, _ in evaluate.data_batches(config, "train", 1000)])
    want = fid.feature_statistics(_pooled(images)["pool"])
    ours = reference.load(tmp_path / "ours.npz")
    assert int(ours["n"]) == len(images) == 5000
    # The statistics are cached where diffjax.evaluate looks for them.
    assert (tmp_path / "cache" / "diffjax" / "fid_stats").is_dir()
    assert reference.default_path(config).startswith(str(tmp_path / "cache"))
    for name, layout in (("ours", "diffjax"), ("pool3", "score_sde"), ("edm", "edm")):
        with np.load(tmp_path / f"{name}.npz") as f:
            assert reference.detect_layout(f.files) == layout
        got = reference.load(tmp_path / f"{name}.npz")
        np.testing.assert_allclose(got["mu"], want["mu"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(got["sigma"], want["sigma"], rtol=1e-5, atol=1e-6)


def test_missing_inception_weights_is_one_line_saying_where_to_get_them(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        reference.main(["--config=ddpm/cifar10", f"--out={tmp_path / 'x.npz'}"])
    message = str(e.value)
    assert "\n" not in message and inception.FID_WEIGHTS_URL in message
    assert str(tmp_path / "diffjax" / inception.PTH_NAME) in message and inception.ENV_VAR in message
