"""Classifier guidance (Dhariwal & Nichol 2021, Sec. 4): the noisy classifier trains, and the
guided model adds exactly ``s * grad_x log p(y | x_t)`` in score space (checked against the
closed-form gradient of a linear-logit classifier)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import classifier, predictions, samplers, schedules
from diffjax.configs.classifier import mnist
from diffjax.samplers import guidance


def tiny_config(num_steps=40):
    config = mnist.get_config()
    config.data.image_size = 8
    config.classifier.num_classes = 2
    config.training.num_steps = num_steps
    config.training.batch_size = 32
    config.training.log_every = 10
    config.training.checkpoint_every = num_steps
    config.optim.lr = 3e-3
    config.classifier.ch = 8
    config.classifier.ch_mult = (1, 2)
    config.classifier.num_groups = 4
    return config


def two_class_batches(seed=0, batch=32):
    """Class 0: the top half bright; class 1: the bottom half (8x8x1 in [-1, 1])."""
    rng = np.random.default_rng(seed)
    top = np.where(np.arange(8)[:, None] < 4, 0.8, -0.8) * np.ones((8, 8))
    while True:
        y = rng.integers(0, 2, batch)
        x = np.where(y[:, None, None] == 0, top, -top)[..., None] + 0.1 * rng.normal(size=(batch, 8, 8, 1))
        yield {"image": x.astype(np.float32), "label": y.astype(np.int32)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("clf"))
    config = tiny_config()
    params, log = classifier.train(config, workdir, batches=two_class_batches(), say=lambda s: None)
    return config, workdir, params, log


def test_classifier_training_loss_falls_on_a_tiny_problem(trained):
    config, _, params, log = trained
    assert log[0]["step"] == 10 and log[-1]["step"] == 40
    # Held-out estimate of the loss over t ~ U{1..T}, before and after training (same noise).
    net, schedule = classifier.build(config)
    batch = next(two_class_batches(seed=1, batch=256))
    x0, y = jnp.asarray(batch["image"]), jnp.asarray(batch["label"])
    init = classifier.init_params(config, net, jax.random.fold_in(jax.random.PRNGKey(config.seed), -1 % 2**31))
    held_out = jax.jit(lambda p: classifier.loss(net, p, schedule, x0, y, jax.random.PRNGKey(5))[0])
    before, after = held_out(init), held_out(params)
    assert before > 0.6 and after < 0.75 * before, (float(before), float(after))
    # At low noise (t = 0.1: alpha_bar ~ 0.95) the two classes are told apart.
    t = jnp.full((256,), 0.1)
    logits = jax.jit(classifier.classifier_fn(net, params, schedule))(schedule.alpha(t)[:, None, None, None] * x0, t)
    assert float(jnp.mean(jnp.argmax(logits, -1) == y)) > 0.95


def test_checkpoint_round_trip(trained):
    config, workdir, params, _ = trained
    loaded_config, net, schedule, loaded = classifier.load(workdir)
    assert loaded_config.classifier.to_dict() == config.classifier.to_dict()
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))


def _analytic_eps(schedule):
    """The exact eps-prediction of data N(0, 0.25 I): eps_hat = sigma x / (alpha^2 0.25 + sigma^2)."""
    def model_fn(x, t):
        a, s = (schedules.bcast(f(t), x) for f in (schedule.alpha, schedule.sigma))
        return s * x / (0.25 * a ** 2 + s ** 2)
    return model_fn


def _linear_classifier(num_classes=3, dim=2 * 2 * 1, seed=0):
    """logits = W x + b (t-independent): grad_x log p(y|x) = W_y - sum_k p_k W_k."""
    rng = np.random.default_rng(seed)
    W, b = rng.normal(size=(num_classes, dim)), rng.normal(size=num_classes)

    def logits(x, t):
        return x.reshape(x.shape[0], -1) @ jnp.asarray(W.T, x.dtype) + jnp.asarray(b, x.dtype)

    def grad_log_p(x, y):
        z = x.reshape(x.shape[0], -1) @ W.T + b
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return (W[y] - p @ W).reshape(x.shape)

    return logits, grad_log_p


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_guidance_adds_scaled_closed_form_gradient(prediction):
    schedule = schedules.DiscreteSchedule.linear(T=1000)
    eps_fn = _analytic_eps(schedule)
    model_fn = lambda x, t: predictions.convert(eps_fn(x, t), x, t, schedule, source="eps",  # noqa: E731
                                                target=prediction)
    logits, grad_log_p = _linear_classifier()
    x = np.random.default_rng(1).normal(size=(4, 2, 2, 1)).astype(np.float32)
    y, t, s = np.array([0, 1, 2, 1]), jnp.array([0.05, 0.3, 0.6, 0.95]), 2.5
    guided = guidance.classifier(model_fn, schedule, prediction, guidance.classifier_log_prob(logits), y, s)
    eps_guided = predictions.convert(guided(jnp.asarray(x), t), x, t, schedule, source=prediction, target="eps")
    # Alg. 2 of Dhariwal & Nichol: eps_hat = eps - s sigma(t) grad log p(y | x_t).
    sigma = np.asarray(schedule.sigma(t))[:, None, None, None]
    expected = np.asarray(eps_fn(jnp.asarray(x), t)) - s * sigma * grad_log_p(x.astype(np.float64), y)
    np.testing.assert_allclose(np.asarray(eps_guided), expected, rtol=1e-4, atol=1e-5)


def test_scale_zero_equals_the_unguided_sampler():
    schedule = schedules.DiscreteSchedule.linear(T=1000)
    model_fn = _analytic_eps(schedule)
    logits, _ = _linear_classifier()
    log_prob = guidance.classifier_log_prob(logits)
    y = jnp.array([0, 1, 2])
    key, shape = jax.random.PRNGKey(3), (3, 2, 2, 1)

    def draw(fn):
        x, _ = samplers.sample("ddpm", predictions.as_denoiser(fn, schedule, "eps"), schedule, key,
                               shape=shape, steps=20)
        return np.asarray(x)

    plain = draw(model_fn)
    np.testing.assert_array_equal(draw(guidance.classifier(model_fn, schedule, "eps", log_prob, y, 0.0)), plain)
    assert np.abs(draw(guidance.classifier(model_fn, schedule, "eps", log_prob, y, 1.0)) - plain).max() > 1e-3


def test_trained_classifier_guides_towards_the_label(trained):
    config, _, params, _ = trained
    net, schedule = classifier.build(config)
    model_fn = _analytic_eps(schedule)
    x, t = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1)), jnp.array([0.1, 0.1])
    log_prob = jax.jit(classifier.log_prob_fn(net, params, schedule))
    y = jnp.array([0, 1])
    assert classifier.guide(model_fn, schedule, "eps", net, params, y, 0.0) is model_fn
    guided = classifier.guide(model_fn, schedule, "eps", net, params, y, 1.0)
    # One small step along the guided score (-eps / sigma) raises log p(y | x_t).
    x_new = x - 0.05 * jax.jit(lambda x, t: guided(x, t) - model_fn(x, t))(x, t)
    assert bool(jnp.all(log_prob(x_new, t, y) > log_prob(x, t, y)))


def test_bad_inputs_are_rejected(tmp_path, trained):
    config, _, _, _ = trained
    with pytest.raises(FileNotFoundError, match="no classifier checkpoints"):
        classifier.load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 1\]"):
        classifier.check_pair(config, config, np.array([0, 2]))
    other = tiny_config()
    other.schedule.name = "ddpm_cosine"
    with pytest.raises(ValueError, match="schedule"):
        classifier.check_pair(config, other, np.array([0, 1]))
    bad = tiny_config()
    bad.classifier.num_classes = 1
    with pytest.raises(ValueError, match="num_classes >= 2"):
        classifier.build(bad)


def test_the_sampling_library_guides_with_a_trained_classifier(trained):
    """``make_guide`` through ``sampling.make_indexed_sampler`` (what ``python -m diffjax.sample
    --classifier_workdir`` runs): scale 0 is the unguided sampler bit for bit, labels cycle over the
    classifier's classes, and a strong scale moves every sample towards its label's pattern."""
    from diffjax import models, sampling, train
    from diffjax.configs import quickstart

    clf_config, workdir, params_c, _ = trained
    config = quickstart.get_config()
    config.data.image_size = 8
    config.model.update(ch=8, ch_mult=(1, 2), num_groups=4)
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    x, noise_labels, _ = train._dummy_inputs(config)
    params = net.init(jax.random.PRNGKey(0), x, noise_labels)["params"]
    key, idx = jax.random.PRNGKey(1), jnp.arange(6)

    def draw(scale):
        guide = None if scale is None else classifier.make_guide(workdir, config, scale)
        fn = sampling.make_indexed_sampler(config, net, schedule, "ddim", {"steps": 5}, guide=guide)
        x, labels, _ = jax.jit(fn)(params, key, idx)
        return np.asarray(x), np.asarray(labels)

    plain, labels0 = draw(None)
    zero, labels = draw(0.0)
    np.testing.assert_array_equal(zero, plain)
    np.testing.assert_array_equal(labels, np.arange(6) % 2)
    assert not labels0.any()  # unguided and unconditional: no labels
    strong, _ = draw(30.0)
    # the classifier's two classes are "top half bright" (0) and "bottom half bright" (1)
    top_minus_bottom = strong[:, :4].mean(axis=(1, 2, 3)) - strong[:, 4:].mean(axis=(1, 2, 3))
    before = plain[:, :4].mean(axis=(1, 2, 3)) - plain[:, 4:].mean(axis=(1, 2, 3))
    sign = np.where(labels == 0, 1.0, -1.0)
    assert np.all(sign * (top_minus_bottom - before) > 0), (top_minus_bottom, before)
