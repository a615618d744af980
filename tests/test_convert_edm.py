"""Importing EDM's networks (EDMPrecond around SongUNet / DhariwalUNet) into diffjax.

References: tests/data/edm_*.npz, written by tools/refgen/edm.py from NVlabs/edm
008a4e5316c8e3bfe61a62f874bddba254295afb (random weights with peaked attention, EDM's D(x; sigma));
tests/data/edm_published_shapes.json: the state-dict shapes of the published networks.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.convert import common, edm
from diffjax.models import get_model

DATA = os.path.join(os.path.dirname(__file__), "data")


def _reference(variant):
    ref = np.load(os.path.join(DATA, f"edm_{variant}.npz"))
    state = {k[len("state_dict/"):]: ref[k].astype(np.float32) for k in ref.files if k.startswith("state_dict/")}
    init_kwargs = json.loads(str(ref["init_kwargs"]))
    fields, image_size = edm.architecture(init_kwargs)
    return ref, {"init_kwargs": init_kwargs, "state_dict": state}, {**fields, **json.loads(str(ref["overrides"]))}


def _denoise(fields, params, ref, y=None):
    model = get_model(fields)
    apply = jax.jit(lambda p, x, s, y: model.apply({"params": p}, x, s, y=y))  # compiles faster than eager runs
    out = apply(params, jnp.asarray(ref["x"].transpose(0, 2, 3, 1)), jnp.asarray(ref["sigma"]), y)
    return np.asarray(out).transpose(0, 3, 1, 2)


def test_imported_ddpmpp_equals_edm_songunet_with_its_preconditioning():
    ref, source, fields = _reference("ddpmpp")
    assert fields["backbone"] == "ddpmpp" and "model.map_augment.weight" in source["state_dict"]
    params = common.to_jax(edm.map_state_dict(source["state_dict"], fields, 16))
    # Compare the network's part: D - c_skip x = c_out F, c_skip is ~1 at sigma = 0.02.
    np.testing.assert_allclose(_denoise(fields, params, ref), ref["out"], atol=1e-4, rtol=0)
    c_skip = 0.25 / (ref["sigma"] ** 2 + 0.25)
    network_part = ref["out"] - c_skip[:, None, None, None] * ref["x"]
    assert np.abs(network_part).max() > 0.5


def test_imported_adm_equals_edm_dhariwalunet_labelled_and_unlabelled():
    ref, source, fields = _reference("adm")
    params = common.to_jax(edm.map_state_dict(source["state_dict"], fields, 16))
    np.testing.assert_allclose(_denoise(fields, params, ref, jnp.asarray(ref["y"])), ref["out"], atol=1e-4, rtol=0)
    # diffjax's null label (y=None) is EDM's call without labels (a zero one-hot vector).
    np.testing.assert_allclose(_denoise(fields, params, ref), ref["out_unlabelled"], atol=1e-4, rtol=0)
    assert np.abs(ref["out"] - ref["out_unlabelled"]).max() > 1e-2


with open(os.path.join(DATA, "edm_published_shapes.json")) as f:
    PUBLISHED = json.load(f)["networks"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_network_layouts_map_exactly_onto_the_paper_size_networks(name):
    fields, image_size = edm.architecture(PUBLISHED[name]["init_kwargs"])
    shapes = PUBLISHED[name]["shapes"]
    params = edm.map_state_dict(common.shape_only(shapes), fields, image_size)
    dropped = sum(int(np.prod(s)) for k, s in shapes.items() if k.endswith(("map_augment.weight", "resample_filter")))
    null_row = 4 * fields["ch"] if fields.get("num_classes") else 0
    assert sum(v.size for v in jax.tree.leaves(params)) == sum(int(np.prod(s)) for s in shapes.values()) - dropped + null_row


@pytest.mark.parametrize("change, message", [
    (dict(embedding_type="fourier", channel_mult_noise=2), "embedding_type='fourier' cannot be imported: EDM's NCSN"),
    (dict(label_dim=10), "label_dim=10 cannot be imported: .*before the embedding MLP"),
    (dict(model_type="Other"), "model_type 'Other' is not importable"),
])
def test_networks_diffjax_cannot_express_are_refused_saying_why(change, message):
    _, source, _ = _reference("ddpmpp")
    with pytest.raises(ValueError, match=message):
        edm.architecture({**source["init_kwargs"], **change})


def test_unknown_missing_and_misshapen_keys_are_named(tmp_path):
    _, source, fields = _reference("ddpmpp")
    state = source["state_dict"]
    with pytest.raises(ValueError, match=r"^checkpoint does not match EDMPrecond\(ddpmpp\).*unexpected checkpoint key "
                                         r"'model\.enc\.16x16_block0\.norm9\.weight'"):
        edm.map_state_dict({**state, "model.enc.16x16_block0.norm9.weight": np.zeros(16)}, fields, 16)
    partial = {k: v for k, v in state.items() if k != "model.dec.8x8_block1.qkv.bias"}
    with pytest.raises(ValueError, match=r"^checkpoint does not match EDMPrecond\(ddpmpp\) at 16x16: parameter "
                                         r"backbone/Attention_2/to_\w/bias is missing.*\n.*missing in the checkpoint \(3\)"):
        edm.map_state_dict(partial, fields, 16)
    wrong = {**state, "model.map_layer1.weight": np.zeros((64, 32), np.float32)}
    with pytest.raises(ValueError, match=r"shape mismatch at model\.map_layer1\.weight: checkpoint \(64, 32\) "
                                         r"\(as \(32, 64\)\) vs model \(64, 64\)"):
        edm.map_state_dict(wrong, fields, 16)
    with pytest.raises(ValueError, match="expected a dict with 'init_kwargs' and 'state_dict'"):
        edm.load(state)
    with pytest.raises(ValueError, match="the network is an EDM VPPrecond .*only EDMPrecond is importable"):
        edm.load({**source, "class": "VPPrecond"})
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*missing.pt"):
        edm.load(str(tmp_path / "missing.pt"))


def test_command_line_writes_a_run_that_load_run_reads(tmp_path):
    torch = pytest.importorskip("torch")
    from diffjax import sample

    ref, source, fields = _reference("ddpmpp")
    path = tmp_path / "edm-cifar10-16x16-uncond-vp.pt"
    torch.save({"class": "EDMPrecond", "init_kwargs": source["init_kwargs"],
                "state_dict": {k: torch.from_numpy(v) for k, v in source["state_dict"].items()}}, path)
    edm.main([str(path), str(tmp_path / "run")])
    config, params, step = sample.load_run(str(tmp_path / "run"))
    assert (config.model.name, config.model.backbone, config.sampler.name, config.sampler.steps) == \
        ("edm", "ddpmpp", "edm_heun", 18)
    assert get_model(config.model) == get_model(fields)
    jax.tree.map(np.testing.assert_array_equal, params, edm.map_state_dict(source["state_dict"], fields, 16))
