"""Errors of the data layer. Their messages are one line and name the path involved.

StorageError (storage refused or kept failing after its retries) belongs to the bottom
floor, genesis_dist.storage; it is re-exported here for the data API.
"""
from __future__ import annotations

from ..storage import StorageError  # noqa: F401


class DataError(RuntimeError):
    """A problem with stored data or its location that the user must fix."""


class CorruptDataError(DataError):
    """More corrupt samples or shards in one epoch than `max_corrupt` allows."""


class SourceError(DataError):
    """A raw source file (before conversion) is unreadable or malformed."""


class MismatchError(SourceError):
    """Source files that should belong together do not (a mask whose size differs from its
    image): a conversion stops on it whatever `--on-error` says, since it points at the
    wrong folder or settings rather than at one bad file."""
