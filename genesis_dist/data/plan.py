"""Which samples each rank and each DataLoader worker reads in one epoch.

The rule (equal batches per rank, so DDP never waits on a rank that ran out):

1. The split's shards are put in a seeded order that changes every epoch
   (`shuffle=False` keeps manifest order), and their samples are concatenated.
2. Every rank gets a contiguous, equally long range of that sequence, so shards
   are never read by more than the ranks/workers whose ranges touch them:
   - drop_last=True:  each rank reads floor(floor(N / W) / B) batches of B; the
     remaining < W·(B+1) samples of the epoch are left out (different ones every
     epoch, since the shard order changes);
   - drop_last=False: the sequence is padded to W·ceil(N / W) by wrapping around to
     its start, and each rank reads ceil(ceil(N / W) / B) batches, the last one partial.
3. Within a rank, batch s goes to worker s mod num_workers (the order in which
   torch's DataLoader collects batches from its workers), and each worker reads the
   contiguous part of the rank's range that fills exactly its batches.

Everything is a function of (shard counts, seed, epoch, rank, world size, workers,
batch size), which is what makes a saved (epoch, step) position exact.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import DataError


@dataclass(frozen=True)
class Segment:
    """Samples start..stop-1 (by position) of shard number `shard`."""

    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class WorkerPlan:
    """What one DataLoader worker of one rank produces in one epoch."""

    worker: int
    segments: tuple[Segment, ...]
    steps: tuple[int, ...]  # positions of its batches in the rank's epoch
    batch_sizes: tuple[int, ...]

    @property
    def samples(self) -> int:
        return sum(self.batch_sizes)


def shard_order(num_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """Shard indices in the order epoch `epoch` reads them."""
    order = list(range(num_shards))
    if shuffle:
        random.Random(f"shards:{seed}:{epoch}").shuffle(order)
    return order


def rank_layout(total: int, world_size: int, batch_size: int, drop_last: bool) -> tuple[int, list[int]]:
    """(samples per rank, batch sizes of every rank) for a split of `total` samples."""
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


def _segments(order: list[int], counts: list[int], begin: int, end: int) -> tuple[Segment, ...]:
    """Positions begin..end-1 of the concatenated (wrapped) sequence as shard segments."""
    total = sum(counts)
    segments: list[Segment] = []
    position = begin
    while position < end:
        lap_start = (position // total) * total
        offset = lap_start
        for shard in order:
            if position < offset + counts[shard]:
                start = position - offset
                stop = min(counts[shard], end - offset)
                segments.append(Segment(shard, start, stop))
                position = offset + stop
                if position >= end:
                    break
            offset += counts[shard]
    return tuple(segments)


def plan_epoch(counts: list[int], *, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int,
               num_workers: int, batch_size: int, drop_last: bool) -> list[WorkerPlan]:
    """One WorkerPlan per DataLoader worker (one for num_workers=0) of `rank` in `epoch`."""
    workers = max(1, num_workers)
    order = shard_order(len(counts), seed, epoch, shuffle)
    per_rank, sizes = rank_layout(sum(counts), world_size, batch_size, drop_last)
    position = rank * per_rank
    plans = []
    for worker in range(workers):
        steps = tuple(range(worker, len(sizes), workers))
        worker_sizes = tuple(sizes[s] for s in steps)
        length = sum(worker_sizes)
        plans.append(WorkerPlan(worker, _segments(order, counts, position, position + length), steps, worker_sizes))
        position += length
    return plans


def batches_per_epoch(total: int, world_size: int, batch_size: int, drop_last: bool) -> int:
    """How many batches every rank yields per epoch."""
    return len(rank_layout(total, world_size, batch_size, drop_last)[1])
