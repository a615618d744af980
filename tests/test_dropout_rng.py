"""``training.dropout_rng``: where the trainer's dropout masks come from.

The network is ``x -> w * dropout(x)`` with one parameter, so the loss ``mean(w * mask * x / (1 - p))``
exposes the mask the step drew. "rbg" / "unsafe_rbg" must change the masks and nothing else (with
p = 0 the step equals threefry's to the bit), draw Bernoulli(1 - p) keep masks that differ from
step to step, and be deterministic in the state's key; a bad name is refused before compute.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import schedules, train
from diffjax.configs import default

N = 4096


class Dropped(nn.Module):
    rate: float = 0.5

    @nn.compact
    def __call__(self, x, noise_labels, y=None, context=None, train=False):
        w = self.param("w", lambda key: jnp.asarray(1.0, jnp.float32))
        return w * nn.Dropout(self.rate, deterministic=not train)(x)


def kept_fraction(model_fn, x0, key, schedule):
    out = model_fn(x0, jnp.full((x0.shape[0],), 0.5))
    return jnp.mean(out), {"kept": jnp.mean(out != 0), "mask": (out != 0).reshape(-1)}


def steps(impl, rate, n_steps=2, seed=0):
    config = default.get_config()
    config.data.num_classes = 0
    config.training.update(batch_size=N, dropout_rng=impl)
    config.optim.update(lr=0.1, warmup_steps=0, grad_clip=0.0)
    train.validate(config)
    net = Dropped(rate)
    tx = train.make_optimizer(config.optim)
    state = train.init_state(config, net, tx, jax.random.PRNGKey(seed))
    step = jax.jit(train.make_train_step(config, net, schedules.get({"name": "vp"}), kept_fraction, tx))
    batch = {"image": jnp.ones((N, 8), jnp.float32)}
    out = []
    for _ in range(n_steps):
        state, metrics = step(state, batch)
        out.append({k: np.asarray(v) for k, v in metrics.items()} | {"w": float(state.params["w"])})
    return out


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_without_dropout_the_generator_changes_nothing(impl):
    ref, got = steps("threefry", 0.0), steps(impl, 0.0)
    for a, b in zip(ref, got):
        assert a["loss"] == b["loss"] and a["w"] == b["w"]
        assert a["loss/kept"] == b["loss/kept"] == 1.0


@pytest.mark.parametrize("impl", ["threefry", "rbg", "unsafe_rbg"])
def test_masks_are_bernoulli_new_every_step_and_reproducible(impl):
    p, n = 0.3, N * 8
    first, second = steps(impl, p)
    for m in (first, second):  # keep rate 1 - p within 5 binomial standard deviations
        assert abs(float(m["loss/kept"]) - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n), m["loss/kept"]
    # two steps draw different masks: agreement p^2 + (1-p)^2 = 0.58 for independent ones
    agree = float(np.mean(first["loss/mask"] == second["loss/mask"]))
    assert abs(agree - (p * p + (1 - p) ** 2)) < 0.02, agree
    again = steps(impl, p)[0]
    assert np.array_equal(again["loss/mask"], first["loss/mask"]) and again["loss"] == first["loss"]


def test_rbg_draws_other_masks_than_threefry():
    a, b = steps("threefry", 0.3)[0], steps("rbg", 0.3)[0]
    assert not np.array_equal(a["loss/mask"], b["loss/mask"])


def test_unknown_generator_is_refused():
    config = default.get_config()
    config.training.dropout_rng = "philox"
    with pytest.raises(ValueError, match=r"training.dropout_rng must be one of .*'rbg'"):
        train.validate(config)
