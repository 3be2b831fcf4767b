"""Shards on a real S3-compatible server (moto on loopback): write with the CLI, stream back."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest
import webdataset

from genesis_dist.data import make_loader, read_manifest
from genesis_dist.data.fs import filesystem

from data_helpers import REPO, damage_tar
from s3_server import subprocess_env


@pytest.fixture(scope="module")
def s3_shards(s3_server):
    """Multi-dSprites written by `tools/shard.py --out s3://…`: train 160 in 8 shards of 20."""
    url = s3_server.create_bucket("data-stream") + "/mds"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "shard.py"), "multi_dsprites", "--train", "160", "--val", "0",
         "--test", "20", "--shard-size", "20", "--workers", "2", "--out", url],
        env=subprocess_env(s3_server), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "multi_dsprites/train: 100%" in result.stderr  # a progress bar was shown
    return url


def read_epoch(url, options, world=2, workers=2):
    """Keys per rank for one epoch, and the loaders."""
    loaders = [make_loader(url, "train", 10, rank=r, world_size=world, num_workers=workers, seed=1,
                           storage_options=options) for r in range(world)]
    return [[k for batch in loader for k in batch["key"]] for loader in loaders], loaders


def test_manifest_on_s3_through_env_or_options(s3_server, s3_shards, monkeypatch):
    manifest = read_manifest(s3_shards, s3_server.storage_options)
    assert manifest["splits"]["train"]["count"] == 160 and len(manifest["splits"]["train"]["shards"]) == 8
    assert manifest["command"].startswith("tools/shard.py multi_dsprites")
    for name, value in s3_server.env.items():  # the standard AWS chain, endpoint from AWS_ENDPOINT_URL
        monkeypatch.setenv(name, value)
    assert read_manifest(s3_shards) == manifest


def test_two_ranks_two_workers_read_every_sample_once(s3_server, s3_shards):
    per_rank, loaders = read_epoch(s3_shards, s3_server.storage_options)
    assert [len(keys) for keys in per_rank] == [80, 80]
    assert len(loaders[0]) == len(loaders[1]) == 8
    seen = Counter(k for keys in per_rank for k in keys)
    assert len(seen) == 160 and set(seen.values()) == {1}


def test_corrupt_shard_on_s3_is_skipped_and_counted(s3_server, s3_shards, tmp_path):
    fs, _ = filesystem(s3_shards, s3_server.storage_options)
    bucket = s3_shards.removeprefix("s3://")
    copy = f"{bucket}-corrupt"
    fs.copy(bucket, copy, recursive=True)
    url = f"s3://{copy}"
    local = tmp_path / "shard.tar"
    fs.get_file(f"{copy}/train/shard-000003.tar", str(local))
    damage_tar(local, 3 * 10)  # garbage from the 11th sample on: tarfile sees an early end
    fs.put_file(str(local), f"{copy}/train/shard-000003.tar")

    per_rank, loaders = read_epoch(url, s3_server.storage_options)
    assert [len(keys) for keys in per_rank] == [80, 80]  # every rank still yields its 8 full batches
    events = [event for loader in loaders for event in loader.corrupt_events]
    assert events and all("shard-000003.tar" in event and "truncated" in event for event in events)
    seen = Counter(k for keys in per_rank for k in keys)
    intact = {f"mds-seed0-train-{i:07d}" for i in range(160) if not 60 <= i < 80}
    assert intact <= set(seen)
    assert not {f"mds-seed0-train-{i:07d}" for i in range(70, 80)} & set(seen)  # past the damage: gone


def test_webdataset_reads_s3_urls_through_the_registered_opener(s3_server, s3_shards, monkeypatch):
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    dataset = webdataset.WebDataset(f"{s3_shards}/train/shard-000000.tar", shardshuffle=False)
    assert len([sample["__key__"] for sample in dataset]) == 20
