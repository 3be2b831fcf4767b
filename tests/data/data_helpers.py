"""Helpers of the data-layer tests (imported by name: tests/data is on sys.path under pytest)."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"  # small real raw samples (see its README)


def damage_tar(path: Path, member_index: int) -> None:
    """Overwrite the header of tar member `member_index` with garbage (a corrupt shard)."""
    with tarfile.open(path) as archive:
        offset = archive.getmembers()[member_index].offset
    data = bytearray(path.read_bytes())
    data[offset: offset + 512] = b"\x07" * 512
    path.write_bytes(bytes(data))


def replace_member(path: Path, member_name: str, payload: bytes) -> None:
    """Rewrite the tar at `path` with `member_name`'s content replaced (a corrupt sample)."""
    members = []
    with tarfile.open(path) as archive:
        for info in archive.getmembers():
            data = archive.extractfile(info).read()
            members.append((info, payload if info.name == member_name else data))
    with tarfile.open(path, "w") as archive:
        for info, data in members:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
