"""Checkpoints: round trip, keep-N, atomic saves, config compatibility."""
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import checkpoint


def state(scale):
    return {"params": {"w": jnp.arange(6.0).reshape(2, 3) * scale, "b": jnp.ones(3) * scale},
            "step": jnp.asarray(int(scale), jnp.int32), "key": jax.random.PRNGKey(int(scale))}


def test_round_trip_and_keep_n(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, state(step), {"position": 10 * step}, {"model": {"name": "mlp"}})
    ckpt.wait()
    assert ckpt.latest_step() == 3
    assert sorted(int(d) for d in os.listdir(tmp_path) if d.isdigit()) == [2, 3]
    restored, data_state = ckpt.restore(3, state(0))
    assert data_state == {"position": 30}
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state(3))):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    assert ckpt.saved_config() == {"model": {"name": "mlp"}}
    ckpt.close()


def test_an_unfinished_save_is_ignored(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, asynchronous=False)
    ckpt.save(5, state(5), {"position": 5}, {})
    ckpt.close()
    # what a crash in the middle of writing step 6 leaves behind: a temporary directory
    os.makedirs(tmp_path / "6.orbax-checkpoint-tmp-1234567" / "state")
    reopened = checkpoint.Checkpointer(str(tmp_path), keep=3)
    assert reopened.latest_step() == 5
    restored, _ = reopened.restore(5, state(0))
    np.testing.assert_array_equal(restored["params"]["b"], np.full(3, 5.0))
    reopened.close()


def test_incompatibilities_name_the_fields():
    saved = {"model": {"name": "ddpm_unet", "ch": 128, "ch_mult": [1, 2]}, "schedule": {"name": "vp"},
             "data": {"source": "tfds:cifar10", "image_size": 32, "num_channels": 3, "num_classes": 0,
                      "centered": True}, "optim": {"optimizer": "adam", "lr": 2e-4}}
    current = {"model": {"name": "ddpm_unet", "ch": 128, "ch_mult": (1, 2)}, "schedule": {"name": "vp"},
               "data": {"source": "tfds:cifar10", "image_size": 32, "num_channels": 3, "num_classes": 0,
                        "centered": True}, "optim": {"optimizer": "adam", "lr": 1e-4}}
    assert checkpoint.incompatibilities(saved, current) == []  # tuples vs lists, lr: compatible
    current["model"]["ch"] = 64
    current["data"]["image_size"] = 64
    diffs = checkpoint.incompatibilities(saved, current)
    assert len(diffs) == 2 and diffs[0].startswith("model:") and diffs[1].startswith("data.image_size:")
