"""Text-conditioned training and sampling (configs/text2mnist.py): masked cross-attention,
classifier-free guidance against the null caption, and prompts on the command line. The frozen encoder is test_captions' stand-in
(``HashEncoder``); that guidance at w = 4 beats w = 0 on class accuracy is measured by
bench/text_guidance_mnist.py (a run long enough for it costs far more than this file's budget)."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffjax import models, sample, sampling, schedules, train
from diffjax.configs import text2mnist
from diffjax.data import captions
from diffjax.models.layers import Attention
from diffjax.samplers import guidance
from test_captions import HashEncoder


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """text2mnist shrunk (8-channel UNet, stand-in 16-d encoder, 3-step DDIM grids)."""
    monkeypatch.setattr(captions, "load_encoder", lambda name: HashEncoder())
    config = text2mnist.get_config()
    config.text.encoder, config.text.cache_dir = "hash", str(tmp_path / "cache")
    config.model.update(ch=8, ch_mult=(1, 2), num_groups=4, context_dim=16, attn_resolutions=(14,))
    config.training.update(num_steps=4, batch_size=8, log_every=2, checkpoint_every=4, sample_every=0)
    config.sampler = ml_collections.ConfigDict({"name": "ddim", "steps": 3, "clip_denoised": True})
    config.text.prompts = ("a three", "a thick seven")
    return config


def test_text2mnist_config_is_the_quickstart_with_text():
    from configs import quickstart

    config, base = text2mnist.get_config(), quickstart.get_config()
    train.validate(config)
    assert config.model.context_dim == 384 and config.text.encoder == "minilm"  # all-MiniLM-L6-v2
    assert 0 < config.training.cond_drop_prob <= 0.2 and not config.data.random_flip
    assert config.data.to_dict() == base.data.to_dict() and config.schedule.to_dict() == base.schedule.to_dict()
    no_ctx = text2mnist.get_config()
    no_ctx.model.context_dim = None
    with pytest.raises(ValueError, match="model.context_dim"):
        train.validate(no_ctx)


def _attention(x, context, mask=None):
    net = Attention(num_heads=2, num_groups=4, out_init=jax.nn.initializers.normal(1.0))
    params = net.init(jax.random.PRNGKey(0), x, context)
    return net.apply(params, x, context, mask)


def test_masked_cross_attention_ignores_padding():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 8))
    real = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 6))
    padded = jnp.concatenate([real, jax.random.normal(jax.random.PRNGKey(3), (2, 5, 6))], axis=1)
    mask = jnp.arange(8)[None].repeat(2, 0) < 3
    np.testing.assert_allclose(_attention(x, padded, mask), _attention(x, real), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(_attention(x, padded) - _attention(x, real)).max()) > 1e-2  # unmasked: differs
    # No token at all (the null caption): attending to one zero token.
    empty = _attention(x, jnp.zeros((2, 8, 6)), jnp.zeros((2, 8), bool))
    np.testing.assert_allclose(empty, _attention(x, jnp.zeros((2, 1, 6))), rtol=1e-5, atol=1e-5)


def _net_and_context(config):
    net = models.get_model(config.model)
    _, (tokens, mask) = sampling.prompt_context(config, ["a three", "a thin seven leaning left"])
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
    params = net.init(jax.random.PRNGKey(1), x, jnp.zeros(2), context=tokens[:2], context_mask=mask[:2])["params"]
    # Perturbed: a fresh network's output and attention projections are initialised to zero.
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree.unflatten(tree, [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    return net, params, x, (jnp.asarray(tokens[:2]), jnp.asarray(mask[:2])), (tokens[-1], mask[-1])


def test_guidance_with_weight_zero_is_the_conditional_model(tiny):
    net, params, x, context, null = _net_and_context(tiny)
    t = jnp.array([0.3, 0.7])

    @jax.jit
    def cond(x, t, c):
        return sampling.network_fn(net, params, context=c)(x, 999 * t)

    np.testing.assert_array_equal(guidance.classifier_free_context(cond, context, null, 0.0)(x, t), cond(x, t, context))
    w = 3.0
    uncond = cond(x, t, (jnp.zeros_like(context[0]), jnp.zeros_like(context[1])))
    np.testing.assert_allclose(guidance.classifier_free_context(cond, context, null, w)(x, t),
                               (1 + w) * cond(x, t, context) - w * uncond, rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(cond(x, t, context) - uncond).max()) > 1e-3  # the text changes the output
    with pytest.raises(ValueError, match="context must be"):
        guidance.classifier_free_context(cond, (context[0][0], context[1]), null, w)


def test_sampler_cycles_the_prompts_and_guides_with_the_config_weight(tiny):
    net, params, *_ = _net_and_context(tiny)
    schedule = schedules.get(tiny.schedule)
    key = jax.random.PRNGKey(4)
    draws = {}
    for w in (0.0, 2.0):
        draws[w] = sampling.make_sampler(tiny, net, schedule, options={"guidance_scale": w})(params, key, 4)
    np.testing.assert_array_equal(draws[0.0][1], [0, 1, 0, 1])
    assert float(jnp.abs(draws[2.0][0] - draws[0.0][0]).max()) > 1e-3


def test_prompts_need_a_text_model_and_must_not_be_empty(tiny):
    from configs import quickstart

    uncond = quickstart.get_config()
    schedule = schedules.get(uncond.schedule)
    with pytest.raises(ValueError, match="not trained on text"):
        sampling.make_sampler(uncond, models.get_model(uncond.model), schedule, prompts=["a thin three"])
    with pytest.raises(ValueError, match="empty prompt"):
        sampling.make_sampler(tiny, models.get_model(tiny.model), schedule, prompts=["a three", "  "])
    with pytest.raises(ValueError, match="no prompts"):
        sampling.prompt_context(tiny, [])
    assert sample.split_prompts(["a thin three|a 7 ", "an eight"]) == ["a thin three", "a 7", "an eight"]
    assert sample.split_prompts([]) is None
