"""Guidance: wrappers that turn a model function into another one (compose like optax transforms).

* Classifier-free guidance (Ho & Salimans 2021, eq. 6): ``(1 + w) out(x, t, y) - w out(x, t, null)``
  with the null label ``num_classes`` (conventions, Sec. 3). Every prediction kind (eps, x0, v,
  score, velocity) is affine in (x0, eps) with the same coefficients at a given (x, t), and the
  weights sum to one, so guiding any kind gives the same sampler as guiding eps.
* Classifier guidance (Dhariwal & Nichol 2021, Alg. 2 / Song et al. 2021 eq. 14):
  ``score(x, t | y) = score(x, t) + s grad_x log p_phi(y | x, t)``, i.e.
  ``eps_hat = eps - s sigma grad_x log p_phi(y | x_t)``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from diffjax import predictions
from diffjax.samplers import common
from diffjax.schedules import Schedule, bcast

Array = jax.Array


def classifier_free(cond_model_fn: Callable[[Array, Array, Array], Array], y: Array, w: float | Array,
                    num_classes: int) -> Callable[[Array, Array], Array]:
    """Guided ``model_fn(x, t)`` from a conditional ``cond_model_fn(x, t, y)``, labels ``y`` of shape (B,).

    Conditional and unconditional outputs come from one call on the doubled batch. Each call of
    the result is one sampler NFE and two network evaluations.
    """
    y = jnp.asarray(y, jnp.int32)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (B,), got {y.shape}")

    def fn(x, t):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for a batch of {x.shape[0]}")
        t = common.per_example(t, x)
        out = cond_model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                            jnp.concatenate([y, jnp.full_like(y, num_classes)]))
        cond, uncond = jnp.split(out, 2)
        return (1.0 + w) * cond - w * uncond

    return fn


def classifier(model_fn: Callable[[Array, Array], Array], schedule: Schedule, prediction: str,
               log_prob_fn: Callable[[Array, Array, Array], Array], y: Array,
               scale: float | Array) -> Callable[[Array, Array], Array]:
    """Guided ``model_fn`` of the same ``prediction`` kind, adding ``scale * grad_x log p(y | x_t, t)``.

    ``log_prob_fn(x, t, y)`` returns per-example log-probabilities of the labels (B,), e.g. the
    ``log_softmax`` of a noise-conditional classifier's logits taken at ``y``.
    """
    y = jnp.asarray(y, jnp.int32)

    def fn(x, t):
        grad = jax.grad(lambda x_: jnp.sum(log_prob_fn(x_, t, y)))(x)
        score = predictions.convert(model_fn(x, t), x, t, schedule, source=prediction, target="score")
        return predictions.convert(score + bcast(jnp.asarray(scale), x) * grad, x, t, schedule,
                                   source="score", target=prediction)

    return fn


def log_softmax_at(logits: Array, y: Array) -> Array:
    """``log p(y | .)`` from class logits (B, C) and labels (B,)."""
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=-1)[:, 0]


def classifier_log_prob(classifier_fn: Callable[[Array, Array], Array]) -> Callable[[Array, Array, Array], Array]:
    """``log_prob_fn`` for ``classifier`` from a noise-conditional classifier ``(x, t) -> logits``."""
    return lambda x, t, y: log_softmax_at(classifier_fn(x, t), y)
