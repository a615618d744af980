"""Toy 2D sets: sample statistics against the stated mixtures, normalised exact densities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data import toy

N = 20_000
MIXTURES = ("8gaussians", "25gaussians", "two_pixels", "two_pixels_scaled")


def test_names_and_stated_parameters():
    assert set(toy.names()) == {"swiss_roll", "8gaussians", "25gaussians", "checkerboard",
                                "two_pixels", "two_pixels_scaled"}
    w, m, s = toy.mixture("8gaussians")
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 2.0)
    assert np.all(s == 0.1) and np.allclose(w, 1 / 8)
    w, m, s = toy.mixture("25gaussians")
    assert sorted(set(m[:, 0])) == [-2, -1, 0, 1, 2] and len({tuple(r) for r in m}) == 25
    assert np.all(s == 0.05) and np.allclose(w, 1 / 25)
    w, m, s = toy.mixture("two_pixels")
    assert np.isclose(w.sum(), 1.0) and np.all((m - 6 * s[:, None] > 0) & (m + 6 * s[:, None] < 255))


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_samples_match_weights_means_and_stds(name):
    """Each sample is assigned to its nearest mean (components are > 7 std apart). Component
    frequencies must lie within 4 binomial standard errors of the weights, and per-component
    means and stds within 4 standard errors of the stated ones."""
    w, m, s = toy.mixture(name)
    x = np.asarray(toy.sample(name, jax.random.key(0), N), np.float64)
    comp = np.argmin(((x[:, None, :] - m[None]) ** 2).sum(-1), axis=1)
    freq = np.bincount(comp, minlength=len(w)) / N
    assert np.all(np.abs(freq - w) < 4 * np.sqrt(w * (1 - w) / N)), (freq, w)
    for k in range(len(w)):
        xk = x[comp == k]
        n = len(xk)
        assert np.all(np.abs(xk.mean(0) - m[k]) < 4 * s[k] / math.sqrt(n))
        assert np.all(np.abs(xk.std(0) - s[k]) < 4 * s[k] / math.sqrt(2 * n))


def test_two_pixel_data_lies_in_its_ranges_and_scaling_is_affine():
    key = jax.random.key(3)
    raw = np.asarray(toy.sample("two_pixels", key, N))
    scaled = np.asarray(toy.sample("two_pixels_scaled", key, N))
    assert raw.min() >= 0.0 and raw.max() <= 255.0
    assert scaled.min() >= -1.0 and scaled.max() <= 1.0
    np.testing.assert_allclose(scaled, raw / 127.5 - 1.0, atol=1e-5)
    # Densities transform with the Jacobian of x -> x / 127.5 - 1 (two dimensions).
    lp_raw = toy.log_prob("two_pixels", raw[:100])
    lp_scaled = toy.log_prob("two_pixels_scaled", scaled[:100])
    np.testing.assert_allclose(lp_scaled, lp_raw + 2 * math.log(127.5), rtol=1e-4, atol=1e-4)


GRIDS = {  # (low, high, cells per axis): boxes holding all but a negligible mass
    "8gaussians": (-3.0, 3.0, 600),
    "25gaussians": (-2.5, 2.5, 500),
    "checkerboard": (-2.5, 2.5, 500),
    "two_pixels": (0.0, 255.0, 255),
    "two_pixels_scaled": (-1.0, 1.0, 255),
}


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_log_prob_integrates_to_one_on_a_grid(name):
    lo, hi, cells = GRIDS[name]
    h = (hi - lo) / cells
    c = lo + h * (np.arange(cells) + 0.5)  # midpoint rule
    grid = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    total = float(jnp.sum(jnp.exp(toy.log_prob(name, grid)))) * h * h
    assert total == pytest.approx(1.0, abs=2e-3)


def test_log_prob_equals_the_mixture_formula_in_float64():
    w, m, s = toy.mixture("8gaussians")
    x = np.array([[2.0, 0.05], [1.3, 1.5], [0.0, 0.0]])
    dens = sum(w[k] * np.exp(-((x - m[k]) ** 2).sum(-1) / (2 * s[k] ** 2)) / (2 * np.pi * s[k] ** 2)
               for k in range(8))
    np.testing.assert_allclose(np.asarray(toy.log_prob("8gaussians", x)), np.log(dens), rtol=1e-5)


def test_checkerboard_samples_fill_the_black_squares_evenly():
    x = np.asarray(toy.sample("checkerboard", jax.random.key(1), N))
    assert np.all(np.isfinite(np.asarray(toy.log_prob("checkerboard", x))))
    cell = (np.floor(x[:, 0]) + 2) * 4 + (np.floor(x[:, 1]) + 2)
    counts = np.bincount(cell.astype(int), minlength=16)
    black = counts[counts > 0]
    assert len(black) == 8 and np.all(np.abs(black / N - 1 / 8) < 4 * math.sqrt(1 / 8 * 7 / 8 / N))
    assert float(toy.log_prob("checkerboard", np.array([[0.5, 1.5]]))[0]) == -np.inf


def test_swiss_roll_follows_the_scaled_spiral():
    x = np.asarray(toy.sample("swiss_roll", jax.random.key(2), N), np.float64)
    r = np.linalg.norm(x, axis=1) * 5  # ~ s in [1.5 pi, 4.5 pi], blurred by unit noise
    assert 1.5 * np.pi - 4 < r.min() and r.max() < 4.5 * np.pi + 4
    assert abs(r.mean() - 3 * np.pi) < 0.2


def test_sampling_is_a_pure_function_of_the_key():
    a = toy.sample("25gaussians", jax.random.key(7), 10)
    np.testing.assert_array_equal(a, toy.sample("25gaussians", jax.random.key(7), 10))
    assert not np.array_equal(a, toy.sample("25gaussians", jax.random.key(8), 10))
    assert a.shape == (10, 2) and a.dtype == jnp.float32


def test_unknown_names_and_sets_without_a_density_raise():
    with pytest.raises(ValueError, match="'swiss_roll' has no closed-form density"):
        toy.log_prob("swiss_roll", np.zeros((1, 2)))
    with pytest.raises(ValueError, match="'checkerboard' is not a Gaussian mixture"):
        toy.mixture("checkerboard")
    with pytest.raises(ValueError, match="unknown toy dataset 'moons'; known: 25gaussians"):
        toy.sample("moons", jax.random.key(0), 4)
    with pytest.raises(ValueError, match=r"shape \(..., 2\)"):
        toy.log_prob("8gaussians", np.zeros((4, 3)))


def test_mlp_for_toy_data_embeds_noise_labels_and_conditions():
    from diffjax.models.layers import sinusoidal_embedding
    from diffjax.models.mlp import MLP
    emb = np.asarray(sinusoidal_embedding(jnp.array([0.0, 3.0]), 8, freq_shift=0.0, flip_sin_to_cos=True))
    freqs = 10_000.0 ** (-np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(3 * freqs), np.sin(3 * freqs)]), rtol=1e-6)
    np.testing.assert_allclose(emb[0], [1, 1, 1, 1, 0, 0, 0, 0])

    x = toy.sample("8gaussians", jax.random.key(0), 4)
    net = MLP(hidden=16, depth=2, num_classes=3, learn_sigma=True)
    params = net.init(jax.random.key(1), x, jnp.zeros(4), y=jnp.zeros(4, jnp.int32))
    out = net.apply(params, x, jnp.full(4, 10.0), y=jnp.array([0, 1, 2, 3]))
    assert out.shape == (4, 4)
    null = net.apply(params, x, jnp.full(4, 10.0))  # no labels: the null label num_classes
    np.testing.assert_allclose(null[3], out[3], rtol=1e-6)
    assert not np.allclose(null[0], out[0])
    assert not np.allclose(net.apply(params, x, jnp.full(4, 500.0)), null)
    with pytest.raises(ValueError, match=r"MLP expects x of shape \(B, D\)"):
        net.apply(params, jnp.zeros((4, 2, 1)), jnp.zeros(4))
