"""Errors of the data layer. Their messages are one line and name the path involved."""
from __future__ import annotations


class DataError(RuntimeError):
    """A problem with stored data or its location that the user must fix."""


class CorruptDataError(DataError):
    """More corrupt samples or shards in one epoch than `max_corrupt` allows."""


class SourceError(DataError):
    """A raw source file (before conversion) is unreadable or malformed."""


class StorageError(DataError):
    """Storage kept failing after every retry."""
