"""Guidance: wrappers that turn a model function into another one (compose like optax transforms).

* Classifier-free guidance (Ho & Salimans 2021, eq. 6): ``(1 + w) out(x, t, y) - w out(x, t, null)``
  with the null label ``num_classes`` (conventions, Sec. 3), or for text a null context (GLIDE,
  Nichol et al. 2022, encodes the empty caption; ``diffjax.data.captions`` uses no token at all). Every prediction kind (eps, x0, v,
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
    return classifier_free_pair(cond_model_fn, y, jnp.full_like(y, num_classes), w)


def classifier_free_context(cond_model_fn: Callable[[Array, Array, tuple], Array], context: tuple,
                            null_context: tuple, w: float | Array) -> Callable[[Array, Array], Array]:
    """Guided ``model_fn(x, t)`` for text conditioning: ``context = (tokens (B, L, D), mask (B, L))``
    and the null context of shapes (L, D), (L,) or per-example (``captions.encode("")``: no token);
    ``cond_model_fn(x, t, context)``."""
    tokens, mask = context
    if tokens.ndim != 3 or mask.shape != tokens.shape[:2]:
        raise ValueError(f"context must be (tokens (B, L, D), mask (B, L)), got {tokens.shape}, {mask.shape}")
    null = tuple(jnp.broadcast_to(n, c.shape) for n, c in zip(null_context, context))
    return classifier_free_pair(cond_model_fn, context, null, w)


def classifier_free_pair(cond_model_fn: Callable[[Array, Array, object], Array], cond: object, uncond: object,
                         w: float | Array) -> Callable[[Array, Array], Array]:
    """``(1 + w) out(x, t, cond) - w out(x, t, uncond)`` (Ho & Salimans 2021, eq. 6) for any
    conditioning pytrees of per-example arrays (labels, text contexts); one network call on the
    doubled batch. A weight of exactly 0 is the conditional model itself (one network call)."""
    batch = jax.tree.leaves(cond)[0].shape[0]
    if isinstance(w, (int, float)) and w == 0:
        return lambda x, t: cond_model_fn(x, common.per_example(t, x), cond)

    def fn(x, t):
        if x.shape[0] != batch:
            raise ValueError(f"conditioning for {batch} examples given a batch of {x.shape[0]}")
        t = common.per_example(t, x)
        both = jax.tree.map(lambda c, u: jnp.concatenate([c, u]), cond, uncond)
        out = cond_model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]), both)
        c, u = jnp.split(out, 2)
        return (1.0 + w) * c - w * u

    return fn


def classifier(model_fn: Callable[[Array, Array], Array], schedule: Schedule, prediction: str,
               log_prob_fn: Callable[[Array, Array, Array], Array], y: Array,
               scale: float | Array) -> Callable[[Array, Array], Array]:
    """Guided ``model_fn`` of the same ``prediction`` kind, adding ``scale * grad_x log p(y | x_t, t)``.

    ``log_prob_fn(x, t, y)`` returns per-example log-probabilities of the labels (B,), e.g. the
    ``log_softmax`` of a noise-conditional classifier's logits taken at ``y``. Every conversion
    from a score is linear in it at fixed ``(x, t)``, so the shift is converted alone and added to
    the model's own output: no round trip through the score, and ``scale = 0`` returns the
    unguided output bit for bit.
    """
    y = jnp.asarray(y, jnp.int32)
    if y.ndim != 1:
        raise ValueError(f"labels must have shape (B,), got {y.shape}")

    def fn(x, t):
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"{y.shape[0]} labels for a batch of {x.shape[0]}")
        grad = jax.grad(lambda x_: jnp.sum(log_prob_fn(x_, t, y)))(x)
        shift = predictions.convert(bcast(jnp.asarray(scale, x.dtype), x) * grad, jnp.zeros_like(x), t,
                                    schedule, source="score", target=prediction)
        return model_fn(x, t) + shift

    return fn


def log_softmax_at(logits: Array, y: Array) -> Array:
    """``log p(y | .)`` from class logits (B, C) and labels (B,)."""
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), y[:, None], axis=-1)[:, 0]


def classifier_log_prob(classifier_fn: Callable[[Array, Array], Array]) -> Callable[[Array, Array, Array], Array]:
    """``log_prob_fn`` for ``classifier`` from a noise-conditional classifier ``(x, t) -> logits``."""
    return lambda x, t, y: log_softmax_at(classifier_fn(x, t), y)
