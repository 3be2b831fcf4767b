"""TFRecord files of `tf.train.Example` records, read without TensorFlow.

Examples are decoded by protobuf with the `tfrecord` package's `example_pb2` (TensorFlow's
own message definitions). The record framing is read here, because the package's
iterator checks no CRCs, opens local paths only and decompresses a GZIP file twice:

    uint64 length · uint32 masked_crc32c(length bytes) · data[length] · uint32 masked_crc32c(data)

all little-endian; both CRCs are checked (with the package's `masked_crc`). GZIP-compressed
files (ObjectsRoom's) are recognised by their magic bytes and decompressed as a stream.
"""
from __future__ import annotations

import gzip
import struct
from typing import Any, Iterator

import numpy as np
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

from ..storage import filesystem, storage_errors
from .errors import SourceError

_GZIP_MAGIC = b"\x1f\x8b"


def iter_records(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The serialized records of the TFRecord file at `url` (local path or fsspec URL), in order.

    Raises SourceError naming the file and byte offset on a CRC mismatch or truncation
    (a damaged length makes the rest of the file unreadable); FileNotFoundError when it
    is missing; StorageError when storage fails.
    """
    fs, path = filesystem(url, storage_options)
    with storage_errors(url), fs.open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw) if compressed else raw
        offset = 0
        try:
            while True:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise SourceError(f"{url}: truncated record header at byte {offset}")
                length_bytes, length_crc = header[:8], header[8:]
                if TFRecordWriter.masked_crc(length_bytes) != length_crc:
                    raise SourceError(f"{url}: length CRC mismatch at byte {offset}")
                (length,) = struct.unpack("<Q", length_bytes)
                data = stream.read(length)
                footer = stream.read(4)
                if len(data) < length or len(footer) < 4:
                    raise SourceError(f"{url}: truncated record at byte {offset}")
                if TFRecordWriter.masked_crc(data) != footer:
                    raise SourceError(f"{url}: data CRC mismatch in the record at byte {offset}")
                offset += 16 + length
                yield data
        except (gzip.BadGzipFile, EOFError) as error:
            raise SourceError(f"{url}: unreadable after byte {offset} ({error})") from None


def parse_example(record: bytes) -> dict[str, Any]:
    """A serialized tf.train.Example → {name: list of bytes | float32 [n] | int64 [n]}.

    Raises ValueError when the record is not a valid Example.
    """
    example = example_pb2.Example()
    try:
        example.ParseFromString(record)
    except Exception as error:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ValueError(f"malformed tf.train.Example: {error}") from None
    features: dict[str, Any] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            features[name] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            features[name] = np.asarray(feature.int64_list.value, dtype=np.int64)
        else:  # bytes_list, or an empty feature
            features[name] = list(feature.bytes_list.value)
    return features


def concatenated_bytes(values: list[bytes]) -> np.ndarray:
    """A bytes feature's strings joined as uint8 [total bytes]: ObjectsRoom stores images and
    masks one byte per string, so this is their pixel array, flattened."""
    return np.frombuffer(b"".join(values), dtype=np.uint8)
