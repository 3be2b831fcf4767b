"""Image operations shared by the converters and `decompose` (PIL-backed; arrays in, arrays out).

Images are uint8 [H, W, 3]; label maps uint8 [H, W]. Images resize bilinearly,
label maps with nearest neighbour (a label must never be blended into another).

`decode_photo` / `decode_labels` read images from the wild (a user's folder, `decompose`'s
inputs): EXIF orientation applied, every PIL mode brought to 8-bit RGB (or labels), and
PIL's decompression-bomb limit enforced before any pixel is decoded.
"""
from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

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


def shorter_side_centre_crop(array: np.ndarray | Image.Image, size: int, *, labels: bool = False) -> np.ndarray:
    """Resize so the shorter side is `size` (aspect kept; bilinear, or nearest for label maps),
    then take the centre size × size: torchvision's `Resize(size)` then `CenterCrop(size)`
    (the longer side is truncated, e.g. 640×480 → 170×128, crop from column 21).

    array: uint8 [H, W, 3] or label map [H, W] (or a PIL image of either); returns a
    uint8 array [size, size(, 3)].
    """
    from torchvision.transforms.v2 import functional as TF

    mode = TF.InterpolationMode.NEAREST if labels else TF.InterpolationMode.BILINEAR
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    resized = TF.resize(image, [size], interpolation=mode)
    return np.asarray(TF.center_crop(resized, [size, size]))


WHITE = (255, 255, 255)
_SIXTEEN_BIT_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")


class ImageRefused(ValueError):
    """An image over PIL's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`), refused undecoded."""


class UnreadableImage(ValueError):
    """Bytes PIL cannot identify as an image, or a truncated or corrupt image file."""


@dataclass(frozen=True)
class Photo:
    """A decoded photo: `rgb` 8-bit RGB as displayed (EXIF orientation applied), possibly
    decoded at a reduced scale (`decode_photo`'s `min_side`); `size` (width, height) in
    pixels of the full-resolution image as displayed."""

    rgb: Image.Image
    size: tuple[int, int]


@contextmanager
def _guarded_decoding() -> Iterator[None]:
    """Inside: past PIL's pixel limit, opening (or loading a frame) raises ImageRefused (PIL only
    warns between 1× and 2× the limit; that warning is taken as a refusal too, so no bomb is
    decoded); bytes that are no image, or a truncated or corrupt one, raise UnreadableImage."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ImageRefused(f"refused, not decoded: {error}") from None
    except UnidentifiedImageError:
        raise UnreadableImage("not an image (PIL cannot identify its format)") from None
    except (OSError, SyntaxError, EOFError) as error:  # PIL's ways of saying truncated or corrupt
        raise UnreadableImage(f"truncated or corrupt image ({error})") from None


def _displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) once the EXIF orientation is applied (5–8 swap the sides)."""
    orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
    width, height = image.size
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any PIL mode → 8-bit RGB. Greyscale and palette images are expanded; 16-bit greyscale
    (`I;16*`, `I`, taken as 0..65535) scaled to 0..255 (PIL's own `convert` would clip it);
    transparency (alpha, or a palette's transparent index) composited over `background`;
    CMYK converted by PIL's formula (no colour management: embedded ICC profiles are not applied)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_GREY:
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        image = Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8))
        mode = "L"
    if mode == "F":
        raise ValueError("32-bit floating-point images are not supported; save them as 8- or 16-bit")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def decode_photo(data: bytes, *, background: tuple[int, int, int] = WHITE, min_side: int | None = None) -> Photo:
    """Encoded photo (JPEG, PNG, WebP, BMP, TIFF, ...; the first frame of animated or
    multi-page files) → Photo: EXIF orientation applied, 8-bit RGB (`to_rgb`, transparency
    over `background`). `min_side`: a JPEG may be decoded at 1/2, 1/4 or 1/8 scale in the
    DCT domain (libjpeg's scaled decoding) as long as both sides stay ≥ `min_side`.

    Raises ImageRefused past PIL's decompression-bomb limit (before decoding), UnreadableImage
    for bytes that are no image or a truncated or corrupt one.
    """
    with _guarded_decoding(), Image.open(io.BytesIO(data)) as image:
        size = _displayed_size(image)
        if min_side and image.format == "JPEG":
            image.draft(None, (min_side, min_side))
        image.load()
        upright = ImageOps.exif_transpose(image)
        return Photo(to_rgb(upright, background), size)


def decode_labels(data: bytes) -> np.ndarray:
    """Encoded label map → uint8 [H, W] as displayed (EXIF orientation applied).

    Accepted: one-channel PNGs (modes 1, L, P — a palette image's indices are its labels —
    and 16-bit I;16 / I with labels ≤ 255) and RGB(A) maps whose three colour channels are
    equal. Raises ValueError for anything else (UnreadableImage for unreadable bytes),
    ImageRefused past PIL's pixel limit.
    """
    with _guarded_decoding(), Image.open(io.BytesIO(data)) as image:
        image.load()
        upright = ImageOps.exif_transpose(image)
        mode = upright.mode
        if mode in ("1", "L", "P") or mode in _SIXTEEN_BIT_GREY:
            labels = np.asarray(upright).astype(np.int64)
        elif mode in ("RGB", "RGBA"):
            channels = np.asarray(upright)[..., :3]
            if not ((channels[..., 0] == channels[..., 1]).all() and (channels[..., 1] == channels[..., 2]).all()):
                raise ValueError("a colour label map; save labels as a one-channel PNG (mode L or P, 0 = background)")
            labels = channels[..., 0].astype(np.int64)
        else:
            raise ValueError(f"label map of mode {mode}; save labels as a one-channel PNG (mode L or P, 0 = background)")
    if labels.max(initial=0) > 255 or labels.min(initial=0) < 0:
        raise ValueError(f"labels {labels.min()}..{labels.max()} do not fit 0..255 (8-bit masks)")
    return labels.astype(np.uint8)
