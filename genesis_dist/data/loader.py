"""`make_loader`: batches of a shard set for one rank, resumable at (epoch, step)."""
from __future__ import annotations

import os
import warnings
from typing import Any, Iterator

from torch.utils.data import DataLoader

from .errors import CorruptDataError, DataError, StorageError
from .manifest import ShardSet, split_shards
from .plan import Interval, batches_per_epoch, merge, phase_batches, prefix
from .stream import EVENTS, POSITION, EpochStream, Layout


class ShardLoader:
    """Iterating yields the rest of the current epoch's batches, then moves to the next
    epoch; `forever()` runs over epochs without end. See `make_loader`.

    An epoch runs in phases: a phase lays the epoch positions not yet consumed (`consumed`,
    none at the epoch's start) out over the ranks (`data/plan.py`); a restart with another
    world size (`resume`) starts a new phase from what all ranks had consumed.
    """

    def __init__(self, url: str, split: str, layout: Layout, *, resolution: int | None, has_mask: bool,
                 storage_options: dict[str, Any] | None, max_corrupt: int, timeout: float, pin_memory: bool):
        self.url, self.split, self.layout = url, split, layout
        self._resolution, self._has_mask = resolution, has_mask
        self._storage_options, self.max_corrupt = storage_options, max_corrupt
        self._timeout, self._pin_memory = timeout, pin_memory
        self.total = sum(layout.counts)
        self.corrupt_events: list[str] = []  # skipped samples/shards of the current epoch
        self.corrupt_total = 0  # over the loader's life
        self._epoch_batches = batches_per_epoch(self.total, layout.world_size, layout.batch_size, layout.drop_last)
        self._start_phase(0, (), 0)

    def _start_phase(self, epoch: int, consumed: tuple[Interval, ...], trained: int) -> None:
        layout = self.layout
        self.epoch, self.step = int(epoch), 0
        self.consumed = merge(consumed)  # epoch positions read before this phase (by any rank)
        self.trained_before = int(trained)  # samples of the epoch trained on before this phase (all ranks)
        self.handed_out = 0  # samples this rank handed out in this phase
        self.progress = [0] * max(1, layout.num_workers)  # positions of each plan worker's ranges read
        self._batches = phase_batches(self.total, self.consumed, layout.world_size, layout.batch_size,
                                      layout.drop_last)

    def __len__(self) -> int:
        """Batches per (whole) epoch, the same on every rank."""
        return self._epoch_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.step >= self._batches:
            self._start_phase(self.epoch + 1, (), 0)
        if self.step == 0 and not self.consumed:
            self.corrupt_events = []
        epoch = self.epoch
        stream = EpochStream(self.layout, epoch=epoch, start_step=self.step, resolution=self._resolution,
                             has_mask=self._has_mask, storage_options=self._storage_options,
                             max_corrupt=self.max_corrupt, consumed=self.consumed, progress=tuple(self.progress))
        if self.layout.num_workers == 0:
            batches = iter(stream)
        else:
            batches = iter(DataLoader(stream, batch_size=None, num_workers=self.layout.num_workers,
                                      timeout=self._timeout, pin_memory=self._pin_memory))
        for batch in _clean_worker_errors(batches):
            self._record(batch.pop(EVENTS))
            worker, read = batch.pop(POSITION)
            self.progress[worker] = read
            self.step += 1
            self.handed_out += len(batch["key"])
            yield batch
        if self.step != self._batches:
            raise DataError(f"{self.url} {self.split}: epoch {epoch} ended after {self.step} "
                            f"of {self._batches} batches")
        self._start_phase(epoch + 1, (), 0)

    def forever(self) -> Iterator[dict[str, Any]]:
        """Batches over successive epochs, without end (for a training loop)."""
        while True:
            yield from self

    def _record(self, events: list[str]) -> None:
        self.corrupt_events.extend(events)
        self.corrupt_total += len(events)
        if len(self.corrupt_events) > self.max_corrupt:
            raise CorruptDataError(
                f"{self.url} {self.split}: {len(self.corrupt_events)} corrupt samples/shards in epoch {self.epoch} "
                f"on rank {self.layout.rank} (max_corrupt={self.max_corrupt}); first: {self.corrupt_events[0]}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of `epoch`."""
        self._start_phase(epoch, (), 0)

    def read_ranges(self) -> tuple[Interval, ...]:
        """Epoch positions this rank has read in the current phase (corrupt ones included)."""
        if self.step == 0:
            return ()
        plans = self.layout.plans(self.epoch, self.consumed)
        return merge(r for plan in plans for r in prefix(plan.ranges, self.progress[plan.worker]))

    def epoch_position(self) -> dict[str, int]:
        """{"epoch", "trained"}: the epoch and the samples of it trained on so far by all
        ranks together (every rank hands out as many per step)."""
        return {"epoch": self.epoch,
                "trained": self.trained_before + self.handed_out * self.layout.world_size}

    def state_dict(self) -> dict[str, Any]:
        """The reading position: `step` batches of the phase of `epoch` that began after the
        positions `consumed` have been handed out; `read` the positions this rank has read
        since, `progress` how far each of its DataLoader workers got (see `resume`)."""
        return {
            "epoch": self.epoch, "step": self.step, "consumed": [list(r) for r in self.consumed],
            "read": [list(r) for r in self.read_ranges()], "progress": list(self.progress),
            "trained_before": self.trained_before, "handed_out": self.handed_out,
            "rank": self.layout.rank, "world_size": self.layout.world_size, "layout": self._layout_signature(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict` (see `resume`: one state is every
        rank's only when it was saved by a single rank)."""
        self.resume([state])

    def resume(self, states: list[dict[str, Any]]) -> None:
        """Continue from the positions every rank of a run saved at the same step (`states`,
        one per rank of the world that saved them, in any order).

        Same layout as this rank's saved one (world size, rank, batch size, workers, shuffle):
        it yields exactly the batches it would have yielded next. Otherwise (the world size
        changed): a new phase of the saved epoch over the positions no rank had read, so
        no sample of the epoch is repeated or skipped (beyond the < world·(batch+1) a phase
        that ends the epoch leaves out with drop_last).
        """
        mine = next((s for s in states if s.get("rank", 0) == self.layout.rank), None)
        if any("consumed" not in s for s in states):  # saved by an older version: epoch and step only
            self._resume_legacy(mine or states[0])
            return
        if mine is not None and mine.get("layout") == self._layout_signature():
            self._start_phase(mine["epoch"], tuple(map(tuple, mine["consumed"])), mine["trained_before"])
            self.step, self.progress, self.handed_out = int(mine["step"]), list(mine["progress"]), int(mine["handed_out"])
            return
        saved_world = {int(s.get("world_size", 1)) for s in states}
        ranks = sorted(int(s.get("rank", 0)) for s in states)
        if len(saved_world) != 1 or ranks != list(range(saved_world.pop())):
            raise DataError(f"{self.url} {self.split}: the saved data positions are incomplete "
                            f"(ranks {ranks} of world size {sorted({s.get('world_size') for s in states})})")
        epochs = {int(s["epoch"]) for s in states}
        if len(epochs) != 1 or any(s["consumed"] != states[0]["consumed"] for s in states):
            raise DataError(f"{self.url} {self.split}: the saved data positions were not saved at the same step")
        consumed = [tuple(r) for s in states for r in list(s["consumed"]) + list(s["read"])]
        trained = int(states[0]["trained_before"]) + sum(int(s["handed_out"]) for s in states)
        self._start_phase(epochs.pop(), tuple(consumed), trained)

    def _resume_legacy(self, state: dict[str, Any]) -> None:
        warnings.warn("data position saved by an older genesis-dist (epoch and step only, another sample "
                      "order): the rest of the interrupted epoch may repeat or skip samples", stacklevel=3)
        self._start_phase(state["epoch"], (), 0)
        self.step = int(state["step"])
        plans = self.layout.plans(self.epoch)
        self.progress = [sum(size for step, size in zip(p.steps, p.batch_sizes) if step < self.step) for p in plans]
        self.handed_out = sum(self.progress)

    def _layout_signature(self) -> dict[str, Any]:
        layout = self.layout
        return {
            "split": self.split, "shards": len(layout.shards), "samples": self.total,
            "batch_size": layout.batch_size, "rank": layout.rank, "world_size": layout.world_size,
            "num_workers": layout.num_workers, "seed": layout.seed, "shuffle_buffer": layout.shuffle_buffer,
            "drop_last": layout.drop_last,
        }


def _clean_worker_errors(batches: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Re-raise a DataError or StorageError from a DataLoader worker with its own one-line
    message (torch wraps it in "Caught ... in DataLoader worker process N" and a traceback)."""
    try:
        yield from batches
    except (DataError, StorageError) as error:
        text = str(error)
        if "Original Traceback" not in text:
            raise
        last = [line for line in text.splitlines() if line.strip()][-1]
        raise type(error)(last.split(": ", 1)[-1]) from None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def make_loader(data: str | ShardSet, split: str, batch_size: int, *, rank: int | None = None, world_size: int | None = None,
                num_workers: int = 2, seed: int = 0, shuffle_buffer: int = 1000, drop_last: bool = True,
                storage_options: dict[str, Any] | None = None, max_corrupt: int = 10, timeout: float = 300.0,
                pin_memory: bool = False) -> ShardLoader:
    """A loader over split `split` of the shard set `data`: a URL (local path, file://, s3://,
    gs://; read with `storage_options`) or an opened `ShardSet`.

    Yields dicts: "image" float [B,3,H,W] in [0,1]; "mask" long [B,H,W] (0 = background;
    only when the shard set has masks); "meta" list of dicts; "key" list of str.

    Ranks: `rank`/`world_size` default to the env RANK/WORLD_SIZE (set by Ray Train), else
    0/1. Every rank yields the same number of batches per epoch (`len(loader)`). An epoch's
    sequence depends on (seed, epoch) only: the shards in a seeded order, their samples
    concatenated, and every window of `shuffle_buffer` consecutive samples in a seeded order
    of its own (0 or 1: manifest order). It is cut into equal, contiguous ranges per rank,
    and each rank's range into contiguous parts for its `num_workers` DataLoader worker
    processes (0 = read in this process); drop_last=True drops the < world_size·(batch_size+1)
    samples left over, drop_last=False pads by wrapping around and makes the last batch partial.

    Position: `state_dict()` / `load_state_dict()` save and restore it; a restored loader
    yields exactly the batches an uninterrupted one would have yielded next. `resume(states)`
    takes every rank's saved state: with another world size it lays the rest of the epoch
    (the samples no rank had read) out over the new ranks. `set_epoch(e)` jumps to the start
    of epoch e; `forever()` runs over epochs.

    Faults: transient storage errors are retried by the storage library (see
    genesis_dist.storage), and what outlives the retries raises StorageError; corrupt samples and shards
    are skipped, logged and counted (`corrupt_events`, `corrupt_total`), and more than
    `max_corrupt` in one epoch on a rank raises CorruptDataError. A worker that produces
    nothing for `timeout` seconds raises instead of hanging.
    """
    rank = _env_int("RANK", 0) if rank is None else rank
    world_size = _env_int("WORLD_SIZE", 1) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is outside world_size {world_size}")
    if batch_size < 1:
        raise DataError(f"batch_size must be ≥ 1, got {batch_size}")
    shard_set = data if isinstance(data, ShardSet) else ShardSet.open(data, storage_options)
    shards = tuple(split_shards(shard_set.manifest, shard_set.url, split))
    layout = Layout(shards, batch_size, rank, world_size, num_workers, seed, shuffle_buffer, drop_last)
    return ShardLoader(shard_set.url, split, layout, resolution=shard_set.resolution, has_mask=shard_set.has_mask,
                       storage_options=shard_set.storage_options, max_corrupt=max_corrupt, timeout=timeout,
                       pin_memory=pin_memory)
