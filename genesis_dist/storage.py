"""Storage, the bottom floor: filesystems for any fsspec URL (local path, file://, s3://,
gs://), URL joins, retries, and the errors storage raises.

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

Failures end in one-line `StorageError`s of a `kind` that the commands turn into a
documented exit status (`EXIT_STATUS`). Credentials never travel: `aws_environment` hands
Ray only where the store is and how to retry, and `redacted` / `without_secrets` keep
secrets in `storage_options` out of prints and stored configs.
"""
from __future__ import annotations

import errno
import json
import os
import uuid
from contextlib import contextmanager
from collections.abc import Mapping, Sequence
from typing import Any, Iterator

import fsspec

DEFAULT_S3_ATTEMPTS = 6  # total tries of one S3 request, the first included

_FILESYSTEMS: dict[tuple[int, str, str], fsspec.AbstractFileSystem] = {}


# Exit statuses of the commands (train, evaluate, tune), one per kind of failure.
EXIT_STATUS = {
    "failed": 1,          # the run (or storage, after its retries) failed for another reason
    "no_credentials": 3,  # no credentials in the standard chain
    "access_denied": 4,   # credentials refused (403, expired token, wrong key)
    "not_found": 5,       # a bucket or object the command needs does not exist
    "unreachable": 6,     # the object store cannot be reached or kept failing (5xx, timeouts)
    "disk_full": 7,       # no space left on a local disk
}
KIND_TEXT = {
    "failed": "storage failed", "no_credentials": "no credentials", "access_denied": "access denied",
    "not_found": "not found", "unreachable": "object store unreachable", "disk_full": "disk full",
}
CREDENTIALS_HINT = ("credentials come from the standard AWS chain: the instance profile on a cluster, "
                    "AWS_PROFILE, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the environment of the command "
                    "(and of `ray start` on each node)")


class StorageError(RuntimeError):
    """Storage refused or kept failing after its retries; the message is one line naming the URL.

    `kind` is a key of EXIT_STATUS: no_credentials, access_denied, not_found, unreachable,
    disk_full or failed."""

    def __init__(self, message: str, kind: str | None = None):
        super().__init__(message)
        if kind is None:  # rebuilt from its message alone (torch's DataLoader re-raises errors that way)
            kind = next((k for k, text in KIND_TEXT.items() if f": {text} (" in message), "failed")
        self.kind = kind if kind in EXIT_STATUS else "failed"

    @property
    def exit_status(self) -> int:
        return EXIT_STATUS[self.kind]

    def __reduce__(self):  # keeps `kind` when Ray pickles the error from a worker
        return (self.__class__, (str(self), self.kind))


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
    options = _plain(storage_options or {})  # a deep copy of plain dicts (a config's nested mappings too)
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


def _plain(value: Any) -> Any:
    """Nested mappings and sequences (e.g. OmegaConf containers) as plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (isinstance(value, Sequence) and not isinstance(value, (str, bytes))):
        return [_plain(v) for v in value]
    return value


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
    everything else that `classify` recognises (refused access, no credentials, an
    unreachable or failing store, a full disk) becomes a StorageError of that kind.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except FileNotFoundError:
        raise
    except StorageError:
        raise
    except (OSError, BotoCoreError, ClientError) as error:
        kind = next((k for k in map(classify, root_errors(error)) if k is not None), "failed")
        hint = f"; {CREDENTIALS_HINT}" if kind == "no_credentials" else ""
        raise StorageError(f"{url}: {KIND_TEXT[kind]} ({type(error).__name__}: {one_line(error)}){hint}",
                           kind) from None


def one_line(error: BaseException) -> str:
    """The message of `error` on one line (whitespace runs collapsed)."""
    return " ".join(str(error).split())


def root_errors(error: BaseException) -> Iterator[BaseException]:
    """`error` and every error it was raised from or during (`__cause__`, `__context__`)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen or not isinstance(current, BaseException):
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


_ACCESS_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "AccountProblem",
                 "AllAccessDisabled", "InvalidToken", "TokenRefreshRequired", "RequestTimeTooSkewed", "403"}
_MISSING_CODES = {"NoSuchBucket", "NoSuchKey", "404", "NotFound"}
_UNAVAILABLE_CODES = {"ServiceUnavailable", "SlowDown", "InternalError", "RequestTimeout", "500", "502", "503", "504"}


def classify(error: BaseException) -> str | None:
    """The EXIT_STATUS kind of one error (not its causes), or None when it is not a storage failure."""
    if isinstance(error, StorageError):
        return error.kind
    name = type(error).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                "DefaultCredentialsError", "UnauthorizedSSOTokenError", "ProfileNotFound"):
        return "no_credentials"
    code = str(((getattr(error, "response", None) or {}).get("Error") or {}).get("Code", ""))
    if code in _ACCESS_CODES:
        return "access_denied"
    if code in _MISSING_CODES:
        return "not_found"
    if code in _UNAVAILABLE_CODES:
        return "unreachable"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                "ProxyConnectionError", "ClientConnectorError", "ServerDisconnectedError", "ServerTimeoutError",
                "ResponseStreamingError", "IncompleteReadError"):
        return "unreachable"
    if isinstance(error, OSError):
        if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return "disk_full"
        if isinstance(error, PermissionError):
            return "access_denied"
        if isinstance(error, (ConnectionError, TimeoutError)) or error.errno in (
                getattr(errno, "EREMOTEIO", errno.EIO), errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
            return "unreachable"
    return None


def storage_failure(error: BaseException, url: str = "") -> StorageError | None:
    """The storage failure behind `error` (searching its causes, see `root_errors`)
    as a one-line StorageError, or None when storage is not what failed. A StorageError
    found in the chain is returned as it is; otherwise the message names `url` when given."""
    found: list[tuple[str, BaseException]] = []
    for candidate in root_errors(error):
        if isinstance(candidate, StorageError):
            return candidate
        kind = classify(candidate)
        if kind is not None:
            found.append((kind, candidate))
    if not found:
        return None
    kind, cause = found[0]
    where = f"{url}: " if url else ""
    hint = f"; {CREDENTIALS_HINT}" if kind == "no_credentials" else ""
    return StorageError(f"{where}{KIND_TEXT[kind]} ({type(cause).__name__}: {one_line(cause)}){hint}", kind)


# The AWS settings that may travel to Ray processes in a runtime environment: where the
# store is, which profile, how to retry. Never who you are: keys, secrets and session
# tokens are shown by the Ray dashboard and the state API to anyone who reaches them.
TRAVELLING_AWS_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
                           "AWS_PROFILE", "AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS")
# The AWS credentials of an environment: they never travel.
AWS_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def aws_environment() -> dict[str, str]:
    """The non-secret AWS settings of this process (TRAVELLING_AWS_SETTINGS that are set), to
    pass on to Ray processes. Credentials reach Ray's processes the standard way instead: the
    instance profile on a cluster, or the environment of the node's `ray start` (a local
    cluster started by `ray.init()` inherits the driver's environment)."""
    return {k: os.environ[k] for k in TRAVELLING_AWS_SETTINGS if os.environ.get(k)}


# Keys inside a `storage_options` mapping whose values are credentials (s3fs, gcsfs, adlfs,
# botocore client kwargs).
SECRET_OPTION_KEYS = frozenset({
    "key", "secret", "token", "password", "session_token", "access_key", "secret_key", "account_key",
    "sas_token", "client_secret", "credentials", "connection_string",
    "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
})
OPTIONS_KEY = "storage_options"
REDACTED = "<redacted>"


def _walk_secrets(value: Any, on_secret, inside: bool) -> Any:
    """A copy of `value` where each secret entry (a SECRET_OPTION_KEYS key inside a
    `storage_options` mapping) is replaced by on_secret(value), or dropped when that is ...
    (Ellipsis)."""
    if isinstance(value, dict):
        copy = {}
        for k, v in value.items():
            if inside and isinstance(k, str) and k.lower() in SECRET_OPTION_KEYS and v not in (None, ""):
                replacement = on_secret(v)
                if replacement is not ...:
                    copy[k] = replacement
            else:
                copy[k] = _walk_secrets(v, on_secret, inside or k == OPTIONS_KEY)
        return copy
    if isinstance(value, list):
        return [_walk_secrets(v, on_secret, inside) for v in value]
    return value


def redacted(config: Any, options: bool = False) -> Any:
    """A copy of `config` (a config as nested dicts and lists) whose secrets inside any
    `storage_options` read REDACTED: for prints and logs. `options=True`: `config` is itself
    a storage_options mapping."""
    return _walk_secrets(config, lambda v: REDACTED, options)


def without_secrets(config: Any, options: bool = False) -> Any:
    """A copy of `config` without the secrets inside any `storage_options`: for files (a
    stored config then works with the standard credential chain, and holds no secret)."""
    return _walk_secrets(config, lambda v: ..., options)


def secrets_on_command_line(overrides: list[str]) -> list[str]:
    """The keys of `key=value` overrides that put a secret into some storage_options: a
    command line is visible to every user of the machine (`ps`) and in Ray's job list (the
    job's entrypoint), so the commands warn about them."""
    keys = [item.split("=", 1)[0].lstrip("+~") for item in overrides if "=" in item]
    return [k for k in keys if OPTIONS_KEY in k.split(".")[:-1] and k.split(".")[-1].lower() in SECRET_OPTION_KEYS]


def warn_secrets_on_command_line(command: str, overrides: list[str]) -> None:
    """Print one warning line per secret given on the command line (see secrets_on_command_line)."""
    import sys

    for key in secrets_on_command_line(overrides):
        print(f"{command}: warning: {key} on the command line is visible to other users (ps) and in Ray's job list; "
              "give credentials through the standard AWS chain or a --config file", file=sys.stderr, flush=True)


class Secret:
    """A value that travels to other processes (pickled) but never shows: its repr and str
    are REDACTED, so Ray's dashboard and state API, which render a train loop config
    with str(), show nothing of it."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __reduce__(self):
        return (Secret, (self.value,))


def write_atomic(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> None:
    """Write `data` to `url` so that a reader sees the old content or the new, never a
    part: on local disk a temporary file beside it, then a rename; on object stores one
    PUT (an object appears whole or not at all)."""
    fs, path = filesystem(url, storage_options)
    if is_remote(url):
        fs.pipe_file(path, data)
        return
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def create_exclusive(url: str, data: bytes, storage_options: dict[str, Any] | None = None) -> bool:
    """Create `url` holding `data` only if nothing is there yet; True when this call created it.

    Local files: a hard link from a complete temporary file (fails when `path` exists). s3://: a conditional PUT (If-None-Match: *), which AWS S3
    and moto honour; a store that ignores the condition makes this last-writer-wins.
    Other object stores: an existence check before the write (not atomic)."""
    fs, path = filesystem(url, storage_options)
    protocol = protocol_of(url)
    if protocol == "file":
        folder = os.path.dirname(path) or "."
        os.makedirs(folder, exist_ok=True)
        temporary = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
        with open(temporary, "wb") as f:
            f.write(data)
        try:
            os.link(temporary, path)  # fails if `path` exists; readers never see a partial file
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(temporary)
    try:
        if protocol == "s3":
            fs.pipe_file(path, data, mode="create")
            return True
        if fs.exists(path):
            return False
        fs.pipe_file(path, data)
        return True
    except FileExistsError:
        return False
    except OSError as error:  # s3fs maps some PreconditionFailed answers to EINVAL
        if "PreconditionFailed" in str(error) or "412" in str(error):
            return False
        raise


def list_names(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Names (last path parts) directly under the folder `url`; [] when it does not exist."""
    fs, path = filesystem(url, storage_options)
    fs.invalidate_cache()
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []

