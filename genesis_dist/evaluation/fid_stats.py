"""FID of a checkpoint's samples against cached test-set statistics, fast when samples are few.

pytorch-fid computes `Tr((S1 S2)^½)` with scipy's `sqrtm` of a D×D matrix (D = 2048): 20–80 s
on two CPU cores, whatever the number of images. When the samples number n < D, their
covariance `S1 = Xᵀ X / (n − 1)` (X the centred features `[n, D]`) has rank < n, and the
non-zero eigenvalues of `S1 S2` are those of the small symmetric matrix
`M = X S2 Xᵀ / (n − 1)` `[n, n]` (eigenvalues of AB and BA agree). `S1 S2` is similar to
the PSD matrix `S1^½ S2 S1^½`, so `Tr((S1 S2)^½) = Σ √λ_i(M)`: the same quantity, exact,
in milliseconds. At n ≥ D this falls back to pytorch-fid's `sqrtm` (`fid_from_stats(method="sqrtm")`).

Test-set statistics are computed once per test set and cached as `.npz` under any fsspec
URL, keyed by a caller-given string (the data manifest's sha256): `cached_statistics`.
"""
from __future__ import annotations

import io
import re
from collections.abc import Iterable

import numpy as np
import torch

from ..metrics import feature_statistics, fid_from_stats
from ..metrics.fid import DEFAULT_NUM_IMAGES, InceptionFeatures
from ..storage import filesystem, join


def trace_sqrt_product_low_rank(features: np.ndarray, sigma: np.ndarray) -> float:
    """`Tr((S1 · sigma)^½)` where S1 is the unbiased covariance of `features` `[n, D]` and
    `sigma` `[D, D]` is any PSD covariance; exact, O(n·D² + n³)."""
    centred = features - features.mean(axis=0, keepdims=True)
    small = centred @ sigma @ centred.T / (features.shape[0] - 1)  # [n, n], symmetric PSD
    eigenvalues = np.linalg.eigvalsh((small + small.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def fid_against_stats(features: torch.Tensor | np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> float:
    """FID between the Inception features `[n, D]` of model samples and reference statistics
    (`mu` `[D]`, `sigma` `[D, D]`, e.g. from `cached_statistics`).

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


def _cache_file(cache_url: str, key: str, num_images: int) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]+", key):
        raise ValueError(f"statistics cache key must be [A-Za-z0-9._-]+ (e.g. a sha256); got {key!r}")
    return join(cache_url, f"fid_stats_{key}_n{num_images}.npz")


def cached_statistics(
    key: str,
    batches: Iterable[torch.Tensor],
    cache_url: str,
    features: InceptionFeatures | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    storage_options: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[2048]` and covariance `[2048, 2048]` of the first `num_images` images of
    `batches` (float `[b, 3, H, W]` in [0, 1]), computed once and cached.

    The cache is `<cache_url>/fid_stats_<key>_n<num_images>.npz` (any fsspec URL or local
    path); `key` names the image set, e.g. the sha256 of the test split's manifest. On a
    cache hit `batches` is not iterated and no network is loaded.
    """
    fs, path = filesystem(_cache_file(cache_url, key, num_images), storage_options)
    if fs.exists(path):
        with fs.open(path, "rb") as f:
            stored = np.load(io.BytesIO(f.read()))
            return stored["mu"], stored["sigma"]
    features = features or InceptionFeatures()
    image_features = features.of_batches(batches, num_images)
    mu, sigma = feature_statistics(image_features)
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma, num_images=image_features.shape[0])
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(buffer.getvalue())
    return mu, sigma
