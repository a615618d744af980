"""Score networks and the registry that builds them from a config (docs/conventions.md §3).

    net = get_model(config.model)      # by config.model.name
    variables = net.init(key, x, noise_labels)
    out = net.apply(variables, x, noise_labels, y=None, context=None, train=False,
                    rngs={"dropout": key})

Registered names:
  ddpm_unet   DDPM UNet (Ho et al. 2020)                      diffjax.models.unet.DDPMUNet
  ncsnpp      NCSN++ / DDPM++ (Song et al. 2021)              diffjax.models.ncsnpp.NCSNpp
  ddpmpp      the same class with DDPM++'s defaults (no FIR, positional time features)
  adm         ADM UNet (Dhariwal & Nichol 2021)               diffjax.models.adm.ADMUNet
  mlp         residual MLP for vector data                    diffjax.models.mlp.MLP
  ncsn        NCSN CondRefineNetDilated (Song & Ermon 2019)   diffjax.models.ncsn.NCSN
  edm         EDM preconditioning around ``config.backbone`` (any name above); also
              vp_precond, ve_precond (EDM Table 1's VP and VE columns)

Every other field of the config is a constructor argument of the class (``name`` and
``prediction`` excepted); an unknown field is an error. ``dtype`` ("float32" / "bfloat16")
sets the computation dtype; parameters stay float32.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models.adm import ADMUNet
from diffjax.models.ncsnpp import NCSNpp
from diffjax.models.precond import PRECONDS
from diffjax.models.unet import DDPMUNet

__all__ = ["get_model", "register", "param_count", "DDPMUNet", "NCSNpp", "ADMUNet"]

_REGISTRY: dict[str, Callable[[dict], nn.Module]] = {}
# Config fields that describe how the output is used, not the architecture.
_NOT_ARCHITECTURE = ("name", "prediction")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def register(*names: str) -> Callable:
    """Decorator: ``@register("name")`` on a function ``fields (dict) -> flax Module``."""
    def decorate(builder: Callable[[dict], nn.Module]) -> Callable[[dict], nn.Module]:
        for name in names:
            if name in _REGISTRY:
                raise ValueError(f"model name {name!r} is already registered")
            _REGISTRY[name] = builder
        return builder
    return decorate


def _construct(cls: type, fields: dict, defaults: Mapping[str, Any] = ()) -> nn.Module:
    known = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    kwargs = {**dict(defaults), **fields}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"model config fields {unknown} are not arguments of {cls.__name__}; "
                         f"known: {sorted(known)}")
    if "dtype" in kwargs:
        if kwargs["dtype"] not in _DTYPES:
            raise ValueError(f"model dtype must be one of {sorted(_DTYPES)}, got {kwargs['dtype']!r}")
        kwargs["dtype"] = _DTYPES[kwargs["dtype"]]
    for k, v in kwargs.items():  # ConfigDict gives lists for tuples; flax fields must be hashable
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    return cls(**kwargs)


@register("ddpm_unet")
def _ddpm_unet(fields: dict) -> nn.Module:
    return _construct(DDPMUNet, fields)


@register("ncsnpp")
def _ncsnpp(fields: dict) -> nn.Module:
    return _construct(NCSNpp, fields)


@register("ddpmpp")
def _ddpmpp(fields: dict) -> nn.Module:
    return _construct(NCSNpp, fields, defaults=dict(fir=False, progressive_input="none", embedding_type="positional"))


@register("adm")
def _adm(fields: dict) -> nn.Module:
    return _construct(ADMUNet, fields)


@register("ncsn")
def _ncsn(fields: dict) -> nn.Module:
    return _construct(importlib.import_module("diffjax.models.ncsn").NCSN, fields)


@register("mlp")
def _mlp(fields: dict) -> nn.Module:
    return _construct(importlib.import_module("diffjax.models.mlp").MLP, fields)


def _precond(kind: str) -> Callable[[dict], nn.Module]:
    def build(fields: dict) -> nn.Module:
        fields = dict(fields)
        if "backbone" not in fields:
            raise ValueError(f"a preconditioned model needs config.backbone (one of {sorted(_REGISTRY)})")
        cls = PRECONDS[kind]
        own = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "backbone"}
        wrapper = {k: fields.pop(k) for k in list(fields) if k in own}
        backbone_name = fields.pop("backbone")
        backbone = _build({**fields, "name": backbone_name})
        return cls(backbone=backbone, **wrapper)
    return build


register("edm", "edm_precond")(_precond("edm"))
register("vp_precond")(_precond("vp"))
register("ve_precond")(_precond("ve"))


def _build(fields: dict) -> nn.Module:
    name = fields.get("name")
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]({k: v for k, v in fields.items() if k not in _NOT_ARCHITECTURE})


def get_model(config: Any) -> nn.Module:
    """The flax module named by ``config.name`` (an ml_collections ConfigDict or a dict)."""
    fields = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return _build(fields)


def param_count(model: nn.Module, x_shape: tuple[int, ...], **call_kwargs: Any) -> int:
    """Number of parameters, from shapes only (``jax.eval_shape`` of init, nothing allocated)."""
    shapes = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
                                               jnp.zeros(x_shape), jnp.ones(x_shape[:1]), **call_kwargs))
    return sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(shapes["params"]))
