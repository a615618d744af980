"""The communication of the sharded train step, read from its compiled HLO (8 simulated CPU devices).

Pure data parallelism must all-reduce the gradients (an all-reduce at least as large as the
parameters) and gather nothing; with ``parallel.fsdp > 1`` the split parameters are all-gathered
once before use (``parallel.gather_params``) and their gradients reduced (reduce-scatter or
all-reduce), with no all-to-all and without XLA's "involuntary full rematerialization" (what the
partitioner did when left to propagate the split into the layers: gather twice, all-to-all). The step compiles once
however many times it is called, and under weak scaling (1, 2, 4, 8 devices, 8 examples per
device) every device holds 8 examples. Runs in a subprocess: XLA_FLAGS must be set before JAX starts.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, re, time
    import jax, numpy as np
    from configs import default
    from diffjax import losses, parallel, schedules, train
    from diffjax.models.mlp import MLP

    assert jax.device_count() == 8, jax.device_count()
    PER_DEVICE = 8

    def collectives(hlo):
        # {op: total elements of its results} over the instructions of the compiled module
        out = {}
        for op in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute"):
            total = 0
            # the result type, a tuple when XLA combined several (with /*index=N*/ comments)
            for m in re.finditer(r"= ([^\\n]*?) " + op + r"(?:-start)?\\(", hlo):
                total += sum(int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                             for dims in re.findall(r"[fsu]\\d+\\[([\\d,]*)\\]", m.group(1)))
            out[op] = total
        return out

    def setup(mesh):
        config = default.get_config()
        config.data.source = "toy:8gaussians"
        config.training.batch_size = PER_DEVICE * mesh.devices.size
        net = MLP(hidden=128, depth=2)
        schedule = schedules.get({"name": "ddpm_linear"})
        tx = train.make_optimizer(config.optim)
        init = lambda: train.init_state(config, net, tx, jax.random.PRNGKey(0))
        shardings = parallel.state_sharding(jax.eval_shape(init), mesh)
        state = jax.jit(init, out_shardings=shardings)()
        step = parallel.jit_step(train.make_train_step(config, net, schedule, losses.get({"name": "simple"}), tx,
                                                       mesh), shardings, mesh)
        images = np.random.default_rng(0).normal(size=(config.training.batch_size, 2)).astype(np.float32)
        return state, step, parallel.global_batch({"image": images}, mesh)

    def unet_fsdp(mesh):
        # a small DDPM UNet (ch 64, 8x8), fsdp 2: the layers the partitioner used to get wrong
        from bench import run as bench_run
        shape = dict(ch=64, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), image_size=8)
        config = bench_run.unet_config(shape, 16)
        net, schedule, loss_fn, tx = train.build(config)
        init = lambda: train.init_state(config, net, tx, jax.random.PRNGKey(0))
        shapes = jax.eval_shape(init)
        shardings = parallel.state_sharding(shapes, mesh)
        step = parallel.jit_step(train.make_train_step(config, net, schedule, loss_fn, tx, mesh), shardings, mesh)
        images = jax.ShapeDtypeStruct((16, 8, 8, 3), np.float32, sharding=parallel.batch_sharding(mesh))
        split = sum(x.size for x, s in zip(jax.tree.leaves(shapes.params), jax.tree.leaves(shardings.params))
                    if s.spec != parallel.P())
        # sampling with the same split parameters (DDIM, 3 steps; evaluate/sample/synthesize)
        from diffjax import sampling
        del config.sampler["variance"]
        params = sampling.place_params(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes.params), mesh)
        draw = sampling.sharded_sampler(config, net, schedule, mesh, params, "ddim", {"steps": 3})
        sampler_ops = collectives(draw.lower(params, jax.random.PRNGKey(0),
                                             sampling.batch_indices(0, 16, mesh)).compile().as_text())
        return collectives(step.lower(shapes, {"image": images}).compile().as_text()), \
            sum(x.size for x in jax.tree.leaves(shapes.params)), split, sampler_ops

    devices = jax.devices()
    out = {}
    out["unet_fsdp"], out["unet_params"], out["unet_split_params"], out["unet_fsdp_sampler"] = \
        unet_fsdp(parallel.make_mesh(2, devices))
    for name, mesh in (("data", parallel.make_mesh(1, devices)), ("fsdp", parallel.make_mesh(2, devices))):
        state, step, batch = setup(mesh)
        out[name] = collectives(step.lower(state, batch).compile().as_text())
        out[name + "_params"] = sum(x.size for x in jax.tree.leaves(state.params))
        out[name + "_split_params"] = sum(x.size for x in jax.tree.leaves(state.params)
                                          if x.addressable_shards[0].data.size < x.size)
        if name == "data":
            for _ in range(3):
                state, metrics = step(state, batch)
            out["cache_size"] = step._cache_size()
            out["step"] = int(state.step)

    scaling = []
    for n in (1, 2, 4, 8):
        state, step, batch = setup(parallel.make_mesh(1, devices[:n]))
        state, metrics = step(state, batch)  # compile
        jax.block_until_ready(state)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            state, metrics = step(state, batch)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - start)
        images = batch["image"]
        scaling.append({"devices": n, "global_batch": images.shape[0],
                        "per_device": sorted({s.data.shape[0] for s in images.addressable_shards}),
                        "loss": float(metrics["loss"]), "step_s": sorted(times)[1]})
    out["scaling"] = scaling
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def result():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0]
    print(line)
    out = json.loads(line[len("RESULT"):])
    out["stderr"] = proc.stderr
    return out


def test_data_parallel_step_all_reduces_the_gradients_and_gathers_nothing(result):
    ops = result["data"]
    assert ops["all-reduce"] >= result["data_params"], ops   # every gradient element is reduced
    assert ops["all-gather"] == 0 and ops["reduce-scatter"] == 0, ops
    assert result["data_split_params"] == 0


def test_fsdp_step_all_gathers_the_split_parameters(result):
    ops = result["fsdp"]
    assert result["fsdp_split_params"] > 0.5 * result["fsdp_params"]  # the 128x128 kernels are split
    # gathered once: not in the forward and again in the backward pass
    assert result["fsdp_split_params"] <= ops["all-gather"] < 1.1 * result["fsdp_split_params"], ops
    assert ops["reduce-scatter"] + ops["all-reduce"] >= result["fsdp_split_params"] // 2, ops
    assert ops["all-to-all"] == 0 and ops["collective-permute"] == 0, ops
    assert "Involuntary full rematerialization" not in result["stderr"], result["stderr"][-2000:]


def test_fsdp_unet_step_gathers_once_and_reduces_once(result):
    ops, params, split = result["unet_fsdp"], result["unet_params"], result["unet_split_params"]
    assert split > 0.8 * params, (split, params)
    assert split <= ops["all-gather"] < 1.1 * split, ops
    assert params <= ops["all-reduce"] + ops["reduce-scatter"] < 1.1 * params, ops
    assert ops["all-to-all"] == 0 and ops["collective-permute"] == 0, ops


def test_fsdp_sampler_gathers_the_parameters_once_before_its_loop(result):
    ops, split = result["unet_fsdp_sampler"], result["unet_split_params"]
    assert split <= ops["all-gather"] < 1.1 * split, ops   # not again inside the steps
    assert ops["all-to-all"] == 0 and ops["collective-permute"] == 0, ops


def test_sharded_step_compiles_once_over_several_calls(result):
    assert result["step"] == 3
    assert result["cache_size"] == 1


def test_weak_scaling_keeps_the_per_device_batch(result):
    rows = result["scaling"]
    assert [r["devices"] for r in rows] == [1, 2, 4, 8]
    assert [r["global_batch"] for r in rows] == [8, 16, 32, 64]
    assert all(r["per_device"] == [8] for r in rows), rows
    # the eps-MSE of an untrained network on unit-variance noise: of order 1 at every size
    assert all(0.0 < r["loss"] < 10.0 for r in rows), rows
