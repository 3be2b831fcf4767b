"""Evaluation metrics: segmentation (ARI, SC, mSC), FID, representation probes.

Pure functions of arrays and tensors: no storage, no Ray.

Importing this package is light: pytorch-fid and scipy load on first FID use.
"""
from .fid import (
    InceptionFeatures,
    WeightsMissingError,
    feature_statistics,
    fid_from_features,
    fid_from_stats,
    weights_path,
)
from .images import quantise, to_uint8
from .probes import probe_accuracy
from .segmentation import (
    ari,
    foreground_labels,
    masks_to_labels,
    mean_ignoring_nan,
    segmentation_covering,
    segmentation_scores,
    slot_count_stats,
)

__all__ = [
    "InceptionFeatures",
    "WeightsMissingError",
    "ari",
    "feature_statistics",
    "fid_from_features",
    "fid_from_stats",
    "foreground_labels",
    "masks_to_labels",
    "mean_ignoring_nan",
    "probe_accuracy",
    "quantise",
    "segmentation_covering",
    "segmentation_scores",
    "slot_count_stats",
    "to_uint8",
    "weights_path",
]
