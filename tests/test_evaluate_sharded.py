"""Sharded evaluation (issue 9 item 6): sample metrics reduced on the device mesh as sufficient
statistics give the numbers of numpy on the gathered features, and the same numbers on 1 and 8
devices with different batch sizes (the last batch padded).

Each topology runs this file's ``worker`` in a subprocess: a tiny random UNet (quickstart config,
5 DDPM steps) sampled and evaluated by ``evaluate.sample_metrics`` with a small stand-in for the
Inception network (7x7-pooled pixels as "pool3"), against a cached reference of random features.
The worker also gathers every batch the stand-in network saw and computes FID (numpy mean /
covariance), IS and KID from the full feature matrix.
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


def _fake_features(images):
    """7x7-pooled pixels as 'pool' (16-d: fewer dimensions than samples, so the covariance is
    regular and FID is not dominated by round-off), ten of them as logits."""
    import jax.numpy as jnp

    x = jnp.asarray(images, jnp.float32).reshape(len(images), 4, 7, 4, 7).mean((2, 4)).reshape(len(images), -1)
    x = x / 255.0 + 0.1 * jnp.sin(jnp.arange(16.0))  # a mean far from 0, as Inception features have
    return {"pool": x, "logits_unbiased": 4.0 * x[:, :10]}


def worker(out_path: str, batch_size: int, process_id: int = 0, num_processes: int = 1, port: int = 0) -> None:
    import jax

    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=num_processes,
                                   process_id=process_id)

    from diffjax import evaluate, parallel, train
    from diffjax.configs import quickstart
    from diffjax.metrics import fid, inception

    seen = []  # every batch the stand-in network is given, gathered

    def make_apply_fn(variables):
        apply = jax.jit(_fake_features)

        def fn(images):
            seen.append(evaluate._gather(images))
            return apply(images)
        return fn

    inception.load_variables = lambda path=None: None
    inception.make_apply_fn = make_apply_fn
    config = quickstart.get_config()
    config.model.update(ch=8, ch_mult=(1,), num_groups=4)
    config.schedule.T = 20
    config.sampler.steps = 5
    net, schedule, _, _ = train.build(config)
    params = jax.device_get(net.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 28, 28, 1)),
                                     jax.numpy.ones((1,)))["params"])
    ref_path = os.path.join(os.path.dirname(out_path), "ref.npz")
    options = evaluate.eval_options(config, {
        "metrics": ("fid", "kid", "inception_score"), "num_samples": N, "batch_size": batch_size,
        "reference_stats": ref_path, "kid_subsets": 10, "kid_subset_size": 30, "is_splits": 3})
    mesh = parallel.make_mesh(1)
    results = evaluate.sample_metrics(config, net, schedule, params, options, mesh)

    # the samples gathered on the host (without the padding of the last batch) and the metrics in
    # numpy from all their features
    images = np.concatenate(seen)[:N]
    feats = {k: np.asarray(v, np.float64) for k, v in _fake_features(images).items()}
    with np.load(ref_path) as f:
        ref = {k: f[k] for k in f.files}
    numpy = {"fid": fid.frechet_distance(feats["pool"].mean(0), np.cov(feats["pool"], rowvar=False),
                                         ref["mu"], ref["sigma"]),
             "inception_score": fid.inception_score(feats["logits_unbiased"], 3)[0],
             "kid": fid.kernel_inception_distance(feats["pool"], ref["features"], 10, 30, seed=0)[0]}
    with open(f"{out_path}.{process_id}", "w") as f:
        json.dump({"results": results, "numpy": numpy, "devices": len(jax.devices())}, f)


def run_workers(out_path, devices, batch_size, num_processes=1):
    """The worker in ``num_processes`` processes of ``devices`` CPU devices each; their results."""
    from diffjax.metrics import fid

    ref_path = os.path.join(os.path.dirname(out_path), "ref.npz")
    if not os.path.exists(ref_path):
        ref = np.random.default_rng(0).normal(0.3, 0.2, (200, 16))
        fid.save_statistics(ref_path, {**fid.feature_statistics(ref), "features": ref.astype(np.float32)})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), str(out_path), str(batch_size), str(i),
                               str(num_processes), str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(num_processes)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    results = []
    for i in range(num_processes):
        with open(f"{out_path}.{i}") as f:
            results.append(json.load(f))
    return results


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return run_workers(tmp_path_factory.mktemp("one") / "r.json", devices=1, batch_size=16)[0]


@pytest.mark.filterwarnings("ignore:FID from")
def test_sharded_statistics_equal_numpy_and_do_not_depend_on_the_device_count(one_device, tmp_path):
    one = one_device
    eight = run_workers(tmp_path / "r.json", devices=8, batch_size=24)[0]
    assert (one["devices"], eight["devices"]) == (1, 8)
    for r in (one, eight):
        for name in ("fid", "inception_score", "kid"):
            assert r["results"][name] == pytest.approx(r["numpy"][name], rel=1e-5), name
    for name in ("fid", "inception_score", "kid"):
        assert eight["results"][name] == pytest.approx(one["results"][name], rel=1e-6), name
    assert one["results"]["fid"] > 0.1 and one["results"]["inception_score"] > 1.01
    assert one["results"]["nfe"] == eight["results"]["nfe"] == 5


@pytest.mark.slow
def test_two_processes_reduce_to_the_one_process_numbers(one_device, tmp_path):
    both = run_workers(tmp_path / "r.json", devices=2, batch_size=12, num_processes=2)
    assert [r["devices"] for r in both] == [4, 4]
    for r in both:  # every process gets the numbers of all samples, not of its own share
        for name in ("fid", "inception_score", "kid"):
            assert r["results"][name] == pytest.approx(one_device["results"][name], rel=1e-6), name


if __name__ == "__main__":
    worker(sys.argv[1], *map(int, sys.argv[2:]))


def test_merged_batch_moments_equal_the_covariance_of_all_features():
    import jax.numpy as jnp

    from diffjax.metrics import fid

    rng = np.random.default_rng(0)
    x = rng.normal(50.0, 0.5, (300, 6)).astype(np.float32)  # a large mean: no cancellation in float32
    logits = rng.normal(0.0, 2.0, (300, 10)).astype(np.float32)
    m, sums = fid.Moments(), None
    for part in np.split(np.arange(320), [7, 100, 101, 256]):  # uneven batches, the last padded
        w = (part < 300).astype(np.float32)
        idx = np.minimum(part, 299)
        m.add(fid.batch_moments(x[idx], w))
        s = fid.inception_score_sums(logits[idx], w, fid.split_ids(jnp.asarray(part), 300, 4), 4)
        sums = s if sums is None else {k: sums[k] + s[k] for k in s}
    stats = m.statistics()
    assert int(stats["n"]) == 300
    np.testing.assert_allclose(stats["mu"], x.astype(np.float64).mean(0), rtol=1e-7)
    np.testing.assert_allclose(stats["sigma"], np.cov(x.astype(np.float64), rowvar=False), rtol=1e-4, atol=1e-6)
    assert fid.inception_score_from_sums(sums) == pytest.approx(fid.inception_score(logits, 4), rel=1e-5)


def test_a_step_sweep_skips_the_steps_metrics_jsonl_already_holds(tmp_path):
    from diffjax import evaluate

    for step in ("1000", "2000", "3000", "4000.orbax-checkpoint-tmp-1"):  # the last one unfinished
        os.makedirs(tmp_path / "checkpoints" / step)
    assert evaluate.kept_steps(str(tmp_path)) == [1000, 2000, 3000]
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"step": 1000, "train/loss": 0.1}) + "\n")
        f.write(json.dumps({"step": 1000, "eval/fid": 9.0, "eval/num_samples": 50000}) + "\n")
        f.write(json.dumps({"step": 2000, "eval/fid": 8.0, "eval/num_samples": 1000}) + "\n")
    assert evaluate.evaluated(str(tmp_path), 1000, ("fid",), 50000)
    assert not evaluate.evaluated(str(tmp_path), 1000, ("fid", "inception_score"), 50000)  # more metrics
    assert not evaluate.evaluated(str(tmp_path), 2000, ("fid",), 50000)  # from fewer samples
    assert not evaluate.evaluated(str(tmp_path), 3000, ("fid",), 50000)
    assert evaluate.evaluated(str(tmp_path), 2000, ("fid",), 1000)
