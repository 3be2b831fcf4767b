"""Looking at a shard set: a manifest summary and a PNG grid of samples with masks overlaid.

    python -m genesis_dist.data.inspect URL [--split S] [--count N] [--grid PNG]

(the same as `tools/shard.py inspect`; S3 endpoints and credentials from the AWS
environment). The module's name does not shadow the standard library's `inspect`: the
package imports absolutely, and `python -m` puts the working directory, not this
folder, on sys.path.
"""
from __future__ import annotations

import argparse
import io
import itertools
import sys
from typing import Any

import numpy as np
from PIL import Image

from ..storage import StorageError, filesystem
from .errors import DataError
from .manifest import read_manifest, split_shards
from .reader import decode_sample, read_shard

# 20 well-separated colours; label 0 (background) stays uncoloured.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
], dtype=np.float32)


def summarize(manifest: dict[str, Any], url: str) -> str:
    """A few lines describing the manifest of the shard set at `url`."""
    lines = [
        f"{url}: {manifest['dataset']} (converter {manifest['converter_version']}), "
        f"{manifest['resolution']}×{manifest['resolution']} px, K={manifest['K']}, "
        f"background entities={manifest['background_entities']}, masks={'yes' if manifest['has_mask'] else 'no'}, "
        f"{'complete' if manifest.get('complete') else 'INCOMPLETE'}",
        f"  command: {manifest.get('command')}",
    ]
    for split, record in manifest["splits"].items():
        counts = [shard["count"] for shard in record["shards"]]
        skipped = len(record.get("skipped_sources", []))
        lines.append(f"  {split}: {record['count']} samples in {len(counts)} shards "
                     f"({min(counts, default=0)}–{max(counts, default=0)} per shard)"
                     + (f", {skipped} source items skipped" if skipped else ""))
    return "\n".join(lines)


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """uint8 [H,W,3] image with mask labels > 0 tinted in palette colours."""
    colours = PALETTE[(mask.astype(np.int64) - 1) % len(PALETTE)]
    tinted = np.where(mask[..., None] > 0, (1 - alpha) * image + alpha * colours, image)
    return tinted.astype(np.uint8)


def sample_grid(url: str, split: str, count: int = 16, columns: int = 8,
                storage_options: dict[str, Any] | None = None) -> Image.Image:
    """The first `count` samples of `split`: rows of images, each followed (with masks) by its overlay row."""
    manifest = read_manifest(url, storage_options)
    shards = split_shards(manifest, url, split)
    raws = itertools.chain.from_iterable(read_shard(u, storage_options, expected=c) for u, c in shards)
    samples = [decode_sample(raw, manifest["resolution"], manifest["has_mask"])
               for raw in itertools.islice(raws, count)]
    size = manifest["resolution"]
    rows_of = [samples[i: i + columns] for i in range(0, len(samples), columns)]
    row_kinds = 2 if manifest["has_mask"] else 1
    canvas = np.full((len(rows_of) * row_kinds * (size + 2), columns * (size + 2), 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows_of):
        for c, sample in enumerate(row):
            tiles = [sample["image"]] + ([overlay(sample["image"], sample["mask"])] if row_kinds == 2 else [])
            for k, tile in enumerate(tiles):
                top = (r * row_kinds + k) * (size + 2) + 1
                canvas[top: top + size, c * (size + 2) + 1: c * (size + 2) + 1 + size] = tile
    return Image.fromarray(canvas)


def save_image(image: Image.Image, url: str, storage_options: dict[str, Any] | None = None) -> None:
    """Write `image` as PNG to a local path or fsspec URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    fs, path = filesystem(url, storage_options)
    parent = fs._parent(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    fs.pipe_file(path, buffer.getvalue())


def inspect_shards(url: str, split: str | None = None, count: int = 16, grid: str | None = None,
                   storage_options: dict[str, Any] | None = None) -> list[str]:
    """Summarise the shard set at `url` and write a grid of `count` samples of `split`
    (default: train, else the first split with samples) to `grid` (default:
    `<dataset>_<split>_samples.png`); returns the lines to show the user."""
    manifest = read_manifest(url, storage_options)
    lines = [summarize(manifest, url)]
    filled = [name for name, record in manifest["splits"].items() if record["count"] > 0]
    split = split or ("train" if "train" in filled else next(iter(filled), None))
    if split is None:
        return lines + ["no samples to show"]
    grid = grid or f"{manifest['dataset']}_{split}_samples.png"
    save_image(sample_grid(url, split, count, storage_options=storage_options), grid, storage_options)
    return lines + [f"wrote {grid}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m genesis_dist.data.inspect",
                                     description="print a manifest and write a PNG grid of samples with masks")
    parser.add_argument("url", help="shard set: local path or fsspec URL")
    parser.add_argument("--split", help="split to show (default: train, else the first with samples)")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--grid", help="PNG path or URL (default: <dataset>_<split>_samples.png)")
    args = parser.parse_args(argv)
    try:
        print("\n".join(inspect_shards(args.url, args.split, args.count, args.grid)))
    except (DataError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
