"""Driving a conversion: source items → shards + manifest at any fsspec URL.

Items of a split are cut into shards of a fixed number of items, so shard i always
holds the same source items: a re-run verifies shards a previous run finished (same
settings fingerprint, same sha256) and converts only the rest. Conversion (decode,
preprocess, PNG-encode) runs in `workers` processes; reading the source and writing
tars stay in this process, in order, so the output does not depend on `workers`.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import shlex
import sys
from typing import Any, Iterator

from tqdm.auto import tqdm

from .errors import SourceError
from .formats.base import Converter, SourceItem
from ..storage import filesystem, join
from .manifest import FORMAT, read_manifest_if_present, shard_name, write_manifest
from .writer import ShardFile, encode_sample, stored_sha256

log = logging.getLogger("genesis_dist.data")
_CONVERTER: Converter | None = None  # set in each worker process


class ErrorPolicy:
    """--on-error: 'fail' raises SourceError naming the source; 'skip' logs it and goes on."""

    def __init__(self, mode: str):
        if mode not in ("skip", "fail"):
            raise ValueError(f"on_error must be 'skip' or 'fail', not {mode!r}")
        self.mode = mode
        self.skipped: list[str] = []

    def __call__(self, source: str, error: BaseException | str) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.mode == "fail":
            raise SourceError(f"{source}: {message}")
        tqdm.write(f"skipping {source}: {message}", file=sys.stderr)
        self.skipped.append(source)


def _init_worker(converter: Converter) -> None:
    global _CONVERTER
    _CONVERTER = converter


def _convert_item(item: SourceItem) -> tuple[str, Any]:
    """("ok", [encoded samples]) or ("error", message) for one item (in a worker)."""
    info = _CONVERTER.info
    try:
        return "ok", [encode_sample(s, info.resolution, info.has_mask) for s in _CONVERTER.convert(item)]
    except Exception as error:  # noqa: BLE001 - reported against the item's source
        return "error", f"{type(error).__name__}: {error}"


def fingerprint(converter: Converter, extra: dict[str, Any]) -> str:
    """What the shards' content depends on, hashed."""
    info = converter.info
    described = {"dataset": info.name, "version": info.version, "resolution": info.resolution,
                 "settings": converter.settings(), **extra}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def convert_dataset(converter: Converter, out_url: str, *, workers: int = 1, limit: int | None = None,
                    on_error: str = "fail", shard_samples: int | None = None,
                    storage_options: dict[str, Any] | None = None, progress: bool = True,
                    command: str | None = None) -> dict[str, Any]:
    """Convert every split of `converter` into `{out_url}/{split}/shard-%06d.tar` + manifest.json.

    `limit`: at most this many source items per split; `shard_samples`: target samples
    per shard (default: the dataset's ≈100 MB). Returns the manifest written.
    """
    info = converter.info
    items_per_shard = max(1, (shard_samples or info.shard_samples) // info.samples_per_item)
    policy = ErrorPolicy(on_error)
    extra = {"limit": limit, "items_per_shard": items_per_shard}
    manifest: dict[str, Any] = {
        "format": FORMAT, "dataset": info.name, "converter_version": info.version,
        "resolution": info.resolution, "K": info.K, "background_entities": info.background_entities,
        "has_mask": info.has_mask, "settings": {**converter.settings(), **extra},
        "fingerprint": fingerprint(converter, extra),
        "command": command or shlex.join([sys.executable, *sys.argv]), "complete": False, "splits": {},
    }
    previous = read_manifest_if_present(out_url, storage_options)
    reusable = previous if previous and previous.get("fingerprint") == manifest["fingerprint"] else None
    converter.prepare()
    pool = (multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(converter,))
            if workers > 1 else None)
    _init_worker(converter)
    try:
        for split in converter.splits():
            old = (reusable or {}).get("splits", {}).get(split)
            writer = _SplitWriter(converter, out_url, split, items_per_shard, pool, workers, policy, storage_options)
            manifest["splits"][split] = writer.run(old, limit, manifest, progress)
        manifest["complete"] = True
        write_manifest(out_url, manifest, storage_options)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return manifest


class _SplitWriter:
    def __init__(self, converter, out_url, split, items_per_shard, pool, workers, policy, storage_options):
        self.converter, self.out_url, self.split = converter, out_url, split
        self.items_per_shard, self.pool, self.workers, self.policy = items_per_shard, pool, workers, policy
        self.options = storage_options

    def run(self, old: dict[str, Any] | None, limit: int | None, manifest: dict[str, Any],
            progress: bool) -> dict[str, Any]:
        if old and old.get("complete") and all(self._verified(s) for s in old["shards"]):
            log.info("%s: %s verified, nothing to do", self.out_url, self.split)
            return old
        finished = {s["name"]: s for s in (old or {}).get("shards", [])}
        total = self.converter.item_count(self.split)
        total = min(total, limit) if total is not None and limit is not None else (total or limit)
        record: dict[str, Any] = {"count": 0, "complete": False, "skipped_sources": [], "shards": []}
        items = self.converter.items(self.split, self.policy)
        if limit is not None:
            items = itertools.islice(items, limit)
        bar = tqdm(total=total, desc=f"{self.converter.info.name}/{self.split}", unit="item", disable=not progress,
                   file=sys.stderr)
        with bar:
            for index in itertools.count():
                chunk = itertools.islice(items, self.items_per_shard)
                name = shard_name(self.split, index)
                reused = finished.get(name)
                first = next(chunk, None)
                if first is None:
                    break
                chunk = itertools.chain([first], chunk)
                if reused is not None and self._verified(reused):
                    bar.update(sum(1 for _ in chunk))
                    shard = reused
                else:
                    shard = self._write_shard(name, chunk, bar)
                record["shards"].append(shard)
                record["count"] += shard["count"]
                record["skipped_sources"].extend(shard["skipped"])
                manifest["splits"][self.split] = record
                write_manifest(self.out_url, manifest, self.options)  # lets an interrupted run resume
        record["complete"] = True
        self._remove_stale_shards(len(record["shards"]))
        return record

    def _verified(self, shard: dict[str, Any]) -> bool:
        return stored_sha256(join(self.out_url, shard["name"]), self.options) == shard["sha256"]

    def _write_shard(self, name: str, chunk: Iterator[SourceItem], bar) -> dict[str, Any]:
        skipped_before = len(self.policy.skipped)
        shard = ShardFile(join(self.out_url, name), self.options)
        try:
            for item, (status, result) in self._converted(chunk):
                if status == "error":
                    self.policy(item.source, result)
                else:
                    for encoded in result:
                        shard.write(encoded)
                bar.update(1)
            count, sha = shard.publish()
        except BaseException:
            shard.discard()
            raise
        return {"name": name, "count": count, "sha256": sha, "skipped": self.policy.skipped[skipped_before:]}

    def _converted(self, chunk: Iterator[SourceItem]) -> Iterator[tuple[SourceItem, tuple[str, Any]]]:
        """(item, result) in item order; a bounded window keeps source bytes in memory small."""
        window = 1 if self.pool is None else 8 * self.workers
        while True:
            batch = list(itertools.islice(chunk, window))
            if not batch:
                return
            results = map(_convert_item, batch) if self.pool is None else self.pool.imap(_convert_item, batch)
            yield from zip(batch, results)

    def _remove_stale_shards(self, kept: int) -> None:
        """Delete shards of this split beyond the current count (left by an earlier, larger run)
        and temporary files of interrupted local writes."""
        fs, folder = filesystem(join(self.out_url, self.split), self.options)
        try:
            names = fs.ls(folder, detail=False)
        except FileNotFoundError:
            return
        valid = {shard_name(self.split, i).rsplit("/", 1)[1] for i in range(kept)}
        for path in names:
            base = path.rstrip("/").rsplit("/", 1)[-1]
            stale = base.startswith("shard-") and base.endswith(".tar") and base not in valid
            if stale or (base.startswith(".shard-") and base.endswith(".tmp")):
                fs.rm(path)
