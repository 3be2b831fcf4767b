"""The one quantiser from float images to 8-bit pixels, shared by FID and PNG writing."""
from __future__ import annotations

import torch


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] (any shape) → uint8 in [0, 255], as saving a PNG does:
    clamp, scale by 255, round to nearest."""
    if images.dtype == torch.uint8:
        return images
    return (images.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def quantise(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → float32 in [0, 1] restricted to the 256 levels of a PNG."""
    return to_uint8(images).float().div(255.0)
