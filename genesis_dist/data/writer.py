"""Writing one shard: encode samples, tar them reproducibly, publish to any fsspec URL.

Tar bytes depend only on the samples (fixed mtime, owner and member order), so a
re-conversion produces identical files and a re-run can verify finished shards by sha256.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import numpy as np
from PIL import Image
from webdataset import TarWriter

from .formats.base import Sample
from ..storage import filesystem, protocol_of, storage_errors


def encode_png(array: np.ndarray) -> bytes:
    """uint8 [H,W,3] (RGB) or [H,W] (8-bit labels) → PNG bytes."""
    if array.dtype != np.uint8:
        raise ValueError(f"PNG arrays must be uint8, got {array.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def encode_sample(sample: Sample, resolution: int, has_mask: bool) -> dict[str, Any]:
    """Sample → tar members {"__key__", "image.png", "mask.png"?, "meta.json"}; checks shapes."""
    if sample.image.shape != (resolution, resolution, 3):
        raise ValueError(f"{sample.key}: image shape {sample.image.shape}, expected ({resolution}, {resolution}, 3)")
    encoded = {"__key__": sample.key, "image.png": encode_png(sample.image)}
    if has_mask:
        if sample.mask is None or sample.mask.shape != (resolution, resolution):
            shape = None if sample.mask is None else sample.mask.shape
            raise ValueError(f"{sample.key}: mask shape {shape}, expected ({resolution}, {resolution})")
        encoded["mask.png"] = encode_png(sample.mask)
    encoded["meta.json"] = json.dumps(sample.meta, sort_keys=True).encode()
    return encoded


def file_sha256(handle, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: handle.read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()


def stored_sha256(url: str, storage_options: dict[str, Any] | None = None) -> str | None:
    """sha256 of the file at `url`, or None if there is none."""
    fs, path = filesystem(url, storage_options)
    try:
        with fs.open(path, "rb") as handle:
            return file_sha256(handle)
    except FileNotFoundError:
        return None


class ShardFile:
    """A shard being written to a local temporary file, then published to `url`."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None):
        self.url, self._options = url, storage_options
        self.count = 0
        fs, path = filesystem(url, storage_options)
        local_folder = None
        if protocol_of(url) == "file":  # same filesystem as the target, so the final move is a rename
            local_folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(local_folder, exist_ok=True)
        handle, self._tmp = tempfile.mkstemp(suffix=".tmp", prefix=".shard-", dir=local_folder)
        self._file = os.fdopen(handle, "wb")
        self._tar = TarWriter(self._file, encoder=False, mtime=0, user="genesis", group="genesis")

    def write(self, encoded: dict[str, Any]) -> None:
        self._tar.write(encoded)
        self.count += 1

    def publish(self) -> tuple[int, str]:
        """Close, upload (or move) to `url`; returns (sample count, sha256)."""
        self._tar.close()
        self._file.close()
        with open(self._tmp, "rb") as handle:
            sha = file_sha256(handle)
        fs, path = filesystem(self.url, self._options)
        if protocol_of(self.url) == "file":
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self._tmp, 0o666 & ~umask)  # mkstemp made it private
            os.replace(self._tmp, path)
        else:
            with storage_errors(self.url):
                fs.put_file(self._tmp, path)
            os.unlink(self._tmp)
        return self.count, sha

    def discard(self) -> None:
        try:
            self._tar.close()
        except (OSError, ValueError):
            pass
        self._file.close()
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)
