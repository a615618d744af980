"""A run folder in a Google Cloud Storage bucket (``--workdir=gs://bucket/run``): train, resume and
sample through the real command lines against a local GCS emulator (``gcp-storage-emulator``).

Every byte goes over the GCS JSON API: checkpoints through Orbax and TensorStore's ``gcs`` driver
(``TENSORSTORE_GCS_HTTP_URL``), the other files through ``etils.epath`` and ``gcsfs``
(``STORAGE_EMULATOR_HOST``; ``EPATH_USE_TF=false`` picks gcsfs over TensorFlow's gfile, which has
no emulator switch), TensorBoard events through ``google-cloud-storage``. Nothing may land on the
local disk: the subprocesses run in an empty folder that is checked afterwards.
"""
import json
import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("gcp_storage_emulator")
pytest.importorskip("gcsfs")

BUCKET = "diffjax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report_generations() -> None:
    """The emulator's media reads (``alt=media``) omit the ``x-goog-generation`` header real GCS
    sends, which TensorStore's conditional writes (OCDBT manifests) need: add it to every read."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    def with_generation(handler):
        def read(request, response, storage, *args, **kwargs):
            handler(request, response, storage, *args, **kwargs)
            add_generation(request, response, storage)
        return read

    def add_generation(request, response, storage):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # not found: the handler already answered 404
            return
        response["x-goog-generation"] = obj["generation"]
        response["x-goog-metageneration"] = obj["metageneration"]

    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in (objects.download, objects.get):
                handlers[method] = with_generation(handler)


@pytest.fixture(scope="module")
def gcs_env():
    from gcp_storage_emulator.server import create_server

    _report_generations()
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
           "GOOGLE_CLOUD_PROJECT": "test", "EPATH_USE_TF": "false"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _forget_backend_choice()  # another test in this process may have made epath choose TensorFlow
    try:
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _forget_backend_choice()
        server.stop()


def _forget_backend_choice() -> None:
    """epath decides once per process whether TensorFlow's gfile serves gs:// paths (reading
    EPATH_USE_TF the first time any path is used, local ones included): make it decide again."""
    from etils.epath import gpath

    gpath._is_tf_installed.cache_clear()


def _run(args, cwd, env):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=dict(os.environ, JAX_PLATFORMS="cpu", **env),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_resume_and_sample_in_a_gcs_bucket(gcs_env, tmp_path):
    from diffjax import fileio

    workdir = f"gs://{BUCKET}/runs/toy"
    common = ["-m", "diffjax.train", "--config=toy2d", f"--workdir={workdir}", "--config.training.batch_size=16",
              "--config.training.log_every=2", "--config.training.checkpoint_every=2", "--config.training.sample_every=2"]
    _run([*common, "--config.training.num_steps=2"], tmp_path, gcs_env)
    assert fileio.listdir(workdir + "/checkpoints") == ["2"]
    assert "step_0000002.png" in fileio.listdir(workdir + "/samples")
    assert fileio.read_json(workdir + "/config.json")["training"]["batch_size"] == 16
    first = [json.loads(line)["step"] for line in fileio.read_text(workdir + "/metrics.jsonl").splitlines()]
    assert first[-1] == 2
    assert any(name.startswith("events.out.tfevents") for name in fileio.listdir(workdir + "/tb"))

    # Resume from the bucket: the run continues at step 2 (the log says so), appends to the log.
    resumed = _run([*common, "--config.training.num_steps=4"], tmp_path, gcs_env)
    assert f"resumed from {workdir}/checkpoints at step 2" in resumed.stderr
    assert fileio.listdir(workdir + "/checkpoints") == ["2", "4"]
    logged = [json.loads(line)["step"] for line in fileio.read_text(workdir + "/metrics.jsonl").splitlines()]
    assert logged[:len(first)] == first and logged[-1] == 4 and logged == sorted(set(logged))

    _run(["-m", "diffjax.sample", f"--workdir={workdir}", "--num_samples=8", "--batch_size=8"], tmp_path, gcs_env)
    names = fileio.listdir(workdir + "/samples")
    (npz,) = [n for n in names if n.endswith(".npz")]
    assert fileio.load_npz(f"{workdir}/samples/{npz}")["samples"].shape == (8, 2)
    assert os.listdir(tmp_path) == []  # nothing was written to the local folder


def test_fileio_round_trips_in_a_bucket(gcs_env):
    import numpy as np

    from diffjax import fileio

    d = f"gs://{BUCKET}/io"
    assert fileio.is_remote(d) and fileio.normalize(d) == d and fileio.listdir(d) == []
    fileio.append_lines(d + "/log.jsonl", ["1\n"])
    fileio.append_lines(d + "/log.jsonl", ["2\n"])
    assert fileio.read_text(d + "/log.jsonl") == "1\n2\n"
    fileio.save_npz(d + "/a/x.npz", x=np.arange(5))
    np.testing.assert_array_equal(fileio.load_npz(d + "/a/x.npz")["x"], np.arange(5))
    fileio.rename(d + "/a", d + "/b")
    assert fileio.listdir(d) == ["b", "log.jsonl"] and fileio.listdir(d + "/b") == ["x.npz"]
