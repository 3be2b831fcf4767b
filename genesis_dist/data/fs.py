"""Filesystems for any fsspec URL, one per process, with retries on transient errors.

s3fs filesystems are not fork-safe (DataLoader workers are forked), so instances
are cached per process id and never shared across a fork. S3 endpoints and
credentials come from the standard AWS chain; `AWS_ENDPOINT_URL_S3` or
`AWS_ENDPOINT_URL` (or `storage_options={"client_kwargs": {"endpoint_url": ...}}`)
points s3:// at an S3-compatible store.
"""
from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import fsspec

from .errors import DataError, StorageError

log = logging.getLogger("genesis_dist.data")
T = TypeVar("T")

_FILESYSTEMS: dict[tuple[int, str, str], fsspec.AbstractFileSystem] = {}


def protocol_of(url: str) -> str:
    """'s3' for s3://b/k, 'file' for local paths and file:// URLs."""
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    return "file" if protocol == "local" else protocol


def resolved_options(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """`storage_options` plus the S3 endpoint from the environment when none is given."""
    options = json.loads(json.dumps(storage_options or {}))  # deep copy, JSON-able
    if protocol_of(url) == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        client_kwargs = options.setdefault("client_kwargs", {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
            client_kwargs["endpoint_url"] = endpoint
    return options


def filesystem(url: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem of this process, path without the scheme) for `url`."""
    protocol = protocol_of(url)
    options = resolved_options(url, storage_options)
    key = (os.getpid(), protocol, json.dumps(options, sort_keys=True))
    fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            fs = fsspec.filesystem(protocol, skip_instance_cache=True, **options)
        except ImportError as error:  # e.g. gs:// without gcsfs installed
            raise DataError(f"{url}: {error}") from None
        _FILESYSTEMS[key] = fs
    path = url.removeprefix("file://") if protocol == "file" else fs._strip_protocol(url)
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL parts with '/' (local paths included)."""
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: timeouts, dropped connections, 5xx/throttling."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(error, (TimeoutError, ConnectionError, OSError)):
        return True
    name = type(error).__name__
    return any(word in name for word in ("Timeout", "Connection", "Throttl", "ServerError", "ServerDisconnected"))


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: `attempts` tries, waiting base_delay · 2^i (capped) between them."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base_delay * 2**attempt)


DEFAULT_RETRY = RetryPolicy()


def with_retries(action: Callable[[], T], what: str, policy: RetryPolicy | None = None) -> T:
    """Run `action`, retrying transient errors with backoff; raise StorageError when they persist."""
    policy = policy or DEFAULT_RETRY
    for attempt in range(policy.attempts):
        try:
            return action()
        except Exception as error:  # noqa: BLE001 - classified below
            if not is_transient(error):
                raise
            if attempt == policy.attempts - 1:
                raise StorageError(f"{what}: still failing after {policy.attempts} tries: {error!r}") from error
            log.warning("%s: %r; retrying in %.1f s", what, error, policy.delay(attempt))
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


class RetryingReader(io.RawIOBase):
    """A read-only stream that survives dropped connections: a failed read reopens
    the file, seeks back to the current offset and tries again (with backoff)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None, policy: RetryPolicy | None = None):
        super().__init__()
        self.url, self._options, self._policy = url, storage_options, policy or DEFAULT_RETRY
        self._offset = 0
        self.retries = 0
        self._file = with_retries(self._open_at_offset, f"open {url}", policy)

    def _open_at_offset(self):
        fs, path = filesystem(self.url, self._options)
        handle = fs.open(path, "rb")
        if self._offset:
            handle.seek(self._offset)
        return handle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        for attempt in range(self._policy.attempts):
            try:
                data = self._file.read(len(buffer))
                break
            except Exception as error:  # noqa: BLE001 - classified below
                if not is_transient(error):
                    raise
                if attempt == self._policy.attempts - 1:
                    message = f"read {self.url}: still failing after {attempt + 1} tries: {error!r}"
                    raise StorageError(message) from error
                self.retries += 1
                log.warning("read %s at byte %d: %r; reopening", self.url, self._offset, error)
                time.sleep(self._policy.delay(attempt))
                self._close_quietly()
                self._file = with_retries(self._open_at_offset, f"reopen {self.url}", self._policy)
        buffer[: len(data)] = data
        self._offset += len(data)
        return len(data)

    def _close_quietly(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - a broken connection may fail to close
            pass

    def close(self) -> None:
        if not self.closed:
            self._close_quietly()
        super().close()


def open_for_read(url: str, storage_options: dict[str, Any] | None = None, buffer_size: int = 1 << 20):
    """A buffered, retrying binary stream over `url`."""
    return io.BufferedReader(RetryingReader(url, storage_options), buffer_size=buffer_size)


def register_webdataset_openers() -> None:
    """Let `webdataset.WebDataset("s3://...")` read through fsspec (webdataset 1.0.2 has
    no s3:// opener). Idempotent."""
    import importlib

    gopen = importlib.import_module("webdataset.gopen")  # the module, not the function of that name

    def fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, **_: Any):
        if mode == "rb":
            return open_for_read(url)
        fs, path = filesystem(url)
        return fs.open(path, mode)

    gopen.gopen_schemes["s3"] = fsspec_gopen
