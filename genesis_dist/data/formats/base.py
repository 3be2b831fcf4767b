"""What a dataset converter provides to the shard writer."""
from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

# Called with (source, error) for a bad source file: raises (--on-error fail) or logs and counts (skip).
ErrorHandler = Callable[[str, BaseException], None]


@dataclass(frozen=True)
class DatasetInfo:
    """Manifest facts of a converted dataset."""

    name: str
    version: str  # of the converter: bump when the output of the same source changes
    resolution: int  # pixels (square images)
    K: int  # default number of slots
    background_entities: int | None  # mask labels 0..B-1 are background; None without masks
    has_mask: bool
    samples_per_item: int = 1  # samples one source item turns into (at most)
    shard_samples: int = 5000  # target samples per shard (≈100 MB)
    unit: str = "item"  # what one source item is called in progress bars and summaries


@dataclass
class Sample:
    """One converted image: `image` uint8 [H,W,3], `mask` uint8 [H,W] labels (0 = background)."""

    key: str
    image: np.ndarray
    mask: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceItem:
    """A unit of conversion work: `source` names it in messages; `payload` is what `convert` needs;
    `version` changes when the source's content may have (e.g. its size and mtime or ETag), so a
    re-run redoes a finished shard whose sources changed."""

    source: str
    payload: Any
    version: str = ""


class Converter(ABC):
    """A dataset: its splits, its source items in a fixed order, and item → samples."""

    info: DatasetInfo

    @abstractmethod
    def splits(self) -> list[str]:
        """Names of the splits to write."""

    @abstractmethod
    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        """The items of `split`, in a deterministic order (runs in the main process)."""

    @abstractmethod
    def convert(self, item: SourceItem) -> list[Sample]:
        """Samples of one item (runs in worker processes); raise on a bad source."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """Everything besides the source files that the output depends on."""

    def item_count(self, split: str) -> int | None:
        """Number of items of `split` if cheaply known (for progress bars)."""
        return None

    def prepare(self) -> None:
        """Load shared read-only state once, before worker processes fork."""

    def listing_digest(self, split: str) -> str | None:
        """`sources_digest` of `split`'s items when a listing gives it cheaply (a folder that
        may gain or change files); None when the settings fix the sources."""
        return None


def sources_digest(items: Iterable[SourceItem]) -> str:
    """sha256 of the names and versions of source items, in order: what a shard or a
    split was made from."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.source}\0{item.version}\n".encode())
    return digest.hexdigest()


def safe_key(*parts: Any) -> str:
    """A WebDataset key from source-derived parts: no dots or slashes (the key ends at the first dot)."""
    return "-".join(re.sub(r"[^A-Za-z0-9_=+-]", "_", str(part)) for part in parts)
