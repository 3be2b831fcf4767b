"""Segmentation scores of predicted label maps against ground truth, per image, in float64.

Label maps are integer tensors `[B, H, W]` (any trailing shape works); ground-truth label 0
is the background. "Foreground-only" (-FG) scores use only pixels whose ground-truth label
is not 0: ground-truth segments are the objects and predicted segments are cut down to
those pixels. An image without foreground pixels has no -FG score: it gets NaN, and
`mean_ignoring_nan` averages the rest and counts it as excluded.

Every score comes from one contingency table per image (pixel counts of each
(true segment, predicted segment) pair), built for the whole batch with one `bincount`.
"""
from __future__ import annotations

import math

import torch


def _contingency(true: torch.Tensor, pred: torch.Tensor, foreground_only: bool) -> torch.Tensor:
    """`[B, T, P]` int64 pixel counts n_ij of ground-truth segment i and predicted segment j.

    Labels are renumbered over the whole batch (so sparse or large label values cost
    nothing); rows and columns of segments absent from an image are all zero.
    """
    if true.shape != pred.shape or true.dim() < 2:
        raise ValueError(f"label maps must both be [B, H, W]; got true {tuple(true.shape)}, pred {tuple(pred.shape)}")
    if true.is_floating_point() or pred.is_floating_point():
        raise TypeError(f"label maps must be integer tensors; got {true.dtype} and {pred.dtype}")
    batch = true.shape[0]
    true, pred = true.reshape(batch, -1), pred.to(true.device).reshape(batch, -1)
    valid = true != 0 if foreground_only else torch.ones_like(true, dtype=torch.bool)
    _, true_index = torch.unique(true, return_inverse=True)
    _, pred_index = torch.unique(pred, return_inverse=True)
    num_true = int(true_index.max()) + 1 if true.numel() else 1
    num_pred = int(pred_index.max()) + 1 if pred.numel() else 1
    image = torch.arange(batch, device=true.device).unsqueeze(1).expand_as(true_index)
    cell = (image * num_true + true_index) * num_pred + pred_index
    counts = torch.bincount(cell[valid], minlength=batch * num_true * num_pred)
    return counts.view(batch, num_true, num_pred)


def _pairs(counts: torch.Tensor) -> torch.Tensor:
    """n choose 2, exact in int64."""
    return counts * (counts - 1) // 2


def ari(true: torch.Tensor, pred: torch.Tensor, foreground_only: bool = True) -> torch.Tensor:
    """Adjusted Rand index (Hubert & Arabie 1985) of each image, float64 `[B]`.

    Args:
        true: `[B, H, W]` integer ground-truth labels, 0 = background.
        pred: `[B, H, W]` integer predicted labels (e.g. `masks_to_labels`).
        foreground_only: ARI-FG, over ground-truth foreground pixels only.

    Returns NaN for an image with no pixels to score (no foreground under ARI-FG), and
    1.0 where both partitions are trivially identical (one segment each, all singletons,
    or a single pixel), as scikit-learn does.
    """
    table = _contingency(true, pred, foreground_only)
    index = _pairs(table).sum(dim=(1, 2))
    true_pairs = _pairs(table.sum(dim=2)).sum(dim=1)
    pred_pairs = _pairs(table.sum(dim=1)).sum(dim=1)
    num_pixels = table.sum(dim=(1, 2))
    all_pairs = _pairs(num_pixels)
    expected = true_pairs.double() * pred_pairs.double() / all_pairs.double()
    maximum = (true_pairs.double() + pred_pairs.double()) / 2
    score = (index.double() - expected) / (maximum - expected)
    # maximum == expected only when both partitions are all-one-segment or all-singletons
    trivial = (true_pairs == pred_pairs) & ((true_pairs == 0) | (true_pairs == all_pairs))
    score = torch.where(trivial, torch.ones_like(score), score)
    return torch.where(num_pixels == 0, torch.full_like(score, math.nan), score)


def segmentation_covering(
    true: torch.Tensor, pred: torch.Tensor, foreground_only: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation covering and mean segmentation covering of each image, float64 `[B]` each.

    GENESIS Appendix C, Eq. 11: `SC = Σ_R |R| max_R' IoU(R, R') / Σ_R |R|` over ground-truth
    segments R and predicted segments R'; Eq. 12: mSC, the unweighted mean of
    `max_R' IoU(R, R')` over the non-empty R.

    Args:
        true: `[B, H, W]` integer ground-truth labels, 0 = background.
        pred: `[B, H, W]` integer predicted labels.
        foreground_only: SC-FG / mSC-FG: ground-truth segments are the objects (label > 0)
            and predicted segments are restricted to foreground pixels.

    Returns `(sc, msc)`; NaN for an image with no pixels to score.
    """
    table = _contingency(true, pred, foreground_only).double()
    true_sizes = table.sum(dim=2)  # |R|, [B, T]
    pred_sizes = table.sum(dim=1)  # |R'|, [B, P]
    union = true_sizes.unsqueeze(2) + pred_sizes.unsqueeze(1) - table
    iou = torch.where(union > 0, table / union.clamp_min(1), torch.zeros_like(table))
    best = iou.max(dim=2).values  # max_R' IoU(R, R'), [B, T]
    present = (true_sizes > 0).double()
    sc = (true_sizes * best).sum(dim=1) / true_sizes.sum(dim=1)  # Eq. 11
    msc = (present * best).sum(dim=1) / present.sum(dim=1)  # Eq. 12
    return sc, msc


def segmentation_scores(true: torch.Tensor, pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """All six per-image scores, float64 `[B]` each: `ari_fg`, `sc_fg`, `msc_fg` (foreground
    only, NaN without foreground) and `ari`, `sc`, `msc` (all pixels)."""
    scores = {}
    for suffix, foreground_only in (("_fg", True), ("", False)):
        scores["ari" + suffix] = ari(true, pred, foreground_only)
        scores["sc" + suffix], scores["msc" + suffix] = segmentation_covering(true, pred, foreground_only)
    return scores


def mean_ignoring_nan(values: torch.Tensor) -> tuple[float, int]:
    """(mean over the non-NaN entries, number of NaN entries excluded) of per-image scores `[B]`.

    The mean is NaN when every entry is NaN.
    """
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    kept = ~torch.isnan(values)
    mean = float(values[kept].mean()) if bool(kept.any()) else math.nan
    return mean, int((~kept).sum())


def masks_to_labels(log_masks: torch.Tensor) -> torch.Tensor:
    """Predicted label map: the slot with the largest mask at each pixel.

    Args:
        log_masks: `[B, K, 1, H, W]` (log) mixture masks; any monotone transform of the
            masks gives the same answer.

    Returns `[B, H, W]` int64 slot indices in [0, K).
    """
    if log_masks.dim() != 5 or log_masks.shape[2] != 1:
        raise ValueError(f"log_masks must be [B, K, 1, H, W]; got {tuple(log_masks.shape)}")
    return log_masks.argmax(dim=1)[:, 0]


def slot_count_stats(num_slots_used: torch.Tensor, true_num_components: torch.Tensor) -> dict[str, float]:
    """How well a flexible-slot model's number of used slots tracks the scene.

    Args:
        num_slots_used: `[B]` slots each image used (e.g. `ModelOutput.num_slots`).
        true_num_components: `[B]` ground-truth components of each image, counted the same
            way as slots (e.g. objects + 1 for the background).

    Returns `{"mean_slots": mean used, "mae": mean |used - true|}`, in slots.
    """
    used = torch.as_tensor(num_slots_used).double().flatten()
    true = torch.as_tensor(true_num_components).double().flatten().to(used.device)
    if used.shape != true.shape:
        raise ValueError(f"need one count per image; got {tuple(used.shape)} and {tuple(true.shape)}")
    return {"mean_slots": float(used.mean()), "mae": float((used - true).abs().mean())}


def foreground_labels(masks: torch.Tensor, background_entities: int | None) -> torch.Tensor:
    """Label maps `[B, H, W]` with labels `0 .. background_entities−1` (e.g. ObjectsRoom's sky,
    floor and walls) merged into 0, the background the -FG scores leave out."""
    if not background_entities or background_entities <= 1:
        return masks
    return torch.where(masks < background_entities, torch.zeros_like(masks), masks)
