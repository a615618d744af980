"""What every importer shares: reading state dicts, the torch -> flax tensor layouts, matching
converted tensors against the parameter tree of a diffjax network, and writing a run directory.

An importer turns each checkpoint key into ``(flax path, array)`` with the tensor helpers below
(``conv_kernel``, ``dense_kernel``, ...), then :func:`assemble` checks the result against the
network's parameter tree (from ``jax.eval_shape``, nothing computed) and raises one
``ValueError`` whose first line names the first missing, unexpected or mis-shaped key (with
both shapes) and whose following lines list every problem. The helpers work on any numpy array,
also on the zero-stride ``np.broadcast_to`` views that :func:`shape_only` makes, so a
500M-parameter layout can be checked without allocating it.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Iterable, Mapping, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from diffjax import fileio

Path = tuple[str, ...]
StateDict = Mapping[str, Any]
Source = Union[str, os.PathLike, StateDict]


def load_state_dict(source: Source) -> dict[str, np.ndarray]:
    """A flat ``{key: numpy array}`` from a .safetensors / .pt / .pth / .bin / .ckpt file or a mapping."""
    if isinstance(source, Mapping):
        return {k: np.asarray(v.detach().cpu().float().numpy() if hasattr(v, "detach") else v)
                for k, v in source.items()}
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    if path.endswith((".bin", ".pt", ".pth", ".ckpt")):
        import torch
        try:
            contents = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch errors alike
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise ValueError(f"{path} is not a PyTorch state dict ({reason})") from None
        if not isinstance(contents, Mapping) or not all(hasattr(v, "shape") for v in contents.values()):
            raise ValueError(f"{path} holds no flat state dict (name -> tensor); for EDM use the snippet of "
                             "diffjax.convert.edm")
        return load_state_dict(contents)
    raise ValueError(f"cannot read a state dict from {path!r}: expected .safetensors, .bin, .pt, .pth or .ckpt")


def shape_only(shapes: Mapping[str, Iterable[int]]) -> dict[str, np.ndarray]:
    """A state dict of zero-stride float32 views with the given shapes (no memory)."""
    return {k: np.broadcast_to(np.zeros((), np.float32), tuple(s)) for k, s in shapes.items()}


# --- tensor layouts: PyTorch (NCHW, out-first) -> Flax (NHWC, in-first) -------------------------

def conv_kernel(w: np.ndarray) -> np.ndarray:
    """Conv weight OIHW (or OIL, a 1-D 1x1 conv) -> HWIO (1x1 for OIL)."""
    if w.ndim == 3:
        w = w[:, :, None, :]
    return w.transpose(2, 3, 1, 0)


def dense_kernel(w: np.ndarray) -> np.ndarray:
    """Linear (out, in) or a 1x1 conv (out, in[, 1[, 1]]) -> Dense kernel (in, out)."""
    return w.reshape(w.shape[0], w.shape[1]).T


def split_qkv(w: np.ndarray, heads: int, order: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fused (3C, ...) q/k/v projection split into three (C, ...) ones (rows = output channels).

    ``order`` is how the 3C rows are laid out, outermost first: ``"qkv,head,ch"`` (split q/k/v
    first: guided-diffusion's ``QKVAttention``), ``"head,qkv,ch"`` (heads first:
    ``QKVAttentionLegacy``, improved-diffusion) or ``"head,ch,qkv"`` (EDM's ``UNetBlock``).
    """
    C = w.shape[0] // 3
    axes = order.split(",")
    sizes = {"qkv": 3, "head": heads, "ch": C // heads}
    w = w.reshape(*(sizes[a] for a in axes), *w.shape[1:])
    w = np.moveaxis(w, [axes.index(a) for a in ("qkv", "head", "ch")], [0, 1, 2])
    return tuple(w[j].reshape(C, *w.shape[3:]) for j in range(3))


def with_null_row(table: np.ndarray) -> np.ndarray:
    """A (num_classes, D) class table plus diffjax's null-label row (zeros: no class signal)."""
    return np.concatenate([table, np.zeros_like(table[:1])])


def norm(prefix: str, key: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """GroupNorm ``weight`` -> ``scale``, ``bias`` -> ``bias``."""
    return f"{prefix}/{'scale' if key.endswith('weight') else 'bias'}", value


def linear_or_conv(prefix: str, key: str, value: np.ndarray, dense: bool = False) -> tuple[str, np.ndarray]:
    """A conv (or, with ``dense``, a Linear / 1x1 conv used as one) ``weight`` / ``bias``."""
    if key.endswith("bias"):
        return f"{prefix}/bias", value
    return f"{prefix}/kernel", dense_kernel(value) if dense or value.ndim == 2 else conv_kernel(value)


# --- matching against a network's parameter tree --------------------------------------------

def param_shapes(model: Any, x_shape: tuple[int, ...], **call_kwargs: Any) -> dict[Path, Any]:
    """The flattened parameter tree of ``model`` for inputs of ``x_shape`` (shapes only)."""
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x_shape),
                                                  jnp.ones(x_shape[:1]), **call_kwargs))
    return traverse_util.flatten_dict(variables["params"])


def assemble(converted: Iterable[tuple[str, Path, np.ndarray, tuple[int, ...]]], expected: Mapping[Path, Any],
             what: str, unexpected: Iterable[str] = ()) -> dict:
    """Check converted tensors against ``expected`` and return the nested numpy params.

    ``converted``: ``(checkpoint key, flax path, array, shape in the checkpoint)`` in checkpoint
    order; ``unexpected``: checkpoint keys the importer could not place. Raises ValueError.
    """
    params, problems, seen = {}, {"unexpected in the checkpoint": list(unexpected), "shape mismatch": []}, set()
    first = [f"unexpected checkpoint key {k!r}" for k in problems["unexpected in the checkpoint"][:1]]
    for key, path, value, original in converted:
        seen.add(path)
        name = "/".join(path)
        if path not in expected:
            problems["unexpected in the checkpoint"].append(key)
            first.append(f"checkpoint key {key!r} (as {name}) has no place in {what}")
        elif tuple(expected[path].shape) != value.shape:
            detail = (f"{key}: checkpoint {tuple(original)} (as {value.shape}) vs model "
                      f"{tuple(expected[path].shape)} at {name}")
            problems["shape mismatch"].append(detail)
            first.append(f"shape mismatch at {detail}")
        else:
            params[path] = value
    problems["missing in the checkpoint"] = ["/".join(p) for p in expected if p not in seen]
    first += [f"parameter {m} is missing in the checkpoint" for m in problems["missing in the checkpoint"][:1]]
    if not any(problems.values()):
        return traverse_util.unflatten_dict(params)
    lines = [f"checkpoint does not match {what}: {first[0]}"]
    for title in ("missing in the checkpoint", "unexpected in the checkpoint", "shape mismatch"):
        items = problems[title]
        if items:
            shown = items[:20] + ([f"... and {len(items) - 20} more"] if len(items) > 20 else [])
            lines.append(f"  {title} ({len(items)}): " + "; ".join(shown))
    raise ValueError("\n".join(lines))


def to_jax(params: Any) -> Any:
    """Nested numpy params -> float32 jax arrays (copies the zero-stride views of ``shape_only``)."""
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)


# --- output ----------------------------------------------------------------------------------

def check_new_run(out_dir: Union[str, os.PathLike]) -> str:
    """``out_dir`` as an absolute path (a ``gs://`` URL unchanged); raises ValueError if it already
    holds checkpoints."""
    out_dir = fileio.normalize(os.fspath(out_dir))
    if fileio.listdir(fileio.join(out_dir, "checkpoints")):
        raise ValueError(f"{out_dir} already holds checkpoints; convert into a new directory")
    return out_dir


def write_run(out_dir: Union[str, os.PathLike], config: Any, params: Any, ema_params: Any = None) -> str:
    """A run directory ``diffjax.sample`` / ``diffjax.evaluate`` load: ``checkpoints/0`` holding
    ``state`` = {params, ema_params (default: the same weights), step 0}, an empty data state and
    the config."""
    from diffjax import checkpoint

    out_dir = check_new_run(out_dir)
    ckpt = checkpoint.Checkpointer(fileio.join(out_dir, "checkpoints"), asynchronous=False)
    params = to_jax(params)
    ema_params = params if ema_params is None else to_jax(ema_params)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "ema_params": ema_params}
    ckpt.save(0, state, {}, config.to_dict() if hasattr(config, "to_dict") else dict(config), force=True)
    ckpt.wait()
    ckpt.close()
    return out_dir


def command_line(prog: str, description: str, convert: Callable[..., str], input_help: str,
                 argv: list[str] | None = None, presets: Iterable[str] | None = None,
                 preset_help: str = "", formats: Iterable[str] | None = None) -> None:
    """``python -m <prog> IN OUT_DIR [--preset=NAME] [--format=NAME]``: run ``convert(IN, OUT_DIR,
    **options)`` and print the run directory written, or one ``error:`` line."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("checkpoint", help=input_help)
    parser.add_argument("out_dir", help="the run directory to write")
    if formats is not None:
        parser.add_argument("--format", choices=sorted(formats), help="default: told from the checkpoint")
    if presets is not None:
        parser.add_argument("--preset", choices=sorted(presets) or None, help=preset_help)
    args = parser.parse_args(argv)
    options = {k: v for k in ("format", "preset") if (v := getattr(args, k, None))}
    try:
        print(f"wrote {convert(args.checkpoint, args.out_dir, **options)}")
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
