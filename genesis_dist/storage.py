"""Run storage on any fsspec URL (local path, s3://, gs://) and its pyarrow view for Ray.

S3 endpoints and credentials come from the standard AWS chain; an S3-compatible
store is reached by setting `AWS_ENDPOINT_URL` (or passing `storage_options`,
e.g. `{"client_kwargs": {"endpoint_url": ...}}`). `filesystem` and `join` are the
data layer's, so shards and runs resolve URLs the same way.
"""
from __future__ import annotations

import os
from typing import Any

from .data.fs import filesystem, join  # noqa: F401  (one implementation for data and runs)


def is_remote(url: str) -> bool:
    """True for object stores (anything with a scheme other than file://)."""
    return "://" in url and not url.startswith("file://")


def ray_storage(url: str, storage_options: dict[str, Any] | None = None):
    """(storage_path, storage_filesystem) for Ray's RunConfig.

    Local paths go to Ray as absolute paths; remote URLs as a pyarrow view of the
    same fsspec filesystem the rest of genesis-dist uses (so custom endpoints work).
    """
    if not is_remote(url):
        return os.path.abspath(url.removeprefix("file://")), None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    fs, path = filesystem(url, storage_options)
    return path, PyFileSystem(FSSpecHandler(fs))


def aws_environment() -> dict[str, str]:
    """AWS variables of this process, to pass on to Ray workers."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
