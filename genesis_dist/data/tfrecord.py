"""TFRecord files and `tf.train.Example` records, read without TensorFlow.

Record framing (TensorFlow's documented format), all little-endian:
    uint64 length · uint32 masked_crc32c(length bytes) · data[length] · uint32 masked_crc32c(data)
with masked_crc(x) = ((crc >> 15) | (crc << 17)) + 0xA282EAD8 (mod 2³²). Both CRCs are checked.
GZIP-compressed files (ObjectsRoom's) are recognised by their magic bytes.

`Example` is decoded from the protobuf wire format directly:
    Example{1: Features} · Features{1: map<string, Feature>} (entries {1: key, 2: value})
    Feature{1: BytesList | 2: FloatList | 3: Int64List}, each {1: repeated value}
(floats and int64s packed or not).
"""
from __future__ import annotations

import gzip
import struct
from typing import Any, Iterator

import google_crc32c
import numpy as np

from .errors import SourceError
from .fs import open_for_read

_MASK_DELTA = 0xA282EAD8
_GZIP_MAGIC = b"\x1f\x8b"


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def iter_records(url: str, storage_options: dict[str, Any] | None = None) -> Iterator[bytes]:
    """The records of the TFRecord file at `url` (local path or fsspec URL), in order.

    Raises SourceError naming the file and byte offset on a CRC mismatch or truncation
    (a damaged length makes the rest of the file unreadable).
    """
    with open_for_read(url, storage_options) as raw:
        stream = gzip.GzipFile(fileobj=raw) if raw.peek(2)[:2] == _GZIP_MAGIC else raw
        offset = 0
        try:
            while True:
                header = stream.read(12)
                if not header:
                    return
                if len(header) < 12:
                    raise SourceError(f"{url}: truncated record header at byte {offset}")
                length_bytes, length_crc = header[:8], struct.unpack("<I", header[8:])[0]
                if masked_crc32c(length_bytes) != length_crc:
                    raise SourceError(f"{url}: length CRC mismatch at byte {offset}")
                (length,) = struct.unpack("<Q", length_bytes)
                data = stream.read(length)
                footer = stream.read(4)
                if len(data) < length or len(footer) < 4:
                    raise SourceError(f"{url}: truncated record at byte {offset}")
                if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                    raise SourceError(f"{url}: data CRC mismatch in the record at byte {offset}")
                offset += 16 + length
                yield data
        except (OSError, EOFError) as error:  # bad gzip stream
            raise SourceError(f"{url}: unreadable after byte {offset} ({error})") from None


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a message; LEN values as memoryviews."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos: pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos: pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos: pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > end:
            raise ValueError("field runs past the end of its message")
        yield number, wire, value


class BytesList:
    """A BytesList feature, decoded on demand (ObjectsRoom stores 40k one-byte strings)."""

    def __init__(self, payload: memoryview):
        self._payload = payload

    def values(self) -> list[bytes]:
        """The byte strings."""
        return [bytes(v) for n, w, v in _fields(self._payload) if n == 1 and w == 2]

    def as_uint8(self) -> np.ndarray:
        """All strings concatenated as uint8 [total bytes] (one byte per element → one per value)."""
        raw = np.frombuffer(self._payload, dtype=np.uint8)
        # Fast path: every element is tag 0x0A, length 1, one byte.
        if len(raw) % 3 == 0 and (raw[0::3] == 0x0A).all() and (raw[1::3] == 0x01).all():
            return raw[2::3].copy()
        return np.frombuffer(b"".join(self.values()), dtype=np.uint8)

    def __len__(self) -> int:
        raw = np.frombuffer(self._payload, dtype=np.uint8)
        if len(raw) % 3 == 0 and (raw[0::3] == 0x0A).all() and (raw[1::3] == 0x01).all():
            return len(raw) // 3
        return len(self.values())


def _float_list(payload: memoryview) -> np.ndarray:
    parts = []
    for number, wire, value in _fields(payload):
        if number == 1:
            parts.append(np.frombuffer(value, dtype="<f4"))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


def _int64_list(payload: memoryview) -> np.ndarray:
    values: list[int] = []
    for number, wire, value in _fields(payload):
        if number != 1:
            continue
        if wire == 0:
            values.append(value)
        else:  # packed varints
            pos = 0
            while pos < len(value):
                item, pos = _varint(value, pos)
                values.append(item)
    return (np.array(values, dtype=np.uint64).astype(np.int64) if values else np.zeros(0, np.int64))


def parse_example(record: bytes) -> dict[str, Any]:
    """A serialized tf.train.Example → {name: BytesList | float32 array | int64 array}."""
    features: dict[str, Any] = {}
    try:
        for number, _, example_field in _fields(memoryview(record)):
            if number != 1:
                continue
            for entry_number, _, entry in _fields(example_field):
                if entry_number != 1:
                    continue
                key, feature = "", memoryview(b"")
                for part_number, _, part in _fields(entry):
                    if part_number == 1:
                        key = bytes(part).decode()
                    elif part_number == 2:
                        feature = part
                features[key] = _feature(feature)
    except (ValueError, IndexError, UnicodeDecodeError) as error:
        raise ValueError(f"malformed tf.train.Example: {error}") from None
    return features


def _feature(feature: memoryview) -> Any:
    for kind, _, payload in _fields(feature):
        if kind == 1:
            return BytesList(payload)
        if kind == 2:
            return _float_list(payload)
        if kind == 3:
            return _int64_list(payload)
    return BytesList(memoryview(b""))
