"""Which samples each rank and each DataLoader worker reads in one epoch.

The epoch's sequence is a function of (shard counts, seed, epoch, window) only, never
of the number of ranks or workers:

1. The split's shards are put in a seeded order that changes every epoch
   (`shuffle=False` keeps manifest order), and their samples are concatenated.
2. That sequence is cut into consecutive windows of `window` samples and each window is
   put in a seeded order of its own (window ≤ 1: unchanged). Reading any part of a window
   reads at most that window's span of (at most two) shards, so ranks still stream their
   own shards.

A phase of the epoch (its start, or a restart after a resize) lays the positions not yet
consumed (all of them at the start) out over the ranks, so that DDP never waits on a rank
that ran out:

3. Every rank gets a contiguous, equally long range of the not-yet-consumed positions:
   - drop_last=True:  each rank reads floor(floor(R / W) / B) batches of B (R positions
     left); the < W·(B+1) left over are dropped when the phase runs to the epoch's end
     (different ones every epoch, since the sequence changes);
   - drop_last=False: the positions are padded to W·ceil(R / W) by wrapping around to
     their start, and each rank reads ceil(ceil(R / W) / B) batches, the last one partial.
4. Within a rank, batch s goes to worker s mod num_workers (the order in which torch's
   DataLoader collects batches from its workers), and each worker reads, in sequence
   order, the contiguous part of the rank's range that fills exactly its batches.

Every reader consumes a prefix of its range, so what an epoch has consumed is a short
list of position intervals: the union over ranks is all a restart needs, whatever the
world size was or will be (see `ShardLoader.resume`).
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Iterator

from .errors import DataError

Interval = tuple[int, int]  # positions start..stop-1 of the epoch's sequence


@dataclass(frozen=True)
class Segment:
    """Samples start..stop-1 (by position) of shard number `shard`."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class EpochOrder:
    """The epoch's sequence of samples (module doc, steps 1–2): position → (shard, index)."""

    counts: tuple[int, ...]
    seed: int
    epoch: int
    shuffle: bool
    window: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts)

    @cached_property
    def shards(self) -> list[int]:
        return shard_order(len(self.counts), self.seed, self.epoch, self.shuffle)

    @cached_property
    def _starts(self) -> list[int]:
        """Where each shard of `shards` begins in the concatenated sequence."""
        starts, offset = [], 0
        for shard in self.shards:
            starts.append(offset)
            offset += self.counts[shard]
        return starts

    @property
    def permuted(self) -> bool:
        return self.shuffle and self.window > 1

    def window_order(self, index: int) -> list[int]:
        """Concatenated positions of window `index`, in the order the epoch reads them."""
        start = index * self.window
        positions = list(range(start, min(start + self.window, self.total)))
        random.Random(f"window:{self.seed}:{self.epoch}:{index}").shuffle(positions)
        return positions

    def source(self, position: int) -> int:
        """The concatenated-sequence position read at epoch position `position`."""
        if not self.permuted:
            return position
        index, offset = divmod(position, self.window)
        return self.window_order(index)[offset]

    def locate(self, concatenated: int) -> tuple[int, int]:
        """(shard, sample index within it) of a concatenated-sequence position."""
        slot = bisect.bisect_right(self._starts, concatenated) - 1
        while self.counts[self.shards[slot]] == 0 or concatenated - self._starts[slot] >= self.counts[self.shards[slot]]:
            slot += 1  # empty shards share their start with the next
        return self.shards[slot], concatenated - self._starts[slot]

    def segments(self, begin: int, end: int) -> list[Segment]:
        """Concatenated positions begin..end-1 as shard segments, in order."""
        segments = []
        position = begin
        while position < end:
            shard, index = self.locate(position)
            stop = min(self.counts[shard], index + end - position)
            segments.append(Segment(shard, index, stop))
            position += stop - index
        return segments

    def samples(self, ranges: Iterable[Interval]) -> Iterator[tuple[int, int]]:
        """(shard, index) of every epoch position in `ranges`, in reading order."""
        for start, stop in ranges:
            for position in range(start, stop):
                yield self.locate(self.source(position))


@dataclass(frozen=True)
class WorkerPlan:
    """What one DataLoader worker of one rank produces in one phase of an epoch."""

    worker: int
    ranges: tuple[Interval, ...]  # epoch positions it reads, in order
    steps: tuple[int, ...]  # positions of its batches in the rank's phase
    batch_sizes: tuple[int, ...]
    order: EpochOrder = field(compare=False, repr=False)

    @property
    def samples(self) -> int:
        return sum(self.batch_sizes)

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The samples it reads, as runs of consecutive samples of one shard (in reading order)."""
        runs: list[Segment] = []
        for shard, index in self.order.samples(self.ranges):
            if runs and runs[-1].shard == shard and runs[-1].stop == index:
                runs[-1] = Segment(shard, runs[-1].start, index + 1)
            else:
                runs.append(Segment(shard, index, index + 1))
        return tuple(runs)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard indices in the order epoch `epoch` reads them."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


# Interval lists: sorted, disjoint, non-empty [start, stop) pairs.

def merge(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """The union of `intervals` as a sorted list of disjoint, non-adjacent intervals."""
    merged: list[list[int]] = []
    for start, stop in sorted((int(a), int(b)) for a, b in intervals if b > a):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], stop)
        else:
            merged.append([start, stop])
    return tuple((a, b) for a, b in merged)


def length(intervals: Iterable[Interval]) -> int:
    return sum(stop - start for start, stop in intervals)


def complement(intervals: Iterable[Interval], total: int) -> tuple[Interval, ...]:
    """Positions 0..total-1 outside `intervals`."""
    gaps, position = [], 0
    for start, stop in merge(intervals):
        if start > position:
            gaps.append((position, min(start, total)))
        position = max(position, stop)
    if position < total:
        gaps.append((position, total))
    return tuple(gaps)


def take(intervals: tuple[Interval, ...], begin: int, end: int) -> tuple[Interval, ...]:
    """Positions begin..end-1 of the concatenation of `intervals` (wrapping around past its end)."""
    size = length(intervals)
    out: list[Interval] = []
    while begin < end:
        lap, offset = divmod(begin, size)
        want = min(end - begin, size - offset)
        for start, stop in intervals:
            if want == 0:
                break
            span = stop - start
            if offset >= span:
                offset -= span
                continue
            piece = min(span - offset, want)
            out.append((start + offset, start + offset + piece))
            begin, want, offset = begin + piece, want - piece, 0
    return tuple(out)


def prefix(intervals: tuple[Interval, ...], count: int) -> tuple[Interval, ...]:
    """The first `count` positions of `intervals` (all of them if it holds fewer)."""
    return take(intervals, 0, min(count, length(intervals)))


def rank_layout(total: int, world_size: int, batch_size: int, drop_last: bool) -> tuple[int, list[int]]:
    """(positions per rank, batch sizes of every rank) for `total` positions."""
    if total <= 0:
        raise DataError("the split holds no samples")
    if drop_last:
        per_rank = total // world_size
        batches = per_rank // batch_size
        if batches == 0:
            raise DataError(
                f"{total} samples are too few for {world_size} rank(s) × batch size {batch_size} with drop_last"
            )
        return batches * batch_size, [batch_size] * batches
    per_rank = -(-total // world_size)
    full, rest = divmod(per_rank, batch_size)
    return per_rank, [batch_size] * full + ([rest] if rest else [])


def plan_epoch(counts: list[int], *, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int,
               num_workers: int, batch_size: int, drop_last: bool, window: int = 0,
               consumed: Iterable[Interval] = ()) -> list[WorkerPlan]:
    """One WorkerPlan per DataLoader worker (one for num_workers=0) of `rank` for the
    phase of epoch `epoch` that starts with the epoch positions `consumed` already read."""
    workers = max(1, num_workers)
    order = EpochOrder(tuple(counts), seed, epoch, shuffle, window)
    remaining = complement(consumed, order.total)
    per_rank, sizes = rank_layout(length(remaining), world_size, batch_size, drop_last)
    position = rank * per_rank
    plans = []
    for worker in range(workers):
        steps = tuple(range(worker, len(sizes), workers))
        worker_sizes = tuple(sizes[s] for s in steps)
        span = sum(worker_sizes)
        plans.append(WorkerPlan(worker, take(remaining, position, position + span), steps, worker_sizes, order))
        position += span
    return plans


def batches_per_epoch(total: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """How many batches every rank yields per epoch."""
    return len(rank_layout(total, world_size, batch_size, drop_last)[1])


def phase_batches(total: int, consumed: Iterable[Interval], world_size: int, batch_size: int,
                  drop_last: bool) -> int:
    """How many batches every rank yields in the phase after `consumed`; 0 when what is
    left cannot fill one batch per rank (the epoch is over)."""
    left = total - length(merge(consumed))
    if left <= 0 or (drop_last and left // world_size < batch_size):
        return 0
    return batches_per_epoch(left, world_size, batch_size, drop_last)
