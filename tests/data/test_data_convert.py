"""Multi-dSprites generation and the conversion driver: manifest, idempotent re-runs, CLI errors."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from genesis_dist.data.convert import convert_dataset
from genesis_dist.data.formats.multi_dsprites import MultiDSprites
from genesis_dist.data.manifest import read_manifest, split_shards
from genesis_dist.data.reader import decode_sample, read_shard

from data_helpers import REPO, damage_tar


def decoded(url: str, split: str) -> list[dict]:
    manifest = read_manifest(url)
    return [decode_sample(raw, manifest["resolution"], True)
            for shard, count in split_shards(manifest, url, split) for raw in read_shard(shard, expected=count)]


def test_multi_dsprites_images_masks_and_manifest(mds_shards):
    manifest = read_manifest(mds_shards)
    assert manifest["dataset"] == "multi_dsprites" and manifest["resolution"] == 64
    assert manifest["K"] == 5 and manifest["background_entities"] == 1 and manifest["has_mask"]
    assert manifest["splits"]["train"]["count"] == 240
    assert [s["count"] for s in manifest["splits"]["train"]["shards"]] == [40] * 6
    assert [s["count"] for s in manifest["splits"]["test"]["shards"]] == [40, 10]
    for shard in manifest["splits"]["train"]["shards"]:
        path = Path(mds_shards) / shard["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]

    samples = decoded(mds_shards, "train")
    assert len({s["key"] for s in samples}) == 240
    levels = {0, 63, 127, 191, 255}
    counts = []
    for sample in samples:
        meta, image, mask = sample["meta"], sample["image"], sample["mask"]
        counts.append(meta["num_sprites"])
        assert set(meta["background"]) <= levels
        assert (image[mask == 0] == meta["background"]).all()
        for label in np.unique(mask[mask > 0]):  # painter's order: a label's pixels have its colour
            colour = meta["sprites"][label - 1]["colour"]
            assert set(colour) <= levels and (image[mask == label] == colour).all()
        assert mask.max() <= meta["num_sprites"] <= 4
    assert set(counts) == {1, 2, 3, 4}


def test_generation_is_reproducible_and_seeded(tmp_path):
    a, b, c = (str(tmp_path / name) for name in "abc")
    convert_dataset(MultiDSprites({"train": 30}, seed=1), a, progress=False)
    convert_dataset(MultiDSprites({"train": 30}, seed=1), b, workers=2, progress=False)
    convert_dataset(MultiDSprites({"train": 30}, seed=2), c, progress=False)
    sha = {name: read_manifest(url)["splits"]["train"]["shards"][0]["sha256"] for name, url in zip("abc", (a, b, c))}
    assert sha["a"] == sha["b"] != sha["c"]


def test_rerun_verifies_shards_and_redoes_only_damaged_ones(tmp_path, shard_cli):
    out = tmp_path / "out"
    argv = ["multi_dsprites", "--train", "90", "--val", "0", "--test", "20", "--shard-size", "30",
            "--out", str(out), "--quiet"]
    assert shard_cli.main(argv) == 0
    shards = sorted((out / "train").glob("shard-*.tar"))
    assert len(shards) == 3
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in shards}
    os.utime(shards[0], ns=(1, 1))  # an untouched shard keeps this mtime through a re-run
    damage_tar(shards[1], 5)

    assert shard_cli.main(argv) == 0
    manifest = read_manifest(str(out))
    assert shards[0].stat().st_mtime_ns == 1
    assert shards[1].read_bytes() == before[shards[1].name][1]  # rewritten, identical to the original
    assert hashlib.sha256(shards[1].read_bytes()).hexdigest() == manifest["splits"]["train"]["shards"][1]["sha256"]
    assert manifest["complete"] and manifest["command"].startswith("tools/shard.py multi_dsprites")


def test_limit_takes_a_subset_and_removes_stale_shards(tmp_path, shard_cli):
    out = tmp_path / "out"
    base = ["multi_dsprites", "--train", "90", "--val", "0", "--test", "0", "--shard-size", "30",
            "--out", str(out), "--quiet"]
    assert shard_cli.main(base) == 0
    assert shard_cli.main(base + ["--limit", "40"]) == 0
    manifest = read_manifest(str(out))
    assert manifest["splits"]["train"]["count"] == 40
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_interrupted_run_leaves_an_incomplete_manifest_that_loaders_refuse(tmp_path):
    from genesis_dist.data import DataError, make_loader

    out = str(tmp_path / "out")
    convert_dataset(MultiDSprites({"train": 20}), out, progress=False)
    manifest_path = Path(out) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["complete"] = False
    manifest_path.write_text(json.dumps(manifest))
    try:
        make_loader(out, "train", 4, num_workers=0)
    except DataError as error:
        assert "incomplete" in str(error) and out in str(error)
    else:
        raise AssertionError("an incomplete shard set was accepted")


def test_cli_user_errors_are_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "shard.py"), "objects_room", "--source", str(tmp_path / "nope.tfrecords"),
         "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {tmp_path / 'nope.tfrecords'}: no such file or folder"]


def test_inspect_prints_the_manifest_and_writes_a_grid(mds_shards, tmp_path, shard_cli, capsys):
    grid = tmp_path / "grid.png"
    assert shard_cli.main(["inspect", mds_shards, "--count", "8", "--grid", str(grid)]) == 0
    printed = capsys.readouterr().out
    assert "multi_dsprites" in printed and "train: 240 samples in 6 shards" in printed
    from PIL import Image

    from genesis_dist.figures import PAD, ROW_LABEL_WIDTH, caption_height

    # figures.dataset_figure: a caption, one row of 8 images and one of mask overlays (64 px cells → 128)
    assert Image.open(grid).size == (ROW_LABEL_WIDTH + PAD + 8 * (128 + PAD), caption_height(1) + PAD + 2 * (128 + PAD))
