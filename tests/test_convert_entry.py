"""``python -m diffjax.convert``: the format is told from the checkpoint, and bad input is one line."""
import json

import numpy as np
import pytest

from diffjax import convert
from diffjax.convert import __main__ as entry

torch = pytest.importorskip("torch")


def test_each_format_is_told_from_its_file(tmp_path):
    (tmp_path / "ddpm").mkdir()
    (tmp_path / "ddpm" / "config.json").write_text(json.dumps({"sample_size": 32}))
    (tmp_path / "pipeline" / "unet").mkdir(parents=True)
    (tmp_path / "pipeline" / "unet" / "config.json").write_text("{}")
    torch.save({"input_blocks.0.0.weight": torch.zeros(1), "time_embed.0.weight": torch.zeros(1)}, tmp_path / "adm.pt")
    torch.save({"init_kwargs": {"model_type": "SongUNet"}, "state_dict": {}}, tmp_path / "edm.pt")
    from flax import serialization
    (tmp_path / "checkpoint_26").write_bytes(serialization.msgpack_serialize(
        {"params": {"Conv_0": {"kernel": np.zeros(2)}}, "params_ema": {}, "step": 26}))
    names = ("ddpm", "pipeline", "adm.pt", "edm.pt", "checkpoint_26")
    found = {name: convert.detect(str(tmp_path / name)) for name in names}
    assert found == {"ddpm": "diffusers", "pipeline": "diffusers", "adm.pt": "adm", "edm.pt": "edm",
                     "checkpoint_26": "score_sde"}


def test_unknown_or_missing_input_is_one_error_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    torch.save({"conv_in.weight": torch.zeros(1)}, tmp_path / "other.pt")
    for name, message in (("notes.txt", "cannot tell the format of .*notes.txt; pass --format"),
                          ("other.pt", ".*other.pt is a PyTorch file but neither a guided-/improved-diffusion"),
                          ("absent.pt", "no checkpoint at .*absent.pt")):
        with pytest.raises(SystemExit, match=f"^error: {message}"):
            entry.main([str(tmp_path / name), str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="^error: no diffusers config.json in"):
        entry.main([str(tmp_path), str(tmp_path / "run"), "--format=diffusers"])
