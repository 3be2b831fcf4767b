"""One phase of one rank's epoch as an IterableDataset of ready batches (the worker side).

Each DataLoader worker follows its WorkerPlan: it reads the epoch positions of its
ranges in order (for a shuffled window, the part of the window's shard span it needs,
put in the window's order), decodes them, and yields exactly its batches, each tagged
with how far into its ranges it has read. A corrupt sample or shard is skipped (its
positions count as read) and reported with the next batch; if that leaves the worker
short, it tops up by reading its ranges again, so the rank still yields its full number
of batches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .errors import CorruptDataError, DataError
from .plan import EpochOrder, Interval, WorkerPlan, plan_epoch, take, length
from .reader import SampleCorrupt, ShardCorrupt, decode_sample, read_shard

log = logging.getLogger("genesis_dist.data")
EVENTS = "_corrupt"  # batch entry carrying corruption reports to the main process
POSITION = "_position"  # batch entry: (plan worker, positions of its ranges read so far)


@dataclass(frozen=True)
class Layout:
    """Everything that fixes which samples a rank reads in an epoch."""

    shards: tuple[tuple[str, int], ...]  # (URL, sample count)
    batch_size: int
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    seed: int = 0
    shuffle_buffer: int = 1000  # window of the epoch's sequence shuffled as one (plan.py)
    drop_last: bool = True

    @property
    def counts(self) -> list[int]:
        return [count for _, count in self.shards]

    def plans(self, epoch: int, consumed: tuple[Interval, ...] = ()) -> list[WorkerPlan]:
        return plan_epoch(
            self.counts, epoch=epoch, seed=self.seed, shuffle=self.shuffle_buffer > 0,
            rank=self.rank, world_size=self.world_size, num_workers=self.num_workers,
            batch_size=self.batch_size, drop_last=self.drop_last, window=self.shuffle_buffer,
            consumed=consumed,
        )


@dataclass
class _Reading:
    """Per-worker reading state: corruption found so far and shards known bad."""

    events: list[str] = field(default_factory=list)
    unreported: list[str] = field(default_factory=list)
    bad_shards: set[int] = field(default_factory=set)
    bad_samples: set[int] = field(default_factory=set)  # concatenated positions, reported once

    def report(self, event: str, max_corrupt: int) -> None:
        log.warning("skipping corrupt data: %s", event)
        self.events.append(event)
        self.unreported.append(event)
        if len(self.events) > max_corrupt:
            raise CorruptDataError(
                f"{len(self.events)} corrupt samples/shards in one epoch (max_corrupt={max_corrupt}); "
                f"first: {self.events[0]}"
            )


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
    """Batches of one rank's phase of epoch `epoch` (after the epoch positions `consumed`),
    starting at batch `start_step`, plan worker w reading from position `progress[w]` of
    its ranges (default: where its batches before `start_step` end).

    Under a DataLoader with n workers (batch_size=None), worker i plays plan worker
    (i + start_step) mod n, so the DataLoader's round-robin collection yields steps
    start_step, start_step+1, ... in order.
    """

    def __init__(self, layout: Layout, *, epoch: int, start_step: int, resolution: int | None, has_mask: bool,
                 storage_options: dict[str, Any] | None, max_corrupt: int, consumed: tuple[Interval, ...] = (),
                 progress: tuple[int, ...] | None = None):
        super().__init__()
        self.layout, self.epoch, self.start_step = layout, epoch, start_step
        self.consumed, self.progress = consumed, progress
        self.resolution, self.has_mask = resolution, has_mask
        self.storage_options, self.max_corrupt = storage_options, max_corrupt

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = max(1, self.layout.num_workers)
        worker_id = 0 if info is None else info.id
        if info is None and workers > 1:
            raise DataError("an EpochStream planned for several workers must run under a DataLoader")
        plans = self.layout.plans(self.epoch, self.consumed)
        yield from self._worker_batches(plans[(worker_id + self.start_step) % workers])

    def _worker_batches(self, plan: WorkerPlan) -> Iterator[dict[str, Any]]:
        done = sum(1 for step in plan.steps if step < self.start_step)
        start = sum(plan.batch_sizes[:done]) if self.progress is None else self.progress[plan.worker]
        state = _Reading()
        samples = self._decoded(plan, state, start, sum(plan.batch_sizes[done:]))
        for size in plan.batch_sizes[done:]:
            chunk = [next(samples) for _ in range(size)]
            batch = collate([sample for _, sample in chunk], self.has_mask)
            batch[EVENTS], state.unreported = state.unreported, []
            batch[POSITION] = (plan.worker, chunk[-1][0])
            yield batch

    def _decoded(self, plan: WorkerPlan, state: _Reading, start: int,
                 needed: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """`needed` (positions of the plan's ranges read so far, decoded sample), reading
        from position `start` of its ranges; more laps over them when corruption left it short."""
        total = length(plan.ranges)
        lap = 0
        while needed > 0:
            produced = 0
            ranges = (take(plan.ranges, start, total) if start < total else ()) if lap == 0 else plan.ranges
            read = start if lap == 0 else total
            for concatenated, raw in self._raw(plan.order, ranges, state):
                read += lap == 0
                if raw is None or concatenated in state.bad_samples:
                    continue
                try:
                    sample = decode_sample(raw, self.resolution, self.has_mask)
                except SampleCorrupt as error:
                    state.bad_samples.add(concatenated)
                    state.report(f"sample {raw.get('__key__')} in {raw['__url__']}: {error}", self.max_corrupt)
                    continue
                produced += 1
                needed -= 1
                yield read, sample
                if needed == 0:
                    return
            if produced == 0 and (lap > 0 or start == 0):
                raise DataError(f"no readable samples in the shards assigned to rank {self.layout.rank} "
                                f"worker {plan.worker}: {state.events[:3]}")
            lap += 1
            log.warning("rank %d worker %d: %d samples short after skipping corrupt data; re-reading its ranges",
                        self.layout.rank, plan.worker, needed)

    def _raw(self, order: EpochOrder, ranges: tuple[Interval, ...],
             state: _Reading) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """(concatenated position, raw sample or None when unreadable) for every epoch
        position of `ranges`, in order: a shuffled window's positions are read in one
        pass over the span of the window they need, then put in the window's order."""
        for start, stop in ranges:
            if not order.permuted:
                yield from self._span(order, start, stop, state)
                continue
            position = start
            while position < stop:
                index = position // order.window
                first = index * order.window
                end = min(stop, first + order.window)
                wanted = order.window_order(index)[position - first:end - first]
                found = dict(self._span(order, min(wanted), max(wanted) + 1, state, set(wanted)))
                for concatenated in wanted:
                    yield concatenated, found.get(concatenated)
                position = end

    def _span(self, order: EpochOrder, begin: int, end: int, state: _Reading,
              wanted: set[int] | None = None) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """(concatenated position, raw sample or None when unreadable) of the positions
        begin..end-1 (only those in `wanted`, when given), reading each shard segment once."""
        position = begin
        for segment in order.segments(begin, end):
            segment_end = position + segment.stop - segment.start
            url, count = self.layout.shards[segment.shard]
            if segment.shard not in state.bad_shards:
                try:
                    for raw in read_shard(url, self.storage_options, segment.start, segment.stop, expected=count):
                        if wanted is None or position in wanted:
                            raw["__url__"] = url
                            yield position, raw
                        position += 1
                except ShardCorrupt as error:
                    state.bad_shards.add(segment.shard)
                    state.report(f"shard {error}", self.max_corrupt)
            for missing in range(position, segment_end):
                if wanted is None or missing in wanted:
                    yield missing, None
            position = segment_end
