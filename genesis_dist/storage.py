"""Run storage on any fsspec URL (local path, s3://, gs://) and its pyarrow view for Ray.

S3 endpoints and credentials come from the standard AWS chain; an S3-compatible
store is reached by setting `AWS_ENDPOINT_URL` (or passing `storage_options`,
e.g. `{"client_kwargs": {"endpoint_url": ...}}`).
"""
from __future__ import annotations

import os
from typing import Any

import fsspec


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path without scheme) for `url`."""
    options = dict(storage_options or {})
    if url.startswith("s3://") and "AWS_ENDPOINT_URL" in os.environ:
        options.setdefault("client_kwargs", {}).setdefault("endpoint_url", os.environ["AWS_ENDPOINT_URL"])
    return fsspec.core.url_to_fs(url, **options)


def is_remote(url: str) -> bool:
    """True for object stores (anything with a scheme other than file://)."""
    return "://" in url and not url.startswith("file://")


def join(url: str, *parts: str) -> str:
    """Join URL path parts with '/' (for local paths too)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


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
