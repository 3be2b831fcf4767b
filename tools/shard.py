#!/usr/bin/env python
"""Convert raw datasets into WebDataset shards + manifest.json at any fsspec URL, and inspect them.

    python tools/shard.py multi_dsprites --out shards/multi_dsprites --workers 2
    python tools/shard.py objects_room --source objects_room_train.tfrecords --out s3://bucket/objects_room
    python tools/shard.py shapestacks --source shapestacks/ --out shards/shapestacks
    python tools/shard.py gqn --source rooms_ring_camera/ --out shards/gqn
    python tools/shard.py sketchy --source episodes/ --episodes subset.txt --out shards/sketchy
    python tools/shard.py apc --source apc/training --out shards/apc
    python tools/shard.py images ~/photos --out shards/photos --size 64     # your own folder of images
    python tools/shard.py inspect shards/apc --split train --grid apc.png

Output: {out}/{split}/shard-%06d.tar and {out}/manifest.json. Re-running the same command
verifies finished shards (sha256) and converts only what is missing. S3-compatible stores:
--endpoint-url or AWS_ENDPOINT_URL; credentials from the standard AWS chain.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from genesis_dist.config import ConfigError, check_img_size
from genesis_dist.data.convert import ConversionReport, check_same_dataset, convert_dataset
from genesis_dist.data.errors import DataError, StorageError
from genesis_dist.data.formats import images
from genesis_dist.data.formats.apc import APC
from genesis_dist.data.formats.gqn import GQNRooms
from genesis_dist.data.formats.multi_dsprites import MultiDSprites
from genesis_dist.data.formats.objects_room import ObjectsRoom
from genesis_dist.data.formats.shapestacks import ShapeStacks
from genesis_dist.data.formats.sketchy import Sketchy
from genesis_dist.data.manifest import read_manifest_if_present


def _storage_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in args.storage_option or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--storage-option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    if args.endpoint_url:
        options.setdefault("client_kwargs", {})["endpoint_url"] = args.endpoint_url
    return options


def _episodes(path: str | None) -> list[str] | None:
    if path is None:
        return None
    with open(path) as handle:
        return [line.strip() for line in handle if line.strip() and not line.startswith("#")]


BUILDERS = {
    "multi_dsprites": lambda a, so: MultiDSprites(
        {"train": a.train, "val": a.val, "test": a.test}, img_size=a.img_size or 64, seed=a.seed,
        dsprites_npz=a.dsprites_npz, min_sprites=a.min_sprites, max_sprites=a.max_sprites),
    "objects_room": lambda a, so: ObjectsRoom(a.source, a.test_size, a.val_size, a.split, so),
    "shapestacks": lambda a, so: ShapeStacks(a.source, None if a.split_set == "none" else a.split_set,
                                             a.split, a.img_size or 64, so),
    "gqn": lambda a, so: GQNRooms(a.source, a.img_size or 64, a.view, a.seed, so),
    "sketchy": lambda a, so: Sketchy(a.source, _episodes(a.episodes), a.img_size or 128, so),
    "apc": lambda a, so: APC(a.source, a.img_size or 128, a.seed, so),
    "images": lambda a, so: _image_folder(a, so),
}


def _image_folder(args: argparse.Namespace, options: dict[str, Any] | None) -> images.ImageFolder:
    check_img_size(args.size, "--size")
    return images.ImageFolder(args.source, args.size, masks=args.masks, split=images.parse_split(args.split),
                              K=args.k, background=images.parse_background(args.background),
                              storage_options=options)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _common(parser: argparse.ArgumentParser, *, own_images: bool = False) -> None:
    parser.add_argument("--out", required=True, help="output root: local path, file://, s3://, gs://")
    if own_images:
        parser.add_argument("--workers", type=int, default=usable_cores(),
                            help=f"conversion processes (default: this machine's cores, {usable_cores()})")
    else:
        parser.add_argument("--workers", type=int, default=1, help="conversion processes (default 1)")
    parser.add_argument("--limit", type=int, help="convert at most N source items per split (quick subsets)")
    if own_images:
        parser.add_argument("--on-error", choices=("skip", "fail"), default="skip",
                            help="an unreadable, truncated or refused image: skip it (default; named in the "
                                 "summary and the manifest) or stop")
    else:
        parser.add_argument("--on-error", choices=("skip", "fail"), default="fail",
                            help="a bad source file: skip it (named, counted in the manifest) or stop (default)")
    parser.add_argument("--shard-size", type=int, help="target samples per shard (default ≈100 MB worth)")
    if not own_images:
        parser.add_argument("--img-size", type=int, help="output resolution (default: the paper's)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec storage option (VALUE parsed as JSON when possible); repeatable")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/shard.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("multi_dsprites", help="generate Multi-dSprites (procedural dSprites shapes)")
    p.add_argument("--train", type=int, default=50_000)
    p.add_argument("--val", type=int, default=10_000)
    p.add_argument("--test", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dsprites-npz", help="the real dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz, if you have it")
    p.add_argument("--min-sprites", type=int, default=1)
    p.add_argument("--max-sprites", type=int, default=4)

    p = sub.add_parser("objects_room", help="ObjectsRoom GZIP TFRecord file")
    p.add_argument("--source", required=True, help="objects_room_train.tfrecords (or a test-variant file)")
    p.add_argument("--test-size", type=int, default=10_000, help="first N records → test (train file)")
    p.add_argument("--val-size", type=int, default=10_000, help="next N records → val (train file)")
    p.add_argument("--split", help="write the whole file as this one split (default for test variants: test)")

    p = sub.add_parser("shapestacks", help="ShapeStacks recordings (+ iseg maps, splits)")
    p.add_argument("--source", required=True, help="root holding recordings/ (and splits/, iseg/, meta/)")
    p.add_argument("--split-set", default="default", help="splits/<SET>/ to use, or 'none' for one split")
    p.add_argument("--split", default="train", help="split name when --split-set none")

    p = sub.add_parser("gqn", help="GQN rooms_ring_camera TFRecords")
    p.add_argument("--source", required=True, help="root holding train/ and test/ *.tfrecord")
    p.add_argument("--view", type=int, help="always this view 0..9 (default: a seeded random view per scene)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("sketchy", help="Sketchy episode TFRecords")
    p.add_argument("--source", required=True, help="folder of episode files")
    p.add_argument("--episodes", help="text file of episode names to convert (the GENESIS-V2 subset)")

    p = sub.add_parser("apc", help="APC 2016 segmentation training set")
    p.add_argument("--source", required=True, help="the 'training' folder ({shelf,tote}/<object>/scene-*)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scene split")

    p = sub.add_parser("images", help="your own folder of images (JPEG, PNG, WebP, BMP, TIFF), local or s3://",
                       description=images.__doc__.split("\n\n")[0] + " Each image: EXIF orientation applied, "
                       "8-bit RGB (transparency over --background), shorter side resized to --size and the centre "
                       "square kept. A file's split depends on its relative path alone, so adding files later "
                       "keeps every earlier file in its split.")
    p.add_argument("source", help="folder of images, read recursively: a local path or fsspec URL (s3://bucket/photos)")
    p.add_argument("--size", type=int, default=64, help="output resolution in pixels, a power of two ≥ 16 (default 64)")
    p.add_argument("--masks", help="parallel folder of label PNGs, MASKS/<relative path>.png for SOURCE/<relative "
                                   "path>, 0 = background (default: no masks)")
    p.add_argument("--split", default=",".join(f"{f:g}" for f in images.DEFAULT_SPLIT),
                   help="fractions train,val,test (default 0.9,0.05,0.05)")
    p.add_argument("--k", type=int, default=images.DEFAULT_K,
                   help=f"default number of slots recorded in the manifest (default {images.DEFAULT_K})")
    p.add_argument("--background", default=images.DEFAULT_BACKGROUND,
                   help="colour that transparent pixels are composited over: a name or #rrggbb "
                        f"(default {images.DEFAULT_BACKGROUND}, as image viewers show transparency)")

    for name, p in sub.choices.items():
        _common(p, own_images=name == "images")

    p = sub.add_parser("inspect", help="print a manifest and write a PNG grid of samples with masks")
    p.add_argument("url")
    p.add_argument("--split", help="split to show (default: the first)")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--grid", help="PNG path or URL (default: <dataset>_<split>_samples.png)")
    p.add_argument("--endpoint-url")
    p.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    return parser


def _inspect(args: argparse.Namespace, options: dict[str, Any]) -> None:
    from genesis_dist.data.inspect import inspect_shards

    print("\n".join(inspect_shards(args.url, args.split, args.count, args.grid, options)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = _storage_options(args)
        if args.command == "inspect":
            _inspect(args, options)
            return 0
        if args.workers < 1:
            raise ValueError(f"--workers {args.workers}: must be ≥ 1")
        converter = BUILDERS[args.command](args, options or None)
        if isinstance(converter, images.ImageFolder):
            # Refuse a wrong --out before listing what may be a large bucket.
            previous = read_manifest_if_present(args.out, options or None)
            check_same_dataset(args.out, previous, converter.info.name, converter.settings())
            print(converter.describe(), file=sys.stderr)
        command = shlex.join(["tools/shard.py", *(sys.argv[1:] if argv is None else argv)])
        report = ConversionReport()
        manifest = convert_dataset(converter, args.out, workers=args.workers, limit=args.limit,
                                   on_error=args.on_error, shard_samples=args.shard_size,
                                   storage_options=options or None, progress=not args.quiet, command=command,
                                   report=report)
        print("\n".join(report.summary()))
        counts = ", ".join(f"{s} {r['count']}" for s, r in manifest["splits"].items())
        print(f"{args.out}: {manifest['dataset']} done ({counts})")
        return 0
    except FileNotFoundError as error:
        print(f"error: {error.filename or error}: no such file or folder", file=sys.stderr)
    except (DataError, StorageError, ConfigError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
