"""Your own images: any folder of photos (local or any fsspec URL), read recursively.

    python tools/shard.py images SOURCE --out URL --size 64 [--masks MASKS] [--split 0.9,0.05,0.05]

What is read: every file under SOURCE whose name ends in .jpg, .jpeg, .png, .webp, .bmp,
.tif or .tiff (any case), in any depth of subfolders; names starting with "." (hidden
files and folders, macOS `._*` resource forks) are left out, as are files of other types
(counted in `ImageFolder.describe`).

What each image becomes (`convert`): EXIF orientation applied; 8-bit RGB (greyscale and
palette expanded, 16-bit greyscale scaled, transparency over `background`, CMYK by PIL's
formula); the shorter side resized to `size` (bilinear, antialiased) and the centre
size × size kept — the crop of the APC converter and `decompose`. Large JPEGs are decoded
at a reduced DCT scale that keeps both sides ≥ 2 × size (libjpeg's scaled decoding, the
final resize still antialiasing); with masks every image is decoded at full resolution.
Images past PIL's decompression-bomb limit are refused before decoding.

Masks (optional): a parallel folder of label PNGs, `MASKS/<relative path with .png>` for
`SOURCE/<relative path>`, 0 = background; cropped and resized like the image with
nearest neighbour. An image without a mask is a bad source (skipped or fatal by
--on-error); a mask whose size differs from its image stops the conversion
(MismatchError names both).

Splits: a file's split is a function of its relative path alone (sha256 → [0, 1), cut at
the cumulative fractions), so converting again after adding files keeps every earlier
file in its split. Within a split, files are in relative-path order.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

from PIL import ImageColor

from ..errors import MismatchError, SourceError
from ...storage import filesystem, is_remote, join, storage_errors
from .base import Converter, DatasetInfo, ErrorHandler, Sample, SourceItem, safe_key, sources_digest
from .imaging import WHITE, decode_labels, decode_photo, read_bytes, shorter_side_centre_crop

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLIT = (0.9, 0.05, 0.05)
DEFAULT_K = 7
DEFAULT_BACKGROUND = "white"


def split_of(relative: str, fractions: tuple[float, ...]) -> str:
    """The split ("train", "val" or "test") of the file at POSIX `relative` path: sha256 of
    the path as a number u in [0, 1), compared with the cumulative `fractions`."""
    u = int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big") / 2.0 ** 64
    bound = 0.0
    for name, fraction in zip(SPLIT_NAMES, fractions):
        bound += fraction
        if u < bound:
            return name
    return next(name for name, fraction in zip(reversed(SPLIT_NAMES), reversed(fractions)) if fraction > 0)


def parse_split(text: str) -> tuple[float, float, float]:
    """"0.9,0.05,0.05" → (0.9, 0.05, 0.05): three fractions ≥ 0 summing to 1, train > 0.
    Raises ValueError (one line)."""
    try:
        fractions = tuple(float(part) for part in text.split(","))
    except ValueError:
        fractions = ()
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise ValueError(f"--split {text}: give three fractions train,val,test ≥ 0 that sum to 1, e.g. 0.9,0.05,0.05")
    return fractions  # type: ignore[return-value]


def parse_background(text: str) -> tuple[int, int, int]:
    """A colour name or #rrggbb (anything PIL.ImageColor reads) → (r, g, b). Raises ValueError."""
    try:
        rgb = ImageColor.getrgb(text)
    except ValueError:
        raise ValueError(f"--background {text}: not a colour (use a name such as white or black, or #rrggbb)") from None
    return tuple(rgb[:3])  # type: ignore[return-value]


@dataclass(frozen=True)
class _Found:
    """One image file of the source: POSIX path relative to the source, and its version."""

    relative: str
    version: str
    mask_version: str | None = None  # None: no mask file (when masks are used)


def _version(info: dict[str, Any]) -> str:
    """What changes when a listed file's content does: its size and ETag or mtime."""
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{stamp}"


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


class ImageFolder(Converter):
    """A folder of images (and optionally of label masks) as train/val/test shards at `size` px."""

    def __init__(self, source: str, size: int = 64, *, masks: str | None = None,
                 split: tuple[float, float, float] = DEFAULT_SPLIT, K: int = DEFAULT_K,
                 background: tuple[int, int, int] = WHITE, storage_options: dict[str, Any] | None = None):
        self.source, self.masks = _normalised(source), (_normalised(masks) if masks else None)
        self.size, self.split, self.background = size, tuple(split), tuple(background)
        self.storage_options = storage_options
        self.info = DatasetInfo("images", "1.0", size, K=K, background_entities=1 if masks else None,
                                has_mask=masks is not None, shard_samples=max(100, 10_000 * 64 * 64 // (size * size)),
                                unit="image")
        self._splits: dict[str, list[_Found]] | None = None
        self._others: list[str] = []
        self._unmatched_masks = 0

    # -- listing ------------------------------------------------------------------------------

    def _listing(self, url: str, what: str) -> dict[str, dict[str, Any]]:
        """{relative POSIX path: fsspec info} of every non-hidden file under `url`."""
        fs, path = filesystem(url, self.storage_options)
        with storage_errors(url):
            if not fs.isdir(path):
                kind = "a file, not a folder" if fs.isfile(path) else "no such folder"
                raise SourceError(f"{url}: {kind} ({what})")
            root = fs._strip_protocol(path).rstrip("/")
            found = fs.find(root, detail=True)
        listing = {}
        for name, info in found.items():
            relative = name[len(root) + 1:] if name.startswith(root + "/") else None
            if relative and info.get("type", "file") == "file" and not _hidden(relative):
                listing[relative] = info
        return listing

    def _scan(self) -> dict[str, list[_Found]]:
        if self._splits is not None:
            return self._splits
        listing = self._listing(self.source, "the images to convert")
        if not listing:
            raise SourceError(f"{self.source}: empty folder (no files in it or its subfolders)")
        images = sorted(r for r in listing if r.lower().endswith(EXTENSIONS))
        self._others = sorted(r for r in listing if not r.lower().endswith(EXTENSIONS))
        if not images:
            shown = ", ".join(self._others[:3]) + (", …" if len(self._others) > 3 else "")
            raise SourceError(f"{self.source}: no images (.jpg .jpeg .png .webp .bmp .tif .tiff) among its "
                              f"{len(self._others)} files ({shown})")
        masks = self._listing(self.masks, "the masks, label PNGs matched by relative path") if self.masks else {}
        splits: dict[str, list[_Found]] = {name: [] for name in SPLIT_NAMES}
        used_masks = set()
        for relative in images:
            mask_version = None
            if self.masks:
                mask = self._mask_relative(relative)
                if mask in masks:
                    used_masks.add(mask)
                    mask_version = _version(masks[mask])
            splits[split_of(relative, self.split)].append(_Found(relative, _version(listing[relative]), mask_version))
        self._unmatched_masks = len(set(masks) - used_masks)
        self._splits = splits
        return splits

    @staticmethod
    def _mask_relative(relative: str) -> str:
        return os.path.splitext(relative)[0] + ".png"

    def describe(self) -> str:
        """One line on what the source holds: images per split, other files left out, masks matched."""
        splits = self._scan()
        total = sum(len(found) for found in splits.values())
        per_split = ", ".join(f"{name} {len(splits[name]):,}" for name in self.splits())
        line = f"{self.source}: {total:,} images ({per_split})"
        if self._others:
            shown = ", ".join(self._others[:3]) + (", …" if len(self._others) > 3 else "")
            line += f"; {len(self._others):,} other files left out ({shown})"
        if self.masks:
            missing = sum(f.mask_version is None for found in splits.values() for f in found)
            line += f"; masks from {self.masks}: {total - missing:,} matched, {missing:,} images without one"
            if self._unmatched_masks:
                line += f", {self._unmatched_masks:,} masks without an image"
        return line

    # -- Converter ----------------------------------------------------------------------------

    def prepare(self) -> None:
        self._scan()
        # The resize's torchvision import, done once here and inherited by the forked workers
        # (each would otherwise spend seconds importing it before its first image).
        import torchvision.transforms.v2.functional  # noqa: F401

    def splits(self) -> list[str]:
        return [name for name, fraction in zip(SPLIT_NAMES, self.split) if fraction > 0]

    def item_count(self, split: str) -> int:
        return len(self._scan()[split])

    def _item(self, found: _Found) -> SourceItem:
        mask_url = join(self.masks, self._mask_relative(found.relative)) if self.masks else None
        version = found.version if not self.masks else f"{found.version}|mask {found.mask_version}"
        return SourceItem(join(self.source, found.relative), (found.relative, mask_url, found.mask_version is not None),
                          version)

    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        for found in self._scan()[split]:
            yield self._item(found)

    def listing_digest(self, split: str) -> str:
        return sources_digest(self._item(found) for found in self._scan()[split])

    def settings(self) -> dict[str, Any]:
        return {"source": self.source, "masks": self.masks, "size": self.size, "split": list(self.split),
                "background": "#{:02x}{:02x}{:02x}".format(*self.background)}

    def convert(self, item: SourceItem) -> list[Sample]:
        relative, mask_url, has_mask_file = item.payload
        photo = decode_photo(read_bytes(item.source, self.storage_options), background=self.background,
                             min_side=None if self.masks else 2 * self.size)
        image = shorter_side_centre_crop(photo.rgb, self.size)
        width, height = photo.size
        meta: dict[str, Any] = {"source": item.source, "path": relative, "width": width, "height": height}
        mask = None
        if self.masks:
            if not has_mask_file:
                raise ValueError(f"no mask {mask_url}")
            labels = decode_labels(read_bytes(mask_url, self.storage_options))
            if labels.shape != (height, width):
                raise MismatchError(f"mask {mask_url} is {labels.shape[1]}×{labels.shape[0]} but image {item.source} "
                                    f"is {width}×{height} (as displayed, EXIF orientation applied)")
            mask = shorter_side_centre_crop(labels, self.size, labels=True)
            meta["mask"] = mask_url
        return [Sample(image_key(relative), image, mask, meta)]


def image_key(relative: str) -> str:
    """The WebDataset key of the image at `relative`: readable, unique (a hash of the path)."""
    readable = safe_key(os.path.splitext(relative)[0])[-80:]
    return f"{readable}-{hashlib.sha256(relative.encode()).hexdigest()[:10]}"


def _normalised(url: str) -> str:
    """`url` without a trailing slash; local paths made absolute (the same folder, however named)."""
    url = url.rstrip("/") or "/"
    if is_remote(url):
        return url
    return os.path.abspath(url.removeprefix("file://"))

