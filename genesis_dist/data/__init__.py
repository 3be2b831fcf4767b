"""The data layer: shard sets at any fsspec URL, streamed to ranks and workers.

    from genesis_dist.data import make_loader, read_manifest
    loader = make_loader("s3://bucket/multi_dsprites", "train", batch_size=32)
    for batch in loader.forever(): ...

Converters (one per dataset) live in `genesis_dist.data.formats`; `tools/shard.py` is their CLI.

The names below load on first use, so that importing a converter (e.g. generating
Multi-dSprites in memory on a machine with torch alone, benchmarks/gpu_recipe.py) does
not import the loader's webdataset and fsspec.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CorruptDataError": "errors", "DataError": "errors", "SourceError": "errors", "StorageError": "errors",
    "ShardLoader": "loader", "make_loader": "loader", "read_manifest": "manifest", "ShardSet": "manifest",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
