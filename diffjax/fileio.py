"""Files in a run folder that may be local, on a mounted drive, or in a bucket (``gs://``, ``s3://``).

Every file diffjax writes outside a checkpoint (``metrics.jsonl``, ``config.json``, sample grids,
sample shards, evaluation and reproduction reports, FID statistics, synthetic data sets) goes
through these few functions, built on ``etils.epath`` (the path library Orbax itself uses, so
checkpoints and logs take the same URLs). Local paths behave exactly as with ``os``. For a
``gs://`` path epath uses TensorFlow's gfile when TensorFlow is installed (as on Colab) and gcsfs
otherwise (``pip install "diffjax[gcs]"``; ``EPATH_USE_TF=false`` forces gcsfs). TensorBoard events
go through tensorboardX, which writes ``gs://`` with ``google-cloud-storage``.

Object stores have no rename and no append, so:

* :func:`write_atomic` writes a local file beside its target and renames it into place (a reader
  never sees half a file); in a bucket one object upload is already all-or-nothing.
* :func:`append_lines` appends locally; in a bucket it reads the object and writes it back whole
  (a log of a few thousand lines; only process 0 writes it).
"""
from __future__ import annotations

import io
import json
import os
import socket
import sys
from typing import Any, Iterable

import numpy as np

_REMOTE_PREFIXES = ("gs://", "s3://", "az://", "hf://")


def is_remote(path: str) -> bool:
    """Whether ``path`` names an object store (``gs://bucket/...`` and the like)."""
    return str(path).startswith(_REMOTE_PREFIXES)


def normalize(path: str) -> str:
    """A local path made absolute (``~`` expanded); a bucket URL unchanged."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *names: str) -> str:
    if is_remote(path):
        return "/".join([str(path).rstrip("/"), *names])
    return os.path.join(path, *names)


def _epath(path: str):
    from etils import epath

    return epath.Path(path)


def _fresh(path: str) -> None:
    """gcsfs (and s3fs) keep folder listings for the life of the process; forget them, so that a
    process waiting on other processes' files (a new checkpoint, another host's shards) sees them."""
    if "gcsfs" in sys.modules or "s3fs" in sys.modules:
        from etils.epath import backend

        try:
            backend.fsspec_backend.fs(path).invalidate_cache()
        except ImportError:
            pass


def exists(path: str) -> bool:
    if is_remote(path):
        _fresh(path)
        return _epath(path).exists()
    return os.path.exists(path)


def isdir(path: str) -> bool:
    if is_remote(path):
        _fresh(path)
        return _epath(path).is_dir()
    return os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """The names in a folder (empty when it does not exist)."""
    if is_remote(path):
        _fresh(path)
        p = _epath(path)
        return sorted(c.name for c in p.iterdir()) if p.exists() else []
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def makedirs(path: str) -> None:
    if is_remote(path):
        _epath(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def remove(path: str) -> None:
    if is_remote(path):
        _epath(path).unlink()
    else:
        os.remove(path)


def rename(source: str, target: str) -> None:
    """Move a file or folder (in a bucket: copied object by object, then deleted)."""
    if not is_remote(source):
        os.rename(source, target)
        return
    src, dst = _epath(source), _epath(target)
    if not src.is_dir():
        src.rename(dst)
        return

    def copy_tree(a, b):
        b.mkdir(parents=True, exist_ok=True)
        for child in a.iterdir():
            if child.is_dir():
                copy_tree(child, b / child.name)
            else:
                child.copy(b / child.name)

    copy_tree(src, dst)
    src.rmtree()
    _fresh(source)


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        return _epath(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def write_atomic(path: str, data: bytes | str) -> None:
    """Write a whole file so that a reader (or a crash) never sees part of it."""
    data = data.encode() if isinstance(data, str) else data
    if is_remote(path):
        _epath(path).write_bytes(data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{socket.gethostname()}-{os.getpid()}"  # unique across hosts sharing the folder
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def write_json(path: str, obj: Any, indent: int | None = 1) -> None:
    write_atomic(path, json.dumps(obj, indent=indent))


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def append_lines(path: str, lines: Iterable[str]) -> None:
    """Append whole lines (each ending in a newline) to a text file, creating it."""
    text = "".join(lines)
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(text)
        return
    old = read_text(path) if exists(path) else ""
    write_atomic(path, old + text)


def save_npz(path: str, **arrays: Any) -> None:
    """``np.savez`` written atomically (see :func:`write_atomic`)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())


def load_npz(path: str, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays ``keys`` (default: all) of an ``.npz`` file, read into memory. A local file is
    read lazily (only those arrays); an object in a bucket is downloaded whole."""
    with np.load(io.BytesIO(read_bytes(path)) if is_remote(path) else path) as f:
        return {k: f[k] for k in (f.files if keys is None else keys)}
