"""The data layer: shard sets at any fsspec URL, streamed to ranks and workers.

    from genesis_dist.data import make_loader, read_manifest
    loader = make_loader("s3://bucket/multi_dsprites", "train", batch_size=32)
    for batch in loader.forever(): ...

Converters (one per dataset) live in `genesis_dist.data.formats`; `tools/shard.py` is their CLI.
"""
from .errors import CorruptDataError, DataError, SourceError, StorageError
from .loader import ShardLoader, make_loader
from .manifest import ShardSet, read_manifest

__all__ = [
    "CorruptDataError", "DataError", "ShardLoader", "SourceError", "StorageError",
    "ShardSet", "make_loader", "read_manifest",
]
