"""TFRecord reading and the ObjectsRoom / GQN converters on fixtures written in the raw formats.

Fixtures are serialised with the `tfrecord` package's protobuf writer (`tf.train.Example`) and
framed here from the documented record layout and CRC formula; the real Sketchy file, written
by TensorFlow, checks the framing and the CRCs against bytes neither produced.
"""
from __future__ import annotations

import gzip
import io
import shutil
import struct

import crc32c
import numpy as np
import pytest
from PIL import Image
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

from genesis_dist.data.convert import convert_dataset
from genesis_dist.data.errors import SourceError
from genesis_dist.data.formats.gqn import GQNRooms
from genesis_dist.data.formats.objects_room import ObjectsRoom
from genesis_dist.data.manifest import read_manifest, split_shards
from genesis_dist.data.reader import decode_sample, read_shard
from genesis_dist.data.tfrecord import iter_records, parse_example


def masked_crc(data: bytes) -> bytes:
    """TensorFlow's masked CRC32C: rotate right by 15, add 0xA282EAD8 (mod 2³²), little-endian."""
    crc = crc32c.crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def frame(record: bytes) -> bytes:
    length = struct.pack("<Q", len(record))
    return length + masked_crc(length) + record + masked_crc(record)


def one_byte_elements(array: np.ndarray) -> list[bytes]:
    return [bytes([value]) for value in array.reshape(-1)]


def samples_of(url: str, split: str) -> list[dict]:
    manifest = read_manifest(url)
    return [decode_sample(raw, manifest["resolution"], manifest["has_mask"])
            for shard, count in split_shards(manifest, url, split) for raw in read_shard(shard, expected=count)]


def test_reader_frames_and_parses_the_real_sketchy_file(raw_samples):
    path = raw_samples / "sketchy" / "example_data.tfrecords"  # written by TensorFlow: its CRCs are the oracle
    records = list(iter_records(str(path)))
    assert len(records) == 4 and sum(16 + len(r) for r in records) == path.stat().st_size
    for record in records:
        reference = example_pb2.Example()
        reference.ParseFromString(record)
        parsed = parse_example(record)
        assert set(parsed) == set(reference.features.feature)
        for name, feature in reference.features.feature.items():
            kind = feature.WhichOneof("kind")
            values = list(getattr(feature, kind).value)
            if kind == "bytes_list":
                assert parsed[name] == values
            else:
                np.testing.assert_array_equal(parsed[name], np.asarray(values, dtype=parsed[name].dtype))


def test_reader_checks_crcs_and_names_file_and_offset(raw_samples, tmp_path):
    data = bytearray((raw_samples / "sketchy" / "example_data.tfrecords").read_bytes())
    first_length = struct.unpack("<Q", data[:8])[0]
    second = 16 + first_length
    data[second + 12 + 100] ^= 0xFF  # a flipped bit inside the second record's data
    path = tmp_path / "episode"
    path.write_bytes(bytes(data))
    records = iter_records(str(path))
    next(records)
    with pytest.raises(SourceError, match=rf"{path}: data CRC mismatch in the record at byte {second}"):
        next(records)
    path.write_bytes(bytes(data[: second + 40]))
    with pytest.raises(SourceError, match="truncated"):
        list(iter_records(str(path)))


def write_objects_room(path, count: int, entities: int = 7, seed: int = 0):
    """A GZIP TFRecord like objects_room_train.tfrecords; returns (images, label maps)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
    labels = rng.integers(0, entities, (count, 64, 64)).astype(np.uint8)
    with gzip.open(path, "wb") as handle:
        for image, label in zip(images, labels):
            onehot = (np.arange(entities)[:, None, None] == label[None]).astype(np.uint8) * 255
            record = TFRecordWriter.serialize_tf_example({
                "image": (one_byte_elements(image), "byte"),
                "mask": (one_byte_elements(onehot[..., None]), "byte"),
            })
            handle.write(frame(record))
    return images, labels


def test_objects_room_gzip_one_byte_elements(tmp_path):
    source = tmp_path / "objects_room_train.tfrecords"
    images, labels = write_objects_room(source, 12)
    first = example_pb2.Example()
    first.ParseFromString(next(iter_records(str(source))))
    assert len(first.features.feature["image"].bytes_list.value) == 64 * 64 * 3  # the raw layout
    assert source.read_bytes()[:2] == b"\x1f\x8b"

    out = str(tmp_path / "out")
    manifest = convert_dataset(ObjectsRoom(str(source), test_size=3, val_size=3), out, progress=False)
    assert {s: r["count"] for s, r in manifest["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    assert manifest["K"] == 7 and manifest["background_entities"] == 4
    for split, offset in (("test", 0), ("val", 3), ("train", 6)):
        for sample in samples_of(out, split):
            record = sample["meta"]["record"]
            assert offset <= record < offset + (3 if split != "train" else 6)
            np.testing.assert_array_equal(sample["image"], images[record])
            np.testing.assert_array_equal(sample["mask"], labels[record])


def write_gqn(root, split: str, name: str, scenes: int, seed: int):
    rng = np.random.default_rng(seed)
    frames_of, cameras_of = [], []
    records = []
    for _ in range(scenes):
        frames = []
        for _ in range(10):
            smooth = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(smooth).resize((64, 64), Image.BILINEAR).save(buffer, format="JPEG", quality=90)
            frames.append(buffer.getvalue())
        cameras = rng.normal(size=50).astype(np.float32)
        records.append(frame(TFRecordWriter.serialize_tf_example(
            {"frames": (frames, "byte"), "cameras": (cameras.tolist(), "float")})))
        frames_of.append(frames)
        cameras_of.append(cameras)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / f"{name}.tfrecord").write_bytes(b"".join(records))
    return frames_of, cameras_of


def test_gqn_one_view_per_scene(tmp_path):
    root = tmp_path / "rooms_ring_camera"
    train_frames, train_cameras = write_gqn(root, "train", "0001-of-0001", 5, seed=1)
    write_gqn(root, "test", "001-of-001", 2, seed=2)
    out = str(tmp_path / "out")
    manifest = convert_dataset(GQNRooms(str(root)), out, progress=False)
    assert {s: r["count"] for s, r in manifest["splits"].items()} == {"train": 5, "test": 2}
    assert manifest["K"] == 7 and not manifest["has_mask"] and manifest["resolution"] == 64
    views = set()
    for sample in samples_of(out, "train"):
        record, view = sample["meta"]["record"], sample["meta"]["view"]
        views.add(view)
        expected = np.asarray(Image.open(io.BytesIO(train_frames[record][view])).convert("RGB"))
        np.testing.assert_array_equal(sample["image"], expected)
        np.testing.assert_allclose(sample["meta"]["camera"], train_cameras[record][view * 5: view * 5 + 5], rtol=1e-6)
    assert len(views) > 1  # a seeded random view per scene, not always the same

    fixed = str(tmp_path / "fixed")
    convert_dataset(GQNRooms(str(root), view=3), fixed, progress=False)
    assert {s["meta"]["view"] for s in samples_of(fixed, "train")} == {3}


def test_bad_record_skipped_or_fatal_naming_source(tmp_path, shard_cli, capsys):
    root = tmp_path / "rooms_ring_camera"
    write_gqn(root, "train", "0001-of-0001", 4, seed=3)
    path = root / "train" / "0001-of-0001.tfrecord"
    # Replace scene 1's JPEGs by garbage of the same length (CRCs recomputed: a valid record, bad images).
    records = list(iter_records(str(path)))
    bad = TFRecordWriter.serialize_tf_example({"frames": ([b"not a jpeg"] * 10, "byte"),
                                               "cameras": ([0.0] * 50, "float")})
    path.write_bytes(b"".join(frame(r) for r in [records[0], bad, *records[2:]]))

    out = str(tmp_path / "out")
    assert shard_cli.main(["gqn", "--source", str(root), "--out", out, "--quiet"]) == 2
    assert f"{path} record 1" in capsys.readouterr().err
    assert shard_cli.main(["gqn", "--source", str(root), "--out", out, "--quiet", "--on-error", "skip"]) == 0
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["count"] == 3
    assert manifest["splits"]["train"]["skipped_sources"] == [f"{path} record 1"]
    assert f"skipping {path} record 1" in capsys.readouterr().err


def test_sketchy_selected_episodes_split_by_sorted_name(raw_samples, tmp_path):
    from genesis_dist.data.formats.sketchy import Sketchy, split_episodes

    names = [f"ep{i:02d}" for i in range(20)]
    assert split_episodes(list(reversed(names))) == {"val": names[:2], "test": names[2:4], "train": names[4:]}
    folder = tmp_path / "episodes"
    folder.mkdir()
    for name in ("b", "a"):
        shutil.copy(raw_samples / "sketchy" / "example_data.tfrecords", folder / name)
    with pytest.raises(SourceError, match="selected episodes not found: zz"):
        Sketchy(str(folder), episodes=["a", "zz"]).items("train", print).__next__()
    items = list(Sketchy(str(folder), episodes=["b"]).items("train", print))
    assert [item.payload[:2] for item in items] == [("b", t) for t in range(4)]
