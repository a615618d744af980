"""``python -m diffjax.models --config=ddpm/cifar10``: parameters and FLOPs of a model.

Builds ``config.model`` for inputs of shape (1, data.image_size, data.image_size,
data.num_channels) (or (1, data.num_channels) for vector data, ``data.image_size`` 0 or absent;
(1, 2) when ``num_channels`` is 0 too, the toy 2-D sets), counts parameters from shapes only and reports the FLOPs of one jitted forward pass per
example from XLA's cost analysis of the compiled program on the current backend.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
from absl import app
from ml_collections import config_flags

from diffjax.models import get_model, param_count

_CONFIG = config_flags.DEFINE_config_file("config", None, "an ml_collections config file with get_config()",
                                          lock_config=True)


def input_shape(config) -> tuple[int, ...]:
    data = config.data
    size = data.get("image_size", 0)
    channels = data.get("num_channels", 3)
    if size:
        return (1, size, size, channels)
    return (1, channels or 2)  # vector data; the toy sets are 2-D (docs/conventions.md §7)


def forward_flops(model, x_shape: tuple[int, ...], **call_kwargs) -> float:
    """FLOPs of one forward pass from XLA's cost analysis (``compile().cost_analysis()``)."""
    x = jnp.zeros(x_shape)
    t = jnp.ones(x_shape[:1])
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, t, **call_kwargs))
    compiled = jax.jit(lambda v, x, t: model.apply(v, x, t, **call_kwargs)).lower(variables, x, t).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def main(argv) -> None:
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("pass --config=NAME or FILE (e.g. ddpm/cifar10)")
    model = get_model(config.model)
    shape = input_shape(config)
    kwargs = {}
    num_classes = config.model.get("num_classes", 0)
    if num_classes:
        kwargs["y"] = jnp.zeros(shape[:1], jnp.int32)
    context_dim = config.model.get("context_dim", None)
    if context_dim:
        kwargs["context"] = jnp.zeros((shape[0], 8, context_dim))
    start = time.perf_counter()
    n = param_count(model, shape, **kwargs)
    flops = forward_flops(model, shape, **kwargs)
    print(f"model: {config.model.name} ({type(model).__name__}), input {shape}")
    print(f"parameters: {n:,}")
    print(f"forward FLOPs per example: {flops:,.0f} ({flops / 1e9:.2f} GFLOPs; XLA cost analysis, "
          f"{jax.default_backend()}, {time.perf_counter() - start:.1f}s)")


def _parse_flags(argv: list[str]) -> list[str]:
    from absl import flags

    from diffjax import configs

    try:
        return flags.FLAGS(configs.resolve_argv(argv))
    except (ValueError, flags.Error) as e:
        raise SystemExit(f"error: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
