"""``python -m bench``: the quick run writes every field, bad input gets a clear message, and a
missing peer leaves the diffjax side running. Timings are not asserted (benchmarks are not tests);
what is checked is deterministic: the fields, that both sides built the same network (parameter
counts of diffjax and of the independently built torch model agree) and the ratios' definition."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_FIELDS = {"name", "diffjax", "peer", "peer_missing", "ratio_cpu", "ratio_wall", "process_peak_rss_mb",
                 "device_peak_mb"}
TIMED_FIELDS = {"wall_s", "cpu_s", "wall_s_median", "cpu_s_median"}
# torch and diffusers not installed, as far as `import` can tell
BLOCK_PEER = """
import importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "diffusers"):
            raise ImportError(f"No module named {name!r}")
sys.meta_path.insert(0, Block())
"""


def bench(*args, env=None, prelude=""):
    code = f"import sys\n{prelude}\nfrom bench.run import main\nsys.exit(main({list(args)!r}))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, **(env or {})),
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_all(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "all.json"
    proc = bench("all", "--quick", "--json", str(path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(path.read_text()), proc.stdout


@pytest.mark.slow
def test_quick_all_writes_every_field_and_the_table(quick_all):
    report, stdout = quick_all
    for key in ("date", "command", "versions", "backend", "device_kind", "threads", "repeats", "load_before",
                "load_after", "method", "results"):
        assert key in report, key
    assert report["versions"]["jax"] and report["versions"]["torch"] and report["versions"]["diffusers"]
    names = [r["name"] for r in report["results"]]
    assert names == ["train_step_b2", "forward", "ddim50", "ddpm1000_mlp", "compile"], names
    for r in report["results"]:
        assert RESULT_FIELDS <= set(r), (r["name"], set(r))
        assert f"| {r['name']} |" in stdout
        if r["name"] == "compile":
            assert r["diffjax"]["compile_cpu_s"] > 0 and r["diffjax"]["flops"] > 0
            continue
        assert r["peer_missing"] is None
        for side in ("diffjax", "peer"):
            assert TIMED_FIELDS <= set(r[side]) and r[side]["cpu_s_median"] > 0, (r["name"], side)
        assert r["ratio_cpu"] == pytest.approx(r["peer"]["cpu_s_median"] / r["diffjax"]["cpu_s_median"])
        assert r["ratio_wall"] == pytest.approx(r["peer"]["wall_s_median"] / r["diffjax"]["wall_s_median"])
        assert r["process_peak_rss_mb"] >= r["diffjax_setup_peak_rss_mb"] > 0


@pytest.mark.slow
def test_quick_peers_build_the_same_networks(quick_all):
    report, _ = quick_all
    by_name = {r["name"]: r for r in report["results"]}
    # diffjax's DDPMUNet against diffusers' UNet2DModel, and the MLP against its torch mirror
    for name in ("train_step_b2", "ddpm1000_mlp"):
        assert by_name[name]["diffjax"]["params"] == by_name[name]["peer"]["params"], name


@pytest.mark.slow
def test_quick_sampler_flops_count_every_step(quick_all):
    # XLA's cost analysis of a compiled scan counts its body once; the sampler's FLOPs (and so
    # its GFLOP/s and, on an accelerator, its MFU) are the network's forward pass times the steps.
    report, _ = quick_all
    by_name = {r["name"]: r for r in report["results"]}
    forward, ddim = by_name["forward"], by_name["ddim50"]
    assert forward["batch"] == ddim["batch"] and ddim["steps"] == 3
    assert ddim["diffjax"]["flops"] == pytest.approx(forward["diffjax"]["flops"] * ddim["steps"])
    assert ddim["diffjax_gflop_per_s"] == pytest.approx(ddim["diffjax"]["flops"] / ddim["diffjax"]["wall_s_median"] / 1e9)


def test_unknown_benchmark_is_exit_code_2_with_the_known_names():
    proc = bench("trian_step", "--quick")
    assert proc.returncode == 2
    assert "unknown benchmark 'trian_step'" in proc.stderr and "train_step" in proc.stderr


def test_batch_not_divisible_by_device_count_is_exit_code_2():
    proc = bench("forward", "--quick", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=3",
                                           "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "batch 2 is not divisible by the number of devices (3)" in proc.stderr


def test_missing_peer_still_reports_the_diffjax_side(tmp_path):
    path = tmp_path / "mlp.json"
    proc = bench("ddpm1000_mlp", "--quick", "--json", str(path), prelude=BLOCK_PEER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = json.loads(path.read_text())["results"]
    assert r["peer"] is None and r["ratio_cpu"] is None
    assert "torch/diffusers unavailable" in r["peer_missing"]
    assert r["diffjax"]["cpu_s_median"] > 0
    assert "diffjax side only" in proc.stderr
