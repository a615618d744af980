"""Score networks: paper parameter counts, conditioning paths, dtype, errors, the registry and CLI."""
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffjax.models import ADMUNet, DDPMUNet, NCSNpp, adm, fir, get_model, ncsnpp, param_count
from diffjax.models.layers import check_conditioning

KEY = jax.random.PRNGKey(0)


# --- parameter counts of the papers' configurations ------------------------------------------

@pytest.mark.parametrize("kwargs, size, expected", [
    # Ho et al. 2020 App. B: "35.7M parameters"; exact figure = diffusers UNet2DModel with the
    # google/ddpm-cifar10-32 config (sum of p.numel()).
    (dict(), 32, 35_746_307),
    # 256x256 CelebA-HQ / LSUN model ("114M" in App. B); diffusers UNet2DModel with
    # block_out_channels (128, 128, 256, 256, 512, 512), attention at 16x16.
    (dict(ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0), 256, 113_673_219),
])
def test_ddpm_unet_parameter_count_matches_ho_et_al_and_diffusers(kwargs, size, expected):
    assert param_count(DDPMUNet(**kwargs), (1, size, size, 3)) == expected


@pytest.mark.parametrize("name, expected", [
    # Counted by running score_sde's own models/ncsnpp.py (flax) on its configs
    # (ve|vp)/cifar10_(ncsnpp|ddpmpp)[_deep]_continuous.py; includes the 128 Fourier weights.
    ("ncsnpp_cifar10_ve", 62_758_915),
    ("ncsnpp_deep_cifar10_ve", 107_587_075),
    ("ddpmpp_cifar10_vp", 61_804_419),
    ("ddpmpp_deep_cifar10_vp", 106_632_579),
])
def test_ncsnpp_parameter_counts_match_score_sde(name, expected):
    assert param_count(NCSNpp(**ncsnpp.PAPER_CONFIGS[name]), (1, 32, 32, 3)) == expected


@pytest.mark.parametrize("name, size, reference", [
    # guided-diffusion create_model(...) with the README's flags, sum of p.numel(); our class
    # embedding has one extra (null-label) row of 4 * ch entries.
    ("adm_imagenet64", 64, 295_904_454),
    ("adm_imagenet128", 128, 421_529_606),
    ("adm_imagenet256", 256, 553_838_086),
])
def test_adm_parameter_counts_match_guided_diffusion_plus_null_label_row(name, size, reference):
    cfg = adm.PAPER_CONFIGS[name]
    n = param_count(ADMUNet(**cfg), (1, size, size, 3), y=jnp.zeros((1,), jnp.int32))
    assert n == reference + 4 * cfg["ch"]


# --- small networks for behaviour tests -----------------------------------------------------

SMALL = {
    "ddpm_unet": dict(name="ddpm_unet", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                      num_groups=8, dropout=0.0),
    # NCSN++ with FIR, residual input pyramid and Fourier features (DDPM++ shares every path but those).
    "ncsnpp": dict(name="ncsnpp", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0),
    "adm": dict(name="adm", ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_head_channels=16,
                resblock_updown=True),
}
X = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
T = jnp.array([0.7, 3.0])


def _init(net, **kwargs):
    """Random non-zero parameters everywhere (zero-initialised output layers would hide paths).

    Built from the shapes of ``init`` (``eval_shape``) with NumPy: eager ``init`` compiles every
    initializer separately, which is slow on CPU; the tests then apply the network eagerly.
    """
    rng = np.random.RandomState(7)
    shapes = jax.eval_shape(lambda: net.init(KEY, X, T, **kwargs))["params"]

    def fill(path, leaf):
        name = path[-1].key
        if name in ("kernel", "embedding"):
            std = 1.0 / math.sqrt(math.prod(leaf.shape[:-1])) if name == "kernel" else 1.0
            return jnp.asarray(std * rng.randn(*leaf.shape), jnp.float32)
        return jnp.asarray((name == "scale") + 0.1 * rng.randn(*leaf.shape), jnp.float32)
    return {"params": jax.tree_util.tree_map_with_path(fill, shapes)}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_class_label_changes_only_its_example(name):
    net = get_model(dict(SMALL[name], num_classes=10))
    v = _init(net, y=jnp.array([1, 2]))
    # Three label pairs in one batch (examples are independent): (1, 2), (3, 2), (null, null).
    out = net.apply(v, jnp.tile(X, (3, 1, 1, 1)), jnp.tile(T, 3), y=jnp.array([1, 2, 3, 2, 10, 10]))
    assert out.shape == (6,) + X.shape[1:]
    diff = jnp.abs(out[:2] - out[2:4]).max(axis=(1, 2, 3))
    assert diff[0] > 1e-3 and diff[1] == 0.0
    assert jnp.abs(out[4:] - out[:2]).max() > 1e-3
    table = next(p for k, p in v["params"].items() if "embedding" in k)["embedding"]
    assert table.shape[0] == 11  # num_classes + the null label


def test_missing_labels_mean_the_null_label():
    y = check_conditioning(None, None, batch=3, num_classes=10, context_dim=None)
    np.testing.assert_array_equal(y, [10, 10, 10])
    with pytest.raises(ValueError, match="shape"):
        check_conditioning(jnp.zeros((2,), jnp.int32), None, batch=3, num_classes=10, context_dim=None)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_unconditional_model_rejects_labels_and_context(name):
    net = get_model(SMALL[name])
    v = _init(net)
    with pytest.raises(ValueError, match="unconditional"):
        net.apply(v, X, T, y=jnp.array([0, 1]))
    with pytest.raises(ValueError, match="no cross-attention"):
        net.apply(v, X, T, context=jnp.zeros((2, 4, 8)))


def _cross_attention_paths(net, ctx):
    """Parameter paths of the attention modules that receive the context (traced)."""
    import flax.linen as nn
    paths = []

    def interceptor(next_fun, args, kwargs, context):
        if (type(context.module).__name__ == "Attention" and context.method_name == "__call__"
                and len(args) > 1 and args[1] is not None):
            paths.append(tuple(context.module.path))
        return next_fun(*args, **kwargs)
    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda: net.init(KEY, X, T, context=ctx))
    return paths


@pytest.mark.parametrize("name", sorted(SMALL))
def test_context_acts_only_through_cross_attention(name):
    from flax import traverse_util
    net = get_model(dict(SMALL[name], context_dim=8))
    ctx = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 8))
    v = _init(net, context=ctx)
    apply = lambda v, c: net.apply(v, X, T, context=c)  # noqa: E731
    out = apply(v, ctx)
    per_example = jnp.abs(out - apply(v, ctx.at[0].mul(2.0))).max(axis=(1, 2, 3))
    assert per_example[0] > 1e-3 and per_example[1] == 0.0

    cross = _cross_attention_paths(net, ctx)
    assert len(cross) >= 2  # the attention resolution and the middle block
    flat = traverse_util.flatten_dict(v["params"])
    zeroed = {p: (jnp.zeros_like(a) if p[:-2] in cross and p[-2] == "to_out_0" else a) for p, a in flat.items()}
    v0 = {"params": traverse_util.unflatten_dict(zeroed)}
    np.testing.assert_array_equal(apply(v0, ctx), apply(v0, 3.0 * ctx + 1.0))
    with pytest.raises(ValueError, match="context"):
        net.apply(v, X, T)


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SMALL))
def test_bad_inputs_raise_clear_errors(name):
    net = get_model(SMALL[name])
    with pytest.raises(ValueError, match="17x17 is not divisible by 2"):
        jax.eval_shape(lambda: net.init(KEY, jnp.zeros((2, 17, 17, 3)), T))
    with pytest.raises(ValueError, match="expected 3 input channels"):
        jax.eval_shape(lambda: net.init(KEY, jnp.zeros((2, 16, 16, 1)), T))
    with pytest.raises(ValueError, match=r"noise_labels of shape \(2,\)"):
        jax.eval_shape(lambda: net.init(KEY, X, jnp.zeros((3,))))


def test_registry_rejects_unknown_names_fields_and_options():
    with pytest.raises(ValueError, match="unknown model name 'unet9'"):
        get_model({"name": "unet9"})
    with pytest.raises(ValueError, match=r"\['chanels'\] are not arguments of DDPMUNet"):
        get_model({"name": "ddpm_unet", "chanels": 64})
    with pytest.raises(ValueError, match="progressive='residual' is not supported"):
        jax.eval_shape(lambda: get_model({"name": "ncsnpp", "progressive": "residual"}).init(KEY, X, T))
    with pytest.raises(ValueError, match="needs config.backbone"):
        get_model({"name": "edm"})


def test_registry_builds_from_configdict_with_tuples_and_prediction_field():
    cfg = ml_collections.ConfigDict(dict(SMALL["ddpm_unet"], prediction="eps"))
    net = get_model(cfg)
    assert isinstance(net, DDPMUNet) and net.ch_mult == (1, 2) and net.attn_resolutions == (8,)
    ddpmpp = get_model(dict(SMALL["ncsnpp"], name="ddpmpp"))
    assert (ddpmpp.fir, ddpmpp.progressive_input, ddpmpp.embedding_type) == (False, "none", "positional")


def test_bfloat16_computation_keeps_float32_params_and_tracks_float32_output():
    f32 = get_model(SMALL["ddpm_unet"])
    bf16 = get_model(dict(SMALL["ddpm_unet"], dtype="bfloat16"))
    v = _init(f32)
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(
        jax.eval_shape(lambda: bf16.init(KEY, X, T))))
    ref, out = f32.apply(v, X, T), bf16.apply(v, X, T)
    assert out.dtype == jnp.float32
    rel = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert 1e-5 < rel < 5e-2  # bf16 rounding is visible but small


# --- FIR resampling ------------------------------------------------------------------------

def _upfirdn_reference(x, k, up, down, pad0, pad1):
    """The upfirdn2d definition, written as loops (one channel, NumPy)."""
    H, W = x.shape
    u = np.zeros((H * up, W * up))
    u[::up, ::up] = x
    u = np.pad(u, ((pad0, pad1), (pad0, pad1)))
    kh = k.shape[0]
    out = np.zeros((u.shape[0] - kh + 1, u.shape[1] - kh + 1))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = np.sum(u[i:i + kh, j:j + kh] * k[::-1, ::-1])
    return out[::down, ::down]


def test_fir_resampling_matches_the_upfirdn2d_definition():
    x = np.random.RandomState(0).randn(8, 8)
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0
    up = fir.upsample_2d(jnp.asarray(x)[None, :, :, None])[0, :, :, 0]
    down = fir.downsample_2d(jnp.asarray(x)[None, :, :, None])[0, :, :, 0]
    # score_sde's paddings for a 4-tap filter and factor 2: up (2, 1) with gain 4, down (1, 1).
    np.testing.assert_allclose(up, _upfirdn_reference(x, 4 * k, 2, 1, 2, 1), atol=1e-5)
    np.testing.assert_allclose(down, _upfirdn_reference(x, k, 1, 2, 1, 1), atol=1e-5)
    assert up.shape == (16, 16) and down.shape == (4, 4)
    # A constant image stays constant away from the borders.
    np.testing.assert_allclose(fir.downsample_2d(jnp.ones((1, 8, 8, 1)))[0, 1:-1, 1:-1, 0], 1.0, atol=1e-6)


# --- command line ------------------------------------------------------------------------------

def test_cli_prints_parameter_count_and_flops(tmp_path):
    cfg = tmp_path / "tiny.py"
    cfg.write_text(textwrap.dedent("""
        import ml_collections
        def get_config():
            c = ml_collections.ConfigDict()
            c.data = ml_collections.ConfigDict(dict(image_size=16, num_channels=3))
            c.model = ml_collections.ConfigDict(dict(name="ddpm_unet", ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                                     attn_resolutions=(8,), num_groups=8, dropout=0.0))
            return c
    """))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-m", "diffjax.models", f"--config={cfg}"], capture_output=True,
                         text=True, env=env, timeout=240, check=True).stdout
    expected = param_count(get_model(dict(SMALL["ddpm_unet"])), (1, 16, 16, 3))
    assert f"parameters: {expected:,}" in out
    flops = float(out.split("forward FLOPs per example: ")[1].split(" ")[0].replace(",", ""))
    # 2 FLOPs per multiply-add of every convolution and matrix product, counted from the jaxpr;
    # norms, activations and softmax add a few percent on top.
    net = get_model(dict(SMALL["ddpm_unet"]))
    x, t = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1,))
    params = jax.eval_shape(net.init, KEY, x, t)
    jaxpr = jax.make_jaxpr(lambda p: net.apply(p, x, t))(params)
    assert 1.0 < flops / _matmul_flops(jaxpr.jaxpr) < 1.15


def _matmul_flops(jaxpr) -> float:
    total = 0.0
    for eqn in jaxpr.eqns:
        for v in eqn.params.values():   # nested programs (jit, custom_jvp, ...)
            if hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                total += _matmul_flops(v.jaxpr)
            elif hasattr(v, "eqns"):
                total += _matmul_flops(v)
        out = eqn.outvars[0].aval.shape if eqn.outvars else ()
        if eqn.primitive.name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)
    return total


def _conv_flops(eqn) -> float:
    """2 x the multiply-adds that touch the input (taps on the zero padding are not counted, as
    XLA's cost analysis does not count them)."""
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    dn, p = eqn.params["dimension_numbers"], eqn.params
    taps = 1
    for i, (n, k, m) in enumerate(zip((lhs[d] for d in dn.lhs_spec[2:]), (rhs[d] for d in dn.rhs_spec[2:]),
                                      (out[d] for d in dn.out_spec[2:]))):
        lo, s, d = p["padding"][i][0], p["window_strides"][i], p["rhs_dilation"][i]
        taps *= sum(0 <= o * s - lo + j * d < n for o in range(m) for j in range(k))
    return 2.0 * out[dn.out_spec[0]] * rhs[dn.rhs_spec[0]] * rhs[dn.rhs_spec[1]] * taps


# --- outputs against the reference implementations' own code --------------------------------

DATA = os.path.join(os.path.dirname(__file__), "data")


class SoftmaxRecorder:
    """Records every attention softmax of an eager (un-jitted) apply; ``peaks`` is the mean
    largest weight of each, in units of the uniform weight 1/L."""

    def __init__(self, monkeypatch):
        self.weights, original = [], jax.nn.softmax

        def recording(x, axis=-1, **kw):
            out = original(x, axis=axis, **kw)
            self.weights.append(np.moveaxis(np.asarray(out), axis, -1))
            return out

        monkeypatch.setattr(jax.nn, "softmax", recording)

    def assert_peaked(self):
        assert self.weights, "no attention ran"
        for w in self.weights:
            L = w.shape[-1]
            peak = float(w.max(-1).mean()) * L
            # at least 4 times uniform (twice over the 4 keys of a 2x2 middle block)
            assert peak >= min(4.0, L / 2), f"attention over {L} keys is nearly uniform ({peak:.2f}/L)"


# NCSN++ / DDPM++: tests/data/models_score_sde_<name>.npz, written by tools/refgen/models_score_sde.py
# from score_sde 0acb9e0 (its paper configs at nf=16, one block per level, 16x16 inputs; random
# weights with peaked attention, stored under our parameter paths by the generator's name mapping).
@pytest.mark.parametrize("name", ["ncsnpp_cifar10_ve", "ddpmpp_cifar10_vp"])
def test_ncsnpp_matches_score_sde_outputs(name, monkeypatch):
    from flax import traverse_util
    ref = np.load(os.path.join(DATA, f"models_score_sde_{name}.npz"))
    params = {k[len("params/"):]: ref[k].astype(np.float32) for k in ref.files if k.startswith("params/")}
    net = NCSNpp(**dict(ncsnpp.PAPER_CONFIGS[name], nf=16, num_res_blocks=1))
    x, t = jnp.asarray(ref["x"]), jnp.asarray(ref["t"])
    shapes = traverse_util.flatten_dict(jax.eval_shape(net.init, KEY, x, t)["params"], sep="/")
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in params.items()}
    recorder = SoftmaxRecorder(monkeypatch)
    out = np.asarray(net.apply({"params": traverse_util.unflatten_dict(params, sep="/")}, x, t))
    recorder.assert_peaked()   # so a wrong softmax scale or a uniform softmax changes the output
    np.testing.assert_allclose(out, ref["out"], rtol=0, atol=1e-4 * np.abs(ref["out"]).max())


# ADM: tests/data/adm_*.npz, written by tools/refgen/adm.py from guided-diffusion 22e0df8 and
# improved-diffusion 1bc7bbb (random weights, peaked attention, 2 heads), imported through
# diffjax.convert.adm (tests/test_convert_adm.py tests the importer itself).
@pytest.mark.parametrize("variant", ["guided_new_updown", "guided_legacy_conv", "improved"])
def test_adm_matches_guided_diffusion_outputs(variant, monkeypatch):
    import json
    from diffjax.convert import adm as convert_adm
    ref = np.load(os.path.join(DATA, f"adm_{variant}.npz"))
    state = {k[len("state_dict/"):]: ref[k].astype(np.float32) for k in ref.files if k.startswith("state_dict/")}
    net = ADMUNet(**json.loads(str(ref["diffjax"])))
    params = convert_adm.convert_state_dict(state, net, image_size=16, attention_order=str(ref["order"]))
    y = jnp.asarray(ref["y"]) if ref["y"].size else None
    recorder = SoftmaxRecorder(monkeypatch)
    out = net.apply({"params": params}, jnp.asarray(ref["x"].transpose(0, 2, 3, 1)), jnp.asarray(ref["t"]), y=y)
    recorder.assert_peaked()
    assert max(w.shape[1] for w in recorder.weights if w.ndim == 4) == 2   # (B, heads, q, k): two heads
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref["out"], atol=1e-4, rtol=0)
