"""`python -m diffjax.evaluate` end to end on a tiny MNIST run, its numbers recomputed here from
the library's own pieces (``likelihood.vlb_terms``, ``likelihood.ode_bits_per_dim``) and from the
features the evaluation fed its metrics (FID and IS in numpy / scipy), so a wrong bits/dim offset,
a wrong data range or mixed-up statistics fail.
"""
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from diffjax import evaluate, likelihood, predictions, sampling, schedules
from diffjax import models as models_lib
from diffjax.configs import quickstart
from diffjax.metrics import inception, mnist_classifier

pytestmark = pytest.mark.filterwarnings("ignore:FID from 24 samples is unstable")

BPD = {"bpd_num_examples": 8, "batch_size": 8, "bpd_rtol": 1e-2, "bpd_atol": 1e-2}


def write_run(workdir, centered=True, num_classes=0):
    """A checkpoint (step 1) of a tiny DDPM (T = 20) on the bundled digits, written through the
    trainer's own checkpoint API; its weights are perturbed so the network's output is not ~0
    (the UNet's last convolution starts at zero)."""
    from diffjax import checkpoint, train

    config = quickstart.get_config()
    config.model.update(ch=8, ch_mult=(1,), num_groups=4)
    config.schedule.T = 20
    config.sampler.steps = 5
    config.sampler.clip_denoised = False  # samples do not depend on the data range then
    config.data.centered = centered
    config.data.num_classes = config.model.num_classes = num_classes
    config.eval.metrics = ("mnist_fid", "bpd")
    config.eval.num_samples = 24
    config.eval.batch_size = 8
    net, _, _, tx = train.build(config)
    state = train.init_state(config, net, tx, jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    state = state.replace(params=params, ema_params=params)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    ckpt.save(1, state, {"position": 0}, json.loads(json.dumps(config.to_dict())))
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = write_run(str(tmp_path_factory.mktemp("run")))
    variables = mnist_classifier.MNISTClassifier().init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.uint8))
    mnist_classifier.save(os.path.join(workdir, "clf.npz"), variables, {})
    return workdir


@pytest.fixture(scope="module")
def uncentered_dir(tmp_path_factory, run_dir):
    """The same network and weights for data on [0, 1] (``data.centered = False``)."""
    return write_run(str(tmp_path_factory.mktemp("uncentered")), centered=False)


class Recorder:
    """Wraps a feature network's apply function, keeping every uint8 batch it was given."""

    def __init__(self, apply_fn):
        self.apply_fn, self.inputs = apply_fn, []

    def __call__(self, images):
        self.inputs.append(np.array(images))
        return self.apply_fn(images)

    def samples(self, data):
        """The images given to the network that are not images of ``data``, in order."""
        seen = {hashlib.sha1(im.tobytes()).digest() for im in data}
        rows = np.concatenate(self.inputs)
        return rows[[hashlib.sha1(im.tobytes()).digest() not in seen for im in rows]]


def record_classifier(monkeypatch):
    recorders = []
    real = mnist_classifier.make_apply_fn

    def make(variables):
        recorders.append(Recorder(real(variables)))
        return recorders[-1]

    monkeypatch.setattr(mnist_classifier, "make_apply_fn", make)
    return recorders


def training_digits(workdir):
    config = evaluate.load_run(workdir)[0]
    return np.concatenate([x for x, _ in evaluate.data_batches(config, "train", 1000)])


def frechet_by_scipy(a, b):
    """FID of two feature sets the textbook way: ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * covmean))


@pytest.fixture(scope="module")
def mnist_eval(run_dir):
    """One MNIST-FID evaluation of the centred run, with the classifier's inputs recorded."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        recorders = record_classifier(monkeypatch)
        results = evaluate.evaluate(run_dir, {"classifier": os.path.join(run_dir, "clf.npz"),
                                              "metrics": ("mnist_fid",)})
    return results, recorders[0]


def test_mnist_fid_is_the_frechet_distance_of_sample_and_data_features(run_dir, mnist_eval):
    results, recorder = mnist_eval
    assert results["step"] == 1 and results["num_samples"] == 24
    data = training_digits(run_dir)
    samples = recorder.samples(data)
    assert samples.shape == (24, 28, 28, 1)
    features = lambda images: np.asarray(recorder.apply_fn(images)["features"])  # noqa: E731
    want = frechet_by_scipy(features(samples), features(data))
    assert results["mnist_fid"] == pytest.approx(want, rel=1e-3)
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        record = json.loads(f.readlines()[-1])
    assert record["step"] == 1 and record["eval/mnist_fid"] == pytest.approx(results["mnist_fid"])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(run_dir, "tb")))


def test_evaluation_is_deterministic(run_dir, mnist_eval):
    again = evaluate.evaluate(run_dir, {"classifier": os.path.join(run_dir, "clf.npz"),
                                        "metrics": ("mnist_fid",)})
    assert again["mnist_fid"] == mnist_eval[0]["mnist_fid"]   # fixed seeds: the same samples


def test_samples_are_quantised_from_their_own_data_range(run_dir, uncentered_dir, mnist_eval, monkeypatch):
    # The same weights and seed draw the same numbers x whatever data.centered says (sample i from
    # (seed, i), diffjax.sampling); as 8-bit images they are 127.5 (x + 1) for data on [-1, 1]
    # and 255 x for data on [0, 1].
    recorders = record_classifier(monkeypatch)
    evaluate.evaluate(uncentered_dir, {"classifier": os.path.join(run_dir, "clf.npz"), "metrics": ("mnist_fid",)})
    data = training_digits(run_dir)
    for workdir, recorder in ((run_dir, mnist_eval[1]), (uncentered_dir, recorders[0])):
        config, params, _ = evaluate.load_run(workdir)
        net, schedule = models_lib.get_model(config.model), schedules.get(config.schedule)
        draw = sampling.make_indexed_sampler(config, net, schedule)
        seed = evaluate.eval_options(config)["seed"]
        x = np.asarray(jax.jit(draw)(params, jax.random.PRNGKey(seed), jnp.arange(24))[0], np.float64)
        on_minus1_1 = x if config.data.centered else 2.0 * x - 1.0
        want = np.round(127.5 * (np.clip(on_minus1_1, -1, 1) + 1))
        got = recorder.samples(data).astype(np.float64)
        assert np.mean(np.abs(got - want) <= 1) > 0.999, workdir   # float rounding may move a level
        if not config.data.centered:   # the two conversions tell these samples apart
            assert np.sum(np.abs(want - np.round(127.5 * (np.clip(x, -1, 1) + 1))) > 1) >= 20


def _fake_classifier(images):
    """A stand-in MNIST classifier whose predicted class is a pseudo-random function of the
    image (its mean intensity), so class accuracy depends on which label goes with which sample."""
    x = jnp.asarray(images, jnp.float32).reshape(len(images), -1)
    guess = jnp.floor(jnp.mean(x, -1) * 7.3) % 10
    return {"features": x[:, :16], "logits": -jnp.abs(jnp.arange(10.0)[None] - guess[:, None])}


def test_class_accuracy_compares_each_sample_with_its_own_label(run_dir, tmp_path, monkeypatch):
    workdir = write_run(str(tmp_path), num_classes=10)
    recorder = Recorder(_fake_classifier)
    monkeypatch.setattr(mnist_classifier, "make_apply_fn", lambda variables: recorder)
    results = evaluate.evaluate(workdir, {"classifier": os.path.join(run_dir, "clf.npz"),
                                          "metrics": ("class_accuracy",)})
    samples = recorder.samples(training_digits(workdir))
    assert samples.shape == (24, 28, 28, 1)
    preds = np.asarray(_fake_classifier(samples)["logits"]).argmax(-1)
    labels = np.arange(24) % 10                      # sample i has label i % num_classes
    assert results["class_accuracy"] == pytest.approx(np.mean(preds == labels))
    assert np.mean(preds == np.roll(labels, 1)) != np.mean(preds == labels)   # misalignment shows


def _direct(workdir):
    config, params, _ = evaluate.load_run(workdir)
    net, schedule = models_lib.get_model(config.model), schedules.get(config.schedule)
    fn = lambda x, t: net.apply({"params": params}, x, schedule.c_noise(jnp.broadcast_to(t, x.shape[:1])))  # noqa: E731
    images = next(evaluate.data_batches(config, "train", 8, 8))[0]
    return config, schedule, fn, images


def test_vlb_bits_per_dim_equal_direct_vlb_terms(run_dir):
    results = evaluate.evaluate(run_dir, {**BPD, "metrics": ("bpd",)})
    assert results["bpd_num_examples"] == 8 and results["bpd_repeats"] == 1  # train split: once
    assert results["bpd"] == results["bpd_vlb"]   # a discrete schedule reports the VLB
    config, schedule, fn, images = _direct(run_dir)
    # one x_t per step: average a few draws, whose spread is far below the bugs looked for
    direct = [likelihood.vlb_terms(fn, schedule, jnp.asarray(images), jax.random.PRNGKey(k),
                                   prediction="eps", variance="fixedlarge") for k in range(4)]
    for name in ("total", "prior", "diffusion", "decoder"):
        want = np.mean([float(jnp.mean(getattr(d, name))) for d in direct])
        got = results["bpd_vlb" if name == "total" else f"bpd_vlb_{name}"]
        assert got == pytest.approx(want, abs=0.05), name
    terms = results["bpd_vlb_prior"] + results["bpd_vlb_diffusion"] + results["bpd_vlb_decoder"]
    assert results["bpd_vlb"] == pytest.approx(terms, rel=1e-5)


@pytest.mark.parametrize("which", ["centered", "uncentered"])
def test_ode_bits_per_dim_equal_direct_ode_bits_per_dim(run_dir, uncentered_dir, which):
    # the offset of 8-bit data is 7 bits on [-1, 1] and 8 bits on [0, 1]: a wrong range is 1 bit off
    workdir = run_dir if which == "centered" else uncentered_dir
    results = evaluate.evaluate(workdir, {**BPD, "metrics": ("bpd_ode",)})
    config, schedule, fn, images = _direct(workdir)
    denoise = predictions.as_denoiser(fn, schedule, "eps")
    direct = [likelihood.ode_bits_per_dim(denoise, schedule, jnp.asarray(images), jax.random.PRNGKey(k),
                                          centered=config.data.centered, rtol=1e-2, atol=1e-2)
              for k in range(3)]
    want = float(np.mean([np.mean(d) for d in direct]))
    assert results["bpd_ode"] == pytest.approx(want, abs=0.25)


def test_vlb_of_data_on_0_1_is_refused_with_the_reason(uncentered_dir):
    with pytest.raises(ValueError, match="defined for data on \\[-1, 1\\]; this run has data.centered = False"):
        evaluate.evaluate(uncentered_dir, {**BPD, "metrics": ("bpd_vlb",)})


def _fake_inception(images):
    """A cheap stand-in with the Inception's outputs: 4x4-pooled pixels as 'pool3'."""
    x = images.astype(np.float64).reshape(len(images), 7, 4, 7, 4, -1).mean((2, 4)).reshape(len(images), -1)
    return {"pool": x, "logits_unbiased": x[:, :10] / 50.0}


def inception_score_by_hand(logits, splits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    scores = [np.exp(np.mean(np.sum(q * (np.log(q) - np.log(q.mean(0))), axis=1)))
              for q in np.array_split(p, splits)]
    return float(np.mean(scores))


def test_evaluate_inception_metrics_with_cached_reference(run_dir, tmp_path, monkeypatch):
    fake = Recorder(_fake_inception)
    monkeypatch.setattr(inception, "load_variables", lambda path=None: None)
    monkeypatch.setattr(inception, "make_apply_fn", lambda variables: fake)
    ref = tmp_path / "ref.npz"
    overrides = {"metrics": ("fid", "kid", "inception_score"), "reference_stats": str(ref),
                 "kid_subset_size": 24, "is_splits": 2}
    results = evaluate.evaluate(run_dir, overrides)
    data = training_digits(run_dir)
    with np.load(ref) as f:  # the whole training split, cached with its features for KID
        assert int(f["n"]) == 5000 and f["features"].shape == (5000, 49)
        np.testing.assert_allclose(f["mu"], _fake_inception(data)["pool"].mean(0), rtol=1e-6)
    samples = fake.samples(data)
    assert samples.shape == (24, 28, 28, 1)
    feats = _fake_inception(samples)
    assert results["fid"] == pytest.approx(frechet_by_scipy(feats["pool"], _fake_inception(data)["pool"]), rel=1e-3)
    assert results["inception_score"] == pytest.approx(inception_score_by_hand(feats["logits_unbiased"], 2), rel=1e-6)
    assert np.isfinite(results["kid"]) and results["kid_std"] >= 0
    # a second evaluation reads the cached statistics instead of the data
    fake.inputs.clear()
    assert evaluate.evaluate(run_dir, overrides)["fid"] == results["fid"]
    assert sum(len(x) for x in fake.inputs) == 24


def test_evaluate_fails_fast_on_missing_weights_and_bad_metrics(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases"):
        evaluate.evaluate(run_dir, {"metrics": ("fid",), "inception": str(tmp_path / "none.npz")})
    with pytest.raises(FileNotFoundError, match="python -m diffjax.metrics.mnist_classifier"):
        evaluate.evaluate(run_dir, {"metrics": ("mnist_fid",), "classifier": str(tmp_path / "x.npz")})
    with pytest.raises(ValueError, match="class_accuracy needs a class-conditional model"):
        evaluate.evaluate(run_dir, {"metrics": ("class_accuracy",)})
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate.evaluate(run_dir, {"metrics": ("fdi",)})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate.evaluate(str(tmp_path))
    assert inception.FID_WEIGHTS_URL.startswith("https://github.com/mseitzer/pytorch-fid/releases")
