"""GQN rooms_ring_camera: `{root}/{train,test}/*.tfrecord`, uncompressed TFRecords.

Each record (scene) holds `frames`: 10 JPEG views (64×64) and `cameras`: 50 floats
(x, y, z, yaw, pitch per view). GENESIS uses one view per record at 64×64, K=7.
By default the view is drawn per record from a seeded RNG (`view=None`); pass an
index to always take the same one. No masks.
"""
from __future__ import annotations

import zlib
from typing import Any, Iterator

import numpy as np

from ..errors import SourceError
from ...storage import filesystem, join
from ..tfrecord import iter_records, parse_example
from .base import Converter, DatasetInfo, ErrorHandler, Sample, SourceItem, safe_key
from .imaging import decode_rgb, resize

VIEWS = 10


class GQNRooms(Converter):
    def __init__(self, root: str, img_size: int = 64, view: int | None = None, seed: int = 0,
                 storage_options: dict[str, Any] | None = None):
        if view is not None and not 0 <= view < VIEWS:
            raise ValueError(f"view must be in 0..{VIEWS - 1}, got {view}")
        self.root, self.img_size, self.view, self.seed = root, img_size, view, seed
        self.storage_options = storage_options
        self.info = DatasetInfo("gqn_rooms_ring_camera", "1.0", img_size, K=7, background_entities=None,
                                has_mask=False)

    def _folder_exists(self, url: str) -> bool:
        fs, path = filesystem(url, self.storage_options)
        return fs.isdir(path)

    def _files(self, split: str) -> list[str]:
        fs, folder = filesystem(join(self.root, split), self.storage_options)
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
        return [join(self.root, split, name) for name in names if name.endswith(".tfrecord")]

    def splits(self) -> list[str]:
        present = [split for split in ("train", "test") if self._folder_exists(join(self.root, split))]
        if not present:
            raise SourceError(f"{self.root}: no train/ or test/ folder of .tfrecord files")
        return present

    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        for url in self._files(split):
            name = url.rsplit("/", 1)[-1].split(".")[0]
            try:
                for index, record in enumerate(iter_records(url, self.storage_options)):
                    yield SourceItem(f"{url} record {index}", (name, index, record))
            except SourceError as error:
                on_error(url, f"{error} (the rest of the file is skipped)")

    def settings(self) -> dict[str, Any]:
        return {"root": self.root, "img_size": self.img_size, "view": self.view, "seed": self.seed}

    def convert(self, item: SourceItem) -> list[Sample]:
        name, index, record = item.payload
        features = parse_example(record)
        frames = features["frames"]
        if len(frames) != VIEWS:
            raise ValueError(f"{len(frames)} frames, expected {VIEWS}")
        view = self.view
        if view is None:
            view = int(np.random.default_rng([self.seed, zlib.crc32(name.encode()), index]).integers(VIEWS))
        image = decode_rgb(frames[view])
        image = resize(image, self.img_size, self.img_size)
        cameras = np.asarray(features.get("cameras", np.zeros(0)), dtype=np.float64)
        camera = cameras[view * 5: view * 5 + 5].tolist() if cameras.size == 5 * VIEWS else None
        meta = {"source": item.source, "record": index, "view": view, "camera": camera}
        return [Sample(safe_key(name, f"{index:06d}", f"v{view}"), image, None, meta)]
