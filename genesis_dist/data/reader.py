"""Reading shards: raw samples out of a WebDataset tar, and decoding them to arrays.

A raw sample is `{"__key__": str, "__url__": str, "image.png": bytes, "mask.png": bytes,
"meta.json": bytes}`: webdataset's own tar iterator groups the members `{key}.{ext}` by key
(the key ends at the first dot of the file name).
"""
from __future__ import annotations

import io
import json
import tarfile
import zlib
from typing import Any, Iterator

import numpy as np
from PIL import Image
from webdataset.tariterators import group_by_keys, tar_file_expander

from ..storage import filesystem, storage_errors


class ShardCorrupt(Exception):
    """A shard is unreadable, truncated, or malformed (`reason` says how)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


class SampleCorrupt(Exception):
    """A sample cannot be decoded."""


def iter_tar_samples(stream, url: str) -> Iterator[dict[str, Any]]:
    """Raw samples of the tar `stream`, in file order. Raises ShardCorrupt on a bad archive;
    storage failures (OSError and the like) pass through."""
    try:
        yield from group_by_keys(tar_file_expander([{"url": url, "stream": stream}], eof_value=None))
    except (tarfile.TarError, EOFError, ValueError, zlib.error) as error:
        reason = str(error.args[0]).split(" @ ")[0] if error.args else ""  # webdataset appends where it was
        raise ShardCorrupt(url, f"unreadable tar ({type(error).__name__}: {reason})") from None


def read_shard(url: str, storage_options: dict[str, Any] | None = None, start: int = 0,
               stop: int | None = None, expected: int | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples `start..stop-1` (by position) of the shard at `url`.

    Transient storage errors are retried by the storage library (see genesis_dist.storage);
    what outlives the retries, or refused access, raises StorageError. Raises ShardCorrupt
    when the shard is missing, malformed, or holds fewer samples than `expected` (tarfile
    treats a damaged header after the first as the end of the archive, so the count is
    what reveals truncation).
    """
    stop = expected if stop is None else stop
    fs, path = filesystem(url, storage_options)
    position = -1
    try:
        with storage_errors(url), fs.open(path, "rb") as stream:
            for position, sample in enumerate(iter_tar_samples(stream, url)):
                if stop is not None and position >= stop:
                    return
                if position >= start:
                    yield sample
    except FileNotFoundError:
        raise ShardCorrupt(url, "missing") from None
    found = position + 1
    if stop is not None and found < stop:
        raise ShardCorrupt(url, f"truncated: {found} of {expected or stop} samples readable")


def decode_image(data: bytes, resolution: int | None = None) -> np.ndarray:
    """PNG bytes → uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(data)) as image:
        array = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if resolution is not None and array.shape[:2] != (resolution, resolution):
        raise SampleCorrupt(f"image is {array.shape[1]}x{array.shape[0]}, expected {resolution}x{resolution}")
    return array


def decode_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """8-bit label PNG → uint8 [H, W] (0 = background)."""
    with Image.open(io.BytesIO(data)) as image:
        if image.mode not in ("L", "P"):
            raise SampleCorrupt(f"mask mode {image.mode}, expected 8-bit labels")
        array = np.asarray(image)
    if array.shape != shape:
        raise SampleCorrupt(f"mask is {array.shape}, image is {shape}")
    return array


def decode_sample(raw: dict[str, Any], resolution: int | None, has_mask: bool) -> dict[str, Any]:
    """Raw sample → {"key", "image": uint8 [H,W,3], "mask": uint8 [H,W] (if has_mask), "meta": dict}.

    Raises SampleCorrupt naming what is wrong.
    """
    key = raw.get("__key__", "?")
    try:
        if "image.png" not in raw:
            raise SampleCorrupt("no image.png")
        image = decode_image(raw["image.png"], resolution)
        sample = {"key": key, "image": image}
        if has_mask:
            if "mask.png" not in raw:
                raise SampleCorrupt("no mask.png")
            sample["mask"] = decode_mask(raw["mask.png"], image.shape[:2])
        sample["meta"] = json.loads(raw["meta.json"]) if "meta.json" in raw else {}
        return sample
    except SampleCorrupt:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure means a corrupt sample
        raise SampleCorrupt(f"{type(error).__name__}: {error}") from None
