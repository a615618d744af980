"""Forward pass and train step of the DDPM CIFAR-10 UNet: diffjax vs diffusers UNet2DModel.

    python bench/bench_unet.py --batch 8 --repeats 5 --threads 2

Same architecture on both sides (35,746,307 parameters, dropout 0.1), same batch of 32x32
images. Train step: eps-prediction MSE, gradient, Adam update (optax / torch.optim). Reports
the median wall time over ``--repeats`` runs after one warm-up, the diffjax/diffusers ratio
and diffjax's compile times (lower + compile of each jitted function). CPU timings depend on
whatever else runs on the machine; torch is limited to ``--threads`` threads, XLA uses all cores
(run under ``taskset -c 0-1`` to pin both to the same cores).
"""
from __future__ import annotations

import argparse
import statistics
import time


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_diffjax(batch: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from diffjax.models import DDPMUNet

    model = DDPMUNet()  # CIFAR-10 configuration of Ho et al. 2020
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, 32, 32, 3))
    eps = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    t = jnp.arange(batch, dtype=jnp.float32) * 100.0
    params = jax.jit(model.init)(jax.random.PRNGKey(2), x, t)["params"]
    tx = optax.adam(2e-4)
    opt_state = tx.init(params)

    def forward(params, x, t):
        return model.apply({"params": params}, x, t)

    def train_step(params, opt_state, x, t, eps, key):
        def loss_fn(p):
            out = model.apply({"params": p}, x, t, train=True, rngs={"dropout": key})
            return jnp.mean((out - eps) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    fwd = jax.jit(forward).lower(params, x, t).compile()
    compile_fwd = time.perf_counter() - start
    start = time.perf_counter()
    step = jax.jit(train_step, donate_argnums=(0, 1)).lower(params, opt_state, x, t, eps,
                                                           jax.random.PRNGKey(3)).compile()
    compile_step = time.perf_counter() - start

    state = {"params": params, "opt": opt_state, "key": jax.random.PRNGKey(4)}

    def run_step():
        state["key"], key = jax.random.split(state["key"])
        state["params"], state["opt"], loss = step(state["params"], state["opt"], x, t, eps, key)
        loss.block_until_ready()

    return {"forward": _median_time(lambda: fwd(state["params"], x, t).block_until_ready(), repeats),
            "train_step": _median_time(run_step, repeats),
            "compile_forward": compile_fwd, "compile_train_step": compile_step}


def bench_diffusers(batch: int, repeats: int, threads: int) -> dict:
    import diffusers
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = diffusers.UNet2DModel(
        sample_size=32, block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
        attention_head_dim=None, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
        dropout=0.1)
    x, eps = torch.randn(batch, 3, 32, 32), torch.randn(batch, 3, 32, 32)
    t = torch.arange(batch) * 100
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)

    def forward():
        net.eval()
        with torch.no_grad():
            net(x, t)

    def train_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x, t).sample, eps)
        loss.backward()
        opt.step()

    return {"forward": _median_time(forward, repeats), "train_step": _median_time(train_step, repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import jax
    ours = bench_diffjax(args.batch, args.repeats)
    theirs = bench_diffusers(args.batch, args.repeats, args.threads)
    print(f"DDPM CIFAR-10 UNet, batch {args.batch} x 32x32x3, backend {jax.default_backend()}, "
          f"median of {args.repeats} after 1 warm-up, {args.threads} threads")
    print("| | diffjax (s) | diffusers (s) | diffjax / diffusers |")
    print("|---|---|---|---|")
    for k in ("forward", "train_step"):
        print(f"| {k} | {ours[k]:.3f} | {theirs[k]:.3f} | {ours[k] / theirs[k]:.2f} |")
    print(f"diffjax compile: forward {ours['compile_forward']:.1f} s, train step {ours['compile_train_step']:.1f} s")


if __name__ == "__main__":
    main()
