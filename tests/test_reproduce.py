"""`python -m diffjax.reproduce`: the registry of paper numbers and the command that measures them,
end to end on a tiny MNIST run with a stand-in feature network."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import configs, convert, evaluate, papers, reproduce, samplers, sampling, schedules
from diffjax.metrics import fid, inception, reference

pytestmark = pytest.mark.filterwarnings("ignore:FID from 24 samples is unstable")

TOY_MODEL = {"model.ch": 8, "model.ch_mult": (1,), "model.num_groups": 4, "schedule.T": 20}


def _toy_config():
    config = TOY.get_config()
    config.sampler.steps = 5
    config.sampler.clip_denoised = False
    config.eval.batch_size = 8
    return config


TOY = papers.Entry(
    key="toy_mnist", paper="Toy et al. 2026, A Test Paper (nowhere)", table="Table 9",
    reported=(papers.Reported("fid", 12.5, "Toy 2026, Table 9"), papers.Reported("bpd", 8.25, "Toy 2026, Table 9")),
    config="quickstart", overrides=TOY_MODEL, checkpoint_format="diffusers", checkpoint_url="nowhere",
    sampler="ddpm", sampler_options={"steps": 4}, nfe=4, reference="the 5,000 bundled digits", num_samples=24,
    nfe_sweep=(papers.SweepPoint(3, "ddim", {"steps": 3}, 40.0, "Toy 2026, Table 10"),))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A checkpoint of the toy entry's network (random weights, perturbed so that the network's
    output is not ~0), written through the trainer's checkpoint API. Its config samples with 5
    steps, the toy paper with 4."""
    from diffjax import checkpoint, train

    config = _toy_config()
    net, _, _, tx = train.build(config)
    state = train.init_state(config, net, tx, jax.random.PRNGKey(0))
    leaves, treedef = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = treedef.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
    state = state.replace(params=params, ema_params=params)
    workdir = str(tmp_path_factory.mktemp("run"))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), asynchronous=False)
    ckpt.save(1, state, {"position": 0}, json.loads(json.dumps(config.to_dict())))
    ckpt.close()
    return workdir


def _pooled(images):
    """A cheap stand-in for the Inception: 4x4-pooled pixels as 'pool3'."""
    x = np.asarray(images, np.float64).reshape(len(images), 7, 4, 7, 4, -1).mean((2, 4)).reshape(len(images), -1)
    return {"pool": x, "logits_unbiased": x[:, :10] / 50.0}


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setitem(papers.ENTRIES, TOY.key, TOY)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(inception, "load_variables", lambda path=None: None)
    monkeypatch.setattr(inception, "make_apply_fn", lambda variables: _pooled)
    return TOY


def test_reproduce_writes_the_table_with_every_field(run_dir, toy, capsys):
    reproduce.main(["toy_mnist", f"--workdir={run_dir}", "--nfe_sweep", "--bpd_num_examples=8"])
    printed = capsys.readouterr().out
    with open(os.path.join(run_dir, "reproduce", "toy_mnist.json")) as f:
        record = json.load(f)
    rows = {row["label"]: row for row in record["rows"]}
    assert list(rows) == ["fid", "bpd", "fid (NFE 3, ddim)"]
    assert [rows[k]["paper"] for k in rows] == [12.5, 8.25, 40.0]
    for row in rows.values():
        for field in ("diffjax", "num_samples", "wall_time_s", "num_devices", "num_processes", "source"):
            assert row[field] is not None, (row["label"], field)
        assert row["num_devices"] == jax.device_count() and row["num_processes"] == 1 and row["wall_time_s"] > 0
    # FID rows: the paper's sampler and number of samples, the NFE the sampler reports.
    assert (rows["fid"]["sampler"], rows["fid"]["num_samples"], rows["fid"]["nfe"]) == ("ddpm", 24, 4)
    assert (rows["fid (NFE 3, ddim)"]["sampler"], rows["fid (NFE 3, ddim)"]["nfe"]) == ("ddim", 3)
    assert rows["bpd"]["num_samples"] == 8 and rows["bpd"]["sampler"] is None
    # The values are diffjax.evaluate's for the same settings (fixed seeds: the same samples).
    common = {"num_samples": 24, "metrics": ("fid",)}
    ddpm = evaluate.evaluate(run_dir, {**common, "sampler": "ddpm", "sampler_options": {"steps": 4}})["fid"]
    ddim = evaluate.evaluate(run_dir, {**common, "sampler": "ddim", "sampler_options": {"steps": 3}})["fid"]
    assert rows["fid"]["diffjax"] == ddpm and rows["fid (NFE 3, ddim)"]["diffjax"] == ddim and ddpm != ddim
    bpd = evaluate.evaluate(run_dir, {"metrics": ("bpd",), "bpd_num_examples": 8})["bpd"]
    assert rows["bpd"]["diffjax"] == bpd
    with open(os.path.join(run_dir, "reproduce", "toy_mnist.md")) as f:
        table = f.read()
    assert table in printed
    assert f"| fid | 12.50 | {ddpm:.3f} | 24 | 4 |" in table
    assert f"| fid (NFE 3, ddim) | 40.00 | {ddim:.3f} | 24 | 3 |" in table
    assert "| bpd | 8.25 |" in table and "Toy 2026, Table 10" in table


def test_published_reference_statistics_give_the_same_fid(run_dir, toy, tmp_path):
    """FID against the training statistics written in EDM's and score_sde's layouts equals FID
    against diffjax's own (computed from the same features) to 1e-6."""
    config = _toy_config()
    ours = reference.training_statistics(config, _pooled, tmp_path / "ours.npz", keep_features=True)
    reference.save(tmp_path / "edm.npz", ours, "edm")
    reference.save(tmp_path / "pool3.npz", ours, "score_sde")
    values = {}
    for name in ("ours", "edm", "pool3"):
        workdir_rows = reproduce.reproduce(toy, run_dir, metrics=["fid"], reference_stats=str(tmp_path / f"{name}.npz"))
        values[name] = workdir_rows[0]["diffjax"]
    assert values["edm"] == pytest.approx(values["ours"], abs=1e-6)
    assert values["pool3"] == pytest.approx(values["ours"], abs=1e-6)
    assert fid.load_statistics(os.path.join(run_dir, "reproduce", "reference_edm.npz"))["n"] == 0


def test_missing_inception_weights_is_one_line_saying_where_to_get_them(run_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(papers.ENTRIES, TOY.key, TOY)
    monkeypatch.delenv(inception.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        reproduce.main(["toy_mnist", f"--workdir={run_dir}", "--metrics=fid"])
    message = str(e.value)
    assert "\n" not in message and inception.FID_WEIGHTS_URL in message
    assert str(tmp_path / "diffjax" / inception.PTH_NAME) in message


def test_list_prints_every_entry_with_its_numbers_sampler_and_checkpoint(capsys):
    reproduce.main(["--list"])
    printed = capsys.readouterr().out
    lines = {line.split(" | ")[0].strip("| "): line for line in printed.splitlines()[2:]}
    assert sorted(lines) == sorted(papers.names())
    for key, line in lines.items():
        entry = papers.get(key)
        assert entry.checkpoint_url in line and entry.sampler in line and entry.table in line
        for r in entry.reported:
            assert f"{r.metric} {r.value:g}" in line
    assert "fid 3.17, inception_score 9.46, bpd 3.75" in lines["ddpm_cifar10"]
    assert "fid 4.7 at NFE 10, fid 2.87 at NFE 20" in lines["ddpmpp_vp_cifar10_deep"]


def test_unknown_entry_is_one_line_listing_the_entries():
    with pytest.raises(SystemExit) as e:
        reproduce.main(["ddpm_cifar100", "--workdir=nowhere"])
    message = str(e.value)
    assert "\n" not in message and "unknown entry 'ddpm_cifar100'" in message
    assert all(key in message for key in papers.names())


def test_checkpoint_of_another_model_is_one_line_naming_the_difference(run_dir):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["ddpm_cifar10", f"--workdir={run_dir}"])
    message = str(e.value)
    assert "\n" not in message and "not the model of ddpm_cifar10" in message
    assert "model.attn_resolutions is () there, (16,) in the paper's model (and 7 more)" in message
    found = reproduce.differences(papers.get("ddpm_cifar10").get_config(), reproduce.run_config(run_dir)[0])
    assert "model.ch is 8 there, 128 in the paper's model" in found and len(found) == 8


def test_missing_checkpoint_and_unimportable_checkpoint_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no checkpoint in .* --checkpoint=PATH") as e:
        reproduce.main(["ddpm_cifar10", f"--workdir={tmp_path}"])
    assert "\n" not in str(e.value)
    with pytest.raises(SystemExit, match="^error: no ADM preset 'mystery'") as e:
        reproduce.main(["adm_imagenet64", f"--workdir={tmp_path / 'w'}", f"--checkpoint={tmp_path / 'mystery.pt'}"])
    assert "\n" not in str(e.value)


def test_adm_entry_is_the_model_the_adm_importer_writes():
    from diffjax.convert import adm

    written = adm.config_for("64x64_diffusion")
    assert reproduce.differences(papers.get("adm_imagenet64").get_config(), written) == []
    assert reproduce.differences(papers.get("iddpm_cifar10").get_config(), written)  # another model


@pytest.mark.parametrize("key", papers.names())
def test_registry_entry_is_runnable_as_published(key):
    """Config, sampler and options of each entry exist and fit, and its NFE is what the sampler
    does with those options (run on an exact Gaussian denoiser of the entry's schedule)."""
    entry = papers.get(key)
    assert entry.config in configs.names() and entry.checkpoint_format in convert.MODULES
    config = entry.get_config()
    metrics = set(evaluate.SAMPLE_METRICS) | set(evaluate.DATA_METRICS)
    assert {r.metric for r in entry.reported} <= metrics
    assert entry.num_samples == 50_000
    schedule = schedules.get(config.schedule)
    for sampler, options, nfe in [(entry.sampler, entry.sampler_options, entry.nfe)] + [
            (p.sampler, p.options, p.nfe) for p in entry.nfe_sweep]:
        assert sampler in samplers.names()
        sampling.check_sampler(config, sampler, options)
        _, opts = sampling.sampler_options(config, sampler, options)
        for name in sampling.MODEL_OPTIONS:
            opts.pop(name, None)
        denoise = samplers.GaussianMixture.gaussian(jnp.zeros(2), 0.5).denoiser(schedule)
        if opts.get("variance") == "learned":  # the learned-variance DDPM also takes v, here 1: beta_t
            plain = denoise
            denoise = lambda x, t: (plain(x, t), jnp.ones_like(x))  # noqa: E731
        _, info = samplers.sample(sampler, denoise, schedule, jax.random.PRNGKey(0), shape=(1, 2), **opts)
        assert int(info["nfe"]) == nfe, (sampler, options)
