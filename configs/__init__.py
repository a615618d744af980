"""The experiment configs, installed with the package as ``diffjax.configs``.

A config is named on the command line either by a file path (any user config) or by its name
here: ``ddpm/cifar10``, ``ddpm/cifar10.py`` and ``configs/ddpm/cifar10.py`` all name the
packaged ``ddpm/cifar10.py``, from any working directory (:func:`resolve`). A file path that
exists always wins, so a user's own ``configs/ddpm/cifar10.py`` is read instead.
"""
from __future__ import annotations

import os

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    """Every packaged config, as ``group/name`` (without ``.py``)."""
    found = []
    for root, _, files in os.walk(DIR):
        for f in files:
            if f.endswith(".py") and not f.startswith("_") and f not in ("default.py", "common.py"):
                found.append(os.path.relpath(os.path.join(root, f[:-3]), DIR).replace(os.sep, "/"))
    return sorted(found)


def resolve(spec: str) -> str:
    """The file a ``--config`` value names (see the module docstring); ``ValueError`` listing the
    packaged configs when it names nothing."""
    path, sep, overrides = spec.partition(":")  # ml_collections passes `file.py:args` to get_config
    if os.path.isfile(path):
        return spec
    name = path[len("configs/"):] if path.startswith("configs/") else path
    name = name[:-3] if name.endswith(".py") else name
    packaged = os.path.join(DIR, *name.split("/")) + ".py"
    if name in names():
        return packaged + sep + overrides
    raise ValueError(f"config {path!r} is neither a file nor a packaged config; packaged: "
                     f"{', '.join(names())}")


def resolve_argv(argv: list[str], flag: str = "config") -> list[str]:
    """``argv`` with the value of ``--<flag>=X`` / ``--<flag> X`` replaced by :func:`resolve` (X),
    for command lines whose config flag is an ml_collections ``DEFINE_config_file``."""
    out, i = list(argv), 1
    while i < len(out):
        arg = out[i]
        if arg.startswith(f"--{flag}="):
            out[i] = f"--{flag}=" + resolve(arg.split("=", 1)[1])
        elif arg == f"--{flag}" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
            i += 1
        i += 1
    return out
