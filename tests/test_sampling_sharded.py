"""Sharded sampling (issue 9): sample i is a function of (seed, i) only, so the same seed gives the
same samples on 1 or 8 devices, on 1 or 2 processes, with any batch size, and a killed run resumes
to the same result.

Each topology runs in its own subprocess (``XLA_FLAGS=--xla_force_host_platform_device_count=8``
or ``jax.distributed.initialize`` on 127.0.0.1) running this file's ``worker``: a conditional MLP
(toy 2D config, 3 classes, random parameters) sampled by 20-step DDPM with classifier-free
guidance, so every step draws noise.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 40
OPTIONS = {"steps": 20, "guidance_scale": 1.0}


def worker(out_dir: str, num_samples: int, batch_size: int, seed: int, process_id: int = 0,
           num_processes: int = 1, port: int = 0) -> None:
    import jax

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                                   process_id=process_id)
    from diffjax import models, sampling, schedules
    from diffjax.configs import toy2d

    config = toy2d.get_config()
    config.data.num_classes = config.model.num_classes = 3
    net, schedule = models.get_model(config.model), schedules.get(config.schedule)
    params = jax.device_get(net.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 2)), jax.numpy.ones((1,)),
                                     y=jax.numpy.zeros((1,), jax.numpy.int32))["params"])
    info = sampling.sample_to_dir(config, net, schedule, params, out_dir, num_samples=num_samples, seed=seed,
                                  batch_size=batch_size, sampler="ddpm", options=OPTIONS)
    print("INFO", json.dumps(info))


def run_worker(out_dir, num_samples=N, batch_size=8, seed=0, devices=1, process_id=0, num_processes=1, port=0,
               wait=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    cmd = [sys.executable, os.path.abspath(__file__), str(out_dir), str(num_samples), str(batch_size), str(seed),
           str(process_id), str(num_processes), str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.split("INFO ", 1)[1])


def load(out_dir, n=N):
    from diffjax import sampling

    return sampling.load_samples(str(out_dir), n)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "s"
    info = run_worker(out, devices=1, batch_size=8)
    return load(out), info


def test_same_samples_on_1_and_8_devices_and_any_batch_size(one_device, tmp_path):
    (x1, y1), info1 = one_device
    info8 = run_worker(tmp_path / "eight", devices=8, batch_size=24)  # 2 batches, the last padded
    x8, y8 = load(tmp_path / "eight")
    assert (info1["num_devices"], info8["num_devices"]) == (1, 8)
    np.testing.assert_array_equal(y1, np.arange(N) % 3)  # labels are a function of the index
    np.testing.assert_array_equal(y8, y1)
    np.testing.assert_allclose(x8, x1, rtol=0, atol=1e-6)
    assert np.std(x1) > 0.1 and len(np.unique(x1[:, 0])) == N


def test_killed_run_resumes_to_the_same_samples(one_device, tmp_path):
    (x1, _), _ = one_device
    out = tmp_path / "resumed"
    run_worker(out, devices=1, batch_size=8)
    files = sorted(f for f in os.listdir(out) if f.startswith("shard_"))
    for f in files[1::2]:  # what a kill leaves: some batches written, the others not
        os.remove(out / f)
    info = run_worker(out, devices=8, batch_size=16)  # and resumed on another topology
    assert 0 < info["num_drawn"] < N
    np.testing.assert_allclose(load(out)[0], x1, rtol=0, atol=1e-6)


def test_other_settings_in_the_same_directory_are_refused(one_device, tmp_path):
    out = tmp_path / "s"
    run_worker(out, num_samples=8, devices=1, batch_size=8)
    with pytest.raises(AssertionError, match="other settings"):
        run_worker(out, num_samples=8, devices=1, batch_size=8, seed=1)


@pytest.mark.slow
def test_two_processes_write_shards_whose_union_is_the_one_process_samples(one_device, tmp_path):
    (x1, y1), _ = one_device
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two"
    procs = [run_worker(out, devices=2, batch_size=12, process_id=i, num_processes=2, port=port, wait=False)
             for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    infos = [json.loads(o.split("INFO ", 1)[1]) for o, _ in results]
    assert [i["num_processes"] for i in infos] == [2, 2] and infos[0]["num_devices"] == 4
    x2, y2 = load(out)
    np.testing.assert_array_equal(y2, y1)
    np.testing.assert_allclose(x2, x1, rtol=0, atol=1e-6)


if __name__ == "__main__":
    worker(sys.argv[1], *map(int, sys.argv[2:]))


def test_load_samples_reads_each_shard_once_and_refuses_gaps(tmp_path, monkeypatch):
    from diffjax import fileio, sampling

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(10, 2, 2, 1)).astype(np.float32), np.arange(10) % 3
    for first, stop in ((0, 4), (4, 8), (8, 10)):  # the last shard holds rows past the 9 asked for
        np.savez(tmp_path / f"shard_{first:08d}.npz", samples=x[first:stop], labels=y[first:stop])
    reads = []
    real = fileio.load_npz
    monkeypatch.setattr(fileio, "load_npz", lambda path, keys=None: reads.append(path) or real(path, keys))
    samples, labels = sampling.load_samples(str(tmp_path), 9)
    np.testing.assert_array_equal(samples, x[:9])
    np.testing.assert_array_equal(labels, y[:9])
    assert sorted(reads) == sorted(set(reads)) and len(reads) == 3, reads
    os.remove(tmp_path / "shard_00000004.npz")
    with pytest.raises(FileNotFoundError, match="does not hold all of samples 0..8"):
        sampling.load_samples(str(tmp_path), 9)
