"""Sample-quality metrics by one protocol (docs/evaluation.md).

- `fid`: Frechet distance, KID, Inception Score, feature statistics, uint8 conversion checks.
- `inception`: the FID Inception-v3 in Flax and its weight conversion from pytorch-fid's file.
- `mnist_classifier`: the offline MNIST classifier behind "MNIST FID" and class accuracy.
"""
from diffjax.metrics.fid import (check_images, extract_features, feature_statistics,
                                 fid_from_features, frechet_distance, inception_score,
                                 kernel_inception_distance, load_statistics, mmd2_unbiased,
                                 reference_statistics, save_statistics, to_uint8)

__all__ = ["check_images", "extract_features", "feature_statistics", "fid_from_features",
           "frechet_distance", "inception_score", "kernel_inception_distance", "load_statistics",
           "mmd2_unbiased", "reference_statistics", "save_statistics", "to_uint8"]
