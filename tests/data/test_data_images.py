"""`tools/shard.py images`: a user's own folder of real photographs (tests/fixtures, see
own_images.py) → shards, locally and on a real S3 server (moto): what each image becomes,
counts, splits that stay put when files are added, the skip summary, masks, and the
one-line refusals."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageFile

from genesis_dist.data import read_manifest
from genesis_dist.data.convert import ConversionReport, convert_dataset
from genesis_dist.data.formats.images import ImageFolder
from genesis_dist.data.manifest import split_shards
from genesis_dist.data.reader import decode_sample, read_shard
from genesis_dist.storage import filesystem

from data_helpers import REPO
from own_images import APC_FRAME, BAD, SHAPESTACKS, band_labels, build_own_folder, centre_square, rgb_of
from s3_server import subprocess_env

SIZE = 64


def samples_by_path(url: str, storage_options: dict | None = None) -> dict[str, dict]:
    """{relative path: decoded sample with its split} of every split of the shard set at `url`."""
    manifest = read_manifest(url, storage_options)
    found = {}
    for split in manifest["splits"]:
        for shard_url, count in split_shards(manifest, url, split):
            for raw in read_shard(shard_url, expected=count, storage_options=storage_options):
                sample = decode_sample(raw, manifest["resolution"], manifest["has_mask"])
                sample["split"] = split
                found[sample["meta"]["path"]] = sample
    return found


def hash_split(relative: str, train: float, val: float) -> str:
    """The split the issue specifies: sha256 of the POSIX relative path as a number in [0, 1)."""
    u = int(hashlib.sha256(relative.encode()).hexdigest()[:16], 16) / 2 ** 64
    return "train" if u < train else "val" if u < train + val else "test"


def run_cli(shard_cli, capsys, *argv: str) -> tuple[int, str, str]:
    status = shard_cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def own_folder(tmp_path):
    root = tmp_path / "photos"
    return root, build_own_folder(root)


def assert_images_match(samples: dict[str, dict], expected: dict, size: int) -> None:
    for relative, want in expected.items():
        got = samples[relative]["image"]
        assert got.shape == (size, size, 3) and got.dtype == np.uint8, relative
        oracle = want.at(size)
        if want.exact:
            np.testing.assert_array_equal(got, oracle, err_msg=relative)
        else:  # JPEG: decoded at a reduced DCT scale; measured ≈ 0.2 levels from a full decode
            assert np.abs(got.astype(int) - oracle).mean() < 1.0, relative


def test_own_folder_becomes_shards_of_what_each_photo_shows(own_folder, tmp_path, shard_cli, capsys):
    root, expected = own_folder
    out = tmp_path / "shards"
    status, printed, err = run_cli(shard_cli, capsys, "images", str(root), "--out", str(out), "--size", str(SIZE),
                                   "--split", "0.6,0.2,0.2", "--workers", "2")
    assert status == 0, err
    manifest = read_manifest(str(out))
    assert (manifest["dataset"], manifest["resolution"], manifest["K"], manifest["has_mask"]) == ("images", SIZE, 7, False)
    assert manifest["complete"] and manifest["background_entities"] is None

    samples = samples_by_path(str(out))
    assert set(samples) == set(expected)  # hidden files, notes.txt and the two bad files are not samples
    assert_images_match(samples, expected, SIZE)
    for relative, sample in samples.items():
        assert sample["split"] == hash_split(relative, 0.6, 0.2), relative
    assert {s["split"] for s in samples.values()} == {"train", "val", "test"}
    counts = {split: record["count"] for split, record in manifest["splits"].items()}
    assert sum(counts.values()) == len(expected) == 19
    rotated = samples["phone/rotated.jpg"]["meta"]
    assert (rotated["width"], rotated["height"]) == (600, 960)  # as displayed, EXIF orientation applied

    # The summary: throughput, then each skipped file with why; what was left out, said up front.
    skipped = {path for record in manifest["splits"].values() for path in record["skipped_sources"]}
    assert skipped == {str(root / relative) for relative in BAD}
    assert f"converted {len(expected)} images in " in printed and "images/s with 2 processes" in printed
    assert "skipped 2 files" in printed
    for relative, reason in BAD.items():
        assert f"  {root / relative}: UnreadableImage: {reason}" in printed
    assert f"{root}: 21 images (" in err and "1 other files left out (notes.txt)" in err
    assert "images/train: 100%" in err  # the progress bar, counting images


def test_transparency_goes_over_the_stated_background(own_folder, tmp_path, shard_cli, capsys):
    root, expected = own_folder
    out = tmp_path / "black"
    assert run_cli(shard_cli, capsys, "images", str(root), "--out", str(out), "--size", "32", "--background", "black",
                   "--workers", "1", "--quiet")[0] == 0
    apc = rgb_of(APC_FRAME)
    over_black = apc.copy()
    over_black[:, : apc.shape[1] // 2] = 0
    got = samples_by_path(str(out))["cutouts/rgba.png"]["image"]
    np.testing.assert_array_equal(got, centre_square(over_black, 32))
    assert read_manifest(str(out))["settings"]["background"] == "#000000"


def test_adding_files_keeps_every_earlier_file_in_its_split(own_folder, tmp_path, shard_cli, capsys):
    root, expected = own_folder
    out = tmp_path / "shards"
    argv = ["images", str(root), "--out", str(out), "--size", "32", "--split", "0.5,0.25,0.25", "--quiet"]
    assert run_cli(shard_cli, capsys, *argv)[0] == 0
    before = {path: s["split"] for path, s in samples_by_path(str(out)).items()}

    status, printed, _ = run_cli(shard_cli, capsys, *argv)  # nothing changed: everything verified and kept
    assert status == 0 and "converted 0 images" in printed and f"{len(expected)} samples of earlier runs" in printed

    added = [f"new/batch_{i}/frame_{i}.png" for i in range(8)] + ["lab/apc/a_first.png", "robot/zz_last.png"]
    for relative in added:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(APC_FRAME, root / relative)
    (root / "lab/stacks/cam1.png").write_bytes((SHAPESTACKS / "rgb-w=0-f=0-l=0-c=original-cam_2-mono-0.png").read_bytes())
    status, printed, _ = run_cli(shard_cli, capsys, *argv)
    assert status == 0
    after = samples_by_path(str(out))
    assert set(after) == set(before) | set(added)
    assert {path: after[path]["split"] for path in before} == before
    assert all(after[path]["split"] == hash_split(path, 0.5, 0.25) for path in added)
    # A file whose content changed is converted again (its size or mtime changed), not kept.
    np.testing.assert_array_equal(after["lab/stacks/cam1.png"]["image"], after["lab/stacks/cam2.png"]["image"])
    manifest = read_manifest(str(out))
    assert sum(r["count"] for r in manifest["splits"].values()) == len(expected) + len(added)


def _mask_folder(root, masks):
    """Masks for three images: the APC object (from the frame's segm.png, label 114), bands on a
    ShapeStacks view (a palette PNG), and bands drawn on the rotated phone photo as displayed."""
    segm = np.asarray(Image.open(APC_FRAME.parent / "frame-000000.segm.png"))
    apc_mask = (segm == 114).astype(np.uint8)
    (masks / "lab/apc").mkdir(parents=True)
    Image.fromarray(apc_mask).save(masks / "lab/apc/frame.png")
    stacks = band_labels(224, 224, 5)
    (masks / "lab/stacks").mkdir(parents=True)
    paletted = Image.fromarray(stacks, mode="L").convert("P")
    paletted.save(masks / "lab/stacks/cam1.png")
    phone = band_labels(960, 600, 3)  # displayed portrait: 600 wide, 960 tall
    (masks / "phone").mkdir(parents=True)
    Image.fromarray(phone).save(masks / "phone/rotated.png")
    return {"lab/apc/frame.png": apc_mask, "lab/stacks/cam1.png": stacks, "phone/rotated.png": phone}


def test_masks_are_matched_by_relative_path_and_cropped_nearest(own_folder, tmp_path, shard_cli, capsys):
    root, _ = own_folder
    masks = tmp_path / "masks"
    labels = _mask_folder(root, masks)
    out = tmp_path / "shards"
    status, printed, err = run_cli(shard_cli, capsys, "images", str(root), "--masks", str(masks), "--out", str(out),
                                   "--size", str(SIZE), "--quiet")
    assert status == 0, err
    manifest = read_manifest(str(out))
    assert manifest["has_mask"] and manifest["background_entities"] == 1
    samples = samples_by_path(str(out))
    assert set(samples) == {"lab/apc/frame.png", "lab/stacks/cam1.png", "phone/rotated.jpg"}
    for relative, mask_relative in (("lab/apc/frame.png", "lab/apc/frame.png"),
                                    ("lab/stacks/cam1.png", "lab/stacks/cam1.png"),
                                    ("phone/rotated.jpg", "phone/rotated.png")):
        want = centre_square(labels[mask_relative], SIZE, nearest=True)
        np.testing.assert_array_equal(samples[relative]["mask"], want, err_msg=relative)
        assert samples[relative]["meta"]["mask"] == str(masks / mask_relative)
    assert set(np.unique(samples["lab/stacks/cam1.png"]["mask"])) == {0, 1, 2, 3, 4, 5}
    # Every image without a mask is skipped and named (16 good ones here, beside the two bad files).
    assert "skipped 18 files" in printed and f"{root / 'lab/stacks/cam2.png'}: ValueError: no mask " in printed
    assert "masks from" in err and "3 matched, 18 images without one" in err


def test_a_mask_of_another_size_stops_with_one_line_naming_both(own_folder, tmp_path, shard_cli, capsys):
    root, _ = own_folder
    masks = tmp_path / "masks"
    _mask_folder(root, masks)
    Image.fromarray(band_labels(100, 120, 2)).save(masks / "lab/stacks/cam1.png")
    out = tmp_path / "shards"
    status, printed, err = run_cli(shard_cli, capsys, "images", str(root), "--masks", str(masks), "--out", str(out),
                                   "--size", str(SIZE), "--quiet", "--workers", "2")
    assert status == 2
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert line == (f"error: mask {masks / 'lab/stacks/cam1.png'} is 120×100 but image {root / 'lab/stacks/cam1.png'} "
                    "is 224×224 (as displayed, EXIF orientation applied)")
    assert "Traceback" not in err
    manifest_path = out / "manifest.json"
    assert not manifest_path.exists() or not json.loads(manifest_path.read_text())["complete"]
    assert not list(out.rglob("*.tmp"))


def test_on_error_fail_stops_at_the_first_bad_file(own_folder, tmp_path, shard_cli, capsys):
    root, _ = own_folder
    status, _, err = run_cli(shard_cli, capsys, "images", str(root), "--out", str(tmp_path / "out"), "--size", "32",
                             "--split", "1,0,0", "--on-error", "fail", "--quiet", "--workers", "1")
    assert status == 2
    assert err.strip().splitlines() == [f"{root}: 21 images (train 21); 1 other files left out (notes.txt)",
                                        f"error: {root / 'broken/readme.jpg'}: UnreadableImage: not an image "
                                        "(PIL cannot identify its format)"]
    # The first shard failed, so nothing was published: no manifest, no shard, no temporary file.
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_user_mistakes_are_one_line_errors(tmp_path, shard_cli, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    notes = tmp_path / "notes"
    notes.mkdir()
    for name in ("a.txt", "b.csv", "c.md", "d.json"):
        (notes / name).write_text("x")
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(APC_FRAME, photos / "frame.png")
    from genesis_dist.data.formats.multi_dsprites import MultiDSprites

    other = str(tmp_path / "mds")
    convert_dataset(MultiDSprites({"train": 4}, img_size=32), other, progress=False)
    ours = tmp_path / "ours"
    assert shard_cli.main(["images", str(photos), "--out", str(ours), "--size", "32", "--quiet"]) == 0
    capsys.readouterr()
    cases = [
        (["images", str(empty), "--out", "o"], f"error: {empty}: empty folder (no files in it or its subfolders)"),
        (["images", str(notes), "--out", "o"],
         f"error: {notes}: no images (.jpg .jpeg .png .webp .bmp .tif .tiff) among its 4 files (a.txt, b.csv, c.md, …)"),
        (["images", str(tmp_path / "nope"), "--out", "o"], f"error: {tmp_path / 'nope'}: no such folder"),
        (["images", str(photos), "--out", "o", "--size", "48"], "error: --size=48: must be a power of two ≥ 16"),
        (["images", str(photos), "--out", "o", "--size", "8"], "error: --size=8: must be a power of two ≥ 16"),
        (["images", str(photos), "--out", "o", "--split", "0.9,0.2,0"], "error: --split 0.9,0.2,0: give three"),
        (["images", str(photos), "--out", "o", "--background", "blurple"], "error: --background blurple: not a colour"),
        (["images", str(photos), "--out", other], f"error: {other} already holds another dataset (multi_dsprites, "),
        (["images", str(photos), "--out", str(ours), "--size", "64"],
         f"error: {ours} already holds images converted with other settings (size 32 → 64; written by "
         f"`tools/shard.py images {photos} --out {ours} --size 32 --quiet`); write to another --out, or delete"),
    ]
    for argv, message in cases:
        assert shard_cli.main(argv + ["--quiet"]) == 2, argv
        lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(lines) == 1 and lines[0].startswith(message), (argv, lines)
    assert read_manifest(other)["dataset"] == "multi_dsprites"  # untouched


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, monkeypatch):
    """PIL warns from MAX_IMAGE_PIXELS on and refuses past twice that; both are refused here,
    and no pixel of either is decoded (ImageFile.load never runs on them)."""
    limit = Image.MAX_IMAGE_PIXELS
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(APC_FRAME, photos / "frame.png")
    warned = (10_000, limit // 10_000 + 1)  # just over the limit: PIL only warns
    refused = (20_000, 2 * limit // 20_000 + 1)  # over twice the limit: PIL raises
    for name, size in (("warned.png", warned), ("refused.png", refused)):
        Image.new("1", size).save(photos / name)  # a few kB of zeros that decode to 11–22 MB
    loaded = []
    original = ImageFile.ImageFile.load

    def spy(image):
        loaded.append(image.size)
        return original(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    report = ConversionReport()
    convert_dataset(ImageFolder(str(photos), 32, split=(1.0, 0.0, 0.0)), str(tmp_path / "out"), on_error="skip",
                    progress=False, report=report)
    assert report.converted == 1 and set(report.skipped) == {str(photos / "warned.png"), str(photos / "refused.png")}
    assert all("ImageRefused: refused, not decoded:" in reason for reason in report.skipped.values())
    assert warned not in loaded and refused not in loaded and loaded  # the frame was decoded, the bombs not


@pytest.mark.integration  # two CLI processes with worker pools against S3, ~15 s; the fast tier converts locally
def test_own_folder_on_s3_streams_to_s3_and_matches_the_local_shards(own_folder, tmp_path, s3_server, shard_cli,
                                                                      capsys):
    root, expected = own_folder
    masks = tmp_path / "masks"
    _mask_folder(root, masks)
    bucket = s3_server.create_bucket("own-images")
    fs, _ = filesystem(bucket, s3_server.storage_options)
    fs.put(str(root) + "/", "own-images/photos", recursive=True)
    fs.put(str(masks) + "/", "own-images/masks", recursive=True)
    local = tmp_path / "local"
    for source, out, extra in ((f"{bucket}/photos", f"{bucket}/shards", []),
                               (f"{bucket}/photos", f"{bucket}/masked", ["--masks", f"{bucket}/masks"])):
        result = subprocess.run(
            [sys.executable, str(REPO / "tools" / "shard.py"), "images", source, "--out", out, "--size", "32",
             "--workers", "2", *extra],
            env=subprocess_env(s3_server), capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    assert "images/train: 100%" in result.stderr and "converted 3 images" in result.stdout
    assert shard_cli.main(["images", str(root), "--out", str(local), "--size", "32", "--quiet"]) == 0
    capsys.readouterr()
    remote = samples_by_path(f"{bucket}/shards", s3_server.storage_options)
    here = samples_by_path(str(local))
    assert set(remote) == set(here) == set(expected)
    for relative in expected:
        assert remote[relative]["key"] == here[relative]["key"] and remote[relative]["split"] == here[relative]["split"]
        np.testing.assert_array_equal(remote[relative]["image"], here[relative]["image"])
    manifest = read_manifest(f"{bucket}/shards", s3_server.storage_options)
    assert sorted(manifest["splits"]["train"]["skipped_sources"]) == sorted(f"{bucket}/photos/{r}" for r in BAD)
    masked = samples_by_path(f"{bucket}/masked", s3_server.storage_options)
    assert set(masked) == {"lab/apc/frame.png", "lab/stacks/cam1.png", "phone/rotated.jpg"}
    assert all(sample["mask"].shape == (32, 32) for sample in masked.values())
