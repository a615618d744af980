"""FID / KID / IS against direct computations, and the FID Inception against pytorch-fid."""
import numpy as np
import pytest
import scipy.linalg

from diffjax.metrics import fid, inception


def _random_stats(rng, d, n):
    feats = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
    return feats.mean(0), np.cov(feats, rowvar=False)


def _fid_scipy(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("d,n", [(64, 500), (32, 2000)])
def test_frechet_distance_matches_scipy_sqrtm(d, n):
    rng = np.random.default_rng(d)
    mu1, s1 = _random_stats(rng, d, n)
    mu2, s2 = _random_stats(rng, d, n)
    ours, ref = fid.frechet_distance(mu1, s1, mu2, s2), _fid_scipy(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-8)
    assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8 * np.trace(s1))


@pytest.mark.peer
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pytorch-fid's call into scipy
def test_frechet_distance_matches_pytorch_fid():
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    rng = np.random.default_rng(7)
    mu1, s1 = _random_stats(rng, 48, 300)
    mu2, s2 = _random_stats(rng, 48, 300)
    ref = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_frechet_distance_of_gaussians_closed_form():
    # Commuting covariances: d^2 = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 3.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = fid.frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_kid_matches_direct_unbiased_mmd():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 8)), 0.5 + rng.standard_normal((30, 8))
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(40) for j in range(40) if i != j) / (40 * 39)
    kyy = sum(k(y[i], y[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    kxy = sum(k(xi, yj) for xi in x for yj in y) / (40 * 30)
    assert fid.mmd2_unbiased(x, y) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-10)
    # One subset of all of a set is a permutation of it: the statistic is unchanged.
    mean, std = fid.kernel_inception_distance(x[:30], y, num_subsets=1, subset_size=30)
    assert mean == pytest.approx(fid.mmd2_unbiased(x[:30], y), rel=1e-10) and std == 0.0


def test_kid_is_unbiased_for_equal_distributions():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2000, 16)), rng.standard_normal((2000, 16))
    mean, std = fid.kernel_inception_distance(x, y, num_subsets=50, subset_size=200)
    assert abs(mean) < 3 * std / np.sqrt(50)  # zero within the standard error
    shifted, _ = fid.kernel_inception_distance(x, y + 0.5, num_subsets=50, subset_size=200)
    assert shifted > 20 * std


def test_inception_score_closed_forms():
    onehot = 50.0 * np.eye(10)[np.arange(1000) % 10]  # confident and balanced: IS = #classes
    assert fid.inception_score(onehot, splits=10)[0] == pytest.approx(10.0, rel=1e-6)
    assert fid.inception_score(np.zeros((100, 1008)), splits=10) == pytest.approx((1.0, 0.0))
    # Two classes with p(y|x) = (p, 1-p) and (1-p, p) in equal parts: log IS = log 2 - H(p).
    p = 0.8
    logits = np.log(np.array([[p, 1 - p], [1 - p, p]] * 50))
    h = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    assert fid.inception_score(logits, splits=1)[0] == pytest.approx(np.exp(np.log(2) - h))


def test_to_uint8_rounds_and_rejects_wrong_range():
    x = np.array([-1.0, -0.999, 0.0, 1.0, 1.02])
    np.testing.assert_array_equal(fid.to_uint8(x), [0, 0, 128, 255, 255])
    with pytest.raises(ValueError, match=r"expected samples in \[-1, 1\].*\[0, 255\]"):
        fid.to_uint8(np.array([0.0, 255.0]))
    with pytest.raises(ValueError, match="dtype int64"):
        fid.to_uint8(np.array([0, 3]))


def test_check_images_rejects_float_and_bad_shapes():
    with pytest.raises(ValueError, match="uint8.*to_uint8"):
        fid.check_images(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 1 or 3\)"):
        fid.check_images(np.zeros((2, 3, 8, 8), np.uint8))
    assert inception.preprocess(np.full((2, 8, 8, 1), 255, np.uint8)).shape == (2, 299, 299, 3)


def test_too_few_samples_warns():
    with pytest.warns(UserWarning, match="unstable.*50000"):
        fid.feature_statistics(np.random.default_rng(0).standard_normal((100, 2048)))


def test_reference_statistics_are_cached(tmp_path):
    calls = []

    def feature_fn(batch):
        calls.append(len(batch))
        return {"pool": batch.reshape(len(batch), -1)[:, :4].astype(np.float64)}

    images = np.random.default_rng(0).integers(0, 256, (20, 2, 2, 3), dtype=np.uint8)
    batches = lambda: (images[i:i + 8] for i in range(0, 20, 8))  # noqa: E731
    path = tmp_path / "ref.npz"
    stats = fid.reference_statistics(feature_fn, batches, path, progress=False)
    flat = images.reshape(20, -1)[:, :4].astype(np.float64)
    np.testing.assert_allclose(stats["mu"], flat.mean(0))
    np.testing.assert_allclose(stats["sigma"], np.cov(flat, rowvar=False))
    assert int(stats["n"]) == 20 and calls == [8, 8, 4]
    again = fid.reference_statistics(feature_fn, batches, path, progress=False)
    assert calls == [8, 8, 4] and np.array_equal(again["sigma"], stats["sigma"])


def test_missing_inception_weights_says_where_to_get_and_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        inception.load_variables()
    msg = str(e.value)
    assert inception.FID_WEIGHTS_URL in msg
    assert str(tmp_path / "diffjax" / inception.PTH_NAME) in msg and "DIFFJAX_INCEPTION" in msg
    monkeypatch.setenv(inception.ENV_VAR, str(tmp_path / "nope.npz"))
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        inception.load_variables()


@pytest.mark.peer
def test_flax_inception_matches_pytorch_fid(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    pfi = pytest.importorskip("pytorch_fid.inception")
    import jax.numpy as jnp

    # pytorch-fid's own FID network, with random weights in place of its download.
    g = torch.Generator().manual_seed(0)
    state = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None,
                                            init_weights=False).state_dict()
    for k, v in state.items():
        if k.endswith("conv.weight"):  # fan-in scaling keeps activations O(1) through 94 convs
            state[k] = torch.randn(v.shape, generator=g) / v[0].numel() ** 0.5
        elif k.endswith(("bn.weight", "running_var")):
            state[k] = 0.5 + torch.rand(v.shape, generator=g)
        elif k.endswith(("bn.bias", "running_mean")) or k.startswith("fc."):
            state[k] = 0.1 * torch.randn(v.shape, generator=g)
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **kw: state)
    pool_net = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
    full_net = pfi.fid_inception_v3().eval()

    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        pool_ref = pool_net(x)[0].flatten(1).numpy()
        resized = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear",
                                                  align_corners=False)
        logits_ref = full_net(2 * resized - 1).numpy()

    torch.save(state, tmp_path / inception.PTH_NAME)
    inception.main(["--convert", str(tmp_path / inception.PTH_NAME), str(tmp_path / "w.npz")])
    out = inception.make_apply_fn(inception.load_variables(tmp_path / "w.npz"))(jnp.asarray(images))
    np.testing.assert_allclose(out["pool"], pool_ref, atol=1e-4 * np.abs(pool_ref).max())
    np.testing.assert_allclose(out["logits"], logits_ref, atol=1e-4 * np.abs(logits_ref).max())
    np.testing.assert_allclose(out["logits_unbiased"], pool_ref @ state["fc.weight"].numpy().T,
                               atol=1e-4 * np.abs(logits_ref).max())
