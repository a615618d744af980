"""The Colab notebooks run top to bottom in SMALL mode (DIFFJAX_NOTEBOOK_SMALL=1) on 8 simulated
CPU devices, as a TPU v2-8 / v3-8 runtime would shard them.

Each notebook checks its own figures with asserts (01: samplers on the exact score reach the data's
mean log-density; 03: the loss falls and a second run of the training cell resumes at the step the
first one stopped; 04: the imported checkpoint equals the PyTorch model to 1e-4 and FID on the
8-device mesh equals FID on one device; 05: unguided exact-score samples have the class accuracy of
exact data samples and guidance at w = 4 raises it, inpainting keeps the known half exactly,
colourisation keeps the grey level and RePaint lands on the palette), so a notebook that runs but
draws the wrong picture fails here too.
"""
import json
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
EXPECTED = ["01_ink_drop_two_pixels", "02_mnist_quickstart", "03_train_on_tpu", "04_reproduce_a_paper",
            "05_guidance"]
DEVICES = 8


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_there_are_the_notebooks():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_installs_from_one_url_and_reports_its_devices(path):
    """A fresh Colab runtime installs diffjax from REPO_URL (set once), unless it is importable;
    a cell reports the backend and device count."""
    code = _code(nbformat.read(path, as_version=4))
    install = [c for c in code if "pip" in c and "install" in c]
    assert len(install) == 1, install
    assert 'importlib.util.find_spec("diffjax") is None' in install[0]
    assert "git+{REPO_URL}" in install[0]
    assert sum(c.count("REPO_URL = ") for c in code) == 1
    assert any("jax.device_count()" in c and "jax.default_backend()" in c for c in code)
    assert not any("<your diffjax clone URL>" in c for c in code)


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem >= "03"], ids=lambda p: p.name)
def test_committed_notebook_carries_its_small_mode_outputs(path):
    """The committed notebooks were executed (SMALL mode, 8 simulated devices) and say so first."""
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "SMALL mode" in nb.cells[0].source
    assert f"{DEVICES} device(s)" in _stdout(nb)
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFJAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel is a fresh process: these flags are in place before it imports jax.
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    monkeypatch.setenv("XLA_FLAGS", " ".join(flags + [f"--xla_force_host_platform_device_count={DEVICES}"]))
    # The notebooks use only the installed package (configs included) and write under the cwd.
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, json.dumps(errors)[:2000]
    assert f"backend cpu: {DEVICES} device(s)" in _stdout(nb)
