"""Converters on the real raw files in tests/fixtures: Sketchy, APC, ShapeStacks."""
from __future__ import annotations

import io
import shutil

import numpy as np
from PIL import Image

from genesis_dist.data.convert import convert_dataset
from genesis_dist.data.formats.apc import APC
from genesis_dist.data.formats.shapestacks import ShapeStacks
from genesis_dist.data.formats.sketchy import Sketchy
from genesis_dist.data.inspect import sample_grid
from genesis_dist.data.manifest import read_manifest, split_shards
from genesis_dist.data.reader import decode_sample, read_shard
from genesis_dist.data.tfrecord import iter_records, parse_example
from genesis_dist.figures import PAD, ROW_LABEL_WIDTH, caption_height


def all_samples(url: str, split: str) -> list[dict]:
    manifest = read_manifest(url)
    samples = []
    for shard_url, count in split_shards(manifest, url, split):
        for raw in read_shard(shard_url, expected=count):
            samples.append(decode_sample(raw, manifest["resolution"], manifest["has_mask"]))
    return samples


def test_sketchy_episode_gives_56_crops_of_128(raw_samples, tmp_path):
    episodes = tmp_path / "episodes"
    episodes.mkdir()
    shutil.copy(raw_samples / "sketchy" / "example_data.tfrecords", episodes / "episode_0001")
    out = str(tmp_path / "out")
    manifest = convert_dataset(Sketchy(str(episodes)), out, workers=2, progress=False)

    assert manifest["resolution"] == 128 and manifest["K"] == 10 and not manifest["has_mask"]
    assert manifest["splits"]["train"]["count"] == 56  # one episode: 10% of 1 is 0 → all train
    samples = all_samples(out, "train")
    assert len(samples) == 56
    assert all(s["image"].shape == (128, 128, 3) for s in samples)
    described = {(s["meta"]["episode"], s["meta"]["timestep"], s["meta"]["camera"], s["meta"]["crop"])
                 for s in samples}
    assert described == {("episode_0001", t, c, k) for t in range(4)
                         for c in ("front_left", "front_right") for k in range(7)}

    # One crop re-derived from the raw JPEG: front-right rows 91:-61, cols 144:-144, then rows 0:352 × cols 160:512.
    record = list(iter_records(str(episodes / "episode_0001")))[2]
    jpeg = parse_example(record)["pixels/basket_front_right"][0]
    frame = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    square = frame[91:-61, 144:-144][0:352, 160:512]
    expected = np.asarray(Image.fromarray(square).resize((128, 128), Image.BILINEAR))
    got = next(s for s in samples if (s["meta"]["timestep"], s["meta"]["camera"], s["meta"]["crop"])
               == (2, "front_right", 2))
    np.testing.assert_array_equal(got["image"], expected)


def _apc_training_layout(raw_samples, root, label=114):
    """The real colour frame in the training-set layout, with a ground-truth mask cut from segm.png."""
    scene = root / "shelf" / "kleenex_tissue_box" / "scene-0000"
    (scene / "masks").mkdir(parents=True)
    source = raw_samples / "apc" / "scene-0000"
    shutil.copy(source / "frame-000000.color.png", scene / "frame-000000.color.png")
    # The toolbox's 16-bit confidence map sits beside the frame and must be ignored.
    shutil.copy(source / "frame-000000.kleenex_tissue_box.mask.png", scene / "frame-000000.kleenex_tissue_box.mask.png")
    binary = np.asarray(Image.open(source / "frame-000000.segm.png")) == label
    Image.fromarray(binary.astype(np.uint8) * 255).save(scene / "masks" / "frame-000000.mask.png")
    empty = root / "shelf" / "kleenex_tissue_box" / "scene-empty"
    empty.mkdir(parents=True)
    shutil.copy(source / "frame-000000.color.png", empty / "frame-000000.color.png")
    return source, binary


def test_apc_frame_to_128_centre_crop_with_aligned_binary_mask(raw_samples, tmp_path):
    source, binary = _apc_training_layout(raw_samples, tmp_path / "training")
    out = str(tmp_path / "out")
    manifest = convert_dataset(APC(str(tmp_path / "training")), out, progress=False)
    assert manifest["splits"]["train"]["count"] == 2 and manifest["has_mask"]

    samples = {s["meta"]["scene"]: s for s in all_samples(out, "train")}
    color = Image.open(source / "frame-000000.color.png")
    assert color.size == (640, 480)
    # Shorter side 480 → 128 makes 640 → 170 (truncated, as torchvision's Resize); centre crop columns 21:149.
    expected_image = np.asarray(color.resize((170, 128), Image.BILINEAR))[:, 21:149]
    expected_mask = np.asarray(Image.fromarray(binary.astype(np.uint8)).resize((170, 128), Image.NEAREST))[:, 21:149]

    frame = samples["scene-0000"]
    assert frame["image"].shape == (128, 128, 3) and frame["mask"].shape == (128, 128)
    np.testing.assert_array_equal(frame["image"], expected_image)
    assert set(np.unique(frame["mask"])) == {0, 1}
    np.testing.assert_array_equal(frame["mask"], expected_mask)
    confidence = np.asarray(Image.open(source / "frame-000000.kleenex_tissue_box.mask.png"))
    assert (confidence > 0).mean() > 0.5 > frame["mask"].mean()  # not the confidence map
    assert not samples["scene-empty"]["mask"].any()  # background-only scene


def test_apc_missing_ground_truth_names_the_path(raw_samples, tmp_path):
    _apc_training_layout(raw_samples, tmp_path / "training")
    missing = tmp_path / "training" / "shelf" / "kleenex_tissue_box" / "scene-0000" / "masks" / "frame-000000.mask.png"
    missing.unlink()
    try:
        convert_dataset(APC(str(tmp_path / "training")), str(tmp_path / "out"), progress=False)
    except Exception as error:  # noqa: BLE001
        assert "masks/frame-000000.mask.png" in str(error) and "\n" not in str(error)
    else:
        raise AssertionError("a frame without its mask converted")


def test_shapestacks_scenario_to_64px_with_labels(raw_samples, tmp_path):
    out = str(tmp_path / "out")
    converter = ShapeStacks(str(raw_samples / "shapestacks"), split_set=None)
    manifest = convert_dataset(converter, out, progress=False)
    assert manifest["resolution"] == 64 and manifest["K"] == 9
    assert not manifest["has_mask"]  # the fixture scenario has no iseg maps

    samples = sorted(all_samples(out, "train"), key=lambda s: s["meta"]["view"])
    assert [s["meta"]["view"] for s in samples] == [1, 2]
    folder = raw_samples / "shapestacks" / "recordings" / "env_ccs-easy-h=5-vcom=2-vpsf=0-v=1"
    for sample in samples:
        assert sample["meta"]["height"] == 5 and sample["meta"]["stable"] is False and sample["meta"]["vcom"] == 2
        raw = Image.open(folder / f"rgb-w=0-f=0-l=0-c=original-cam_{sample['meta']['view']}-mono-0.png")
        expected = np.asarray(raw.convert("RGB"))[14:210, 14:210]
        expected = np.asarray(Image.fromarray(expected).resize((64, 64), Image.BILINEAR))
        np.testing.assert_array_equal(sample["image"], expected)


def test_shapestacks_iseg_maps_decode_to_block_labels(raw_samples, tmp_path):
    root = tmp_path / "shapestacks"
    shutil.copytree(raw_samples / "shapestacks" / "recordings", root / "recordings")
    scenario = "env_ccs-easy-h=5-vcom=2-vpsf=0-v=1"
    labels = np.zeros((224, 224), dtype=np.uint8)
    for block in range(1, 6):  # five horizontal bands, bottom-up, plus an "unassigned" patch
        labels[200 - block * 30: 230 - block * 30, 60:160] = block
    labels[20:30, 20:30] = 7
    rgba = np.zeros((224, 224, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = labels * 32, 255
    (root / "iseg" / scenario).mkdir(parents=True)
    for cam in (1, 2):
        Image.fromarray(rgba).save(root / "iseg" / scenario / f"iseg-w=0-f=0-l=0-c=original-cam_{cam}-mono-0.map",
                                   format="PNG")
    out = str(tmp_path / "out")
    manifest = convert_dataset(ShapeStacks(str(root), split_set=None), out, progress=False)
    assert manifest["has_mask"] and manifest["background_entities"] == 1
    expected = labels.copy()
    expected[expected == 7] = 0
    expected = np.asarray(Image.fromarray(expected[14:210, 14:210]).resize((64, 64), Image.NEAREST))
    for sample in all_samples(out, "train"):
        np.testing.assert_array_equal(sample["mask"], expected)
        assert set(np.unique(sample["mask"])) == {0, 1, 2, 3, 4, 5}


def test_inspect_grid_shows_images_and_mask_overlays(raw_samples, tmp_path):
    _apc_training_layout(raw_samples, tmp_path / "training")
    out = str(tmp_path / "out")
    convert_dataset(APC(str(tmp_path / "training")), out, progress=False)
    grid = np.asarray(sample_grid(out, "train", count=2, columns=2))
    # figures.dataset_figure: a caption line, an image row and an overlay row of two 128 px cells
    top, left, cell = caption_height(1) + PAD, ROW_LABEL_WIDTH + PAD, 128 + PAD
    assert grid.shape == (top + 2 * cell, left + 2 * cell, 3)
    images, overlays = grid[top:top + 128, left:], grid[top + cell:top + cell + 128, left:]
    greys = (images.astype(np.float32) @ np.float32([0.2989, 0.587, 0.114])).astype(np.uint8)  # ITU-R 601-2 luma
    assert (overlays[:, :128] != greys[:, :128, None]).any()  # objects tinted
    assert (overlays[:, cell:cell + 128] == greys[:, cell:cell + 128, None]).all()  # empty scene: grey, no tint
