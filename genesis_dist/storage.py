"""Storage, the bottom floor: filesystems for any fsspec URL (local path, file://, s3://,
gs://), URL joins, retries, the errors storage raises, and the pyarrow view Ray needs.

Filesystems are cached per process id and never shared across a fork (s3fs instances
are not fork-safe, and DataLoader workers are forked). S3 endpoints and credentials come
from the standard AWS chain; `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL` (or
`storage_options={"client_kwargs": {"endpoint_url": ...}}`) points s3:// at an
S3-compatible store.

Retries are the storage libraries' own. For s3://, botocore's "standard" retry mode
(6 tries with exponential backoff and jitter) retries throttling, 5xx answers, timeouts
and dropped connections, and s3fs re-requests a byte range whose body was cut off
mid-read; a missing object (404) or refused access (403) is never retried. `AWS_RETRY_MODE`
and `AWS_MAX_ATTEMPTS`, or `storage_options={"config_kwargs": {"retries": {...}}}`, override
these defaults. Other object stores bring their own retries (gcsfs); local files have none.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterator

import fsspec

DEFAULT_S3_ATTEMPTS = 6  # total tries of one S3 request, the first included

_FILESYSTEMS: dict[tuple[int, str, str], fsspec.AbstractFileSystem] = {}


class StorageError(RuntimeError):
    """Storage refused or kept failing after its retries; the message is one line naming the URL."""


def protocol_of(url: str) -> str:
    """'s3' for s3://b/k, 'file' for local paths and file:// URLs."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return "file" if protocol == "local" else protocol


def is_remote(url: str) -> bool:
    """True for object stores (anything with a scheme other than file://)."""
    return "://" in url and not url.startswith("file://")


def resolved_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """`storage_options` plus, for s3://, the endpoint from the environment and the retry
    defaults (botocore standard mode, DEFAULT_S3_ATTEMPTS tries) where neither the options
    nor the AWS_* variables set them."""
    options = json.loads(json.dumps(storage_options or {}))  # deep copy, JSON-able
    if protocol_of(url) == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = options.setdefault("client_kwargs", {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
            client_kwargs["endpoint_url"] = endpoint
        retries = options.setdefault("config_kwargs", {}).setdefault("retries", {})
        if "mode" not in retries and not os.environ.get("AWS_RETRY_MODE"):
            retries["mode"] = "standard"
        if not {"max_attempts", "total_max_attempts"} & set(retries) and not os.environ.get("AWS_MAX_ATTEMPTS"):
            retries["total_max_attempts"] = DEFAULT_S3_ATTEMPTS
    return options


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem of this process, path without the scheme) for `url`.

    Raises StorageError when the URL's protocol needs a package that is not installed
    (e.g. gs:// without gcsfs).
    """
    protocol = protocol_of(url)
    options = resolved_options(url, storage_options)
    key = (os.getpid(), protocol, json.dumps(options, sort_keys=True))
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        except ImportError as error:
            raise StorageError(f"{url}: {error}") from None
        _FILESYSTEMS[key] = fs
    path = url.removeprefix("file://") if protocol == "file" else fs._strip_protocol(url)
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL parts with '/' (local paths included)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a storage failure inside the block into a one-line StorageError naming `url`.

    FileNotFoundError passes through (callers decide what a missing file means);
    PermissionError becomes "access denied"; any other OSError or botocore error is
    what outlived the library's retries.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except FileNotFoundError:
        raise
    except PermissionError as error:
        raise StorageError(f"{url}: access denied ({_one_line(error)})") from None
    except (OSError, BotoCoreError, ClientError) as error:
        raise StorageError(f"{url}: {type(error).__name__}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


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
