"""Looking at a shard set: a manifest summary and a PNG grid of samples with masks overlaid
(drawn by `genesis_dist.figures`, as every figure is).

    python -m genesis_dist.data.inspect URL [--split S] [--count N] [--grid PNG]

(the same as `tools/shard.py inspect`; S3 endpoints and credentials from the AWS
environment). The module's name does not shadow the standard library's `inspect`: the
package imports absolutely, and `python -m` puts the working directory, not this
folder, on sys.path.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from typing import Any

import numpy as np
import torch

from ..figures import dataset_figure, save_png
from ..storage import StorageError
from .errors import DataError
from .manifest import read_manifest, split_shards
from .reader import decode_sample, read_shard


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


def sample_grid(url: str, split: str, count: int = 16, columns: int = 8,
                storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """The first `count` samples of `split` as a figure (uint8 `[H, W, 3]`, see
    `figures.dataset_figure`): rows of images, each followed (with masks) by the same
    images with their ground-truth masks drawn over them."""
    manifest = read_manifest(url, storage_options)
    shards = split_shards(manifest, url, split)
    raws = itertools.chain.from_iterable(read_shard(u, storage_options, expected=c) for u, c in shards)
    samples = [decode_sample(raw, manifest["resolution"], manifest["has_mask"])
               for raw in itertools.islice(raws, count)]
    if not samples:
        raise DataError(f"{url}: split {split!r} has no samples to show")
    images = torch.from_numpy(np.stack([s["image"] for s in samples])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.stack([s["mask"] for s in samples]).astype(np.int64)) if manifest["has_mask"] else None
    caption = f"{manifest['dataset']} · {split} · first {len(samples)} samples · {manifest['resolution']} px"
    return dataset_figure(images, labels, columns, caption)


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
    save_png(sample_grid(url, split, count, storage_options=storage_options), grid, storage_options)
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
