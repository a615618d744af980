"""`python -m diffjax.evaluate` end to end on a tiny MNIST run."""
import json
import os
import sys

import jax
import numpy as np
import pytest

from diffjax import evaluate
from diffjax.metrics import inception, mnist_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_FIRST_RESULTS: dict = {}  # what the first evaluation measured, for the determinism check


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A checkpoint (step 1, untrained weights) of a tiny DDPM (T = 20) on the bundled digits,
    written through the trainer's own checkpoint API."""
    if REPO not in sys.path:
        sys.path.insert(0, REPO)
    from configs import quickstart
    from diffjax import checkpoint, train

    config = quickstart.get_config()
    config.model.ch = 8
    config.model.ch_mult = (1,)
    config.model.num_groups = 4
    config.schedule.T = 20
    config.sampler.steps = 5
    config.eval.metrics = ("mnist_fid", "bpd")
    config.eval.num_samples = 24
    config.eval.batch_size = 8
    workdir = str(tmp_path_factory.mktemp("run"))
    net, _, _, tx = train.build(config)
    state = train.init_state(config, net, tx, jax.random.PRNGKey(0))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    ckpt.save(1, state, {"position": 0}, json.loads(json.dumps(config.to_dict())))
    ckpt.close()
    variables = mnist_classifier.MNISTClassifier().init(
        jax.random.key(0), np.zeros((1, 28, 28, 1), np.uint8))
    mnist_classifier.save(os.path.join(workdir, "clf.npz"), variables, {})
    return workdir


@pytest.mark.filterwarnings("ignore:FID from 24 samples is unstable")
def test_evaluate_writes_the_configured_metrics(run_dir):
    clf = os.path.join(run_dir, "clf.npz")
    results = evaluate.evaluate(run_dir, {"classifier": clf, "bpd_num_examples": 8,
                                          "metrics": ("mnist_fid", "bpd", "bpd_ode"),
                                          "bpd_rtol": 1e-2, "bpd_atol": 1e-2})
    assert results["step"] == 1 and results["num_samples"] == 24
    assert results["bpd_num_examples"] == 8 and results["bpd_repeats"] == 1  # train split: once
    # "bpd" of a discrete schedule is the VLB, the sum of its reported terms.
    assert results["bpd"] == results["bpd_vlb"]
    terms = results["bpd_vlb_prior"] + results["bpd_vlb_diffusion"] + results["bpd_vlb_decoder"]
    assert results["bpd_vlb"] == pytest.approx(terms, rel=1e-5)
    # An untrained model: finite, positive numbers.
    assert 0 < results["bpd_vlb"] < 100 and 0 < results["bpd_ode"] < 100
    assert results["mnist_fid"] > 0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        record = json.loads(f.readlines()[-1])
    assert record["step"] == 1 and record["eval/bpd_vlb"] == pytest.approx(results["bpd_vlb"])
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(run_dir, "tb")))
    _FIRST_RESULTS.update(results)


def _fake_inception(images):
    """A cheap stand-in with the Inception's outputs: 4x4-pooled pixels as 'pool3'."""
    x = images.astype(np.float64).reshape(len(images), 7, 4, 7, 4, -1).mean((2, 4)).reshape(len(images), -1)
    return {"pool": x, "logits_unbiased": x[:, :10] / 50.0}


@pytest.mark.filterwarnings("ignore:FID from 24 samples is unstable")
def test_evaluate_inception_metrics_with_cached_reference(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(inception, "load_variables", lambda path=None: None)
    monkeypatch.setattr(inception, "make_apply_fn", lambda variables: _fake_inception)
    ref = tmp_path / "ref.npz"
    overrides = {"metrics": ("fid", "kid", "inception_score", "mnist_fid"), "reference_stats": str(ref),
                 "classifier": os.path.join(run_dir, "clf.npz"), "kid_subset_size": 24, "is_splits": 2}
    results = evaluate.evaluate(run_dir, overrides)
    with np.load(ref) as f:  # the whole training split, cached with its features for KID
        assert int(f["n"]) == 5000 and f["features"].shape == (5000, 49)
        images = np.concatenate([x for x, _ in evaluate.data_batches(
            evaluate.load_run(run_dir)[0], "train", 1000)])
        np.testing.assert_allclose(f["mu"], _fake_inception(images)["pool"].mean(0), rtol=1e-6)
    assert results["fid"] > 0 and np.isfinite(results["kid"]) and results["kid_std"] >= 0
    assert 1.0 <= results["inception_score"] <= 10.0
    # Fixed seeds: the same samples as in the first evaluation, so the same MNIST FID.
    if "mnist_fid" in _FIRST_RESULTS:
        assert results["mnist_fid"] == _FIRST_RESULTS["mnist_fid"]


def test_evaluate_fails_fast_on_missing_weights_and_bad_metrics(run_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch-fid/releases"):
        evaluate.evaluate(run_dir, {"metrics": ("fid",), "inception": str(tmp_path / "none.npz")})
    with pytest.raises(FileNotFoundError, match="python -m diffjax.metrics.mnist_classifier"):
        evaluate.evaluate(run_dir, {"metrics": ("mnist_fid",), "classifier": str(tmp_path / "x.npz")})
    with pytest.raises(ValueError, match="class-conditional"):
        evaluate.evaluate(run_dir, {"metrics": ("class_accuracy",)})
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate.evaluate(run_dir, {"metrics": ("fdi",)})
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate.evaluate(str(tmp_path))
    assert inception.FID_WEIGHTS_URL.startswith("https://github.com/mseitzer/pytorch-fid/releases")
