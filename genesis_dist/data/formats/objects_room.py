"""ObjectsRoom (DeepMind multi_object_datasets): one GZIP TFRecord file of 64×64 scenes.

Each record holds `image` (64·64·3 one-byte strings, uint8) and `mask` (K·64·64·1
one-byte strings, 0/255 one-hot per entity; K = 7 in the training file). Entities 0–3
are sky, floor and two walls (the background), 4.. are objects; the label map stores
the entity index of every pixel, so `background_entities = 4`.

GENESIS split of `objects_room_train.tfrecords`: test = first 10k records, validation
= next 10k, train = the rest. The test-variant files convert whole into one split.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from ..errors import SourceError
from ..tfrecord import concatenated_bytes, iter_records, parse_example
from .base import Converter, DatasetInfo, ErrorHandler, Sample, SourceItem, safe_key

SIZE = 64
VARIANT_K = {"six_objects": 10, "identical_color": 10, "empty_room": 4}


class ObjectsRoom(Converter):
    def __init__(self, source: str, test_size: int = 10_000, val_size: int = 10_000, split: str | None = None,
                 storage_options: dict[str, Any] | None = None):
        self.source, self.test_size, self.val_size = source, test_size, val_size
        self.storage_options = storage_options
        name = os.path.basename(source.rstrip("/"))
        variant = next((v for v in VARIANT_K if v in name), None)
        self.single_split = split or ("test" if variant else None)
        K = VARIANT_K.get(variant, 7)
        self.info = DatasetInfo("objects_room", "1.0", SIZE, K=K, background_entities=4, has_mask=True)

    def splits(self) -> list[str]:
        return [self.single_split] if self.single_split else ["train", "val", "test"]

    def _range(self, split: str) -> tuple[int, int | None]:
        if self.single_split:
            return 0, None
        first_train = self.test_size + self.val_size
        return {"test": (0, self.test_size), "val": (self.test_size, first_train), "train": (first_train, None)}[split]

    def item_count(self, split: str) -> int | None:
        start, stop = self._range(split)
        return None if stop is None else stop - start

    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        start, stop = self._range(split)
        stem = os.path.basename(self.source).split(".")[0]
        try:
            for index, record in enumerate(iter_records(self.source, self.storage_options)):
                if stop is not None and index >= stop:
                    return
                if index >= start:
                    yield SourceItem(f"{self.source} record {index}", (stem, index, record))
        except SourceError as error:
            on_error(self.source, f"{error} (the rest of the file is skipped)")

    def settings(self) -> dict[str, Any]:
        return {"source": self.source, "test_size": self.test_size, "val_size": self.val_size,
                "split": self.single_split}

    def convert(self, item: SourceItem) -> list[Sample]:
        stem, index, record = item.payload
        features = parse_example(record)
        image = concatenated_bytes(features["image"])
        if image.size != SIZE * SIZE * 3:
            raise ValueError(f"image has {image.size} values, expected {SIZE * SIZE * 3}")
        masks = concatenated_bytes(features["mask"])
        if masks.size == 0 or masks.size % (SIZE * SIZE):
            raise ValueError(f"mask has {masks.size} values, not a multiple of {SIZE * SIZE}")
        entities = masks.size // (SIZE * SIZE)
        labels = masks.reshape(entities, SIZE, SIZE).argmax(axis=0).astype(np.uint8)
        meta = {"source": item.source, "record": index, "entities": entities,
                "visible_objects": int(np.unique(labels[labels >= 4]).size)}
        return [Sample(safe_key(stem, f"{index:07d}"), image.reshape(SIZE, SIZE, 3), labels, meta)]
