"""Shards on a real S3-compatible server (moto on loopback): write with the CLI, stream back,
and survive (or report in one line) the faults an object store has, injected by a proxy."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from genesis_dist.data import DataError, StorageError, make_loader, read_manifest
from genesis_dist.data.manifest import write_manifest
from genesis_dist.data.reader import read_shard
from genesis_dist.storage import filesystem

from data_helpers import REPO, damage_tar
from s3_faults import Fault, FaultyS3
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
    """Keys per rank for one epoch, and the loaders. Shuffle windows of one shard (20), so
    each of the 4 readers' ranges (40) covers whole windows and every shard has one reader."""
    loaders = [make_loader(url, "train", 10, rank=r, world_size=world, num_workers=workers, seed=1,
                           shuffle_buffer=20, storage_options=options) for r in range(world)]
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


@pytest.fixture(scope="module")
def faulty_proxy(s3_server):
    with FaultyS3(s3_server) as proxy:
        yield proxy


@pytest.fixture
def proxy(faulty_proxy):
    faulty_proxy.clear()
    yield faulty_proxy
    faulty_proxy.clear()


def test_transient_errors_are_retried_without_losing_samples(s3_shards, proxy):
    proxy.add(Fault("GET", "/manifest.json", "503", times=1))
    for index in range(8):  # every shard's first request is refused, shard 5's body is cut off
        proxy.add(Fault("GET", f"/train/shard-{index:06d}.tar", "503", times=1))
    proxy.add(Fault("GET", "/train/shard-000005.tar", "cut", times=1))
    per_rank, loaders = read_epoch(s3_shards, proxy.storage_options)
    seen = Counter(k for keys in per_rank for k in keys)
    assert len(seen) == 160 and set(seen.values()) == {1}
    assert sum(loader.corrupt_total for loader in loaders) == 0
    assert proxy.count("GET", "/manifest.json") == 3  # two loaders, one retry
    assert [proxy.count("GET", f"/train/shard-{i:06d}.tar") for i in range(8)] == [2] * 5 + [3] + [2] * 2


def test_a_body_cut_mid_read_is_fetched_again_without_losing_bytes(s3_server, s3_shards, proxy):
    url = f"{s3_shards}/train/shard-000001.tar"
    direct, path = filesystem(url, s3_server.storage_options)
    original = direct.cat_file(path)
    proxy.add(Fault("GET", "/train/shard-000001.tar", "cut", times=1))
    through_proxy, _ = filesystem(url, proxy.storage_options)
    with through_proxy.open(path, "rb") as stream:
        assert stream.read() == original
    assert proxy.count("GET", "/train/shard-000001.tar") == 2
    proxy.add(Fault("GET", "/train/shard-000001.tar", "cut", times=1))
    keys = [raw["__key__"] for raw in read_shard(url, proxy.storage_options, expected=20)]
    assert keys == [f"mds-seed0-train-{i:07d}" for i in range(20, 40)]


def test_a_missing_object_is_not_retried(s3_shards, proxy):
    with pytest.raises(DataError, match=r"/nothing: no manifest.json there"):
        read_manifest(f"{s3_shards}/nothing", proxy.storage_options)
    asked = {request: n for request, n in proxy.requests.items() if "/nothing" in request[1]}
    assert asked and set(asked.values()) == {1}  # s3fs's HEAD (and listing) each once: no retries


@pytest.mark.parametrize("workers", [0, 2])
def test_refused_access_is_not_retried_and_stops_in_one_line(s3_shards, proxy, workers):
    proxy.add(Fault("GET", "/train/shard-000002.tar", "403", times=None))
    loader = make_loader(s3_shards, "train", 10, num_workers=workers, shuffle_buffer=0,
                         storage_options=proxy.storage_options)
    with pytest.raises(StorageError) as stopped:
        list(loader)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith(f"{s3_shards}/train/shard-000002.tar: access denied")
    assert proxy.count("GET", "/train/shard-000002.tar") == 1


def test_persistent_errors_stop_after_the_configured_tries_naming_the_url(s3_shards, proxy, monkeypatch):
    proxy.add(Fault("GET", "/manifest.json", "503", times=None))
    options = {**proxy.storage_options, "config_kwargs": {"retries": {"total_max_attempts": 3}}}
    with pytest.raises(StorageError, match=rf"^{s3_shards}/manifest.json: .*unavailable") as stopped:
        read_manifest(s3_shards, options)
    assert "\n" not in str(stopped.value)
    assert proxy.count("GET", "/manifest.json") == 3
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # the AWS variable is honoured when the options say nothing
    with pytest.raises(StorageError):
        read_manifest(s3_shards, proxy.storage_options)
    assert proxy.count("GET", "/manifest.json") == 3 + 2


def test_writes_are_retried_too(s3_server, proxy):
    url = s3_server.create_bucket("data-writes") + "/set"
    proxy.add(Fault("PUT", "/set/manifest.json", "503", times=1))
    manifest = {"format": "genesis-dist-shards/1", "splits": {}}
    write_manifest(url, manifest, proxy.storage_options)
    assert proxy.count("PUT", "/set/manifest.json") == 2
    assert read_manifest(url, s3_server.storage_options) == manifest
