"""One jit-compiled train step over a device mesh equals the single-device step.

Runs in a subprocess with 8 simulated CPU devices (XLA_FLAGS must be set before JAX starts).
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from configs import default
    from diffjax import parallel, schedules, train
    from diffjax.models.mlp import MLP

    assert jax.device_count() == 8, jax.device_count()

    def loss_fn(model_fn, x0, key, schedule):
        # the eps-MSE of DDPM at random times (randomness from the key, as losses do)
        k_t, k_eps = jax.random.split(key)
        t = jax.random.uniform(k_t, (x0.shape[0],), minval=1e-3, maxval=1.0)
        eps = jax.random.normal(k_eps, x0.shape)
        a, s = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        err = jnp.mean((model_fn(a * x0 + s * eps, t) - eps) ** 2)
        return err, {"mse": err}

    def deterministic_loss(model_fn, x0, key, schedule):
        # no randomness: the mean over micro-batches equals the mean over the batch
        err = jnp.mean((model_fn(0.8 * x0, jnp.full((x0.shape[0],), 0.5)) - x0) ** 2)
        return err, {"mse": err}

    def run(mesh, *, grad_accum=1, steps_per_call=1, steps=3, loss=loss_fn, hidden=32):
        config = default.get_config()
        config.data.source = "toy:8gaussians"
        config.training.batch_size = 64
        config.training.grad_accum = grad_accum
        config.training.steps_per_call = steps_per_call
        config.optim.warmup_steps = 2
        config.optim.lr = 1e-2
        net = MLP(hidden=hidden, depth=2)
        schedule = schedules.get({"name": "vp"})
        tx = train.make_optimizer(config.optim)
        init = lambda: train.init_state(config, net, tx, jax.random.PRNGKey(0))
        shardings = parallel.state_sharding(jax.eval_shape(init), mesh)
        state = jax.jit(init, out_shardings=shardings)()
        leading = 1 if steps_per_call > 1 else 0
        step = parallel.jit_step(train.make_train_step(config, net, schedule, loss, tx, mesh), shardings, mesh, leading)
        rng = np.random.default_rng(0)
        batches = [{"image": rng.normal(size=(64, 2)).astype(np.float32)} for _ in range(steps)]
        if not steps:
            return jax.device_get(state), {}, []
        for i in range(0, steps, steps_per_call):
            chunk = batches[i:i + steps_per_call]
            batch = chunk[0] if not leading else {"image": np.stack([b["image"] for b in chunk])}
            state, metrics = step(state, parallel.global_batch(batch, mesh, leading))
        # (full shape, shape of one device's shard) of every array after the steps
        shards = [(list(x.shape), list(x.addressable_shards[0].data.shape)) for x in jax.tree.leaves(state)]
        return jax.device_get(state), {k: float(v) for k, v in metrics.items()}, shards

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    devices = jax.devices()
    single, m1, _ = run(parallel.make_mesh(1, devices[:1]))
    data8, m8, _ = run(parallel.make_mesh(1, devices))
    # hidden=128: the 128x128 kernels (and their Adam moments) reach parallel._MIN_FSDP_SIZE
    wide, m_wide, _ = run(parallel.make_mesh(1, devices[:1]), hidden=128)
    fsdp, m_fsdp, fsdp_shards = run(parallel.make_mesh(2, devices), hidden=128)
    out = {
        "data8_params": max_diff(single.params, data8.params),
        "data8_ema": max_diff(single.ema_params, data8.ema_params),
        "data8_opt": max_diff(single.opt_state, data8.opt_state),
        "fsdp_params": max_diff(wide.params, fsdp.params),
        "fsdp_ema": max_diff(wide.ema_params, fsdp.ema_params),
        "fsdp_opt": max_diff(wide.opt_state, fsdp.opt_state),
        "fsdp_moved": max_diff(wide.params, run(parallel.make_mesh(1, devices[:1]), hidden=128, steps=0)[0].params),
        "loss_wide": m_wide["loss"], "loss_fsdp": m_fsdp["loss"],
        "fsdp_split": [s for s in fsdp_shards if s[0] != s[1]],
        "loss_single": m1["loss"], "loss_data8": m8["loss"],
        "step": int(data8.step),
    }
    scanned, _, _ = run(parallel.make_mesh(1, devices), steps_per_call=3)
    out["scan_params"] = max_diff(single.params, scanned.params)
    out["scan_step"] = int(scanned.step)
    whole, _, _ = run(parallel.make_mesh(1, devices), loss=deterministic_loss)
    accum, _, _ = run(parallel.make_mesh(1, devices), grad_accum=2, loss=deterministic_loss)
    out["accum_params"] = max_diff(whole.params, accum.params)
    try:
        parallel.check_batch_size(12, parallel.make_mesh(1, devices))
        out["indivisible_error"] = ""
    except ValueError as e:
        out["indivisible_error"] = str(e)
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0]
    print(line)
    return json.loads(line[len("RESULT"):])


def test_data_parallel_step_equals_single_device_step(result):
    assert result["step"] == 3
    assert result["data8_params"] < 1e-5
    assert result["data8_ema"] < 1e-5
    assert result["data8_opt"] < 1e-5
    assert abs(result["loss_single"] - result["loss_data8"]) < 1e-5


def test_fsdp_sharded_step_equals_single_device_step(result):
    # the 128x128 kernels (and their Adam moments) are really split in two over the fsdp axis
    halved = [full for full, shard in result["fsdp_split"] if np.prod(shard) * 2 == np.prod(full)]
    assert [128, 128] in halved, result["fsdp_split"]
    assert result["fsdp_moved"] > 1e-3  # the three steps changed the parameters: the comparison means something
    assert result["fsdp_params"] < 1e-5
    assert result["fsdp_ema"] < 1e-5
    assert result["fsdp_opt"] < 1e-5
    assert abs(result["loss_wide"] - result["loss_fsdp"]) < 1e-5


def test_several_steps_per_call_equal_single_steps(result):
    assert result["scan_step"] == 3
    assert result["scan_params"] < 1e-5


def test_batch_not_divisible_by_device_count_is_a_clear_error(result):
    assert "batch_size=12 is not divisible by the number of devices (8)" in result["indivisible_error"]


def test_gradient_accumulation_equals_the_whole_batch_gradient(result):
    # with a loss without randomness (micro-batches otherwise draw their own t and eps)
    assert result["accum_params"] < 1e-5
