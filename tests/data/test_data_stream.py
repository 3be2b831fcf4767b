"""The streaming loader on local shards: rank/worker split, resume, corruption, a hung worker.

Retries of transient storage errors are the storage library's, tested on S3 in test_data_s3.py."""
from __future__ import annotations

import itertools
import shutil
import time
from collections import Counter
from pathlib import Path

import fsspec
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem

from genesis_dist.data import CorruptDataError, DataError, make_loader

from data_helpers import damage_tar, replace_member


def keys_per_batch(loader, batches=None):
    stream = loader if batches is None else itertools.islice(loader.forever(), batches)
    return [tuple(batch["key"]) for batch in stream]


def test_batches_have_the_documented_shapes(mds_shards):
    loader = make_loader(mds_shards, "train", 8, num_workers=0)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert batch["mask"].shape == (8, 64, 64) and batch["mask"].dtype == torch.long
    assert len(batch["meta"]) == len(batch["key"]) == 8 and isinstance(batch["meta"][0], dict)


def test_two_ranks_two_workers_read_every_sample_once_per_epoch(mds_shards):
    loaders = [make_loader(mds_shards, "train", 10, rank=r, world_size=2, num_workers=2, seed=5) for r in range(2)]
    orders = []
    for _ in range(2):
        seen = Counter()
        order = []
        for loader in loaders:
            batches = keys_per_batch(loader)
            assert len(batches) == len(loader) == 12  # 240 samples / 2 ranks / 10
            for keys in batches:
                seen.update(keys)
                order.extend(keys)
        assert len(seen) == 240 and set(seen.values()) == {1}
        orders.append(order)
    assert orders[0] != orders[1]  # a new shuffle every epoch


def test_unequal_shards_still_give_every_rank_the_same_batches(mds_shards):
    for drop_last in (True, False):  # test split: 50 samples in shards of 40 and 10, 3 ranks
        per_rank = [keys_per_batch(make_loader(mds_shards, "test", 4, rank=r, world_size=3, num_workers=2,
                                               drop_last=drop_last)) for r in range(3)]
        lengths = {len(batches) for batches in per_rank}
        assert lengths == ({4} if drop_last else {5})
        keys = [k for batches in per_rank for batch in batches for k in batch]
        if drop_last:
            assert len(keys) == len(set(keys)) == 48
        else:
            assert len(set(keys)) == 50 and len(keys) == 51


def test_eval_reading_without_shuffle_is_in_manifest_order(mds_shards):
    loader = make_loader(mds_shards, "test", 50, rank=0, world_size=1, num_workers=0, shuffle_buffer=0,
                         drop_last=False)
    (batch,) = list(loader)
    assert list(batch["key"]) == sorted(batch["key"]) and len(batch["key"]) == 50


@pytest.mark.parametrize("workers,stop_after", [(2, 5), (2, 12), (0, 7)])
def test_resume_yields_exactly_what_an_uninterrupted_reader_would(mds_shards, workers, stop_after):
    options = dict(rank=1, world_size=2, num_workers=workers, seed=3, shuffle_buffer=30)
    reference = keys_per_batch(make_loader(mds_shards, "train", 10, **options), 20)  # 12 batches/epoch: crosses one

    interrupted = make_loader(mds_shards, "train", 10, **options)
    assert keys_per_batch(interrupted, stop_after) == reference[:stop_after]
    state = interrupted.state_dict()
    del interrupted

    resumed = make_loader(mds_shards, "train", 10, **options)
    resumed.load_state_dict(state)
    assert keys_per_batch(resumed, 20 - stop_after) == reference[stop_after:]


def test_set_epoch_starts_that_epoch(mds_shards):
    reference = keys_per_batch(make_loader(mds_shards, "train", 40, num_workers=0), 6 * 3)
    loader = make_loader(mds_shards, "train", 40, num_workers=0)
    loader.set_epoch(2)
    assert keys_per_batch(loader) == reference[12:18]
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (3, 0)


def test_rank_and_world_size_default_to_the_environment(mds_shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    loader = make_loader(mds_shards, "train", 10, num_workers=0)
    assert (loader.layout.rank, loader.layout.world_size) == (1, 3)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(DataError, match="rank 3 is outside world_size 3"):
        make_loader(mds_shards, "train", 10, num_workers=0)


def test_missing_split_names_the_ones_present(mds_shards):
    with pytest.raises(DataError, match=r"no split 'val' \(splits: test, train\)"):
        make_loader(mds_shards, "val", 10)


@pytest.fixture
def shard_copy(mds_shards, tmp_path) -> Path:
    copy = tmp_path / "shards"
    shutil.copytree(mds_shards, copy)
    return copy


def test_corrupt_sample_is_skipped_counted_and_batches_stay_full(shard_copy):
    shard = shard_copy / "train" / "shard-000002.tar"
    replace_member(shard, "mds-seed0-train-0000085.image.png", b"\x89PNG garbage")
    loader = make_loader(str(shard_copy), "train", 10, num_workers=2)
    batches = keys_per_batch(loader)
    assert len(batches) == 24 and all(len(keys) == 10 for keys in batches)
    keys = Counter(k for batch in batches for k in batch)
    assert "mds-seed0-train-0000085" not in keys and len(keys) == 239
    assert len(loader.corrupt_events) == 1 and loader.corrupt_total == 1
    assert "mds-seed0-train-0000085" in loader.corrupt_events[0] and str(shard) in loader.corrupt_events[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_too_much_corruption_stops_with_a_clear_error(shard_copy, workers):
    for index in (1, 4):
        damage_tar(shard_copy / "train" / f"shard-00000{index}.tar", 3)
    loader = make_loader(str(shard_copy), "train", 10, num_workers=workers, max_corrupt=1, shuffle_buffer=0)
    with pytest.raises(CorruptDataError, match=r"max_corrupt=1") as caught:
        list(loader)
    assert "\n" not in str(caught.value) and "shard-00000" in str(caught.value)


class StallingFileSystem(LocalFileSystem):
    """Local files behind a connection that hangs when a shard is opened."""

    protocol = "stalling"

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("stalling://"))

    def _open(self, path, mode="rb", **kwargs):
        if path.endswith(".tar"):
            time.sleep(60)
        return super()._open(path, mode, **kwargs)


def test_a_hung_worker_raises_instead_of_hanging(mds_shards):
    fsspec.register_implementation("stalling", StallingFileSystem, clobber=True)
    loader = make_loader(f"stalling://{mds_shards}", "train", 10, num_workers=1, timeout=2)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        next(iter(loader))
    assert time.monotonic() - started < 30
