"""``python -m bench accelerator [--quick] [--json FILE]``: the DDPM CIFAR-10 UNet on a GPU or TPU.

For the train step at batch 128 (``train.make_train_step`` under ``parallel.jit_step``, the batch
split over every local device) in bfloat16 compute (float32 parameters, optimiser and loss:
``training.compute_dtype``) and in float32 (the bfloat16 step once more with
``training.dropout_rng = "rbg"``), and for DDIM-50 sampling of 128 images: step time, images/s,
the FLOPs XLA's cost analysis counts for the compiled program, achieved TFLOP/s per chip, MFU
against the chip's peak (table below) and the device memory peak (``memory_stats()``).

FLOPs are XLA's count for one device's program (the SPMD-partitioned module), so TFLOP/s and MFU
are per chip. The float32 peaks are the TF32 tensor-core peaks on NVIDIA GPUs (XLA's default
precision for float32 matmuls there); TPUs run float32 matmuls as several bfloat16 passes and
have no published float32 peak. On a CPU the script runs (``--quick``: a tiny UNet and batch) and
says that MFU is not meaningful.
"""
from __future__ import annotations

import datetime
import json
import statistics
import sys
import time
from typing import Any, Optional

from bench import run as bench_run

# Dense peak TFLOP/s per chip: (bfloat16, float32). Vendor data sheets; NVIDIA figures are the
# SXM parts without sparsity. Matched against jax's ``device_kind`` in this order.
PEAK_TFLOPS = (
    ("H200", (989.0, 494.5)),
    ("H100", (989.0, 494.5)),
    ("A100", (312.0, 156.0)),
    ("TPU v5 lite", (197.0, None)),
    ("TPU v5e", (197.0, None)),
    ("TPU v5p", (459.0, None)),
    ("TPU v5", (459.0, None)),
    ("TPU v4", (275.0, None)),
)
NO_ACCELERATOR = "no accelerator: CPU figures only, MFU not meaningful"


def peak_tflops(device_kind: str, dtype: str) -> Optional[float]:
    for name, (bf16, fp32) in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return bf16 if dtype == "bfloat16" else fp32
    return None


def _timed(run, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _row(kind: str, dtype: str, batch: int, seconds: float, flops: Optional[float], device_kind: str,
         accelerator: bool) -> dict:
    import jax

    tflops = flops / seconds / 1e12 if flops else None
    peak = peak_tflops(device_kind, dtype) if accelerator else None
    return {"benchmark": kind, "dtype": dtype, "batch": batch, "step_s": seconds, "images_per_s": batch / seconds,
            "flops_per_device": flops, "tflops_per_chip": tflops, "peak_tflops": peak,
            "mfu": tflops / peak if tflops and peak else None, "device_count": jax.device_count(),
            "device_peak_mb": bench_run.device_peak_mb(), "process_peak_rss_mb": bench_run.peak_rss_mb()}


def measure(quick: bool, repeats: int) -> dict:
    import jax

    accelerator = jax.default_backend() != "cpu"
    device_kind = jax.devices()[0].device_kind
    shape = bench_run.unet_shape(quick)
    batch = 4 * jax.device_count() if quick else 128
    rows = []
    for dtype in ("bfloat16", "float32"):
        side = bench_run.diffjax_train_step(shape, batch, dtype)
        side["run"]()
        rows.append(_row("train_step", dtype, batch, _timed(side["run"], repeats), side["flops"], device_kind,
                         accelerator) | {"compile_s": side["compile_wall_s"]})
        config, net, schedule, params = bench_run._unet_and_params(shape, dtype)
        steps = 3 if quick else 50
        side = bench_run.diffjax_sampler(config, net, schedule, params, "ddim",
                                         {"steps": steps, "eta": 0.0, "clip_denoised": True}, batch,
                                         (shape["image_size"], shape["image_size"], 3), steps)
        side["run"]()
        rows.append(_row("ddim50", dtype, batch, _timed(side["run"], repeats), side["flops"], device_kind,
                         accelerator) | {"compile_s": side["compile_wall_s"]})
    # dropout masks from XLA's RngBitGenerator instead of threefry (training.dropout_rng)
    side = bench_run.diffjax_train_step(shape, batch, "bfloat16", "rbg")
    side["run"]()
    rows.append(_row("train_step, rbg dropout", "bfloat16", batch, _timed(side["run"], repeats), side["flops"],
                     device_kind, accelerator) | {"compile_s": side["compile_wall_s"]})
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": bench_run.versions(), "backend": jax.default_backend(), "device_kind": device_kind,
            "accelerator": accelerator, "note": None if accelerator else NO_ACCELERATOR, "quick": quick,
            "repeats": repeats, "rows": rows}


def markdown(report: dict) -> str:
    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    lines = [f"DDPM CIFAR-10 UNet on {report['device_kind']} ({report['backend']}), median of {report['repeats']}"]
    if report["note"]:
        lines.append(report["note"])
    lines += ["", "| benchmark | dtype | batch | step s | images/s | TFLOP/s per chip | peak | MFU | device peak MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['benchmark']} | {r['dtype']} | {r['batch']} | {r['step_s']:.4f} | {r['images_per_s']:.1f} | "
                     f"{f(r['tflops_per_chip'], '{:.2f}')} | {f(r['peak_tflops'], '{:.0f}')} | "
                     f"{f(r['mfu'], '{:.1%}')} | {f(r['device_peak_mb'], '{:.0f}')} |")
    return "\n".join(lines)


def main(args: Any) -> int:
    report = measure(args.quick, args.repeats or (2 if args.quick else 20))
    print(markdown(report))
    if report["note"]:
        print(report["note"], file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0
