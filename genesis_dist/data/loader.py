"""`make_loader`: batches of a shard set for one rank, resumable at (epoch, step)."""
from __future__ import annotations

import os
import warnings
from typing import Any, Iterator

from torch.utils.data import DataLoader

from .errors import CorruptDataError, DataError, StorageError
from .manifest import read_manifest, split_shards
from .plan import batches_per_epoch
from .stream import EVENTS, EpochStream, Layout


class ShardLoader:
    """Iterating yields one epoch of batches from the current position, then moves to the
    next epoch; `forever()` runs over epochs without end. See `make_loader`."""

    def __init__(self, url: str, split: str, layout: Layout, *, resolution: int | None, has_mask: bool,
                 storage_options: dict[str, Any] | None, max_corrupt: int, timeout: float, pin_memory: bool):
        self.url, self.split, self.layout = url, split, layout
        self._resolution, self._has_mask = resolution, has_mask
        self._storage_options, self.max_corrupt = storage_options, max_corrupt
        self._timeout, self._pin_memory = timeout, pin_memory
        self.epoch, self.step = 0, 0
        self.corrupt_events: list[str] = []  # skipped samples/shards of the current epoch
        self.corrupt_total = 0  # over the loader's life
        self._batches = batches_per_epoch(sum(c for _, c in layout.shards), layout.world_size,
                                          layout.batch_size, layout.drop_last)

    def __len__(self) -> int:
        """Batches per epoch (the same on every rank)."""
        return self._batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self.step >= self._batches:
            self.epoch, self.step = self.epoch + 1, 0
        if self.step == 0:
            self.corrupt_events = []
        epoch = self.epoch
        stream = EpochStream(self.layout, epoch=epoch, start_step=self.step, resolution=self._resolution,
                             has_mask=self._has_mask, storage_options=self._storage_options,
                             max_corrupt=self.max_corrupt)
        if self.layout.num_workers == 0:
            batches = iter(stream)
        else:
            batches = iter(DataLoader(stream, batch_size=None, num_workers=self.layout.num_workers,
                                      timeout=self._timeout, pin_memory=self._pin_memory))
        for batch in _clean_worker_errors(batches):
            self._record(batch.pop(EVENTS))
            self.step += 1
            yield batch
        if self.step != self._batches:
            raise DataError(f"{self.url} {self.split}: epoch {epoch} ended after {self.step} "
                            f"of {self._batches} batches")
        self.epoch, self.step = epoch + 1, 0

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
        self.epoch, self.step = int(epoch), 0

    def state_dict(self) -> dict[str, Any]:
        """The reading position: `step` batches of `epoch` have been handed out."""
        return {"epoch": self.epoch, "step": self.step, "layout": self._layout_signature()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a position saved by `state_dict` (exact when the layout is unchanged)."""
        saved = state.get("layout")
        if saved is not None and saved != self._layout_signature():
            warnings.warn(
                f"data position restored with a different layout ({saved} → {self._layout_signature()}): "
                "the rest of the interrupted epoch may repeat or skip samples", stacklevel=2,
            )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def _layout_signature(self) -> dict[str, Any]:
        layout = self.layout
        return {
            "split": self.split, "shards": len(layout.shards), "samples": sum(c for _, c in layout.shards),
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


def make_loader(url: str, split: str, batch_size: int, *, rank: int | None = None, world_size: int | None = None,
                num_workers: int = 2, seed: int = 0, shuffle_buffer: int = 1000, drop_last: bool = True,
                storage_options: dict[str, Any] | None = None, max_corrupt: int = 10, timeout: float = 300.0,
                pin_memory: bool = False) -> ShardLoader:
    """A loader over split `split` of the shard set at `url` (local path, file://, s3://, gs://).

    Yields dicts: "image" float [B,3,H,W] in [0,1]; "mask" long [B,H,W] (0 = background;
    only when the shard set has masks); "meta" list of dicts; "key" list of str.

    Ranks: `rank`/`world_size` default to the env RANK/WORLD_SIZE (set by Ray Train), else
    0/1. Every rank yields the same number of batches per epoch (`len(loader)`): the
    epoch's shard order is seeded by (seed, epoch) and its samples are cut into equal,
    contiguous ranges per rank; drop_last=True drops the < world_size·(batch_size+1) samples
    left over, drop_last=False pads by wrapping around and makes the last batch partial.
    Within a rank, shards are split over `num_workers` DataLoader worker processes
    (0 = read in this process), each with a shuffle buffer of `shuffle_buffer` raw samples
    seeded by (seed, epoch, rank, worker); shuffle_buffer=0 reads in manifest order.

    Position: `state_dict()` / `load_state_dict()` save and restore (epoch, step); a
    restored loader yields exactly the batches an uninterrupted one would have yielded
    next. `set_epoch(e)` jumps to the start of epoch e; `forever()` runs over epochs.

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
    manifest = read_manifest(url, storage_options)
    shards = tuple(split_shards(manifest, url, split))
    layout = Layout(shards, batch_size, rank, world_size, num_workers, seed, shuffle_buffer, drop_last)
    return ShardLoader(url, split, layout, resolution=manifest.get("resolution"),
                       has_mask=bool(manifest.get("has_mask")), storage_options=storage_options,
                       max_corrupt=max_corrupt, timeout=timeout, pin_memory=pin_memory)
