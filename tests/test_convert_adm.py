"""Importing guided-diffusion / improved-diffusion UNetModel state dicts into ADMUNet.

References: tests/data/adm_*.npz, written by tools/refgen/adm.py from guided-diffusion
22e0df8183507e13a7813f8d38d51b072ca1e67c and improved-diffusion
1bc7bbbdc414d83d4abf2ad8cc1446dc36c4e4d5 (random weights with peaked attention, the upstream
outputs); tests/data/adm_published_shapes.json: the state-dict shapes of the published checkpoints.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.convert import adm, common
from diffjax.models import ADMUNet, get_model

DATA = os.path.join(os.path.dirname(__file__), "data")
VARIANTS = ("guided_new_updown", "guided_legacy_conv", "improved")


def _reference(variant):
    ref = np.load(os.path.join(DATA, f"adm_{variant}.npz"))
    state = {k[len("state_dict/"):]: ref[k].astype(np.float32) for k in ref.files if k.startswith("state_dict/")}
    return ref, state, ADMUNet(**json.loads(str(ref["diffjax"])))


def _apply(model, params, ref):
    y = jnp.asarray(ref["y"]) if ref["y"].size else None
    apply = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y=y))  # compiles faster than eager runs
    out = apply(params, jnp.asarray(ref["x"].transpose(0, 2, 3, 1)), jnp.asarray(ref["t"]), y)
    return np.asarray(out).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_imported_adm_equals_the_upstream_unet(variant):
    ref, state, model = _reference(variant)
    params = adm.convert_state_dict(state, model, image_size=16, attention_order=str(ref["order"]))
    assert np.abs(ref["out"]).max() > 0.5
    np.testing.assert_allclose(_apply(model, params, ref), ref["out"], atol=1e-4, rtol=0)


def test_the_other_attention_order_gives_other_outputs():
    ref, state, model = _reference("guided_new_updown")
    params = adm.convert_state_dict(state, model, image_size=16, attention_order="legacy")
    assert np.abs(_apply(model, params, ref) - ref["out"]).max() > 1e-2


with open(os.path.join(DATA, "adm_published_shapes.json")) as f:
    PUBLISHED = json.load(f)["shapes"]
SAME_LAYOUT = {"lsun_cat": "lsun_bedroom", "lsun_horse": "lsun_bedroom", "lsun_horse_nodropout": "lsun_bedroom"}


@pytest.mark.parametrize("preset", sorted(adm.PRESETS))
def test_published_checkpoint_layouts_map_exactly_onto_the_paper_size_networks(preset):
    shapes = PUBLISHED[SAME_LAYOUT.get(preset, preset)]
    config = adm.config_for(preset)
    model = get_model(config.model)
    params = adm.map_state_dict(common.shape_only(shapes), model, config.data.image_size, adm.PRESETS[preset][4])
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    n_null_row = 4 * model.ch if model.num_classes else 0
    assert sum(v.size for v in jax.tree.leaves(params)) == n_params + n_null_row


def test_unknown_missing_and_misshapen_keys_are_named():
    _, state, model = _reference("guided_legacy_conv")
    with pytest.raises(ValueError, match=r"^checkpoint does not match ADMUNet.*unexpected checkpoint key "
                                         r"'input_blocks\.1\.0\.extra\.weight'"):
        adm.convert_state_dict({**state, "input_blocks.1.0.extra.weight": np.zeros(3)}, model, 16)
    partial = {k: v for k, v in state.items() if k != "middle_block.1.proj_out.bias"}
    with pytest.raises(ValueError, match=r"^checkpoint does not match ADMUNet.*parameter "
                                         r"Attention_2/to_out_0/bias is missing"):
        adm.convert_state_dict(partial, model, 16)
    wrong = {**state, "output_blocks.0.0.in_layers.2.weight": np.zeros((32, 64, 1, 3), np.float32)}
    with pytest.raises(ValueError, match=r"^checkpoint does not match ADMUNet.*shape mismatch at "
                                         r"output_blocks\.0\.0\.in_layers\.2\.weight: checkpoint \(32, 64, 1, 3\) "
                                         r"\(as \(1, 3, 64, 32\)\) vs model \(3, 3, 64, 32\)"):
        adm.convert_state_dict(wrong, model, 16)


def test_a_checkpoint_of_another_family_or_no_file_is_refused_in_one_line(tmp_path):
    _, _, model = _reference("guided_legacy_conv")
    edm_like = {"model.map_noise.freqs": np.zeros(8, np.float32), "model.enc.16x16_conv.weight": np.zeros((32, 3, 3, 3))}
    with pytest.raises(ValueError, match=r"^checkpoint does not match ADMUNet.*'model\.map_noise\.freqs'"):
        adm.convert_state_dict(edm_like, model, 16)
    (tmp_path / "flax.pt").write_bytes(b"\x85\xa4step\x1a")  # a msgpack map (score_sde's format)
    with pytest.raises(ValueError, match=r"flax.pt is not a PyTorch state dict \("):
        adm.convert_state_dict(str(tmp_path / "flax.pt"), model, 16)
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*nothing.pt"):
        adm.convert_state_dict(str(tmp_path / "nothing.pt"), model, 16)
    with pytest.raises(ValueError, match="improved-diffusion trained it with rescale_timesteps=True"):
        adm.preset_for("models/cifar10_uncond_50M_500K.pt")
    with pytest.raises(ValueError, match="no ADM preset 'mine'.*--preset"):
        adm.preset_for("mine.pt")


def test_command_line_tells_the_format_and_writes_a_run_that_load_run_reads(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from diffjax import sample
    from diffjax.convert import __main__ as entry

    ref, state, model = _reference("guided_new_updown")
    fields = json.loads(str(ref["diffjax"]))
    monkeypatch.setitem(adm.PRESETS, "tiny", (fields, 16, dict(name="ddpm_linear", T=1000), "tfds:cifar10", "new"))
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "tiny.pt")
    entry.main([str(tmp_path / "tiny.pt"), str(tmp_path / "run")])  # python -m diffjax.convert IN OUT
    config, params, step = sample.load_run(str(tmp_path / "run"))
    assert step == 0 and config.model.name == "adm" and config.data.num_classes == 3
    assert get_model(config.model) == get_model({"name": "adm", **fields})
    expected = adm.map_state_dict(state, model, 16, "new")  # what the tests above check against guided-diffusion
    jax.tree.map(np.testing.assert_array_equal, params, expected)
    with pytest.raises(SystemExit, match="already holds checkpoints"):
        entry.main([str(tmp_path / "tiny.pt"), str(tmp_path / "run")])  # python -m diffjax.convert IN OUT
