"""FID of a checkpoint's samples against cached test-set statistics, fast when samples are few.

pytorch-fid computes `Tr((S1 S2)^½)` with scipy's `sqrtm` of a D×D matrix (D = 2048): 20–80 s
on two CPU cores, whatever the number of images. When the samples number n < D, their
covariance `S1 = Xᵀ X / (n − 1)` (X the centred features `[n, D]`) has rank < n, and the
non-zero eigenvalues of `S1 S2` are those of the small symmetric matrix
`M = X S2 Xᵀ / (n − 1)` `[n, n]` (eigenvalues of AB and BA agree). `S1 S2` is similar to
the PSD matrix `S1^½ S2 S1^½`, so `Tr((S1 S2)^½) = Σ √λ_i(M)`: the same quantity, exact,
in milliseconds. At n ≥ D this falls back to pytorch-fid's `sqrtm` (`fid_from_stats(method="sqrtm")`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..metrics import feature_statistics, fid_from_stats


def trace_sqrt_product_low_rank(features: np.ndarray, sigma: np.ndarray) -> float:
    """`Tr((S1 · sigma)^½)` where S1 is the unbiased covariance of `features` `[n, D]` and
    `sigma` `[D, D]` is any PSD covariance; exact, O(n·D² + n³)."""
    centred = features - features.mean(axis=0, keepdims=True)
    small = centred @ sigma @ centred.T / (features.shape[0] - 1)  # [n, n], symmetric PSD
    eigenvalues = np.linalg.eigvalsh((small + small.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def fid_against_stats(features: torch.Tensor | np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID between the Inception features `[n, D]` of model samples and reference statistics
    (`mu` `[D]`, `sigma` `[D, D]`, e.g. from `metrics.cached_statistics`).

    `|mu1 − mu|² + Tr(S1) + Tr(sigma) − 2 Tr((S1 sigma)^½)`, float64. For n < D the trace
    of the square root comes from an n×n eigenproblem (see module docstring); for n ≥ D it
    is pytorch-fid's `sqrtm` computation, so paper-size evaluations (10,000 samples) match
    `python -m pytorch_fid`.
    """
    features = np.asarray(features, dtype=np.float64)
    mu, sigma = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need features [n >= 2, D]; got {features.shape}")
    if features.shape[0] >= features.shape[1]:
        # pytorch-fid's own sqrtm: paper-size numbers match `python -m pytorch_fid` exactly.
        return fid_from_stats(*feature_statistics(features), mu, sigma, method="sqrtm")
    mu1 = features.mean(axis=0)
    centred = features - mu1
    trace_s1 = float((centred**2).sum() / (features.shape[0] - 1))
    diff = mu1 - mu
    return float(diff @ diff + trace_s1 + np.trace(sigma) - 2.0 * trace_sqrt_product_low_rank(features, sigma))
