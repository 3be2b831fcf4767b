"""An "own folder" of photographs built from the real samples in tests/fixtures: the APC
frame, both ShapeStacks views and the Sketchy JPEGs, nested in subfolders, plus the copies
a user's folder holds (EXIF-rotated, CMYK, 16-bit, palette, RGBA, WebP, BMP, TIFF) and the
files it should not trip on (a truncated JPEG, a text file named .jpg, notes, hidden files).

Each image comes with what `tools/shard.py images` must make of it at a given size, derived
here independently of the converter: numpy for the mode conversions and the EXIF rotation,
PIL's bilinear resize to (floor(long · size / short), size) and a centre crop at
round((long − size) / 2) (torchvision's Resize + CenterCrop convention), from a full-resolution
decode. JPEGs are decoded at a reduced DCT scale by the converter, so theirs is compared with
a tolerance; every lossless format exactly.
"""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # small real raw samples (see its README)
from genesis_dist.data.tfrecord import iter_records, parse_example

SHAPESTACKS = FIXTURES / "shapestacks" / "recordings" / "env_ccs-easy-h=5-vcom=2-vpsf=0-v=1"
APC_FRAME = FIXTURES / "apc" / "scene-0000" / "frame-000000.color.png"
EXIF_ORIENTATION = 0x0112
BAD = {"broken/truncated.jpg": "truncated or corrupt image", "broken/readme.jpg": "not an image"}


@dataclass
class Expected:
    """What one image must become: `pixels` the full-resolution RGB as displayed (uint8
    [H, W, 3]); `exact` False for JPEGs (compared with a tolerance)."""

    pixels: np.ndarray
    exact: bool

    def at(self, size: int) -> np.ndarray:
        return centre_square(self.pixels, size)


def centre_square(pixels: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Shorter side → `size` (long side floor(long · size / short)), centre size × size."""
    height, width = pixels.shape[:2]
    if height <= width:
        new = (int(size * width / height), size)
    else:
        new = (size, int(size * height / width))
    resized = np.asarray(Image.fromarray(pixels).resize(new, Image.NEAREST if nearest else Image.BILINEAR))
    top, left = int(round((new[1] - size) / 2)), int(round((new[0] - size) / 2))
    return resized[top: top + size, left: left + size]


def rgb_of(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def sketchy_jpegs() -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of the front cameras in every record of the real Sketchy excerpt."""
    found = []
    for step, record in enumerate(iter_records(str(FIXTURES / "sketchy" / "example_data.tfrecords"))):
        features = parse_example(record)
        for camera in ("front_left", "front_right"):
            found.append((f"t{step}_{camera}.jpg", features[f"pixels/basket_{camera}"][0]))
    return found


def build_own_folder(root: Path) -> dict[str, Expected]:
    """Write the own folder under `root`; returns {relative path: Expected} of its good images."""
    expected: dict[str, Expected] = {}

    def put(relative: str) -> Path:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    shutil.copy(APC_FRAME, put("lab/apc/frame.png"))
    apc = rgb_of(APC_FRAME)
    expected["lab/apc/frame.png"] = Expected(apc, True)
    views = {}
    for camera in (1, 2):
        source = SHAPESTACKS / f"rgb-w=0-f=0-l=0-c=original-cam_{camera}-mono-0.png"
        shutil.copy(source, put(f"lab/stacks/cam{camera}.png"))
        views[camera] = rgb_of(source)
        expected[f"lab/stacks/cam{camera}.png"] = Expected(views[camera], True)
    jpegs = sketchy_jpegs()
    for name, data in jpegs:
        put(f"robot/episode_0/{name}").write_bytes(data)
        expected[f"robot/episode_0/{name}"] = Expected(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), False)

    # A camera held sideways: the pixels stored landscape, EXIF orientation 6 (rotate 90° clockwise to display).
    stored = np.asarray(Image.open(io.BytesIO(jpegs[0][1])).convert("RGB"))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(stored).save(put("phone/rotated.jpg"), quality=95, exif=exif)
    saved = np.asarray(Image.open(root / "phone/rotated.jpg").convert("RGB"))  # re-encoded pixels, still stored landscape
    expected["phone/rotated.jpg"] = Expected(np.rot90(saved, k=-1).copy(), False)

    # Print-shop CMYK (TIFF, lossless): PIL's RGB → CMYK is exact to invert (K = 0).
    Image.fromarray(apc).convert("CMYK").save(put("print/cmyk.tif"))
    expected["print/cmyk.tif"] = Expected(apc, True)
    # A 16-bit greyscale scan: v · 257 (0..65535) must come back as v, not clipped to 255.
    grey = np.asarray(Image.fromarray(views[1]).convert("L"))
    Image.fromarray((grey.astype(np.uint16) * 257)).save(put("scans/grey16.png"))
    expected["scans/grey16.png"] = Expected(np.repeat(grey[..., None], 3, axis=2), True)
    # A palette PNG: the palette's colours.
    palette = Image.fromarray(views[2]).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette.save(put("scans/palette.png"))
    expected["scans/palette.png"] = Expected(np.asarray(palette.convert("RGB")), True)
    # RGBA: the left half fully transparent → the background colour (white by default).
    alpha = np.zeros(apc.shape[:2], dtype=np.uint8)
    alpha[:, apc.shape[1] // 2:] = 255
    Image.fromarray(np.dstack([apc, alpha])).save(put("cutouts/rgba.png"))
    over_white = apc.copy()
    over_white[alpha == 0] = 255
    expected["cutouts/rgba.png"] = Expected(over_white, True)
    # The other formats, lossless.
    Image.fromarray(views[1]).save(put("formats/view.webp"), lossless=True)
    Image.fromarray(views[2]).save(put("formats/view.bmp"))
    Image.fromarray(views[1]).save(put("formats/view.TIFF"))
    for name, view in (("formats/view.webp", views[1]), ("formats/view.bmp", views[2]), ("formats/view.TIFF", views[1])):
        expected[name] = Expected(view, True)

    # What must be skipped and named, and what must be left out silently.
    put("broken/truncated.jpg").write_bytes(jpegs[1][1][: len(jpegs[1][1]) // 2])
    put("broken/readme.jpg").write_text("this is a text file named .jpg\n")
    put("notes.txt").write_text("camera log\n")
    shutil.copy(APC_FRAME, put(".thumbnails/frame.png"))
    put("lab/._frame.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return expected


def band_labels(height: int, width: int, bands: int) -> np.ndarray:
    """A label map [H, W] of horizontal bands 1..bands over background 0."""
    labels = np.zeros((height, width), dtype=np.uint8)
    step = height // (bands + 2)
    for band in range(1, bands + 1):
        labels[band * step: (band + 1) * step, width // 4: 3 * width // 4] = band
    return labels
