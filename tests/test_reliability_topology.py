"""A checkpoint written on 8 devices with FSDP-split arrays is read on 1 device: by sampling and
evaluation (``Checkpointer.restore_params``, host arrays) and by a resumed training run.

Two subprocesses, because the device count is fixed when JAX starts."""
import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from diffjax import checkpoint, train
    from diffjax.configs import toy2d

    workdir = sys.argv[1]
    config = toy2d.get_config()
    config.model.update(hidden=256, depth=1)  # 256 x 256 kernels: large enough to be split
    config.training.update(num_steps=2, batch_size=32, log_every=1, checkpoint_every=2, sample_every=0)
    flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(tree)}
""")

WRITER = COMMON + textwrap.dedent("""
    assert jax.device_count() == 8
    config.parallel.fsdp = 2
    state = train.train(config, workdir)
    split = [x.sharding.shard_shape(x.shape) != x.shape for x in jax.tree.leaves(state.params)]
    np.savez(workdir + "/written.npz", **flat(jax.device_get(state.ema_params)))
    print("RESULT" + json.dumps({"split": sum(split)}))
""")

READER = COMMON + textwrap.dedent("""
    assert jax.device_count() == 1
    params = checkpoint.Checkpointer(workdir + "/checkpoints").restore_params()["ema_params"]
    written = np.load(workdir + "/written.npz")
    read = flat(params)
    same = sorted(read) == sorted(written.files) and all(np.array_equal(read[k], written[k]) for k in read)
    config.training.num_steps = 3
    state = train.train(config, workdir)  # resumes on 1 device
    print("RESULT" + json.dumps({"same": same, "step": int(state.step)}))
""")


def _run(script, workdir, devices):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.run([sys.executable, "-c", script, workdir], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0][len("RESULT"):])


def test_a_checkpoint_written_fsdp_split_on_8_devices_is_read_on_1(tmp_path):
    written = _run(WRITER, str(tmp_path), 8)
    assert written["split"] > 0, "no parameter was split over the fsdp axis"
    read = _run(READER, str(tmp_path), 1)
    assert read["same"]
    assert read["step"] == 3
