"""`manifest.json`: what a shard set holds (splits, per-shard counts and sha256, labels).

Layout of a shard set at any fsspec URL `root`:

    root/manifest.json
    root/{split}/shard-000000.tar, shard-000001.tar, ...

Manifest keys: `format`, `dataset`, `converter_version`, `resolution` (pixels),
`K` (default slots), `background_entities` (mask labels 0..B-1 are background),
`has_mask`, `settings` and `fingerprint` (what the shards depend on), `command`,
`complete`, and `splits: {name: {count, complete, skipped_sources, shards: [{name, count, sha256}]}}`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError
from ..storage import filesystem, join, protocol_of, storage_errors

FORMAT = "genesis-dist-shards/1"
MANIFEST = "manifest.json"


def shard_name(split: str, index: int) -> str:
    """Path of shard `index` of `split`, relative to the root."""
    return f"{split}/shard-{index:06d}.tar"


def read_manifest(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of the shard set at `url` (a local path or fsspec URL).

    Raises DataError (one line, naming the URL) when it is missing or unreadable.
    """
    manifest = read_manifest_if_present(url, storage_options)
    if manifest is None:
        raise DataError(f"{url}: no {MANIFEST} there; convert a dataset first with tools/shard.py")
    return manifest


def read_manifest_if_present(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest at `url`, or None when there is none."""
    fs, path = filesystem(join(url, MANIFEST), storage_options)
    try:
        with storage_errors(join(url, MANIFEST)):
            raw = fs.cat_file(path)
    except FileNotFoundError:
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as error:
        raise DataError(f"{join(url, MANIFEST)}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{join(url, MANIFEST)}: not a genesis-dist shard manifest (format != {FORMAT})")
    return manifest


@dataclass(frozen=True)
class ShardSet:
    """A shard set to read: its URL, the storage options that reach it, and its manifest,
    read once (`ShardSet.open`) and handed to whatever reads the set."""

    url: str
    manifest: dict[str, Any]
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None) -> "ShardSet":
        """Read the manifest at `url`; DataError (one line) when there is none."""
        options = dict(storage_options or {})
        return cls(url, read_manifest(url, options), options)

    @property
    def resolution(self) -> int | None:
        """Image side in pixels."""
        return self.manifest.get("resolution")

    @property
    def has_mask(self) -> bool:
        """Whether samples carry instance masks (ARI / mSC can be scored)."""
        return bool(self.manifest.get("has_mask", False))

    @property
    def background_entities(self) -> int | None:
        """Mask labels 0 … B-1 that are background (ObjectsRoom's sky, floor, walls)."""
        return self.manifest.get("background_entities")

    def split_size(self, split: str) -> int:
        """Samples in `split`; DataError naming the splits present when it is absent."""
        return sum(count for _, count in split_shards(self.manifest, self.url, split))


def write_manifest(url: str, manifest: dict[str, Any], storage_options: dict[str, Any] | None = None) -> None:
    """Write `manifest` to `url/manifest.json` (whole-object write: atomic on object stores)."""
    fs, path = filesystem(join(url, MANIFEST), storage_options)
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    with storage_errors(join(url, MANIFEST)):
        if protocol_of(url) == "file":  # write-then-rename, so readers never see half a file
            fs.makedirs(fs._parent(path), exist_ok=True)
            tmp = path + ".tmp"
            fs.pipe_file(tmp, data)
            fs.mv(tmp, path)
        else:
            fs.pipe_file(path, data)


def split_shards(manifest: dict[str, Any], url: str, split: str) -> list[tuple[str, int]]:
    """[(shard URL, sample count)] of `split`; DataError naming the splits present if it is absent."""
    splits = manifest.get("splits", {})
    if split not in splits:
        raise DataError(f"{url}: no split {split!r} (splits: {', '.join(sorted(splits)) or 'none'})")
    if not manifest.get("complete", False):
        raise DataError(f"{url}: conversion is incomplete; re-run the tools/shard.py command to finish it")
    return [(join(url, shard["name"]), int(shard["count"])) for shard in splits[split]["shards"]]
