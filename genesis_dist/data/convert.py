"""Driving a conversion: source items → shards + manifest at any fsspec URL.

Items of a split are cut into shards of a fixed number of items, in the converter's
order: a re-run verifies shards a previous run finished (same settings fingerprint, same
sources — names and versions — and same sha256) and converts only the rest. Conversion
(read, decode, preprocess, PNG-encode) runs in `workers` processes; listing the source
and writing tars stay in this process, in order, so the output does not depend on `workers`.

An output URL holding another dataset, or the same dataset converted with other
settings, is refused before anything is written. A shard is written to a temporary
file and published whole; the manifest is rewritten after every shard with
`complete: false` (loaders refuse it; re-running the command resumes) and is written
complete last.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

from .errors import DataError, MismatchError, SourceError
from .formats.base import Converter, SourceItem, sources_digest
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
        self.reasons: dict[str, str] = {}  # source → why it was skipped

    def __call__(self, source: str, error: BaseException | str) -> None:
        message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        if self.mode == "fail":
            raise SourceError(f"{source}: {message}")
        tqdm.write(f"skipping {source}: {message}", file=sys.stderr)
        self.skipped.append(source)
        self.reasons[source] = message


@dataclass
class ConversionReport:
    """What one `convert_dataset` call did: source items converted and PNG-encoded in this
    run, samples in finished shards it verified and kept, the sources it skipped (with why;
    those skipped by an earlier run whose shards were kept have no reason), wall-clock
    seconds, and the processes used."""

    unit: str = "item"
    converted: int = 0
    kept: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    workers: int = 1

    def summary(self, most: int = 20) -> list[str]:
        """Lines for the end of a conversion: throughput, then every skipped source (at most `most`)."""
        rate = self.converted / self.seconds if self.seconds > 0 else 0.0
        lines = [f"converted {self.converted:,} {self.unit}s in {self.seconds:.1f} s: {rate:,.1f} {self.unit}s/s "
                 f"with {self.workers} process{'es' if self.workers > 1 else ''} "
                 f"({rate / self.workers:,.1f} per process)"
                 + (f"; {self.kept:,} samples of earlier runs verified and kept" if self.kept else "")]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped):,} file{'s' if len(self.skipped) > 1 else ''} "
                         "(listed under skipped_sources in manifest.json):")
            for source, reason in itertools.islice(self.skipped.items(), most):
                lines.append(f"  {source}: {reason or 'skipped by an earlier run'}")
            if len(self.skipped) > most:
                lines.append(f"  … and {len(self.skipped) - most:,} more")
        return lines


def _init_worker(converter: Converter) -> None:
    global _CONVERTER
    _CONVERTER = converter


def _convert_item(item: SourceItem) -> tuple[str, Any]:
    """("ok", [encoded samples]), ("error", message) or ("fatal", message: a MismatchError,
    which stops the conversion) for one item (in a worker)."""
    info = _CONVERTER.info
    try:
        return "ok", [encode_sample(s, info.resolution, info.has_mask) for s in _CONVERTER.convert(item)]
    except MismatchError as error:
        return "fatal", str(error)
    except Exception as error:  # noqa: BLE001 - reported against the item's source
        return "error", f"{type(error).__name__}: {error}"


def fingerprint(converter: Converter, extra: dict[str, Any]) -> str:
    """What the shards' content depends on, hashed."""
    info = converter.info
    described = {"dataset": info.name, "version": info.version, "resolution": info.resolution,
                 "settings": converter.settings(), **extra}
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_same_dataset(out_url: str, previous: dict[str, Any] | None, dataset: str,
                       settings: dict[str, Any]) -> None:
    """Raise DataError (one line) when the shard set at `out_url` is another dataset, or the
    same one converted with other settings: converting over it would destroy it."""
    if previous is None:
        return
    written = f"written by `{previous['command']}`" if previous.get("command") else "written earlier"
    advice = "write to another --out, or delete that one first"
    if previous.get("dataset") != dataset:
        raise DataError(f"{out_url} already holds another dataset ({previous.get('dataset')}, {written}); {advice}")
    before = {k: v for k, v in (previous.get("settings") or {}).items() if k not in ("limit", "items_per_shard")}
    after = json.loads(json.dumps(settings, default=str))  # as stored in a manifest
    changed = [f"{key} {before.get(key)!r} → {after.get(key)!r}" for key in sorted(set(before) | set(after))
               if before.get(key) != after.get(key)]
    if changed:
        raise DataError(f"{out_url} already holds {dataset} converted with other settings "
                        f"({'; '.join(changed)}; {written}); {advice}")


def convert_dataset(converter: Converter, out_url: str, *, workers: int = 1, limit: int | None = None,
                    on_error: str = "fail", shard_samples: int | None = None,
                    storage_options: dict[str, Any] | None = None, progress: bool = True,
                    command: str | None = None, report: ConversionReport | None = None) -> dict[str, Any]:
    """Convert every split of `converter` into `{out_url}/{split}/shard-%06d.tar` + manifest.json.

    `limit`: at most this many source items per split; `shard_samples`: target samples
    per shard (default: the dataset's ≈100 MB); `report`: filled with what this run did.
    Returns the manifest written. Raises DataError when `out_url` holds another dataset
    (`check_same_dataset`), SourceError on a bad source under on_error="fail", and
    MismatchError (whatever on_error says) on sources that do not belong together.
    """
    started = time.perf_counter()
    info = converter.info
    items_per_shard = max(1, (shard_samples or info.shard_samples) // info.samples_per_item)
    policy = ErrorPolicy(on_error)
    report = report if report is not None else ConversionReport()
    report.unit, report.workers = info.unit, max(1, workers)
    extra = {"limit": limit, "items_per_shard": items_per_shard}
    manifest: dict[str, Any] = {
        "format": FORMAT, "dataset": info.name, "converter_version": info.version,
        "resolution": info.resolution, "K": info.K, "background_entities": info.background_entities,
        "has_mask": info.has_mask, "settings": {**converter.settings(), **extra},
        "fingerprint": fingerprint(converter, extra),
        "command": command or shlex.join([sys.executable, *sys.argv]), "complete": False, "splits": {},
    }
    previous = read_manifest_if_present(out_url, storage_options)
    check_same_dataset(out_url, previous, info.name, converter.settings())
    reusable = previous if previous and previous.get("fingerprint") == manifest["fingerprint"] else None
    converter.prepare()
    pool = (multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=(converter,))
            if workers > 1 else None)
    _init_worker(converter)
    try:
        for split in converter.splits():
            old = (reusable or {}).get("splits", {}).get(split)
            writer = _SplitWriter(converter, out_url, split, items_per_shard, pool, workers, policy, storage_options,
                                  report)
            manifest["splits"][split] = writer.run(old, limit, manifest, progress)
        manifest["complete"] = True
        write_manifest(out_url, manifest, storage_options)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        report.seconds = time.perf_counter() - started
    for record in manifest["splits"].values():
        for source in record.get("skipped_sources", []):
            report.skipped.setdefault(source, policy.reasons.get(source, ""))
    return manifest


class _SplitWriter:
    def __init__(self, converter, out_url, split, items_per_shard, pool, workers, policy, storage_options, report):
        self.converter, self.out_url, self.split = converter, out_url, split
        self.items_per_shard, self.pool, self.workers, self.policy = items_per_shard, pool, workers, policy
        self.options, self.report = storage_options, report

    def run(self, old: dict[str, Any] | None, limit: int | None, manifest: dict[str, Any],
            progress: bool) -> dict[str, Any]:
        if old and old.get("complete") and self._unchanged(old) and all(self._verified(s) for s in old["shards"]):
            log.info("%s: %s verified, nothing to do", self.out_url, self.split)
            self.report.kept += old["count"]
            return old
        finished = {s["name"]: s for s in (old or {}).get("shards", [])}
        total = self.converter.item_count(self.split)
        total = min(total, limit) if total is not None and limit is not None else (total or limit)
        record: dict[str, Any] = {"count": 0, "complete": False, "skipped_sources": [], "shards": []}
        items = self.converter.items(self.split, self.policy)
        if limit is not None:
            items = itertools.islice(items, limit)
        bar = tqdm(total=total, desc=f"{self.converter.info.name}/{self.split}", unit=self.converter.info.unit,
                   disable=not progress, file=sys.stderr)
        with bar:
            for index in itertools.count():
                chunk: Iterable[SourceItem] = itertools.islice(items, self.items_per_shard)
                name = shard_name(self.split, index)
                reused = finished.get(name)
                first = next(chunk, None)
                if first is None:
                    break
                chunk = itertools.chain([first], chunk)
                if reused is not None and "sources" in reused:  # kept only if made from the same sources
                    chunk = list(chunk)
                    if sources_digest(chunk) != reused["sources"]:
                        reused = None
                if reused is not None and self._verified(reused):
                    bar.update(sum(1 for _ in chunk))
                    self.report.kept += reused["count"]
                    shard = reused
                else:
                    shard = self._write_shard(name, chunk, bar)
                record["shards"].append(shard)
                record["count"] += shard["count"]
                record["skipped_sources"].extend(shard["skipped"])
                manifest["splits"][self.split] = record
                write_manifest(self.out_url, manifest, self.options)  # lets an interrupted run resume
        record["complete"] = True
        digest = self.converter.listing_digest(self.split)
        if digest is not None:
            record["sources"] = digest
        self._remove_stale_shards(len(record["shards"]))
        return record

    def _verified(self, shard: dict[str, Any]) -> bool:
        return stored_sha256(join(self.out_url, shard["name"]), self.options) == shard["sha256"]

    def _unchanged(self, old: dict[str, Any]) -> bool:
        """Whether the split lists the sources its finished shards were made from (true when
        the converter cannot list them cheaply: its sources are fixed by its settings)."""
        digest = self.converter.listing_digest(self.split)
        return digest is None or old.get("sources") == digest

    def _write_shard(self, name: str, chunk: Iterable[SourceItem], bar) -> dict[str, Any]:
        skipped_before = len(self.policy.skipped)
        shard = ShardFile(join(self.out_url, name), self.options)
        done: list[SourceItem] = []
        try:
            for item, (status, result) in self._converted(chunk):
                done.append(SourceItem(item.source, None, item.version))
                if status == "fatal":
                    raise MismatchError(result)
                if status == "error":
                    self.policy(item.source, result)
                else:
                    for encoded in result:
                        shard.write(encoded)
                    self.report.converted += 1
                bar.update(1)
            count, sha = shard.publish()
        except BaseException:
            shard.discard()
            raise
        return {"name": name, "count": count, "sha256": sha, "sources": sources_digest(done),
                "skipped": self.policy.skipped[skipped_before:]}

    def _converted(self, chunk: Iterable[SourceItem]) -> Iterator[tuple[SourceItem, tuple[str, Any]]]:
        """(item, result) in item order; a bounded window keeps source bytes in memory small."""
        window = 1 if self.pool is None else 8 * self.workers
        chunk = iter(chunk)  # a list when it was read ahead to compare a finished shard's sources
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
