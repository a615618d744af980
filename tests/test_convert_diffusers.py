"""Importing diffusers UNet2DModel weights: outputs equal diffusers' own forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.convert.diffusers_unet import convert_state_dict, load_pretrained, load_state_dict, model_from_config
from diffjax.models import get_model

pytestmark = pytest.mark.peer
diffusers = pytest.importorskip("diffusers")
torch = pytest.importorskip("torch")

# google/ddpm-cifar10-32's config.json (the diffusers conversion of Ho et al.'s checkpoint).
DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 256],
    down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
    attention_head_dim=None, norm_eps=1e-6, norm_num_groups=32, downsample_padding=0, flip_sin_to_cos=False,
    freq_shift=1, act_fn="silu", time_embedding_type="positional", center_input_sample=False,
    mid_block_scale_factor=1)
# A second architecture: two levels both with attention, 4 heads of 8 channels, 8 groups, one block
# per level, class-conditional (10 classes + the null label), learned variances (6 output channels).
SMALL_COND = dict(DDPM_CIFAR10, block_out_channels=[32, 64], down_block_types=["AttnDownBlock2D", "AttnDownBlock2D"],
                  up_block_types=["AttnUpBlock2D", "AttnUpBlock2D"], layers_per_block=1, attention_head_dim=8,
                  norm_num_groups=8, num_class_embeds=11, out_channels=6)


def _torch_unet(config, seed=0):
    torch.manual_seed(seed)
    net = diffusers.UNet2DModel(**config).eval()
    with torch.no_grad():  # non-trivial norms, biases and embeddings
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p) if p.ndim <= 2 else 0.0)
    return net


def _compare(config, t, y=None):
    net = _torch_unet(config)
    model = model_from_config(config)
    params = convert_state_dict(net.state_dict(), model, image_size=config["sample_size"])
    x = np.random.RandomState(0).randn(len(t), 3, 32, 32).astype(np.float32)  # one example per timestep
    with torch.no_grad():
        ref = net(torch.from_numpy(x), torch.tensor(t),
                  class_labels=None if y is None else torch.tensor(y)).sample.numpy()
    # Eager apply: on a 2-core CPU compiling the 35.7M UNet costs more than running it.
    out = model.apply({"params": params}, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t, jnp.float32),
                      y=None if y is None else jnp.asarray(y))
    return np.asarray(out).transpose(0, 3, 1, 2), ref


def test_ddpm_cifar10_unet_matches_diffusers_at_several_timesteps():
    out, ref = _compare(DDPM_CIFAR10, t=[0, 17, 500, 999])
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_class_conditional_multihead_unet_matches_diffusers():
    out, ref = _compare(SMALL_COND, t=[3, 640], y=[4, 10])
    assert out.shape == (2, 6, 32, 32)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_files_folders_and_pre_0_15_attention_names_load(tmp_path):
    from safetensors.torch import save_file
    net = _torch_unet(SMALL_COND)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    old = {k.replace("to_q", "query").replace("to_k", "key").replace("to_v", "value").replace("to_out.0", "proj_attn"): v
           for k, v in state.items()}
    torch.save(old, tmp_path / "diffusion_pytorch_model.bin")
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    model = model_from_config(SMALL_COND)
    a = convert_state_dict(tmp_path / "diffusion_pytorch_model.bin", model)
    b = convert_state_dict(str(tmp_path / "diffusion_pytorch_model.safetensors"), model)
    c = convert_state_dict(load_state_dict(state), model)
    net.save_pretrained(tmp_path / "saved")
    loaded_model, d = load_pretrained(tmp_path / "saved")
    assert loaded_model == model
    for p, q, r, u in zip(*(jax.tree_util.tree_leaves(v) for v in (a, b, c, d))):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(p, r)
        np.testing.assert_array_equal(p, u)


def test_another_architecture_is_rejected_naming_keys_and_shapes():
    model = model_from_config(SMALL_COND)
    deeper = _torch_unet(dict(SMALL_COND, layers_per_block=2)).state_dict()
    with pytest.raises(ValueError, match=r"unexpected in the checkpoint \(84\): .*down_blocks\.0\.resnets\.1\.norm1\.weight"):
        convert_state_dict(deeper, model)
    wider = _torch_unet(dict(SMALL_COND, block_out_channels=[32, 96])).state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch \(\d+\): down_blocks\.1\.attentions\.0\.group_norm\.weight: "
                                         r"checkpoint \(96,\) \(as \(96,\)\) vs model \(64,\)"):
        convert_state_dict(wider, model)
    partial = {k: v for k, v in _torch_unet(SMALL_COND).state_dict().items() if not k.startswith("conv_out")}
    with pytest.raises(ValueError, match=r"missing in the checkpoint \(2\): conv_out/bias; conv_out/kernel"):
        convert_state_dict(partial, model)


@pytest.mark.parametrize("change, message", [
    (dict(flip_sin_to_cos=True), "flip_sin_to_cos=True; the DDPM UNet needs flip_sin_to_cos=False"),
    (dict(resnet_time_scale_shift="scale_shift"), "resnet_time_scale_shift"),
    (dict(up_block_types=["UpBlock2D", "AttnUpBlock2D"]), "mirrored"),
    (dict(time_embedding_type="fourier"), "time_embedding_type"),
])
def test_configs_the_ddpm_unet_cannot_express_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        model_from_config(dict(SMALL_COND, **change))


def test_command_line_writes_a_run_that_load_run_reads(tmp_path):
    from diffjax import sample
    from diffjax.convert import __main__ as entry

    net = _torch_unet(SMALL_COND)
    net.save_pretrained(tmp_path / "pipeline" / "unet")
    entry.main([str(tmp_path / "pipeline"), str(tmp_path / "run")])  # python -m diffjax.convert IN OUT
    config, params, step = sample.load_run(str(tmp_path / "run"))
    assert step == 0 and config.model.name == "ddpm_unet" and config.data.num_classes == 10
    model = model_from_config(SMALL_COND)
    expected = convert_state_dict(net.state_dict(), model)
    for p, q in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
        np.testing.assert_array_equal(p, q)
    assert get_model(config.model) == model
