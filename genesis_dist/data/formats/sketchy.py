"""Sketchy (DeepMind, "Scaling data-driven robotics"), as GENESIS-V2 uses it.

One uncompressed TFRecord file per episode (no extension), one tf.train.Example per
timestep; the cameras `pixels/basket_front_left` / `_right` hold one 600×960 JPEG each.
Preprocessing: trim front-left to rows 71:-81, front-right to rows 91:-61, both to
columns 144:-144 (→ 448×672); then seven squares — the centre 448×448 (columns
112:560) and six 352×352 (rows 0:352 or 96:448 × columns 0:352, 160:512, 320:672) —
each resized to 128×128 (bilinear): 14 images per timestep, K=10, no masks.

Split by episode over sorted file names: first 10% validation, next 10% test, rest
train. Select the GENESIS-V2 subset (high-quality `lift_green` and
`stack_green_on_red` demos) by passing their names as `episodes`.
"""
from __future__ import annotations

from typing import Any, Iterator

from ..errors import SourceError
from ...storage import filesystem, join
from ..tfrecord import iter_records, parse_example
from .base import Converter, DatasetInfo, ErrorHandler, Sample, SourceItem, safe_key
from .imaging import crop, decode_rgb, resize

RAW_SHAPE = (600, 960, 3)
# camera label → (feature key, rows trimmed at the top, rows trimmed at the bottom)
CAMERAS = {"front_left": ("pixels/basket_front_left", 71, 81), "front_right": ("pixels/basket_front_right", 91, 61)}
SIDE_TRIM = 144
# (top, left, side) of the seven squares inside the 448×672 trimmed frame
SQUARES = [(0, 112, 448)] + [(top, left, 352) for top in (0, 96) for left in (0, 160, 320)]


def split_episodes(names: list[str]) -> dict[str, list[str]]:
    """Sorted episode names → {"val": first 10%, "test": next 10%, "train": the rest}."""
    names = sorted(names)
    tenth = len(names) // 10
    return {"val": names[:tenth], "test": names[tenth: 2 * tenth], "train": names[2 * tenth:]}


def crops_of_frame(frame, camera: str, size: int) -> list:
    """One 600×960 RGB frame of `camera` → its seven size×size crops (uint8 [size,size,3])."""
    if frame.shape != RAW_SHAPE:
        raise ValueError(f"{camera} frame is {frame.shape}, expected {RAW_SHAPE}")
    _, top, bottom = CAMERAS[camera]
    trimmed = frame[top: RAW_SHAPE[0] - bottom, SIDE_TRIM: RAW_SHAPE[1] - SIDE_TRIM]
    return [resize(crop(trimmed, t, left, side, side), size, size) for t, left, side in SQUARES]


class Sketchy(Converter):
    def __init__(self, source: str, episodes: list[str] | None = None, img_size: int = 128,
                 storage_options: dict[str, Any] | None = None):
        self.source, self.img_size, self.storage_options = source, img_size, storage_options
        self.selected = sorted(episodes) if episodes is not None else None
        self.info = DatasetInfo("sketchy", "1.0", img_size, K=10, background_entities=None, has_mask=False,
                                samples_per_item=len(CAMERAS) * len(SQUARES), shard_samples=2800)
        self._splits: dict[str, list[str]] | None = None

    def _episode_splits(self) -> dict[str, list[str]]:
        if self._splits is None:
            fs, folder = filesystem(self.source, self.storage_options)
            if not fs.isdir(folder):
                raise SourceError(f"{self.source}: not a folder of Sketchy episode files")
            present = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)
                             if fs.isfile(p))
            present = [name for name in present if not name.startswith(".")]
            if self.selected is not None:
                missing = sorted(set(self.selected) - set(present))
                if missing:
                    raise SourceError(f"{self.source}: selected episodes not found: {', '.join(missing[:5])}")
                present = self.selected
            self._splits = split_episodes(present)
        return self._splits

    def splits(self) -> list[str]:
        return ["train", "val", "test"]

    def items(self, split: str, on_error: ErrorHandler) -> Iterator[SourceItem]:
        for episode in self._episode_splits()[split]:
            url = join(self.source, episode)
            try:
                for timestep, record in enumerate(iter_records(url, self.storage_options)):
                    yield SourceItem(f"{url} record {timestep}", (episode, timestep, record))
            except SourceError as error:
                on_error(url, f"{error} (the rest of the episode is skipped)")

    def settings(self) -> dict[str, Any]:
        return {"source": self.source, "episodes": self.selected, "img_size": self.img_size}

    def convert(self, item: SourceItem) -> list[Sample]:
        episode, timestep, record = item.payload
        features = parse_example(record)
        samples = []
        for camera, (feature, _, _) in CAMERAS.items():
            if feature not in features:
                raise ValueError(f"no {feature} in the record")
            frame = decode_rgb(features[feature][0])
            for index, image in enumerate(crops_of_frame(frame, camera, self.img_size)):
                meta = {"source": item.source, "episode": episode, "timestep": timestep, "camera": camera,
                        "crop": index}
                samples.append(Sample(safe_key(episode, f"t{timestep:05d}", camera, f"c{index}"), image, None, meta))
        return samples
