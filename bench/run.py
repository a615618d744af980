"""``python -m bench NAME [--quick] [--repeats N] [--threads T] [--pin CPU] [--json FILE]``.

One entry point for diffjax's speed against the PyTorch peer (diffusers), both run **in this one
process, alternating** (A B A B ...; one warm-up call of each first, not counted):

* ``train_step``: the DDPM CIFAR-10 UNet (Ho et al. 2020, 35.7M parameters, dropout 0.1), batch 8
  and 32, through diffjax's real trainer step (``train.make_train_step`` under
  ``parallel.jit_step``: L_simple, gradient, global-norm clipping at 1, Adam, EMA, non-finite
  guard); peer: diffusers ``UNet2DModel`` of the same configuration, ``DDPMScheduler.add_noise``,
  MSE, ``torch.optim.Adam``, ``clip_grad_norm_`` and an EMA of the weights (as diffusers'
  ``train_unconditional.py`` with ``EMAModel``).
* ``forward``: the same UNet, batch 8, eval mode.
* ``ddim50``: 50-step DDIM (eta 0, x0 clipped) with the UNet, batch 8, through
  ``sampling.make_sampler``; peer: the ``DDIMPipeline`` loop (``DDIMScheduler.step``).
* ``ddpm1000_mlp``: 1000-step ancestral sampling of ``configs/toy2d.py``'s MLP (hidden 128,
  depth 3), n = 4096 points in 2D; peer: the ``DDPMScheduler`` loop around a torch MLP of the
  same layers and parameter count.
* ``compile``: lowering + compilation of the train step (batch 8); no peer (torch is eager).
* ``all``: every one of the above; ``accelerator``: ``bench/accelerator.py`` (GPU/TPU figures).

Times are both wall clock and CPU time (``time.process_time``: user + sys of the whole process
during the call). On a shared machine report the CPU time, with one thread on both sides
(``--threads 1``, the default: XLA's ``--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`` and ``torch.set_num_threads(1)``) and the process pinned to one
core (``--pin 0``). Ratios are peer time / diffjax time (> 1: diffjax faster). Peak memory is the
process's resident-set high-water mark (``ru_maxrss``) once the diffjax side is compiled and run,
before the peer is built, and at the end (both sides); on an accelerator the device's
``memory_stats()`` peak. ``--quick``: tiny shapes and one repeat (the test).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import time
from typing import Any, Callable, Optional

BENCHMARKS = ("train_step", "forward", "ddim50", "ddpm1000_mlp", "compile")
COMMANDS = BENCHMARKS + ("all", "accelerator")
NO_PEER_ENV = "DIFFJAX_BENCH_NO_PEER"  # set to 1: behave as if torch/diffusers were not installed


class UsageError(Exception):
    """A bad command line or setting: printed as one line, exit code 2."""


# ------------------------------------------------------------------------------- shapes

def unet_shape(quick: bool) -> dict:
    """The DDPM CIFAR-10 UNet (App. B), or a tiny one of the same kind for ``--quick``."""
    if quick:
        return dict(ch=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(8,), image_size=8)
    return dict(ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), image_size=32)


def sizes(quick: bool, batch: Optional[int] = None) -> dict:
    """Batch sizes and step counts; ``batch`` replaces the UNet benchmarks' batch sizes."""
    if quick:
        out = dict(train_batches=(2,), forward_batch=2, ddim_batch=2, ddim_steps=3, mlp_n=256, mlp_steps=20)
    else:
        out = dict(train_batches=(8, 32), forward_batch=8, ddim_batch=8, ddim_steps=50, mlp_n=4096, mlp_steps=1000)
    if batch is not None:
        out.update(train_batches=(batch,), forward_batch=batch, ddim_batch=batch)
    return out


def packaged_config(name: str) -> Any:
    """A packaged config by name (``ddpm/cifar10``)."""
    import importlib

    return importlib.import_module("diffjax.configs." + name.replace("/", ".")).get_config()


def unet_config(shape: dict, batch: int, compute_dtype: str = "float32", dropout_rng: str = "threefry") -> Any:
    config = packaged_config("ddpm/cifar10")
    config.training.dropout_rng = dropout_rng
    for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions"):
        config.model[k] = shape[k]
    config.data.image_size = shape["image_size"]
    config.training.batch_size = batch
    config.training.compute_dtype = compute_dtype
    return config


# ------------------------------------------------------------------------------- timing

def cpu_wall() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def device_peak_mb() -> Optional[float]:
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return stats["peak_bytes_in_use"] / 2 ** 20 if stats and "peak_bytes_in_use" in stats else None


def alternate(ours: Callable[[], None], theirs: Optional[Callable[[], None]], repeats: int,
              ours_warm: bool = False) -> dict:
    """Run ``ours`` and ``theirs`` alternately ``repeats`` times after one warm-up call of each
    (none for ``ours`` when ``ours_warm``); the per-call wall and CPU times of both sides."""
    sides = {"diffjax": ours, "peer": theirs}
    out = {name: {"wall_s": [], "cpu_s": []} for name, fn in sides.items() if fn is not None}
    for name, fn in sides.items():
        if fn is not None and not (name == "diffjax" and ours_warm):
            fn()
    for _ in range(repeats):
        for name, fn in sides.items():
            if fn is None:
                continue
            cpu0, wall0 = cpu_wall()
            fn()
            cpu1, wall1 = cpu_wall()
            out[name]["wall_s"].append(wall1 - wall0)
            out[name]["cpu_s"].append(cpu1 - cpu0)
    return out


def summarise(times: dict) -> dict:
    return {f"{k}_median": statistics.median(v) for k, v in times.items()} | {k: v for k, v in times.items()}


# ------------------------------------------------------------------------------- the peer

def peer_modules() -> tuple[Any, Any]:
    """``(torch, diffusers)``, or raise ImportError with the reason (also when ``NO_PEER_ENV`` is set)."""
    if os.environ.get(NO_PEER_ENV):
        raise ImportError(f"{NO_PEER_ENV} is set")
    import diffusers
    import torch

    return torch, diffusers


def torch_unet(diffusers: Any, shape: dict, dropout: float = 0.1) -> Any:
    """diffusers' ``UNet2DModel`` with the layout of diffjax's ``DDPMUNet`` (google/ddpm-cifar10-32's config)."""
    size, levels = shape["image_size"], len(shape["ch_mult"])
    res = [size // 2 ** i for i in range(levels)]
    attn = [r in shape["attn_resolutions"] for r in res]
    return diffusers.UNet2DModel(
        sample_size=size, block_out_channels=tuple(shape["ch"] * m for m in shape["ch_mult"]),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        layers_per_block=shape["num_res_blocks"], attention_head_dim=None, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, dropout=dropout)


def torch_mlp(torch: Any, hidden: int, depth: int, embed_dim: int = 64, dim: int = 2) -> Any:
    """The layers of ``diffjax.models.mlp.MLP`` in torch (the same parameter count)."""
    nn = torch.nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            self.inp = nn.Linear(dim, hidden)
            self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(depth))
            self.lin1 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
            self.temb = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
            self.lin2 = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth))
            self.out_norm, self.out = nn.LayerNorm(hidden), nn.Linear(hidden, dim)

        def forward(self, x, t):
            half = embed_dim // 2
            freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
            args = t.float()[:, None] * freqs[None]
            emb = self.emb(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))
            h = self.inp(x)
            for norm, l1, te, l2 in zip(self.norms, self.lin1, self.temb, self.lin2):
                r = l1(nn.functional.silu(norm(h))) + te(nn.functional.silu(emb))
                h = h + l2(nn.functional.silu(r))
            return self.out(nn.functional.silu(self.out_norm(h)))

    return MLP()


# ------------------------------------------------------------------------------- diffjax sides

def _mesh_and_check(batch: int) -> Any:
    import jax

    from diffjax import parallel

    mesh = parallel.make_mesh(1)
    if batch % jax.device_count():
        raise UsageError(f"batch {batch} is not divisible by the number of devices ({jax.device_count()})")
    return mesh


def diffjax_train_step(shape: dict, batch: int, compute_dtype: str = "float32", dropout_rng: str = "threefry") -> dict:
    """The trainer's compiled step and a call that runs it on a fixed batch; compile time, FLOPs."""
    import jax
    import numpy as np

    from diffjax import parallel, train

    config = unet_config(shape, batch, compute_dtype, dropout_rng)
    mesh = _mesh_and_check(batch)
    net, schedule, loss_fn, tx = train.build(config)
    init = lambda: train.init_state(config, net, tx, jax.random.PRNGKey(0))  # noqa: E731
    shardings = parallel.state_sharding(jax.eval_shape(init), mesh)
    state = jax.jit(init, out_shardings=shardings)()
    images = np.random.default_rng(0).uniform(-1, 1, (batch, shape["image_size"], shape["image_size"], 3))
    data = parallel.global_batch({"image": images.astype(np.float32)}, mesh)
    step = parallel.jit_step(train.make_train_step(config, net, schedule, loss_fn, tx, mesh), shardings, mesh)
    cpu0, wall0 = cpu_wall()
    compiled = step.lower(state, data).compile()
    cpu1, wall1 = cpu_wall()
    holder = {"state": state}

    def run() -> None:
        holder["state"], metrics = compiled(holder["state"], data)
        metrics["loss"].block_until_ready()

    return dict(run=run, compile_wall_s=wall1 - wall0, compile_cpu_s=cpu1 - cpu0, flops=flops_of(compiled),
                params=sum(x.size for x in jax.tree.leaves(state.params)))


def flops_of(compiled: Any) -> Optional[float]:
    """FLOPs of one call from XLA's cost analysis (per device for a sharded program)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and "flops" in cost else None


def _unet_and_params(shape: dict, compute_dtype: str = "float32") -> tuple[Any, Any, Any, Any]:
    import jax
    import jax.numpy as jnp

    from diffjax import train

    config = unet_config(shape, 1, compute_dtype)
    net, schedule, _, _ = train.build(config)
    x = jnp.zeros((1, shape["image_size"], shape["image_size"], 3))
    params = jax.jit(net.init)(jax.random.PRNGKey(0), x, jnp.zeros((1,)))["params"]
    return config, net, schedule, params


def diffjax_forward(shape: dict, batch: int) -> dict:
    import jax
    import jax.numpy as jnp

    _mesh_and_check(batch)
    _, net, _, params = _unet_and_params(shape)
    x = jax.random.normal(jax.random.PRNGKey(1), (batch, shape["image_size"], shape["image_size"], 3))
    t = jnp.arange(batch, dtype=jnp.float32) * 100.0
    cpu0, wall0 = cpu_wall()
    fwd = jax.jit(lambda p, x, t: net.apply({"params": p}, x, t)).lower(params, x, t).compile()
    cpu1, wall1 = cpu_wall()
    return dict(run=lambda: fwd(params, x, t).block_until_ready(), compile_wall_s=wall1 - wall0,
                compile_cpu_s=cpu1 - cpu0, flops=flops_of(fwd))


def diffjax_sampler(config: Any, net: Any, schedule: Any, params: Any, name: str, options: dict, n: int,
                    x_shape: tuple, nfe: int) -> dict:
    """The jitted sampler of ``sampling.make_sampler``, one batch of ``n`` per call. Its FLOPs are
    the network's (one forward pass of ``n`` examples of shape ``x_shape``, from XLA's cost
    analysis) times ``nfe``: the cost analysis of the compiled sampler counts the body of its
    scanned loop once, not once per step."""
    import jax
    import jax.numpy as jnp

    from diffjax import sampling

    _mesh_and_check(n)
    draw = sampling.make_sampler(config, net, schedule, name, options)
    key = jax.random.PRNGKey(3)
    cpu0, wall0 = cpu_wall()
    fn = jax.jit(lambda p, k: draw(p, k, n)[0]).lower(params, key).compile()
    cpu1, wall1 = cpu_wall()
    x, t = jnp.zeros((n, *x_shape)), jnp.zeros((n,))
    forward = jax.jit(lambda p, x, t: net.apply({"params": p}, x, t)).lower(params, x, t).compile()
    per_forward = flops_of(forward)
    return dict(run=lambda: fn(params, key).block_until_ready(), compile_wall_s=wall1 - wall0,
                compile_cpu_s=cpu1 - cpu0, flops=per_forward * nfe if per_forward else None)


def diffjax_ddim(shape: dict, batch: int, steps: int) -> dict:
    config, net, schedule, params = _unet_and_params(shape)
    return diffjax_sampler(config, net, schedule, params, "ddim",
                           {"steps": steps, "eta": 0.0, "clip_denoised": True}, batch,
                           (shape["image_size"], shape["image_size"], 3), steps)


def mlp_config() -> Any:
    return packaged_config("toy2d")


def diffjax_ddpm_mlp(n: int, steps: int) -> dict:
    import jax
    import jax.numpy as jnp

    from diffjax import train

    config = mlp_config()
    net, schedule, _, _ = train.build(config)
    params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    side = diffjax_sampler(config, net, schedule, params, "ddpm", {"steps": steps, "variance": "beta_tilde"}, n,
                           (2,), steps)
    side["params"] = sum(x.size for x in jax.tree.leaves(params))
    return side


# ------------------------------------------------------------------------------- peer sides

def peer_train_step(shape: dict, batch: int) -> dict:
    torch, diffusers = peer_modules()
    torch.manual_seed(0)
    net = torch_unet(diffusers, shape)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    params = [p for p in net.parameters()]
    ema = [p.detach().clone() for p in params]
    size = shape["image_size"]
    images = torch.rand(batch, 3, size, size) * 2 - 1
    net.train()

    def run() -> None:
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (batch,))
        loss = torch.nn.functional.mse_loss(net(scheduler.add_noise(images, noise, t), t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, params, 1.0 - 0.9999)

    return dict(run=run, params=sum(p.numel() for p in params))


def peer_forward(shape: dict, batch: int) -> dict:
    torch, diffusers = peer_modules()
    torch.manual_seed(0)
    net = torch_unet(diffusers, shape).eval()
    x = torch.randn(batch, 3, shape["image_size"], shape["image_size"])
    t = torch.arange(batch) * 100

    def run() -> None:
        with torch.no_grad():
            net(x, t)

    return dict(run=run)


def peer_ddim(shape: dict, batch: int, steps: int) -> dict:
    torch, diffusers = peer_modules()
    torch.manual_seed(0)
    net = torch_unet(diffusers, shape).eval()
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True)
    size = shape["image_size"]

    def run() -> None:  # DDIMPipeline.__call__'s loop
        scheduler.set_timesteps(steps)
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(net(x, t).sample, t, x, eta=0.0).prev_sample

    return dict(run=run)


def peer_ddpm_mlp(n: int, steps: int) -> dict:
    torch, diffusers = peer_modules()
    torch.manual_seed(0)
    config = mlp_config()
    net = torch_mlp(torch, config.model.hidden, config.model.depth).eval()
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small",
                                        clip_sample=False)
    generator = torch.Generator().manual_seed(0)

    def run() -> None:  # DDPMPipeline.__call__'s loop
        scheduler.set_timesteps(steps)
        x = torch.randn(n, 2, generator=generator)
        with torch.no_grad():
            for t in scheduler.timesteps:
                x = scheduler.step(net(x, t.expand(n)), t, x, generator=generator).prev_sample

    return dict(run=run, params=sum(p.numel() for p in net.parameters()))


# ------------------------------------------------------------------------------- benchmarks

def measure(name: str, ours: Callable[[], dict], theirs: Callable[[], dict], repeats: int, **info: Any) -> dict:
    """Build diffjax's side (and compile it), then the peer's; run them alternately."""
    record = {"name": name, **info}
    side = ours()
    side["run"]()  # the warm-up call
    record["diffjax_setup_peak_rss_mb"] = peak_rss_mb()
    try:
        peer = theirs()
        record["peer_missing"] = None
    except ImportError as e:
        peer = None
        record["peer_missing"] = f"peer not run (torch/diffusers unavailable: {e})"
        print(f"{name}: {record['peer_missing']}; diffjax side only", file=sys.stderr)
    times = alternate(side["run"], peer and peer["run"], repeats, ours_warm=True)
    record["diffjax"] = summarise(times["diffjax"]) | {k: v for k, v in side.items() if k != "run"}
    record["peer"] = summarise(times["peer"]) | {k: v for k, v in peer.items() if k != "run"} if peer else None
    for kind in ("cpu_s", "wall_s"):
        record[f"ratio_{kind.split('_')[0]}"] = (
            record["peer"][f"{kind}_median"] / record["diffjax"][f"{kind}_median"] if peer else None)
    record["process_peak_rss_mb"] = peak_rss_mb()
    record["device_peak_mb"] = device_peak_mb()
    flops = record["diffjax"].get("flops")
    record["diffjax_gflop_per_s"] = flops / record["diffjax"]["wall_s_median"] / 1e9 if flops else None
    return record


def run_benchmark(name: str, quick: bool, repeats: int, batch: Optional[int] = None) -> list[dict]:
    shape, n = unet_shape(quick), sizes(quick, batch)
    if name == "train_step":
        return [measure(f"train_step_b{b}", lambda b=b: diffjax_train_step(shape, b),
                        lambda b=b: peer_train_step(shape, b), repeats, batch=b, shape=shape)
                for b in n["train_batches"]]
    if name == "forward":
        b = n["forward_batch"]
        return [measure("forward", lambda: diffjax_forward(shape, b), lambda: peer_forward(shape, b), repeats,
                        batch=b, shape=shape)]
    if name == "ddim50":
        b, steps = n["ddim_batch"], n["ddim_steps"]
        return [measure("ddim50", lambda: diffjax_ddim(shape, b, steps), lambda: peer_ddim(shape, b, steps),
                        repeats, batch=b, steps=steps, shape=shape)]
    if name == "ddpm1000_mlp":
        return [measure("ddpm1000_mlp", lambda: diffjax_ddpm_mlp(n["mlp_n"], n["mlp_steps"]),
                        lambda: peer_ddpm_mlp(n["mlp_n"], n["mlp_steps"]), repeats, batch=n["mlp_n"],
                        steps=n["mlp_steps"])]
    if name == "compile":
        b = n["train_batches"][0]
        side = diffjax_train_step(shape, b)
        return [{"name": "compile", "batch": b, "shape": shape, "peer_missing": "torch runs eagerly: nothing to compile",
                 "diffjax": {k: side[k] for k in ("compile_wall_s", "compile_cpu_s", "flops")}, "peer": None,
                 "ratio_cpu": None, "ratio_wall": None, "process_peak_rss_mb": peak_rss_mb(),
                 "device_peak_mb": device_peak_mb()}]
    raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(COMMANDS)}")


# ------------------------------------------------------------------------------- report

def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "diffusers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def markdown(report: dict) -> str:
    def f(v, fmt="{:.3f}"):
        return "-" if v is None else fmt.format(v)

    lines = [f"diffjax vs diffusers, backend {report['backend']} ({report['device_kind']}), "
             f"{report['threads']} thread(s), pinned to {report['pin']}, median of {report['repeats']} alternating "
             f"repeats after 1 warm-up; load {report['load_before']} before, {report['load_after']} after",
             "", "| benchmark | diffjax CPU s | peer CPU s | peer/diffjax (CPU) | diffjax wall s | peer wall s "
             "| peer/diffjax (wall) | compile s (wall) | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ours, theirs = r["diffjax"], r["peer"] or {}
        lines.append(f"| {r['name']} | {f(ours.get('cpu_s_median'))} | {f(theirs.get('cpu_s_median'))} | "
                     f"{f(r['ratio_cpu'], '{:.2f}')} | {f(ours.get('wall_s_median'))} | {f(theirs.get('wall_s_median'))} | "
                     f"{f(r['ratio_wall'], '{:.2f}')} | {f(ours.get('compile_wall_s'), '{:.1f}')} | "
                     f"{f(r['process_peak_rss_mb'], '{:.0f}')} |")
    missing = {r["peer_missing"] for r in report["results"] if r.get("peer_missing")}
    lines += [f"note: {m}" for m in sorted(missing)]
    return "\n".join(lines)


def configure(threads: int, pin: Optional[int]) -> None:
    """Thread count and CPU pinning; must run before JAX is imported."""
    if "jax" in sys.modules:
        raise RuntimeError("bench.run.configure must run before jax is imported")
    if threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    if threads == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
    if pin is not None:
        if pin not in os.sched_getaffinity(0):
            raise UsageError(f"--pin {pin}: not one of this process's CPUs {sorted(os.sched_getaffinity(0))}")
        os.sched_setaffinity(0, {pin})
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("name", help=f"one of {', '.join(COMMANDS)}, or several benchmarks joined by commas")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one repeat (tests)")
    parser.add_argument("--repeats", type=int, default=None, help="alternating repeats (default 3; --quick 1)")
    parser.add_argument("--batch", type=int, default=None, help="the UNet benchmarks' batch (default 8 and 32)")
    parser.add_argument("--threads", type=int, default=1, help="threads of XLA and torch (default 1)")
    parser.add_argument("--pin", type=int, default=None, help="pin the process to this CPU")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    names = args.name.split(",")
    for name in names:
        if name not in COMMANDS or (len(names) > 1 and name not in BENCHMARKS):
            raise UsageError(f"unknown benchmark {name!r}; known: {', '.join(COMMANDS)} "
                             f"(several of {', '.join(BENCHMARKS)} may be joined by commas)")
    args.names = BENCHMARKS if args.name == "all" else tuple(names)
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    if args.repeats is not None and args.repeats < 1:
        raise UsageError(f"--repeats must be >= 1, got {args.repeats}")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        configure(args.threads, args.pin)
        if args.name == "accelerator":
            from bench import accelerator

            return accelerator.main(args)
        return run_all(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run_all(args: argparse.Namespace) -> int:
    import jax

    repeats = args.repeats or (1 if args.quick else 3)
    names = args.names
    load_before = os.getloadavg()
    results = []
    for name in names:
        print(f"{name}: running (CPU time so far {time.process_time():.1f} s)", file=sys.stderr)
        if name == "compile" and "train_step" in names:  # the train step at the first batch compiled it already
            first = results[0]
            results.append({"name": "compile", "batch": first["batch"], "shape": first["shape"],
                            "peer_missing": "torch runs eagerly: nothing to compile",
                            "diffjax": {k: first["diffjax"][k] for k in ("compile_wall_s", "compile_cpu_s", "flops")},
                            "peer": None, "ratio_cpu": None, "ratio_wall": None,
                            "process_peak_rss_mb": first["diffjax_setup_peak_rss_mb"], "device_peak_mb": None})
            continue
        results.extend(run_benchmark(name, args.quick, repeats, args.batch))
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m bench " + " ".join(sys.argv[1:]), "versions": versions(),
              "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
              "device_count": jax.device_count(), "cpu_count": os.cpu_count(),
              "affinity": sorted(os.sched_getaffinity(0)), "threads": args.threads, "pin": args.pin,
              "quick": args.quick, "repeats": repeats, "load_before": [round(v, 2) for v in load_before],
              "load_after": [round(v, 2) for v in os.getloadavg()],
              "method": "alternating A/B calls in one process after one warm-up each; medians of wall time "
                        "(perf_counter) and CPU time (process_time: user+sys of the process); ratio = peer / diffjax",
              "results": results}
    print(markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
