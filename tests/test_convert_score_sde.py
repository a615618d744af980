"""Importing score_sde's Flax checkpoints (NCSN++ / DDPM++) into diffjax's NCSNpp.

References: tests/data/score_sde_*.npz, written by tools/refgen/score_sde.py by running score_sde's
own Flax models/ncsnpp.py at 0acb9e0ea3b8cccd935068cd9c657318fbc6ce4c (small versions of
ve/cifar10_ncsnpp_continuous, vp/cifar10_ddpmpp_continuous and ve/celebahq_256_ncsnpp_continuous;
random weights with peaked attention; its outputs); tests/data/score_sde_published_shapes.json:
the parameter shapes of the paper-size models from score_sde's own ``model.init``.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from diffjax.convert import common, score_sde
from diffjax.models import get_model

DATA = os.path.join(os.path.dirname(__file__), "data")
SMALL = dict(nf=16, num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
VARIANTS = {"ncsnpp_ve": ("ve/cifar10_ncsnpp_continuous", dict(SMALL, ch_mult=(1, 2))),
            "ddpmpp_vp": ("vp/cifar10_ddpmpp_continuous", dict(SMALL, ch_mult=(1, 2))),
            "ncsnpp_ve_skip": ("ve/celebahq_256_ncsnpp_continuous", dict(SMALL, ch_mult=(1, 2, 2)))}


def _reference(variant):
    ref = np.load(os.path.join(DATA, f"score_sde_{variant}.npz"))
    flat = {tuple(k.split("/")[1:]): ref[k].astype(np.float32) for k in ref.files if k.startswith("state_dict/")}
    preset, changes = VARIANTS[variant]
    config = score_sde.config_for(preset)
    config.model.update(changes)
    return ref, traverse_util.unflatten_dict(flat), config


def _apply(config, params, ref):
    model = get_model(config.model)
    apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))  # compiles faster than eager runs
    return np.asarray(apply(params, jnp.asarray(ref["x"]), jnp.asarray(ref["t"])))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_imported_ncsnpp_equals_score_sde_own_flax_model(variant):
    ref, params, config = _reference(variant)
    imported = score_sde.map_params(params, get_model(config.model), 16)
    out = _apply(config, imported, ref)
    assert np.abs(ref["out"]).max() > 0.5
    np.testing.assert_allclose(out, ref["out"], atol=1e-4, rtol=0)


with open(os.path.join(DATA, "score_sde_published_shapes.json")) as f:
    PUBLISHED = json.load(f)["shapes"]


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_published_checkpoint_layouts_map_exactly_onto_the_paper_size_networks(preset):
    config = score_sde.config_for(preset)
    shapes = {tuple(k.split("/")): s for k, s in PUBLISHED[preset].items()}
    params = score_sde.map_params(traverse_util.unflatten_dict(common.shape_only(shapes)), get_model(config.model),
                                  config.data.image_size)
    assert sum(v.size for v in jax.tree.leaves(params)) == sum(int(np.prod(s)) for s in shapes.values())


def test_unknown_missing_and_misshapen_parameters_are_named(tmp_path):
    _, params, config = _reference("ncsnpp_ve")
    model = get_model(config.model)
    flat = traverse_util.flatten_dict(params)
    with pytest.raises(ValueError, match=r"^checkpoint does not match NCSNpp.*unexpected checkpoint key "
                                         r"'params/NIN_0/W'"):
        score_sde.map_params({**params, "NIN_0": {"W": np.zeros((3, 3))}}, model, 16)
    partial = traverse_util.unflatten_dict({k: v for k, v in flat.items() if k != ("AttnBlockpp_1", "NIN_1", "b")})
    with pytest.raises(ValueError, match=r"^checkpoint does not match NCSNpp.*: parameter Attention_1/to_k/bias is missing"):
        score_sde.map_params(partial, model, 16)
    wrong = traverse_util.unflatten_dict({**flat, ("Dense_0", "kernel"): np.zeros((32, 48), np.float32)})
    with pytest.raises(ValueError, match=r"shape mismatch at params/Dense_0/kernel: checkpoint \(32, 48\) "
                                         r"\(as \(32, 48\)\) vs model \(32, 64\)"):
        score_sde.map_params(wrong, model, 16)


def test_files_of_another_family_or_no_file_are_refused_in_one_line(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"PK\x03\x04 not msgpack")
    with pytest.raises(ValueError, match="model.pt is not a flax msgpack checkpoint"):
        score_sde.load(str(tmp_path / "model.pt"))
    (tmp_path / "other").write_bytes(serialization.msgpack_serialize({"params": {}, "step": 3}))
    with pytest.raises(ValueError, match=r"not a score_sde checkpoint: expected 'optimizer' .* got \['params', 'step'\]"):
        score_sde.load(str(tmp_path / "other"))
    with pytest.raises(FileNotFoundError, match="no checkpoint file at .*checkpoint_9"):
        score_sde.load(str(tmp_path / "checkpoint_9"))
    with pytest.raises(ValueError, match="no score_sde preset None .*--preset="):
        score_sde.preset_for(str(tmp_path / "checkpoint_9"))


def test_command_line_reads_score_sde_state_and_writes_params_and_ema(tmp_path, monkeypatch):
    from diffjax import sample
    from diffjax.convert import __main__ as entry

    ref, params, config = _reference("ddpmpp_vp")
    module, _, size, sigma_max, source = score_sde.PRESETS["vp/cifar10_ddpmpp_continuous"]
    monkeypatch.setitem(score_sde.PRESETS, "vp/tiny_ddpmpp", (module, VARIANTS["ddpmpp_vp"][1], 16, sigma_max, source))
    target = jax.tree.map(lambda v: 0.5 * v, params)  # the raw parameters differ from the EMA ones
    state = {"step": 26, "optimizer": {"target": target, "state": {"step": 26, "param_states": {}}}, "lr": 2e-4,
             "model_state": {}, "ema_rate": 0.9999, "params_ema": params, "rng": np.zeros(2, np.uint32)}
    path = tmp_path / "vp" / "tiny_ddpmpp" / "checkpoints" / "checkpoint_26"
    path.parent.mkdir(parents=True)
    path.write_bytes(serialization.msgpack_serialize(state))
    entry.main([str(path), str(tmp_path / "run")])  # python -m diffjax.convert IN OUT: format and preset from the path
    loaded, ema, step = sample.load_run(str(tmp_path / "run"))
    assert (step, loaded.model.name, loaded.schedule.name, loaded.data.image_size) == (0, "ncsnpp", "vp", 16)
    assert get_model(loaded.model) == get_model(config.model)
    jax.tree.map(np.testing.assert_array_equal, ema, score_sde.map_params(params, get_model(config.model), 16))
    _, raw, _ = sample.load_run(str(tmp_path / "run"), use_ema=False)
    np.testing.assert_array_equal(raw["Conv_0"]["kernel"], 0.5 * params["Conv_0"]["kernel"])
