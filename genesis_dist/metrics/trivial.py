"""Scores of the trivial segmentations, to print beside a model's: without them an ARI-FG
figure can't be read (putting every foreground pixel in one segment scores ARI-FG 1 on an
image with one object).

Two answers, both pure functions of the ground-truth label maps `[B, H, W]` (0 = background):
- one slot: every pixel in one segment;
- foreground/background split: the ground-truth foreground as one segment, the background as
  another (on foreground pixels it is the one-slot answer, so it has the same ARI-FG and mSC-FG).
And, given the images, a third that needs no learning but does look at the pixels:
- colour: one segment per distinct 8-bit RGB colour. On generated scenes of uniformly
  coloured shapes it is nearly perfect, so it bounds what a colour cue alone explains.
"""
from __future__ import annotations

import torch

from .segmentation import ari, mean_ignoring_nan, segmentation_covering

TRIVIAL_ANSWERS = ("one_slot", "fg_bg")


def one_slot_labels(true: torch.Tensor) -> torch.Tensor:
    """The answer that puts every pixel in one segment: zeros like `true` `[B, H, W]` (int64)."""
    return torch.zeros_like(true, dtype=torch.long)


def fg_bg_labels(true: torch.Tensor) -> torch.Tensor:
    """The ground-truth foreground/background split: 1 where `true` `[B, H, W]` is not 0, else 0."""
    return (true != 0).long()


def colour_labels(images: torch.Tensor) -> torch.Tensor:
    """One segment per distinct colour: `images` `[B, 3, H, W]` in [0, 1], rounded to 8 bits,
    → label maps `[B, H, W]` (int64; numbering per image is arbitrary)."""
    rgb = (images.clamp(0, 1) * 255).round().long()
    code = (rgb[:, 0] * 256 + rgb[:, 1]) * 256 + rgb[:, 2]
    return torch.stack([torch.unique(c, return_inverse=True)[1] for c in code])


def trivial_answer_scores(true: torch.Tensor, images: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """Mean scores of each trivial answer over the images `true` `[B, H, W]` (integer labels).

    Returns `{answer: {"ari_fg", "ari", "msc_fg"}}` for answer in TRIVIAL_ANSWERS (and
    "colour" when `images` `[B, 3, H, W]` are given), each the mean over images (-FG scores
    ignore images without foreground, as the models' do).
    """
    if true.is_floating_point():
        raise TypeError(f"label maps must be integer tensors; got {true.dtype}")
    answers = {"one_slot": one_slot_labels(true), "fg_bg": fg_bg_labels(true)}
    if images is not None:
        answers["colour"] = colour_labels(images)
    scores = {}
    for name, pred in answers.items():
        _, msc_fg = segmentation_covering(true, pred, foreground_only=True)
        scores[name] = {
            "ari_fg": mean_ignoring_nan(ari(true, pred, foreground_only=True))[0],
            "ari": mean_ignoring_nan(ari(true, pred, foreground_only=False))[0],
            "msc_fg": mean_ignoring_nan(msc_fg)[0],
        }
    return scores
