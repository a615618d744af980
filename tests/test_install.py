"""diffjax installs anywhere: a wheel built from this repository, installed outside it, trains and
samples from a folder that is not the repository (the configs travel inside the package)."""
import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installed_elsewhere_trains_and_samples_from_another_folder(tmp_path):
    source, wheels, site, work = (tmp_path / d for d in ("source", "wheels", "site", "elsewhere"))
    work.mkdir()
    # Build from a copy: setuptools' build/ folder in the repository may hold stale modules.
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "*.egg-info", "__pycache__", "tests", "colab", "bench"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("diffjax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "diffjax/configs/ddpm/cifar10.py" in names and "diffjax/configs/quickstart.py" in names
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    # The installed copy comes first on the path; the repository is nowhere on it.
    env = dict(os.environ, PYTHONPATH=str(site), JAX_PLATFORMS="cpu")

    def run(*args):
        proc = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    where = run("-c", "import diffjax, diffjax.train as t; print(diffjax.__file__); print(t.DEFAULT_CONFIG)")
    module_file, default_config = where.stdout.split()
    assert module_file.startswith(str(site)) and default_config.startswith(str(site))
    run("-m", "diffjax.train", "--config=toy2d", "--workdir=run", "--config.training.num_steps=4",
        "--config.training.batch_size=16", "--config.training.sample_every=0",
        "--config.training.log_every=2")
    assert (work / "run" / "checkpoints").is_dir()
    run("-m", "diffjax.sample", "--workdir=run", "--num_samples=8")
    assert list((work / "run" / "samples").glob("*.npz"))
