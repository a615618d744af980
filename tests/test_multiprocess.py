"""Two real training processes on 127.0.0.1 (CPU collectives) train as one process with the same
global batch, and a run resumed on another process count continues the same stream.

Started from the command line exactly as the README's "Several hosts" section says."""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffjax import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(workdir, num_steps, *extra):
    return [sys.executable, "-m", "diffjax.train", "--config=configs/toy2d.py", f"--workdir={workdir}",
            f"--config.training.num_steps={num_steps}", "--config.training.batch_size=32",
            "--config.training.log_every=1", "--config.training.checkpoint_every=2",
            "--config.training.sample_every=0", "--config.model.hidden=32", "--config.model.depth=1", *extra]


def _train(workdir, num_steps, processes=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    procs = [subprocess.Popen(
        _command(workdir, num_steps, *([f"--config.parallel.coordinator_address=127.0.0.1:{port}",
                                        f"--config.parallel.num_processes={processes}",
                                        f"--config.parallel.process_id={i}"] if processes > 1 else [])),
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]


def _params(workdir, step):
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    params = ckpt.restore_params(step)
    ckpt.close()
    return params


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_two_processes_train_as_one_and_a_resume_on_one_process_continues_the_stream(tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _train(one, 4)                  # 1 process, checkpoints at steps 2 and 4
    _train(two, 2, processes=2)     # 2 processes, the same global batch of 32
    assert _max_diff(_params(one, 2), _params(two, 2)) < 1e-5
    _train(two, 4)                  # resumed on 1 process
    assert _max_diff(_params(one, 4), _params(two, 4)) < 1e-5
    expected, got = _losses(one), _losses(two)
    assert sorted(got) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in range(1, 5)], [expected[s] for s in range(1, 5)], rtol=1e-5)
