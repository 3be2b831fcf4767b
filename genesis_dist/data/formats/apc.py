"""APC 2016 (MIT-Princeton object segmentation training set), as GENESIS-V2 uses it.

Layout under the `training` root:
    {shelf,tote}/<object>/scene-XXXX/frame-XXXXXX.color.png     640×480 RGB
    {shelf,tote}/<object>/scene-XXXX/masks/frame-XXXXXX.mask.png  > 0 = the single object
    .../scene-empty/...                                           background only, no masks
Other files (depth, cam.info.txt, or the toolbox's `frame-*.<object>.mask.png`
confidence maps) are ignored: only `masks/` holds ground truth.

Preprocessing: shorter side to 128 (bilinear; nearest for masks), centre crop 128×128.
Label 1 = the object, 0 = everything else (empty scenes: all 0). K=10.
Split by scene with a seeded shuffle: 10% validation, 10% test, the rest train.
"""
from __future__ import annotations

import random
import re
from typing import Any, Iterator

import numpy as np

from ..errors import SourceError
from ...storage import filesystem, join
from .base import Converter, DatasetInfo, ErrorHandler, Sample, SourceItem, safe_key
from .imaging import decode_any, decode_rgb, read_bytes, shorter_side_centre_crop

FRAME = re.compile(r"^(?P<location>[^/]+)/(?P<object>[^/]+)/(?P<scene>scene-[^/]+)/(?P<frame>frame-\d+)\.color\.png$")


class APC(Converter):
    def __init__(self, root: str, img_size: int = 128, seed: int = 0,
                 storage_options: dict[str, Any] | None = None):
        self.root, self.img_size, self.seed = root.rstrip("/"), img_size, seed
        self.storage_options = storage_options
        self.info = DatasetInfo("apc", "1.1", img_size, K=10, background_entities=1, has_mask=True,
                                shard_samples=2500)
        self._frames: dict[str, list[dict[str, str]]] | None = None

    def _scan(self) -> dict[str, list[dict[str, str]]]:
        """Frames per split, each {location, object, scene, frame}."""
        if self._frames is None:
            fs, root = filesystem(self.root, self.storage_options)
            if not fs.isdir(root):
                raise SourceError(f"{self.root}: no such folder (expected the APC 'training' folder)")
            root = root.rstrip("/")
            frames = []
            for path in sorted(fs.find(root)):
                match = FRAME.match(path[len(root) + 1:])
                if match:
                    frames.append(match.groupdict())
            if not frames:
                raise SourceError(f"{self.root}: no <location>/<object>/scene-*/frame-*.color.png files")
            scenes = sorted({(f["location"], f["object"], f["scene"]) for f in frames})
            random.Random(self.seed).shuffle(scenes)
            tenth = len(scenes) // 10
            split_of = {scene: ("val" if i < tenth else "test" if i < 2 * tenth else "train")
                        for i, scene in enumerate(scenes)}
            self._frames = {"train": [], "val": [], "test": []}
            for frame in frames:
                self._frames[split_of[(frame["location"], frame["object"], frame["scene"])]].append(frame)
        return self._frames

    def splits(self) -> list[str]:
        return ["train", "val", "test"]

    def item_count(self, split: str) -> int:
        return len(self._scan()[split])

    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        for frame in self._scan()[split]:
            folder = join(self.root, frame["location"], frame["object"], frame["scene"])
            yield SourceItem(join(folder, f"{frame['frame']}.color.png"), frame)

    def settings(self) -> dict[str, Any]:
        return {"root": self.root, "img_size": self.img_size, "seed": self.seed}

    def convert(self, item: SourceItem) -> list[Sample]:
        frame = item.payload
        folder = join(self.root, frame["location"], frame["object"], frame["scene"])
        image = shorter_side_centre_crop(decode_rgb(read_bytes(item.source, self.storage_options)), self.img_size)
        empty = frame["scene"] == "scene-empty"
        if empty:
            mask = np.zeros(image.shape[:2], dtype=np.uint8)
        else:
            mask_url = join(folder, "masks", f"{frame['frame']}.mask.png")
            try:
                raw = decode_any(read_bytes(mask_url, self.storage_options))
            except FileNotFoundError:
                raise ValueError(f"no ground-truth mask {mask_url}") from None
            binary = (raw[..., :3] > 0).any(axis=-1) if raw.ndim == 3 else raw > 0  # alpha is no label
            mask = shorter_side_centre_crop(binary.astype(np.uint8), self.img_size, labels=True)
        meta = {"source": item.source, "location": frame["location"], "object": frame["object"],
                "scene": frame["scene"], "frame": frame["frame"], "empty": empty}
        key = safe_key(frame["location"], frame["object"], frame["scene"], frame["frame"])
        return [Sample(key, image, mask, meta)]
