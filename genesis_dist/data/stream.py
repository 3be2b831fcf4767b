"""One epoch of one rank as an IterableDataset of ready batches (the worker side).

Each DataLoader worker follows its WorkerPlan: it reads its shard segments, shuffles
raw samples in a seeded buffer, decodes them, and yields exactly its batches. A
corrupt sample or shard is skipped and reported with the next batch; if that leaves
the worker short, it tops up by reading its segments again (another shuffle), so the
rank still yields its full number of batches.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import webdataset
from torch.utils.data import IterableDataset, get_worker_info

from .errors import CorruptDataError, DataError
from .plan import WorkerPlan, plan_epoch
from .reader import SampleCorrupt, ShardCorrupt, decode_sample, read_shard

log = logging.getLogger("genesis_dist.data")
EVENTS = "_corrupt"  # batch entry carrying corruption reports to the main process


@dataclass(frozen=True)
class Layout:
    """Everything that fixes which samples a rank reads in an epoch."""

    shards: tuple[tuple[str, int], ...]  # (URL, sample count)
    batch_size: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    seed: int = 0
    shuffle_buffer: int = 1000
    drop_last: bool = True

    def plans(self, epoch: int) -> list[WorkerPlan]:
        return plan_epoch(
            [count for _, count in self.shards], epoch=epoch, seed=self.seed, shuffle=self.shuffle_buffer > 0,
            rank=self.rank, world_size=self.world_size, num_workers=self.num_workers,
            batch_size=self.batch_size, drop_last=self.drop_last,
        )


@dataclass
class _Reading:
    """Per-worker reading state: corruption found so far and shards known bad."""

    events: list[str] = field(default_factory=list)
    unreported: list[str] = field(default_factory=list)
    bad_shards: set[int] = field(default_factory=set)
    bad_samples: set[tuple[str, str]] = field(default_factory=set)  # (shard URL, key), reported once

    def report(self, event: str, max_corrupt: int) -> None:
        log.warning("skipping corrupt data: %s", event)
        self.events.append(event)
        self.unreported.append(event)
        if len(self.events) > max_corrupt:
            raise CorruptDataError(
                f"{len(self.events)} corrupt samples/shards in one epoch (max_corrupt={max_corrupt}); "
                f"first: {self.events[0]}"
            )


def shuffled(items: Iterator[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """`items` through webdataset's shuffle buffer of `size`, filled before the first pick
    (0 or 1: unchanged order). Deterministic for a given `rng` state, which exact resume needs."""
    if size <= 1:
        return items
    return webdataset.filters.shuffle(bufsize=size, initial=size, rng=rng)(iter(items))


def collate(samples: list[dict[str, Any]], has_mask: bool) -> dict[str, Any]:
    """Decoded samples → {"image": float [B,3,H,W] in [0,1], "mask": long [B,H,W], "meta", "key"}.

    numpy, not torch: torch's intra-op thread pool makes these small copies slower.
    """
    pixels = np.stack([s["image"] for s in samples]).transpose(0, 3, 1, 2)
    images = np.empty(pixels.shape, dtype=np.float32)
    np.divide(pixels, np.float32(255.0), out=images)
    batch: dict[str, Any] = {"image": torch.from_numpy(images)}
    if has_mask:
        batch["mask"] = torch.from_numpy(np.stack([s["mask"] for s in samples]).astype(np.int64))
    batch["meta"] = [s["meta"] for s in samples]
    batch["key"] = [s["key"] for s in samples]
    return batch


class EpochStream(IterableDataset):
    """Batches of one rank's epoch `epoch`, starting at batch `start_step`.

    Under a DataLoader with n workers (batch_size=None), worker i plays plan worker
    (i + start_step) mod n, so the DataLoader's round-robin collection yields steps
    start_step, start_step+1, ... in order.
    """

    def __init__(self, layout: Layout, *, epoch: int, start_step: int, resolution: int | None, has_mask: bool,
                 storage_options: dict[str, Any] | None, max_corrupt: int):
        super().__init__()
        self.layout, self.epoch, self.start_step = layout, epoch, start_step
        self.resolution, self.has_mask = resolution, has_mask
        self.storage_options, self.max_corrupt = storage_options, max_corrupt

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = max(1, self.layout.num_workers)
        worker_id = 0 if info is None else info.id
        if info is None and workers > 1:
            raise DataError("an EpochStream planned for several workers must run under a DataLoader")
        plans = self.layout.plans(self.epoch)
        yield from self._worker_batches(plans[(worker_id + self.start_step) % workers])

    def _worker_batches(self, plan: WorkerPlan) -> Iterator[dict[str, Any]]:
        skip = sum(1 for step in plan.steps if step < self.start_step)
        state = _Reading()
        samples = self._decoded(plan, state)
        for index, size in enumerate(plan.batch_sizes):
            chunk = [next(samples) for _ in range(size)]
            if index < skip:
                continue
            batch = collate(chunk, self.has_mask)
            batch[EVENTS], state.unreported = state.unreported, []
            yield batch

    def _decoded(self, plan: WorkerPlan, state: _Reading) -> Iterator[dict[str, Any]]:
        """Decoded samples of the plan's segments, shuffled; more laps when corruption left it short."""
        needed, lap = plan.samples, 0
        while needed > 0:
            rng = random.Random(f"samples:{self.layout.seed}:{self.epoch}:{self.layout.rank}:{plan.worker}:{lap}")
            produced = 0
            for raw in shuffled(self._raw(plan, state), self.layout.shuffle_buffer, rng):
                where = (raw["__url__"], raw.get("__key__"))
                if where in state.bad_samples:
                    continue
                try:
                    sample = decode_sample(raw, self.resolution, self.has_mask)
                except SampleCorrupt as error:
                    state.bad_samples.add(where)
                    state.report(f"sample {where[1]} in {where[0]}: {error}", self.max_corrupt)
                    continue
                produced += 1
                needed -= 1
                yield sample
                if needed == 0:
                    return
            if produced == 0:
                raise DataError(f"no readable samples in the shards assigned to rank {self.layout.rank} "
                                f"worker {plan.worker}: {state.events[:3]}")
            lap += 1
            log.warning("rank %d worker %d: %d samples short after skipping corrupt data; re-reading its shards",
                        self.layout.rank, plan.worker, needed)

    def _raw(self, plan: WorkerPlan, state: _Reading) -> Iterator[dict[str, Any]]:
        for segment in plan.segments:
            if segment.shard in state.bad_shards:
                continue
            url, count = self.layout.shards[segment.shard]
            try:
                for raw in read_shard(url, self.storage_options, segment.start, segment.stop, expected=count):
                    raw["__url__"] = url
                    yield raw
            except ShardCorrupt as error:
                state.bad_shards.add(segment.shard)
                state.report(f"shard {error}", self.max_corrupt)

