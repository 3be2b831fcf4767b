"""Image operations shared by the converters and `decompose` (PIL-backed; arrays in, arrays out).

Images are uint8 [H, W, 3]; label maps uint8 [H, W]. Images resize bilinearly,
label maps with nearest neighbour (a label must never be blended into another).
"""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from ...storage import filesystem, storage_errors


def read_bytes(url: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """Contents of a local path or fsspec URL."""
    fs, path = filesystem(url, storage_options)
    with storage_errors(url):
        return fs.cat_file(path)


def decode_rgb(data: bytes) -> np.ndarray:
    """Encoded image (PNG, JPEG, ...) → uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def decode_any(data: bytes) -> np.ndarray:
    """Encoded image → array in its own mode (e.g. [H,W] for 8/16-bit grey, [H,W,4] for RGBA)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def resize(array: np.ndarray, width: int, height: int, *, labels: bool = False) -> np.ndarray:
    """Resize to width × height: bilinear for images, nearest for label maps (`labels=True`)."""
    if array.shape[1] == width and array.shape[0] == height:
        return array
    method = Image.NEAREST if labels else Image.BILINEAR
    return np.asarray(Image.fromarray(array).resize((width, height), method))


def crop(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """array[top:top+height, left:left+width], checked to lie inside the image."""
    if top < 0 or left < 0 or top + height > array.shape[0] or left + width > array.shape[1]:
        raise ValueError(f"crop {height}x{width}+{top}+{left} outside a {array.shape[0]}x{array.shape[1]} image")
    return array[top: top + height, left: left + width]


def shorter_side_centre_crop(array: np.ndarray, size: int, *, labels: bool = False) -> np.ndarray:
    """Resize so the shorter side is `size` (aspect kept; bilinear, or nearest for label maps),
    then take the centre size × size: torchvision's `Resize(size)` then `CenterCrop(size)`
    (the longer side is truncated, e.g. 640×480 → 170×128, crop from column 21).

    array: uint8 [H, W, 3] or label map [H, W]; returns the same kind at [size, size(, 3)].
    """
    from torchvision.transforms.v2 import functional as TF

    mode = TF.InterpolationMode.NEAREST if labels else TF.InterpolationMode.BILINEAR
    resized = TF.resize(Image.fromarray(array), [size], interpolation=mode)
    return np.asarray(TF.center_crop(resized, [size, size]))
