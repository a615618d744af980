"""The trainer's optimiser and EMA against updates computed by hand: one scalar parameter ``w``
whose loss ``w * mean(x)`` has the gradient ``mean(x)``, so every batch sets the gradient exactly.

Each test drives ``train.make_train_step`` (clipping, AdamW decay, the non-finite guard, warm-up
and the EMA all as the trainer wires them) and compares with numpy's Adam (Kingma & Ba 2015,
Algorithm 1; AdamW: Loshchilov & Hutter 2019, Algorithm 2, decay scaled by the learning rate as
optax does).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import schedules, train
from diffjax.configs import default


@jax.custom_vjp
def times(w, x):
    """``w * x`` whose forward value treats non-finite ``x`` as 0 but whose gradient in ``w`` is
    ``x`` itself: a finite loss with a NaN or infinite gradient (the case the guard is for; a
    non-finite loss is the trainer's skip logic, not the optimiser's)."""
    return w * jnp.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


times.defvjp(lambda w, x: (times(w, x), x), lambda x, g: (jnp.sum(g * x), jnp.zeros_like(x)))


class Scalar(nn.Module):
    """``x -> w * x`` with one parameter ``w`` (initially ``w0``)."""

    w0: float = 2.0

    @nn.compact
    def __call__(self, x, noise_labels, y=None, context=None, train=False):
        return times(self.param("w", lambda key: jnp.asarray(self.w0, jnp.float32)), x)


def linear_loss(model_fn, x0, key, schedule):
    loss = jnp.mean(model_fn(x0, jnp.full((x0.shape[0],), 0.5)))  # d loss / d w = mean(x0)
    return loss, {}


def config_with(**optim):
    config = default.get_config()
    config.data.num_classes = 0
    config.training.update(batch_size=2, grad_accum=1, steps_per_call=1)
    config.optim.update(dict(lr=0.1, warmup_steps=0, grad_clip=0.0, weight_decay=0.0,
                             zero_nonfinite_grads=False, ema_decay=0.9, ema_halflife_kimg=0.0), **optim)
    return config


def run(config, grads):
    """The trainer's states after one update per gradient in ``grads``."""
    net = Scalar()
    tx = train.make_optimizer(config.optim)
    state = train.init_state(config, net, tx, jax.random.PRNGKey(0))
    step = jax.jit(train.make_train_step(config, net, schedules.get({"name": "vp"}), linear_loss, tx))
    states = []
    for g in grads:
        state, _ = step(state, {"image": jnp.full((2, 1), g, jnp.float32)})
        states.append(state)
    return states


def adam_by_hand(grads, *, lr, w0=2.0, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0):
    """Adam on a scalar; ``lr`` is a function of the update count (0, 1, ...)."""
    w, m, v, ws = w0, 0.0, 0.0, []
    for k, g in enumerate(grads):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** (k + 1)), v / (1 - b2 ** (k + 1))
        w = w - lr(k) * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * w)
        ws.append(w)
    return ws


def weights(states, which="params"):
    return [float(getattr(s, which)["w"]) for s in states]


GRADS = [3.0, 0.5, -2.0, 0.25]   # varying, so Adam's result depends on their scale


def test_plain_adam_matches_the_hand_computed_updates():
    got = weights(run(config_with(), GRADS))
    np.testing.assert_allclose(got, adam_by_hand(GRADS, lr=lambda k: 0.1), rtol=1e-5)


def test_gradient_clipping_clips_the_global_norm_before_adam():
    got = weights(run(config_with(grad_clip=1.0), GRADS))
    clipped = [float(np.clip(g, -1.0, 1.0)) for g in GRADS]   # one parameter: |g| is the global norm
    want = adam_by_hand(clipped, lr=lambda k: 0.1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(want[-1] - adam_by_hand(GRADS, lr=lambda k: 0.1)[-1]) > 1e-2  # clipping matters here


def test_adamw_weight_decay_is_decoupled_and_scaled_by_the_learning_rate():
    got = weights(run(config_with(weight_decay=0.5), GRADS))
    want = adam_by_hand(GRADS, lr=lambda k: 0.1, weight_decay=0.5)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert abs(want[-1] - adam_by_hand(GRADS, lr=lambda k: 0.1)[-1]) > 0.1


def test_warmup_scales_the_updates_linearly_from_zero():
    got = weights(run(config_with(warmup_steps=4), GRADS + GRADS))
    want = adam_by_hand(GRADS + GRADS, lr=lambda k: 0.1 * min(k / 4, 1.0))
    assert got[0] == 2.0   # the first update has learning rate 0
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_nonfinite_gradients_become_zero_or_1e5_with_the_guard():
    nan, inf = float("nan"), float("inf")
    guarded = weights(run(config_with(zero_nonfinite_grads=True), [nan, inf, -inf]))
    np.testing.assert_allclose(guarded, adam_by_hand([0.0, 1e5, -1e5], lr=lambda k: 0.1), rtol=1e-5)
    assert guarded[0] == 2.0   # a NaN gradient is a zero gradient: no update
    # without the guard an infinite gradient does not give that update (Adam's inf / inf is NaN)
    unguarded = weights(run(config_with(), [inf]))
    assert not np.isclose(unguarded[0], adam_by_hand([1e5], lr=lambda k: 0.1)[0])


def test_ema_follows_the_raw_weights_with_its_decay():
    states = run(config_with(ema_decay=0.9), GRADS)
    raw = adam_by_hand(GRADS, lr=lambda k: 0.1)
    ema, want = 2.0, []
    for w in raw:   # the EMA starts at the initial weights and averages the updated ones
        ema = 0.9 * ema + 0.1 * w
        want.append(ema)
    np.testing.assert_allclose(weights(states, "params"), raw, rtol=1e-5)
    np.testing.assert_allclose(weights(states, "ema_params"), want, rtol=1e-5)
    assert abs(want[-1] - raw[-1]) > 0.1   # EMA and raw weights are told apart


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="optim.optimizer must be 'adam', got 'sgd'"):
        train.make_optimizer(config_with(optimizer="sgd").optim)
