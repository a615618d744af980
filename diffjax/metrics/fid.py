"""FID, KID and Inception Score on features, and the sample/feature plumbing around them.

The protocol (docs/evaluation.md): samples as uint8 NHWC, features from the FID Inception's
pool3 (`inception.py`), reference statistics over the whole training split, 50,000 samples.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), with sample
  covariances (ddof=1) as in pytorch-fid. Tr (S1 S2)^{1/2} is computed from the eigenvalues of the
  symmetric PSD matrix S1^{1/2} S2 S1^{1/2} (same eigenvalues as S1 S2), which is stable where
  `scipy.linalg.sqrtm` returns complex noise for near-singular covariances.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(x, y) = (x.y / d + 1)^3, averaged
  over random subsets (100 subsets of 1,000, as in the paper's code and torch-fidelity).
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) over 10 contiguous splits,
  with p(y|x) = softmax of the 1008 logits *without* the fc bias (`pool3 @ W`), as the original
  TensorFlow code computes them.

Sharded evaluation (`diffjax.evaluate`) never gathers the samples: each batch is reduced on the
device mesh to sufficient statistics, merged across batches on the host in float64:
- FID: count, mean and centred sum of outer products per batch (`batch_moments`, two passes on
  device, so no large mean cancels in float32), merged by Chan et al.'s pairwise rule (`Moments`);
- IS: per split, the count, the sum of p(y|x) and the sum of sum_y p log p (`inception_score_sums`);
  IS_s = exp(mean sum_y p log p - sum_y p_s log p_s) with p_s the split's mean p(y|x);
- KID needs the features themselves (random subsets of all of them): only the 2048-d pool
  features are kept, in float32 (410 MB at 50,000 samples), never the images.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from diffjax import fileio

MIN_STABLE_SAMPLES = 2048  # below the feature dimension the sample covariance is singular
PROTOCOL_SAMPLES = 50_000


# ---------------------------------------------------------------------------- inputs

def to_uint8(x, tolerance: float | None = 0.1) -> np.ndarray:
    """Samples in [-1, 1] (conventions §7) -> uint8 in [0, 255], `round(127.5 (clip(x) + 1))`.

    Values slightly outside [-1, 1] are clipped; values further than `tolerance` outside mean
    the data are not in [-1, 1] at all (say [0, 255] floats) and raise. `tolerance=None` clips
    whatever comes: the protocol for model samples (as improved-diffusion and EDM save them)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1] or uint8 images, got dtype {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if tolerance is not None and (lo < -1 - tolerance or hi > 1 + tolerance):
        raise ValueError(f"expected samples in [-1, 1], got values in [{lo:.3g}, {hi:.3g}]; "
                         "images in [0, 255] should be passed as uint8, images in [0, 1] "
                         "scaled by 2 x - 1 first")
    return np.round(127.5 * (np.clip(x, -1.0, 1.0) + 1.0)).astype(np.uint8)


def check_images(images) -> np.ndarray:
    """Validate a batch of images for a feature network: uint8, `(N, H, W, C)`, C in {1, 3}."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"the FID protocol takes uint8 images in [0, 255], got dtype "
                         f"{images.dtype}; convert model samples in [-1, 1] with "
                         "diffjax.metrics.to_uint8")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images of shape (N, H, W, 1 or 3) (NHWC), got {images.shape}")
    return images


def extract_features(apply_fn: Callable, batches: Iterable, keys=("pool", "logits_unbiased"),
                     progress: bool = False) -> dict[str, np.ndarray]:
    """Run `apply_fn` (uint8 batch -> dict of arrays) over `batches`; concatenated float64 outputs."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    if progress:
        from tqdm.auto import tqdm
        batches = tqdm(batches, desc="features", unit="batch")
    for batch in batches:
        result = apply_fn(check_images(batch))
        for k in keys:
            out[k].append(np.asarray(result[k], np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


# ---------------------------------------------------------------------------- statistics

def feature_statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """`{"mu", "sigma", "n"}` of `(N, d)` features (sample covariance, ddof=1)."""
    features = np.asarray(features, np.float64)
    n, d = features.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
    _warn_if_few(n, d)
    return {"mu": features.mean(0), "sigma": np.cov(features, rowvar=False), "n": np.asarray(n)}


def _warn_if_few(n: int, d: int) -> None:
    if n < min(d, MIN_STABLE_SAMPLES):
        warnings.warn(f"FID from {n} samples is unstable and biased upwards: with fewer samples "
                      f"than the {d} feature dimensions the covariance is singular. The protocol "
                      f"uses {PROTOCOL_SAMPLES}; numbers from fewer are not comparable to papers.",
                      stacklevel=3)


def batch_moments(features, weights) -> dict:
    """Device reduction of `(B, d)` features with 0/1 `weights` (padding rows weigh 0):
    `{"n", "mean", "m2"}` with `m2 = sum_i w_i (f_i - mean)(f_i - mean)^T`. Under `jax.jit` over a
    batch-sharded `features` the sums are all-reduced over every device and host."""
    f = jnp.asarray(features, jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    n = jnp.sum(w)
    mean = jnp.sum(w[:, None] * f, axis=0) / jnp.maximum(n, 1.0)
    c = (f - mean) * w[:, None]
    return {"n": n, "mean": mean, "m2": jnp.matmul(c.T, c, precision=jax.lax.Precision.HIGHEST)}


class Moments:
    """Running count, mean and centred second moment in float64 (Chan, Golub & LeVeque 1979):
    merging batch moments in any grouping gives the statistics of all the features."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0.0, None, None

    def add(self, moments: dict) -> None:
        nb = float(np.asarray(moments["n"]))
        if nb == 0:
            return
        mb, m2b = np.asarray(moments["mean"], np.float64), np.asarray(moments["m2"], np.float64)
        if self.mean is None:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.m2 = self.m2 + m2b + np.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    def statistics(self) -> dict[str, np.ndarray]:
        """`{"mu", "sigma", "n"}` as `feature_statistics` gives them (ddof=1)."""
        n = int(round(self.n))
        if n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {n}")
        _warn_if_few(n, len(self.mean))
        return {"mu": self.mean, "sigma": self.m2 / (n - 1), "n": np.asarray(n)}


def split_ids(indices, num_samples: int, splits: int):
    """The split of `np.array_split(range(num_samples), splits)` each global index falls in."""
    bounds = np.cumsum([0] + [len(a) for a in np.array_split(np.empty(num_samples), splits)])
    return jnp.searchsorted(jnp.asarray(bounds[1:-1]), indices, side="right")


def inception_score_sums(logits, weights, split, splits: int) -> dict:
    """Device reduction for the Inception Score: per split, the count, `sum_x p(y|x)` and
    `sum_x sum_y p(y|x) log p(y|x)` (padding rows weigh 0)."""
    logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
    p = jnp.exp(logp)
    onehot = jax.nn.one_hot(split, splits, dtype=jnp.float32) * jnp.asarray(weights, jnp.float32)[:, None]
    return {"count": jnp.sum(onehot, axis=0),
            "p": jnp.matmul(onehot.T, p, precision=jax.lax.Precision.HIGHEST),
            "plogp": onehot.T @ jnp.sum(p * logp, axis=-1)}


def inception_score_from_sums(sums: dict) -> tuple[float, float]:
    """(mean, std) over splits from the summed `inception_score_sums` (float64)."""
    count = np.asarray(sums["count"], np.float64)
    if np.any(count == 0):
        raise ValueError(f"Inception Score with {len(count)} splits needs at least {len(count)} samples")
    p_y = np.asarray(sums["p"], np.float64) / count[:, None]
    entropy_y = -np.sum(np.where(p_y > 0, p_y * np.log(np.where(p_y > 0, p_y, 1.0)), 0.0), axis=1)
    scores = np.exp(np.asarray(sums["plogp"], np.float64) / count + entropy_y)
    return float(np.mean(scores)), float(np.std(scores))


def save_statistics(path, stats: dict) -> None:
    fileio.save_npz(os.fspath(path), **stats)  # atomic: an interrupted run never leaves a truncated cache


def load_statistics(path) -> dict[str, np.ndarray]:
    stats = fileio.load_npz(os.fspath(path))
    missing = {"mu", "sigma", "n"} - set(stats)
    if missing:
        raise ValueError(f"{path} is not a statistics file (missing {sorted(missing)})")
    return stats


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """d^2((mu1, S1), (mu2, S2)) = ||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^{1/2}."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    sqrt_s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = sqrt_s1 @ s2 @ sqrt_s1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(np.clip(eig, 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def fid_from_features(features1, features2) -> float:
    a, b = feature_statistics(features1), feature_statistics(features2)
    return frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"])


def polynomial_kernel(x, y, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(x, y, kernel: Callable = polynomial_kernel) -> float:
    """Unbiased MMD^2 (Gretton et al. 2012, eq. 3): off-diagonal means of k(x, x) and k(y, y)
    minus twice the mean of k(x, y)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2.0 * kxy.mean())


def kernel_inception_distance(features1, features2, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over random subsets drawn without
    replacement (`subset_size` is capped at the smaller set)."""
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(x[rng.choice(len(x), m, replace=False)],
                            y[rng.choice(len(y), m, replace=False)]) for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` contiguous splits of exp(E_x KL(p(y|x) || p(y)))."""
    logits = np.asarray(logits, np.float64)
    if len(logits) < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, "
                         f"got {len(logits)}")
    logp = logits - logits.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    scores = []
    for part in np.array_split(logp, splits):
        log_py = np.log(np.exp(part).mean(0))
        scores.append(np.exp(np.mean(np.sum(np.exp(part) * (part - log_py), axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------- reference

def reference_statistics(feature_fn: Callable, batches: Callable[[], Iterable], cache_path,
                         keep_features: bool = False, progress: bool = True, write: bool = True) -> dict:
    """Statistics of the reference set (for FID: the whole training split, see
    `diffjax.evaluate.data_batches`), read from `cache_path` if it exists, else computed from
    `batches()` with `feature_fn` and written there (npz with `mu`, `sigma`, `n`, and the pool
    features themselves when `keep_features`, which KID needs); `write=False` on all processes
    but one of a multi-host run."""
    cache_path = Path(cache_path)
    if cache_path.is_file():
        stats = load_statistics(cache_path)
        if not keep_features or "features" in stats:
            return stats
    feats = extract_features(feature_fn, batches(), keys=("pool",), progress=progress)["pool"]
    stats = feature_statistics(feats)
    if keep_features:
        stats["features"] = feats.astype(np.float32)
    if write:
        save_statistics(cache_path, stats)
    return stats
